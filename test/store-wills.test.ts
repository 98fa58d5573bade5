/**
 * Wills kept with persistent sessions (v5 will delay included), for both stores: what the shared
 * conformance suite does not cover yet. The broker stores the will of a persistent session's
 * connection so that one still pending when the broker stops or crashes is published after the
 * restart.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { LmdbStore } from '../src/store/lmdb.ts';
import { MemoryStore } from '../src/store/memory.ts';
import type { Store, StoredSession, StoredWill } from '../src/store/types.ts';
import { sessionKey } from '../src/store/types.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-store-wills-'));
test.after.always(() => fs.rmSync(root, { recursive: true, force: true }));
let n = 0;

const will = (payload: string, delayInterval = 30): StoredWill => ({
  delayInterval,
  message: { topic: 'status/meter-7', payload: Buffer.from(payload), qos: 1, retain: true, properties: { contentType: 'text/plain', userProperties: { why: 'gone' }, correlationData: Buffer.from([0, 255]) } },
});

function session(clientId: string, extra: Partial<StoredSession> = {}): StoredSession {
  return { clientId, owner: `user:${clientId}`, protocolVersion: 5, expiryInterval: 3600, subscriptions: [], inflight: [], queue: [], awaitingRelease: [], ...extra };
}

function stores(): [string, (reopen?: boolean) => Store][] {
  const memory = new MemoryStore();
  const dir = path.join(root, `s${++n}`);
  return [
    ['memory', () => memory],
    ['lmdb', () => new LmdbStore({ path: dir })],
  ];
}

for (const [name, make] of stores()) {
  test(`${name}: putWill sets and replaces a session's will, deleteWill removes it, saveSession carries it, all across reopening`, async (t: ExecutionContext) => {
    let store = make();
    await store.open();
    await store.saveSession(session('meter-7'));
    await store.saveSession(session('other', { will: will('other-offline', 0) }));
    await store.putWill(sessionKey('user:meter-7', 'meter-7'), will('first'));
    await store.putWill(sessionKey('user:meter-7', 'meter-7'), will('offline', 120));
    await store.putWill(sessionKey('user:nobody', 'nobody'), will('x'));
    await store.close();

    store = make();
    await store.open();
    const got = await store.getSession(sessionKey('user:meter-7', 'meter-7'));
    t.is(got?.will?.delayInterval, 120);
    t.is(got?.will?.message.payload.toString(), 'offline');
    t.true(got?.will?.message.retain);
    t.deepEqual(got?.will?.message.properties?.correlationData, Buffer.from([0, 255]));
    t.is(got?.will?.message.properties?.userProperties?.['why'], 'gone');
    t.is((await store.getSession(sessionKey('user:other', 'other')))?.will?.message.payload.toString(), 'other-offline');
    t.is(await store.getSession(sessionKey('user:nobody', 'nobody')), undefined, 'a will for an unknown client creates nothing');
    const loaded = new Map((await store.loadSessions()).map((s) => [s.clientId, s]));
    t.is(loaded.get('meter-7')?.will?.message.payload.toString(), 'offline');

    await store.deleteWill(sessionKey('user:meter-7', 'meter-7'));
    t.is((await store.getSession(sessionKey('user:meter-7', 'meter-7')))?.will, undefined);
    await store.saveSession(session('other'));
    t.is((await store.getSession(sessionKey('user:other', 'other')))?.will, undefined, 'saveSession replaces wholesale: no will given, none kept');
    await store.putWill(sessionKey('user:other', 'other'), will('again'));
    await store.deleteSession(sessionKey('user:other', 'other'));
    await store.saveSession(session('other'));
    t.is((await store.getSession(sessionKey('user:other', 'other')))?.will, undefined, 'a deleted session takes its will with it');
    await store.close();
  });
}

test('lmdb: a will is encrypted at rest like the other messages, and exported and imported with its session', async (t) => {
  const dir = path.join(root, 'sealed');
  const store = new LmdbStore({ path: dir, keys: [{ id: 'k', key: Buffer.alloc(32, 9) }] });
  await store.open();
  await store.saveSession(session('meter-7'));
  await store.putWill(sessionKey('user:meter-7', 'meter-7'), will('WILL-SECRET-PAYLOAD'));
  await store.close();
  t.false(fs.readFileSync(path.join(dir, 'data.mdb')).includes('WILL-SECRET-PAYLOAD'));
  const { exportStore, importStore } = await import('../src/store/lmdb-tools.ts');
  const lines: string[] = [];
  await exportStore(dir, [{ id: 'k', key: Buffer.alloc(32, 9) }], (l) => lines.push(l));
  const dump = path.join(root, 'wills.jsonl');
  fs.writeFileSync(dump, `${lines.join('\n')}\n`);
  const copy = path.join(root, 'imported');
  await importStore(copy, undefined, dump);
  const s = new LmdbStore({ path: copy });
  await s.open();
  t.is((await s.getSession(sessionKey('user:meter-7', 'meter-7')))?.will?.message.payload.toString(), 'WILL-SECRET-PAYLOAD');
  await s.close();
});
