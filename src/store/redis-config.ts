/**
 * From `store: { type: redis }` to what the Redis store needs: the connection (with the secret and
 * TLS files read now, so a bad one is a configuration error naming its key), the target as it
 * may appear in logs (never with a password), and the warnings for the open report.
 */
import fs from 'node:fs';
import type { ConnectionOptions } from 'node:tls';
import type { RedisStoreConfig } from '../config/store-redis-schema.ts';
import { ConfigError } from '../config/schema.ts';
import type { RedisConnection } from './redis-client.ts';

function refuse(key: string, message: string): never {
  throw new ConfigError(`invalid configuration:\n  - store.${key}: ${message}`, [{ key: `store.${key}`, message }]);
}

/** Reads a file the configuration names; `secret`: refused when other users can read or write it. */
function readFile(key: string, file: string, secret: boolean): Buffer {
  let stat: fs.Stats;
  let data: Buffer;
  try {
    stat = fs.statSync(file);
    data = fs.readFileSync(file);
  } catch (err) {
    return refuse(key, `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (secret && process.platform !== 'win32' && (stat.mode & 0o077) !== 0) {
    refuse(key, `${file} can be read or written by other users (mode ${(stat.mode & 0o777).toString(8)}); chmod 600 it`);
  }
  return data;
}

function readSecret(key: string, file: string): string {
  const text = readFile(key, file, true).toString('utf8').replace(/\r?\n$/, '');
  if (text === '' || /[\r\n]/.test(text)) refuse(key, `${file} must hold one line`);
  return text;
}

/** A URL as it may be written in logs and reports: no user name or password. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    const hadCredentials = u.username !== '' || u.password !== '';
    u.username = '';
    u.password = '';
    return hadCredentials ? u.toString().replace('//', '//***@') : u.toString();
  } catch {
    return '(unparseable url)';
  }
}

export function redisConnection(config: RedisStoreConfig): { connection: RedisConnection; warnings: string[] } {
  const warnings: string[] = [];
  let tls: ConnectionOptions | undefined;
  const wantTls = config.url !== undefined ? config.url.startsWith('rediss:') : config.tls !== undefined;
  if (wantTls) {
    const t = config.tls;
    tls = {
      minVersion: t?.minVersion ?? 'TLSv1.2',
      rejectUnauthorized: t?.verifyServer ?? true,
      ...(t?.ca !== undefined ? { ca: readFile('tls.ca', t.ca, false) } : {}),
      ...(t?.cert !== undefined ? { cert: readFile('tls.cert', t.cert, false) } : {}),
      ...(t?.key !== undefined ? { key: readFile('tls.key', t.key, true) } : {}),
      ...(t?.servername !== undefined ? { servername: t.servername } : {}),
    };
    if (t?.verifyServer === false) warnings.push('store.tls.verifyServer is false: the Redis server certificate is not checked, so anyone on the network path can read and alter the store');
  }
  let username = config.usernameFile !== undefined ? readSecret('usernameFile', config.usernameFile) : undefined;
  let password = config.passwordFile !== undefined ? readSecret('passwordFile', config.passwordFile) : undefined;
  const base = {
    commandTimeoutMs: config.commandTimeoutMs,
    connectTimeoutMs: config.connectTimeoutMs,
    maxPendingBytes: config.maxPendingBytes,
    waitReplicas: config.waitReplicas,
    waitTimeoutMs: config.waitTimeoutMs,
    ...(tls !== undefined ? { tls } : {}),
  };
  let connection: RedisConnection;
  if (config.sentinels !== undefined) {
    connection = { ...base, mode: 'sentinel', sentinels: config.sentinels, name: config.name ?? '', target: `sentinel master ${config.name ?? ''} via ${config.sentinels.map((s) => `${s.host}:${s.port}`).join(', ')}${tls !== undefined ? ' (TLS)' : ''}` };
  } else if (config.nodes !== undefined) {
    connection = { ...base, mode: 'cluster', nodes: config.nodes, target: `redis cluster ${config.nodes.map((n) => `${n.host}:${n.port}`).join(', ')}${tls !== undefined ? ' (TLS)' : ''}` };
  } else {
    const u = new URL(config.url ?? 'redis://127.0.0.1:6379');
    if (u.username !== '' && username === undefined) username = decodeURIComponent(u.username);
    if (u.password !== '') {
      password = decodeURIComponent(u.password);
      warnings.push('store.url holds a password: configuration files are often copied and committed; keep it in store.passwordFile');
    }
    const db = u.pathname.replace(/^\//, '');
    connection = {
      ...base,
      mode: 'standalone',
      host: u.hostname.replace(/^\[|\]$/g, ''),
      port: u.port !== '' ? Number(u.port) : 6379,
      db: db === '' ? 0 : Number(db),
      target: redactUrl(u.toString()),
    };
  }
  if (username !== undefined) connection.username = username;
  if (password !== undefined) connection.password = password;
  return { connection, warnings };
}
