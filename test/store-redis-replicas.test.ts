/**
 * The Redis store with replicas, on real redis-server processes: `waitReplicas` acknowledges a
 * write only once a replica has it (and refuses it when none confirms in time), and in Sentinel
 * mode a failover moves the store to the new master by itself, with what was acknowledged there.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import test from 'ava';
import type { StoreWriteError } from '../src/store/errors.ts';
import { sessionKey, type StoredSession } from '../src/store/types.ts';
import { redisCommand, startRedis, type RedisServer } from './redis-server.ts';
import { freshPrefix, redisStore } from './store-redis-support.ts';

const session = (id: string): StoredSession => ({ clientId: id, owner: `user:${id}`, protocolVersion: 5, expiryInterval: 3600, subscriptions: [], inflight: [], queue: [], awaitingRelease: [] });
const msg = (topic: string) => ({ topic, payload: Buffer.from(topic), qos: 1 as const, retain: false });
const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Without the default 5 s wait before a full sync, so replicas (and a failed-over old master) catch up at once. */
const FAST_SYNC = ['--repl-diskless-sync-delay', '0'];

async function replicaOf(master: RedisServer): Promise<RedisServer> {
  const replica = await startRedis({ args: ['--replicaof', master.host, String(master.port), ...FAST_SYNC] });
  for (let i = 0; i < 100; i++) {
    if (/master_link_status:up/.test(await replica.command('INFO', 'replication'))) return replica;
    await delay(50);
  }
  throw new Error('the replica did not sync');
}

test('waitReplicas: a write resolves once a replica has it; with the replica gone it is refused (NOREPLICAS) after waitTimeoutMs', async (t) => {
  const master = await startRedis({ args: FAST_SYNC });
  t.teardown(() => master.dispose());
  const replica = await replicaOf(master);
  t.teardown(() => replica.dispose());
  const prefix = freshPrefix();
  const store = redisStore(master, { prefix, waitReplicas: 1, waitTimeoutMs: 1500 });
  await store.open();
  t.teardown(() => store.close());
  await store.saveSession(session('w'));
  await Promise.all(Array.from({ length: 50 }, (_, i) => store.enqueue(sessionKey('user:w', 'w'), msg(`m/${i}`))));
  t.is(Number(await replica.command('LLEN', `${prefix}{${(await import('../src/store/redis-keys.ts')).sessionDigest(sessionKey('user:w', 'w'))}}:q`)), 50, 'every acknowledged write is on the replica');

  // Closed while the replica is there: a close writes too, and would wait waitTimeoutMs without it.
  await store.close();
  // A second store with a shorter WAIT timeout for the refusal (the first has a long one, so a busy
  // machine never fails the writes above); opened while the replica is there, as its open writes too.
  const short = redisStore(master, { prefix, instance: 'short-wait', waitReplicas: 1, waitTimeoutMs: 800 });
  await short.open();
  t.teardown(() => short.close());

  await replica.stop(true);
  const started = Date.now();
  const err = await t.throwsAsync(short.enqueue(sessionKey('user:w', 'w'), msg('unreplicated')), { code: 'ERR_STORE_WRITE' });
  t.is((err as StoreWriteError).errno, 'NOREPLICAS');
  t.true(Date.now() - started >= 750, `refused when WAIT gave up (${Date.now() - started} ms for 800 ms), not before`);
});

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

test('Sentinel: the store finds the master through the sentinel, and after a failover writes go to the new master by themselves', async (t) => {
  const master = await startRedis({ args: FAST_SYNC });
  t.teardown(() => master.dispose());
  const replica = await replicaOf(master);
  t.teardown(() => replica.dispose());
  const port = await freePort();
  const conf = path.join(master.dir, 'sentinel.conf');
  fs.writeFileSync(conf, `port ${port}\nbind 127.0.0.1\ndir ${master.dir}\nsentinel monitor mymaster 127.0.0.1 ${master.port} 1\nsentinel known-replica mymaster 127.0.0.1 ${replica.port}\nsentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n`);
  const sentinel: ChildProcess = spawn('redis-server', [conf, '--sentinel'], { stdio: 'ignore' });
  t.teardown(() => {
    sentinel.kill('SIGKILL');
  });
  // The replica is known from the configuration (known-replica), so the sentinel is ready once it answers.
  for (let i = 0; i < 100; i++) {
    if ((await redisCommand('127.0.0.1', port, ['SENTINEL', 'get-master-addr-by-name', 'mymaster'], 500).catch(() => '')).includes(String(master.port))) break;
    await delay(50);
  }
  const store = redisStore(master, { url: undefined, sentinels: [{ host: '127.0.0.1', port }], name: 'mymaster', waitReplicas: 1, commandTimeoutMs: 3000 });
  const report = await store.open();
  t.teardown(() => store.close());
  t.regex(report.path ?? '', /sentinel master mymaster/);
  await store.saveSession(session('s'));
  await store.enqueue(sessionKey('user:s', 's'), msg('before'));

  await redisCommand('127.0.0.1', port, ['SENTINEL', 'FAILOVER', 'mymaster']);
  // Sentinel also closes the clients of the replica it promotes: a read may fail, and is asked again.
  for (let i = 0; i < 100 && !/role:master/.test(await replica.command('INFO', 'replication').catch(() => '')); i++) await delay(100);
  t.regex(await replica.command('INFO', 'replication'), /role:master/, 'the former replica is the master now');
  // What Sentinel does within about 10 s (its INFO period): the old master follows the new one, so WAIT finds a replica again.
  // Sentinel closes the clients of a master it demotes (CLIENT KILL): a command of ours on that
  // connection may meet ECONNRESET, so ask again.
  const onOldMaster = async (...args: string[]): Promise<string> => {
    for (let i = 0; ; i++) {
      try {
        return await master.command(...args);
      } catch (err) {
        if (i >= 20) throw err;
        await delay(100);
      }
    }
  };
  await onOldMaster('REPLICAOF', replica.host, String(replica.port));
  let wrote = false;
  for (let i = 0; i < 100 && !wrote; i++) {
    wrote = await store.enqueue(sessionKey('user:s', 's'), msg('after')).then(
      () => true,
      () => false,
    );
    if (!wrote) await delay(100);
  }
  t.true(wrote, 'writes succeed again after the failover');
  t.regex(await onOldMaster('INFO', 'replication'), /role:slave/, 'the old master follows the new one');
  const got = await store.getSession(sessionKey('user:s', 's'));
  const topics = got?.queue.map((m) => m.topic) ?? [];
  t.is(topics[0], 'before', 'what was acknowledged before the failover is on the new master');
  // A write refused while the new master had no replica yet (WAIT) may still have been applied:
  // refused, retried, so possibly twice, as QoS 1 allows; never lost, never out of order.
  t.true(topics.length >= 2 && topics.slice(1).every((x) => x === 'after'), topics.join(', '));
});
