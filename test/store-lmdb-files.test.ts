/**
 * The LMDB store's folder and files: permissions at rest, the one-process lock, and damaged,
 * truncated or foreign files, which are refused with an error naming the file (never a crash,
 * never a start with part of the state missing); `portcullis store check` finds the damage and
 * `store export --skip-damaged` / `store import` salvage the rest.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import { StoreError } from '../src/store/errors.ts';
import { LmdbStore } from '../src/store/lmdb.ts';
import type { StoredMessage, StoredSession } from '../src/store/types.ts';
import { sessionKey } from '../src/store/types.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const main = path.join(root, 'src', 'cli', 'main.ts');

function tempDir(t: ExecutionContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-store-files-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function session(clientId: string, queue: StoredMessage[] = []): StoredSession {
  return { clientId, owner: `user:${clientId}`, protocolVersion: 5, expiryInterval: 3600, subscriptions: [{ filter: `cmd/${clientId}`, qos: 1, noLocal: false, retainAsPublished: false, retainHandling: 0 }], inflight: [], queue, awaitingRelease: [] };
}

const msg = (topic: string, payload: string): StoredMessage => ({ topic, payload: Buffer.from(payload), qos: 1, retain: false });

/** A store folder with `n` sessions of 3 queued messages, closed. */
async function filledStore(dir: string, n = 50, marker = 'payload'): Promise<void> {
  const store = new LmdbStore({ path: dir });
  await store.open();
  // All at once: one commit for the lot.
  await Promise.all(Array.from({ length: n }, (_, i) => store.saveSession(session(`dev${i}`, [msg(`cmd/dev${i}`, `${marker}-${i}-a`), msg(`cmd/dev${i}`, `${marker}-${i}-b`), msg(`cmd/dev${i}`, `${marker}-${i}-c`)]))));
  await store.putRetained({ topic: 'status', payload: Buffer.from('online'), qos: 1, retain: true });
  await store.close();
}

async function openError(t: ExecutionContext, store: LmdbStore): Promise<StoreError> {
  const err = await t.throwsAsync(store.open());
  t.true(err instanceof StoreError, `a StoreError, got ${String(err)}`);
  return err as StoreError;
}

/** Runs the CLI without blocking the other tests of this file (spawnSync would). */
function cli(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', main, ...args], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('close', (status) => resolve({ status, stdout, stderr }));
  });
}

// ── permissions ─────────────────────────────────────────────────────────────

// Serial: the umask is process-wide.
test.serial('a new store folder is created 0700 and its files 0600, even under a permissive umask', async (t) => {
  const dir = path.join(tempDir(t), 'nested', 'store');
  const old = process.umask(0o000);
  try {
    const store = new LmdbStore({ path: dir });
    const report = await store.open();
    t.true(report.created);
    for (const f of ['data.mdb', 'lock.mdb', 'portcullis-store.json', 'portcullis.lock']) t.is(fs.statSync(path.join(dir, f)).mode & 0o777, 0o600, f);
    t.is(fs.statSync(dir).mode & 0o777, 0o700);
    t.is(fs.statSync(path.dirname(dir)).mode & 0o777, 0o700, 'folders created on the way are 0700 too');
    await store.close();
  } finally {
    process.umask(old);
  }
});

test('a store folder other users can write is refused, naming the folder; a file others can read is tightened to 0600', async (t) => {
  const dir = tempDir(t);
  const store = path.join(dir, 'store');
  await filledStore(store, 1);
  fs.chmodSync(store, 0o777);
  const err = await openError(t, new LmdbStore({ path: store }));
  t.is(err.code, 'ERR_STORE_PERMISSIONS');
  t.true(err.message.includes(store), err.message);
  t.regex(err.message, /other users/);
  fs.chmodSync(store, 0o770);
  t.is((await openError(t, new LmdbStore({ path: store }))).code, 'ERR_STORE_PERMISSIONS', 'group-writable too');

  fs.chmodSync(store, 0o700);
  fs.chmodSync(path.join(store, 'data.mdb'), 0o644);
  const s = new LmdbStore({ path: store });
  await s.open();
  t.is(fs.statSync(path.join(store, 'data.mdb')).mode & 0o777, 0o600);
  await s.close();
});

test('a store folder owned by another user is refused', async (t) => {
  if (process.getuid?.() !== 0) {
    t.pass('needs root to chown');
    return;
  }
  const store = path.join(tempDir(t), 'store');
  fs.mkdirSync(store, { mode: 0o700 });
  fs.chownSync(store, 65534, 65534);
  const err = await openError(t, new LmdbStore({ path: store }));
  t.is(err.code, 'ERR_STORE_PERMISSIONS');
  t.regex(err.message, /belongs to uid 65534/);
});

// ── the lock ────────────────────────────────────────────────────────────────

test('a second store on an open folder is refused with ERR_STORE_LOCKED naming the folder; it opens once the first closed', async (t) => {
  const store = path.join(tempDir(t), 'store');
  const a = new LmdbStore({ path: store });
  await a.open();
  const err = await openError(t, new LmdbStore({ path: store }));
  t.is(err.code, 'ERR_STORE_LOCKED');
  t.true(err.message.includes(store));
  await a.close();
  const b = new LmdbStore({ path: store });
  const report = await b.open();
  t.false(report.recovery.uncleanShutdown, 'a clean close leaves no stale lock');
  await b.close();
});

test('a lock held by a live process is respected; one left by a dead process is taken over and reported', async (t) => {
  const store = path.join(tempDir(t), 'store');
  await filledStore(store, 1);
  const lockFile = path.join(store, 'portcullis.lock');
  const sleeper = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)'], { stdio: 'ignore' });
  t.teardown(() => sleeper.kill('SIGKILL'));
  fs.writeFileSync(lockFile, JSON.stringify({ pid: sleeper.pid, host: os.hostname(), since: '2020-01-01T00:00:00.000Z' }), { mode: 0o600 });
  const err = await openError(t, new LmdbStore({ path: store }));
  t.is(err.code, 'ERR_STORE_LOCKED');
  t.true(err.message.includes(`process ${String(sleeper.pid)}`), err.message);

  sleeper.kill('SIGKILL');
  await new Promise((r) => sleeper.once('exit', r));
  const s = new LmdbStore({ path: store });
  const report = await s.open();
  t.true(report.recovery.uncleanShutdown);
  t.is(report.recovery.staleLock?.pid, sleeper.pid);
  t.is(report.loaded.sessions, 1);
  await s.close();
});

test('a lock whose holder has ended but was not yet collected by its parent (a zombie) is stale, and taken over', async (t) => {
  if (process.platform !== 'linux') {
    t.pass('reads /proc');
    return;
  }
  const store = path.join(tempDir(t), 'store');
  await filledStore(store, 1);
  // sh starts a short sleep in the background, then becomes a long sleep, which never collects
  // it. (The short one ends after the exec: had it ended before, sh could have collected it.)
  const parent = spawn('sh', ['-c', 'sleep 0.3 & echo $!; exec sleep 60'], { stdio: ['ignore', 'pipe', 'ignore'] });
  t.teardown(() => parent.kill('SIGKILL'));
  const zombie = Number((await new Promise<Buffer>((r) => parent.stdout.once('data', r))).toString().trim());
  let state = '';
  for (let i = 0; i < 250 && state !== 'Z'; i++) {
    await new Promise((r) => setTimeout(r, 20));
    const stat = fs.readFileSync(`/proc/${zombie}/stat`, 'utf8');
    state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0] ?? '';
  }
  t.is(state, 'Z', 'the holder is a zombie');
  t.notThrows(() => process.kill(zombie, 0), 'kill(pid, 0) alone would call it alive');
  const stat = fs.readFileSync(`/proc/${zombie}/stat`, 'utf8');
  const procStart = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  fs.writeFileSync(path.join(store, 'portcullis.lock'), JSON.stringify({ pid: zombie, host: os.hostname(), since: '2020-01-01T00:00:00.000Z', procStart }), { mode: 0o600 });
  const s = new LmdbStore({ path: store });
  const report = await s.open();
  t.is(report.recovery.staleLock?.pid, zombie);
  t.is(report.loaded.sessions, 1);
  await s.close();
});

// ── damaged files ───────────────────────────────────────────────────────────

test('a truncated data file is refused with ERR_STORE_CORRUPT naming data.mdb, at every size, without crashing the process', async (t) => {
  const dir = tempDir(t);
  const good = path.join(dir, 'good');
  await filledStore(good, 300);
  const full = fs.statSync(path.join(good, 'data.mdb')).size;
  t.true(full > 16 * 4096, `a multi-page store (${full} bytes)`);
  for (const size of [100, 4096, 6000, 8192, Math.floor(full / 2), full - 4096]) {
    const copy = path.join(dir, `cut-${size}`);
    fs.cpSync(good, copy, { recursive: true });
    fs.rmSync(path.join(copy, 'portcullis.lock'), { force: true });
    fs.truncateSync(path.join(copy, 'data.mdb'), size);
    const err = await openError(t, new LmdbStore({ path: copy }));
    t.is(err.code, 'ERR_STORE_CORRUPT', `size ${size}`);
    t.true(err.message.includes(path.join(copy, 'data.mdb')), `size ${size}: ${err.message}`);
  }
});

test('an emptied or deleted data file is refused (the manifest says a store existed): no silent fresh start', async (t) => {
  const store = path.join(tempDir(t), 'store');
  await filledStore(store, 2);
  fs.truncateSync(path.join(store, 'data.mdb'), 0);
  let err = await openError(t, new LmdbStore({ path: store }));
  t.is(err.code, 'ERR_STORE_CORRUPT');
  t.regex(err.message, /missing or empty.*portcullis-store\.json/s);
  fs.rmSync(path.join(store, 'data.mdb'));
  err = await openError(t, new LmdbStore({ path: store }));
  t.is(err.code, 'ERR_STORE_CORRUPT');
});

test('a data file copied in from another store is refused', async (t) => {
  const dir = tempDir(t);
  await filledStore(path.join(dir, 'a'), 1);
  await filledStore(path.join(dir, 'b'), 1);
  fs.copyFileSync(path.join(dir, 'b', 'data.mdb'), path.join(dir, 'a', 'data.mdb'));
  const err = await openError(t, new LmdbStore({ path: path.join(dir, 'a') }));
  t.is(err.code, 'ERR_STORE_CORRUPT');
  t.regex(err.message, /belongs to another store/);
});

/** Flips one byte in every copy of `needle` in the data file (LMDB may keep old copies in free pages). */
function corrupt(file: string, needle: string): number {
  const buf = fs.readFileSync(file);
  let hits = 0;
  for (let i = buf.indexOf(needle); i >= 0; i = buf.indexOf(needle, i + 1)) {
    buf[i + 2] = (buf[i + 2] as number) ^ 0x20;
    hits++;
  }
  fs.writeFileSync(file, buf);
  return hits;
}

test('a damaged record stops the start with an error naming the file and the record; store check reports it; export --skip-damaged and import salvage the rest', async (t) => {
  t.timeout(60_000);
  const dir = tempDir(t);
  const store = path.join(dir, 'store');
  await filledStore(store, 5, 'MARKER');
  t.true(corrupt(path.join(store, 'data.mdb'), 'MARKER-3-b') > 0, 'the payload is in the file');

  const err = await openError(t, new LmdbStore({ path: store }));
  t.is(err.code, 'ERR_STORE_CORRUPT');
  t.true(err.message.includes(path.join(store, 'data.mdb')));
  t.regex(err.message, /queue session #\d+ #1: checksum mismatch/);

  const check = await cli(['store', 'check', '--path', store]);
  t.is(check.status, 1, check.stderr);
  t.regex(check.stderr, /DAMAGED/);
  t.regex(check.stderr, /queue session #\d+ #1: checksum mismatch/);
  t.regex(check.stderr, /docs\/persistence\.md, "Recovery"/);

  const refused = await cli(['store', 'export', '--path', store]);
  t.is(refused.status, 1, 'export refuses a damaged store without --skip-damaged');
  const dump = path.join(dir, 'dump.jsonl');
  const salvage = await cli(['store', 'export', '--path', store, '--out', dump, '--skip-damaged']);
  t.is(salvage.status, 0, salvage.stderr);
  t.regex(salvage.stderr, /skipped damaged record queue/);
  t.is(fs.statSync(dump).mode & 0o777, 0o600, 'the export holds payloads in the clear: 0600');

  const fresh = path.join(dir, 'fresh');
  const imported = await cli(['store', 'import', dump, '--path', fresh]);
  t.is(imported.status, 0, imported.stderr);
  const s = new LmdbStore({ path: fresh });
  await s.open();
  const dev3 = await s.getSession(sessionKey('user:dev3', 'dev3'));
  t.deepEqual(
    dev3?.queue.map((m) => m.payload.toString()),
    ['MARKER-3-a', 'MARKER-3-c'],
    'everything but the damaged record came back',
  );
  t.is((await s.loadSessions()).length, 5);
  t.is((await s.loadRetained())[0]?.payload.toString(), 'online');
  await s.close();
  t.is((await cli(['store', 'check', '--path', fresh])).status, 0);
});

test('store check on a truncated file reports it and exits 1; on a healthy live store it exits 0', async (t) => {
  const dir = tempDir(t);
  const store = path.join(dir, 'store');
  await filledStore(store, 100);
  const live = new LmdbStore({ path: store });
  await live.open();
  const ok = await cli(['store', 'check', '--path', store]);
  t.is(ok.status, 0, ok.stderr);
  t.regex(ok.stdout, /OK: .*\n\s+100 sessions, 100 subscriptions, 0 in flight, 300 queued/);
  t.regex(ok.stdout, /in use by process \d+/);
  await live.close();
  fs.truncateSync(path.join(store, 'data.mdb'), 3 * 4096);
  const bad = await cli(['store', 'check', '--path', store]);
  t.is(bad.status, 1);
  t.regex(bad.stderr, /data\.mdb is truncated/);
});

test('a data file that ends before pages LMDB had freed (as after a crash) opens, with a warning; the retained content is intact', async (t) => {
  // LMDB does not write a page it allocated and freed in the same transaction, so after kill -9
  // the file may end before the last page its header counts. Here the last pages are free because
  // their records were deleted; cutting them off is what such a crash leaves.
  const dir = tempDir(t);
  const store = path.join(dir, 'store');
  let s = new LmdbStore({ path: store });
  await s.open();
  for (let i = 0; i < 300; i++) await s.putRetained({ topic: `t/${i}`, payload: Buffer.alloc(2000, i), qos: 1, retain: true });
  for (let i = 0; i < 300; i++) await s.putRetained({ topic: `t/${i}`, payload: Buffer.alloc(0), qos: 1, retain: true });
  await s.putRetained({ topic: 'kept', payload: Buffer.from('still here'), qos: 1, retain: true });
  await s.close();
  const full = fs.statSync(path.join(store, 'data.mdb')).size;
  for (const pages of [1, 3]) {
    const copy = path.join(dir, `short-${pages}`);
    fs.cpSync(store, copy, { recursive: true });
    fs.rmSync(path.join(copy, 'portcullis.lock'), { force: true });
    fs.truncateSync(path.join(copy, 'data.mdb'), full - pages * 4096);
    s = new LmdbStore({ path: copy });
    const report = await s.open();
    t.true(report.warnings.some((w) => w.includes(`ends ${pages} page(s) before`)), report.warnings.join('; '));
    const retained = await s.loadRetained();
    t.deepEqual(retained.map((m) => [m.topic, m.payload.toString()]), [['kept', 'still here']]);
    await s.close();
  }
});
