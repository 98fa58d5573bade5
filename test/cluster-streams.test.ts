/**
 * Streams across nodes under change, over real sockets on three nodes and one Redis on loopback:
 * session takeovers, a Redis pause, shared groups, no-local after a move, retained and plain
 * messages interleaved. They attack the receive-path match memo (delivery.ts RemoteMemo), the
 * outbox's frame deferral (outbox.ts inFlight) and the PUBACK loop (connection.ts sendAcks).
 */
import test, { type ExecutionContext } from 'ava';
import mqtt, { type MqttClient } from 'mqtt';
import { pubackCode } from './authz-support.ts';
import { type connect, delay, eventually, threeNodes, type InProcessNode, type ThreeNodes } from './cluster-support.ts';

type Cluster = ThreeNodes;
const cluster = threeNodes;

async function client(c: Cluster, node: number, options: Parameters<typeof connect>[1] = {}, into?: { got: Got[]; conn: number }): Promise<MqttClient> {
  // The recorder is attached before CONNACK: what a resumed session gets comes in the same read.
  const cl = await new Promise<MqttClient>((resolve, reject) => {
    const m = mqtt.connect({ host: '127.0.0.1', port: (c.nodes[node] as InProcessNode).port, reconnectPeriod: 0, connectTimeout: 8000, protocolVersion: 5, ...options });
    if (into !== undefined) record(m, into.got, into.conn);
    m.once('connect', () => resolve(m));
    m.once('error', (err) => {
      m.end(true);
      reject(err);
    });
  });
  c.clients.push(cl);
  return cl;
}

interface Got {
  n: number;
  dup: boolean;
  qos: number;
  ids: number[] | undefined;
  conn: number;
}

/** Records every PUBLISH a connection receives. */
function record(cl: MqttClient, into: Got[], conn: number): void {
  cl.on('message', (_t, p, packet) => {
    const id = packet.properties?.subscriptionIdentifier;
    into.push({ n: Number(p), dup: packet.dup, qos: packet.qos, ids: id === undefined ? undefined : Array.isArray(id) ? id : [id], conn });
  });
}

/** The group copies node `i` passed on to another node (its member had left). */
function passed(c: Cluster, i: number): number {
  return (c.nodes[i] as InProcessNode).broker.clusterStatus()?.shares.passed ?? 0;
}

function problems(got: Got[], total: number, subId: number): string[] {
  const out: string[] = [];
  const seen = new Map<number, number>();
  let last = -1;
  for (const g of got) {
    if (!g.dup) {
      const k = seen.get(g.n) ?? 0;
      if (k > 0) out.push(`${g.n} delivered again without DUP (conn ${g.conn})`);
      seen.set(g.n, k + 1);
      if (g.n < last) out.push(`${g.n} after ${last} (conn ${g.conn})`);
      if (g.n > last) last = g.n;
    }
    if (g.qos !== 1) out.push(`${g.n} at QoS ${g.qos}`);
    if (g.ids === undefined || !g.ids.includes(subId)) out.push(`${g.n} without subscription id ${subId}: ${JSON.stringify(g.ids)}`);
  }
  const all = new Set(got.map((g) => g.n));
  for (let i = 0; i < total; i++) if (!all.has(i)) out.push(`${i} lost`);
  return out;
}

/** QoS 1 publishes of "0", "1", ... to `topic` from `pub`, ten every 2 ms up to `total`: `sent()` counts them, `codes` holds their PUBACK reason codes. */
function stream(t: { teardown(fn: () => void): void }, pub: MqttClient, topic: string, total: number): { sent(): number; codes: Promise<number>[] } {
  const codes: Promise<number>[] = [];
  let n = 0;
  const timer = setInterval(() => {
    for (let k = 0; k < 10 && n < total; k++) codes.push(pubackCode(pub, topic, String(n++)));
    if (n >= total) clearInterval(timer);
  }, 2);
  t.teardown(() => clearInterval(timer));
  return { sent: () => n, codes };
}

/** What a $share group (subscription id 4) got of messages 0 .. total-1: each once, none lost, only the group's subscription id. */
function checkGroup(t: ExecutionContext, group: Got[], total: number): void {
  const count = new Map<number, number>();
  for (const g of group) count.set(g.n, (count.get(g.n) ?? 0) + 1);
  const lost = Array.from({ length: total }, (_, i) => i).filter((i) => !count.has(i));
  const twice = [...count].filter(([, k]) => k > 1).map(([x]) => x);
  t.deepEqual(lost.slice(0, 20), [], `${lost.length} lost for the group`);
  t.deepEqual(twice.slice(0, 20), [], `${twice.length} delivered twice to the group`);
  t.true(group.every((g) => g.ids?.length === 1 && g.ids[0] === 4), 'group deliveries carry only the group subscription id');
}

/** A QoS 1 stream from node 0 to a persistent session (subscription id 7 on `filter`, which matches rv/move) taken over from node 1 to node 2 and back to node 1. */
async function streamThroughTakeovers(t: { teardown(fn: () => Promise<void> | void): void }, name: string, filter = 'rv/move'): Promise<{ got: Got[]; total: number; refused: number[][] }> {
  const c = await cluster(t, name);
  const got: Got[] = [];
  const opts = { clientId: `${name}-mover`, clean: false, properties: { sessionExpiryInterval: 600 } };
  const s1 = await client(c, 1, opts, { got: got, conn: 1 });
  await s1.subscribeAsync(filter, { qos: 1, properties: { subscriptionIdentifier: 7 } });
  const pub = await client(c, 0, { clientId: `${name}-pub` });
  await delay(300);
  const TOTAL = 3000;
  const { sent, codes } = stream(t, pub, 'rv/move', TOTAL);
  await eventually(() => got.length > 300);
  const s2 = await client(c, 2, opts, { got: got, conn: 2 });
  await eventually(() => got.some((g) => g.conn === 2 && g.n > sent() - 100), 5000);
  const s3 = await client(c, 1, opts, { got: got, conn: 3 });
  await eventually(() => sent() >= TOTAL, 20_000);
  const results = await Promise.all(codes);
  const refused = results.map((r, i) => [i, r]).filter(([, r]) => r !== 0);
  await eventually(() => new Set(got.map((g) => g.n)).size >= TOTAL, 10_000);
  await delay(300);
  return { got, total: TOTAL, refused };
}

test('a persistent session taken over between nodes under a QoS 1 stream loses none of the messages acknowledged to the publisher, doubles none without DUP, keeps their order', async (t) => {
  t.timeout(60_000);
  const { got, total, refused } = await streamThroughTakeovers(t, 'rv-loss');
  t.deepEqual(refused, [], 'every publish acknowledged');
  const bad = problems(got, total, 7).filter((p) => !p.includes('subscription id'));
  t.deepEqual(bad.slice(0, 30), [], `${bad.length} problems; received ${got.length}`);
});

test('a persistent $share member taken over between nodes under a QoS 1 stream: the group loses none of the messages acknowledged to the publisher and doubles none without DUP', async (t) => {
  t.timeout(60_000);
  // While the member moves, the publishing node sends each group copy to the old node or the new
  // one; copies the arriving session collected were sent to it alone and must not be filtered as
  // already delivered by the old node (they were lost: 4 to 29 of 3,000 in two of three runs).
  const { got, total, refused } = await streamThroughTakeovers(t, 'rv-share-move', '$share/g/rv/move');
  t.deepEqual(refused, [], 'every publish acknowledged');
  // Order within a group is not promised across a move (a copy passed on comes after later ones).
  const bad = problems(got, total, 7).filter((p) => !/ after \d+ /.test(p));
  t.deepEqual(bad.slice(0, 30), [], `${bad.length} problems; received ${got.length}`);
});

test('a persistent session taken over between nodes: the QoS 1 messages queued for it while it moved keep their v5 subscription identifier', async (t) => {
  t.timeout(60_000);
  const { got } = await streamThroughTakeovers(t, 'rv-subid');
  const without = got.filter((g) => g.ids === undefined || !g.ids.includes(7)).map((g) => `${g.n}@conn${g.conn}`);
  t.deepEqual(without.slice(0, 20), [], `${without.length} of ${got.length} deliveries without subscription id 7`);
});

test('Redis paused (CLIENT PAUSE WRITE) under a QoS 1 stream to another node: every PUBACK comes, every message acknowledged with 0 is delivered, in order', async (t) => {
  t.timeout(60_000);
  const c = await cluster(t, 'rv-pause');
  const got: Got[] = [];
  const sub = await client(c, 2, { clientId: 'rv-paused-sub', clean: false, properties: { sessionExpiryInterval: 600 } }, { got: got, conn: 1 });
  await sub.subscribeAsync('rv/pause', { qos: 1, properties: { subscriptionIdentifier: 9 } });
  const pub = await client(c, 0, { clientId: 'rv-pause-pub' });
  await delay(300);
  const TOTAL = 2500;
  const { sent, codes } = stream(t, pub, 'rv/pause', TOTAL);
  await eventually(() => sent() > 500);
  await c.redis.command('CLIENT', 'PAUSE', '1200', 'WRITE');
  await eventually(() => sent() >= TOTAL, 30_000);
  const results = await Promise.race([Promise.all(codes), delay(15_000).then(() => null)]);
  t.not(results, null, 'every publish got its PUBACK');
  if (results === null) return;
  const ok = results.map((r, i) => (r === 0 ? i : -1)).filter((i) => i >= 0);
  t.true(ok.length > 0);
  const have = () => new Set(got.map((g) => g.n));
  await eventually(() => ok.every((i) => have().has(i)), 10_000);
  const h = have();
  const missing = ok.filter((i) => !h.has(i));
  t.deepEqual(missing.slice(0, 20), [], `${missing.length} acknowledged (0x00) but never delivered`);
  const bad = problems(got, 0, 9);
  t.deepEqual(bad.slice(0, 20), [], `${bad.length} problems; acked ${ok.length}, refused ${results.length - ok.length}`);
});

test('a remote stream to a topic with a plain subscriber and a $share group across nodes: the group gets each message once, the plain subscriber all, and a member that leaves mid-stream loses nothing for the group', async (t) => {
  t.timeout(60_000);
  const c = await cluster(t, 'rv-share');
  const plain: Got[] = [];
  const g1: Got[] = [];
  const g2: Got[] = [];
  const p = await client(c, 1, { clientId: 'rv-plain' }, { got: plain, conn: 1 });
  await p.subscribeAsync('rv/sh', { qos: 1, properties: { subscriptionIdentifier: 3 } });
  const m1 = await client(c, 1, { clientId: 'rv-m1' }, { got: g1, conn: 1 });
  await m1.subscribeAsync('$share/g/rv/sh', { qos: 1, properties: { subscriptionIdentifier: 4 } });
  const m2 = await client(c, 2, { clientId: 'rv-m2' }, { got: g2, conn: 2 });
  await m2.subscribeAsync('$share/g/rv/sh', { qos: 1, properties: { subscriptionIdentifier: 4 } });
  const pub = await client(c, 0, { clientId: 'rv-share-pub' });
  await delay(300);
  const TOTAL = 1500;
  const { sent, codes } = stream(t, pub, 'rv/sh', TOTAL);
  await eventually(() => sent() > 600);
  await m1.unsubscribeAsync('$share/g/rv/sh');
  await eventually(() => sent() >= TOTAL, 20_000);
  t.deepEqual((await Promise.all(codes)).filter((r) => r !== 0), [], 'every publish acknowledged');
  await eventually(() => plain.length >= TOTAL && new Set([...g1, ...g2].map((g) => g.n)).size >= TOTAL, 10_000);
  await delay(300);
  t.deepEqual(problems(plain, TOTAL, 3).slice(0, 20), []);
  checkGroup(t, [...g1, ...g2], TOTAL);
  t.log(`node b passed on ${passed(c, 1)} group copies that arrived after its member left`);
});

test('a $share member whose clean session ends (DISCONNECT) mid-stream, holding messages it has not acknowledged, on a node with no other member: those and what still arrives for it go to the member on another node, once each', async (t) => {
  t.timeout(60_000);
  const c = await cluster(t, 'rv-share-dc');
  const g1: Got[] = [];
  const g2: Got[] = [];
  // m1 acknowledges until it stalls, shortly before it leaves: then it holds up to its receive
  // maximum in flight on node b, and node b queues the rest for it.
  let stalled = false;
  const m1 = await client(c, 1, { clientId: 'rv-dc-m1', properties: { receiveMaximum: 5 }, customHandleAcks: (_topic, _payload, _packet, done) => (stalled ? undefined : done(0)) }, { got: g1, conn: 1 });
  await m1.subscribeAsync('$share/g/rv/dc', { qos: 1, properties: { subscriptionIdentifier: 4 } });
  const m2 = await client(c, 2, { clientId: 'rv-dc-m2' }, { got: g2, conn: 2 });
  await m2.subscribeAsync('$share/g/rv/dc', { qos: 1, properties: { subscriptionIdentifier: 4 } });
  const pub = await client(c, 0, { clientId: 'rv-dc-pub' });
  await delay(300);
  const TOTAL = 1500;
  const { sent, codes } = stream(t, pub, 'rv/dc', TOTAL);
  await eventually(() => sent() > 500);
  stalled = true;
  await delay(100);
  await m1.endAsync(); // DISCONNECT: the session (clean start, no expiry) ends on node b, its only member there
  await eventually(() => sent() >= TOTAL, 20_000);
  t.deepEqual((await Promise.all(codes)).filter((r) => r !== 0), [], 'every publish acknowledged');
  await eventually(() => new Set([...g1, ...g2].map((g) => g.n)).size >= TOTAL, 10_000);
  await delay(300);
  checkGroup(t, [...g1, ...g2], TOTAL);
  t.log(`node b passed on ${passed(c, 1)} group copies`);
});

test('no-local across a session move: a client that publishes on one node, then moves its session to another, gets none of its own messages there', async (t) => {
  t.timeout(60_000);
  const c = await cluster(t, 'rv-nolocal');
  const opts = { clientId: 'rv-self', clean: false, properties: { sessionExpiryInterval: 600 } };
  const own: Got[] = [];
  const other: Got[] = [];
  const watcher = await client(c, 1, { clientId: 'rv-watch' }, { got: other, conn: 1 });
  await watcher.subscribeAsync('rv/nl', { qos: 1 });
  const a = await client(c, 0, opts, { got: own, conn: 1 });
  await a.subscribeAsync('rv/nl', { qos: 1, nl: true, properties: { subscriptionIdentifier: 5 } });
  await delay(300);
  // Keep the receiving node's memo warm with this topic and this publisher.
  for (let i = 0; i < 200; i++) a.publish('rv/nl', String(i), { qos: 1 });
  const b = await client(c, 1, opts, { got: own, conn: 2 }); // the session (with its no-local subscription) moves to node 1
  const sends: Promise<number>[] = [];
  for (let i = 200; i < 600; i++) sends.push(pubackCode(b, 'rv/nl', String(i)));
  await Promise.all(sends);
  await eventually(() => other.length >= 600, 10_000);
  await delay(300);
  t.deepEqual(own.map((g) => g.n).slice(0, 20), [], 'no-local: the publisher gets none of its own messages');
});

test('one publisher alternating retained and plain QoS 1 messages on one topic: a subscriber on another node gets them in order, once each', async (t) => {
  t.timeout(60_000);
  const c = await cluster(t, 'rv-retain');
  const got: Got[] = [];
  const sub = await client(c, 2, { clientId: 'rv-ret-sub' }, { got, conn: 1 });
  await sub.subscribeAsync('rv/ret', { qos: 1, properties: { subscriptionIdentifier: 12 } });
  const pub = await client(c, 0, { clientId: 'rv-ret-pub' });
  await delay(300);
  const TOTAL = 600;
  const codes: Promise<number>[] = [];
  for (let i = 0; i < TOTAL; i++) {
    codes.push(
      new Promise((resolve) => pub.publish('rv/ret', String(i), { qos: 1, retain: i % 3 === 0 }, (err) => resolve(err ? -1 : 0))),
    );
    if (i % 20 === 19) await delay(2);
  }
  const results = await Promise.all(codes);
  t.deepEqual(results.filter((r) => r !== 0), []);
  await eventually(() => got.length >= TOTAL, 10_000);
  await delay(300);
  const bad = problems(got, TOTAL, 12);
  t.deepEqual(bad.slice(0, 20), [], `${bad.length} problems; received ${got.length}`);
});
