/**
 * `cluster` and `workers`: several broker processes (on many machines, or `workers: N` on one)
 * that behave as one broker, over a Redis that the operators already run. Off by default: a
 * configuration without `cluster` is one node that needs no Redis. See docs/cluster.md.
 */
import os from 'node:os';
import { z } from 'zod';
import { checkRedisConnection, normaliseRedisConnection, redisConnectionFields } from './redis-schema.ts';

/**
 * How to reach Redis: the same keys as the Redis store's, checked by the same function
 * (redis-schema.ts). Unlike the store, one way to reach Redis must be given.
 */
const redis = z
  .strictObject(redisConnectionFields({ commandTimeoutMs: 5000 }))
  .superRefine((r, ctx) => checkRedisConnection(r, ctx, { required: true }))
  .transform(normaliseRedisConnection);

export const clusterConfig = z
  .strictObject({
    redis,
    /**
     * This node's name, unique in the cluster: letters, digits, '.', '_' and '-'. Default: the
     * host name. With `workers`, each worker appends `-w<n>`.
     *
     * It must stay the same across restarts: a node with its own store takes back the sessions
     * of its earlier runs only under the same id (a process id in the default would make every
     * restart a new node, and the old one's sessions would wait for it forever). Two nodes on
     * one host need ids of their own; the second to start with a live node's id is refused.
     */
    nodeId: z
      .string()
      .regex(/^[A-Za-z0-9._-]{1,64}$/, "1 to 64 letters, digits, '.', '_' or '-'")
      .default(() => os.hostname().replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 60) || 'node'),
    /** Names this cluster's keys in Redis, so several clusters can share one Redis. */
    name: z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, "1 to 64 letters, digits, '.', '_' or '-'").default('portcullis'),
    /**
     * The key every bus message is signed with (HMAC-SHA256), shared by every node: one
     * `<key id> <base64 of 32 or more random bytes>` per line, the first signs and all verify.
     * Must be 0600. `portcullis cluster keygen` writes one.
     */
    keyFile: z.string().min(1),
    /** A node that has not renewed its lease for this long is dead: its sessions move to the others. */
    leaseMs: z.number().int().min(200).max(600_000).default(10_000),
    /** How long a SUBACK or retained PUBACK waits for the other nodes to confirm they have applied it. */
    ackTimeoutMs: z.number().int().min(50).max(60_000).default(2000),
    /** How long a CONNECT waits for its session to move from another node before it is refused (0x88). */
    moveTimeoutMs: z.number().int().min(100).max(120_000).default(10_000),
    /** Bytes of bus messages waiting for Redis before new ones are refused (QoS 1/2 not acknowledged, QoS 0 dropped). */
    maxPendingBytes: z.number().int().min(64 * 1024).default(64 * 1024 * 1024),
    /**
     * How far a bus message's signed timestamp may be from the time Redis stored it (clocks out of
     * step, a slow write). A copy written into Redis later is refused by this check: it bounds
     * the window a replay could use. Must exceed redis.commandTimeoutMs.
     */
    maxClockSkewMs: z.number().int().min(1000).max(3_600_000).default(30_000),
    /** How often nodes exchange rate-limit use and statistics. */
    syncIntervalMs: z.number().int().min(20).max(60_000).default(250),
  })
  .refine((c) => c.maxClockSkewMs > c.redis.commandTimeoutMs, { message: 'maxClockSkewMs must be longer than redis.commandTimeoutMs (a write may take that long)', path: ['maxClockSkewMs'] })
  .optional();

/** `workers`: processes on this machine that share the listeners; "auto" is one per core. */
export const workersConfig = z.union([z.literal('auto'), z.number().int().min(1).max(1024)]).default(1);

export type ClusterConfig = NonNullable<z.output<typeof clusterConfig>>;
export type RedisConfig = ClusterConfig['redis'];

/** The number of workers `workers` asks for on this machine. */
export function workerCount(workers: 'auto' | number): number {
  return workers === 'auto' ? Math.max(1, os.availableParallelism()) : workers;
}
