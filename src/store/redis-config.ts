/**
 * From `store: { type: redis }` to what the Redis store needs: the connection, resolved by the
 * same code as `cluster.redis`'s (config/redis-connection.ts: files read now, so a bad one is a
 * configuration error naming its `store.` key), plus the store's own write settings.
 */
import type { RedisStoreConfig } from '../config/store-redis-schema.ts';
import { resolveRedisConnection } from '../config/redis-connection.ts';
import type { RedisConnection } from './redis-client.ts';

export function redisConnection(config: RedisStoreConfig): { connection: RedisConnection; warnings: string[] } {
  const { target, warnings } = resolveRedisConnection(config, 'store');
  return {
    connection: { ...target, maxPendingBytes: config.maxPendingBytes, waitReplicas: config.waitReplicas, waitTimeoutMs: config.waitTimeoutMs },
    warnings,
  };
}
