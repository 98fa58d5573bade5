/**
 * Maintenance of an LMDB store folder, behind `portcullis store check | stats | compact | export |
 * import | keygen` (src/cli/store.ts).
 *
 * - check and stats read a snapshot without the lock, in a child process (lmdb-inspect.ts), so
 *   they work beside a running broker and survive a damaged page.
 * - export reads a snapshot without the lock and writes JSON lines (decrypted: the file is as
 *   sensitive as the store).
 * - compact and import take the lock: the broker must be stopped.
 */
import fs from 'node:fs';
import path from 'node:path';
import { open as openLmdb, type Database, type RootDatabase } from 'lmdb';
import { StoreError } from './errors.ts';
import { Keyring, loadKeyFile, newKeyLine, type StoreKey } from './keyring.ts';
import { DATA_FILE, LMDB_LOCK_FILE, checkDataFile, guardFolder, readManifest, syncFolder } from './lmdb-files.ts';
import { inspectInChild, type InspectResult } from './lmdb-inspect.ts';
import { StoreLock } from './lmdb-lock.ts';
import { scanStore, type Tables } from './lmdb-scan.ts';
import { LmdbStore } from './lmdb.ts';
import { TABLES, encodeBytes, encodeJson, unwrap, wrap, decodeJson, sealedKeyId } from './records.ts';
import type { StoreCounts, StoredMessage, StoredSession } from './types.ts';

// ── check ──────────────────────────────────────────────────────────────────

export interface CheckReport {
  path: string;
  ok: boolean;
  /** Damage and unsafe settings: each makes `ok` false. */
  problems: { where: string; problem: string }[];
  /** Worth knowing, not damage. */
  notes: string[];
  inspection?: InspectResult;
}

export async function checkStore(dir: string, keys: StoreKey[] | undefined): Promise<CheckReport> {
  const report: CheckReport = { path: dir, ok: false, problems: [], notes: [] };
  try {
    report.notes.push(...guardFolder(dir, false));
  } catch (err) {
    if (!(err instanceof StoreError)) throw err;
    report.problems.push({ where: err.file ?? dir, problem: err.message });
    if (err.code === 'ERR_STORE_CORRUPT') return report; // no store there at all
  }
  for (const name of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
    const st = fs.lstatSync(path.join(dir, name));
    if (process.platform !== 'win32' && st.isFile() && (st.mode & 0o077) !== 0) {
      report.problems.push({ where: path.join(dir, name), problem: `other users can access it (mode ${(st.mode & 0o777).toString(8)}); the broker makes it 0600 at its next start` });
    }
  }
  const holder = StoreLock.holder(dir);
  if (holder !== undefined) report.notes.push(`in use by process ${holder.pid} on ${holder.host} since ${holder.since}: this is a snapshot of a live store`);
  const result = await inspectInChild(dir, keys);
  if ('crashed' in result) {
    report.problems.push({ where: path.join(dir, DATA_FILE), problem: result.crashed });
  } else {
    report.inspection = result;
    report.problems.push(...result.problems);
    if (result.orphans > 0) report.problems.push({ where: path.join(dir, DATA_FILE), problem: `${result.orphans} record(s) belong to no session (dropped at the next start)` });
    if (result.unverified > 0) {
      const ids = Object.keys(result.keyIds).filter((k) => k !== '');
      report.notes.push(`${result.unverified} record(s) are encrypted (key ids: ${ids.join(', ')}) and were not verified: give the key file (--key-file, or the configuration's store.encryption.keyFile)`);
    }
    const e = result.expired;
    if (e.sessions + e.messages + e.retained > 0) report.notes.push(`expired, dropped at the next start: ${e.sessions} session(s), ${e.messages} queued message(s), ${e.retained} retained message(s)`);
  }
  report.ok = report.problems.length === 0;
  return report;
}

// ── stats ──────────────────────────────────────────────────────────────────

export interface StatsReport {
  path: string;
  counts: StoreCounts;
  keyIds: Record<string, number>;
  fileBytes: number;
  usedBytes: number;
  /** What compact would give back to the filesystem, roughly. */
  reclaimableBytes: number;
  expired: InspectResult['expired'];
  /** Encrypted records that could not be read without the key file (not in the counts). */
  unverified: number;
  inUseBy?: string;
}

export async function storeStats(dir: string, keys: StoreKey[] | undefined): Promise<StatsReport> {
  guardFolder(dir, false);
  const r = await inspectInChild(dir, keys);
  if ('crashed' in r) throw new StoreError('ERR_STORE_CORRUPT', `${path.join(dir, DATA_FILE)}: ${r.crashed}; run 'portcullis store check'`, path.join(dir, DATA_FILE));
  const used = r.space.usedPages * r.space.pageSize;
  const holder = StoreLock.holder(dir);
  return {
    path: dir,
    counts: r.counts,
    keyIds: r.keyIds,
    fileBytes: r.space.fileBytes,
    usedBytes: used,
    reclaimableBytes: Math.max(0, r.space.fileBytes - used),
    expired: r.expired,
    unverified: r.unverified,
    ...(holder !== undefined ? { inUseBy: `process ${holder.pid} on ${holder.host}` } : {}),
  };
}

// ── export and import ──────────────────────────────────────────────────────

export const EXPORT_FORMAT = 'portcullis-store-export';
export const EXPORT_VERSION = 1;

/** A message as exported: bytes in base64 (payload, correlation data), everything else as is. */
function exportMessage(m: StoredMessage): Record<string, unknown> {
  const out: Record<string, unknown> = { ...m, payload: m.payload.toString('base64') };
  if (m.properties !== undefined) {
    const p: Record<string, unknown> = { ...m.properties };
    if (m.properties.correlationData !== undefined) p['correlationData'] = Buffer.from(m.properties.correlationData).toString('base64');
    out['properties'] = p;
  }
  return out;
}

function importMessage(v: unknown, where: string): StoredMessage {
  if (v === null || typeof v !== 'object' || typeof (v as { payload?: unknown }).payload !== 'string') throw new StoreError('ERR_STORE_CORRUPT', `${where}: not an exported message`);
  const raw = v as Record<string, unknown> & { payload: string; properties?: Record<string, unknown> };
  const m = { ...raw, payload: Buffer.from(raw.payload, 'base64') } as unknown as StoredMessage;
  if (raw.properties !== undefined && typeof raw.properties['correlationData'] === 'string') {
    m.properties = { ...(raw.properties as object), correlationData: Buffer.from(raw.properties['correlationData'], 'base64') };
  }
  return m;
}

function exportSession(s: StoredSession): Record<string, unknown> {
  return {
    ...s,
    inflight: s.inflight.map((f) => ({ ...f, message: exportMessage(f.message) })),
    queue: s.queue.map(exportMessage),
    ...(s.will !== undefined ? { will: { ...s.will, message: exportMessage(s.will.message) } } : {}),
  };
}

function importSession(v: Record<string, unknown>, where: string): StoredSession {
  const s = v as unknown as StoredSession;
  if (typeof s.clientId !== 'string' || !Array.isArray(s.queue) || !Array.isArray(s.inflight) || !Array.isArray(s.subscriptions) || !Array.isArray(s.awaitingRelease)) {
    throw new StoreError('ERR_STORE_CORRUPT', `${where}: not an exported session`);
  }
  return {
    ...s,
    inflight: s.inflight.map((f, i) => ({ ...f, message: importMessage(f.message, `${where} inflight[${i}]`) })),
    queue: s.queue.map((m, i) => importMessage(m, `${where} queue[${i}]`)),
    ...(s.will !== undefined ? { will: { ...s.will, message: importMessage(s.will.message, `${where} will`) } } : {}),
  };
}

export interface ExportReport {
  sessions: number;
  retained: number;
  /** Damaged records left out (only with skipDamaged). */
  skipped: { where: string; problem: string }[];
}

/**
 * Writes the store as JSON lines: a header, one line per session (with its subscriptions,
 * in-flight and queued messages) and per retained message, and an end line with the counts.
 * A damaged store is refused unless `skipDamaged` (then what can be read is exported, and each
 * damaged record is listed in the report).
 */
export async function exportStore(dir: string, keys: StoreKey[] | undefined, write: (line: string) => void, options: { skipDamaged?: boolean } = {}): Promise<ExportReport> {
  guardFolder(dir, false);
  const manifest = readManifest(dir);
  if (checkDataFile(dir) === undefined) throw new StoreError('ERR_STORE_CORRUPT', `there is no data in ${path.join(dir, DATA_FILE)}`, path.join(dir, DATA_FILE));
  const env: RootDatabase<Buffer, Buffer> = openLmdb<Buffer, Buffer>({ path: dir, readOnly: true, maxDbs: 16, keyEncoding: 'binary', encoding: 'binary' });
  try {
    const db = {} as Tables;
    for (const name of TABLES) db[name] = env.openDB<Buffer, Buffer>({ name, keyEncoding: 'binary', encoding: 'binary' }) as Database<Buffer, Buffer>;
    const keyring = keys !== undefined && keys.length > 0 ? new Keyring(keys) : null;
    const scan = scanStore(db, keyring);
    const skipped = scan.problems.map((p) => ({ where: `${p.table} ${p.key}`, problem: p.problem }));
    if (skipped.length > 0 && options.skipDamaged !== true) {
      throw new StoreError(
        'ERR_STORE_CORRUPT',
        `${path.join(dir, DATA_FILE)}: ${skipped.length} record(s) cannot be read (first: ${skipped[0]?.where}: ${skipped[0]?.problem}); export with --skip-damaged to save what can be read`,
        path.join(dir, DATA_FILE),
      );
    }
    write(JSON.stringify({ type: EXPORT_FORMAT, version: EXPORT_VERSION, exported: new Date().toISOString(), source: dir, ...(manifest !== undefined ? { storeId: manifest.storeId } : {}) }));
    let sessions = 0;
    for (const s of scan.sessions.values()) {
      write(JSON.stringify({ type: 'session', session: exportSession(s.session) }));
      sessions++;
    }
    for (const r of scan.retained) write(JSON.stringify({ type: 'retained', message: exportMessage(r.message) }));
    write(JSON.stringify({ type: 'end', sessions, retained: scan.retained.length, skipped: skipped.length }));
    return { sessions, retained: scan.retained.length, skipped };
  } finally {
    await env.close();
  }
}

/**
 * Loads an export into an empty store (a new folder, or one whose content was moved aside). The
 * file is read twice: first checked whole (header, every line, the end line's counts), then
 * written, so a truncated or edited export imports nothing.
 */
export async function importStore(dir: string, keys: StoreKey[] | undefined, file: string): Promise<{ sessions: number; retained: number }> {
  const lines = fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.trim() !== '');
  const records: ({ type: 'session'; session: StoredSession } | { type: 'retained'; message: StoredMessage })[] = [];
  let end: { sessions: number; retained: number } | undefined;
  lines.forEach((line, i) => {
    const where = `${file}:${i + 1}`;
    let v: Record<string, unknown>;
    try {
      v = JSON.parse(line) as Record<string, unknown>;
    } catch {
      throw new StoreError('ERR_STORE_CORRUPT', `${where}: not JSON`, file);
    }
    if (i === 0) {
      if (v['type'] !== EXPORT_FORMAT) throw new StoreError('ERR_STORE_CORRUPT', `${where}: not a Portcullis store export`, file);
      if (typeof v['version'] !== 'number' || v['version'] > EXPORT_VERSION) throw new StoreError('ERR_STORE_CORRUPT', `${where}: export version ${String(v['version'])} is newer than this broker reads`, file);
      return;
    }
    if (end !== undefined) throw new StoreError('ERR_STORE_CORRUPT', `${where}: a line after the end line`, file);
    if (v['type'] === 'session') records.push({ type: 'session', session: importSession(v['session'] as Record<string, unknown>, where) });
    else if (v['type'] === 'retained') records.push({ type: 'retained', message: importMessage(v['message'], where) });
    else if (v['type'] === 'end') end = { sessions: Number(v['sessions']), retained: Number(v['retained']) };
    else throw new StoreError('ERR_STORE_CORRUPT', `${where}: unknown line type ${JSON.stringify(v['type'])}`, file);
  });
  const sessions = records.filter((r) => r.type === 'session').length;
  const retained = records.length - sessions;
  if (end === undefined) throw new StoreError('ERR_STORE_CORRUPT', `${file} has no end line: the export is incomplete; nothing was imported`, file);
  if (end.sessions !== sessions || end.retained !== retained) {
    throw new StoreError('ERR_STORE_CORRUPT', `${file}: the end line counts ${end.sessions} sessions and ${end.retained} retained messages, the file holds ${sessions} and ${retained}; nothing was imported`, file);
  }
  const store = new LmdbStore({ path: dir, ...(keys !== undefined ? { keys } : {}) });
  const opened = await store.open();
  try {
    if (opened.loaded.sessions + opened.loaded.retained > 0) {
      throw new StoreError('ERR_STORE_LOCKED', `the store ${dir} is not empty (${opened.loaded.sessions} sessions, ${opened.loaded.retained} retained messages): import into a new folder`, dir);
    }
    for (const r of records) {
      if (r.type === 'session') await store.saveSession(r.session);
      else await store.putRetained(r.message);
    }
  } finally {
    await store.close();
  }
  return { sessions, retained };
}

// ── compact ────────────────────────────────────────────────────────────────

export interface CompactReport {
  bytesBefore: number;
  bytesAfter: number;
  records: number;
  /** Records per key id after compaction ('' = in the clear). */
  keyIds: Record<string, number>;
  purged: { expiredSessions: number; expiredMessages: number; expiredRetained: number; orphans: number };
}

const COMPACT_FILE = 'compact.mdb';
const BATCH = 10_000;

/**
 * Rewrites the store into a new file and swaps it in: the file shrinks to what is in use, every
 * record is verified, and every encrypted record is sealed again with the key file's first key
 * (so old keys can then be retired). Expired data is dropped as at a broker start. The broker
 * must be stopped (the lock is taken).
 */
export async function compactStore(dir: string, keys: StoreKey[] | undefined): Promise<CompactReport> {
  const dataFile = path.join(dir, DATA_FILE);
  const store = new LmdbStore({ path: dir, ...(keys !== undefined ? { keys } : {}) });
  const opened = await store.open();
  const bytesBefore = fs.statSync(dataFile).size;
  const tmp = path.join(dir, COMPACT_FILE);
  const report: CompactReport = { bytesBefore, bytesAfter: 0, records: 0, keyIds: {}, purged: opened.purged };
  let swapped = false;
  try {
    const { db: src, keyring } = store.internals();
    for (const f of [tmp, `${tmp}-lock`]) fs.rmSync(f, { force: true });
    for (const f of [tmp, `${tmp}-lock`]) fs.closeSync(fs.openSync(f, 'wx', 0o600));
    const out = openLmdb<Buffer, Buffer>({ path: tmp, noSubdir: true, maxDbs: 16, overlappingSync: false, keyEncoding: 'binary', encoding: 'binary' });
    try {
      const dst = {} as Tables;
      for (const name of TABLES) dst[name] = out.openDB<Buffer, Buffer>({ name, keyEncoding: 'binary', encoding: 'binary' }) as Database<Buffer, Buffer>;
      const target = keys !== undefined && keys.length > 0 ? new Keyring(keys) : null;
      // Metadata: the format and counters as they are; one new epoch for the re-sealed records.
      let nextEpoch = 1;
      const meta: [Buffer, Buffer][] = [];
      for (const { key, value } of src.meta.getRange({})) {
        const name = Buffer.from(key).toString('latin1');
        if (name === 'nextEpoch') nextEpoch = Math.max(nextEpoch, Number(decodeJson(unwrap('meta', Buffer.from(key), value, null))['n']));
        else if (name.startsWith('epoch:')) nextEpoch = Math.max(nextEpoch, Number(name.slice(6)) + 1);
        else meta.push([Buffer.from(key), Buffer.from(value)]);
      }
      out.transactionSync(() => {
        for (const [k, v] of meta) dst.meta.putSync(k, v);
        if (target !== null) {
          const salt = Keyring.newSalt();
          const epochKey = Buffer.from(`epoch:${nextEpoch}`, 'latin1');
          dst.meta.putSync(epochKey, wrap('meta', epochKey, encodeBytes(salt), null));
          const nextKey = Buffer.from('nextEpoch', 'latin1');
          dst.meta.putSync(nextKey, wrap('meta', nextKey, encodeJson({ n: nextEpoch + 1 }), null));
          target.startEpoch(nextEpoch, salt);
        }
      });
      for (const table of TABLES) {
        if (table === 'meta') continue;
        let batch: [Buffer, Buffer][] = [];
        const flush = () => {
          const items = batch;
          batch = [];
          out.transactionSync(() => {
            for (const [k, v] of items) dst[table].putSync(k, v);
          });
        };
        for (const { key, value } of src[table].getRange({})) {
          const k = Buffer.from(key);
          const sealed = wrap(table, k, unwrap(table, k, value, keyring), target);
          const id = sealedKeyId(sealed) ?? '';
          report.keyIds[id] = (report.keyIds[id] ?? 0) + 1;
          batch.push([k, sealed]);
          report.records++;
          if (batch.length >= BATCH) flush();
        }
        if (batch.length > 0) flush();
      }
      // Verify the copy before it replaces anything.
      const check = scanStore(dst, target);
      if (check.problems.length > 0) throw new StoreError('ERR_STORE_CORRUPT', `the compacted copy does not read back (${check.problems[0]?.problem}); the store was left as it was`, tmp);
      await out.flushed;
    } finally {
      await out.close();
    }
    const lock = await store.closeKeepingLock();
    try {
      fs.renameSync(tmp, dataFile);
      swapped = true;
      // LMDB's reader table described the old file.
      fs.rmSync(`${tmp}-lock`, { force: true });
      fs.rmSync(path.join(dir, LMDB_LOCK_FILE), { force: true });
      fs.closeSync(fs.openSync(path.join(dir, LMDB_LOCK_FILE), 'a', 0o600));
      syncFolder(dir);
    } finally {
      lock.release();
    }
    report.bytesAfter = fs.statSync(dataFile).size;
    return report;
  } finally {
    if (!swapped) {
      await store.close().catch(() => undefined);
      for (const f of [tmp, `${tmp}-lock`]) fs.rmSync(f, { force: true });
    }
  }
}

// ── keys ───────────────────────────────────────────────────────────────────

/**
 * Adds a new random key as the first line of a key file (created 0600 when missing): from the
 * next start it encrypts new records, and the keys below it still decrypt older ones.
 */
export function addKey(file: string, id: string): { created: boolean; keys: number } {
  const exists = fs.existsSync(file);
  const existing = exists ? loadKeyFile(file) : [];
  if (existing.some((k) => k.id === id)) throw new StoreError('ERR_STORE_KEY', `key id '${id}' is already in ${file}`, file);
  const line = newKeyLine(id);
  const old = exists ? fs.readFileSync(file, 'utf8') : '# Portcullis store keys: <key id> <base64 of 32 bytes>. The first key encrypts; every key decrypts.\n';
  const header = old.match(/^(#[^\n]*\n)*/)?.[0] ?? '';
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, `${header}${line}\n${old.slice(header.length)}`, { mode: 0o600 });
  fs.renameSync(tmp, file);
  return { created: !exists, keys: existing.length + 1 };
}
