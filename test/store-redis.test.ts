/**
 * The Redis store against the shared Store conformance suite, on a real redis-server (append-only,
 * fsync always): plain, encrypted, and under a custom key prefix. Each store has its own prefix on
 * one server, so the suite's concurrent tests never share keys.
 */
import test from 'ava';
import { RedisStore } from '../src/store/redis.ts';
import { storeConformance } from './store-conformance.ts';
import { startRedis, type RedisServer } from './redis-server.ts';
import { freshPrefix, redisStore } from './store-redis-support.ts';

let server: RedisServer | undefined;
const ready = startRedis().then((s) => (server = s));
test.after.always(async () => {
  await server?.dispose();
});
const key = { id: 'k1', key: Buffer.alloc(32, 7) };

const make = async (options: Record<string, unknown> = {}, keys?: typeof key[]): Promise<RedisStore> => redisStore(await ready, options, keys !== undefined ? { keys } : {});

storeConformance('redis', () => make());
storeConformance('redis (encrypted)', () => make({}, [key]));
storeConformance('redis (prefix)', () => make({ prefix: freshPrefix('tenant-a.portcullis:') }));

// ── layout ──────────────────────────────────────────────────────────────────

import { sessionKey, type StoredSession } from '../src/store/types.ts';
import { keysUnder, monitor } from './store-redis-support.ts';

const session = (id: string, owner = `user:${id}`): StoredSession => ({
  clientId: id,
  owner,
  protocolVersion: 5,
  expiryInterval: 3600,
  subscriptions: [{ filter: 'x/#', qos: 1, noLocal: false, retainAsPublished: false, retainHandling: 0 }],
  inflight: [{ packetId: 1, state: 'publish', message: { topic: 'x/1', payload: Buffer.from('p'), qos: 1, retain: false } }],
  queue: [{ topic: 'x/2', payload: Buffer.from('q'), qos: 1, retain: false }],
  awaitingRelease: [7],
  will: { message: { topic: 'x/will', payload: Buffer.from('w'), qos: 1, retain: false }, delayInterval: 5 },
});

test('every key is under the prefix; key names never hold a client id or owner; one session\'s keys share one Cluster hash tag', async (t) => {
  const server = await ready;
  const prefix = freshPrefix('layout.');
  const store = redisStore(server, { prefix });
  await store.open();
  t.teardown(() => store.close());
  await store.saveSession(session('device-7f3a', 'cert:CN=secret-owner'));
  await store.putRetained({ topic: 'r/1', payload: Buffer.from('x'), qos: 1, retain: true, expiresAt: Date.now() + 60_000 });
  const keys = await keysUnder(server, prefix);
  const all = await keysUnder(server, '');
  t.deepEqual(
    all.filter((k) => k.includes('device-7f3a') || k.includes('secret-owner')),
    [],
    'no key anywhere names the client or its owner',
  );
  const sessionKeys = keys.filter((k) => /\{[0-9a-f]{64}\}/.test(k));
  t.is(sessionKeys.length, 2, `a session is a hash and a queue: ${sessionKeys.join(', ')}`);
  t.is(new Set(sessionKeys.map((k) => /\{([0-9a-f]{64})\}/.exec(k)?.[1])).size, 1, 'both carry the same {digest} hash tag');
  for (const k of keys) t.true(k.startsWith(prefix), k);
});

test('stores under two prefixes on one Redis never see each other', async (t) => {
  const server = await ready;
  const a = redisStore(server, { prefix: freshPrefix('tenant-a:') });
  const b = redisStore(server, { prefix: freshPrefix('tenant-b:') });
  await a.open();
  await b.open();
  t.teardown(async () => {
    await a.close();
    await b.close();
  });
  await a.saveSession(session('same-id'));
  await a.putRetained({ topic: 'r', payload: Buffer.from('a'), qos: 0, retain: true });
  t.is(await b.getSession(sessionKey('user:same-id', 'same-id')), undefined);
  t.deepEqual(await b.loadRetained(), []);
  t.deepEqual(await b.loadSessions(), []);
});

test.serial('getSession reads a session whole with one command', async (t) => {
  const server = await ready;
  const store = redisStore(server);
  await store.open();
  t.teardown(() => store.close());
  await store.saveSession(session('one'));
  const m = await monitor(server);
  t.teardown(() => m.stop());
  const got = await store.getSession(sessionKey('user:one', 'one'));
  t.is(got?.queue.length, 1);
  t.deepEqual(await m.settled(), ['evalsha']);
});

test.serial('loading 1500 sessions: paged ZSCAN and one command per session, never KEYS', async (t) => {
  const server = await ready;
  const prefix = freshPrefix('many:');
  const writer = redisStore(server, { prefix });
  await writer.open();
  const n = 1500; // three ZSCAN pages of 500
  for (let i = 0; i < n; i += 250) await Promise.all(Array.from({ length: Math.min(250, n - i) }, (_, j) => writer.saveSession(session(`c${i + j}`))));
  await writer.close();
  const store = redisStore(server, { prefix });
  const m = await monitor(server);
  t.teardown(() => m.stop());
  const report = await store.open();
  t.teardown(() => store.close());
  t.is(report.loaded.sessions, n);
  t.is((await store.loadSessions()).length, n);
  const commands = await m.settled();
  const count = (name: string) => commands.filter((c) => c === name).length;
  t.is(count('keys'), 0);
  t.true(count('zscan') >= n / 500 && count('zscan') <= n / 500 + 4, `${count('zscan')} ZSCAN pages`);
  t.is(count('evalsha'), n, 'one LOAD script per session');
  t.true(commands.length < n + 60, `${commands.length} commands in all for ${n} sessions`);
});
