/**
 * Flow control across nodes (docs/cluster.md, "Flow control across nodes"): a subscriber on node
 * b that falls behind a publisher on node a holds that publisher, as it would on one node. A burst
 * to a healthy subscriber arrives complete; a subscriber that stops reading or acking holds the
 * publisher no longer than limits.flowControl.maxHoldMs, whichever node's clock runs out first.
 */
import test from 'ava';
import type { IClientOptions, IPublishPacket, MqttClient } from 'mqtt';
import mqtt from 'mqtt';
import type { ConfigInput } from '../src/config/schema.ts';
import type { RedisServer } from './redis-server.ts';
import { clusterFixture, connect, eventually, nodeConfig, startNode, type InProcessNode } from './cluster-support.ts';
import { rawConnect } from './helpers.ts';
import { PacketType, encodeConnect, frame, ofType, packetsOf, waitForType } from './raw-mqtt.ts';

interface Pair {
  redis: RedisServer;
  a: InProcessNode;
  b: InProcessNode;
  clients: MqttClient[];
}

/** Two nodes on one Redis; `limits` per node (a, then b). */
async function pair(t: { teardown(fn: () => Promise<void> | void): void }, name: string, limits: [Record<string, unknown>, Record<string, unknown>] = [{}, {}]): Promise<Pair> {
  const { redis, keyFile, nodes, clients } = await clusterFixture<InProcessNode>(t, (n) => n.broker.stop());
  for (const [i, id] of ['a', 'b'].entries()) {
    nodes.push(await startNode(nodeConfig({ redisUrl: redis.url, keyFile, nodeId: id, name }, { limits: limits[i] } as Partial<ConfigInput>)));
  }
  return { redis, a: nodes[0] as InProcessNode, b: nodes[1] as InProcessNode, clients };
}

function collector(port: number, options: IClientOptions): Promise<{ client: MqttClient; got: IPublishPacket[] }> {
  return new Promise((resolve, reject) => {
    const got: IPublishPacket[] = [];
    const client = mqtt.connect({ host: '127.0.0.1', port, reconnectPeriod: 0, ...options });
    client.on('message', (_t, _p, packet) => got.push(packet));
    client.once('connect', () => resolve({ client, got }));
    client.once('error', reject);
  });
}

const flow = (n: InProcessNode) => n.broker.clusterStatus()?.flow ?? { holdsSent: 0, releasesSent: 0, holdsApplied: 0, holdsExpired: 0, holdsRefused: 0, held: 0, inTransitBytes: 0 };

for (const version of [4, 5] as const) {
  test(`a burst of 10,000 QoS 1 messages published on node a reaches a healthy subscriber on node b complete and in order (MQTT.js ${version === 5 ? 'v5' : 'v3.1.1'})`, async (t) => {
    const c = await pair(t, `burst-${version}`);
    const N = 10_000;
    const sub = await collector(c.b.port, { clientId: `x-sub-${version}`, protocolVersion: version });
    c.clients.push(sub.client);
    await sub.client.subscribeAsync('xburst/js', { qos: 1 });
    const pub = await connect(c.a.port, { clientId: `x-pub-${version}`, protocolVersion: version });
    c.clients.push(pub);
    const acks: Promise<unknown>[] = [];
    for (let i = 0; i < N; i++) acks.push(pub.publishAsync('xburst/js', String(i), { qos: 1 }));
    await Promise.all(acks);
    t.true(await eventually(() => sub.got.length >= N, 60_000, 50), `received ${sub.got.length} of ${N}`);
    t.is(sub.got.length, N);
    t.true(
      sub.got.every((p, i) => p.payload.toString() === String(i)),
      'in order',
    );
    t.is(c.b.broker.stats.queueRefusedQos12, 0, 'nothing refused for lack of room on the subscriber\'s node');
    if (version === 4) {
      // A v3.1.1 publisher has no Receive Maximum: only flow control can have slowed it down.
      t.true(flow(c.b).holdsSent > 0, `node b asked node a to hold the publisher (${JSON.stringify(flow(c.b))})`);
      t.true(flow(c.a).holdsApplied > 0, `node a held it (${JSON.stringify(flow(c.a))})`);
    }
    t.true(await eventually(() => flow(c.a).held === 0, 5000), 'every hold was released');
  });
}

/** A v3.1.1 subscriber on a raw socket that reads what it is sent and acknowledges nothing. */
async function stuckSubscriber(t: { teardown(fn: () => void): void }, port: number, clientId: string, filter: string, clean = true) {
  const stuck = await rawConnect(port);
  t.teardown(() => stuck.socket.destroy());
  stuck.write(encodeConnect({ clientId, version: 4, clean }));
  await waitForType(stuck, PacketType.CONNACK);
  stuck.write(frame(PacketType.SUBSCRIBE, 0x02, Buffer.from([0, 1, 0, filter.length, ...Buffer.from(filter), 1])));
  await waitForType(stuck, PacketType.SUBACK);
  return stuck;
}

test('a subscriber on node b that never acknowledges holds the publisher on node a only up to limits.flowControl.maxHoldMs', async (t) => {
  // stallMs far away: the subscriber is let go for holding too long (maxHoldMs), not for stalling.
  const limits = { flowControl: { maxHoldMs: 1500, stallMs: 60_000 }, maxQueuedMessages: 200 };
  const c = await pair(t, 'stuck', [limits, limits]);
  const stuck = await stuckSubscriber(t, c.b.port, 'x-stuck', 'xstuck');
  const healthy = await collector(c.b.port, { clientId: 'x-healthy', protocolVersion: 4 });
  c.clients.push(healthy.client);
  await healthy.client.subscribeAsync('xstuck', { qos: 1 });
  const pub = await connect(c.a.port, { clientId: 'x-stuck-pub', protocolVersion: 4 });
  c.clients.push(pub);
  const N = 3000;
  const started = Date.now();
  const acks: Promise<unknown>[] = [];
  for (let i = 0; i < N; i++) acks.push(pub.publishAsync('xstuck', Buffer.alloc(64, i % 256), { qos: 1 }));
  // The publisher is held while the stuck subscriber's queue is over its high-water mark.
  t.true(await eventually(() => flow(c.a).held > 0, 5000, 5), `node a held the publisher (${JSON.stringify(flow(c.a))})`);
  await Promise.all(acks);
  const took = Date.now() - started;
  t.true(took < 1500 + 3000, `every message was acknowledged within maxHoldMs and some slack (${took} ms)`);
  t.true(await eventually(() => healthy.got.length >= N, 20_000), `the healthy subscriber got ${healthy.got.length} of ${N}`);
  t.true(ofType(packetsOf(stuck), PacketType.PUBLISH).length > 0, 'the stuck subscriber was sent messages');
  t.true(c.b.broker.stats.queueRefusedQos12 > 0, "the stuck subscriber's overflow is refused and counted on its node");
  // The release crosses the bus (a loaded machine may take a moment).
  t.true(await eventually(() => flow(c.a).held === 0, 5000), `no hold is left on node a (${JSON.stringify(flow(c.a))})`);
  // Too slow once: it holds nobody for a while (the cooldown), so a second burst is not held.
  const second = Date.now();
  const more: Promise<unknown>[] = [];
  for (let i = 0; i < 1000; i++) more.push(pub.publishAsync('xstuck', Buffer.alloc(64, 1), { qos: 1 }));
  await Promise.all(more);
  t.true(Date.now() - second < 1500, `the second burst was not held again (${Date.now() - second} ms)`);
});

test("node a lets its publisher go after its own limits.flowControl.maxHoldMs, even while node b would hold it far longer (a release that never comes)", async (t) => {
  // Node b would hold for a minute; node a allows one second.
  const c = await pair(t, 'backstop', [{ flowControl: { maxHoldMs: 1000 } }, { flowControl: { maxHoldMs: 60_000, stallMs: 60_000 }, maxQueuedMessages: 200 }]);
  await stuckSubscriber(t, c.b.port, 'y-stuck', 'ystuck');
  const pub = await connect(c.a.port, { clientId: 'y-pub', protocolVersion: 4 });
  c.clients.push(pub);
  const started = Date.now();
  const acks: Promise<unknown>[] = [];
  for (let i = 0; i < 2000; i++) acks.push(pub.publishAsync('ystuck', Buffer.alloc(64, 2), { qos: 1 }));
  t.true(await eventually(() => flow(c.a).held > 0, 5000, 5), `node a held the publisher (${JSON.stringify(flow(c.a))})`);
  await Promise.all(acks);
  const took = Date.now() - started;
  t.true(took < 1000 + 3000, `acknowledged within node a's maxHoldMs and some slack (${took} ms)`);
  t.true(flow(c.a).holdsExpired > 0, 'node a ended the hold itself');
  t.is(flow(c.b).releasesSent, 0, 'node b never released it');
});

test('a persistent subscriber that goes offline gives back its share of the in-transit allowance (its over-limit entries stay, under its quota)', async (t) => {
  // A long hold allowed, so that what is on the bus when the hold is sent lands in the allowance.
  const limits = { flowControl: { maxHoldMs: 60_000, stallMs: 60_000 }, maxQueuedMessages: 50 };
  const c = await pair(t, 'refund', [limits, limits]);
  const stuck = await stuckSubscriber(t, c.b.port, 'z-stuck', 'zrefund', false);
  const pub = await connect(c.a.port, { clientId: 'z-pub', protocolVersion: 4 });
  c.clients.push(pub);
  for (let i = 0; i < 2000; i++) void pub.publishAsync('zrefund', Buffer.alloc(64, 3), { qos: 1 }).catch(() => undefined);
  t.true(await eventually(() => flow(c.b).inTransitBytes > 0, 10_000, 5), `node b kept messages in transit beyond the queue limit (${JSON.stringify(flow(c.b))})`);
  stuck.socket.destroy();
  t.true(await eventually(() => flow(c.b).inTransitBytes === 0, 5000), `the allowance is given back when the session goes offline (${JSON.stringify(flow(c.b))})`);
});
