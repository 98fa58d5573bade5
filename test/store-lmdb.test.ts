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
