/**
 * Redis stores for the tests: a store on a test redis-server (test/redis-server.ts), built through
 * the configuration like the broker builds it, each on its own key prefix unless told otherwise.
 */
import { parseConfig } from '../src/config/schema.ts';
import type { RedisStoreConfig } from '../src/config/store-redis-schema.ts';
import { redisConnection } from '../src/store/redis-config.ts';
import { RedisStore, type RedisStoreOptions } from '../src/store/redis.ts';
import type { RedisServer } from './redis-server.ts';

let n = 0;

/** A fresh prefix, so stores on one server never share keys. */
export function freshPrefix(base = 'test'): string {
  return `${base}${process.pid}-${++n}:`;
}

export function redisConfig(server: RedisServer, store: Record<string, unknown> = {}): RedisStoreConfig {
  return parseConfig({ store: { type: 'redis', url: server.url, prefix: freshPrefix(), ...store } }).store as RedisStoreConfig;
}

export function redisStore(server: RedisServer, store: Record<string, unknown> = {}, extra: Partial<RedisStoreOptions> = {}): RedisStore {
  const config = redisConfig(server, store);
  const { connection, warnings } = redisConnection(config);
  return new RedisStore({ connection, prefix: config.prefix, instance: config.instance, warnings, ...extra });
}

/** Every key of the server under `prefix` (SCAN, for the tests' eyes). */
export async function keysUnder(server: RedisServer, prefix: string): Promise<string[]> {
  const out: string[] = [];
  let cursor = '0';
  do {
    const reply = (await server.command('SCAN', cursor, 'MATCH', `${prefix.replace(/[*?[\]\\]/g, (c) => `\\${c}`)}*`, 'COUNT', '1000')).split('\n');
    cursor = reply[0] ?? '0';
    out.push(...reply.slice(1).filter((k) => k !== ''));
  } while (cursor !== '0');
  return out;
}
