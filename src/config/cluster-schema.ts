/**
 * `cluster` and `workers`: several broker processes (on many machines, or `workers: N` on one)
 * that behave as one broker, over a Redis that the operators already run. Off by default: a
 * configuration without `cluster` is one node that needs no Redis. See docs/cluster.md.
 */
import os from 'node:os';
import { z } from 'zod';

const positiveInt = z.number().int().positive();

/** host:port, as Sentinel and Redis Cluster seed lists are written. */
const hostPort = z.string().regex(/^[^\s:]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$/, 'expected host:port');

const redisUrl = z
  .string()
  .refine((u) => /^rediss?:\/\//.test(u) && URL.canParse(u), 'must be a redis:// or rediss:// URL')
  .refine((u) => new URL(u).password === '', 'must not hold a password: give it in passwordFile (a file only the broker can read)');

const redisTls = z
  .strictObject({
    /** CA bundle that signs the Redis server certificate (default: the system's). */
    caFile: z.string().min(1).optional(),
    /** Client certificate and key, for a Redis that requires mutual TLS. */
    certFile: z.string().min(1).optional(),
    keyFile: z.string().min(1).optional(),
    /** The name the server certificate must carry (default: the host connected to). */
    servername: z.string().min(1).optional(),
  })
  .refine((t) => (t.certFile === undefined) === (t.keyFile === undefined), 'certFile and keyFile go together');

const redis = z
  .strictObject({
    /** One Redis (or a proxy in front of one): redis://host:6379/0, or rediss:// for TLS. */
    url: redisUrl.optional(),
    /** Redis Sentinel: the sentinels to ask and the name of the monitored master. */
    sentinel: z
      .strictObject({
        sentinels: z.array(hostPort).min(1),
        name: z.string().min(1),
        /** A file with the password the sentinels themselves require, if any. */
        passwordFile: z.string().min(1).optional(),
      })
      .optional(),
    /** Redis Cluster: some of its nodes (host:port); the rest are discovered. */
    nodes: z.array(hostPort).min(1).optional(),
    /** ACL user name and password, each read from a file (never written in the configuration). */
    usernameFile: z.string().min(1).optional(),
    passwordFile: z.string().min(1).optional(),
    /** TLS to Redis (implied by rediss://; needed for sentinel and cluster nodes). */
    tls: z.union([z.boolean(), redisTls]).default(false),
    /** Deadline of a connection attempt and of each command (a Redis that hangs is a Redis that is down). */
    connectTimeoutMs: positiveInt.default(5000),
    commandTimeoutMs: positiveInt.default(5000),
  })
  .refine((r) => [r.url, r.sentinel, r.nodes].filter((x) => x !== undefined).length === 1, 'give exactly one of url, sentinel or nodes');

export const clusterConfig = z
  .strictObject({
    redis,
    /**
     * This node's name, unique in the cluster: letters, digits, '.', '_' and '-'. Default: the
     * host name and the process id. With `workers`, each worker appends `-w<n>`.
     */
    nodeId: z
      .string()
      .regex(/^[A-Za-z0-9._-]{1,64}$/, "1 to 64 letters, digits, '.', '_' or '-'")
      .default(() => `${os.hostname().replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 48)}-${process.pid}`),
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
