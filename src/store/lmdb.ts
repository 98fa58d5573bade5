/**
 * The durable store: LMDB (lmdb-js), embedded in the broker process, no server to run.
 *
 * Every write is one LMDB transaction callback. lmdb-js runs all callbacks queued in one event
 * turn inside one transaction and commits it with one sync, so a burst of messages costs one
 * fsync, not one each (group commit). Callbacks run in the order they were called, so writes
 * the broker does not await still apply in order. A write's promise resolves when its batch is:
 * - `sync` (default): committed and flushed to the disk (fdatasync): survives a power cut;
 * - `commit`: committed to the OS, flushed in the background right after: survives a crash of
 *   the broker process, may lose the last moments of writes to a power cut or kernel crash.
 * A failed commit (disk full, I/O error) rejects every write of the batch with StoreWriteError,
 * and LMDB keeps none of them.
 *
 * Layout: see lmdb-keys.ts (keys) and records.ts (values); folder and files: lmdb-files.ts.
 */
import { performance } from 'node:perf_hooks';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { open as openLmdb, type Database, type RootDatabase } from 'lmdb';
import { StoreError, StoreWriteError } from './errors.ts';
import { Keyring, type StoreKey } from './keyring.ts';
import { DATA_FILE, FORMAT_VERSION, MANIFEST_FILE, MANIFEST_FORMAT, checkDataFile, guardFiles, guardFolder, readManifest, writeManifest, type Manifest } from './lmdb-files.ts';
import { sidRange, sidReverseRange, sidTextKey, sidU16Key, sidU64Key, readU64, textKey, describeKey } from './lmdb-keys.ts';
import { StoreLock } from './lmdb-lock.ts';
import { scanStore, type ScanResult, type Tables } from './lmdb-scan.ts';
import {
  RecordError,
  TABLES,
  decodeHeader,
  decodeInflight,
  decodeJson,
  decodeSubscription,
  decodeNumber,
  encodeBytes,
  encodeHeader,
  encodeInflight,
  encodeJson,
  encodeMessage,
  encodeNumber,
  encodeSubscription,
  headerOf,
  unwrap,
  wrap,
  decodeMessage,
  type SessionHeader,
  type TableName,
} from './records.ts';
import type {
  PurgeOptions,
  PurgeReport,
  Store,
  StoreOpenReport,
  StoredInflight,
  StoredMessage,
  StoredSession,
  StoredSubscription,
} from './types.ts';

export type Durability = 'sync' | 'commit';

export interface LmdbStoreOptions {
  /** The store folder (created 0700 when missing). */
  path: string;
  /** When a write's promise resolves; default 'sync'. */
  durability?: Durability;
  /** Extra time to gather writes into one commit (ms); 0 commits at the end of the event turn. */
  commitDelayMs?: number;
  /** Encryption at rest: the first key encrypts, all decrypt (see keyring.ts). */
  keys?: StoreKey[];
  /** The clock expiry is compared with (tests). */
  now?: () => number;
}

const META_FORMAT = 'format';
const META_NEXT_SID = 'nextSid';
const META_NEXT_EPOCH = 'nextEpoch';
const EMPTY = Buffer.alloc(0);

type Db = Database<Buffer, Buffer>;

export class LmdbStore implements Store {
  readonly path: string;
  readonly durability: Durability;
  private readonly commitDelayMs: number;
  private readonly keyring: Keyring | null;
  private readonly now: () => number;
  private env: RootDatabase<Buffer, Buffer> | null = null;
  private db: Tables | null = null;
  private lock: StoreLock | null = null;
  /** What open() decoded, handed out once by loadSessions/loadRetained unless a write came first. */
  private preloaded: { sessions: StoredSession[] | null; retained: StoredMessage[] | null } | null = null;
  /** Retained topics (by key, hex) with a message expiry: the purge's candidates. */
  private readonly retainedExpiry = new Map<string, number>();
  private nextSid = 1;
  /** The last write issued: writes commit in order, so awaiting it awaits them all. */
  private lastWrite: Promise<unknown> = Promise.resolve();
  private closing = false;

  constructor(options: LmdbStoreOptions) {
    this.path = options.path;
    this.durability = options.durability ?? 'sync';
    this.commitDelayMs = options.commitDelayMs ?? 0;
    this.keyring = options.keys !== undefined && options.keys.length > 0 ? new Keyring(options.keys) : null;
    this.now = options.now ?? Date.now;
  }

  get dataFile(): string {
    return path.join(this.path, DATA_FILE);
  }

  // ── open and close ─────────────────────────────────────────────────────────

  async open(): Promise<StoreOpenReport> {
    if (this.env !== null) throw new StoreError('ERR_STORE_LOCKED', `the store ${this.path} is already open`, this.path);
    const started = performance.now();
    const warnings = guardFolder(this.path, true);
    const lock = StoreLock.acquire(this.path);
    try {
      const report = await this.openLocked(lock, warnings, started);
      this.lock = lock;
      return report;
    } catch (err) {
      await this.closeEnv();
      lock.release();
      throw err;
    }
  }

  private async openLocked(lock: StoreLock, warnings: string[], started: number): Promise<StoreOpenReport> {
    const manifest = readManifest(this.path);
    const header = checkDataFile(this.path);
    if (manifest !== undefined && header === undefined) {
      throw new StoreError(
        'ERR_STORE_CORRUPT',
        `${this.dataFile} is missing or empty, but ${path.join(this.path, MANIFEST_FILE)} says a store was created here on ${manifest.created}: the data was lost outside the broker. Restore the folder from a backup, or move it aside to start with an empty store (docs/persistence.md, "Recovery")`,
        this.dataFile,
      );
    }
    guardFiles(this.path, true);
    const { env, db } = this.openEnv();
    this.env = env;
    this.db = db;

    const created = await this.checkFormat(manifest, header !== undefined, warnings);
    const scan = scanStore(db, this.keyring);
    throwIfDamaged(scan, this.dataFile);
    this.nextSid = Math.max(scan.maxSid + 1, this.metaNumber(scan, META_NEXT_SID) ?? 1);
    if (this.keyring !== null) await this.startEpoch(scan);

    const purged = await this.purgeAtOpen(scan);
    const sessions = [...scan.sessions.values()].map((s) => s.session);
    const retained = scan.retained.map((r) => r.message);
    for (const r of scan.retained) if (r.message.expiresAt !== undefined) this.retainedExpiry.set(r.key.toString('hex'), r.message.expiresAt);
    this.preloaded = { sessions, retained };

    const report: StoreOpenReport = {
      type: 'lmdb',
      durable: true,
      path: this.path,
      durability: this.durability,
      created,
      loaded: {
        sessions: sessions.length,
        subscriptions: sessions.reduce((n, s) => n + s.subscriptions.length, 0),
        inflight: sessions.reduce((n, s) => n + s.inflight.length, 0),
        queued: sessions.reduce((n, s) => n + s.queue.length, 0),
        awaitingRelease: sessions.reduce((n, s) => n + s.awaitingRelease.length, 0),
        retained: retained.length,
      },
      purged,
      recovery: { uncleanShutdown: lock.replaced !== undefined },
      warnings,
      bytes: fileSize(this.dataFile),
      durationMs: Math.round(performance.now() - started),
    };
    if (lock.replaced !== undefined) report.recovery.staleLock = { pid: lock.replaced.pid, host: lock.replaced.host, since: lock.replaced.since };
    if (this.keyring !== null) report.encryptionKeyId = this.keyring.activeId;
    return report;
  }

  private openEnv(): { env: RootDatabase<Buffer, Buffer>; db: Tables } {
    let env: RootDatabase<Buffer, Buffer>;
    try {
      env = openLmdb<Buffer, Buffer>({
        path: this.path,
        maxDbs: 16,
        // 'sync': LMDB syncs inside the commit, so the commit's promise means durable and a sync
        // failure fails the commit. 'commit': the sync overlaps the next transaction.
        overlappingSync: this.durability === 'commit',
        commitDelay: this.commitDelayMs,
        // Never writemap: with it a full disk is a SIGBUS instead of an error.
        useWritemap: false,
        keyEncoding: 'binary',
        encoding: 'binary',
      });
    } catch (err) {
      throw new StoreError('ERR_STORE_CORRUPT', `cannot open ${this.dataFile}: ${(err as Error).message}`, this.dataFile, { cause: err });
    }
    try {
      const db = {} as Tables;
      for (const name of TABLES) db[name] = env.openDB<Buffer, Buffer>({ name, keyEncoding: 'binary', encoding: 'binary' }) as Db;
      return { env, db };
    } catch (err) {
      void env.close();
      throw new StoreError('ERR_STORE_CORRUPT', `cannot read the tables of ${this.dataFile}: ${(err as Error).message}`, this.dataFile, { cause: err });
    }
  }

  /** Makes sure data.mdb is this folder's Portcullis store; initialises a new one. Returns true when created. */
  private async checkFormat(manifest: Manifest | undefined, hadData: boolean, warnings: string[]): Promise<boolean> {
    const db = this.db as Tables;
    const raw = db.meta.get(Buffer.from(META_FORMAT));
    if (raw === undefined) {
      if (hadData && TABLES.some((t) => db[t].getKeysCount({ limit: 1 }) > 0)) {
        throw new StoreError('ERR_STORE_CORRUPT', `${this.dataFile} is an LMDB file but not a Portcullis store (it has no format record)`, this.dataFile);
      }
      const fresh: Manifest = { format: MANIFEST_FORMAT, version: FORMAT_VERSION, storeId: randomUUID(), created: new Date().toISOString() };
      await this.write(() => this.putMeta(META_FORMAT, encodeJson({ ...fresh })));
      writeManifest(this.path, fresh);
      return true;
    }
    let format: Record<string, unknown>;
    try {
      format = decodeJson(unwrap('meta', Buffer.from(META_FORMAT), raw, null));
    } catch (err) {
      throw new StoreError('ERR_STORE_CORRUPT', `${this.dataFile}: the format record is damaged (${(err as Error).message})`, this.dataFile, { cause: err });
    }
    if (format['format'] !== MANIFEST_FORMAT || typeof format['storeId'] !== 'string') {
      throw new StoreError('ERR_STORE_CORRUPT', `${this.dataFile} is not a Portcullis store`, this.dataFile);
    }
    if (typeof format['version'] !== 'number' || format['version'] > FORMAT_VERSION) {
      throw new StoreError('ERR_STORE_CORRUPT', `${this.dataFile}: format version ${String(format['version'])} is newer than this broker reads (${FORMAT_VERSION})`, this.dataFile);
    }
    if (manifest === undefined) {
      // Created by a broker that stopped between the two steps, or the manifest was removed: restore it.
      writeManifest(this.path, { format: MANIFEST_FORMAT, version: format['version'], storeId: format['storeId'], created: String(format['created'] ?? new Date().toISOString()) });
      warnings.push(`${path.join(this.path, MANIFEST_FILE)} was missing and has been written again from ${this.dataFile}`);
    } else if (manifest.storeId !== format['storeId']) {
      throw new StoreError(
        'ERR_STORE_CORRUPT',
        `${this.dataFile} belongs to another store (id ${format['storeId']}) than ${path.join(this.path, MANIFEST_FILE)} (id ${manifest.storeId}): a data file was copied in from elsewhere. Put back the right data.mdb, or remove the manifest to adopt this one`,
        this.dataFile,
      );
    }
    return false;
  }

  private metaNumber(scan: ScanResult, name: string): number | undefined {
    const body = scan.meta.get(name);
    if (body === undefined) return undefined;
    const v = decodeJson(body)['n'];
    return typeof v === 'number' ? v : undefined;
  }

  /** A new encryption epoch (salt) for this open, stored durably before any record uses it. */
  private async startEpoch(scan: ScanResult): Promise<void> {
    const keyring = this.keyring as Keyring;
    const epoch = Math.max(this.metaNumber(scan, META_NEXT_EPOCH) ?? 1, ...[...scan.epochs.keys()].map((e) => e + 1));
    const salt = Keyring.newSalt();
    await this.write(() => {
      this.putMeta(`epoch:${epoch}`, encodeBytes(salt));
      this.putMeta(META_NEXT_EPOCH, encodeJson({ n: epoch + 1 }));
    });
    keyring.startEpoch(epoch, salt);
  }

  /** Drops expired sessions and messages, and orphan records, in one durable write. */
  private async purgeAtOpen(scan: ScanResult): Promise<StoreOpenReport['purged']> {
    const now = this.now();
    const purged = { expiredSessions: 0, expiredMessages: 0, expiredRetained: 0, orphans: scan.orphans.length };
    const sessionsGone: { key: Buffer; sid: number }[] = [];
    const queueGone: Buffer[] = [];
    const retainedGone: Buffer[] = [];
    for (const [sid, s] of scan.sessions) {
      if (s.header.expiresAt !== undefined && s.header.expiresAt <= now) {
        sessionsGone.push({ key: s.key, sid });
        scan.sessions.delete(sid);
        purged.expiredSessions++;
        continue;
      }
      const keep: StoredMessage[] = [];
      s.session.queue.forEach((m, i) => {
        if (m.expiresAt !== undefined && m.expiresAt <= now) {
          queueGone.push(s.queueKeys[i] as Buffer);
          purged.expiredMessages++;
        } else keep.push(m);
      });
      s.session.queue = keep;
    }
    scan.retained = scan.retained.filter((r) => {
      if (r.message.expiresAt === undefined || r.message.expiresAt > now) return true;
      retainedGone.push(r.key);
      purged.expiredRetained++;
      return false;
    });
    if (sessionsGone.length + queueGone.length + retainedGone.length + scan.orphans.length > 0) {
      const db = this.db as Tables;
      await this.write(() => {
        for (const s of sessionsGone) this.deleteSid(s.sid, s.key);
        for (const k of queueGone) db.queue.removeSync(k);
        for (const k of retainedGone) db.retained.removeSync(k);
        for (const o of scan.orphans) db[o.table].removeSync(o.key);
      });
    }
    return purged;
  }

  async close(): Promise<void> {
    const lock = this.lock;
    this.lock = null;
    try {
      await this.closeEnv();
    } finally {
      lock?.release();
    }
  }

  /** Lets every write issued before it finish (the broker does not await all of them), then closes. */
  private async closeEnv(): Promise<void> {
    const env = this.env;
    if (env === null) return;
    this.closing = true;
    try {
      await this.lastWrite;
      await env.flushed;
    } catch {
      // A failed last commit was already reported to its writers.
    }
    this.env = null;
    this.db = null;
    this.preloaded = null;
    this.retainedExpiry.clear();
    this.closing = false;
    await env.close();
  }

  // ── reads ──────────────────────────────────────────────────────────────────

  private tables(): Tables {
    if (this.db === null) throw new StoreError('ERR_STORE_CLOSED', `the store ${this.path} is not open`, this.path);
    return this.db;
  }

  private read<T>(table: TableName, key: Buffer, value: Buffer, decode: (body: Buffer) => T): T {
    try {
      return decode(unwrap(table, key, value, this.keyring));
    } catch (err) {
      throw recordFailure(err, this.dataFile, table, key);
    }
  }

  private header(clientId: string): { key: Buffer; h: SessionHeader } | undefined {
    const key = textKey(clientId);
    const raw = this.tables().sessions.get(key);
    if (raw === undefined) return undefined;
    return { key, h: this.read('sessions', key, raw, decodeHeader) };
  }

  async loadSessions(): Promise<StoredSession[]> {
    const pre = this.preloaded?.sessions;
    if (pre !== undefined && pre !== null && this.preloaded !== null) {
      this.preloaded.sessions = null;
      return pre;
    }
    const scan = scanStore(this.tables(), this.keyring);
    throwIfDamaged(scan, this.dataFile);
    return [...scan.sessions.values()].map((s) => s.session);
  }

  async getSession(clientId: string): Promise<StoredSession | undefined> {
    const found = this.header(clientId);
    if (found === undefined) return undefined;
    const { h } = found;
    const db = this.tables();
    const range = sidRange(h.sid);
    const s: StoredSession = {
      clientId: h.clientId,
      owner: h.owner,
      protocolVersion: h.protocolVersion,
      expiryInterval: h.expiryInterval,
      subscriptions: [],
      inflight: [],
      queue: [],
      awaitingRelease: [],
    };
    if (h.expiresAt !== undefined) s.expiresAt = h.expiresAt;
    for (const { key, value } of db.subscriptions.getRange(range)) s.subscriptions.push(this.read('subscriptions', Buffer.from(key), value, decodeSubscription));
    for (const { key, value } of db.inflight.getRange(range)) s.inflight.push(this.read('inflight', Buffer.from(key), value, decodeInflight));
    for (const { key, value } of db.queue.getRange(range)) s.queue.push(this.read('queue', Buffer.from(key), value, decodeMessage));
    for (const key of db.awaiting.getKeys(range)) s.awaitingRelease.push((key as Buffer).readUInt16BE(8));
    return s;
  }

  async loadRetained(): Promise<StoredMessage[]> {
    const pre = this.preloaded?.retained;
    if (pre !== undefined && pre !== null && this.preloaded !== null) {
      this.preloaded.retained = null;
      return pre;
    }
    const db = this.tables();
    const out: StoredMessage[] = [];
    for (const { key, value } of db.retained.getRange({})) out.push(this.read('retained', Buffer.from(key), value, decodeMessage));
    return out;
  }

  // ── writes ─────────────────────────────────────────────────────────────────

  /**
   * Runs `fn` inside the next batched transaction; resolves when the batch is durable per the
   * durability setting. `fn` must read before it writes: a throw after a write would leave that
   * write in the batch.
   */
  private write<T>(fn: () => T): Promise<T> {
    const env = this.env;
    if (env === null || this.closing) return Promise.reject(new StoreError('ERR_STORE_CLOSED', `the store ${this.path} is not open`, this.path));
    this.preloaded = null;
    const done = env.transaction(fn).then(
      (result) => result,
      (err: unknown) => this.writeFailure(err),
    );
    this.lastWrite = done.catch(() => undefined);
    return done;
  }

  private async writeFailure(err: unknown): Promise<never> {
    if (err instanceof StoreError) throw err;
    if (err instanceof RecordError) throw recordFailure(err, this.dataFile, 'sessions', EMPTY);
    let cause: unknown = err;
    const commitError = (err as { commitError?: Promise<unknown> } | null)?.commitError;
    if (commitError !== undefined) {
      try {
        await commitError;
      } catch (e) {
        cause = e;
      }
    }
    const message = cause instanceof Error ? cause.message : String(cause);
    const errno = /MDB_MAP_FULL/.test(message) ? 'MDB_MAP_FULL' : /No space left/i.test(message) ? 'ENOSPC' : /File too large/i.test(message) ? 'EFBIG' : /Input\/output/i.test(message) ? 'EIO' : (cause as { code?: string }).code;
    // LMDB reports a short write as EIO, which is what a full disk usually gives: look at the free space.
    const free = freeBytes(this.path);
    const diskFull = errno === 'MDB_MAP_FULL' || errno === 'ENOSPC' || errno === 'EFBIG' || errno === 'EDQUOT' || (errno === 'EIO' && free !== undefined && free < LOW_SPACE_BYTES);
    throw new StoreWriteError(
      `cannot write to ${this.dataFile}: ${diskFull ? `no space left${free !== undefined ? ` (${free} bytes free)` : ''}` : 'write failed'} (${message}); nothing of this batch was kept`,
      this.dataFile,
      diskFull,
      errno,
      { cause },
    );
  }

  private put(table: TableName, key: Buffer, body: Buffer): void {
    (this.db as Tables)[table].putSync(key, wrap(table, key, body, this.keyring));
  }

  private putMeta(name: string, body: Buffer): void {
    this.put('meta', Buffer.from(name, 'latin1'), body);
  }

  /** Removes every record session `sid` owns, and its header. */
  private deleteSid(sid: number, headerKey: Buffer): void {
    const db = this.db as Tables;
    const range = sidRange(sid);
    for (const table of ['subscriptions', 'inflight', 'inflightIndex', 'queue', 'awaiting'] as const) {
      const keys = [...db[table].getKeys(range)].map((k) => Buffer.from(k as Buffer));
      for (const k of keys) db[table].removeSync(k);
    }
    db.sessions.removeSync(headerKey);
  }

  private lastSeq(table: 'queue' | 'inflight', sid: number): number {
    for (const key of (this.db as Tables)[table].getKeys({ ...sidReverseRange(sid), reverse: true, limit: 1 })) return readU64(key as Buffer, 8);
    return -1;
  }

  async saveSession(session: StoredSession): Promise<void> {
    // Encoded now: the caller may change the object once this returns.
    const subs = session.subscriptions.map((s) => ({ filter: s.filter, body: encodeSubscription(s) }));
    const inflight = session.inflight.map((f) => ({ packetId: f.packetId, body: encodeInflight(f) }));
    const queue = session.queue.map(encodeMessage);
    const awaiting = [...new Set(session.awaitingRelease)];
    const snapshot = { ...session };
    await this.write(() => {
      const old = this.header(snapshot.clientId);
      const sid = this.nextSid++;
      if (old !== undefined) this.deleteSid(old.h.sid, old.key);
      this.putMeta(META_NEXT_SID, encodeJson({ n: this.nextSid }));
      this.put('sessions', textKey(snapshot.clientId), encodeHeader(headerOf(snapshot, sid)));
      for (const s of subs) this.put('subscriptions', sidTextKey(sid, s.filter), s.body);
      const orders = new Map<number, number>();
      for (const f of inflight) {
        const order = orders.get(f.packetId) ?? orders.size;
        orders.set(f.packetId, order);
        this.put('inflight', sidU64Key(sid, order), f.body);
        this.put('inflightIndex', sidU16Key(sid, f.packetId), encodeNumber(order));
      }
      queue.forEach((body, i) => this.put('queue', sidU64Key(sid, i), body));
      for (const id of awaiting) this.put('awaiting', sidU16Key(sid, id), EMPTY);
    });
  }

  async deleteSession(clientId: string): Promise<void> {
    await this.write(() => {
      const old = this.header(clientId);
      if (old !== undefined) this.deleteSid(old.h.sid, old.key);
    });
  }

  async setSessionExpiry(clientId: string, expiresAt: number | undefined, expiryInterval: number): Promise<void> {
    await this.write(() => {
      const old = this.header(clientId);
      if (old === undefined) return;
      const h: SessionHeader = { ...old.h, expiryInterval };
      if (expiresAt === undefined) delete h.expiresAt;
      else h.expiresAt = expiresAt;
      this.put('sessions', old.key, encodeHeader(h));
    });
  }

  async putSubscription(clientId: string, subscription: StoredSubscription): Promise<void> {
    const body = encodeSubscription(subscription);
    const filter = subscription.filter;
    await this.write(() => {
      const s = this.header(clientId);
      if (s !== undefined) this.put('subscriptions', sidTextKey(s.h.sid, filter), body);
    });
  }

  async deleteSubscription(clientId: string, filter: string): Promise<void> {
    await this.write(() => {
      const s = this.header(clientId);
      if (s !== undefined) (this.db as Tables).subscriptions.removeSync(sidTextKey(s.h.sid, filter));
    });
  }

  async putInflight(clientId: string, inflight: StoredInflight): Promise<void> {
    const body = encodeInflight(inflight);
    const packetId = inflight.packetId;
    await this.write(() => {
      const s = this.header(clientId);
      if (s === undefined) return;
      const sid = s.h.sid;
      const indexKey = sidU16Key(sid, packetId);
      const raw = (this.db as Tables).inflightIndex.get(indexKey);
      // Replacing by packet id keeps the entry's place; a new one goes last (resend order, MQTT-4.6.0-1).
      const order = raw !== undefined ? this.read('inflightIndex', indexKey, raw, decodeNumber) : this.lastSeq('inflight', sid) + 1;
      this.put('inflight', sidU64Key(sid, order), body);
      if (raw === undefined) this.put('inflightIndex', indexKey, encodeNumber(order));
    });
  }

  async deleteInflight(clientId: string, packetId: number): Promise<void> {
    await this.write(() => {
      const s = this.header(clientId);
      if (s === undefined) return;
      const db = this.db as Tables;
      const indexKey = sidU16Key(s.h.sid, packetId);
      const raw = db.inflightIndex.get(indexKey);
      if (raw === undefined) return;
      const order = this.read('inflightIndex', indexKey, raw, decodeNumber);
      db.inflight.removeSync(sidU64Key(s.h.sid, order));
      db.inflightIndex.removeSync(indexKey);
    });
  }

  async enqueue(clientId: string, message: StoredMessage): Promise<void> {
    const body = encodeMessage(message);
    await this.write(() => {
      const s = this.header(clientId);
      if (s !== undefined) this.put('queue', sidU64Key(s.h.sid, this.lastSeq('queue', s.h.sid) + 1), body);
    });
  }

  async dequeue(clientId: string, count: number): Promise<void> {
    if (count <= 0) return;
    await this.write(() => {
      const s = this.header(clientId);
      if (s === undefined) return;
      const db = this.db as Tables;
      const keys = [...db.queue.getKeys({ ...sidRange(s.h.sid), limit: count })].map((k) => Buffer.from(k as Buffer));
      for (const k of keys) db.queue.removeSync(k);
    });
  }

  async putAwaitingRelease(clientId: string, packetId: number): Promise<void> {
    await this.write(() => {
      const s = this.header(clientId);
      if (s !== undefined) this.put('awaiting', sidU16Key(s.h.sid, packetId), EMPTY);
    });
  }

  async deleteAwaitingRelease(clientId: string, packetId: number): Promise<void> {
    await this.write(() => {
      const s = this.header(clientId);
      if (s !== undefined) (this.db as Tables).awaiting.removeSync(sidU16Key(s.h.sid, packetId));
    });
  }

  async putRetained(message: StoredMessage): Promise<void> {
    const key = textKey(message.topic);
    if (message.payload.length === 0) return this.deleteRetained(message.topic);
    const body = encodeMessage(message);
    const expiresAt = message.expiresAt;
    await this.write(() => {
      this.put('retained', key, body);
      if (expiresAt !== undefined) this.retainedExpiry.set(key.toString('hex'), expiresAt);
      else this.retainedExpiry.delete(key.toString('hex'));
    });
  }

  async deleteRetained(topic: string): Promise<void> {
    const key = textKey(topic);
    await this.write(() => {
      (this.db as Tables).retained.removeSync(key);
      this.retainedExpiry.delete(key.toString('hex'));
    });
  }

  async purgeExpired(options: PurgeOptions = {}): Promise<PurgeReport> {
    const now = options.now ?? this.now();
    const candidates = [...this.retainedExpiry].filter(([, at]) => at <= now).map(([hex]) => Buffer.from(hex, 'hex'));
    return this.write(() => {
      const db = this.db as Tables;
      const report: PurgeReport = { expiredSessions: 0, expiredRetained: 0 };
      const gone: { sid: number; key: Buffer }[] = [];
      for (const { key, value } of db.sessions.getRange({})) {
        const k = Buffer.from(key);
        const h = this.read('sessions', k, value, decodeHeader);
        if (h.expiresAt !== undefined && h.expiresAt <= now && options.keep?.(h.clientId) !== true) gone.push({ sid: h.sid, key: k });
      }
      for (const g of gone) this.deleteSid(g.sid, g.key);
      report.expiredSessions = gone.length;
      // The map is a hint: each candidate is re-read here, inside the write, before it goes.
      for (const key of candidates) {
        const raw = db.retained.get(key);
        this.retainedExpiry.delete(key.toString('hex'));
        if (raw === undefined) continue;
        const m = this.read('retained', key, raw, decodeMessage);
        if (m.expiresAt !== undefined && m.expiresAt <= now) {
          db.retained.removeSync(key);
          report.expiredRetained++;
        } else if (m.expiresAt !== undefined) this.retainedExpiry.set(key.toString('hex'), m.expiresAt);
      }
      return report;
    });
  }

  /** Closes the store but keeps the folder locked, for a tool that replaces the data file (compact). */
  async closeKeepingLock(): Promise<StoreLock> {
    const lock = this.lock;
    if (lock === null) throw new StoreError('ERR_STORE_CLOSED', `the store ${this.path} is not open`, this.path);
    this.lock = null;
    await this.closeEnv();
    return lock;
  }

  /** The open environment and tables, for the maintenance tools (lmdb-tools.ts). */
  internals(): { env: RootDatabase<Buffer, Buffer>; db: Tables; keyring: Keyring | null } {
    if (this.env === null || this.db === null) throw new StoreError('ERR_STORE_CLOSED', `the store ${this.path} is not open`, this.path);
    return { env: this.env, db: this.db, keyring: this.keyring };
  }
}

/** Below this much free space a failed write is taken for a full disk. */
const LOW_SPACE_BYTES = 1024 * 1024;

function freeBytes(dir: string): number | undefined {
  try {
    const st = fs.statfsSync(dir);
    return st.bavail * st.bsize;
  } catch {
    return undefined;
  }
}

function fileSize(file: string): number | undefined {
  try {
    return fs.statSync(file).size;
  } catch {
    return undefined;
  }
}

/** A record that cannot be read, as a StoreError naming the file, the table and the key. */
function recordFailure(err: unknown, file: string, table: TableName, key: Buffer): Error {
  if (err instanceof RecordError) {
    const code = err.problem === 'key' ? 'ERR_STORE_KEY' : 'ERR_STORE_CORRUPT';
    return new StoreError(code, `${file}: ${table} record ${describeKey(table, key)} cannot be read: ${err.message}. Run 'portcullis store check' (docs/persistence.md, "Recovery")`, file, { cause: err });
  }
  return err as Error;
}

/** Refuses to go on with a damaged store: loading only part of it would be silent loss. */
function throwIfDamaged(scan: ScanResult, file: string): void {
  if (scan.problems.length === 0) return;
  const keyProblem = scan.problems.every((p) => /key file|key id|no store key/.test(p.problem));
  const shown = scan.problems.slice(0, 5).map((p) => `  - ${p.table} ${p.key}: ${p.problem}`);
  const more = scan.problems.length > 5 ? [`  - ... and ${scan.problems.length - 5} more`] : [];
  throw new StoreError(
    keyProblem ? 'ERR_STORE_KEY' : 'ERR_STORE_CORRUPT',
    keyProblem
      ? `${file}: ${scan.problems.length} record(s) cannot be decrypted with the configured keys (store.encryption.keyFile):\n${[...shown, ...more].join('\n')}`
      : `${file} is damaged: ${scan.problems.length} record(s) cannot be read; the broker does not start with part of its state missing. Run 'portcullis store check', then see docs/persistence.md, "Recovery":\n${[...shown, ...more].join('\n')}`,
    file,
  );
}
