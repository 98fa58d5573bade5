/**
 * Portcullis on a Redis Cluster of three masters (real redis-server processes, `cluster.redis.nodes`
 * and `store.nodes` with the same seed list): two nodes deliver across nodes, a persistent session
 * resumes on the other node with what was queued for it, and a retained message set on one node
 * reaches a subscriber on the other. Redis Cluster refuses a script or a multi-key command whose
 * keys span hash slots (CROSSSLOT); these pass only because every key a command touches at once
 * shares a slot: the bus's under its hash tag, each session's under its own.
 */
import test from 'ava';
import { Cluster } from 'ioredis';
import { eventually } from './cluster-support.ts';
import { haCluster, persistent } from './redis-ha-support.ts';
import { startRedisCluster, type RedisClusterServers } from './redis-server.ts';

let servers: RedisClusterServers | undefined;
const ready = startRedisCluster(3).then((s) => (servers = s));
test.after.always(async () => {
  await servers?.dispose();
});

const redis = async () => ({ nodes: (await ready).seeds });

test('Redis Cluster: cross-node delivery, a persistent session resumed on the other node with its queued message, a retained message across nodes', async (t) => {
  const c = await haCluster(t, await redis(), 'rc-main');

  // Cross-node delivery, both ways.
  const onB: string[] = [];
  const subB = await c.client(1, { clientId: 'sub-b' }, (topic, p) => onB.push(`${topic}=${p.toString()}`));
  await subB.subscribeAsync('rc/+', { qos: 1 });
  const pubA = await c.client(0, { clientId: 'pub-a' });
  for (let i = 0; i < 20; i++) await pubA.publishAsync(`rc/${i % 4}`, `m${i}`, { qos: 1 });
  t.true(await eventually(() => onB.length === 20, 5000), `b got ${onB.length} of 20`);
  t.deepEqual(onB, Array.from({ length: 20 }, (_, i) => `rc/${i % 4}=m${i}`), 'in order, each once');

  // A persistent session made on a, resumed on b: present, with what was published while it was away.
  const first = await c.client(0, persistent('dev-rc'));
  await first.subscribeAsync('cmd/dev-rc', { qos: 1 });
  await first.endAsync();
  for (let i = 0; i < 3; i++) await pubA.publishAsync('cmd/dev-rc', `queued-${i}`, { qos: 1 });
  const got: string[] = [];
  const { present } = await c.session(1, persistent('dev-rc'), (_topic, p) => got.push(p.toString()));
  t.true(present, 'session present on the other node');
  t.true(await eventually(() => got.length === 3, 5000), `resumed session got ${got.join(', ')}`);
  t.deepEqual(got, ['queued-0', 'queued-1', 'queued-2']);

  // A retained message set on b reaches a new subscriber on a.
  await subB.publishAsync('status/rc', 'online', { qos: 1, retain: true });
  const retained: string[] = [];
  const late = await c.client(0, { clientId: 'late-a' }, (topic, p) => retained.push(`${topic}=${p.toString()}`));
  await late.subscribeAsync('status/#', { qos: 1 });
  t.true(await eventually(() => retained.length === 1, 3000));
  t.deepEqual(retained, ['status/rc=online']);
});

test('the bus keys of one Portcullis cluster share one slot (its hash tag); the store spreads sessions over the masters', async (t) => {
  const c = await haCluster(t, await redis(), 'rc-slots');
  for (let i = 0; i < 12; i++) {
    const cl = await c.client(i % 2, persistent(`spread-${i}`));
    await cl.subscribeAsync(`spread/${i}`, { qos: 1 });
  }
  const { seeds } = await ready;
  const probe = new Cluster(seeds, { lazyConnect: true });
  await probe.connect();
  t.teardown(() => probe.disconnect());
  const slotsOf = async (pattern: string) => {
    const slots = new Set<number>();
    for (const n of probe.nodes('master')) {
      let cursor = '0';
      do {
        const [next, keys] = await n.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
        cursor = next;
        for (const k of keys) slots.add(Number(await n.cluster('KEYSLOT', k)));
      } while (cursor !== '0');
    }
    return slots;
  };
  const bus = await slotsOf('{pc:rc-slots}:*');
  t.true(bus.size === 1, `bus keys in ${bus.size} slots`);
  const store = await slotsOf('rc-slots:*');
  t.true(store.size >= 6, `store keys in ${store.size} slots (sessions spread)`);
});
