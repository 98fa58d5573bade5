/**
 * The Redis store against the shared Store conformance suite, on a real redis-server (append-only,
 * fsync always): plain, encrypted, and under a custom key prefix. Each store has its own prefix on
 * one server, so the suite's concurrent tests never share keys.
 */
import test from 'ava';
import { RedisStore } from '../src/store/redis.ts';
import { storeConformance } from './store-conformance.ts';
import { startRedis, type RedisServer } from './redis-server.ts';
import { freshPrefix, redisStore } from './store-redis-support.ts';

let server: RedisServer | undefined;
const ready = startRedis().then((s) => (server = s));
test.after.always(async () => {
  await server?.dispose();
});
const key = { id: 'k1', key: Buffer.alloc(32, 7) };

const make = async (options: Record<string, unknown> = {}, keys?: typeof key[]): Promise<RedisStore> => redisStore(await ready, options, keys !== undefined ? { keys } : {});

storeConformance('redis', () => make());
storeConformance('redis (encrypted)', () => make({}, [key]));
storeConformance('redis (prefix)', () => make({ prefix: freshPrefix('tenant-a.portcullis:') }));
