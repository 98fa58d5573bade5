/**
 * `store: { type: redis, ... }`: sessions and retained messages in a Redis shared by one or more
 * brokers (docs/persistence.md, "Redis store"). Exactly one way to reach Redis: `url` (one
 * server), `sentinels` + `name` (Sentinel), or `nodes` (Redis Cluster). Secrets come from files,
 * never from the configuration itself.
 */
import { z } from 'zod';
import { isLoopbackHost } from './auth-schema.ts';

const endpoint = z.strictObject({
  host: z.string().min(1),
  port: z.number().int().min(1).max(65535),
});

export const redisStore = z
  .strictObject({
    type: z.literal('redis'),
    /** One server: `redis://host:port/db` or `rediss://` (TLS). Credentials belong in usernameFile/passwordFile. */
    url: z.string().min(1).optional(),
    /** Sentinel: the sentinels to ask for the master of `name`. */
    sentinels: z.array(endpoint).min(1, 'name at least one sentinel').optional(),
    /** Sentinel: the master group name. */
    name: z.string().min(1).optional(),
    /** Redis Cluster: seed nodes (the others are discovered). */
    nodes: z.array(endpoint).min(1, 'name at least one cluster node').optional(),
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
    /** ACL user name, read from this file (one line). */
    usernameFile: z.string().min(1).optional(),
    /** Password, read from this file (one line); must not be readable by other users. */
    passwordFile: z.string().min(1).optional(),
    /** TLS to Redis: with a `rediss://` url, or to sentinels and cluster nodes. */
    tls: z
      .strictObject({
        /** CA bundle (PEM) that the server certificate must chain to; default: the system's CAs. */
        ca: z.string().min(1).optional(),
        /** Client certificate (PEM) and its key, when Redis asks for one (tls-auth-clients). */
        cert: z.string().min(1).optional(),
        key: z.string().min(1).optional(),
        /** The name the server certificate must carry; default: the host connected to. */
        servername: z.string().min(1).optional(),
        minVersion: z.enum(['TLSv1.2', 'TLSv1.3']).default('TLSv1.2'),
        /** Check the server certificate (default). false is for a test bench only: anyone on the path can read and forge the store. */
        verifyServer: z.boolean().default(true),
      })
      .optional(),
    /** Plain text (no TLS) to a Redis that is not on loopback: every message crosses the network readable. */
    allowPlainText: z.boolean().default(false),
    /** Every command must be answered within this time, or it fails (and the broker refuses what it would acknowledge). */
    commandTimeoutMs: z.number().int().min(50).max(60_000).default(3000),
    connectTimeoutMs: z.number().int().min(100).max(60_000).default(5000),
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
    const modes = [s.url !== undefined && 'url', s.sentinels !== undefined && 'sentinels', s.nodes !== undefined && 'nodes'].filter((m): m is string => m !== false);
    if (modes.length > 1) ctx.addIssue({ code: 'custom', path: [modes[1] as string], message: `give one way to reach Redis: url, sentinels (with name), or nodes; not ${modes.join(' and ')}` });
    if (s.sentinels !== undefined && s.name === undefined) ctx.addIssue({ code: 'custom', path: ['name'], message: 'required with sentinels: the master group name' });
    if (s.name !== undefined && s.sentinels === undefined) ctx.addIssue({ code: 'custom', path: ['name'], message: 'only with sentinels' });
    if (s.nodes !== undefined && s.waitReplicas > 0) ctx.addIssue({ code: 'custom', path: ['waitReplicas'], message: 'not supported with a Redis Cluster (nodes): WAIT would reach a random node, not the one holding the write' });
    // WAIT holds the connection until it returns: past commandTimeoutMs the connection would be dropped as dead.
    if (s.waitReplicas > 0 && s.waitTimeoutMs >= s.commandTimeoutMs) ctx.addIssue({ code: 'custom', path: ['waitTimeoutMs'], message: `must be below commandTimeoutMs (${s.commandTimeoutMs}): WAIT holds the connection while it waits` });
    if (s.usernameFile !== undefined && s.passwordFile === undefined) ctx.addIssue({ code: 'custom', path: ['passwordFile'], message: 'required with usernameFile: an ACL user logs in with a password' });
    if ((s.tls?.cert === undefined) !== (s.tls?.key === undefined)) ctx.addIssue({ code: 'custom', path: ['tls', s.tls?.cert === undefined ? 'cert' : 'key'], message: 'give the client certificate and its key together' });
    let tls = s.tls !== undefined;
    const hosts: string[] = [];
    if (s.url !== undefined) {
      let u: URL;
      try {
        u = new URL(s.url);
      } catch {
        ctx.addIssue({ code: 'custom', path: ['url'], message: 'not a URL: expected redis://host:port/db or rediss://host:port/db' });
        return;
      }
      if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') {
        ctx.addIssue({ code: 'custom', path: ['url'], message: `must start with redis:// or rediss:// (TLS), not ${u.protocol}//` });
        return;
      }
      if (u.protocol === 'redis:' && s.tls !== undefined) ctx.addIssue({ code: 'custom', path: ['tls'], message: 'TLS settings with a plain-text redis:// url: use rediss://' });
      tls = u.protocol === 'rediss:';
      if (u.hostname === '') ctx.addIssue({ code: 'custom', path: ['url'], message: 'names no host' });
      const db = u.pathname.replace(/^\//, '');
      if (db !== '' && !/^(0|[1-9][0-9]?)$/.test(db)) ctx.addIssue({ code: 'custom', path: ['url'], message: `the path is the database number (0-99), not ${JSON.stringify(db)}` });
      if (u.search !== '' || u.hash !== '') ctx.addIssue({ code: 'custom', path: ['url'], message: 'options in the url are not read: use the store settings' });
      if (u.password !== '' && s.passwordFile !== undefined) ctx.addIssue({ code: 'custom', path: ['url'], message: 'a password in the url and passwordFile: keep it in passwordFile only' });
      hosts.push(u.hostname);
    }
    for (const e of [...(s.sentinels ?? []), ...(s.nodes ?? [])]) hosts.push(e.host);
    if (hosts.length === 0) hosts.push('127.0.0.1');
    const remote = hosts.filter((h) => !isLoopbackHost(h));
    if (!tls && remote.length > 0 && !s.allowPlainText) {
      ctx.addIssue({
        code: 'custom',
        path: [s.url !== undefined ? 'url' : s.sentinels !== undefined ? 'sentinels' : 'nodes'],
        message: `plain text to ${remote[0]}: Redis holds every stored message and session; use TLS (rediss://, or a tls section), or set allowPlainText: true for a private network you trust`,
      });
    }
  });

export type RedisStoreConfig = z.output<typeof redisStore>;
