/**
 * `cluster` and `workers`: several broker processes (on many machines, or `workers: N` on one)
 * that behave as one broker, over a Redis that the operators already run. Off by default: a
 * configuration without `cluster` is one node that needs no Redis. See docs/cluster.md.
 */
import os from 'node:os';
import { z } from 'zod';
import { isLoopbackHost } from './auth-schema.ts';

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
    /**
     * Plain text (no TLS) to a Redis that is not on loopback: every message, session and the
     * Redis password cross the network readable. Refused unless set (a test bench, a private link).
     */
    allowPlainText: z.boolean().default(false),
  })
  .refine((r) => [r.url, r.sentinel, r.nodes].filter((x) => x !== undefined).length === 1, 'give exactly one of url, sentinel or nodes')
  .refine((r) => r.allowPlainText || r.tls !== false || plainTextHosts(r).every(isLoopbackHost), {
    message: 'a Redis that is not on loopback needs TLS (rediss:// or tls), or allowPlainText: true to send everything in clear',
  });

/** The hosts a configuration without TLS would reach in plain text (a rediss:// URL is TLS). */
function plainTextHosts(r: { url?: string | undefined; sentinel?: { sentinels: string[] } | undefined; nodes?: string[] | undefined }): string[] {
  if (r.url !== undefined) {
    if (r.url.startsWith('rediss://') || !URL.canParse(r.url)) return [];
    return [new URL(r.url).hostname.replace(/^\[|\]$/g, '')];
  }
  const list = r.sentinel?.sentinels ?? r.nodes ?? [];
  return list.map((hp) => hp.slice(0, hp.lastIndexOf(':')).replace(/^\[|\]$/g, ''));
}

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
