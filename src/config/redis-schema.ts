/**
 * How to reach Redis: one shape for `store` (type redis) and `cluster.redis`, checked by one
 * function, so a connection written for one works in the other (docs/configuration.md, "Redis
 * connection"). Exactly one way to reach Redis:
 *
 * - `url` (`redis://host:port/db`, `rediss://` for TLS), or `host` + `port` (+ `db`, `tls`);
 * - `sentinels` + `name`: Redis Sentinel, which names the master and follows a failover;
 * - `nodes`: Redis Cluster seed nodes.
 *
 * Secrets come from files (usernameFile, passwordFile, sentinelUsernameFile,
 * sentinelPasswordFile), never from the configuration: a password in the url is refused. Without
 * TLS, a Redis that is not on loopback is refused unless `allowPlainText` says so by name.
 *
 * The spellings `cluster.redis` accepted before the two shapes were one are still read: the
 * `sentinel: { sentinels, name, passwordFile }` block, `host:port` strings for endpoints, and
 * `tls.caFile` / `certFile` / `keyFile`. Each is turned into the shape above.
 */
import { z } from 'zod';
import { isLoopbackHost } from './auth-schema.ts';

const HOST_PORT = /^(?:\[([0-9a-fA-F:.]+)\]|([^\s:[\]]+)):(\d{1,5})$/;

/** A sentinel or cluster node: `{ host, port }`, or the string `host:port` (`[v6]:port`). */
const endpoint = z.union(
  [
    z.strictObject({ host: z.string().min(1), port: z.number().int().min(1).max(65535) }),
    z
      .string()
      .regex(HOST_PORT, 'expected host:port or { host, port }')
      .transform((s) => {
        const m = HOST_PORT.exec(s) as RegExpExecArray;
        return { host: (m[1] ?? m[2]) as string, port: Number(m[3]) };
      })
      .refine((e) => e.port >= 1 && e.port <= 65535, 'the port is 1 to 65535'),
  ],
  { error: 'expected { host, port } or host:port' },
);

export type RedisEndpoint = z.output<typeof endpoint>;

const tlsSection = z.strictObject({
  /** CA bundle (PEM) that the server certificate must chain to; default: the system's CAs. */
  ca: z.string().min(1).optional(),
  /** Client certificate (PEM) and its key, when Redis asks for one (tls-auth-clients). */
  cert: z.string().min(1).optional(),
  key: z.string().min(1).optional(),
  /** The name the server certificate must carry; default: the host connected to. */
  servername: z.string().min(1).optional(),
  minVersion: z.enum(['TLSv1.2', 'TLSv1.3']).default('TLSv1.2'),
  /** Check the server certificate (default). false is for a test bench only: anyone on the path can read and forge what goes to Redis. */
  verifyServer: z.boolean().default(true),
  /** Older `cluster.redis.tls` spellings of ca, cert and key. */
  caFile: z.string().min(1).optional(),
  certFile: z.string().min(1).optional(),
  keyFile: z.string().min(1).optional(),
});

/** The connection keys, as fields to spread into the `store` and `cluster.redis` objects. */
export function redisConnectionFields(defaults: { commandTimeoutMs: number }) {
  return {
    /** One server: `redis://host:port/db` or `rediss://` (TLS). Credentials belong in usernameFile/passwordFile. */
    url: z.string().min(1).optional(),
    /** One server by host and port (TLS with a `tls` key). */
    host: z.string().min(1).optional(),
    port: z.number().int().min(1).max(65535).optional(),
    /** The database number with `host` (with `url`, its path). */
    db: z.number().int().min(0).max(99).optional(),
    /** Sentinel: the sentinels to ask for the master of `name`. */
    sentinels: z.array(endpoint).min(1, 'name at least one sentinel').optional(),
    /** Sentinel: the master group name. */
    name: z.string().min(1).optional(),
    /** Sentinel: the ACL user and password the sentinels themselves require, each read from a file. */
    sentinelUsernameFile: z.string().min(1).optional(),
    sentinelPasswordFile: z.string().min(1).optional(),
    /** Older spelling of sentinels + name + sentinelPasswordFile. */
    sentinel: z
      .strictObject({
        sentinels: z.array(endpoint).min(1, 'name at least one sentinel'),
        name: z.string().min(1),
        passwordFile: z.string().min(1).optional(),
      })
      .optional(),
    /** Redis Cluster: seed nodes (the others are discovered). */
    nodes: z.array(endpoint).min(1, 'name at least one cluster node').optional(),
    /** ACL user name, read from this file (one line). */
    usernameFile: z.string().min(1).optional(),
    /** Password, read from this file (one line); must not be readable by other users. */
    passwordFile: z.string().min(1).optional(),
    /** TLS to Redis: implied by rediss://; `true` or a section for host, sentinels and nodes. */
    tls: z.union([z.boolean(), tlsSection]).optional(),
    /** Plain text (no TLS) to a Redis that is not on loopback: everything sent to Redis crosses the network readable. */
    allowPlainText: z.boolean().default(false),
    /** Every command must be answered within this time, or it fails (a Redis that hangs is a Redis that is down). */
    commandTimeoutMs: z.number().int().min(50).max(60_000).default(defaults.commandTimeoutMs),
    /** Deadline of a connection attempt. */
    connectTimeoutMs: z.number().int().min(100).max(60_000).default(5000),
  };
}

type Fields = ReturnType<typeof redisConnectionFields>;
export type RawRedisConnection = z.output<z.ZodObject<Fields>>;

/** TLS settings after the older spellings are folded in. */
export interface RedisTlsConfig {
  ca?: string;
  cert?: string;
  key?: string;
  servername?: string;
  minVersion: 'TLSv1.2' | 'TLSv1.3';
  verifyServer: boolean;
}

/** The checked connection, one spelling per setting. */
export interface RedisConnectionConfig {
  url?: string;
  host?: string;
  port?: number;
  db?: number;
  sentinels?: RedisEndpoint[];
  name?: string;
  sentinelUsernameFile?: string;
  sentinelPasswordFile?: string;
  nodes?: RedisEndpoint[];
  usernameFile?: string;
  passwordFile?: string;
  /** Present: TLS (also when implied by rediss://). */
  tls?: RedisTlsConfig;
  allowPlainText: boolean;
  commandTimeoutMs: number;
  connectTimeoutMs: number;
}

/** How the configuration reaches Redis, for messages: 'url', 'host', 'sentinels' or 'nodes'. */
export function redisMode(r: { url?: string | undefined; host?: string | undefined; sentinels?: unknown; nodes?: unknown }): 'url' | 'host' | 'sentinels' | 'nodes' | undefined {
  return r.url !== undefined ? 'url' : r.host !== undefined ? 'host' : r.sentinels !== undefined ? 'sentinels' : r.nodes !== undefined ? 'nodes' : undefined;
}

/**
 * The one check of a connection (`superRefine` of both objects). `required`: one way to reach
 * Redis must be given (`cluster.redis`); otherwise none means redis://127.0.0.1:6379 (`store`).
 */
export function checkRedisConnection(r: RawRedisConnection, ctx: z.RefinementCtx, options: { required: boolean }): void {
  const issue = (path: (string | number)[], message: string) => ctx.addIssue({ code: 'custom', path, message });
  if (r.sentinel !== undefined && (r.sentinels !== undefined || r.name !== undefined || r.sentinelPasswordFile !== undefined)) {
    issue(['sentinel'], 'the older sentinel block and sentinels/name/sentinelPasswordFile: give only sentinels, name and sentinelPasswordFile');
  }
  const sentinels = r.sentinels ?? r.sentinel?.sentinels;
  const name = r.name ?? r.sentinel?.name;
  const modes = [r.url !== undefined && 'url', r.host !== undefined && 'host', sentinels !== undefined && 'sentinels', r.nodes !== undefined && 'nodes'].filter((m): m is string => m !== false);
  if (modes.length > 1) issue([modes[1] as string], `give one way to reach Redis: url, host, sentinels (with name), or nodes; not ${modes.join(' and ')}`);
  if (modes.length === 0 && options.required) issue([], 'give one way to reach Redis: url, host, sentinels (with name), or nodes');
  if (sentinels !== undefined && name === undefined) issue(['name'], 'required with sentinels: the master group name');
  if (name !== undefined && sentinels === undefined) issue(['name'], 'only with sentinels: the Sentinel master group name');
  if ((r.port !== undefined || r.db !== undefined) && r.host === undefined) issue([r.port !== undefined ? 'port' : 'db'], r.url !== undefined ? 'with url, the port and database number are written in it' : 'only with host');
  if (r.db !== undefined && r.db !== 0 && (sentinels !== undefined || r.nodes !== undefined)) issue(['db'], 'only with host');
  if (sentinels === undefined && (r.sentinelUsernameFile !== undefined || r.sentinelPasswordFile !== undefined)) {
    issue([r.sentinelUsernameFile !== undefined ? 'sentinelUsernameFile' : 'sentinelPasswordFile'], 'only with sentinels');
  }
  if (r.sentinelUsernameFile !== undefined && r.sentinelPasswordFile === undefined && r.sentinel?.passwordFile === undefined) {
    issue(['sentinelPasswordFile'], 'required with sentinelUsernameFile: an ACL user logs in with a password');
  }
  if (r.usernameFile !== undefined && r.passwordFile === undefined) issue(['passwordFile'], 'required with usernameFile: an ACL user logs in with a password');
  const t = typeof r.tls === 'object' ? r.tls : undefined;
  if (t !== undefined) {
    for (const [old, now] of [['caFile', 'ca'], ['certFile', 'cert'], ['keyFile', 'key']] as const) {
      if (t[old] !== undefined && t[now] !== undefined) issue(['tls', old], `the older spelling of tls.${now}, given with it: keep tls.${now} only`);
    }
    if (((t.cert ?? t.certFile) === undefined) !== ((t.key ?? t.keyFile) === undefined)) {
      issue(['tls', (t.cert ?? t.certFile) === undefined ? 'cert' : 'key'], 'give the client certificate and its key together');
    }
  }
  let tls = r.tls !== undefined && r.tls !== false;
  const hosts: string[] = [];
  if (r.url !== undefined) {
    let u: URL;
    try {
      u = new URL(r.url);
    } catch {
      issue(['url'], 'not a URL: expected redis://host:port/db or rediss://host:port/db');
      return;
    }
    if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') {
      issue(['url'], `must start with redis:// or rediss:// (TLS), not ${u.protocol}//`);
      return;
    }
    if (u.protocol === 'redis:' && tls) issue(['tls'], 'TLS settings with a plain-text redis:// url: use rediss://');
    if (u.protocol === 'rediss:' && r.tls === false) issue(['tls'], 'tls: false with a rediss:// url (which means TLS): use redis:// for plain text');
    tls = u.protocol === 'rediss:';
    if (u.hostname === '') issue(['url'], 'names no host');
    const db = u.pathname.replace(/^\//, '');
    if (db !== '' && !/^(0|[1-9][0-9]?)$/.test(db)) issue(['url'], `the path is the database number (0-99), not ${JSON.stringify(db)}`);
    if (u.search !== '' || u.hash !== '') issue(['url'], 'options in the url are not read: use the settings beside it');
    // A configuration file is copied, committed and shown in tickets; a secret in it leaks with it.
    if (u.password !== '') issue(['url'], 'must not hold a password: keep it in passwordFile only (a file only the broker can read)');
    if (u.username !== '' && r.usernameFile !== undefined) issue(['url'], 'a user name in the url and usernameFile: keep it in usernameFile only');
    hosts.push(u.hostname);
  }
  if (r.host !== undefined) hosts.push(r.host);
  for (const e of [...(sentinels ?? []), ...(r.nodes ?? [])]) hosts.push(e.host);
  if (hosts.length === 0) hosts.push('127.0.0.1');
  const remote = hosts.filter((h) => !isLoopbackHost(h));
  if (!tls && remote.length > 0 && !r.allowPlainText) {
    const key = r.sentinel !== undefined && r.sentinels === undefined ? 'sentinel' : (redisMode({ ...r, sentinels }) ?? 'url');
    issue([key], `plain text to ${remote[0]}: a Redis that is not on loopback needs TLS (rediss://, or tls), since everything the brokers keep and send there crosses the network readable; or set allowPlainText: true for a private network you trust`);
  }
}

/** The checked connection with the older spellings folded in (the `transform` of both objects). */
export function normaliseRedisConnection(r: RawRedisConnection): RedisConnectionConfig {
  const out: RedisConnectionConfig = { allowPlainText: r.allowPlainText, commandTimeoutMs: r.commandTimeoutMs, connectTimeoutMs: r.connectTimeoutMs };
  if (r.url !== undefined) out.url = r.url;
  if (r.host !== undefined) {
    out.host = r.host;
    out.port = r.port ?? 6379;
    out.db = r.db ?? 0;
  }
  const sentinels = r.sentinels ?? r.sentinel?.sentinels;
  const name = r.name ?? r.sentinel?.name;
  const sentinelPasswordFile = r.sentinelPasswordFile ?? r.sentinel?.passwordFile;
  if (sentinels !== undefined) out.sentinels = sentinels;
  if (name !== undefined) out.name = name;
  if (r.sentinelUsernameFile !== undefined) out.sentinelUsernameFile = r.sentinelUsernameFile;
  if (sentinelPasswordFile !== undefined) out.sentinelPasswordFile = sentinelPasswordFile;
  if (r.nodes !== undefined) out.nodes = r.nodes;
  if (r.usernameFile !== undefined) out.usernameFile = r.usernameFile;
  if (r.passwordFile !== undefined) out.passwordFile = r.passwordFile;
  const t = typeof r.tls === 'object' ? r.tls : r.tls === true ? { minVersion: 'TLSv1.2' as const, verifyServer: true } : undefined;
  if (t !== undefined || (r.url?.startsWith('rediss:') ?? false)) {
    const tls: RedisTlsConfig = { minVersion: t?.minVersion ?? 'TLSv1.2', verifyServer: t?.verifyServer ?? true };
    const ca = t?.ca ?? t?.caFile;
    const cert = t?.cert ?? t?.certFile;
    const key = t?.key ?? t?.keyFile;
    if (ca !== undefined) tls.ca = ca;
    if (cert !== undefined) tls.cert = cert;
    if (key !== undefined) tls.key = key;
    if (t?.servername !== undefined) tls.servername = t.servername;
    out.tls = tls;
  }
  return out;
}
