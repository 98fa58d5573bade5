/**
 * Connections to Redis, from `cluster.redis`: one Redis (a url, or host and port), Sentinel, or
 * Redis Cluster, with TLS and ACL credentials read from files (config/redis-connection.ts, shared
 * with the Redis store). This is the only file of the bus that builds ioredis clients.
 *
 * Every command has a deadline and nothing is queued while Redis is unreachable: a command then
 * fails at once, so what cannot be made durable is refused instead of piling up in memory.
 * Commands in flight when a connection drops are not sent again (that could write a frame twice).
 */
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';
import type { RedisConfig } from '../config/cluster-schema.ts';
import { resolveRedisConnection, sentinelOptions, type RedisTarget } from '../config/redis-connection.ts';

export type RedisClient = Redis | Cluster;

const MAX_RECONNECT_DELAY_MS = 1000;

/** What every connection shares; `blocking`: the reader's, which holds XREAD BLOCK calls. */
function commonOptions(c: RedisTarget, name: string, blocking: boolean): RedisOptions {
  const options: RedisOptions = {
    connectionName: name,
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    connectTimeout: c.connectTimeoutMs,
    // Reconnect soon after an outage ends: cross-node delivery resumes within a second.
    retryStrategy: (times) => Math.min(100 * times, MAX_RECONNECT_DELAY_MS),
    // A master that became a replica (a failover) refuses writes with READONLY: reconnect, so
    // Sentinel names the new master. The failed write is not sent again (1, not 2): its sender
    // was told it failed, and a frame written twice is refused as a replay anyway.
    reconnectOnError: (err: Error) => (err.message.startsWith('READONLY') ? 1 : false),
    keepAlive: 10_000,
    // CLIENT SETINFO is Redis 7.2+, and one command more for an ACL user to be allowed.
    disableClientInfo: true,
  };
  if (blocking) {
    // A blocked read on a Redis that hangs would never return: give up after its block time.
    options.blockingTimeout = c.commandTimeoutMs;
  } else {
    options.commandTimeout = c.commandTimeoutMs;
  }
  if (c.username !== undefined) options.username = c.username;
  if (c.password !== undefined) options.password = c.password;
  if (c.tls !== undefined) options.tls = c.tls;
  return options;
}

/**
 * Gives `connect()` a deadline of `ms`. Through Sentinel (all sentinels unreachable, or refusing the
 * sentinel password) ioredis retries for ever and its `connect()` never settles, so a node would
 * hang in its start; a Redis Cluster whose seeds are all down does the same. The rejection names
 * the last error seen (never a secret: Redis's replies do not echo them).
 */
function connectWithin(client: RedisClient, ms: number): RedisClient {
  let lastError: Error | undefined;
  // The listener also keeps ioredis from printing each failed attempt as an unhandled error.
  client.on('error', (err: Error) => {
    lastError = err;
  });
  const connect = client.connect.bind(client);
  client.connect = () =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no connection within ${ms} ms${lastError !== undefined ? ` (${lastError.message})` : ''}`)), ms);
      connect().then(
        () => {
          clearTimeout(timer);
          resolve();
        },
        (err: unknown) => {
          clearTimeout(timer);
          reject(err as Error);
        },
      );
    });
  return client;
}

/**
 * A client for `cluster.redis`, not yet connected (call `connect()`, which fails after
 * connectTimeoutMs). The credential and TLS files are read now: one that cannot be used throws a
 * ConfigError naming its `cluster.redis.` key.
 */
export function createRedisClient(config: RedisConfig, name: string, blocking = false): RedisClient {
  const c = resolveRedisConnection(config, 'cluster.redis').target;
  return connectWithin(makeClient(c, name, blocking), c.connectTimeoutMs);
}

function makeClient(c: RedisTarget, name: string, blocking: boolean): RedisClient {
  const options = commonOptions(c, name, blocking);
  switch (c.mode) {
    case 'cluster': {
      const clusterOptions: ClusterOptions = {
        lazyConnect: true,
        enableOfflineQueue: false,
        maxRedirections: 16,
        // A failover moves slots: ask again after a short pause instead of failing at once.
        retryDelayOnFailover: 100,
        retryDelayOnClusterDown: 100,
        slotsRefreshTimeout: c.commandTimeoutMs,
        clusterRetryStrategy: (times) => Math.min(100 * times, MAX_RECONNECT_DELAY_MS),
        redisOptions: options,
      };
      return new Cluster(c.nodes ?? [], clusterOptions);
    }
    case 'sentinel':
      return new Redis({ ...options, ...sentinelOptions(c, (times) => Math.min(100 * times, MAX_RECONNECT_DELAY_MS)) });
    case 'standalone':
      return new Redis({ ...options, host: c.host ?? '127.0.0.1', port: c.port ?? 6379, db: c.db ?? 0 });
  }
}

/** True when the client can take commands now. */
export function redisReady(client: RedisClient): boolean {
  return client.status === 'ready';
}
