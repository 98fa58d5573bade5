/**
 * The Redis store's life cycle on a real redis-server: what open purges and reports, the purge
 * while running, the instance lease (one broker per instance name, a clean close or not), and
 * close letting every write issued before it finish.
 */
import os from 'node:os';
import test from 'ava';
import { sessionDigest } from '../src/store/redis-keys.ts';
import { sessionKey, type StoredMessage, type StoredSession } from '../src/store/types.ts';
import { startRedis, type RedisServer } from './redis-server.ts';
import { freshPrefix, redisStore } from './store-redis-support.ts';

let server: RedisServer | undefined;
const ready = startRedis().then((s) => (server = s));
test.after.always(async () => {
  await server?.dispose();
});

const session = (id: string, extra: Partial<StoredSession> = {}): StoredSession => ({ clientId: id, owner: `user:${id}`, protocolVersion: 5, expiryInterval: 60, subscriptions: [], inflight: [], queue: [], awaitingRelease: [], ...extra });
const msg = (topic: string, extra: Partial<StoredMessage> = {}): StoredMessage => ({ topic, payload: Buffer.from(topic), qos: 1, retain: false, ...extra });
const key = (id: string) => sessionKey(`user:${id}`, id);

test('open drops sessions and retained messages that expired while no broker ran, and orphan records; reports each', async (t) => {
  const s = await ready;
  const prefix = freshPrefix();
  const now = Date.now();
  const first = redisStore(s, { prefix });
  await first.open();
  await first.saveSession(session('expired', { expiresAt: now - 1000 }));
  await first.saveSession(session('alive', { expiresAt: now + 60_000 }));
  await first.saveSession(session('connected'));
  await first.putRetained(msg('r/old', { retain: true, expiresAt: now - 1 }));
  await first.putRetained(msg('r/new', { retain: true, expiresAt: now + 60_000 }));
  await first.close();
  // Records of a session whose session record is gone (written by hand: the store never leaves these).
  const orphan = sessionDigest(key('orphan'));
  await s.command('RPUSH', `${prefix}{${orphan}}:q`, 'x');
  await s.command('ZADD', `${prefix}sessions`, 'inf', orphan);
  const store = redisStore(s, { prefix });
  const report = await store.open();
  t.teardown(() => store.close());
  t.deepEqual(report.purged, { expiredSessions: 1, expiredMessages: 0, expiredRetained: 1, orphans: 1 });
  t.deepEqual((await store.loadSessions()).map((x) => x.clientId).sort(), ['alive', 'connected']);
  t.deepEqual((await store.loadRetained()).map((m) => m.topic), ['r/new']);
  t.is(await s.command('EXISTS', `${prefix}{${orphan}}:q`), '0', 'the orphan records are gone');
  t.is(await s.command('ZSCORE', `${prefix}sessions`, orphan), '', 'and its index entry');
});

test('purgeExpired deletes expired sessions the broker does not keep, and expired retained messages, and nothing else', async (t) => {
  const s = await ready;
  const store = redisStore(s);
  await store.open();
  t.teardown(() => store.close());
  const now = Date.now();
  await store.saveSession(session('gone'));
  await store.saveSession(session('kept'));
  await store.saveSession(session('later'));
  await store.saveSession(session('online'));
  await store.setSessionExpiry(key('gone'), now + 100, 60);
  await store.setSessionExpiry(key('kept'), now + 100, 60);
  await store.setSessionExpiry(key('later'), now + 60_000, 60);
  await store.putRetained(msg('r/short', { retain: true, expiresAt: now + 100 }));
  await store.putRetained(msg('r/long', { retain: true, expiresAt: now + 60_000 }));
  const report = await store.purgeExpired({ now: now + 1000, keep: (k) => k === key('kept') });
  t.deepEqual(report, { expiredSessions: 1, expiredRetained: 1 });
  t.is(await store.getSession(key('gone')), undefined);
  for (const id of ['kept', 'later', 'online']) t.truthy(await store.getSession(key(id)), id);
  t.deepEqual((await store.loadRetained()).map((m) => m.topic), ['r/long']);
  // A session connected again is not expired any more, whatever the index said.
  await store.setSessionExpiry(key('kept'), undefined, 60);
  t.deepEqual(await store.purgeExpired({ now: now + 1000 }), { expiredSessions: 0, expiredRetained: 0 });
});

test('a clean close is not an unclean shutdown; a store left without close is, and its lease (a process that is gone) is taken over', async (t) => {
  const s = await ready;
  const prefix = freshPrefix();
  const a = redisStore(s, { prefix });
  t.false((await a.open()).recovery.uncleanShutdown);
  await a.saveSession(session('x', { will: { message: msg('w'), delayInterval: 0 } }));
  await a.close();
  const b = redisStore(s, { prefix });
  t.false((await b.open()).recovery.uncleanShutdown, 'closed cleanly');
  await b.close();
  // What a broker killed with SIGKILL leaves: its marker and its lease, naming a process that is gone.
  const dead = JSON.stringify({ pid: 2 ** 22 + 17, host: os.hostname(), since: '2025-01-01T00:00:00.000Z' });
  await s.command('SET', `${prefix}{instance:default}`, dead);
  await s.command('SET', `${prefix}{instance:default}:alive`, dead, 'PX', '15000');
  const c = redisStore(s, { prefix });
  const report = await c.open();
  t.teardown(() => c.close());
  t.true(report.recovery.uncleanShutdown);
  t.deepEqual(report.recovery.staleLock, { pid: 2 ** 22 + 17, host: os.hostname(), since: '2025-01-01T00:00:00.000Z' });
});

test('a second broker with the same instance name is refused while the first holds the lease; another name is fine', async (t) => {
  const s = await ready;
  const prefix = freshPrefix();
  const other = JSON.stringify({ pid: 4242, host: 'mqtt-2.example', since: '2025-06-01T10:00:00.000Z' });
  await s.command('SET', `${prefix}{instance:default}:alive`, other, 'PX', '15000');
  const store = redisStore(s, { prefix });
  await t.throwsAsync(store.open(), { code: 'ERR_STORE_LOCKED', message: /in use by instance 'default', process 4242 on mqtt-2\.example.*store\.instance.*lease ends in \d+ s/ });
  const named = redisStore(s, { prefix, instance: 'node-b' });
  await t.notThrowsAsync(named.open());
  await named.close();
  const again = redisStore(s, { prefix, instance: 'node-b' });
  await again.open();
  t.teardown(() => again.close());
  await t.throwsAsync(redisStore(s, { prefix, instance: 'node-b' }).open(), { code: 'ERR_STORE_LOCKED', message: /already open in this process/ });
});

test('close lets every write issued before it finish, awaited or not; a write after close is refused', async (t) => {
  const s = await ready;
  const prefix = freshPrefix();
  const store = redisStore(s, { prefix });
  await store.open();
  const writes: Promise<void>[] = [store.saveSession(session('a'))];
  for (let i = 0; i < 5; i++) {
    await new Promise((r) => setImmediate(r));
    writes.push(store.enqueue(key('a'), msg(`q/${i}`)));
  }
  await store.close();
  await t.notThrowsAsync(Promise.all(writes));
  await t.throwsAsync(store.enqueue(key('a'), msg('late')), { code: 'ERR_STORE_CLOSED' });
  const again = redisStore(s, { prefix });
  await again.open();
  t.teardown(() => again.close());
  t.deepEqual(
    (await again.getSession(key('a')))?.queue.map((m) => m.topic),
    ['q/0', 'q/1', 'q/2', 'q/3', 'q/4'],
  );
});

test('writes that are not awaited apply in the order they were made (the broker does not await each one)', async (t) => {
  const s = await ready;
  const store = redisStore(s);
  await store.open();
  t.teardown(() => store.close());
  const writes = [
    store.saveSession(session('o')),
    store.putSubscription(key('o'), { filter: 'o/#', qos: 1, noLocal: false, retainAsPublished: false, retainHandling: 0 }),
    store.enqueue(key('o'), msg('q/1')),
    store.putInflight(key('o'), { packetId: 9, state: 'publish', message: msg('f/9') }),
    store.enqueue(key('o'), msg('q/2')),
    store.dequeue(key('o'), 1),
    store.setSessionExpiry(key('o'), 1_900_000_000_000, 120),
    store.saveSession(session('p')),
    store.deleteSession(key('p')),
    store.saveSession(session('p', { protocolVersion: 4 })),
  ];
  await Promise.all(writes);
  const o = await store.getSession(key('o'));
  t.deepEqual(o?.subscriptions.map((x) => x.filter), ['o/#']);
  t.deepEqual(o?.queue.map((m) => m.topic), ['q/2']);
  t.deepEqual(o?.inflight.map((f) => f.packetId), [9]);
  t.is(o?.expiresAt, 1_900_000_000_000);
  t.is((await store.getSession(key('p')))?.protocolVersion, 4);
});
