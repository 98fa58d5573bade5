/**
 * Three nodes on one Redis behave as one broker for publish/subscribe (docs/cluster.md): a
 * message published on one node reaches matching subscribers on every node, in order per
 * publisher and topic; it goes only to nodes with a matching subscriber; a `$share` group gets
 * each message once, wherever its members are; no-local holds across nodes.
 */
import test from 'ava';
import type { MqttClient } from 'mqtt';
import { clusterFixture, connect, delay, eventually, nodeConfig, startNode, threeNodes, type InProcessNode, type ThreeNodes } from './cluster-support.ts';
import { MemoryStore } from '../src/index.ts';
import { Names } from '../src/cluster/names.ts';

type Cluster = ThreeNodes;
const cluster = threeNodes;

async function client(c: Cluster, node: number, options: Parameters<typeof connect>[1] = {}, onMessage?: (topic: string, payload: Buffer) => void): Promise<MqttClient> {
  const cl = await connect((c.nodes[node] as InProcessNode).port, options, onMessage);
  c.clients.push(cl);
  return cl;
}

test('a message published on one node reaches matching subscribers on every node, at QoS 0, 1 and 2', async (t) => {
  const c = await cluster(t, 'fanout');
  const got: string[][] = [[], [], []];
  for (let i = 0; i < 3; i++) {
    const s = await client(c, i, { clientId: `sub-${i}` }, (topic, p) => got[i]?.push(`${topic} ${p}`));
    await s.subscribeAsync('fan/#', { qos: 2 });
  }
  const pub = await client(c, 0, { clientId: 'pub' });
  for (const qos of [0, 1, 2] as const) await pub.publishAsync(`fan/q${qos}`, `m${qos}`, { qos });
  t.true(await eventually(() => got.every((g) => g.length === 3)), JSON.stringify(got));
  for (const g of got) t.deepEqual(g.sort(), ['fan/q0 m0', 'fan/q1 m1', 'fan/q2 m2']);
});

test('messages from one publisher on one topic arrive in order on every node (QoS 1, 500 messages)', async (t) => {
  const c = await cluster(t, 'order');
  const got: number[][] = [[], [], []];
  for (let i = 0; i < 3; i++) {
    const s = await client(c, i, { clientId: `o-sub-${i}` }, (_t, p) => got[i]?.push(Number(p)));
    await s.subscribeAsync('order/x', { qos: 1 });
  }
  const pub = await client(c, 1, { clientId: 'o-pub' });
  const sends: Promise<unknown>[] = [];
  for (let n = 0; n < 500; n++) sends.push(pub.publishAsync('order/x', String(n), { qos: 1 }));
  await Promise.all(sends);
  t.true(await eventually(() => got.every((g) => g.length >= 500), 10_000), `${got.map((g) => g.length)}`);
  const expected = Array.from({ length: 500 }, (_, i) => i);
  for (const g of got) t.deepEqual(g, expected);
});

test('a publish goes only to nodes with a matching subscriber: the others get nothing on the bus', async (t) => {
  const c = await cluster(t, 'interest');
  const s = await client(c, 1, { clientId: 'only-b' });
  await s.subscribeAsync('only/b', { qos: 1 });
  const pub = await client(c, 0, { clientId: 'p' });
  const before = c.nodes.map((n) => n.broker.clusterStatus()?.bus.received ?? 0);
  for (let i = 0; i < 20; i++) await pub.publishAsync('only/b', 'x', { qos: 1 });
  for (let i = 0; i < 20; i++) await pub.publishAsync('nobody/here', 'x', { qos: 1 });
  await delay(200);
  const after = c.nodes.map((n) => n.broker.clusterStatus()?.bus.received ?? 0);
  t.is((after[1] as number) - (before[1] as number), 20, 'node b received the 20 messages it has a subscriber for');
  t.is((after[2] as number) - (before[2] as number), 0, 'node c, with no subscriber, received nothing');
  t.is((after[0] as number) - (before[0] as number), 0, 'the publishing node received nothing back');
  // And only b's inbox was ever written to: c's stream is empty.
  const xlen = await c.redis.command('XLEN', `{pc:interest}:in:${c.nodes[2]?.broker.clusterStatus()?.partitions[0]}`);
  t.is(xlen, '0');
});

test('a SUBACK on one node means publishes on every other node reach the new subscription at once', async (t) => {
  const c = await cluster(t, 'suback');
  const pub = await client(c, 0, { clientId: 'sb-pub' });
  for (let round = 0; round < 10; round++) {
    const got: string[] = [];
    const s = await client(c, 1 + (round % 2), { clientId: `sb-sub-${round}` }, (_t, p) => got.push(p.toString()));
    await s.subscribeAsync(`fresh/${round}`, { qos: 1 });
    // Published right after the SUBACK, on another node: must be delivered.
    await pub.publishAsync(`fresh/${round}`, `r${round}`, { qos: 1 });
    t.true(await eventually(() => got.length === 1, 3000), `round ${round}`);
    s.end(true);
  }
});

test('a $share group with members on several nodes gets each message once, spread over the nodes', async (t) => {
  const c = await cluster(t, 'share');
  const counts = [0, 0, 0, 0];
  const seen = new Map<string, number>();
  for (let i = 0; i < 4; i++) {
    const s = await client(c, i % 3, { clientId: `member-${i}` }, (_t, p) => {
      counts[i]!++;
      seen.set(p.toString(), (seen.get(p.toString()) ?? 0) + 1);
    });
    await s.subscribeAsync('$share/g/jobs/+', { qos: 1 });
  }
  const plain: string[] = [];
  const other = await client(c, 2, { clientId: 'plain' }, (_t, p) => plain.push(p.toString()));
  await other.subscribeAsync('jobs/#', { qos: 1 });
  const pub = await client(c, 0, { clientId: 'job-pub' });
  for (let n = 0; n < 60; n++) await pub.publishAsync(`jobs/${n % 5}`, `job-${n}`, { qos: 1 });
  t.true(await eventually(() => seen.size === 60 && plain.length === 60, 5000), `${seen.size} ${plain.length}`);
  await delay(200);
  t.true([...seen.values()].every((n) => n === 1), 'each message went to exactly one member');
  t.is(counts.reduce((a, b) => a + b, 0), 60);
  // Every node's members took a share (members on a, b and c).
  t.true((counts[0] as number) + (counts[3] as number) > 0 && (counts[1] as number) > 0 && (counts[2] as number) > 0, JSON.stringify(counts));
});

test('no-local holds across nodes: a client does not get its own message back, whatever node routes it', async (t) => {
  const c = await cluster(t, 'nolocal');
  const own: string[] = [];
  const me = await client(c, 0, { clientId: 'me' }, (_t, p) => own.push(p.toString()));
  await me.subscribeAsync('chat/#', { qos: 1, nl: true });
  const others: string[] = [];
  const o = await client(c, 1, { clientId: 'other' }, (_t, p) => others.push(p.toString()));
  await o.subscribeAsync('chat/#', { qos: 1 });
  await me.publishAsync('chat/1', 'from-me', { qos: 1 });
  await o.publishAsync('chat/1', 'from-other', { qos: 1 });
  t.true(await eventually(() => others.length === 2 && own.length === 1));
  await delay(200);
  t.deepEqual(own, ['from-other']);
});

test('a retained message set on one node is there for a subscription made on any other node right after its PUBACK; a clear on a third node clears it everywhere', async (t) => {
  const c = await cluster(t, 'retained');
  const pub = await client(c, 0, { clientId: 'r-pub' });
  for (let round = 0; round < 5; round++) {
    await pub.publishAsync(`status/dev-${round}`, `online-${round}`, { qos: 1, retain: true });
    const got: string[] = [];
    const s = await client(c, 1 + (round % 2), { clientId: `r-sub-${round}` }, (topic, p) => got.push(`${topic}=${p}`));
    await s.subscribeAsync(`status/dev-${round}`, { qos: 1 });
    t.true(await eventually(() => got.length === 1, 2000), `round ${round}`);
    t.deepEqual(got, [`status/dev-${round}=online-${round}`]);
  }
  const clearer = await client(c, 2, { clientId: 'r-clear' });
  await clearer.publishAsync('status/dev-0', '', { qos: 1, retain: true });
  for (const node of [0, 1, 2]) {
    const got: string[] = [];
    const s = await client(c, node, { clientId: `r-after-${node}` }, (topic) => got.push(topic));
    await s.subscribeAsync('status/#', { qos: 1 });
    await delay(200);
    t.deepEqual(got.sort(), ['status/dev-1', 'status/dev-2', 'status/dev-3', 'status/dev-4'], `node ${node}`);
  }
});

test('retained messages set on one topic from several nodes at once end the same on every node (the last in the broadcast order)', async (t) => {
  const c = await cluster(t, 'retained-race');
  const pubs = await Promise.all([0, 1, 2].map((n) => client(c, n, { clientId: `rr-${n}` })));
  await Promise.all(pubs.map(async (p, n) => {
    for (let i = 0; i < 30; i++) await p.publishAsync('race/topic', `${n}-${i}`, { qos: 1, retain: true });
  }));
  await delay(300);
  const seen: string[] = [];
  for (const node of [0, 1, 2]) {
    const got: string[] = [];
    const s = await client(c, node, { clientId: `rr-sub-${node}` }, (_t, p) => got.push(p.toString()));
    await s.subscribeAsync('race/topic', { qos: 1 });
    t.true(await eventually(() => got.length === 1));
    seen.push(got[0] as string);
  }
  t.is(new Set(seen).size, 1, `every node has the same retained message: ${seen.join(', ')}`);
});

test('a SUBACK waits until every node knows the new subscription: a node whose bus reader was cut off gets it before the SUBACK, so its publish right after is delivered', async (t) => {
  const c = await cluster(t, 'barrier');
  const got: string[] = [];
  const pub = await client(c, 2, { clientId: 'bar-pub' });
  for (let round = 0; round < 3; round++) {
    // Node c stops hearing the broadcast for a while: its reader connection is killed (it reconnects).
    const run = c.nodes[2]?.broker.clusterStatus()?.run as string;
    const list = await c.redis.command('CLIENT', 'LIST');
    const id = /id=(\d+) [^\n]*name=portcullis:[^ ]*:reader/.exec(list.split('\n').filter((l) => l.includes(`portcullis:${run}:reader`)).join('\n'))?.[1];
    t.truthy(id);
    await c.redis.command('CLIENT', 'KILL', 'ID', id as string);
    const s = await client(c, 0, { clientId: `bar-sub-${round}` }, (_t, p) => got.push(p.toString()));
    await s.subscribeAsync(`bar/${round}`, { qos: 1 });
    await pub.publishAsync(`bar/${round}`, `r${round}`, { qos: 1 });
    t.true(await eventually(() => got.includes(`r${round}`), 3000), `round ${round}`);
  }
});

test('a node that joins with a store of its own takes the retained messages from the others: all of them when new, and on coming back what was set, changed and cleared while it was away', async (t) => {
  const { redis, keyFile, nodes, clients } = await clusterFixture<InProcessNode>(t, (n) => n.broker.stop());
  const cfg = (id: string) => nodeConfig({ redisUrl: redis.url, keyFile, nodeId: id, name: 'retained-join' });
  const a = await startNode(cfg('a'));
  const b = await startNode(cfg('b'));
  nodes.push(a, b);
  const retainedOn = async (port: number, id: string): Promise<string[]> => {
    const got: string[] = [];
    const s = await connect(port, { clientId: id }, (topic, p) => got.push(`${topic}=${p}`));
    clients.push(s);
    await s.subscribeAsync('rj/#', { qos: 1 });
    await eventually(() => got.length >= 3, 3000);
    await delay(200); // nothing more comes
    return got.sort();
  };
  const pubA = await connect(a.port, { clientId: 'rj-pub-a' });
  clients.push(pubA);
  for (const [topic, value] of [['rj/1', 'one'], ['rj/2', 'two'], ['rj/3', 'three']]) await pubA.publishAsync(topic as string, value as string, { qos: 1, retain: true });

  // A node that joins later, its store empty.
  const storeD = new MemoryStore();
  let d = await startNode(cfg('d'), { store: storeD });
  nodes.push(d);
  t.deepEqual(await retainedOn(d.port, 'rj-sub-1'), ['rj/1=one', 'rj/2=two', 'rj/3=three']);

  // It stops; meanwhile one retained message is cleared, one replaced and one added elsewhere.
  await d.broker.stop();
  nodes.pop();
  const pubB = await connect(b.port, { clientId: 'rj-pub-b' });
  clients.push(pubB);
  await pubB.publishAsync('rj/1', '', { qos: 1, retain: true });
  await pubB.publishAsync('rj/2', 'two-b', { qos: 1, retain: true });
  await pubB.publishAsync('rj/4', 'four', { qos: 1, retain: true });
  // Back, on the store it kept (which still holds the old three).
  d = await startNode(cfg('d'), { store: storeD });
  nodes.push(d);
  t.deepEqual(await retainedOn(d.port, 'rj-sub-2'), ['rj/2=two-b', 'rj/3=three', 'rj/4=four']);
});

/** Publishes at QoS 1 one at a time and tells each PUBACK's reason code: 0x10 (No matching subscribers) when no node, this one or another, has a match. */
function pubacks(c: MqttClient): (topic: string) => Promise<number> {
  let last = -1;
  c.on('packetreceive', (p) => {
    if (p.cmd === 'puback') last = (p as { reasonCode?: number }).reasonCode ?? 0;
  });
  return async (topic) => {
    last = -1;
    await c.publishAsync(topic, 'x', { qos: 1 });
    return last;
  };
}

test("another node's interest is matched exactly: not by a leading wildcard on a $ topic, and no more once unsubscribed or once that node has left", async (t) => {
  const c = await cluster(t, 'exact');
  const pubackCode = pubacks(await client(c, 0, { clientId: 'x-pub' }));
  const received = () => c.nodes.map((n) => n.broker.clusterStatus()?.bus.received ?? 0);
  const onB = await client(c, 1, { clientId: 'x-b' });
  await onB.subscribeAsync(['#', '+/x'], { qos: 1 });
  let before = received();
  t.is(await pubackCode('$app/x'), 0x10, "node b's # and +/x do not match a $ topic [MQTT-4.7.2-1]");
  t.is(await pubackCode('app/x'), 0);
  await delay(100);
  t.is((received()[1] as number) - (before[1] as number), 1, 'only app/x went to node b');
  await onB.subscribeAsync('$app/#', { qos: 1 });
  t.is(await pubackCode('$app/x'), 0);
  await onB.unsubscribeAsync(['$app/#', '#', '+/x']);
  await delay(200); // the unsubscribe reaches node a on the broadcast stream
  before = received();
  t.is(await pubackCode('$app/x'), 0x10);
  t.is(await pubackCode('app/x'), 0x10);
  // A node that leaves: its clients' interest (plain and $share) goes with them.
  const onC = await client(c, 2, { clientId: 'x-c' });
  await onC.subscribeAsync(['left/#', '$share/g/left/+'], { qos: 1 });
  t.is(await pubackCode('left/1'), 0);
  await (c.nodes[2] as InProcessNode).broker.stop();
  t.true(await eventually(async () => (await pubackCode('left/1')) === 0x10, 5000), 'node a stops routing to the node that left');
  await delay(200);
  const after = received();
  t.is((after[0] as number) - (before[0] as number), 0);
  t.is((after[1] as number) - (before[1] as number), 0);
});

test('large messages cross nodes intact and in order: a turn over 4 MiB is cut into several frames, and a message over 4 MiB goes in a frame alone', async (t) => {
  const { redis, keyFile, nodes, clients } = await clusterFixture<InProcessNode>(t, (n) => n.broker.stop());
  const big = { limits: { maxPacketSize: 8 * 1024 * 1024 } };
  for (const id of ['a', 'b']) nodes.push(await startNode(nodeConfig({ redisUrl: redis.url, keyFile, nodeId: id, name: 'large' }, big)));
  const [a, b] = nodes as InProcessNode[];
  // Sizes around the frame limit; each payload is filled with its index, so a byte out of place shows.
  const sizes = [1500_000, 100, 1500_000, 1500_000, 5 * 1024 * 1024, 64, 2_000_000, 3_000_000, 10];
  const got: Buffer[] = [];
  const sub = await connect((b as InProcessNode).port, { clientId: 'large-sub' }, (_t, p) => got.push(p));
  clients.push(sub);
  await sub.subscribeAsync('large/x', { qos: 1 });
  const pub = await connect((a as InProcessNode).port, { clientId: 'large-pub' });
  clients.push(pub);
  await Promise.all(sizes.map((n, i) => pub.publishAsync('large/x', Buffer.alloc(n, i + 1), { qos: 1 })));
  t.true(await eventually(() => got.length >= sizes.length, 10_000), `${got.length} of ${sizes.length}`);
  t.is(got.length, sizes.length);
  for (let i = 0; i < sizes.length; i++) {
    const p = got[i] as Buffer;
    t.is(p.length, sizes[i] as number);
    t.true(p.equals(Buffer.alloc(sizes[i] as number, i + 1)), `message ${i} intact`);
  }
});

test('what a node has applied leaves its inbox: after a burst of QoS 0 and QoS 1 messages from another node, the inbox is empty again', async (t) => {
  const c = await cluster(t, 'trim');
  let got = 0;
  const s = await client(c, 1, { clientId: 't-sub' }, () => got++);
  await s.subscribeAsync('trim/#', { qos: 1 });
  const pub = await client(c, 0, { clientId: 't-pub' });
  const sends: Promise<unknown>[] = [];
  for (let n = 0; n < 400; n++) sends.push(pub.publishAsync(`trim/${n % 3}`, String(n), { qos: n % 2 === 0 ? 0 : 1 }));
  await Promise.all(sends);
  t.true(await eventually(() => got >= 400, 10_000), `received ${got}`);
  const home = (c.nodes[1] as InProcessNode).broker.clusterStatus()?.partitions[0] as string;
  const inbox = new Names('trim').inbox(home);
  // The entries were there: the stream exists (a trim does not delete it).
  t.is(await c.redis.command('EXISTS', inbox), '1');
  t.true(await eventually(async () => (await c.redis.command('XLEN', inbox)) === '0', 5000), `left in the inbox: ${await c.redis.command('XLEN', inbox)}`);
});

test('a stream from another node follows subscription changes at once: unsubscribe, a new subscriber, a new QoS', async (t) => {
  // The receiving node keeps the last match of a remote message for the next one with the same
  // topic and publisher; any subscription change must end that (a kept match would go on
  // delivering to the unsubscribed client, miss the new one, and keep the old QoS).
  const c = await cluster(t, 'memo');
  const b = 1;
  const s1got: number[] = [];
  const s2qos: number[] = [];
  const s3got: number[] = [];
  const s1 = await client(c, b, { clientId: 'memo-1' }, (_t, p) => s1got.push(Number(p)));
  const s2 = await client(c, b, { clientId: 'memo-2' });
  s2.on('message', (_t, _p, packet) => s2qos.push(packet.qos));
  await s1.subscribeAsync('memo/#', { qos: 0 });
  await s2.subscribeAsync('memo/#', { qos: 0 });
  const pub = await client(c, 0, { clientId: 'memo-pub' });
  await delay(300); // node b's interest has reached node a
  let n = 0;
  const timer = setInterval(() => {
    for (let k = 0; k < 5; k++) pub.publish('memo/x', String(n++), { qos: 1 });
  }, 5);
  t.teardown(() => clearInterval(timer));
  t.true(await eventually(() => s1got.length > 50 && s2qos.length > 50), `${s1got.length} ${s2qos.length}`);

  await s1.unsubscribeAsync('memo/#');
  await delay(150); // what was already on its way
  const kept = s1got.length;
  const s3 = await client(c, b, { clientId: 'memo-3' }, (_t, p) => s3got.push(Number(p)));
  await s3.subscribeAsync('memo/#', { qos: 0 });
  await s2.subscribeAsync('memo/#', { qos: 1 });
  const qosFrom = s2qos.length;
  await delay(500);
  clearInterval(timer);
  t.is(s1got.length, kept, 'nothing after the unsubscribe');
  t.true(s3got.length > 50, `the new subscriber gets the stream (${s3got.length})`);
  await delay(200);
  const after = s2qos.slice(qosFrom + 20); // past what was on its way at the old QoS
  t.true(after.length > 30 && after.every((q) => q === 1), `the new QoS applies: ${after.slice(0, 40)}`);
});
