/**
 * `store`: where sessions, subscriptions, queued and in-flight messages and retained messages are
 * kept. On by default: without a `store` key the broker keeps them durably in LMDB under
 * data/store, so a restart (an upgrade, a crash, a power cut) loses no acknowledged message.
 * `type: memory` keeps them in the process only (tests, embedding); `type: redis` in a Redis shared
 * by one or more brokers (store-redis-schema.ts). See docs/persistence.md.
 */
import { z } from 'zod';
import { redisStore } from './store-redis-schema.ts';

const lmdbStore = z.strictObject({
  type: z.literal('lmdb'),
  /** The store folder, created 0700; relative to the working directory. */
  path: z.string().min(1).default('data/store'),
  /**
   * When a write counts as done (and the broker may acknowledge what it promises):
   * 'sync': committed and flushed to the disk, one flush per batch (survives a power cut);
   * 'commit': committed to the operating system, flushed every flushIntervalMs (survives a crash
   * of the broker process; a power cut or kernel crash can lose up to flushIntervalMs of writes
   * and can damage the store, which then refuses to start until recovered).
   */
  durability: z.enum(['sync', 'commit']).default('sync'),
  /** 'commit' only: how often committed writes are flushed to the disk. */
  flushIntervalMs: z.number().int().min(10).max(60_000).default(1000),
  /** Extra milliseconds to gather writes into one commit: fewer syncs, more latency. 0: commit at the end of each event-loop turn. */
  commitDelayMs: z.number().int().min(0).max(1000).default(0),
  /** Encryption of message contents and session owners at rest (AES-256-GCM). */
  encryption: z
    .strictObject({
      /** Key file: one `<key id> <base64 of 32 bytes>` per line; the first key encrypts, all decrypt. Must be 0600. */
      keyFile: z.string().min(1),
    })
    .optional(),
});

const memoryStore = z.strictObject({ type: z.literal('memory') });

export const storeConfig = z
  .preprocess(
    // `store: { path: ... }` without a type means the default, durable store.
    (v) => (v !== null && typeof v === 'object' && !Array.isArray(v) && !('type' in v) ? { type: 'lmdb', ...v } : v),
    z.discriminatedUnion('type', [lmdbStore, memoryStore, redisStore], { error: "unknown store type: expected 'lmdb' (the default, durable), 'redis' or 'memory'" }),
  )
  .prefault({});

export type StoreConfig = z.output<typeof storeConfig>;
