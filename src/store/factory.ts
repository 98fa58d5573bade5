/**
 * Builds the configured store. Nothing is opened or created here: the broker opens the store when
 * it starts (Store.open), so building a broker for a configuration check touches no file but the
 * ones the store section names (the encryption key file; for Redis, the password and TLS files),
 * which are read now so that a bad one is a configuration error naming its key.
 */
import type { StoreConfig } from '../config/store-schema.ts';
import { loadKeyFile } from './keyring.ts';
import { LmdbStore } from './lmdb.ts';
import { MemoryStore } from './memory.ts';
import { redisConnection } from './redis-config.ts';
import { RedisStore } from './redis.ts';
import type { Store } from './types.ts';

/**
 * Throws StoreError ERR_STORE_KEY when the encryption key file cannot be used, and ConfigError
 * (naming the key) when a Redis password or TLS file cannot.
 */
export function createStore(config: StoreConfig): Store {
  switch (config.type) {
    case 'memory':
      return new MemoryStore();
    case 'lmdb':
      return new LmdbStore({
        path: config.path,
        durability: config.durability,
        commitDelayMs: config.commitDelayMs,
        flushIntervalMs: config.flushIntervalMs,
        ...(config.encryption !== undefined ? { keys: loadKeyFile(config.encryption.keyFile) } : {}),
      });
    case 'redis': {
      const { connection, warnings } = redisConnection(config);
      return new RedisStore({
        connection,
        prefix: config.prefix,
        instance: config.instance,
        warnings,
        ...(config.encryption !== undefined ? { keys: loadKeyFile(config.encryption.keyFile), acceptPlaintext: config.encryption.acceptPlaintext } : {}),
      });
    }
  }
}
