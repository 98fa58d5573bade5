/**
 * Encryption at rest (AES-256-GCM, key id per record) and expired data at load.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import { createBroker, ConfigError } from '../src/index.ts';
import { StoreError } from '../src/store/errors.ts';
import { loadKeyFile, type StoreKey } from '../src/store/keyring.ts';
import { LmdbStore } from '../src/store/lmdb.ts';
import { MemoryStore } from '../src/store/memory.ts';
import type { Store, StoredMessage, StoredSession } from '../src/store/types.ts';
import { silentLogger } from '../src/log.ts';
import { sessionKey } from '../src/store/types.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const main = path.join(root, 'src', 'cli', 'main.ts');

function tempDir(t: ExecutionContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-store-enc-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

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

const msg = (topic: string, payload: string, extra: Partial<StoredMessage> = {}): StoredMessage => ({ topic, payload: Buffer.from(payload), qos: 1, retain: false, ...extra });

function session(clientId: string, extra: Partial<StoredSession> = {}): StoredSession {
  return { clientId, owner: `cert:CN=${clientId}`, protocolVersion: 5, expiryInterval: 3600, subscriptions: [], inflight: [], queue: [], awaitingRelease: [], ...extra };
}

const k1: StoreKey = { id: 'k1', key: Buffer.alloc(32, 1) };
const k2: StoreKey = { id: 'k2', key: Buffer.alloc(32, 2) };

async function writeSecrets(dir: string, keys: StoreKey[] | undefined, marker: string): Promise<void> {
  const store = new LmdbStore({ path: dir, ...(keys ? { keys } : {}) });
  await store.open();
  await store.saveSession(session('meter-7', { queue: [msg('cmd/meter-7', `${marker}-queued`)], inflight: [{ packetId: 1, state: 'publish', message: msg('cmd/meter-7', `${marker}-inflight`) }] }));
  await store.putRetained(msg('status/meter-7', `${marker}-retained`, { retain: true }));
  await store.close();
}

test('with a key file, payloads and session owners never reach the disk in the clear (without one they do)', async (t) => {
  const dir = tempDir(t);
  await writeSecrets(path.join(dir, 'plain'), undefined, 'SECRET-PAYLOAD');
  await writeSecrets(path.join(dir, 'sealed'), [k1], 'SECRET-PAYLOAD');
  const plain = fs.readFileSync(path.join(dir, 'plain', 'data.mdb'));
  const sealed = fs.readFileSync(path.join(dir, 'sealed', 'data.mdb'));
  for (const needle of ['SECRET-PAYLOAD-queued', 'SECRET-PAYLOAD-inflight', 'SECRET-PAYLOAD-retained', 'CN=meter-7']) {
    t.true(plain.includes(needle), `control: ${needle} is in the plain store`);
    t.false(sealed.includes(needle), `${needle} is not in the encrypted store`);
  }
  const s = new LmdbStore({ path: path.join(dir, 'sealed'), keys: [k1] });
  const report = await s.open();
  t.is(report.encryptionKeyId, 'k1');
  t.is((await s.getSession(sessionKey('cert:CN=meter-7', 'meter-7')))?.queue[0]?.payload.toString(), 'SECRET-PAYLOAD-queued');
  await s.close();
});

test('an encrypted store cannot be opened without its key, nor with another key; a record altered on disk fails authentication', async (t) => {
  const dir = path.join(tempDir(t), 'store');
  await writeSecrets(dir, [k1], 'AAAAAAAAAAAAAAAAAAAAAAAA');
  let err = await t.throwsAsync(new LmdbStore({ path: dir }).open());
  t.is((err as StoreError).code, 'ERR_STORE_KEY');
  t.regex(err?.message ?? '', /key id 'k1'/);
  err = await t.throwsAsync(new LmdbStore({ path: dir, keys: [k2] }).open());
  t.is((err as StoreError).code, 'ERR_STORE_KEY');

  // Flip a bit in the middle of every sealed value's ciphertext: find the sealed session record by its key id prefix.
  const file = path.join(dir, 'data.mdb');
  const buf = fs.readFileSync(file);
  const tag = Buffer.from([0x02, 2, ...Buffer.from('k1')]);
  let hits = 0;
  for (let i = buf.indexOf(tag); i >= 0; i = buf.indexOf(tag, i + 1)) {
    buf[i + tag.length + 12 + 16 + 3] = (buf[i + tag.length + 12 + 16 + 3] as number) ^ 1;
    hits++;
  }
  t.true(hits > 0);
  fs.writeFileSync(file, buf);
  err = await t.throwsAsync(new LmdbStore({ path: dir, keys: [k1] }).open());
  t.is((err as StoreError).code, 'ERR_STORE_CORRUPT');
  t.regex(err?.message ?? '', /decryption failed: the value was altered/);
});

test('key rotation: a new first key encrypts, the old one still decrypts; compact re-encrypts everything, after which the old key can go', async (t) => {
  const dir = tempDir(t);
  const store = path.join(dir, 'store');
  const keyFile = path.join(dir, 'store.keys');
  t.is((await cli(['store', 'keygen', '--key-file', keyFile, '--id', 'old'])).status, 0);
  t.is(fs.statSync(keyFile).mode & 0o777, 0o600);
  await writeSecrets(store, loadKeyFile(keyFile), 'ROTATE');

  const added = await cli(['store', 'keygen', '--key-file', keyFile, '--id', 'new']);
  t.is(added.status, 0, added.stderr);
  const keys = loadKeyFile(keyFile);
  t.deepEqual(
    keys.map((k) => k.id),
    ['new', 'old'],
  );
  const s = new LmdbStore({ path: store, keys });
  t.is((await s.open()).encryptionKeyId, 'new');
  t.is((await s.getSession(sessionKey('cert:CN=meter-7', 'meter-7')))?.queue[0]?.payload.toString(), 'ROTATE-queued', 'old records still decrypt');
  await s.enqueue(sessionKey('cert:CN=meter-7', 'meter-7'), msg('cmd/meter-7', 'after-rotation'));
  await s.close();

  let stats = await cli(['store', 'stats', '--path', store, '--key-file', keyFile, '--json']);
  t.is(stats.status, 0, stats.stderr);
  let ids = (JSON.parse(stats.stdout) as { keyIds: Record<string, number> }).keyIds;
  t.true((ids['old'] ?? 0) > 0 && (ids['new'] ?? 0) > 0, `both keys in use before compact: ${JSON.stringify(ids)}`);

  const compact = await cli(['store', 'compact', '--path', store, '--key-file', keyFile]);
  t.is(compact.status, 0, compact.stderr);
  stats = await cli(['store', 'stats', '--path', store, '--key-file', keyFile, '--json']);
  ids = (JSON.parse(stats.stdout) as { keyIds: Record<string, number> }).keyIds;
  t.is(ids['old'], undefined, `no record under the old key after compact: ${JSON.stringify(ids)}`);

  const onlyNew = keys.filter((k) => k.id === 'new');
  const after = new LmdbStore({ path: store, keys: onlyNew });
  await after.open();
  t.deepEqual(
    (await after.getSession(sessionKey('cert:CN=meter-7', 'meter-7')))?.queue.map((m) => m.payload.toString()),
    ['ROTATE-queued', 'after-rotation'],
  );
  t.is((await after.loadRetained())[0]?.payload.toString(), 'ROTATE-retained');
  await after.close();
});

test('a key file others can read, or a malformed one, is refused naming the file; createBroker reports it as store.encryption.keyFile', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'keys');
  fs.writeFileSync(file, `k1 ${Buffer.alloc(32, 1).toString('base64')}\n`, { mode: 0o644 });
  fs.chmodSync(file, 0o644);
  t.throws(() => loadKeyFile(file), { message: /can be read or written by other users.*chmod 600/ });
  fs.chmodSync(file, 0o600);
  t.is(loadKeyFile(file)[0]?.id, 'k1');
  fs.writeFileSync(file, `k1 ${Buffer.alloc(16, 1).toString('base64')}\n`);
  t.throws(() => loadKeyFile(file), { message: new RegExp(`${file}:1: the key must be 32 random bytes`) });
  const err = t.throws(() => createBroker({ store: { path: path.join(dir, 'store'), encryption: { keyFile: path.join(dir, 'missing') } } }, { logger: silentLogger() }));
  t.true(err instanceof ConfigError);
  t.regex(err?.message ?? '', /store\.encryption\.keyFile: cannot read the store key file/);
  t.false(fs.existsSync(path.join(dir, 'store')), 'building a broker creates no store folder');
});

// ── expired data at load ────────────────────────────────────────────────────

async function expiryCase(t: ExecutionContext, make: (now: () => number) => Store): Promise<void> {
  let now = 1_000_000;
  const store = make(() => now);
  await store.open();
  await store.saveSession(session('gone', { expiresAt: 1_500_000, queue: [msg('q', 'x')] }));
  await store.saveSession(session('kept', { expiresAt: 9_000_000, queue: [msg('q', 'old', { expiresAt: 1_200_000 }), msg('q', 'fresh', { expiresAt: 9_000_000 }), msg('q', 'forever')] }));
  await store.saveSession(session('online'));
  await store.putRetained(msg('r/old', 'x', { retain: true, expiresAt: 1_200_000 }));
  await store.putRetained(msg('r/new', 'y', { retain: true, expiresAt: 9_000_000 }));
  await store.close();

  now = 2_000_000;
  const report = await store.open();
  t.deepEqual(report.purged, { expiredSessions: 1, expiredMessages: 1, expiredRetained: 1, orphans: 0 });
  t.is(report.loaded.sessions, 2);
  t.is(report.loaded.queued, 2);
  t.deepEqual((await store.loadSessions()).map((s) => s.clientId).sort(), ['kept', 'online']);
  t.deepEqual(
    (await store.getSession(sessionKey('cert:CN=kept', 'kept')))?.queue.map((m) => m.payload.toString()),
    ['fresh', 'forever'],
  );
  t.deepEqual(
    (await store.loadRetained()).map((m) => m.topic),
    ['r/new'],
  );

  // The purge the broker runs on a timer: expired sessions (unless resumed) and retained.
  await store.setSessionExpiry(sessionKey('cert:CN=online', 'online'), 2_500_000, 60);
  await store.saveSession(session('resumed', { expiresAt: 2_500_000 }));
  now = 10_000_000;
  const purge = await store.purgeExpired({ keep: (id) => id === sessionKey('cert:CN=resumed', 'resumed') });
  t.deepEqual(purge, { expiredSessions: 2, expiredRetained: 1 });
  t.deepEqual((await store.loadSessions()).map((s) => s.clientId), ['resumed']);
  t.deepEqual(await store.loadRetained(), []);
  await store.close();
}

test('lmdb: expired sessions, queued messages and retained messages are dropped at load and counted; purgeExpired drops them later', async (t) => {
  const dir = tempDir(t);
  await expiryCase(t, (now) => new LmdbStore({ path: path.join(dir, 'store'), now }));
});

test('memory: the same expiry behaviour at open and on purge', async (t) => {
  await expiryCase(t, (now) => new MemoryStore(now));
});
