/**
 * An attack on `$share` groups across nodes while Redis is down (docs/cluster.md, "`$share` groups
 * across nodes"): a client that ends its own sessions holding full queues. It reads the memory of
 * this process, so it is alone in its file (ava runs a file's tests in one process, at once).
 */
import v8 from 'node:v8';
import vm from 'node:vm';
import test from 'ava';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import type { ConfigInput } from '../src/config/schema.ts';
import { clusterFixture, delay, eventually, nodeConfig, startNode, type InProcessNode } from './cluster-support.ts';

interface Nodes {
  nodes: (InProcessNode | null)[];
  clients: MqttClient[];
}

interface Got {
  n: number;
  dup: boolean;
  conn: number;
}

/** A v5 client on node `node`; what it receives goes into `got` (recorded from before CONNACK). */
async function client(c: Nodes, node: number, options: IClientOptions, got?: Got[], conn = node): Promise<MqttClient> {
  const cl = await new Promise<MqttClient>((resolve, reject) => {
    const m = mqtt.connect({ host: '127.0.0.1', port: (c.nodes[node] as InProcessNode).port, reconnectPeriod: 0, connectTimeout: 8000, protocolVersion: 5, ...options });
    if (got !== undefined) m.on('message', (_t, p, packet) => got.push({ n: Number(p), dup: packet.dup, conn }));
    m.once('connect', () => resolve(m));
    m.once('error', (err) => {
      m.end(true);
      reject(err);
    });
  });
  c.clients.push(cl);
  return cl;
}

/** Three nodes a, b, c of cluster `name`, each with its own configuration on top of the test one. */
async function nodesWith(t: Parameters<typeof clusterFixture>[0], name: string, rest: [Partial<ConfigInput>, Partial<ConfigInput>, Partial<ConfigInput>], extra: Record<string, unknown>[] = [{}, {}, {}]) {
  const f = await clusterFixture<InProcessNode>(t, (n) => n.broker.stop());
  for (const [i, id] of ['a', 'b', 'c'].entries()) f.nodes.push(await startNode(nodeConfig({ redisUrl: f.redis.url, keyFile: f.keyFile, nodeId: id, name, extra: extra[i] }, rest[i])));
  return f;
}

function shares(n: InProcessNode | null | undefined): { passed: number; dropped: number } {
  return n?.broker.clusterStatus()?.shares ?? { passed: -1, dropped: -1 };
}

/** A client that takes messages and never acknowledges them (its Receive Maximum is 1): the rest queue for it. */
const STALLED = { properties: { receiveMaximum: 1 }, customHandleAcks: () => undefined } as const;

test('Redis down: a client that ends its own sessions holding full queues of group messages (clean start takeovers, which need no Redis) cannot make the node hold more than cluster.maxPendingBytes of them for later', async (t) => {
  t.timeout(60_000);
  v8.setFlagsFromString('--expose_gc');
  const gc = vm.runInNewContext('gc') as () => void;
  const MAX = 4 * 1024 * 1024;
  const f = await nodesWith(t, 'as-held', [{}, {}, {}], [{}, { maxPendingBytes: MAX }, {}]);
  const m2 = await client(f, 2, { clientId: 'as-he-m2' });
  await m2.subscribeAsync('$share/g/as/he', { qos: 1 }); // node b knows a member on node c
  const pub = await client(f, 1, { clientId: 'as-he-pub' });
  let member = await client(f, 1, { clientId: 'as-he-m1', ...STALLED });
  await member.subscribeAsync('$share/g/as/he', { qos: 1 });
  await delay(300);
  await f.redis.stop();
  await delay(300);
  const payload = Buffer.alloc(64 * 1024, 0x78);
  gc();
  const base = process.memoryUsage().arrayBuffers;
  let acked = 0;
  for (let cycle = 0; cycle < 16; cycle++) {
    // Node b takes turns between its member and node c's: half are delivered here (acknowledged), half refused.
    for (let i = 0; i < 200; i++) {
      const code = await new Promise<number>((resolve) => pub.publish('as/he', payload, { qos: 1 }, (err, packet) => resolve(err ? -1 : ((packet as { reasonCode?: number } | undefined)?.reasonCode ?? 0))));
      if (code === 0) acked++;
    }
    // The same client id with a clean start: the session is held here, so no Redis is needed; the old one ends with its queue.
    const next = await client(f, 1, { clientId: 'as-he-m1', ...STALLED });
    member.end(true);
    member = next;
    await member.subscribeAsync('$share/g/as/he', { qos: 1 });
  }
  const offered = acked * payload.length;
  // What may stay: the bound, the last member's queue (one cycle) and some slack.
  const allowed = MAX + 200 * payload.length + 4 * 1024 * 1024;
  // A connection that was taken over is kept for 1 s (connection.ts) with the session it had, and
  // a busy machine runs its timers late: the lowest of samples taken over a few seconds counts.
  let grown = Infinity;
  await eventually(() => {
    gc();
    grown = Math.min(grown, process.memoryUsage().arrayBuffers - base);
    return grown < allowed;
  }, 8000, 250);
  t.log(`${acked} acknowledged (${(offered / 1048576).toFixed(0)} MiB) while Redis was down; memory held after: +${(grown / 1048576).toFixed(1)} MiB; node b dropped ${shares(f.nodes[1]).dropped}`);
  t.true(offered > 3 * allowed, 'the client offered far more than the bound');
  t.true(grown < allowed, `held for later: +${(grown / 1048576).toFixed(1)} MiB, at most ${(allowed / 1048576).toFixed(1)} MiB expected`);
  t.true(shares(f.nodes[1]).dropped > 0, 'what is over the bound is dropped and counted');
});
