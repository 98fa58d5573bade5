/**
 * The durable LMDB store against the shared Store conformance suite, once with each durability
 * setting and once with encryption at rest.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { LmdbStore } from '../src/store/lmdb.ts';
import { storeConformance } from './store-conformance.ts';
import { sessionKey } from '../src/store/types.ts';
import { decodeJson, encodeInflight, encodeJson, unwrap, wrap } from '../src/store/records.ts';
import { sidU16Key, sidU64Key } from '../src/store/lmdb-keys.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-store-lmdb-'));
test.after.always(() => fs.rmSync(root, { recursive: true, force: true }));

let n = 0;
const folder = (): string => path.join(root, `s${++n}`);
const key = { id: 'k1', key: Buffer.alloc(32, 7) };

storeConformance('lmdb (sync)', async () => new LmdbStore({ path: folder() }));
storeConformance('lmdb (commit)', async () => new LmdbStore({ path: folder(), durability: 'commit' }));
storeConformance('lmdb (encrypted)', async () => new LmdbStore({ path: folder(), keys: [key] }));

test('close lets every write issued before it finish, awaited or not (the broker does not await them all)', async (t) => {
  const dir = folder();
  const store = new LmdbStore({ path: dir });
  await store.open();
  const s = { clientId: 'a', owner: 'user:a', protocolVersion: 5 as const, expiryInterval: 60, subscriptions: [], inflight: [], queue: [], awaitingRelease: [] };
  const writes: Promise<void>[] = [store.saveSession(s)];
  // Spread over several event-loop turns, so they land in different commits.
  for (let i = 0; i < 5; i++) {
    await new Promise((r) => setImmediate(r));
    writes.push(store.enqueue(sessionKey('user:a', 'a'), { topic: `q/${i}`, payload: Buffer.from([i]), qos: 1, retain: false }));
  }
  writes.push(store.putSubscription(sessionKey('user:a', 'a'), { filter: 'x', qos: 1, noLocal: false, retainAsPublished: false, retainHandling: 0 }));
  await store.close();
  await t.notThrowsAsync(Promise.all(writes));
  await t.throwsAsync(store.enqueue(sessionKey('user:a', 'a'), { topic: 'late', payload: Buffer.alloc(0), qos: 1, retain: false }), { code: 'ERR_STORE_CLOSED' });
  const again = new LmdbStore({ path: dir });
  await again.open();
  const got = await again.getSession(sessionKey('user:a', 'a'));
  t.deepEqual(
    got?.queue.map((m) => m.topic),
    ['q/0', 'q/1', 'q/2', 'q/3', 'q/4'],
  );
  t.is(got?.subscriptions[0]?.filter, 'x');
  await again.close();
});

test('a store in format 1 (in-flight entries keyed by order, with a packet-id index) is upgraded at open: same entries, same resend order, format 3 after', async (t) => {
  for (const keys of [undefined, [key]]) {
    const dir = folder();
    const store = new LmdbStore({ path: dir, ...(keys ? { keys } : {}) });
    await store.open();
    const owner = 'user:a';
    const msg = (topic: string) => ({ topic, payload: Buffer.from(topic), qos: 2 as const, retain: false });
    // Resend order differs from packet-id order on purpose.
    const inflight = [
      { packetId: 7, state: 'publish' as const, message: msg('m/7') },
      { packetId: 3, state: 'pubrel' as const, message: msg('m/3') },
      { packetId: 9, state: 'publish' as const, message: msg('m/9'), subscriptionIds: [4] },
    ];
    await store.saveSession({ clientId: 'a', owner, protocolVersion: 5, expiryInterval: 60, subscriptions: [], inflight, queue: [], awaitingRelease: [] });
    // Rewrite it as format 1 wrote it: [sid, order] → entry, [sid, packet id] → {n: order}.
    const { env, db, keyring } = store.internals();
    const sid = Number(decodeJson(unwrap('meta', Buffer.from('nextSid'), db.meta.get(Buffer.from('nextSid')) as Buffer, null))['n']) - 1;
    await env.transaction(() => {
      for (const k of [...db.inflight.getKeys({})]) db.inflight.removeSync(Buffer.from(k as Buffer));
      inflight.forEach((f, order) => {
        const k = sidU64Key(sid, order);
        db.inflight.putSync(k, wrap('inflight', k, encodeInflight(f), keyring));
        const ik = sidU16Key(sid, f.packetId);
        db.inflightIndex.putSync(ik, wrap('inflightIndex', ik, encodeJson({ n: order }), keyring));
      });
      const fk = Buffer.from('format');
      const format = decodeJson(unwrap('meta', fk, db.meta.get(fk) as Buffer, keyring));
      db.meta.putSync(fk, wrap('meta', fk, encodeJson({ ...format, version: 1 }), keyring));
    });
    await store.close();
    const manifestFile = path.join(dir, 'portcullis-store.json');
    fs.writeFileSync(manifestFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(manifestFile, 'utf8')), version: 1 }));

    const again = new LmdbStore({ path: dir, ...(keys ? { keys } : {}) });
    const report = await again.open();
    t.true(report.warnings.some((w) => /upgraded from format 1 to format 3 \(3 in-flight records/.test(w)), report.warnings.join('; '));
    t.deepEqual((await again.getSession(sessionKey(owner, 'a')))?.inflight, inflight);
    t.deepEqual((await again.loadSessions())[0]?.inflight, inflight);
    // The index is gone and the entries are keyed by packet id: an acknowledgement deletes one without a read.
    t.is(again.internals().db.inflightIndex.getKeysCount(), 0);
    await again.deleteInflight(sessionKey(owner, 'a'), 3);
    await again.putInflight(sessionKey(owner, 'a'), { packetId: 1, state: 'publish', message: msg('m/1') });
    await again.close();
    t.is(JSON.parse(fs.readFileSync(manifestFile, 'utf8')).version, 3);

    const third = new LmdbStore({ path: dir, ...(keys ? { keys } : {}) });
    const r3 = await third.open();
    t.false(r3.warnings.some((w) => /upgraded/.test(w)));
    t.deepEqual((await third.loadSessions())[0]?.inflight.map((f) => f.packetId), [7, 9, 1]);
    await third.close();
  }
});

/** Reaches the numbering of queue entries: a number taken and never written is the gap a failed batch leaves. */
class GapStore extends LmdbStore {
  gap(sessionKeyOf: string, n: number): Promise<void> {
    return this.write(() => {
      const s = this.sidOf(sessionKeyOf);
      if (s !== undefined) for (let i = 0; i < n; i++) this.nextQueueNumber(s.sid);
    });
  }
}

test('dequeue removes the first entries by number, across gaps in the numbering (a failed batch leaves some), and never beyond the queue', async (t) => {
  const dir = folder();
  const store = new GapStore({ path: dir });
  await store.open();
  const owner = 'user:g';
  const k = sessionKey(owner, 'g');
  const m = (i: number) => ({ topic: `g/${i}`, payload: Buffer.from([i]), qos: 1 as const, retain: false });
  await store.saveSession({ clientId: 'g', owner, protocolVersion: 5, expiryInterval: 60, subscriptions: [], inflight: [], queue: [m(0), m(1)], awaitingRelease: [] });
  const topics = async (s: LmdbStore) => (await s.getSession(k))?.queue.map((x) => x.topic);
  await store.dequeue(k, 1); // the first dequeue finds the front with a read
  await store.enqueue(k, m(2));
  await store.gap(k, 3);
  await store.enqueue(k, m(3));
  await store.gap(k, 2);
  await store.enqueue(k, m(4));
  t.deepEqual(await topics(store), ['g/1', 'g/2', 'g/3', 'g/4']);
  // From the known front: 1 and 2, then over the gap to 3.
  await store.dequeue(k, 3);
  t.deepEqual(await topics(store), ['g/4']);
  // Several in one commit, and more than the queue holds.
  await Promise.all([store.enqueue(k, m(5)), store.dequeue(k, 1), store.enqueue(k, m(6)), store.dequeue(k, 1)]);
  t.deepEqual(await topics(store), ['g/6']);
  await store.dequeue(k, 10);
  t.deepEqual(await topics(store), []);
  await store.enqueue(k, m(7));
  t.deepEqual(await topics(store), ['g/7']);
  // A queue emptied by its first dequeue (nothing enqueued since the session was saved): what
  // comes next is numbered above the front, and taken by the next dequeue.
  const h = sessionKey(owner, 'h');
  await store.saveSession({ clientId: 'h', owner, protocolVersion: 5, expiryInterval: 60, subscriptions: [], inflight: [], queue: [m(10), m(11)], awaitingRelease: [] });
  await store.dequeue(h, 2);
  await store.enqueue(h, m(12));
  await store.dequeue(h, 1);
  t.deepEqual((await store.getSession(h))?.queue, []);
  await store.close();
  const again = new LmdbStore({ path: dir });
  await again.open();
  t.deepEqual((await again.getSession(k))?.queue.map((x) => x.topic), ['g/7']);
  await again.dequeue(k, 1);
  t.deepEqual(await topics(again), []);
  await again.close();
});
