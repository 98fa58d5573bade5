/**
 * `store: { type: redis, ... }`: sessions and retained messages in a Redis shared by one or more
 * brokers (docs/persistence.md, "Redis store"). The keys that say how to reach Redis (url or
 * host, sentinels + name, nodes, TLS, credential files, timeouts) are the same as
 * `cluster.redis`'s and checked by the same function (redis-schema.ts); the others are the
 * store's own. Secrets come from files, never from the configuration itself.
 */
import { z } from 'zod';
import { checkRedisConnection, normaliseRedisConnection, redisConnectionFields, type RawRedisConnection } from './redis-schema.ts';

export const redisStore = z
  .strictObject({
    type: z.literal('redis'),
    ...redisConnectionFields({ commandTimeoutMs: 3000 }),
    /** Every key starts with it; brokers that share a store use the same prefix. */
    prefix: z
      .string()
      .min(1)
      .max(64)
      .regex(/^[A-Za-z0-9:._-]+$/, 'letters, digits and : . _ - only (no braces: they would change the Redis Cluster hash slot of every key)')
      .default('portcullis:'),
    /** This broker's name among the brokers on the store (each needs its own); says whether it stopped cleanly. */
    instance: z
      .string()
      .regex(/^[A-Za-z0-9._-]{1,64}$/, '1 to 64 of A-Z a-z 0-9 . _ -')
      .default('default'),
    /** Bytes of commands sent and not answered yet beyond which writes are refused at once (a Redis that does not answer). */
    maxPendingBytes: z.number().int().min(65_536).max(1024 * 1024 * 1024).default(64 * 1024 * 1024),
    /** After writes, WAIT until this many replicas have them before acknowledging; 0 does not wait. */
    waitReplicas: z.number().int().min(0).max(16).default(0),
    waitTimeoutMs: z.number().int().min(1).max(60_000).default(1000),
    /** Encryption of message contents and session owners (AES-256-GCM), as for the lmdb store. */
    encryption: z
      .strictObject({
        keyFile: z.string().min(1),
        /**
         * Also read records in the clear, as a store written before encryption was turned on has.
         * Off: a record in the clear is refused, since anyone who can write to Redis can make one.
         */
        acceptPlaintext: z.boolean().default(false),
      })
      .optional(),
  })
  .superRefine((s, ctx) => {
    checkRedisConnection(s as RawRedisConnection, ctx, { required: false });
    if (s.nodes !== undefined && s.waitReplicas > 0) ctx.addIssue({ code: 'custom', path: ['waitReplicas'], message: 'not supported with a Redis Cluster (nodes): WAIT would reach a random node, not the one holding the write' });
    // WAIT holds the connection until it returns: past commandTimeoutMs the connection would be dropped as dead.
    if (s.waitReplicas > 0 && s.waitTimeoutMs >= s.commandTimeoutMs) ctx.addIssue({ code: 'custom', path: ['waitTimeoutMs'], message: `must be below commandTimeoutMs (${s.commandTimeoutMs}): WAIT holds the connection while it waits` });
  })
  .transform((s) => {
    const { type, prefix, instance, maxPendingBytes, waitReplicas, waitTimeoutMs, encryption } = s;
    return { type, prefix, instance, maxPendingBytes, waitReplicas, waitTimeoutMs, ...(encryption !== undefined ? { encryption } : {}), ...normaliseRedisConnection(s as RawRedisConnection) };
  });

export type RedisStoreConfig = z.output<typeof redisStore>;
