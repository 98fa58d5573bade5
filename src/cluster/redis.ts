/**
 * Connections to Redis, from `cluster.redis`: one Redis (redis:// or rediss://), Sentinel, or
 * Redis Cluster, with TLS and ACL credentials read from files. This is the only file that builds
 * ioredis clients.
 *
 * Every command has a deadline and nothing is queued while Redis is unreachable: a command then
 * fails at once, so what cannot be made durable is refused instead of piling up in memory.
 * Commands in flight when a connection drops are not sent again (that could write a frame twice).
 */
import fs from 'node:fs';
import type { ConnectionOptions } from 'node:tls';
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';
import type { RedisConfig } from '../config/cluster-schema.ts';
import { ClusterError } from './errors.ts';

export type RedisClient = Redis | Cluster;

function readSecret(file: string, what: string): string {
  try {
    return fs.readFileSync(file, 'utf8').replace(/\r?\n$/, '');
  } catch (err) {
    throw new ClusterError('ERR_CLUSTER_REDIS', `cannot read the Redis ${what} file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
}

function readPem(file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new ClusterError('ERR_CLUSTER_REDIS', `cannot read the Redis TLS ${what} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
}

function tlsOptions(config: RedisConfig): ConnectionOptions | undefined {
  const t = config.tls;
  const implied = config.url !== undefined && config.url.startsWith('rediss://');
  if (t === false && !implied) return undefined;
  const out: ConnectionOptions = { minVersion: 'TLSv1.2' };
  if (typeof t === 'object') {
    if (t.caFile !== undefined) out.ca = readPem(t.caFile, 'CA bundle');
    if (t.certFile !== undefined) out.cert = readPem(t.certFile, 'certificate');
    if (t.keyFile !== undefined) out.key = readPem(t.keyFile, 'key');
    if (t.servername !== undefined) out.servername = t.servername;
  }
  return out;
}

function parseHostPort(s: string): { host: string; port: number } {
  const at = s.lastIndexOf(':');
  return { host: s.slice(0, at).replace(/^\[|\]$/g, ''), port: Number(s.slice(at + 1)) };
}

/** What every connection shares; `blocking`: the reader's, which holds XREAD BLOCK calls. */
function commonOptions(config: RedisConfig, name: string, blocking: boolean): RedisOptions {
  const options: RedisOptions = {
    connectionName: name,
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    connectTimeout: config.connectTimeoutMs,
    // Reconnect soon after an outage ends: cross-node delivery resumes within a second.
    retryStrategy: (times) => Math.min(100 * times, 1000),
    keepAlive: 10_000,
  };
  if (blocking) {
    // A blocked read on a Redis that hangs would never return: give up after its block time.
    options.blockingTimeout = config.commandTimeoutMs;
  } else {
    options.commandTimeout = config.commandTimeoutMs;
  }
  if (config.usernameFile !== undefined) options.username = readSecret(config.usernameFile, 'user name');
  if (config.passwordFile !== undefined) options.password = readSecret(config.passwordFile, 'password');
  const tls = tlsOptions(config);
  if (tls !== undefined) options.tls = tls;
  return options;
}

/** A client for `cluster.redis`, not yet connected (call `connect()`). Throws ClusterError for unreadable files. */
export function createRedisClient(config: RedisConfig, name: string, blocking = false): RedisClient {
  const options = commonOptions(config, name, blocking);
  if (config.nodes !== undefined) {
    const { tls, username, password, ...rest } = options;
    const clusterOptions: ClusterOptions = {
      lazyConnect: true,
      enableOfflineQueue: false,
      maxRedirections: 8,
      clusterRetryStrategy: (times) => Math.min(100 * times, 1000),
      redisOptions: { ...rest, ...(tls !== undefined ? { tls } : {}), ...(username !== undefined ? { username } : {}), ...(password !== undefined ? { password } : {}) },
    };
    return new Cluster(config.nodes.map(parseHostPort), clusterOptions);
  }
  if (config.sentinel !== undefined) {
    const s = config.sentinel;
    const sentinel: RedisOptions = { ...options, sentinels: s.sentinels.map(parseHostPort), name: s.name };
    if (s.passwordFile !== undefined) sentinel.sentinelPassword = readSecret(s.passwordFile, 'sentinel password');
    if (options.tls !== undefined) {
      sentinel.enableTLSForSentinelMode = true;
      sentinel.sentinelTLS = options.tls as ConnectionOptions;
    }
    return new Redis(sentinel);
  }
  return new Redis(config.url as string, options);
}

/** True when the client can take commands now. */
export function redisReady(client: RedisClient): boolean {
  return client.status === 'ready';
}
