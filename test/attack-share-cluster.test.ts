/**
 * Attacks on `$share` groups across nodes (docs/cluster.md, "`$share` groups across nodes") with
 * real clients on three in-process nodes and one redis-server on loopback: members that leave
 * holding more than the other members can queue, a client that ends its own sessions while Redis
 * is away, members whose sessions move between nodes.
 */
import test from 'ava';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import type { ConfigInput } from '../src/config/schema.ts';
import { pubackCode } from './authz-support.ts';
import { clusterFixture, delay, eventually, nodeConfig, startNode, threeNodes, type InProcessNode } from './cluster-support.ts';

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

function missing(got: Got[], total: number): number[] {
  const have = new Set(got.map((g) => g.n));
  return Array.from({ length: total }, (_, i) => i).filter((i) => !have.has(i));
}

/** A client that takes messages and never acknowledges them (its Receive Maximum is 1): the rest queue for it. */
const STALLED = { properties: { receiveMaximum: 1 }, customHandleAcks: () => undefined } as const;

test('a member that ends holding more group messages than the member on another node can queue: the passed copies are kept within the in-transit allowance, as copies sent to it directly are, not refused at its queue limit', async (t) => {
  t.timeout(60_000);
  // Node c's members may queue 50 messages; node b's stalled member holds 300 when it leaves.
  const f = await nodesWith(t, 'as-allow', [{}, {}, { limits: { maxQueuedMessages: 50 } } as Partial<ConfigInput>]);
  const atC: Got[] = [];
  const m1 = await client(f, 1, { clientId: 'as-al-m1', ...STALLED });
  await m1.subscribeAsync('$share/g/as/al', { qos: 1 });
  const m2 = await client(f, 2, { clientId: 'as-al-m2', properties: { receiveMaximum: 10 } }, atC);
  await m2.subscribeAsync('$share/g/as/al', { qos: 1 });
  const pub = await client(f, 0, { clientId: 'as-al-pub' });
  await delay(300);
  const TOTAL = 600;
  for (let i = 0; i < TOTAL; i++) t.is(await pubackCode(pub, 'as/al', String(i)), 0);
  await delay(300);
  t.is(shares(f.nodes[1]).passed, 0, 'nothing passed on before the member leaves');
  m1.end(true); // its session ends: node b has no other member, so its 300 messages go to node c at once
  await eventually(() => missing(atC, TOTAL).length === 0, 5000);
  t.is(shares(f.nodes[1]).passed, TOTAL / 2);
  const lost = missing(atC, TOTAL);
  const refused = (f.nodes[2] as InProcessNode).audit.records.filter((r) => r.action === 'queue-full').length;
  t.deepEqual(lost.slice(0, 20), [], `${lost.length} of the messages acknowledged to the publisher never reached the group (${refused} queue-full records on node c)`);
});

// A KNOWN BUG, outside this branch's files (src/broker/delivery.ts deliver, src/broker/migration.ts
// depart): a session whose expiry interval is 0, taken over by a CONNECT with clean start 0 on
// another node, is left on its old node without a connection until the move commits, and
// Delivery.deliver drops what arrives for a non-persistent session without a connection; the new
// node's arriving copy skips what the old node "applied". `test.failing` passes while the bug is
// there: make it a plain `test` once it is fixed.
for (const filter of ['as/mv', '$share/g/as/mv']) {
  test.failing(`a session with expiry 0 taken over (clean start 0) by a connection on another node under a QoS 1 stream loses none of the messages acknowledged to the publisher (${filter})`, async (t) => {
    t.timeout(60_000);
    const c = await threeNodes(t, `as-mv${filter.length}`);
    const got: Got[] = [];
    const opts = { clientId: 'as-mv-mover', clean: false };
    const s1 = await client(c, 1, opts, got, 1);
    await s1.subscribeAsync(filter, { qos: 1 });
    const pub = await client(c, 0, { clientId: 'as-mv-pub' });
    await delay(300);
    const TOTAL = 2000;
    const codes: Promise<number>[] = [];
    let n = 0;
    const timer = setInterval(() => {
      for (let k = 0; k < 10 && n < TOTAL; k++) codes.push(pubackCode(pub, 'as/mv', String(n++)));
      if (n >= TOTAL) clearInterval(timer);
    }, 2);
    t.teardown(() => clearInterval(timer));
    await eventually(() => got.length > 300);
    await client(c, 2, opts, got, 2); // takes the session over from node b
    await eventually(() => n >= TOTAL, 20_000);
    t.deepEqual((await Promise.all(codes)).filter((r) => r !== 0), [], 'every publish acknowledged');
    await eventually(() => missing(got, TOTAL).length === 0, 5000);
    const lost = missing(got, TOTAL);
    t.deepEqual(lost.slice(0, 20), [], `${lost.length} acknowledged and never delivered`);
  });
}

// A KNOWN BUG, outside this branch's files: the messages a session holds lose the `$share` group
// they came through when the session moves to another node (Delivery.enqueueMoved drops it, and a
// session read from a snapshot or the store has none: StoredSession does not record it). When the
// session ends there, Delivery.sessionEnded has nothing to hand to another member.
test.failing('a $share member that moved to another node and then ends (clean start) hands the messages it held to another member, as it does when it has not moved', async (t) => {
  t.timeout(60_000);
  const c = await threeNodes(t, 'as-ended');
  const atM2: Got[] = [];
  const persistent = { clientId: 'as-en-m1', clean: false, properties: { sessionExpiryInterval: 600, receiveMaximum: 1 }, customHandleAcks: () => undefined };
  const m1 = await client(c, 1, persistent);
  await m1.subscribeAsync('$share/g/as/en', { qos: 1 });
  const m2 = await client(c, 2, { clientId: 'as-en-m2' }, atM2);
  await m2.subscribeAsync('$share/g/as/en', { qos: 1 });
  const pub = await client(c, 0, { clientId: 'as-en-pub' });
  await delay(300);
  const TOTAL = 40;
  for (let i = 0; i < TOTAL; i++) t.is(await pubackCode(pub, 'as/en', String(i)), 0);
  await delay(300);
  m1.end(true); // offline on node b, holding its half
  await delay(200);
  const moved = await client(c, 0, persistent); // the session moves to node a
  await delay(300);
  moved.end(true);
  await delay(200);
  await client(c, 0, { clientId: 'as-en-m1', clean: true }); // and ends there
  await eventually(() => missing(atM2, TOTAL).length === 0, 3000);
  const lost = missing(atM2, TOTAL);
  t.deepEqual(lost, [], `${lost.length} messages the moved member held went to no member`);
});

test('a CONNECT on the node a session is leaving, while it moves to another node: one of the two connections is left, and it is the one the session\'s messages reach (10 races)', async (t) => {
  t.timeout(60_000);
  const c = await threeNodes(t, 'as-race');
  const persistent = (clientId: string) => ({ clientId, clean: false, properties: { sessionExpiryInterval: 600 } });
  const open = (node: number, clientId: string) => client(c, node, persistent(clientId)).catch(() => null);
  const pub = await client(c, 0, { clientId: 'as-race-pub' });
  const outcomes: string[] = [];
  for (let k = 0; k < 10; k++) {
    const id = `as-race-${k}`;
    const first = await client(c, 1, persistent(id));
    await first.subscribeAsync(`as/race/${k}`, { qos: 1 });
    // On node c (a takeover from node b), and at once on node b again: node b's own CONNECT comes
    // while the session is on its way to node c.
    const onC = open(2, id);
    await delay(k % 5);
    const onB = open(1, id);
    const pair = await Promise.all([onC, onB]);
    await delay(300);
    const got: [number, number] = [0, 0];
    pair.forEach((cl, i) => cl?.on('message', () => (got[i as 0 | 1] += 1)));
    t.is(await pubackCode(pub, `as/race/${k}`, 'x'), 0);
    await delay(200);
    const live = pair.map((cl) => (cl !== null && cl.connected ? 1 : 0));
    outcomes.push(`${k}: live c${live[0]} b${live[1]}, got c${got[0]} b${got[1]}`);
  }
  const bad = outcomes.filter((o) => !/live c1 b0, got c1 b0|live c0 b1, got c0 b1/.test(o));
  t.deepEqual(bad, [], `one connection left per race, and it gets the message:\n${outcomes.join('\n')}`);
});
