/**
 * Builds the configured store. Nothing is opened or created here: the broker opens the store when
 * it starts (Store.open), so building a broker for a configuration check touches no file but the
 * key file, which is read now so that a bad one is a configuration error naming its key.
 */
import type { StoreConfig } from '../config/store-schema.ts';
import { loadKeyFile } from './keyring.ts';
import { LmdbStore } from './lmdb.ts';
import { MemoryStore } from './memory.ts';
import type { Store } from './types.ts';

/** Throws StoreError ERR_STORE_KEY when the encryption key file cannot be used. */
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
  }
}
