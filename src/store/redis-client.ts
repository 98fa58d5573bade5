/**
 * The typed adapter around ioredis: the only file of the store that knows the library. It
 * connects in one of three modes (one server, Sentinel, Cluster) and gives the store a small set
 * of commands with the failure behaviour the broker needs:
 *
 * - **Fail fast.** No offline queue: a command issued while Redis is not connected is refused at
 *   once, and nothing is kept to be replayed later (a write replayed after the broker refused
 *   its acknowledgement could land after newer writes). Commands cut off by a lost connection are
 *   not re-sent either.
 * - **A deadline on every command** (`commandTimeoutMs`): the caller gets ERR_STORE_UNAVAILABLE
 *   (reads) or StoreWriteError (writes) when it passes, and the socket is dropped and reconnected
 *   when the server stays silent that long (a frozen or paused Redis). From a missed deadline until
 *   Redis answers again or a new connection is ready, commands are refused at once rather than sent
 *   to wait out a deadline of their own (one server or Sentinel; a Cluster has a socket per node).
 * - **Bounded memory.** The bytes of commands sent and not yet answered are counted until the
 *   command really leaves the client (an answer, or the connection dropped), and a write past
 *   `maxPendingBytes` is refused at once instead of piling up behind a Redis that does not answer.
 * - **Reconnects by itself**, with a backoff capped at 2 s, and loads the Lua scripts on every
 *   new connection before anything else is sent on it.
 * - **WAIT** (`waitReplicas` > 0): the writes sent in one event-loop turn are followed by one
 *   `WAIT n timeout`; each resolves only when n replicas have them too.
 */
import { Cluster, Redis, ReplyError, type ClusterOptions, type RedisOptions } from 'ioredis';
import { sentinelOptions, type RedisTarget } from '../config/redis-connection.ts';
import { StoreError, StoreWriteError } from './errors.ts';
import { SCRIPTS, type Script } from './redis-scripts.ts';

/** How to reach Redis, resolved from the configuration (files already read), with the store's write settings. */
export interface RedisConnection extends RedisTarget {
  maxPendingBytes: number;
  waitReplicas: number;
  waitTimeoutMs: number;
}

/** A reply as the store reads it: bulk strings as Buffers. */
export type Reply = Buffer | number | null | Reply[];

type Client = Redis | Cluster;
type Invoke = (...args: (string | Buffer | number)[]) => Promise<unknown>;

const MAX_RECONNECT_DELAY_MS = 2000;

function commonOptions(c: RedisConnection): RedisOptions {
  return {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    enableAutoPipelining: true,
    // SCRIPT LOAD must go out on its own, first on a new connection (see redis-scripts.ts).
    autoPipeliningIgnoredCommands: ['script'],
    // A connection on which nothing comes back for this long while commands wait is dropped.
    socketTimeout: c.commandTimeoutMs,
    connectTimeout: c.connectTimeoutMs,
    retryStrategy: (times: number) => Math.min(50 * 2 ** Math.min(times, 6), MAX_RECONNECT_DELAY_MS),
    // A master that became a replica (a failover) refuses writes with READONLY: reconnect, so
    // Sentinel names the new master. The failed write is not re-sent (1, not 2).
    reconnectOnError: (err: Error) => (err.message.startsWith('READONLY') ? 1 : false),
    protocol: 2,
    maintNotifications: 'disabled',
    connectionName: 'portcullis-store',
    // CLIENT SETINFO is Redis 7.2+, and one command more for an ACL user to be allowed.
    disableClientInfo: true,
    ...(c.username !== undefined ? { username: c.username } : {}),
    ...(c.password !== undefined ? { password: c.password } : {}),
    ...(c.tls !== undefined ? { tls: c.tls } : {}),
  };
}

function makeClient(c: RedisConnection): Client {
  const common = commonOptions(c);
  switch (c.mode) {
    case 'standalone':
      return new Redis({ ...common, host: c.host ?? '127.0.0.1', port: c.port ?? 6379, db: c.db ?? 0 });
    case 'sentinel':
      return new Redis({ ...common, ...sentinelOptions(c, (times) => Math.min(100 * 2 ** Math.min(times, 5), MAX_RECONNECT_DELAY_MS)) });
    case 'cluster': {
      const { enableOfflineQueue: _q, enableAutoPipelining: _p, autoPipeliningIgnoredCommands: _i, lazyConnect: _l, retryStrategy: _r, ...node } = common;
      const options: ClusterOptions = {
        lazyConnect: true,
        enableOfflineQueue: false,
        enableAutoPipelining: true,
        autoPipeliningIgnoredCommands: ['script'],
        scaleReads: 'master',
        maxRedirections: 16,
        retryDelayOnFailover: 100,
        retryDelayOnClusterDown: 100,
        slotsRefreshTimeout: c.commandTimeoutMs,
        clusterRetryStrategy: (times: number) => Math.min(100 * 2 ** Math.min(times, 5), MAX_RECONNECT_DELAY_MS),
        redisOptions: node,
      };
      return new Cluster(c.nodes ?? [], options);
    }
  }
}

/** The error a command failure becomes: StoreWriteError for writes, StoreError for reads. */
export function storeFailure(err: unknown, write: boolean, target: string, what: string): StoreError {
  if (err instanceof StoreError) return err;
  const message = err instanceof Error ? err.message : String(err);
  const word = /^[A-Z]+/.exec(message)?.[0];
  let errno: string;
  if (err instanceof LocalRefusal) errno = err.errno;
  else if (err instanceof DeadlineError) errno = 'ETIMEDOUT';
  else if (word !== undefined && word.length > 2 && word !== 'ERR' && message.startsWith(`${word} `)) errno = word;
  else if (word === 'ERR') errno = 'ERR';
  else errno = 'ECONNRESET';
  const diskFull = errno === 'OOM' || (errno === 'MISCONF' && /no space/i.test(message));
  const detail = `${what} on ${target} failed: ${message}`;
  if (write) return new StoreWriteError(`${detail}; nothing of it is acknowledged`, target, diskFull, errno, { cause: err });
  const corrupt = errno === 'WRONGTYPE';
  return new StoreError(corrupt ? 'ERR_STORE_CORRUPT' : 'ERR_STORE_UNAVAILABLE', detail, target, { cause: err });
}

class DeadlineError extends Error {}

/** A command refused here, before it was sent: not connected (ENOTCONN), or too much already waiting (EBACKLOG). */
class LocalRefusal extends Error {
  constructor(
    message: string,
    readonly errno: 'ENOTCONN' | 'EBACKLOG' | 'ETIMEDOUT',
  ) {
    super(message);
  }
}

/** One connection (or cluster client) to Redis, opened by the store and closed with it. */
export class RedisLink {
  private client: Client | null = null;
  private pendingBytes = 0;
  /** Writes sent this turn that wait for one WAIT (waitReplicas > 0). */
  private waitBatch: Promise<void> | null = null;
  private closed = true;
  /**
   * A command missed its deadline on this connection (one server or Sentinel): Redis is frozen,
   * paused or cut off, and the socket is about to be dropped. Until Redis answers again or a new
   * connection is ready, nothing more is sent on it.
   */
  private silent = false;

  constructor(readonly connection: RedisConnection) {}

  get target(): string {
    return this.connection.target;
  }

  /** Bytes of commands sent and not answered yet (what a silent Redis holds in this process). */
  get pending(): number {
    return this.pendingBytes;
  }

  /** Connects (or fails within connectTimeoutMs) and loads the scripts. */
  async connect(): Promise<void> {
    const client = makeClient(this.connection);
    // Errors reach the callers of the commands; the event must have a listener or Node would end the
    // process. The last one says why a connection failed (a refused password, a certificate).
    let lastError: Error | undefined;
    client.on('error', (err: Error) => {
      lastError = err;
    });
    if (client instanceof Cluster) {
      client.on('+node', (node: Redis) => node.on('ready', () => void loadScripts(node)));
    } else {
      client.on('ready', () => {
        this.silent = false;
        void loadScripts(client);
      });
    }
    this.client = client;
    this.closed = false;
    this.silent = false;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        client.connect(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new DeadlineError(`no connection within ${this.connection.connectTimeoutMs} ms`)), this.connection.connectTimeoutMs);
        }),
      ]);
      if (client instanceof Cluster) await Promise.all(client.nodes('master').map((n) => loadScripts(n)));
      else await loadScripts(client);
    } catch (err) {
      this.closed = true;
      this.client = null;
      client.disconnect();
      const why = lastError !== undefined && lastError.message !== (err as Error).message ? `${(err as Error).message} (${lastError.message})` : (err as Error).message;
      throw new StoreError('ERR_STORE_UNAVAILABLE', `cannot connect to Redis at ${this.target}: ${why}`, this.target, { cause: err });
    } finally {
      clearTimeout(timer);
    }
  }

  async close(): Promise<void> {
    const client = this.client;
    this.closed = true;
    this.client = null;
    if (client === null) return;
    try {
      await Promise.race([client.quit(), new Promise((r) => setTimeout(r, this.connection.commandTimeoutMs).unref())]);
    } catch {
      // Already gone: nothing to close politely.
    }
    client.disconnect();
  }

  // ── running commands ──────────────────────────────────────────────────────

  /**
   * Runs `fn` against the client with the deadline, the pending-bytes budget (writes) and the
   * error mapping; `what` names the operation in errors.
   */
  private run<T>(write: boolean, bytes: number, what: string, fn: (client: Client) => Promise<T>): Promise<T> {
    const client = this.client;
    if (client === null || this.closed) {
      return Promise.reject(new StoreError('ERR_STORE_CLOSED', `the store on ${this.target} is not open`, this.target));
    }
    if (client.status !== 'ready') {
      return Promise.reject(storeFailure(new LocalRefusal(`not connected (${client.status})`, 'ENOTCONN'), write, this.target, what));
    }
    const ms = this.connection.commandTimeoutMs;
    if (this.silent) {
      return Promise.reject(storeFailure(new LocalRefusal(`Redis is not answering: a command got no answer within ${ms} ms (store.commandTimeoutMs); reconnecting`, 'ETIMEDOUT'), write, this.target, what));
    }
    if (write && this.pendingBytes > 0 && this.pendingBytes + bytes > this.connection.maxPendingBytes) {
      return Promise.reject(storeFailure(new LocalRefusal(`Redis is not answering: ${this.pendingBytes} bytes of commands are still waiting (store.maxPendingBytes)`, 'EBACKLOG'), true, this.target, what));
    }
    this.pendingBytes += bytes;
    let done: Promise<T>;
    try {
      done = fn(client);
    } catch (err) {
      this.pendingBytes -= bytes;
      return Promise.reject(storeFailure(err, write, this.target, what));
    }
    const release = () => {
      this.pendingBytes -= bytes;
    };
    done.then(release, release);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        // The socket timeout (the same length, armed when the command left) drops the connection;
        // until then, a command sent on it would only wait out its own deadline.
        if (!(client instanceof Cluster) && client === this.client) this.silent = true;
        reject(storeFailure(new DeadlineError(`no answer within ${ms} ms (store.commandTimeoutMs)`), write, this.target, what));
      }, ms);
      done.then(
        (v) => {
          clearTimeout(timer);
          if (client === this.client) this.silent = false; // Redis answers
          resolve(v);
        },
        (err: unknown) => {
          clearTimeout(timer);
          // An error reply is an answer too; a dropped connection is not (the next one clears it when ready).
          if (client === this.client && err instanceof ReplyError) this.silent = false;
          if (err instanceof Error && err.message.startsWith('NOSCRIPT')) this.reloadScripts();
          reject(storeFailure(err, write, this.target, what));
        },
      );
    });
  }

  private invoke(client: Client, command: string): Invoke {
    // Every command has a `<name>Buffer` variant at run time (bulk replies as Buffers); the typings
    // list only some. Auto-pipelining handles these (not `callBuffer`, in ioredis 6.1).
    const fn = (client as unknown as Record<string, Invoke>)[`${command}Buffer`];
    if (typeof fn !== 'function') throw new Error(`ioredis has no command ${command}`);
    return fn.bind(client);
  }

  /** A write: resolves once Redis (and, with waitReplicas, that many replicas) has it. */
  async write(what: string, bytes: number, command: string, ...args: (string | Buffer | number)[]): Promise<Reply> {
    const reply = await this.run(true, bytes, what, (c) => this.invoke(c, command)(...args) as Promise<Reply>);
    if (this.connection.waitReplicas > 0) await this.replicated(what);
    return reply;
  }

  /** Runs a script that writes. */
  async writeScript(what: string, script: Script, keys: string[], args: (string | Buffer | number)[]): Promise<Reply> {
    let bytes = 64;
    for (const a of args) bytes += typeof a === 'string' ? a.length : Buffer.isBuffer(a) ? a.length : 8;
    return this.write(what, bytes, 'evalsha', script.sha, keys.length, ...keys, ...args);
  }

  read(what: string, command: string, ...args: (string | Buffer | number)[]): Promise<Reply> {
    return this.run(false, 0, what, (c) => this.invoke(c, command)(...args) as Promise<Reply>);
  }

  readScript(what: string, script: Script, keys: string[], args: (string | Buffer | number)[] = []): Promise<Reply> {
    return this.read(what, 'evalsha', script.sha, keys.length, ...keys, ...args);
  }

  /** One WAIT for every write sent in this event-loop turn (they share the connection, so it covers them all). */
  private replicated(what: string): Promise<void> {
    if (this.waitBatch === null) {
      this.waitBatch = new Promise<void>((resolve) => setImmediate(resolve)).then(async () => {
        this.waitBatch = null;
        const { waitReplicas: n, waitTimeoutMs: ms } = this.connection;
        const got = await this.run(true, 0, `${what} (WAIT)`, (c) => this.invoke(c, 'wait')(n, ms) as Promise<number>);
        if (typeof got !== 'number' || got < n) {
          throw new StoreWriteError(`${what} on ${this.target}: only ${String(got)} of ${n} replicas confirmed the write within ${ms} ms (store.waitReplicas); it is not acknowledged`, this.target, false, 'NOREPLICAS');
        }
      });
    }
    return this.waitBatch;
  }

  /** After a NOSCRIPT (a flushed script cache, a failover): load the scripts again on every node. */
  private reloadScripts(): void {
    const client = this.client;
    if (client === null) return;
    for (const n of client instanceof Cluster ? client.nodes('master') : [client]) void loadScripts(n);
  }

  // ── per-node commands (one server: that one; cluster: every master) ─────────

  /** Runs a read on every master (cluster) or the one server; a failure on a node is its answer. */
  async onEachMaster<T>(what: string, command: string, ...args: (string | Buffer | number)[]): Promise<{ node: string; reply?: T; error?: StoreError }[]> {
    const client = this.client;
    if (client === null) throw new StoreError('ERR_STORE_CLOSED', `the store on ${this.target} is not open`, this.target);
    const nodes = client instanceof Cluster ? client.nodes('master') : [client];
    return Promise.all(
      nodes.map(async (n) => {
        const node = `${n.options.host ?? '?'}:${n.options.port ?? '?'}`;
        try {
          return { node, reply: (await this.run(false, 0, what, () => this.invoke(n, command)(...args))) as T };
        } catch (err) {
          return { node, error: err as StoreError };
        }
      }),
    );
  }

  /** Each master's client, for a SCAN over the whole keyspace (`store check`). */
  scanTargets(): { node: string; scan: (cursor: string, pattern: string, count: number) => Promise<Reply> }[] {
    const client = this.client;
    if (client === null) throw new StoreError('ERR_STORE_CLOSED', `the store on ${this.target} is not open`, this.target);
    const nodes = client instanceof Cluster ? client.nodes('master') : [client];
    return nodes.map((n) => ({
      node: `${n.options.host ?? '?'}:${n.options.port ?? '?'}`,
      scan: (cursor, pattern, count) => this.run(false, 0, 'SCAN', () => this.invoke(n, 'scan')(cursor, 'MATCH', pattern, 'COUNT', count) as Promise<Reply>),
    }));
  }
}

async function loadScripts(node: Redis): Promise<void> {
  try {
    await Promise.all(SCRIPTS.map((s) => node.script('LOAD', s.lua)));
  } catch {
    // The connection went away again; the next 'ready' loads them. A write meanwhile gets NOSCRIPT and is refused.
  }
}
