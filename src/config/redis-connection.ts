/**
 * From the checked Redis connection keys (redis-schema.ts) to what a client needs, for the store
 * and the cluster bus alike: the credential and TLS files read now (so a bad one is a
 * configuration error naming its key, `store.passwordFile` or `cluster.redis.passwordFile`), the
 * target as it may appear in logs (never with a password), and the warnings for the start report.
 */
import fs from 'node:fs';
import type { ConnectionOptions } from 'node:tls';
import type { SentinelConnectionOptions } from 'ioredis';
import type { RedisConnectionConfig, RedisEndpoint } from './redis-schema.ts';
import { ConfigError } from './schema.ts';

/** How to reach Redis, files read. */
export interface RedisTarget {
  mode: 'standalone' | 'sentinel' | 'cluster';
  /** standalone */
  host?: string;
  port?: number;
  db?: number;
  /** sentinel: the sentinels and the master group name */
  sentinels?: RedisEndpoint[];
  name?: string;
  /** cluster: seed nodes */
  nodes?: RedisEndpoint[];
  /** TLS to Redis (and to the sentinels); verification on unless rejectUnauthorized is false. */
  tls?: ConnectionOptions;
  username?: string;
  password?: string;
  /** What the sentinels themselves require. */
  sentinelUsername?: string;
  sentinelPassword?: string;
  /** Where Redis is, for messages: never holds a password. */
  target: string;
  commandTimeoutMs: number;
  connectTimeoutMs: number;
}

/**
 * The ioredis options that reach a master through Sentinel, for the store and the bus alike:
 * TLS and credentials for the sentinels, a command deadline, and the failover detector (it
 * listens for +switch-master, so a failover moves the connection without waiting for an error).
 */
export function sentinelOptions(c: RedisTarget, retry: (times: number) => number): SentinelConnectionOptions {
  return {
    sentinels: c.sentinels ?? [],
    name: c.name ?? '',
    ...(c.tls !== undefined ? { enableTLSForSentinelMode: true, sentinelTLS: c.tls } : {}),
    ...(c.sentinelUsername !== undefined ? { sentinelUsername: c.sentinelUsername } : {}),
    ...(c.sentinelPassword !== undefined ? { sentinelPassword: c.sentinelPassword } : {}),
    sentinelCommandTimeout: c.commandTimeoutMs,
    failoverDetector: true,
    sentinelRetryStrategy: retry,
  };
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

/**
 * Reads the files `config` names. `at`: where the keys are (`store`, `cluster.redis`), for the
 * errors (ConfigError naming the key) and warnings.
 */
export function resolveRedisConnection(config: RedisConnectionConfig, at: string): { target: RedisTarget; warnings: string[] } {
  const refuse = (key: string, message: string): never => {
    throw new ConfigError(`invalid configuration:\n  - ${at}.${key}: ${message}`, [{ key: `${at}.${key}`, message }]);
  };
  /** Reads a file the configuration names; `secret`: refused when other users can read or write it. */
  const readFile = (key: string, file: string, secret: boolean): Buffer => {
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
  };
  const readSecret = (key: string, file: string): string => {
    const text = readFile(key, file, true).toString('utf8').replace(/\r?\n$/, '');
    if (text === '' || /[\r\n]/.test(text)) refuse(key, `${file} must hold one line`);
    return text;
  };

  const warnings: string[] = [];
  let tls: ConnectionOptions | undefined;
  const t = config.tls;
  if (t !== undefined) {
    tls = {
      minVersion: t.minVersion,
      rejectUnauthorized: t.verifyServer,
      ...(t.ca !== undefined ? { ca: readFile('tls.ca', t.ca, false) } : {}),
      ...(t.cert !== undefined ? { cert: readFile('tls.cert', t.cert, false) } : {}),
      ...(t.key !== undefined ? { key: readFile('tls.key', t.key, true) } : {}),
      ...(t.servername !== undefined ? { servername: t.servername } : {}),
    };
    if (!t.verifyServer) warnings.push(`${at}.tls.verifyServer is false: the Redis server certificate is not checked, so anyone on the network path can read and alter what goes to Redis`);
  }
  const tlsNote = tls !== undefined ? ' (TLS)' : '';
  const list = (es: RedisEndpoint[]) => es.map((e) => `${e.host}:${e.port}`).join(', ');
  const base = { commandTimeoutMs: config.commandTimeoutMs, connectTimeoutMs: config.connectTimeoutMs, ...(tls !== undefined ? { tls } : {}) };
  let target: RedisTarget;
  let username: string | undefined;
  if (config.sentinels !== undefined) {
    const name = config.name ?? '';
    target = { ...base, mode: 'sentinel', sentinels: config.sentinels, name, target: `sentinel master ${name} via ${list(config.sentinels)}${tlsNote}` };
    if (config.sentinelUsernameFile !== undefined) target.sentinelUsername = readSecret('sentinelUsernameFile', config.sentinelUsernameFile);
    if (config.sentinelPasswordFile !== undefined) target.sentinelPassword = readSecret('sentinelPasswordFile', config.sentinelPasswordFile);
  } else if (config.nodes !== undefined) {
    target = { ...base, mode: 'cluster', nodes: config.nodes, target: `redis cluster ${list(config.nodes)}${tlsNote}` };
  } else if (config.host !== undefined) {
    const port = config.port ?? 6379;
    const db = config.db ?? 0;
    const hostPart = config.host.includes(':') ? `[${config.host}]` : config.host;
    target = { ...base, mode: 'standalone', host: config.host, port, db, target: `${tls !== undefined ? 'rediss' : 'redis'}://${hostPart}:${port}/${db}` };
  } else {
    const u = new URL(config.url ?? 'redis://127.0.0.1:6379');
    // The schema refuses a password in the url; a user name is not a secret.
    if (u.username !== '') username = decodeURIComponent(u.username);
    const db = u.pathname.replace(/^\//, '');
    target = {
      ...base,
      mode: 'standalone',
      host: u.hostname.replace(/^\[|\]$/g, ''),
      port: u.port !== '' ? Number(u.port) : 6379,
      db: db === '' ? 0 : Number(db),
      target: redactUrl(u.toString()),
    };
  }
  if (config.usernameFile !== undefined) username = readSecret('usernameFile', config.usernameFile);
  if (username !== undefined) target.username = username;
  if (config.passwordFile !== undefined) target.password = readSecret('passwordFile', config.passwordFile);
  return { target, warnings };
}
