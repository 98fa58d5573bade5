/**
 * Read-only inspection of an LMDB store folder, for `portcullis store check` and `stats`. It
 * takes no lock (LMDB readers never block the broker's writer) and reads one snapshot.
 *
 * LMDB trusts its pages: a damaged page can crash the reading process (SIGSEGV, SIGBUS) instead
 * of returning an error. So the tools run the inspection in a child process
 * ({@link inspectInChild}): a crash there becomes a finding ("reading data.mdb crashed the
 * reader"), not a crash of the tool.
 */
import { fork } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { open as openLmdb, type Database, type RootDatabase } from 'lmdb';
import { Keyring, type StoreKey } from './keyring.ts';
import { DATA_FILE, checkDataFile, readManifest } from './lmdb-files.ts';
import { scanStore, type Tables } from './lmdb-scan.ts';
import { TABLES, decodeJson } from './records.ts';
import type { StoreCounts } from './types.ts';

export interface InspectResult {
  /** Damage found: where, and what. */
  problems: { where: string; problem: string }[];
  counts: StoreCounts;
  /** Records per key id that sealed them ('' for records in the clear). */
  keyIds: Record<string, number>;
  /** Records encrypted with a key that was not given, so not verified. */
  unverified: number;
  orphans: number;
  storeId?: string;
  /** Expired at the time of the inspection (the broker drops these at its next start). */
  expired: { sessions: number; messages: number; retained: number };
  space: { fileBytes: number; pageSize: number; usedPages: number; totalPages: number };
}

function tableStats(db: Database<Buffer, Buffer>): number {
  const s = db.getStats() as { treeBranchPageCount: number; treeLeafPageCount: number; overflowPages: number };
  return s.treeBranchPageCount + s.treeLeafPageCount + s.overflowPages;
}

/** Inspects in this process. Throws StoreError for what stops inspection (missing folder, truncated file). */
export async function inspect(dir: string, keys: StoreKey[] | undefined, now = Date.now()): Promise<InspectResult> {
  const file = path.join(dir, DATA_FILE);
  const manifest = readManifest(dir);
  const header = checkDataFile(dir);
  const empty: InspectResult = {
    problems: [],
    counts: { sessions: 0, subscriptions: 0, inflight: 0, queued: 0, awaitingRelease: 0, retained: 0, wills: 0 },
    keyIds: {},
    unverified: 0,
    orphans: 0,
    expired: { sessions: 0, messages: 0, retained: 0 },
    space: { fileBytes: 0, pageSize: 0, usedPages: 0, totalPages: 0 },
  };
  if (header === undefined) {
    if (manifest !== undefined) empty.problems.push({ where: file, problem: `missing or empty, but the manifest says a store was created here on ${manifest.created}` });
    return empty;
  }
  let env: RootDatabase<Buffer, Buffer>;
  try {
    env = openLmdb<Buffer, Buffer>({ path: dir, readOnly: true, maxDbs: 16, keyEncoding: 'binary', encoding: 'binary' });
  } catch (err) {
    empty.problems.push({ where: file, problem: `LMDB cannot open it: ${(err as Error).message}` });
    return empty;
  }
  try {
    const db = {} as Tables;
    for (const name of TABLES) db[name] = env.openDB<Buffer, Buffer>({ name, keyEncoding: 'binary', encoding: 'binary' }) as Database<Buffer, Buffer>;
    const keyring = keys !== undefined && keys.length > 0 ? new Keyring(keys) : null;
    const scan = scanStore(db, keyring, { skipUnreadable: keyring === null });
    const result: InspectResult = { ...empty, problems: scan.problems.map((p) => ({ where: `${file}: ${p.table} ${p.key}`, problem: p.problem })) };
    result.counts = scan.counts;
    result.keyIds = Object.fromEntries(scan.keyIds);
    result.unverified = keyring === null ? [...scan.keyIds].filter(([id]) => id !== '').reduce((n, [, c]) => n + c, 0) : 0;
    result.orphans = scan.orphans.length;
    const format = scan.meta.get('format');
    if (format === undefined) {
      if (TABLES.some((t) => db[t].getKeysCount({ limit: 1 }) > 0)) result.problems.push({ where: file, problem: 'an LMDB file without a Portcullis format record' });
    } else {
      const storeId = decodeJson(format)['storeId'];
      if (typeof storeId === 'string') result.storeId = storeId;
      if (manifest !== undefined && manifest.storeId !== storeId) result.problems.push({ where: file, problem: `belongs to store ${String(storeId)}, the manifest to ${manifest.storeId}` });
    }
    for (const s of scan.sessions.values()) {
      if (s.header.expiresAt !== undefined && s.header.expiresAt <= now) result.expired.sessions++;
      else result.expired.messages += s.session.queue.filter((m) => m.expiresAt !== undefined && m.expiresAt <= now).length;
    }
    result.expired.retained = scan.retained.filter((r) => r.message.expiresAt !== undefined && r.message.expiresAt <= now).length;
    const root = env.getStats() as { pageSize: number; lastPageNumber: number };
    let used = 2 + tableStats(env);
    for (const t of TABLES) used += tableStats(db[t]);
    result.space = { fileBytes: fs.statSync(file).size, pageSize: root.pageSize, usedPages: used, totalPages: root.lastPageNumber + 1 };
    return result;
  } finally {
    await env.close();
  }
}

/** The failure of a child inspection: the child died (a signal) or could not run. */
export interface InspectCrash {
  crashed: string;
}

/** Runs {@link inspect} in a child process; keys travel over IPC, never in argv or the environment. */
export function inspectInChild(dir: string, keys: StoreKey[] | undefined): Promise<InspectResult | InspectCrash> {
  const self = fileURLToPath(import.meta.url);
  const execArgv = self.endsWith('.ts') ? ['--import', import.meta.resolve('tsx')] : [];
  return new Promise((resolve) => {
    const child = fork(self, ['--portcullis-inspect'], { execArgv, stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
    let stderr = '';
    let answer: InspectResult | InspectCrash | undefined;
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('message', (m: { result?: InspectResult; error?: string }) => {
      answer = m.result ?? { crashed: m.error ?? 'unknown error' };
    });
    child.on('error', (err) => resolve({ crashed: err.message }));
    child.on('exit', (code, signal) => {
      if (answer !== undefined) return resolve(answer);
      resolve({ crashed: signal !== null ? `reading ${path.join(dir, DATA_FILE)} crashed the reader (${signal}): LMDB pages are damaged` : `the inspection exited with code ${String(code)}: ${stderr.trim().slice(0, 500)}` });
    });
    child.send({ dir, keys: keys?.map((k) => ({ id: k.id, key: k.key.toString('base64') })) });
  });
}

if (process.argv.includes('--portcullis-inspect') && process.send !== undefined && process.argv[1] === fileURLToPath(import.meta.url)) {
  process.once('message', (m: { dir: string; keys?: { id: string; key: string }[] }) => {
    const keys = m.keys?.map((k) => ({ id: k.id, key: Buffer.from(k.key, 'base64') }));
    inspect(m.dir, keys).then(
      (result) => process.send?.({ result }, () => process.exit(0)),
      (err: unknown) => process.send?.({ error: (err as Error).message }, () => process.exit(0)),
    );
  });
}
