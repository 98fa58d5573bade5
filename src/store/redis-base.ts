/**
 * The Redis store's life cycle: open (connect, the format record, Redis's persistence settings,
 * the instance lease, the encryption epoch, a full verified read, the purge of what expired),
 * and close. The Store operations are in redis.ts; the layout in redis-keys.ts.
 */
import { performance } from 'node:perf_hooks';
import { randomUUID } from 'node:crypto';
import { StoreError } from './errors.ts';
import { Keyring, type StoreKey } from './keyring.ts';
import { RedisLink, type RedisConnection, type Reply } from './redis-client.ts';
import { InstanceLease } from './redis-instance.ts';
import { RedisKeys, bindMeta } from './redis-keys.ts';
import type { Problem, Sealing } from './redis-records.ts';
import { Epochs, keyOf, scanRedis, sessionsOf, type RedisScan } from './redis-scan.ts';
import { DELETE_IF_EXPIRY, DELETE_ORPHAN, DELETE_RETAINED_IF, UNINDEX_IF_SCORE } from './redis-scripts.ts';
import { decodeJson, encodeBytes, encodeJson, unwrap, wrap } from './records.ts';
import type { StoreOpenReport, StoredMessage, StoredSession } from './types.ts';
import { storeCounts } from './counts.ts';

export interface RedisStoreOptions {
  connection: RedisConnection;
  /** Every key starts with it; default `portcullis:`. */
  prefix?: string;
  /** This broker's name among those sharing the Redis (redis-instance.ts); default `default`. */
  instance?: string;
  /** Encryption of records (the first key seals, all open; see keyring.ts). */
  keys?: StoreKey[];
  /** With keys: also read records in the clear (a store used without encryption before); see redis-records.ts. */
  acceptPlaintext?: boolean;
  /** Found while reading the configuration (a password in the URL...), repeated in every open report. */
  warnings?: string[];
  /** The clock expiry is compared with (tests). */
  now?: () => number;
}

export const FORMAT = 'portcullis-redis-store';
export const FORMAT_VERSION = 1;
const EPOCH_COUNTER = 'epochs';

/** Refuses a store with damage: loading part of it would be silent loss (as the LMDB store does). */
export function throwIfProblems(problems: Problem[], target: string): void {
  if (problems.length === 0) return;
  const keyProblem = problems.every((p) => /key file|key id|no store key/.test(p.problem));
  const shown = problems.slice(0, 5).map((p) => `  - ${p.where}: ${p.problem}`);
  if (problems.length > 5) shown.push(`  - ... and ${problems.length - 5} more`);
  throw new StoreError(
    keyProblem ? 'ERR_STORE_KEY' : 'ERR_STORE_CORRUPT',
    keyProblem
      ? `${target}: ${problems.length} record(s) cannot be decrypted with the configured keys (store.encryption.keyFile):\n${shown.join('\n')}`
      : `${target}: ${problems.length} record(s) cannot be used (damaged, or not written by a broker); the broker does not start with part of its state missing. Run 'portcullis store check', then see docs/persistence.md, "Redis store: recovery":\n${shown.join('\n')}`,
    target,
  );
}

export class RedisBase {
  protected link: RedisLink | null = null;
  protected readonly redisKeys: RedisKeys;
  protected readonly keyring: Keyring | null;
  protected readonly sealing: Sealing;
  protected epochs: Epochs | null = null;
  protected readonly now: () => number;
  private lease: InstanceLease | null = null;
  private readonly instance: string;
  /** What open() read, handed to the first loadSessions / loadRetained (as the LMDB store does). */
  protected preloaded: { sessions: StoredSession[] | null; retained: StoredMessage[] | null } | null = null;

  constructor(protected readonly options: RedisStoreOptions) {
    this.redisKeys = new RedisKeys(options.prefix ?? 'portcullis:');
    this.instance = options.instance ?? 'default';
    this.keyring = options.keys !== undefined && options.keys.length > 0 ? new Keyring(options.keys) : null;
    this.sealing = { keyring: this.keyring, acceptPlaintext: options.acceptPlaintext === true };
    this.now = options.now ?? Date.now;
  }

  get target(): string {
    return this.options.connection.target;
  }

  /** The open connection; ERR_STORE_CLOSED when the store is not open. */
  protected conn(): RedisLink {
    if (this.link === null) throw new StoreError('ERR_STORE_CLOSED', `the store on ${this.target} is not open`, this.target);
    return this.link;
  }

  async open(): Promise<StoreOpenReport> {
    if (this.link !== null) throw new StoreError('ERR_STORE_LOCKED', `the store on ${this.target} is already open`, this.target);
    const started = performance.now();
    const link = new RedisLink(this.options.connection);
    await link.connect();
    let lease: InstanceLease | null = null;
    try {
      const warnings = [...(this.options.warnings ?? [])];
      const created = await this.checkFormat(link);
      const durability = await persistenceSettings(link, warnings);
      lease = await InstanceLease.acquire(link, this.redisKeys, this.instance);
      const epochs = new Epochs(link, this.redisKeys, this.keyring);
      if (this.keyring !== null) await this.startEpoch(link, epochs);
      const scan = await scanRedis(link, this.redisKeys, epochs, this.sealing);
      throwIfProblems(scan.problems, this.target);
      const purged = await this.purgeAtOpen(link, scan);
      const sessions = sessionsOf(scan);
      const retained = scan.retained.map((r) => r.message);
      this.link = link;
      this.epochs = epochs;
      this.lease = lease;
      this.preloaded = { sessions, retained };
      const report: StoreOpenReport = {
        type: 'redis',
        durable: true,
        path: `${this.target} (prefix ${this.redisKeys.prefix}, instance ${this.instance})`,
        durability,
        created,
        loaded: storeCounts(sessions, retained.length),
        purged,
        recovery: { uncleanShutdown: lease.unclean !== undefined },
        warnings,
        bytes: scan.bytes,
        durationMs: Math.round(performance.now() - started),
      };
      if (lease.unclean !== undefined) report.recovery.staleLock = { pid: lease.unclean.pid, host: lease.unclean.host, since: lease.unclean.since };
      if (this.keyring !== null) report.encryptionKeyId = this.keyring.activeId;
      return report;
    } catch (err) {
      // A refused open leaves the marker of an unclean stop for the next try.
      await lease?.release(lease.unclean === undefined).catch(() => undefined);
      await link.close();
      throw err;
    }
  }

  async close(): Promise<void> {
    const link = this.link;
    const lease = this.lease;
    this.link = null;
    this.lease = null;
    this.epochs = null;
    this.preloaded = null;
    if (link === null) return;
    try {
      // Writes already sent are answered first: Redis answers one connection in order.
      await lease?.release(true);
    } catch {
      // Redis is away: the next open finds the marker and reports an unclean stop (wills still pending are then published, as after a crash).
    } finally {
      await link.close();
    }
  }

  /** Makes sure the prefix holds a Portcullis store (or nothing); creates the format record. True when created. */
  private async checkFormat(link: RedisLink): Promise<boolean> {
    const field = 'format';
    let raw = await link.read('read the format record', 'hget', this.redisKeys.meta, field);
    let created = false;
    if (raw === null) {
      // One key per EXISTS: in a Redis Cluster the two live in different slots.
      const used = await Promise.all([this.redisKeys.index, this.redisKeys.retained].map((k) => link.read('look for store keys', 'exists', k)));
      if (used.some((n) => typeof n === 'number' && n > 0)) {
        throw new StoreError('ERR_STORE_CORRUPT', `${this.target}: keys under the prefix ${this.redisKeys.prefix} hold sessions or retained messages, but the store's format record (${this.redisKeys.meta} field format) is missing: it was deleted or the keys were written by something else`, this.target);
      }
      const record = wrap('meta', bindMeta(field), encodeJson({ format: FORMAT, version: FORMAT_VERSION, storeId: randomUUID(), created: new Date().toISOString() }), null);
      created = (await link.write('create the store', record.length, 'hsetnx', this.redisKeys.meta, field, record)) === 1;
      raw = created ? record : await link.read('read the format record', 'hget', this.redisKeys.meta, field);
    }
    let format: Record<string, unknown>;
    try {
      if (!Buffer.isBuffer(raw)) throw new Error('not a string');
      format = decodeJson(unwrap('meta', bindMeta(field), raw, null));
    } catch (err) {
      throw new StoreError('ERR_STORE_CORRUPT', `${this.target}: the store's format record (${this.redisKeys.meta} field format) is damaged: ${(err as Error).message}`, this.target, { cause: err });
    }
    if (format['format'] !== FORMAT) throw new StoreError('ERR_STORE_CORRUPT', `${this.target}: the keys under ${this.redisKeys.prefix} are not a Portcullis Redis store`, this.target);
    if (typeof format['version'] !== 'number' || format['version'] > FORMAT_VERSION) {
      throw new StoreError('ERR_STORE_CORRUPT', `${this.target}: store format version ${String(format['version'])} is newer than this broker reads (${FORMAT_VERSION})`, this.target);
    }
    return created;
  }

  /** A new encryption epoch for this open: its number from a counter shared by every broker, its salt stored before any record uses it. */
  private async startEpoch(link: RedisLink, epochs: Epochs): Promise<void> {
    const keyring = this.keyring as Keyring;
    const n = await link.write('start an encryption epoch', 16, 'hincrby', this.redisKeys.meta, EPOCH_COUNTER, 1);
    if (typeof n !== 'number') throw new StoreError('ERR_STORE_CORRUPT', `${this.target}: the epoch counter is not a number`, this.target);
    const salt = Keyring.newSalt();
    const field = `epoch:${n}`;
    const record = wrap('meta', bindMeta(field), encodeBytes(salt), null);
    if ((await link.write('store an epoch salt', record.length, 'hsetnx', this.redisKeys.meta, field, record)) !== 1) {
      throw new StoreError('ERR_STORE_CORRUPT', `${this.target}: encryption epoch ${n} exists already: the epoch counter (${this.redisKeys.meta} field ${EPOCH_COUNTER}) was set back`, this.target);
    }
    epochs.add(n, salt);
    keyring.startEpoch(n, salt);
  }

  /**
   * Drops expired sessions and retained messages, index entries of sessions that are gone, and
   * records of sessions without their session record. Each deletion is conditional on what was
   * read (another broker may have resumed the session since). Expired queued messages are left to
   * the broker, which drops them as it delivers: removing them here could shift the queue under
   * a broker that holds the session.
   */
  private async purgeAtOpen(link: RedisLink, scan: RedisScan): Promise<StoreOpenReport['purged']> {
    const now = this.now();
    const purged = { expiredSessions: 0, expiredMessages: 0, expiredRetained: 0, orphans: 0 };
    const kept: typeof scan.sessions = [];
    for (const s of scan.sessions) {
      const k = this.redisKeys.session(s.digest);
      const session = s.decoded.session;
      if (s.decoded.orphan) {
        if ((await link.writeScript('delete orphan records', DELETE_ORPHAN, [k.hash, k.queue], [])) !== 0) purged.orphans++;
        await this.unindex(link, s.digest, s.score);
      } else if (session === undefined) {
        kept.push(s); // unreadable: open has refused already; never deleted here
      } else if (session.expiresAt !== undefined && session.expiresAt <= now && s.decoded.expiryValue !== undefined) {
        if ((await link.writeScript('delete an expired session', DELETE_IF_EXPIRY, [k.hash, k.queue], [s.decoded.expiryValue])) === 1) {
          purged.expiredSessions++;
          await this.unindex(link, s.digest, s.score);
        } else kept.push(s);
      } else kept.push(s);
    }
    scan.sessions = kept;
    for (const s of scan.stale) await this.unindex(link, s.digest, s.score);
    const live: typeof scan.retained = [];
    for (const r of scan.retained) {
      if (r.message.expiresAt !== undefined && r.message.expiresAt <= now) {
        if ((await link.writeScript('delete an expired retained message', DELETE_RETAINED_IF, [this.redisKeys.retained, this.redisKeys.retainedExpiry], [r.topic, r.value])) === 1) {
          purged.expiredRetained++;
          continue;
        }
      }
      live.push(r);
    }
    scan.retained = live;
    return purged;
  }

  /** Removes a session from the index if its score is still `score` (a session saved again meanwhile has rewritten it). */
  protected unindex(link: RedisLink, digest: string, score: string): Promise<Reply> {
    return link.writeScript('remove a session from the index', UNINDEX_IF_SCORE, [this.redisKeys.index], [digest, score]);
  }

  /** Every session, read and verified now (loadSessions after the first, and the purge). */
  protected async scanNow(): Promise<{ scan: RedisScan; sessions: StoredSession[] }> {
    const scan = await scanRedis(this.conn(), this.redisKeys, this.epochs as Epochs, this.sealing);
    throwIfProblems(scan.problems, this.target);
    return { scan, sessions: sessionsOf(scan) };
  }

  protected sessionKeyOf = keyOf;
}

/**
 * Reads Redis's persistence settings (every master in a cluster): warns when acknowledged writes
 * would not survive a Redis restart, and returns them for the open report. A Redis that forbids
 * CONFIG (a managed service, an ACL) is not an error: the report says the settings are unknown.
 */
async function persistenceSettings(link: RedisLink, warnings: string[]): Promise<string> {
  const replies = await link.onEachMaster<Reply>('CONFIG GET', 'config', 'GET', 'append*');
  const seen = new Set<string>();
  for (const r of replies) {
    if (r.error !== undefined || !Array.isArray(r.reply)) {
      seen.add('unknown');
      warnings.push(`cannot read the persistence settings of Redis ${r.node} (CONFIG GET refused: ${r.error?.message.replace(/^.*failed: /, '') ?? 'no answer'}): make sure it runs with appendonly yes and appendfsync always (or everysec), or acknowledged messages can be lost when Redis restarts`);
      continue;
    }
    const cfg = new Map<string, string>();
    for (let i = 0; i + 1 < r.reply.length; i += 2) cfg.set(String(r.reply[i]), String(r.reply[i + 1]));
    const aof = cfg.get('appendonly');
    const fsync = cfg.get('appendfsync');
    if (aof !== 'yes') {
      warnings.push(`Redis ${r.node} runs with appendonly ${aof ?? '(unset)'}: it does not keep acknowledged writes across its own restart (only what its last snapshot holds). Set appendonly yes and appendfsync always (docs/persistence.md)`);
      seen.add(`appendonly ${aof ?? 'unset'}`);
    } else if (fsync === 'no') {
      warnings.push(`Redis ${r.node} runs with appendfsync no: writes reach its disk when the operating system flushes them (about every 30 s), so a power cut can lose acknowledged messages. Set appendfsync always (docs/persistence.md)`);
      seen.add('appendfsync no');
    } else seen.add(`appendfsync ${fsync ?? 'unset'}`);
  }
  // An eviction policy lets Redis delete keys when it is full: stored sessions and messages would vanish without an error.
  for (const r of await link.onEachMaster<Reply>('CONFIG GET', 'config', 'GET', 'maxmemory-policy')) {
    const policy = Array.isArray(r.reply) && r.reply[1] !== undefined ? String(r.reply[1]) : undefined;
    if (policy !== undefined && policy !== 'noeviction') {
      warnings.push(`Redis ${r.node} runs with maxmemory-policy ${policy}: when it is full it deletes keys, and stored sessions and messages with them. Set maxmemory-policy noeviction: writes are then refused (PUBACK 0x97) instead`);
    }
  }
  return [...seen].join(', ');
}
