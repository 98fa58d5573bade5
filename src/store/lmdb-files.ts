/**
 * The files of an LMDB store folder, checked before LMDB touches them:
 *
 *   <path>/data.mdb               LMDB data (0600)
 *   <path>/lock.mdb               LMDB reader table (0600)
 *   <path>/portcullis-store.json  manifest: this folder holds a Portcullis store, and which one (0600)
 *   <path>/portcullis.lock        which process has the store open (0600, see lmdb-lock.ts)
 *
 * Why check first: LMDB maps the data file into memory and trusts it. A data file cut short
 * (a failed copy, a full disk during a restore) makes LMDB crash the process with SIGSEGV or
 * SIGBUS on the first page it reads, and an empty or missing one is silently made into a new,
 * empty store. The manifest says a store existed; the header check says the file is whole.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import os from 'node:os';
import path from 'node:path';
import { StoreError } from './errors.ts';

export const DATA_FILE = 'data.mdb';
export const LMDB_LOCK_FILE = 'lock.mdb';
export const MANIFEST_FILE = 'portcullis-store.json';
export const LOCK_FILE = 'portcullis.lock';
export const MANIFEST_FORMAT = 'portcullis-store';
/**
 * The store's format, in the manifest and in the data file's format record. 1: the first
 * format; 2: in-flight entries keyed by packet id (lmdb-keys.ts); 3: queued, retained and
 * in-flight messages in a binary layout (lmdb-records.ts). An older store is upgraded at open
 * (lmdb-base.ts); a newer one is refused.
 */
export const FORMAT_VERSION = 3;

export interface Manifest {
  format: typeof MANIFEST_FORMAT;
  version: number;
  /** Random id written into both the manifest and the data file: a data file from another store is refused. */
  storeId: string;
  created: string;
}

const isPosix = process.platform !== 'win32';

function mode(m: number): string {
  return (m & 0o777).toString(8).padStart(4, '0');
}

/**
 * Creates the folder (0700, parents too) when asked, and refuses one that other users can
 * write or that belongs to someone else. Returns warnings for what is allowed but looser than
 * the defaults (a folder others can list).
 */
export function guardFolder(dir: string, create: boolean): string[] {
  const warnings: string[] = [];
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new StoreError('ERR_STORE_PERMISSIONS', `cannot use the store folder ${dir}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, dir, { cause: err });
    }
    if (!create) throw new StoreError('ERR_STORE_CORRUPT', `there is no store at ${dir}`, dir);
    try {
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    } catch (e) {
      throw new StoreError('ERR_STORE_PERMISSIONS', `cannot create the store folder ${dir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, dir, { cause: e });
    }
    st = fs.statSync(dir);
  }
  if (!st.isDirectory()) throw new StoreError('ERR_STORE_PERMISSIONS', `the store path ${dir} is not a folder`, dir);
  if (isPosix) {
    const uid = process.getuid?.();
    if (uid !== undefined && st.uid !== uid) {
      throw new StoreError('ERR_STORE_PERMISSIONS', `the store folder ${dir} belongs to uid ${st.uid}, not to the broker's uid ${uid}: its owner could change the store; chown it or choose another store.path`, dir);
    }
    if ((st.mode & 0o022) !== 0) {
      throw new StoreError('ERR_STORE_PERMISSIONS', `the store folder ${dir} can be written by other users (mode ${mode(st.mode)}): they could replace or alter the store; chmod 700 it`, dir);
    }
    if ((st.mode & 0o005) !== 0 || (st.mode & 0o050) !== 0) warnings.push(`the store folder ${dir} can be listed by other users (mode ${mode(st.mode)}); 0700 is recommended (the files in it are 0600)`);
  }
  return warnings;
}

/**
 * Makes sure the store's files are 0600 and ours: creates the LMDB files empty with 0600 before
 * LMDB opens them (LMDB itself would create them 0644 under the usual umask), and tightens an
 * existing file of ours that others can read. A file owned by someone else is refused.
 */
export function guardFiles(dir: string, create: boolean): void {
  for (const name of [DATA_FILE, LMDB_LOCK_FILE, MANIFEST_FILE, LOCK_FILE]) {
    const file = path.join(dir, name);
    let st: fs.Stats | undefined;
    try {
      st = fs.lstatSync(file);
    } catch {
      st = undefined;
    }
    if (st === undefined) {
      if (create && (name === DATA_FILE || name === LMDB_LOCK_FILE)) fs.closeSync(fs.openSync(file, 'a', 0o600));
      continue;
    }
    if (!st.isFile()) throw new StoreError('ERR_STORE_PERMISSIONS', `${file} is not a regular file (a link or device in a store folder is refused)`, file);
    if (!isPosix) continue;
    const uid = process.getuid?.();
    if (uid !== undefined && st.uid !== uid) throw new StoreError('ERR_STORE_PERMISSIONS', `${file} belongs to uid ${st.uid}, not to the broker's uid ${uid}`, file);
    if ((st.mode & 0o077) !== 0) fs.chmodSync(file, 0o600);
  }
}

export function readManifest(dir: string): Manifest | undefined {
  const file = path.join(dir, MANIFEST_FILE);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new StoreError('ERR_STORE_CORRUPT', `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, file, { cause: err });
  }
  let m: Partial<Manifest>;
  try {
    m = JSON.parse(text) as Partial<Manifest>;
  } catch {
    throw new StoreError('ERR_STORE_CORRUPT', `${file} is damaged (not JSON)`, file);
  }
  if (m.format !== MANIFEST_FORMAT || typeof m.storeId !== 'string' || typeof m.version !== 'number') {
    throw new StoreError('ERR_STORE_CORRUPT', `${file} is not a Portcullis store manifest`, file);
  }
  if (m.version > FORMAT_VERSION) {
    throw new StoreError('ERR_STORE_CORRUPT', `${file}: the store has format version ${m.version}, this broker reads up to ${FORMAT_VERSION} (a newer Portcullis wrote it)`, file);
  }
  return m as Manifest;
}

/** Writes the manifest durably: temp file, fsync, rename, fsync of the folder. */
export function writeManifest(dir: string, manifest: Manifest): void {
  const file = path.join(dir, MANIFEST_FILE);
  const tmp = `${file}.${process.pid}.tmp`;
  const fd = fs.openSync(tmp, 'w', 0o600);
  try {
    fs.writeFileSync(fd, `${JSON.stringify(manifest, null, 2)}\n`);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  syncFolder(dir);
}

export function syncFolder(dir: string): void {
  if (!isPosix) return;
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch {
    // Some filesystems refuse fsync on a folder; the rename is still atomic.
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

// ── the LMDB data file header ──────────────────────────────────────────────

/**
 * LMDB's meta page (lmdb-js 3.x, LMDB 0.9.90, 64-bit builds): a 24-byte page header whose
 * flags (offset 18) include P_META, then MDB_meta: magic 0xBEEFC0DE (24), version (28),
 * address (32), map size (40), two MDB_db of 48 bytes (48, 96; the first one's md_pad is the page
 * size), last used page (144), txn id (152). Meta copies live at offset 0, half a page (with
 * overlappingSync) and one page; the newest valid one describes the file.
 */
const P_META = 0x08;
const MDB_MAGIC = 0xbeefc0de;
const META_MAGIC = 24;
const META_PSIZE = 48;
const META_LAST_PG = 144;
const META_TXNID = 152;
const META_BYTES = 160;

export interface DataFileInfo {
  file: string;
  size: number;
  pageSize: number;
  /** Pages the newest meta says are in use (last page number + 1). */
  pages: number;
  txnId: number;
  /** Pages the header counts beyond the end of the file, all of them free (0: none). */
  shortBy: number;
}

/** Opens the store read-only in a child process and reads every record of every table; true when it exits cleanly. */
function readsWhole(dir: string): boolean {
  const lmdb = pathToFileURL(createRequire(import.meta.url).resolve('lmdb')).href;
  // Names first, then each table (opening a table inside the root's iteration crashes lmdb-js).
  // Then one key written and removed: a write reads LMDB's free-page list, the one tree the reads
  // do not touch (the store's content is unchanged). No close: the process exits.
  const script = `const { open } = await import(process.argv[1]);
const env = open({ path: process.argv[2], maxDbs: 16, keyEncoding: 'binary', encoding: 'binary' });
const names = Array.from(env.getKeys(), (k) => Buffer.from(k).toString());
for (const name of names) {
  let db;
  try { db = env.openDB({ name, keyEncoding: 'binary', encoding: 'binary' }); } catch { continue; }
  for (const e of db.getRange()) void e.value;
}
const probe = Buffer.from('\\u0000portcullis-check');
env.putSync(probe, Buffer.alloc(1));
env.removeSync(probe);
process.exit(0);`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script, lmdb, dir], { stdio: 'ignore', timeout: 120_000 });
  return r.status === 0 && r.signal === null;
}

function readMetaAt(fd: number, offset: number, size: number): { psize: number; lastPg: number; txnId: number } | undefined {
  if (offset + META_BYTES > size) return undefined;
  const buf = Buffer.alloc(META_BYTES);
  if (fs.readSync(fd, buf, 0, META_BYTES, offset) !== META_BYTES) return undefined;
  const le = os.endianness() === 'LE';
  const u32 = (o: number) => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
  const u64 = (o: number) => (le ? Number(buf.readBigUInt64LE(o)) : Number(buf.readBigUInt64BE(o)));
  if (u32(META_MAGIC) !== MDB_MAGIC) return undefined;
  const flags = le ? buf.readUInt16LE(18) : buf.readUInt16BE(18);
  if (offset === 0 && (flags & P_META) === 0) return undefined;
  return { psize: u32(META_PSIZE), lastPg: u64(META_LAST_PG), txnId: u64(META_TXNID) };
}

/**
 * Checks that data.mdb is a whole LMDB file: its meta pages are there and valid, and it is at
 * least as long as the pages its newest meta uses. Returns undefined for an empty file (a store
 * being created). Throws StoreError ERR_STORE_CORRUPT naming the file.
 */
export function checkDataFile(dir: string): DataFileInfo | undefined {
  const file = path.join(dir, DATA_FILE);
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new StoreError('ERR_STORE_CORRUPT', `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, file, { cause: err });
  }
  try {
    const size = fs.fstatSync(fd).size;
    if (size === 0) return undefined;
    const first = readMetaAt(fd, 0, size);
    if (first === undefined) {
      throw new StoreError('ERR_STORE_CORRUPT', `${file} is not an LMDB data file, or its first page is damaged (size ${size} bytes)`, file);
    }
    const psize = first.psize;
    if (psize < 512 || psize > 65536 || (psize & (psize - 1)) !== 0) {
      throw new StoreError('ERR_STORE_CORRUPT', `${file}: the header gives an impossible page size (${psize}); the first page is damaged`, file);
    }
    if (size < 2 * psize) {
      throw new StoreError('ERR_STORE_CORRUPT', `${file} is truncated: ${size} bytes, shorter than its two header pages (${2 * psize} bytes)`, file);
    }
    // Every valid meta copy's pages must be there: LMDB may fall back to an older one.
    let newest = first;
    let lastPg = first.lastPg;
    for (const off of [psize >> 1, psize]) {
      const m = readMetaAt(fd, off, size);
      if (m === undefined || m.psize !== psize) continue;
      if (m.txnId > newest.txnId) newest = m;
      lastPg = Math.max(lastPg, m.lastPg);
    }
    const pages = lastPg + 1;
    let shortBy = 0;
    if (size < pages * psize) {
      // LMDB does not write a page it allocated and freed again in the same transaction (a
      // "loose" page), so after a crash the file may end before the last page its header counts,
      // and that page is free. A page still in use that is missing would crash the process on
      // its first read (SIGBUS on the mapped file): every table is read through in a child
      // process first, and only a file that reads whole is opened.
      shortBy = pages - Math.floor(size / psize);
      if (size % psize !== 0 || !readsWhole(dir)) {
        throw new StoreError('ERR_STORE_CORRUPT', `${file} is truncated: ${size} bytes, but its header uses ${pages} pages of ${psize} bytes (${pages * psize} bytes)`, file);
      }
    }
    return { file, size, pageSize: psize, pages, txnId: newest.txnId, shortBy };
  } finally {
    fs.closeSync(fd);
  }
}
