/**
 * The Redis store when Redis fails, against a real redis-server: stopped and started again,
 * frozen (SIGSTOP: connected but silent), paused (CLIENT PAUSE), killed with SIGKILL and
 * restarted from its append-only file. Writes fail fast with a StoreError the broker
 * understands, memory stays bounded, and the store recovers by itself.
 */
import test from 'ava';
import { isStoreError, StoreWriteError } from '../src/store/errors.ts';
import { sessionKey, type StoredMessage, type StoredSession } from '../src/store/types.ts';
import { startRedis, type RedisServer } from './redis-server.ts';
import { freshPrefix, redisConfig, redisStore } from './store-redis-support.ts';

const session = (id: string): StoredSession => ({ clientId: id, owner: `user:${id}`, protocolVersion: 5, expiryInterval: 3600, subscriptions: [], inflight: [], queue: [], awaitingRelease: [] });
const msg = (topic: string, size = 16): StoredMessage => ({ topic, payload: Buffer.alloc(size, 0x5a), qos: 1, retain: false });
const key = (id: string) => sessionKey(`user:${id}`, id);
const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Writes the sessions a test starts from through a store with a generous deadline (this machine's
 * disk is shared and Redis fsyncs every write), so only the store under test has a short one.
 */
async function seed(server: RedisServer, prefix: string, ids: string[]): Promise<void> {
  const setup = redisStore(server, { prefix, instance: 'setup', commandTimeoutMs: 20_000 });
  await setup.open();
  for (const id of ids) await setup.saveSession(session(id));
  await setup.close();
}

async function eventually(check: () => Promise<boolean>, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await check().catch(() => false)) return true;
    await delay(50);
  }
  return false;
}

test('Redis stopped: writes and reads fail at once with a StoreError; when it is back the store reconnects by itself and writes succeed', async (t) => {
  const server = await startRedis();
  t.teardown(() => server.dispose());
  const store = redisStore(server, { commandTimeoutMs: 10_000 });
  await store.open();
  t.teardown(() => store.close());
  await store.saveSession(session('a'));
  await store.enqueue(key('a'), msg('before'));

  await server.stop();
  const started = Date.now();
  const err = await t.throwsAsync(store.enqueue(key('a'), msg('during')));
  t.true(Date.now() - started < 500, `refused at once (${Date.now() - started} ms), not after a timeout`);
  t.true(err instanceof StoreWriteError && err.code === 'ERR_STORE_WRITE', `a StoreWriteError the broker refuses acknowledgements on: ${String(err)}`);
  t.false((err as StoreWriteError).diskFull, 'not taken for a full store (0x80, not 0x97)');
  t.true(['ENOTCONN', 'ECONNRESET'].includes(String((err as StoreWriteError).errno)), String((err as StoreWriteError).errno));
  await t.throwsAsync(store.getSession(key('a')), { code: 'ERR_STORE_UNAVAILABLE' });
  // Many writes while it is down: each refused at once, nothing kept for later.
  const refused = await Promise.allSettled(Array.from({ length: 200 }, (_, i) => store.enqueue(key('a'), msg(`down/${i}`))));
  t.true(refused.every((r) => r.status === 'rejected' && isStoreError(r.reason, 'ERR_STORE_WRITE')));
  t.is(store.pendingBytes, 0, 'nothing waits in the process');

  await server.restart();
  t.true(await eventually(async () => (await store.enqueue(key('a'), msg('after')).then(() => true)), 5000), 'writes succeed again without reopening the store');
  const got = await store.getSession(key('a'));
  t.deepEqual(
    got?.queue.map((m) => m.topic),
    ['before', 'after'],
    'what was refused was never written later; the scripts were loaded again on the new connection',
  );
});

/** For the tests that time deadlines: no fsync per write, so a busy disk does not make Redis itself slow. */
const NO_FSYNC_WAIT = { args: ['--appendfsync', 'everysec'] };

test('Redis frozen (SIGSTOP): a write fails within commandTimeoutMs, later ones at once; pending bytes stay under maxPendingBytes; it recovers after SIGCONT', async (t) => {
  const server = await startRedis(NO_FSYNC_WAIT);
  t.teardown(() => server.dispose());
  const prefix = freshPrefix();
  await seed(server, prefix, ['f']);
  // A deadline the store's own open meets on a machine busy with the whole suite (300 ms did not, once).
  const store = redisStore(server, { prefix, commandTimeoutMs: 1000, maxPendingBytes: 256 * 1024 });
  await store.open();
  t.teardown(() => store.close());

  server.freeze();
  const started = Date.now();
  const first = store.enqueue(key('f'), msg('frozen/0', 1024));
  // 64 MiB offered while Redis is silent: only up to the budget may wait in the process.
  const flood: Promise<void>[] = [];
  let maxPending = 0;
  for (let i = 0; i < 1024; i++) {
    flood.push(store.enqueue(key('f'), msg(`frozen/${i + 1}`, 64 * 1024)));
    maxPending = Math.max(maxPending, store.pendingBytes);
  }
  const err = await t.throwsAsync(first);
  const took = Date.now() - started;
  t.true(took >= 950 && took < 3500, `the first write fails at its deadline (${took} ms for a 1000 ms timeout; the slack is for a busy machine)`);
  t.is((err as StoreWriteError).errno, 'ETIMEDOUT');
  const results = await Promise.allSettled(flood);
  t.true(results.every((r) => r.status === 'rejected'), 'nothing is acknowledged while Redis is frozen');
  t.true(maxPending <= 256 * 1024 + 70 * 1024, `pending bytes stayed bounded (max ${maxPending})`);
  t.true(results.filter((r) => r.status === 'rejected' && /not answering|not connected/.test(String((r.reason as Error).message))).length > 900, 'most were refused at once, without being sent');
  const quick = Date.now();
  await t.throwsAsync(store.enqueue(key('f'), msg('frozen/late')));
  t.true(Date.now() - quick < 600, 'a write after the deadline fails fast too');

  server.thaw();
  t.true(await eventually(async () => (await store.enqueue(key('f'), msg('thawed')).then(() => true)), 6000), 'writes succeed again after SIGCONT');
  t.is(store.pendingBytes, 0);
});

test('CLIENT PAUSE: writes time out cleanly within commandTimeoutMs and succeed again when the pause ends', async (t) => {
  const server = await startRedis(NO_FSYNC_WAIT);
  t.teardown(() => server.dispose());
  const prefix = freshPrefix();
  await seed(server, prefix, ['p']);
  const store = redisStore(server, { prefix, commandTimeoutMs: 1000 }); // a deadline its open meets on a busy machine
  await store.open();
  t.teardown(() => store.close());
  // A pause far longer than the deadline and its slack; the test ends it (CLIENT UNPAUSE) once the deadline is seen.
  await server.command('CLIENT', 'PAUSE', '30000', 'WRITE');
  const started = Date.now();
  await t.throwsAsync(store.enqueue(key('p'), msg('paused')), { code: 'ERR_STORE_WRITE' });
  const took = Date.now() - started;
  // The slack is for a machine busy with the rest of the suite.
  t.true(took >= 950 && took < 3500, `failed at its deadline (${took} ms for 1000 ms), not at the end of the pause`);
  await t.throwsAsync(store.enqueue(key('p'), msg('still paused')), { code: 'ERR_STORE_WRITE' }, 'still refused while the pause lasts');
  await server.command('CLIENT', 'UNPAUSE');
  t.true(await eventually(async () => (await store.enqueue(key('p'), msg('resumed')).then(() => true)), 10_000), 'writes succeed again once the pause ends');
});

test('Redis killed (SIGKILL) and restarted from its append-only file: every acknowledged write is there', async (t) => {
  const server = await startRedis();
  t.teardown(() => server.dispose());
  const config = redisConfig(server);
  const store = redisStore(server, { prefix: config.prefix });
  await store.open();
  for (let i = 0; i < 20; i++) await store.saveSession(session(`s${i}`));
  const acked: string[] = [];
  await Promise.all(Array.from({ length: 400 }, (_, i) => store.enqueue(key(`s${i % 20}`), msg(`m/${i}`)).then(() => acked.push(`m/${i}`))));
  await store.putRetained({ ...msg('r/1'), retain: true });
  await server.stop(true);
  await store.close(); // Redis is gone: the store cannot mark a clean close
  await server.restart();
  const again = redisStore(server, { prefix: config.prefix });
  const report = await again.open();
  t.teardown(() => again.close());
  t.is(report.loaded.sessions, 20);
  t.is(report.loaded.queued, acked.length);
  t.is(report.loaded.retained, 1);
  t.true(report.recovery.uncleanShutdown, 'the first store could not close cleanly (Redis went away): the next open says so');
  const topics = new Set((await again.loadSessions()).flatMap((s) => s.queue.map((m) => m.topic)));
  t.deepEqual(
    acked.filter((m) => !topics.has(m)),
    [],
  );
});

test('Redis full (maxmemory, noeviction): writes are refused as from a full store (diskFull, OOM: PUBACK 0x97), and succeed again once there is room', async (t) => {
  const server = await startRedis();
  t.teardown(() => server.dispose());
  const store = redisStore(server);
  await store.open();
  t.teardown(() => store.close());
  await store.saveSession(session('full'));
  const used = Number(/used_memory:(\d+)/.exec(await server.command('INFO', 'memory'))?.[1]);
  await server.command('CONFIG', 'SET', 'maxmemory-policy', 'noeviction');
  await server.command('CONFIG', 'SET', 'maxmemory', String(used + 2 * 1024 * 1024));
  let err: unknown;
  for (let i = 0; i < 200 && err === undefined; i++) await store.enqueue(key('full'), msg(`big/${i}`, 64 * 1024)).catch((e: unknown) => (err = e));
  t.true(err instanceof StoreWriteError, String(err));
  t.is((err as StoreWriteError).errno, 'OOM');
  t.true((err as StoreWriteError).diskFull, 'taken for a full store');
  await server.command('CONFIG', 'SET', 'maxmemory', '0');
  await t.notThrowsAsync(store.enqueue(key('full'), msg('after')));
});
