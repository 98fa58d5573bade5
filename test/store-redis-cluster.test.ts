/**
 * The Redis store on a Redis Cluster of three masters (real redis-server processes): the shared
 * conformance suite passes, so every script names its keys and each session's keys share one
 * slot (Redis refuses a script whose keys span slots: CROSSSLOT); sessions spread over the
 * masters; `store check` scans every master.
 */
import { spawnSync } from 'node:child_process';
import test from 'ava';
import { redisConnection } from '../src/store/redis-config.ts';
import { checkRedisStore } from '../src/store/redis-tools.ts';
import { sessionKey } from '../src/store/types.ts';
import { storeConformance } from './store-conformance.ts';
import { startRedis, type RedisServer } from './redis-server.ts';
import { freshPrefix, redisConfig, redisStore } from './store-redis-support.ts';

let nodes: RedisServer[] = [];
const ready = (async () => {
  nodes = await Promise.all([0, 1, 2].map(() => startRedis({ args: ['--cluster-enabled', 'yes', '--cluster-node-timeout', '2000'] })));
  const made = spawnSync('redis-cli', ['--cluster', 'create', ...nodes.map((n) => `${n.host}:${n.port}`), '--cluster-replicas', '0', '--cluster-yes'], { encoding: 'utf8' });
  if (made.status !== 0) throw new Error(`redis-cli --cluster create failed: ${made.stderr}`);
  for (let i = 0; i < 100; i++) {
    if (/cluster_state:ok/.test(await (nodes[0] as RedisServer).command('CLUSTER', 'INFO'))) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return nodes;
})();
test.after.always(async () => {
  await Promise.all(nodes.map((n) => n.dispose()));
});

const clusterStore = async (options: Record<string, unknown> = {}) => {
  const all = await ready;
  return redisStore(all[0] as RedisServer, { url: undefined, nodes: all.map((n) => ({ host: n.host, port: n.port })), ...options });
};

storeConformance('redis (cluster)', () => clusterStore());

test('sessions spread over the masters; each session stays on one; store check reads every master', async (t) => {
  const all = await ready;
  const prefix = freshPrefix('cluster:');
  const store = await clusterStore({ prefix });
  await store.open();
  t.teardown(() => store.close());
  for (let i = 0; i < 30; i++) {
    await store.saveSession({ clientId: `c${i}`, owner: `user:c${i}`, protocolVersion: 5, expiryInterval: 60, subscriptions: [], inflight: [], queue: [], awaitingRelease: [] });
    await store.enqueue(sessionKey(`user:c${i}`, `c${i}`), { topic: 't', payload: Buffer.from('x'), qos: 1, retain: false });
  }
  const perNode = await Promise.all(all.map(async (n) => Number(/keys=(\d+)/.exec(await n.command('INFO', 'keyspace'))?.[1] ?? 0)));
  t.true(perNode.filter((k) => k > 0).length === 3, `keys on every master: ${perNode.join(', ')}`);
  const report = await checkRedisStore({ connection: redisConnection(redisConfig(all[0] as RedisServer, { url: undefined, nodes: all.map((n) => ({ host: n.host, port: n.port })), prefix })).connection, prefix });
  t.true(report.ok, JSON.stringify(report.problems));
  t.is(report.counts?.queued, 30);
  t.is(report.notes.filter((n) => /appendfsync always/.test(n)).length, 3, 'the persistence settings of each master');
});
