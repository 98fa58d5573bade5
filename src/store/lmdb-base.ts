/**
 * The LMDB store's life cycle and write primitives: open (folder and file checks, lock, format,
 * scan, purge of expired data), close, and the one way to write (a batched transaction callback,
 * see {@link LmdbBase.write}). The Store operations are in lmdb.ts.
 */
import { performance } from 'node:perf_hooks';
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { open as openLmdb, type Database, type RootDatabase } from 'lmdb';
import { StoreError } from './errors.ts';
import { Keyring, type StoreKey } from './keyring.ts';
import { DATA_FILE, FORMAT_VERSION, MANIFEST_FILE, MANIFEST_FORMAT, checkDataFile, guardFiles, guardFolder, readManifest, writeManifest, type Manifest } from './lmdb-files.ts';
import { sessionHeaderKey, sidRange, sidReverseRange, sidU16Key, sidU64Key, readU64 } from './lmdb-keys.ts';
import { StoreLock } from './lmdb-lock.ts';
import { rawView, scanStore, takeExpired, type ScanResult, type Tables } from './lmdb-scan.ts';
import { commitFailure, fileSize, recordFailure, throwIfDamaged } from './lmdb-failures.ts';
import { encodeInflightRecord, encodeMessageBinary } from './lmdb-records.ts';
import { TABLES, decodeHeader, decodeJson, encodeBytes, encodeJson, unwrap, wrap, wrapWithHeadroom, type SessionHeader, type TableName } from './records.ts';
import type { StoreOpenReport, StoredMessage, StoredSession } from './types.ts';
import { storeCounts } from './counts.ts';

export type Durability = 'sync' | 'commit';

export interface LmdbStoreOptions {
  /** The store folder (created 0700 when missing). */
  path: string;
  /** When a write's promise resolves; default 'sync'. */
  durability?: Durability;
  /** Extra time to gather writes into one commit (ms); 0 commits at the end of the event turn. */
  commitDelayMs?: number;
  /** 'commit' only: how often committed writes are flushed to the disk (ms); default 1000. */
  flushIntervalMs?: number;
  /** Encryption at rest: the first key encrypts, all decrypt (see keyring.ts). */
  keys?: StoreKey[];
  /** The clock expiry is compared with (tests). */
  now?: () => number;
}

const META_FORMAT = 'format';
export const META_NEXT_SID = 'nextSid';
const META_NEXT_EPOCH = 'nextEpoch';

type Db = Database<Buffer, Buffer>;

/** A write waiting in the current group (see LmdbBase.write). */
interface Pending {
  fn: () => unknown;
  resolve: (value: unknown) => void;
  reject: (err: unknown) => void;
  /** The header changes this write made (the session-number cache); null: none (most writes). */
  changes: [string, number, number | undefined][] | null;
  /** The queue fronts this write moved ([sid, new front]), learned once its batch commits; null: none. */
  fronts: [number, number][] | null;
  result: unknown;
  error: unknown;
  threw: boolean;
}

/**
 * When a commit fails (a full or failing disk), lmdb-js rejects the batch's promise, which every
 * writer of the batch hears about through its own write, and also leaves an internal promise of
 * the batch with no handler: Node would end the process for it. This swallows exactly those
 * (lmdb's "Commit failed" with its commitError); any other unhandled rejection keeps Node's
 * default (the process ends), unless the application has a handler of its own.
 */
function onUnhandledRejection(reason: unknown): void {
  if (reason instanceof Error && 'commitError' in reason && reason.message.startsWith('Commit failed')) {
    (reason as { commitError?: Promise<unknown> }).commitError?.catch(() => undefined);
    return;
  }
  if (process.listenerCount('unhandledRejection') === 1) throw reason;
}
let rejectionGuard = false;
function noop(): void {}
function guardCommitRejections(): void {
  if (rejectionGuard) return;
  rejectionGuard = true;
  process.on('unhandledRejection', onUnhandledRejection);
}

export abstract class LmdbBase {
  readonly path: string;
  readonly durability: Durability;
  private readonly commitDelayMs: number;
  private readonly flushIntervalMs: number;
  private flushTimer: NodeJS.Timeout | null = null;
  /** 'commit': the last periodic flush failed; writes are refused until one succeeds. */
  private flushFailure: Error | null = null;
  protected readonly keyring: Keyring | null;
  protected readonly now: () => number;
  protected env: RootDatabase<Buffer, Buffer> | null = null;
  protected db: Tables | null = null;
  protected lock: StoreLock | null = null;
  /** What open() decoded, handed out once by loadSessions/loadRetained unless a write came first. */
  protected preloaded: { sessions: StoredSession[] | null; retained: StoredMessage[] | null } | null = null;
  /** Retained topics (by key, hex) with a message expiry: the purge's candidates. */
  protected readonly retainedExpiry = new Map<string, number>();
  protected nextSid = 1;
  /** The last write issued: writes commit in order, so awaiting it awaits them all. */
  private lastWrite: Promise<unknown> = Promise.resolve();
  private closing = false;
  private readonly nextQueueSeq = new Map<number, number>();
  /**
   * The resend order of the next new in-flight entry, store-wide (orders only compare within a
   * session, so one counter serves all): above every order in the store at open, then counted
   * in memory. Only this process writes while it holds the lock; a failed or re-run batch only
   * leaves a gap, and gaps keep the order.
   */
  protected nextInflightOrder = 0;

  constructor(options: LmdbStoreOptions) {
    this.path = options.path;
    this.durability = options.durability ?? 'sync';
    this.commitDelayMs = options.commitDelayMs ?? 0;
    this.flushIntervalMs = options.flushIntervalMs ?? 1000;
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
      if (this.durability === 'commit') {
        this.flushTimer = setInterval(() => void this.flush(), this.flushIntervalMs);
        this.flushTimer.unref();
      }
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
    if (header !== undefined && header.shortBy > 0) {
      warnings.push(`${this.dataFile} ends ${header.shortBy} page(s) before the last page its header counts (pages LMDB allocated and freed again without writing them, as after a crash); every table was read through and a write tried before opening it`);
    }
    if (manifest !== undefined && header === undefined) {
      throw new StoreError(
        'ERR_STORE_CORRUPT',
        `${this.dataFile} is missing or empty, but ${path.join(this.path, MANIFEST_FILE)} says a store was created here on ${manifest.created}: the data was lost outside the broker. Restore the folder from a backup, or move it aside to start with an empty store (docs/persistence.md, "Recovery")`,
        this.dataFile,
      );
    }
    guardCommitRejections();
    guardFiles(this.path, true);
    const { env, db } = this.openEnv();
    this.env = env;
    this.db = db;

    const created = await this.checkFormat(manifest, header !== undefined, warnings);
    const scan = scanStore(db, this.keyring);
    throwIfDamaged(scan, this.dataFile);
    this.nextSid = Math.max(scan.maxSid + 1, this.metaNumber(scan, META_NEXT_SID) ?? 1);
    this.nextInflightOrder = scan.maxInflightOrder + 1;
    if (this.keyring !== null) await this.startEpoch(scan);
    await this.upgrade(scan, warnings);

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
      loaded: storeCounts(sessions, retained.length),
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
        // 'sync': LMDB flushes inside each commit, so a commit's promise means durable and a flush
        // failure fails the commit. 'commit': no flush in the commit; a timer flushes (below).
        // (lmdb-js's overlappingSync is not used: it also resolves only after the flush, and its
        // flush errors reach no promise.)
        overlappingSync: false,
        noSync: this.durability === 'commit',
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
      // The scan's in-place views, opened now, before any write is in flight.
      for (const name of TABLES) rawView(db[name], name);
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
    this.format = format;
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

  /** The format record open() read (undefined for a store this open created, which is current). */
  private format: Record<string, unknown> | undefined;

  /**
   * Brings a store of an older format to this one, in one transaction (all or nothing: a crash
   * in the middle leaves the old format, which the next open upgrades again), then the manifest.
   * Format 1 → 2: in-flight entries move from [sid, order] keys with a packet-id index to
   * [sid, packet id] keys with the order in the value (lmdb-keys.ts). Format 2 → 3: queued,
   * retained and in-flight messages are rewritten from the JSON layout to the binary one
   * (lmdb-records.ts). Nothing else changed.
   */
  private async upgrade(scan: ScanResult, warnings: string[]): Promise<void> {
    const format = this.format;
    this.format = undefined;
    const from = typeof format?.['version'] === 'number' ? format['version'] : FORMAT_VERSION;
    const legacy = scan.legacy;
    if (from >= FORMAT_VERSION && legacy.inflight.length === 0 && legacy.index.length === 0 && legacy.messages.length === 0) {
      this.syncManifestVersion();
      return;
    }
    const db = this.db as Tables;
    const inflight = legacy.inflight.map((e) => ({ oldKey: e.key, key: sidU16Key(e.sid, e.inflight.packetId), order: e.order, inflight: e.inflight }));
    const messages = legacy.messages;
    await this.write(() => {
      for (const r of inflight) db.inflight.removeSync(r.oldKey);
      for (const k of legacy.index) db.inflightIndex.removeSync(k);
      for (const r of inflight) this.put('inflight', r.key, encodeInflightRecord(r.order, r.inflight));
      // Encoded here, one at a time (a large store holds a million of them).
      for (const m of messages) this.put(m.table, m.key, encodeMessageBinary(m.message));
      this.putMeta(META_FORMAT, encodeJson({ ...format, version: FORMAT_VERSION }));
    });
    legacy.inflight = [];
    legacy.index = [];
    legacy.messages = [];
    this.syncManifestVersion();
    warnings.push(`the store was upgraded from format ${from} to format ${FORMAT_VERSION} (${inflight.length} in-flight records and ${messages.length} queued and retained messages rewritten); a broker older than this one cannot open it any more`);
  }

  /** The manifest says the version the data file has (after an upgrade, or a crash right after one). */
  private syncManifestVersion(): void {
    const manifest = readManifest(this.path);
    if (manifest !== undefined && manifest.version < FORMAT_VERSION) writeManifest(this.path, { ...manifest, version: FORMAT_VERSION });
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
    const gone = takeExpired(scan, this.now());
    if (gone.sessions.length + gone.queue.length + gone.retained.length + scan.orphans.length > 0) {
      const db = this.db as Tables;
      await this.write(() => {
        for (const s of gone.sessions) this.deleteSid(s.sid, s.key);
        for (const k of gone.queue) db.queue.removeSync(k);
        for (const k of gone.retained) db.retained.removeSync(k);
        for (const o of scan.orphans) db[o.table].removeSync(o.key);
      });
    }
    return gone.purged;
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
  /** 'commit': writes what was committed since the last flush to the disk (fdatasync). */
  private async flush(): Promise<void> {
    const env = this.env as unknown as { sync(callback: (err?: Error) => void): void } | null;
    if (env === null) return;
    const err = await new Promise<Error | undefined>((resolve) => env.sync((e) => resolve(e ?? undefined)));
    this.flushFailure = err ?? null;
  }

  private async closeEnv(): Promise<void> {
    const env = this.env;
    if (env === null) return;
    this.closing = true;
    if (this.flushTimer !== null) clearInterval(this.flushTimer);
    this.flushTimer = null;
    try {
      await this.lastWrite;
      await env.flushed;
      if (this.durability === 'commit') await this.flush();
    } catch {
      // A failed last commit was already reported to its writers.
    }
    this.env = null;
    this.db = null;
    this.preloaded = null;
    this.retainedExpiry.clear();
    this.nextQueueSeq.clear();
    this.queueFronts.clear();
    this.txnFronts.clear();
    this.nextInflightOrder = 0;
    this.sids.clear();
    this.sidTokens.clear();
    this.closing = false;
    await env.close();
  }


  // ── primitives for the operations (lmdb.ts) ─────────────────────────────────

  protected tables(): Tables {
    if (this.db === null) throw new StoreError('ERR_STORE_CLOSED', `the store ${this.path} is not open`, this.path);
    return this.db;
  }

  protected read<T>(table: TableName, key: Buffer, value: Buffer, decode: (body: Buffer) => T): T {
    try {
      return decode(unwrap(table, key, value, this.keyring));
    } catch (err) {
      throw recordFailure(err, this.dataFile, table, key);
    }
  }

  /**
   * The header of the session with this session key (sessionKey(owner, clientId)), stored under
   * a digest of it (sessionHeaderKey): who a session belongs to is only inside the record, which
   * an encrypted store seals. The key is a pure function of the session key, so it holds inside
   * a batch that lmdb runs again, and after a crash.
   */
  protected header(sessionId: string): { key: Buffer; h: SessionHeader } | undefined {
    const key = this.headerKeyOf(sessionId);
    const raw = this.tables().sessions.get(key);
    if (raw === undefined) return undefined;
    return { key, h: this.read('sessions', key, raw, decodeHeader) };
  }

  // ── the session-number cache ────────────────────────────────────────────────
  //
  // Every per-session write first finds the session's number (sid) from its header: a SHA-256
  // of the session key and a checked read. The number never changes while the session exists,
  // so it is cached, but only as committed: a write that creates or removes a header forgets
  // the entry at once (in its batch callback, which lmdb may run more than once) and the new
  // number is learned only when that batch commits, and only if no later batch touched the same
  // header meanwhile (a token per change). A batch that fails leaves nothing behind.

  /** Per session key: its header key, and that key as the text the maps below use. */
  private readonly headerKeys = new Map<string, { key: Buffer; id: string }>();
  private readonly sids = new Map<string, number>();
  private readonly sidTokens = new Map<string, number>();
  private sidToken = 0;
  /** The write whose callback is running (its header and queue-front changes are noted on it). */
  private running: Pending | null = null;

  private headerKeyEntry(sessionId: string): { key: Buffer; id: string } {
    let entry = this.headerKeys.get(sessionId);
    if (entry === undefined) {
      if (this.headerKeys.size >= 100_000) this.headerKeys.clear();
      const key = sessionHeaderKey(sessionId);
      entry = { key, id: key.toString('latin1') };
      this.headerKeys.set(sessionId, entry);
    }
    return entry;
  }

  private headerKeyOf(sessionId: string): Buffer {
    return this.headerKeyEntry(sessionId).key;
  }

  /** The number and header key of the session with this session key, or undefined; inside a write callback. */
  protected sidOf(sessionId: string): { key: Buffer; sid: number } | undefined {
    const { key, id } = this.headerKeyEntry(sessionId);
    const cached = this.sids.get(id);
    if (cached !== undefined) return { key, sid: cached };
    const found = this.header(sessionId);
    if (found === undefined) return undefined;
    // Committed state only: no change to this header is waiting for its batch to commit.
    if (!this.sidTokens.has(id)) this.sids.set(id, found.h.sid);
    return { key, sid: found.h.sid };
  }

  /** In a write callback: the header under `key` is removed, or (with `sid`) written with that number. */
  protected headerChanged(key: Buffer, sid?: number): void {
    const id = key.toString('latin1');
    this.sids.delete(id);
    const token = ++this.sidToken;
    this.sidTokens.set(id, token);
    if (this.running !== null) (this.running.changes ??= []).push([id, token, sid]);
  }

  private settleSidChanges(changes: [string, number, number | undefined][], committed: boolean): void {
    for (const [id, token, sid] of changes) {
      if (this.sidTokens.get(id) !== token) continue; // a later change is pending or done
      this.sidTokens.delete(id);
      if (committed && sid !== undefined) this.sids.set(id, sid);
    }
  }

  // ── writes ─────────────────────────────────────────────────────────────────

  /**
   * Runs `fn` inside the next batched transaction; resolves when the batch is durable per the
   * durability setting. `fn` must read before it writes: a throw after a write would leave that
   * write in the batch.
   *
   * The writes issued in one synchronous stretch (the broker hands a whole batch over in one
   * loop) become ONE lmdb transaction callback that runs them in order, each in its own
   * try/catch, instead of one lmdb callback (and its bookkeeping) per write: the same
   * transaction, the same order and the same outcome per write as separate callbacks would have
   * (lmdb also puts every callback of one event turn in one transaction, and lets the others
   * commit when one throws), for a fraction of the work.
   */
  protected write<T>(fn: () => T): Promise<T> {
    const env = this.env;
    if (env === null || this.closing) return Promise.reject(new StoreError('ERR_STORE_CLOSED', `the store ${this.path} is not open`, this.path));
    // 'commit': what the last flush could not write may be lost; acknowledge nothing more until a flush works.
    if (this.flushFailure !== null) return commitFailure(this.flushFailure, this.dataFile, this.path);
    this.preloaded = null;
    // The resolvers are set by the executor below; a shared placeholder until then (no closure per write).
    const item: Pending = { fn, resolve: noop, reject: noop, changes: null, fronts: null, result: undefined, error: undefined, threw: false };
    const done = new Promise<T>((resolve, reject) => {
      item.resolve = resolve as (v: unknown) => void;
      item.reject = reject;
    });
    if (this.inline !== null) {
      // Inside a late batch's prepare (below): the transaction is running, so this write joins it
      // now, and settles with it (lastWrite is that batch, or a later one).
      this.inline.push(item);
      this.runItem(item);
      return done;
    }
    let group = this.group;
    if (group === null) {
      group = this.group = [];
      // What close() waits for: one promise per group, which settles once every write in it has
      // (not one per write: under load that was a promise and a closure per message).
      let settled: () => void = noop;
      this.lastWrite = new Promise<void>((resolve) => (settled = resolve));
      // Issued at the end of this synchronous stretch (before any await of a caller resumes, so
      // before close() can run on): every write of the stretch goes in one callback.
      queueMicrotask(() => this.issueGroup(env, group as Pending[], settled));
    }
    group.push(item);
    return done;
  }

  /** While a late batch's prepare runs: the writes it makes, which join the running transaction. */
  private inline: Pending[] | null = null;

  /**
   * A batch whose content is decided only when its transaction starts: `prepare` is called
   * inside the lmdb transaction callback, and the writes it makes through the Store methods join
   * that transaction at once. Until then the caller may still withdraw what it meant to write
   * (the broker's write elision, src/broker/persistence.ts, cancels a delivery put in flight and
   * acknowledged before its batch started). Resolves once the batch is committed (durable per
   * the durability setting); each write's own promise says how it went. Rejects, without calling
   * prepare, when the store is closed or refusing writes. (An own property bound to this store,
   * so a wrapper that inherits from the store, like the metrics meter, calls it on the store.)
   */
  readonly lateBatch = (prepare: () => void): Promise<void> => this.runLateBatch(prepare);

  private runLateBatch(prepare: () => void): Promise<void> {
    const env = this.env;
    if (env === null || this.closing) return Promise.reject(new StoreError('ERR_STORE_CLOSED', `the store ${this.path} is not open`, this.path));
    if (this.flushFailure !== null) return commitFailure(this.flushFailure, this.dataFile, this.path);
    let items: Pending[] | null = null;
    const run = (): void => {
      this.txnFronts.clear();
      if (items !== null) {
        // Run again by lmdb: the same writes, not a second prepare.
        for (const item of items) this.runItem(item);
        return;
      }
      items = [];
      this.inline = items;
      try {
        prepare();
      } finally {
        this.inline = null;
      }
    };
    const done = env.transaction(run).then(
      () => {
        this.settleItems(items ?? [], null);
      },
      (err: unknown) => {
        const failure = commitFailure(err, this.dataFile, this.path);
        this.settleItems(items ?? [], failure);
        return failure;
      },
    );
    this.lastWrite = done.catch(() => undefined);
    return done;
  }

  private runItem(item: Pending): void {
    item.changes = null;
    item.fronts = null;
    item.threw = false;
    item.error = undefined;
    this.running = item;
    try {
      item.result = item.fn();
    } catch (err) {
      item.threw = true;
      item.error = err;
    } finally {
      this.running = null;
    }
  }

  /** After the transaction: each write resolves, or rejects with its own error or the batch's failure. */
  private settleItems(items: Pending[], failure: Promise<never> | null): void {
    failure?.catch(() => undefined);
    for (const item of items) {
      if (item.changes !== null) this.settleSidChanges(item.changes, failure === null && !item.threw);
      if (item.fronts !== null && failure === null && !item.threw) for (const [sid, front] of item.fronts) if ((this.queueFronts.get(sid) ?? -1) < front) this.queueFronts.set(sid, front);
      if (failure !== null) failure.catch(item.reject);
      else if (item.threw) commitFailure(item.error, this.dataFile, this.path).catch(item.reject);
      else item.resolve(item.result);
    }
  }

  private group: Pending[] | null = null;

  private issueGroup(env: RootDatabase<Buffer, Buffer>, items: Pending[], settled: () => void): void {
    if (this.group === items) this.group = null;
    // lmdb may run a batch's callback again: each run starts afresh (runItem resets what a write noted).
    const run = (): void => {
      this.txnFronts.clear();
      for (const item of items) this.runItem(item);
    };
    env.transaction(run).then(
      () => {
        this.settleItems(items, null);
        settled();
      },
      (err: unknown) => {
        this.settleItems(items, commitFailure(err, this.dataFile, this.path));
        settled();
      },
    );
  }

  protected put(table: TableName, key: Buffer, body: Buffer): void {
    (this.db as Tables)[table].putSync(key, wrap(table, key, body, this.keyring));
  }

  /** {@link put} for a body encoded with records.ts's HEADROOM free bytes in front (no copy in the clear). */
  protected putRecord(table: TableName, key: Buffer, record: Buffer): void {
    (this.db as Tables)[table].putSync(key, wrapWithHeadroom(table, key, record, this.keyring));
  }

  protected putMeta(name: string, body: Buffer): void {
    this.put('meta', Buffer.from(name, 'latin1'), body);
  }

  /** Removes every record session `sid` owns, and its header. */
  protected deleteSid(sid: number, headerKey: Buffer): void {
    const db = this.db as Tables;
    const range = sidRange(sid);
    for (const table of ['subscriptions', 'inflight', 'inflightIndex', 'queue', 'awaiting', 'wills'] as const) {
      const keys = [...db[table].getKeys(range)].map((k) => Buffer.from(k as Buffer));
      for (const k of keys) db[table].removeSync(k);
    }
    db.sessions.removeSync(headerKey);
    this.headerChanged(headerKey);
    this.nextQueueSeq.delete(sid);
    this.queueFronts.delete(sid);
    this.txnFronts.delete(sid);
  }

  /**
   * The next queue sequence number of session `sid`. Read from the last key once, then counted
   * in memory: sids are never reused while this process holds the store and only it writes, so
   * the count cannot fall behind; a failed batch only leaves a gap, and gaps keep the order.
   */
  protected nextQueueNumber(sid: number): number {
    const next = this.queueEnd(sid);
    this.nextQueueSeq.set(sid, next + 1);
    return next;
  }

  /** One above the highest queue number session `sid` ever used (no entry of it is at or above it). */
  private queueEnd(sid: number): number {
    let next = this.nextQueueSeq.get(sid);
    if (next === undefined) {
      next = 0;
      for (const key of (this.db as Tables).queue.getKeys({ ...sidReverseRange(sid), reverse: true, limit: 1 })) next = readU64(key as Buffer, 8) + 1;
      this.nextQueueSeq.set(sid, next);
    }
    return next;
  }

  // ── the queue's front ──────────────────────────────────────────────────────
  //
  // A dequeue removes the first entries of a session's queue. Finding them with a cursor read
  // was most of a dequeue's cost; instead the store remembers where each queue starts: a lower
  // bound of the numbers still in it, and removes from there by number. Numbers can be missing
  // (a failed batch's enqueues, or lmdb running a batch again, leave gaps): a removal that finds
  // nothing is skipped, and the walk stops at the queue's end. Starting too low costs a few
  // lookups; starting too high would leave entries behind, so the bound only moves up once the
  // batch that removed the entries below it has committed (`queueFronts`); inside a running
  // transaction callback, `txnFronts` holds its own progress, cleared at each (re)run.

  /** Per session: no queue entry below this number is in the committed store. */
  private readonly queueFronts = new Map<number, number>();
  /** The same, within the running transaction callback. */
  private readonly txnFronts = new Map<number, number>();

  /** Removes the first `count` entries of session `sid`'s queue (fewer if it holds fewer); inside a write callback. */
  protected removeQueueFront(sid: number, count: number): void {
    const db = this.db as Tables;
    // Before anything is removed: the end, found from the last entry when not yet counted, must
    // be noted now (an emptied queue has no last entry, and numbering it from 0 again would put
    // new entries below the front).
    const end = this.queueEnd(sid);
    let seq = this.txnFronts.get(sid) ?? this.queueFronts.get(sid);
    if (seq === undefined) {
      // The first dequeue of this session since the store opened: find the front once.
      const keys = [...db.queue.getKeys({ ...sidRange(sid), limit: count })].map((k) => Buffer.from(k as Buffer));
      for (const k of keys) db.queue.removeSync(k);
      const last = keys.at(-1);
      if (last === undefined) return;
      seq = readU64(last, 8) + 1;
    } else {
      for (let removed = 0; removed < count && seq < end; seq++) if (db.queue.removeSync(sidU64Key(sid, seq))) removed++;
    }
    this.txnFronts.set(sid, seq);
    if (this.running !== null) (this.running.fronts ??= []).push([sid, seq]);
  }

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
