/**
 * The conformance suite every Store implementation must pass, in the style of
 * aedes-persistence's abstract.js. A test file calls it with a name and a factory:
 *
 *   storeConformance('memory', async () => new MemoryStore());
 *
 * Each test gets its own store from `makeStore()`; the store must start empty and must not share
 * state with any other store the factory returns (ava runs the tests of a file concurrently).
 * The suite opens the store before a test and closes it afterwards.
 *
 * What is and is not pinned down:
 * - loadSessions and loadRetained may return their items in any order; subscriptions and
 *   awaiting-release ids within a session may come back in any order too.
 * - The queue keeps FIFO order, and in-flight messages keep the order they were first put in
 *   (the broker resends them in that order on reconnect, MQTT-4.6.0-1); replacing one by
 *   packet id keeps its position.
 * - An optional field may come back absent or explicitly undefined.
 * - Buffers must come back as real Buffers (not Uint8Array, string or base64) with equal bytes.
 */
import test, { type ExecutionContext } from 'ava';
import { sessionKey, type Store, type StoredInflight, type StoredMessage, type StoredSession, type StoredSubscription } from '../src/store/types.ts';

const NEVER_EXPIRES = 0xffffffff;

// ── fixtures ────────────────────────────────────────────────────────────────

/** Bytes that are not valid UTF-8, so a store that goes through strings cannot get them right. */
function bytes(...values: number[]): Buffer {
  return Buffer.from(values);
}

function message(overrides: Partial<StoredMessage> = {}): StoredMessage {
  return { topic: 'a/b', payload: bytes(0x00, 0xff, 0x80, 0x7f, 0xc3), qos: 1, retain: false, ...overrides };
}

function messageWithProperties(overrides: Partial<StoredMessage> = {}): StoredMessage {
  return message({
    properties: {
      payloadFormatIndicator: false,
      messageExpiryInterval: 60,
      contentType: 'application/octet-stream',
      responseTopic: 'reply/to',
      correlationData: bytes(0xde, 0xad, 0x00, 0xbe, 0xef, 0xff),
      userProperties: { single: 'one', multi: ['x', 'y', 'x'] },
    },
    expiresAt: 1_900_000_000_000,
    origin: 'publisher-1',
    ...overrides,
  });
}

function subscription(filter: string, overrides: Partial<StoredSubscription> = {}): StoredSubscription {
  return { filter, qos: 1, noLocal: false, retainAsPublished: false, retainHandling: 0, ...overrides };
}

function inflight(packetId: number, overrides: Partial<StoredInflight> = {}): StoredInflight {
  return { packetId, state: 'publish', message: message({ topic: `inflight/${packetId}` }), ...overrides };
}

/** The key of the session a test made with {@link session}: owner `user:<client id>` unless given. */
function key(clientId: string, owner = `user:${clientId}`): string {
  return sessionKey(owner, clientId);
}

/** A session with nothing in it. */
function session(clientId: string, overrides: Partial<StoredSession> = {}): StoredSession {
  return {
    clientId,
    owner: `user:${clientId}`,
    protocolVersion: 5,
    expiryInterval: 300,
    subscriptions: [],
    inflight: [],
    queue: [],
    awaitingRelease: [],
    ...overrides,
  };
}

/** A session with something in every collection. */
function fullSession(clientId: string, overrides: Partial<StoredSession> = {}): StoredSession {
  return session(clientId, {
    protocolVersion: 4,
    expiryInterval: 3600,
    expiresAt: 1_800_000_000_000,
    subscriptions: [
      subscription('sensors/+/temp', { qos: 2, noLocal: true, retainAsPublished: true, retainHandling: 2, subscriptionId: 268_435_455 }),
      subscription('#', { qos: 0 }),
    ],
    inflight: [
      inflight(7, { message: messageWithProperties({ topic: 'in/7', qos: 2 }), subscriptionIds: [1, 268_435_455] }),
      inflight(65_535, { state: 'pubrel', message: message({ topic: 'in/65535', qos: 2 }) }),
    ],
    queue: [message({ topic: 'q/1' }), messageWithProperties({ topic: 'q/2', qos: 2, retain: true }), message({ topic: 'q/3', payload: Buffer.alloc(0), qos: 0 })],
    awaitingRelease: [3, 1, 65_535],
    ...overrides,
  });
}

// ── comparison helpers ──────────────────────────────────────────────────────

/** Drops properties whose value is undefined, recursing into arrays and plain objects only. */
function stripUndefined<T>(value: T): T {
  if (Array.isArray(value)) return value.map(stripUndefined) as T;
  if (value !== null && typeof value === 'object' && !ArrayBuffer.isView(value)) {
    const proto: unknown = Object.getPrototypeOf(value);
    if (proto !== Object.prototype && proto !== null) return value;
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) if (v !== undefined) out[k] = stripUndefined(v);
    return out as T;
  }
  return value;
}

/** A session in the form the suite compares: subscriptions by filter and awaiting-release ids sorted. */
function canonical(s: StoredSession): StoredSession {
  const c = stripUndefined(s);
  return {
    ...c,
    subscriptions: [...c.subscriptions].sort((a, b) => (a.filter < b.filter ? -1 : a.filter > b.filter ? 1 : 0)),
    awaitingRelease: [...c.awaitingRelease].sort((a, b) => a - b),
  };
}

function byTopic(messages: StoredMessage[]): StoredMessage[] {
  return stripUndefined([...messages].sort((a, b) => (a.topic < b.topic ? -1 : a.topic > b.topic ? 1 : 0)));
}

async function mustGet(t: ExecutionContext, store: Store, clientId: string, owner = `user:${clientId}`): Promise<StoredSession> {
  const s = await store.getSession(sessionKey(owner, clientId));
  if (s === undefined) t.fail(`session ${clientId} is missing`);
  return s as StoredSession;
}

function assertSameSession(t: ExecutionContext, actual: StoredSession | undefined, expected: StoredSession, message?: string): void {
  t.not(actual, undefined, message);
  if (actual !== undefined) t.deepEqual(canonical(actual), canonical(expected), message);
}

function assertBuffer(t: ExecutionContext, actual: unknown, expected: Buffer, what: string): void {
  t.true(Buffer.isBuffer(actual), `${what} is a Buffer`);
  if (Buffer.isBuffer(actual)) t.true(actual.equals(expected), `${what} has the same bytes`);
}

// ── the suite ───────────────────────────────────────────────────────────────

export function storeConformance(name: string, makeStore: () => Promise<Store>): void {
  /** Registers a test that runs `body` against a fresh, opened store and closes it afterwards. */
  function check(behaviour: string, body: (t: ExecutionContext, store: Store) => Promise<void>): void {
    test(`${name}: ${behaviour}`, async (t) => {
      const store = await makeStore();
      await store.open();
      try {
        await body(t, store);
      } finally {
        await store.close();
      }
    });
  }

  // ── open / close ──

  test(`${name}: a new store opens empty and closes`, async (t) => {
    const store = await makeStore();
    await t.notThrowsAsync(store.open());
    t.deepEqual(await store.loadSessions(), []);
    t.deepEqual(await store.loadRetained(), []);
    t.is(await store.getSession(key('nobody')), undefined);
    await t.notThrowsAsync(store.close());
  });

  test(`${name}: state survives close and reopen of the same instance`, async (t) => {
    const store = await makeStore();
    await store.open();
    const s = fullSession('c1');
    const r = messageWithProperties({ topic: 'retained/1', retain: true });
    try {
      await store.saveSession(s);
      await store.putRetained(r);
    } finally {
      await store.close();
    }
    await store.open();
    try {
      assertSameSession(t, await store.getSession(key('c1')), s);
      t.deepEqual(byTopic(await store.loadRetained()), byTopic([r]));
    } finally {
      await store.close();
    }
  });

  // ── sessions ──

  check('getSession returns undefined for an unknown client', async (t, store) => {
    t.is(await store.getSession(key('unknown')), undefined);
  });

  check('an empty session round-trips through saveSession/getSession', async (t, store) => {
    const s = session('c1');
    await store.saveSession(s);
    assertSameSession(t, await store.getSession(key('c1')), s);
  });

  check('a full session round-trips through saveSession/getSession', async (t, store) => {
    const s = fullSession('c1');
    await store.saveSession(s);
    const got = await mustGet(t, store, 'c1');
    assertSameSession(t, got, s);
    t.deepEqual(
      got.inflight.map((f) => f.packetId),
      [7, 65_535],
      'in-flight order is kept',
    );
    t.deepEqual(
      got.queue.map((m) => m.topic),
      ['q/1', 'q/2', 'q/3'],
      'queue order is kept',
    );
  });

  check('header fields round-trip at their extremes', async (t, store) => {
    const forever = session('forever', { protocolVersion: 3, expiryInterval: NEVER_EXPIRES });
    const zero = session('zero', { protocolVersion: 4, expiryInterval: 0 });
    const odd = session('ünïcødé/+#\u0000id', { owner: 'cert:CN=x,O=y', expiresAt: 1 });
    for (const s of [forever, zero, odd]) await store.saveSession(s);
    assertSameSession(t, await store.getSession(key('forever')), forever);
    assertSameSession(t, await store.getSession(key('zero')), zero);
    assertSameSession(t, await store.getSession(key(odd.clientId, odd.owner)), odd);
    t.is((await mustGet(t, store, 'forever')).expiresAt, undefined);
  });

  check('loadSessions returns every saved session', async (t, store) => {
    const a = fullSession('a');
    const b = session('b');
    const c = session('c', { expiresAt: 1_700_000_000_000 });
    await store.saveSession(b);
    await store.saveSession(a);
    await store.saveSession(c);
    const loaded = await store.loadSessions();
    t.is(loaded.length, 3);
    const sorted = [...loaded].sort((x, y) => (x.clientId < y.clientId ? -1 : 1));
    t.deepEqual(sorted.map(canonical), [a, b, c].map(canonical));
  });

  check('deleteSession removes the session and everything in it', async (t, store) => {
    await store.saveSession(fullSession('gone'));
    await store.saveSession(session('kept'));
    await store.deleteSession(key('gone'));
    t.is(await store.getSession(key('gone')), undefined);
    t.deepEqual(
      (await store.loadSessions()).map((s) => s.clientId),
      ['kept'],
    );
    // A new session under the same key starts empty: nothing of the deleted one comes back.
    const fresh = session('gone', { protocolVersion: 4 });
    await store.saveSession(fresh);
    assertSameSession(t, await store.getSession(key('gone')), fresh);
  });

  check('saveSession replaces an older session wholesale', async (t, store) => {
    await store.saveSession(fullSession('c1'));
    const replacement = session('c1', {
      protocolVersion: 5,
      expiryInterval: 10,
      subscriptions: [subscription('only/this', { qos: 2 })],
      queue: [message({ topic: 'only/queued' })],
    });
    await store.saveSession(replacement);
    const got = await mustGet(t, store, 'c1');
    assertSameSession(t, got, replacement);
    t.is(got.expiresAt, undefined, 'expiresAt of the older session is not kept');
    t.deepEqual(got.inflight, [], 'in-flight messages of the older session are not kept');
    t.deepEqual(got.awaitingRelease, [], 'awaiting-release ids of the older session are not kept');
    t.is((await store.loadSessions()).length, 1);
  });

  check('setSessionExpiry marks a session disconnected and connected again', async (t, store) => {
    const s = fullSession('c1', { expiresAt: undefined, expiryInterval: 60 });
    delete s.expiresAt;
    await store.saveSession(s);

    await store.setSessionExpiry(key('c1'), 1_750_000_000_000, 120);
    let got = await mustGet(t, store, 'c1');
    t.is(got.expiresAt, 1_750_000_000_000);
    t.is(got.expiryInterval, 120);
    assertSameSession(t, got, { ...s, expiresAt: 1_750_000_000_000, expiryInterval: 120 }, 'nothing else changes when disconnecting');

    await store.setSessionExpiry(key('c1'), undefined, 240);
    got = await mustGet(t, store, 'c1');
    t.is(got.expiresAt, undefined);
    t.is(got.expiryInterval, 240);
    assertSameSession(t, got, { ...s, expiryInterval: 240 }, 'nothing else changes when connecting');

    // A session that never expires is disconnected with expiresAt undefined.
    await store.setSessionExpiry(key('c1'), undefined, NEVER_EXPIRES);
    got = await mustGet(t, store, 'c1');
    t.is(got.expiresAt, undefined);
    t.is(got.expiryInterval, NEVER_EXPIRES);
  });

  check('setSessionExpiry is visible through loadSessions', async (t, store) => {
    await store.saveSession(session('c1'));
    await store.saveSession(session('c2'));
    await store.setSessionExpiry(key('c1'), 1_234, 5);
    const byId = new Map((await store.loadSessions()).map((s) => [s.clientId, s]));
    t.is(byId.get('c1')?.expiresAt, 1_234);
    t.is(byId.get('c1')?.expiryInterval, 5);
    t.is(byId.get('c2')?.expiresAt, undefined);
    t.is(byId.get('c2')?.expiryInterval, 300);
  });

  // ── subscriptions ──

  check('putSubscription adds, replaces by filter, and deleteSubscription removes', async (t, store) => {
    await store.saveSession(session('c1'));
    const a = subscription('a/+', { qos: 0 });
    const b = subscription('b/#', { qos: 1, subscriptionId: 42 });
    await store.putSubscription(key('c1'), a);
    await store.putSubscription(key('c1'), b);
    assertSameSession(t, await store.getSession(key('c1')), session('c1', { subscriptions: [a, b] }));

    // Same filter: replaced wholesale, including dropping an optional field.
    const b2 = subscription('b/#', { qos: 2, noLocal: true, retainAsPublished: true, retainHandling: 1 });
    await store.putSubscription(key('c1'), b2);
    let got = await mustGet(t, store, 'c1');
    t.is(got.subscriptions.length, 2);
    assertSameSession(t, got, session('c1', { subscriptions: [a, b2] }));
    t.is(got.subscriptions.find((s) => s.filter === 'b/#')?.subscriptionId, undefined);

    await store.deleteSubscription(key('c1'), 'a/+');
    assertSameSession(t, await store.getSession(key('c1')), session('c1', { subscriptions: [b2] }));

    await t.notThrowsAsync(store.deleteSubscription(key('c1'), 'not/subscribed'));
    await store.deleteSubscription(key('c1'), 'b/#');
    got = await mustGet(t, store, 'c1');
    t.deepEqual(got.subscriptions, []);
  });

  check('filters that differ only in wildcards or case are different subscriptions', async (t, store) => {
    await store.saveSession(session('c1'));
    const subs = ['a/b', 'a/+', 'a/#', 'A/b', '$share/g/a/b', 'a/b/'].map((f) => subscription(f));
    for (const s of subs) await store.putSubscription(key('c1'), s);
    assertSameSession(t, await store.getSession(key('c1')), session('c1', { subscriptions: subs }));
    await store.deleteSubscription(key('c1'), 'a/+');
    const got = await mustGet(t, store, 'c1');
    t.deepEqual(got.subscriptions.map((s) => s.filter).sort(), ['$share/g/a/b', 'A/b', 'a/#', 'a/b', 'a/b/'].sort());
  });

  check('subscriptions belong to one session only', async (t, store) => {
    await store.saveSession(session('c1'));
    await store.saveSession(session('c2'));
    await store.putSubscription(key('c1'), subscription('x'));
    await store.putSubscription(key('c2'), subscription('x', { qos: 2 }));
    await store.deleteSubscription(key('c1'), 'x');
    t.deepEqual((await mustGet(t, store, 'c1')).subscriptions, []);
    t.deepEqual(stripUndefined((await mustGet(t, store, 'c2')).subscriptions), [subscription('x', { qos: 2 })]);
  });

  // ── in-flight ──

  check('putInflight adds, replaces by packetId keeping order, and deleteInflight removes', async (t, store) => {
    await store.saveSession(session('c1'));
    const f1 = inflight(10, { message: messageWithProperties({ topic: 't/10', qos: 2 }), subscriptionIds: [3] });
    const f2 = inflight(2);
    const f3 = inflight(65_535, { message: message({ topic: 't/max', qos: 2 }) });
    await store.putInflight(key('c1'), f1);
    await store.putInflight(key('c1'), f2);
    await store.putInflight(key('c1'), f3);
    let got = await mustGet(t, store, 'c1');
    t.deepEqual(stripUndefined(got.inflight), [f1, f2, f3]);

    // PUBREC received for 10: same packet id, new state; it keeps its place.
    const f1rel: StoredInflight = { ...f1, state: 'pubrel' };
    await store.putInflight(key('c1'), f1rel);
    got = await mustGet(t, store, 'c1');
    t.is(got.inflight.length, 3);
    t.deepEqual(stripUndefined(got.inflight), [f1rel, f2, f3]);

    await store.deleteInflight(key('c1'), 2);
    got = await mustGet(t, store, 'c1');
    t.deepEqual(stripUndefined(got.inflight), [f1rel, f3]);

    await t.notThrowsAsync(store.deleteInflight(key('c1'), 999));
    await store.deleteInflight(key('c1'), 10);
    await store.deleteInflight(key('c1'), 65_535);
    t.deepEqual((await mustGet(t, store, 'c1')).inflight, []);
  });

  check('a packet id can be reused after deleteInflight', async (t, store) => {
    await store.saveSession(session('c1'));
    await store.putInflight(key('c1'), inflight(1));
    await store.putInflight(key('c1'), inflight(2));
    await store.deleteInflight(key('c1'), 1);
    const again = inflight(1, { message: message({ topic: 'second/use' }) });
    await store.putInflight(key('c1'), again);
    const got = await mustGet(t, store, 'c1');
    t.deepEqual(
      got.inflight.map((f) => f.packetId),
      [2, 1],
      'a reused packet id goes to the end',
    );
    t.is(got.inflight.find((f) => f.packetId === 1)?.message.topic, 'second/use');
  });

  // ── queue ──

  check('enqueue appends in order and dequeue removes from the front by count', async (t, store) => {
    await store.saveSession(session('c1'));
    const msgs = [0, 1, 2, 3, 4].map((i) => message({ topic: `q/${i}`, payload: bytes(i, 0xff), qos: (i % 3) as 0 | 1 | 2 }));
    for (const m of msgs) await store.enqueue(key('c1'), m);
    const topics = async (): Promise<string[]> => (await mustGet(t, store, 'c1')).queue.map((m) => m.topic);

    t.deepEqual(stripUndefined((await mustGet(t, store, 'c1')).queue), msgs);

    await store.dequeue(key('c1'), 0);
    t.deepEqual(await topics(), ['q/0', 'q/1', 'q/2', 'q/3', 'q/4'], 'dequeue 0 removes nothing');

    await store.dequeue(key('c1'), 2);
    t.deepEqual(await topics(), ['q/2', 'q/3', 'q/4']);

    await store.enqueue(key('c1'), message({ topic: 'q/5' }));
    t.deepEqual(await topics(), ['q/2', 'q/3', 'q/4', 'q/5'], 'enqueue after dequeue appends at the end');

    await store.dequeue(key('c1'), 1);
    t.deepEqual(await topics(), ['q/3', 'q/4', 'q/5']);

    await store.dequeue(key('c1'), 10);
    t.deepEqual(await topics(), [], 'dequeue more than the queue holds empties it');

    await t.notThrowsAsync(store.dequeue(key('c1'), 1), 'dequeue on an empty queue');
    await store.enqueue(key('c1'), message({ topic: 'q/6' }));
    t.deepEqual(await topics(), ['q/6']);
  });

  check('identical messages are queued separately', async (t, store) => {
    await store.saveSession(session('c1'));
    const m = message({ topic: 'same' });
    await store.enqueue(key('c1'), m);
    await store.enqueue(key('c1'), m);
    await store.enqueue(key('c1'), m);
    t.is((await mustGet(t, store, 'c1')).queue.length, 3);
    await store.dequeue(key('c1'), 1);
    t.is((await mustGet(t, store, 'c1')).queue.length, 2);
  });

  check('queues belong to one session only', async (t, store) => {
    await store.saveSession(session('c1'));
    await store.saveSession(session('c2'));
    await store.enqueue(key('c1'), message({ topic: 'for/c1' }));
    await store.enqueue(key('c2'), message({ topic: 'for/c2/a' }));
    await store.enqueue(key('c2'), message({ topic: 'for/c2/b' }));
    await store.dequeue(key('c2'), 1);
    t.deepEqual(
      (await mustGet(t, store, 'c1')).queue.map((m) => m.topic),
      ['for/c1'],
    );
    t.deepEqual(
      (await mustGet(t, store, 'c2')).queue.map((m) => m.topic),
      ['for/c2/b'],
    );
  });

  // ── awaiting release ──

  check('putAwaitingRelease adds without duplicates and deleteAwaitingRelease removes', async (t, store) => {
    await store.saveSession(session('c1'));
    const ids = async (): Promise<number[]> => [...(await mustGet(t, store, 'c1')).awaitingRelease].sort((a, b) => a - b);

    await store.putAwaitingRelease(key('c1'), 5);
    await store.putAwaitingRelease(key('c1'), 1);
    await store.putAwaitingRelease(key('c1'), 65_535);
    await store.putAwaitingRelease(key('c1'), 5);
    await store.putAwaitingRelease(key('c1'), 1);
    t.deepEqual(await ids(), [1, 5, 65_535]);

    await store.deleteAwaitingRelease(key('c1'), 5);
    t.deepEqual(await ids(), [1, 65_535]);

    await t.notThrowsAsync(store.deleteAwaitingRelease(key('c1'), 5), 'deleting an id twice');
    await t.notThrowsAsync(store.deleteAwaitingRelease(key('c1'), 777), 'deleting an id never added');
    t.deepEqual(await ids(), [1, 65_535]);

    await store.putAwaitingRelease(key('c1'), 5);
    t.deepEqual(await ids(), [1, 5, 65_535], 'an id can be added again after deletion');
  });

  check('putAwaitingRelease does not duplicate an id saved with the session', async (t, store) => {
    await store.saveSession(session('c1', { awaitingRelease: [9] }));
    await store.putAwaitingRelease(key('c1'), 9);
    t.deepEqual((await mustGet(t, store, 'c1')).awaitingRelease, [9]);
  });

  // ── retained ──

  check('putRetained stores, replaces by topic, and loadRetained returns them all', async (t, store) => {
    const a = messageWithProperties({ topic: 'r/a', retain: true, qos: 2 });
    const b = message({ topic: 'r/b', retain: true, qos: 0 });
    await store.putRetained(a);
    await store.putRetained(b);
    t.deepEqual(byTopic(await store.loadRetained()), byTopic([a, b]));

    // Replaced wholesale: optional fields of the older message are not kept.
    const a2 = message({ topic: 'r/a', payload: bytes(1, 2, 3), retain: true, qos: 1 });
    await store.putRetained(a2);
    const loaded = byTopic(await store.loadRetained());
    t.is(loaded.length, 2);
    t.deepEqual(loaded, byTopic([a2, b]));
    t.is(loaded[0]?.properties, undefined);
    t.is(loaded[0]?.expiresAt, undefined);
    t.is(loaded[0]?.origin, undefined);
  });

  check('putRetained with an empty payload clears the topic', async (t, store) => {
    const a = message({ topic: 'r/a', retain: true });
    const b = message({ topic: 'r/b', retain: true });
    await store.putRetained(a);
    await store.putRetained(b);
    await store.putRetained(message({ topic: 'r/a', payload: Buffer.alloc(0), retain: true }));
    t.deepEqual(byTopic(await store.loadRetained()), byTopic([b]));

    await t.notThrowsAsync(store.putRetained(message({ topic: 'never/set', payload: Buffer.alloc(0), retain: true })), 'clearing a topic with nothing retained');
    t.deepEqual(byTopic(await store.loadRetained()), byTopic([b]), 'an empty payload is never stored');

    await store.putRetained(a);
    t.deepEqual(byTopic(await store.loadRetained()), byTopic([a, b]), 'a cleared topic can be set again');
  });

  check('deleteRetained removes one topic', async (t, store) => {
    const a = message({ topic: 'r/a', retain: true });
    const b = message({ topic: 'r/b', retain: true });
    const c = message({ topic: 'r/+', retain: true });
    await store.putRetained(a);
    await store.putRetained(b);
    await store.putRetained(c);
    await store.deleteRetained('r/a');
    t.deepEqual(byTopic(await store.loadRetained()), byTopic([b, c]));
    await store.deleteRetained('r/+');
    t.deepEqual(byTopic(await store.loadRetained()), byTopic([b]), 'a topic name is matched literally, never as a filter');
    await t.notThrowsAsync(store.deleteRetained('r/a'), 'deleting twice');
    await t.notThrowsAsync(store.deleteRetained('nothing/here'));
    await store.deleteRetained('r/b');
    t.deepEqual(await store.loadRetained(), []);
  });

  check('retained messages and sessions are independent', async (t, store) => {
    const s = fullSession('r/a');
    await store.saveSession(s);
    await store.putRetained(message({ topic: 'r/a', retain: true }));
    await store.deleteRetained('r/a');
    assertSameSession(t, await store.getSession(key('r/a')), s);
    await store.putRetained(message({ topic: 'r/a', retain: true }));
    await store.deleteSession(key('r/a'));
    t.is((await store.loadRetained()).length, 1);
  });

  // ── Buffers ──

  check('Buffers in sessions come back as real Buffers with equal bytes', async (t, store) => {
    const s = fullSession('c1');
    await store.saveSession(s);
    await store.enqueue(key('c1'), messageWithProperties({ topic: 'q/later', payload: bytes(0xff, 0xfe, 0x00) }));
    await store.putInflight(key('c1'), inflight(300, { message: messageWithProperties({ topic: 'in/300', payload: bytes(0x80) }) }));

    for (const got of [await mustGet(t, store, 'c1'), (await store.loadSessions())[0]]) {
      if (got === undefined) {
        t.fail('session missing');
        continue;
      }
      const queued = [...s.queue, messageWithProperties({ topic: 'q/later', payload: bytes(0xff, 0xfe, 0x00) })];
      t.is(got.queue.length, queued.length);
      got.queue.forEach((m, i) => {
        const want = queued[i] as StoredMessage;
        assertBuffer(t, m.payload, want.payload, `queue[${i}].payload`);
        if (want.properties?.correlationData !== undefined) {
          assertBuffer(t, m.properties?.correlationData, want.properties.correlationData, `queue[${i}].properties.correlationData`);
        }
      });
      const inflights = [...s.inflight, inflight(300, { message: messageWithProperties({ topic: 'in/300', payload: bytes(0x80) }) })];
      t.is(got.inflight.length, inflights.length);
      got.inflight.forEach((f, i) => {
        const want = (inflights[i] as StoredInflight).message;
        assertBuffer(t, f.message.payload, want.payload, `inflight[${i}].message.payload`);
        if (want.properties?.correlationData !== undefined) {
          assertBuffer(t, f.message.properties?.correlationData, want.properties.correlationData, `inflight[${i}].message.properties.correlationData`);
        }
      });
    }
  });

  check('a zero-length queued payload comes back as an empty Buffer', async (t, store) => {
    await store.saveSession(session('c1'));
    await store.enqueue(key('c1'), message({ topic: 'empty', payload: Buffer.alloc(0), qos: 0 }));
    const [m] = (await mustGet(t, store, 'c1')).queue;
    assertBuffer(t, m?.payload, Buffer.alloc(0), 'queue[0].payload');
  });

  check('Buffers in retained messages come back as real Buffers with equal bytes', async (t, store) => {
    const payload = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const r = messageWithProperties({ topic: 'r/bytes', payload, retain: true });
    await store.putRetained(r);
    const [got] = await store.loadRetained();
    assertBuffer(t, got?.payload, payload, 'retained payload');
    assertBuffer(t, got?.properties?.correlationData, r.properties?.correlationData as Buffer, 'retained correlationData');
  });

  check('a Buffer that is a view into a larger buffer is stored by its own bytes only', async (t, store) => {
    const big = Buffer.from('0123456789abcdef');
    const view = big.subarray(4, 8);
    await store.putRetained(message({ topic: 'view', payload: view, retain: true }));
    const [got] = await store.loadRetained();
    assertBuffer(t, got?.payload, Buffer.from('4567'), 'retained payload');
  });

  // ── copies ──

  check('mutating a returned session does not change the store', async (t, store) => {
    await store.saveSession(fullSession('c1'));
    const before = await mustGet(t, store, 'c1');

    const got = await mustGet(t, store, 'c1');
    got.owner = 'mallory';
    got.expiryInterval = 1;
    got.expiresAt = 2;
    got.subscriptions.push(subscription('injected'));
    (got.subscriptions[0] as StoredSubscription).qos = 0;
    got.inflight.pop();
    (got.inflight[0] as StoredInflight).state = 'pubrel';
    (got.inflight[0] as StoredInflight).message.topic = 'changed';
    (got.inflight[0] as StoredInflight).subscriptionIds?.push(99);
    got.queue.shift();
    (got.queue[0] as StoredMessage).payload[0] = 0x42;
    (got.queue[0] as StoredMessage).properties?.correlationData?.fill(0);
    const up = (got.queue[0] as StoredMessage).properties?.userProperties;
    if (up !== undefined) up['single'] = 'changed';
    got.awaitingRelease.push(12_345);

    const fromLoad = (await store.loadSessions())[0];
    if (fromLoad !== undefined) {
      fromLoad.subscriptions.length = 0;
      fromLoad.queue.length = 0;
      fromLoad.owner = 'eve';
    }

    assertSameSession(t, await store.getSession(key('c1')), before);
    // Compared with a freshly built fixture too, in case the store handed out the very object it was given.
    assertSameSession(t, await store.getSession(key('c1')), fullSession('c1'));
  });

  check('mutating an object after passing it in does not change the store', async (t, store) => {
    const s = fullSession('c1');
    const pristine = fullSession('c1');
    await store.saveSession(s);
    s.owner = 'mallory';
    s.subscriptions.length = 0;
    (s.queue[0] as StoredMessage).payload.fill(0);
    (s.inflight[0] as StoredInflight).message.properties?.correlationData?.fill(0);
    s.awaitingRelease.push(4);
    assertSameSession(t, await store.getSession(key('c1')), pristine, 'saveSession');

    const sub = subscription('later', { qos: 1 });
    await store.putSubscription(key('c1'), sub);
    sub.qos = 2;
    const f = inflight(500);
    await store.putInflight(key('c1'), f);
    f.state = 'pubrel';
    f.message.payload.fill(0);
    const q = message({ topic: 'queued/later' });
    await store.enqueue(key('c1'), q);
    q.topic = 'changed';
    q.payload.fill(0);

    const got = await mustGet(t, store, 'c1');
    t.is(got.subscriptions.find((x) => x.filter === 'later')?.qos, 1, 'putSubscription');
    const gotF = got.inflight.find((x) => x.packetId === 500);
    t.is(gotF?.state, 'publish', 'putInflight');
    assertBuffer(t, gotF?.message.payload, message().payload, 'putInflight payload');
    const last = got.queue[got.queue.length - 1];
    t.is(last?.topic, 'queued/later', 'enqueue');
    assertBuffer(t, last?.payload, message().payload, 'enqueue payload');

    const r = messageWithProperties({ topic: 'r', retain: true });
    await store.putRetained(r);
    r.topic = 'changed';
    r.payload.fill(0);
    r.properties?.correlationData?.fill(0);
    t.deepEqual(byTopic(await store.loadRetained()), byTopic([messageWithProperties({ topic: 'r', retain: true })]), 'putRetained');
  });

  check('mutating returned retained messages does not change the store', async (t, store) => {
    const r = messageWithProperties({ topic: 'r', retain: true });
    await store.putRetained(r);
    const loaded = await store.loadRetained();
    const m = loaded[0] as StoredMessage;
    m.topic = 'changed';
    m.payload.fill(0);
    m.properties?.correlationData?.fill(0);
    if (m.properties?.userProperties !== undefined) m.properties.userProperties['single'] = 'changed';
    loaded.length = 0;
    t.deepEqual(byTopic(await store.loadRetained()), byTopic([messageWithProperties({ topic: 'r', retain: true })]));
  });

  // ── sessions belong to identities ──

  check('the same client id under two owners is two sessions: writes to one never reach the other', async (t, store) => {
    const mine = session('device-1', { owner: 'cert:' });
    const squatter = session('device-1', { owner: 'user:alice' });
    await store.saveSession(mine);
    await store.saveSession(squatter);
    await store.putSubscription(key('device-1', 'user:alice'), subscription('alice/#'));
    await store.enqueue(key('device-1', 'user:alice'), message({ topic: 'for/alice' }));
    await store.putInflight(key('device-1', 'user:alice'), inflight(7));
    await store.putAwaitingRelease(key('device-1', 'user:alice'), 9);
    assertSameSession(t, await store.getSession(key('device-1', 'cert:')), mine, "the device's session is untouched");
    t.is((await store.loadSessions()).length, 2);
    await store.deleteSession(key('device-1', 'user:alice'));
    assertSameSession(t, await store.getSession(key('device-1', 'cert:')), mine, 'deleting one leaves the other');
    t.is(await store.getSession(key('device-1', 'user:alice')), undefined);
  });

  // ── unknown client ids ──

  check('operations on an unknown client id do not throw and create nothing', async (t, store) => {
    await store.saveSession(session('known'));
    const id = key('unknown');
    await t.notThrowsAsync(store.deleteSession(id), 'deleteSession');
    await t.notThrowsAsync(store.setSessionExpiry(id, 1_000, 10), 'setSessionExpiry (disconnect)');
    await t.notThrowsAsync(store.setSessionExpiry(id, undefined, 10), 'setSessionExpiry (connect)');
    await t.notThrowsAsync(store.putSubscription(id, subscription('a')), 'putSubscription');
    await t.notThrowsAsync(store.deleteSubscription(id, 'a'), 'deleteSubscription');
    await t.notThrowsAsync(store.putInflight(id, inflight(1)), 'putInflight');
    await t.notThrowsAsync(store.deleteInflight(id, 1), 'deleteInflight');
    await t.notThrowsAsync(store.enqueue(id, message()), 'enqueue');
    await t.notThrowsAsync(store.dequeue(id, 1), 'dequeue');
    await t.notThrowsAsync(store.putAwaitingRelease(id, 1), 'putAwaitingRelease');
    await t.notThrowsAsync(store.deleteAwaitingRelease(id, 1), 'deleteAwaitingRelease');
    t.is(await store.getSession(id), undefined, 'no session appears for the unknown id');
    t.deepEqual(
      (await store.loadSessions()).map((s) => s.clientId),
      ['known'],
    );
    assertSameSession(t, await store.getSession(key('known')), session('known'), 'other sessions are untouched');
  });

  check('writes for a deleted session are ignored and do not resurface', async (t, store) => {
    await store.saveSession(session('c1'));
    await store.deleteSession(key('c1'));
    await store.putSubscription(key('c1'), subscription('stale'));
    await store.putInflight(key('c1'), inflight(1));
    await store.enqueue(key('c1'), message({ topic: 'stale' }));
    await store.putAwaitingRelease(key('c1'), 1);
    await store.setSessionExpiry(key('c1'), 5, 5);
    t.is(await store.getSession(key('c1')), undefined);
    const fresh = session('c1');
    await store.saveSession(fresh);
    assertSameSession(t, await store.getSession(key('c1')), fresh);
  });
}
