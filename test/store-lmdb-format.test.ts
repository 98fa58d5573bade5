/**
 * Store format 3 of the LMDB store: queued, retained and in-flight messages in a binary layout
 * (src/store/lmdb-records.ts). A store written in format 2 (messages in the JSON layout) is
 * upgraded when it opens and reads back the same; a record whose checksum holds but whose layout
 * does not (written by something other than the broker) stops the start with an error naming the
 * file and the record.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { StoreError } from '../src/store/errors.ts';
import { sidU16Key, sidU64Key, textKey } from '../src/store/lmdb-keys.ts';
import { BINARY_TAG, encodeMessageBinary } from '../src/store/lmdb-records.ts';
import { LmdbStore } from '../src/store/lmdb.ts';
import { decodeJson, encodeInflight, encodeJson, encodeMessage, unwrap, wrap } from '../src/store/records.ts';
import { sessionKey, type StoredInflight, type StoredMessage, type StoredSession } from '../src/store/types.ts';

function tempDir(t: ExecutionContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-store-format-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const key = { id: 'k1', key: Buffer.alloc(32, 9) };
const owner = 'user:a';

/** Payloads of many sizes: more than one copy slab's worth, and some too big to share one. */
function payload(i: number): Buffer {
  const size = i % 50 === 0 ? 5000 + i : (i * 37) % 300;
  return Buffer.from(Array.from({ length: size }, (_, k) => (i * 31 + k) & 0xff));
}

const rich: StoredMessage = {
  topic: 'ünïcode/topic',
  payload: Buffer.from('with everything'),
  qos: 2,
  retain: true,
  expiresAt: Date.now() + 3_600_000,
  origin: 'user:b\u0000pub-1',
  properties: { contentType: 'text/plain', responseTopic: 'reply/here', userProperties: { a: '1', b: ['2', '3'] }, correlationData: Buffer.from([0, 1, 2, 255]), payloadFormatIndicator: true },
};

function queue(): StoredMessage[] {
  const out: StoredMessage[] = [rich];
  for (let i = 0; i < 700; i++) out.push({ topic: `q/${i % 7}`, payload: payload(i), qos: 1, retain: false });
  // Larger than the buffer lmdb-js reads values into: read through its path for large values.
  out.push({ topic: 'q/large', payload: Buffer.alloc(300_000, 0x5a), qos: 1, retain: false });
  return out;
}

const inflight: StoredInflight[] = [
  { packetId: 7, state: 'publish', message: { topic: 'm/7', payload: Buffer.from('seven'), qos: 1, retain: false } },
  { packetId: 3, state: 'pubrel', message: rich, subscriptionIds: [4, 268435455] },
];

function session(): StoredSession {
  return { clientId: 'a', owner, protocolVersion: 5, expiryInterval: 3600, subscriptions: [], inflight, queue: queue(), awaitingRelease: [] };
}

/** The sid of the only session (the next number, minus one). */
function onlySid(store: LmdbStore): number {
  const { db } = store.internals();
  return Number(decodeJson(unwrap('meta', Buffer.from('nextSid'), db.meta.get(Buffer.from('nextSid')) as Buffer, null))['n']) - 1;
}

/** Rewrites the store's messages as format 2 wrote them (the JSON layout) and marks it format 2. */
async function downgradeToFormat2(store: LmdbStore, dir: string, expired: StoredMessage): Promise<void> {
  const { env, db, keyring } = store.internals();
  const sid = onlySid(store);
  const s = session();
  await env.transaction(() => {
    s.queue.forEach((m, i) => {
      const k = sidU64Key(sid, i);
      db.queue.putSync(k, wrap('queue', k, encodeMessage(m), keyring));
    });
    // One more, expired while the broker was down: dropped at open, after the upgrade.
    const ek = sidU64Key(sid, s.queue.length);
    db.queue.putSync(ek, wrap('queue', ek, encodeMessage(expired), keyring));
    inflight.forEach((f, order) => {
      const k = sidU16Key(sid, f.packetId);
      const body = encodeInflight(f);
      const record = Buffer.alloc(8 + body.length);
      record.writeUInt32BE(order, 4);
      body.copy(record, 8);
      db.inflight.putSync(k, wrap('inflight', k, record, keyring));
    });
    for (const m of [rich, { topic: 'plain', payload: Buffer.from('p'), qos: 0 as const, retain: true }]) {
      const k = textKey(m.topic);
      db.retained.putSync(k, wrap('retained', k, encodeMessage(m), keyring));
    }
    const fk = Buffer.from('format');
    const format = decodeJson(unwrap('meta', fk, db.meta.get(fk) as Buffer, null));
    db.meta.putSync(fk, wrap('meta', fk, encodeJson({ ...format, version: 2 }), null));
  });
  const manifest = path.join(dir, 'portcullis-store.json');
  fs.writeFileSync(manifest, JSON.stringify({ ...JSON.parse(fs.readFileSync(manifest, 'utf8')), version: 2 }));
}

for (const encrypted of [false, true]) {
  test(`a format 2 store${encrypted ? ' (encrypted)' : ''} is upgraded at open: queued, retained and in-flight messages read back the same, in the binary layout, format 3 after`, async (t) => {
    t.timeout(60_000);
    const dir = path.join(tempDir(t), 'store');
    const options = { path: dir, ...(encrypted ? { keys: [key] } : {}) };
    const store = new LmdbStore(options);
    await store.open();
    await store.saveSession(session());
    const expired: StoredMessage = { topic: 'old', payload: Buffer.from('gone'), qos: 1, retain: false, expiresAt: Date.now() - 1000 };
    await downgradeToFormat2(store, dir, expired);
    await store.close();

    const again = new LmdbStore(options);
    const report = await again.open();
    t.true(
      report.warnings.some((w) => /upgraded from format 2 to format 3 \(2 in-flight records and 705 queued and retained messages rewritten\)/.test(w)),
      report.warnings.join('; '),
    );
    t.is(report.purged.expiredMessages, 1, 'the expired queued message is dropped at open');
    const want = session();
    const [loaded] = await again.loadSessions();
    t.deepEqual(loaded?.queue, want.queue, 'the open scan (values read in place) returns every payload intact');
    t.deepEqual(loaded?.inflight, inflight);
    t.deepEqual((await again.getSession(sessionKey(owner, 'a')))?.queue, want.queue);
    const retained = await again.loadRetained();
    t.deepEqual(
      retained.find((m) => m.topic === rich.topic),
      rich,
    );
    // Every message record is now in the binary layout.
    const { db, keyring } = again.internals();
    for (const table of ['queue', 'retained'] as const) {
      for (const { key: k, value } of db[table].getRange({})) t.is(unwrap(table, Buffer.from(k), value, keyring)[0], BINARY_TAG, `${table} record in the binary layout`);
    }
    for (const { key: k, value } of db.inflight.getRange({})) t.is(unwrap('inflight', Buffer.from(k), value, keyring)[8], BINARY_TAG);
    // Writes after the upgrade keep the order: a new in-flight entry goes last.
    await again.putInflight(sessionKey(owner, 'a'), { packetId: 1, state: 'publish', message: rich });
    await again.close();
    t.is(JSON.parse(fs.readFileSync(path.join(dir, 'portcullis-store.json'), 'utf8')).version, 3);

    const third = new LmdbStore(options);
    const r3 = await third.open();
    t.false(r3.warnings.some((w) => /upgraded/.test(w)), r3.warnings.join('; '));
    const [s3] = await third.loadSessions();
    t.deepEqual(s3?.inflight.map((f) => f.packetId), [7, 3, 1]);
    t.deepEqual(s3?.queue, want.queue);
    await third.close();
  });
}

/** A record in the binary layout with a valid checksum but a damaged layout, as something other than the broker could write it. */
const damaged: { table: 'queue' | 'retained' | 'inflight'; what: RegExp; body: (sid: number) => { key: Buffer; body: Buffer } }[] = [
  {
    table: 'queue',
    what: /queue session #\d+ #0: topic overruns the value/,
    body: (sid) => {
      const b = encodeMessageBinary({ topic: 'q/x', payload: Buffer.alloc(0), qos: 1, retain: false });
      b.writeUInt16BE(999, 2);
      return { key: sidU64Key(sid, 0), body: b };
    },
  },
  {
    table: 'retained',
    what: /retained "r\/x": bad message flags/,
    body: () => {
      const b = encodeMessageBinary({ topic: 'r/x', payload: Buffer.from('x'), qos: 1, retain: true });
      b[1] = (b[1] as number) | 0x03; // QoS 3
      return { key: textKey('r/x'), body: b };
    },
  },
  {
    table: 'inflight',
    what: /inflight session #\d+ packet id 5: subscription ids overrun the value/,
    body: (sid) => {
      const m = encodeMessageBinary({ topic: 'i/x', payload: Buffer.from('x'), qos: 1, retain: false });
      const b = Buffer.alloc(14 + m.length);
      b[8] = BINARY_TAG;
      b.writeUInt16BE(5, 9);
      b.writeUInt16BE(5000, 12); // far more subscription ids than the record holds
      m.copy(b, 14);
      return { key: sidU16Key(sid, 5), body: b };
    },
  },
];

for (const d of damaged) {
  test(`a ${d.table} record in the binary layout that passes its checksum but is malformed stops the start with ERR_STORE_CORRUPT naming the file and the record`, async (t) => {
    const dir = path.join(tempDir(t), 'store');
    const store = new LmdbStore({ path: dir });
    await store.open();
    await store.saveSession({ clientId: 'a', owner, protocolVersion: 5, expiryInterval: 3600, subscriptions: [], inflight: [], queue: [], awaitingRelease: [] });
    const sid = onlySid(store);
    const { env, db } = store.internals();
    const { key: k, body } = d.body(sid);
    await env.transaction(() => db[d.table].putSync(k, wrap(d.table, k, body, null)));
    await store.close();

    const err = await t.throwsAsync(new LmdbStore({ path: dir }).open());
    t.true(err instanceof StoreError);
    t.is((err as StoreError).code, 'ERR_STORE_CORRUPT');
    t.true(err?.message.includes(path.join(dir, 'data.mdb')), err?.message);
    t.regex(err?.message ?? '', d.what);
  });
}

test('the binary layout keeps what the JSON layout kept (round trip of every field), and a session written whole reads back the same', async (t) => {
  const dir = path.join(tempDir(t), 'store');
  const store = new LmdbStore({ path: dir });
  await store.open();
  await store.saveSession({ ...session(), will: { message: rich, delayInterval: 5 } });
  await store.putRetained(rich);
  await store.close();
  const again = new LmdbStore({ path: dir });
  await again.open();
  const [s] = await again.loadSessions();
  t.deepEqual(s?.queue[0], rich);
  t.deepEqual(s?.inflight, inflight);
  t.deepEqual(s?.will?.message, rich);
  t.deepEqual(await again.loadRetained(), [rich]);
  await again.close();
});

test("a queued message's subscription identifiers round-trip in both layouts; an identifier out of range is a corrupt record", async (t) => {
  const { decodeStoredMessage } = await import('../src/store/lmdb-records.ts');
  const { decodeMessage, RecordError } = await import('../src/store/records.ts');
  const m: StoredMessage = { topic: 'cmd/x', payload: Buffer.from('p'), qos: 1, retain: false, subscriptionIds: [1, 7, 268_435_455], properties: { correlationData: Buffer.from('c') } };
  for (const decoded of [decodeStoredMessage(encodeMessageBinary(m)), decodeMessage(encodeMessage(m))]) {
    t.deepEqual(decoded.subscriptionIds, [1, 7, 268_435_455]);
    t.is(decoded.payload.toString(), 'p');
    t.is(decoded.properties?.correlationData?.toString(), 'c');
  }
  t.is(decodeStoredMessage(encodeMessageBinary({ ...m, subscriptionIds: [] })).subscriptionIds, undefined, 'an empty list is not written');
  const bad = encodeMessageBinary({ ...m, subscriptionIds: [5] });
  // The id's u32 sits just before the one-byte payload.
  bad.writeUInt32BE(0, bad.length - 5);
  t.throws(() => decodeStoredMessage(bad), { instanceOf: RecordError, message: /subscription id out of range/ });
  bad.writeUInt32BE(268_435_456, bad.length - 5);
  t.throws(() => decodeStoredMessage(bad), { instanceOf: RecordError, message: /subscription id out of range/ });
  t.throws(() => decodeMessage(encodeMessage({ ...m, subscriptionIds: [0] })), { instanceOf: RecordError });
});
