/**
 * Delivery guarantees: an acknowledged QoS 1/2 message reaches every live subscriber that keeps
 * acking (flow control back to publishers), a stuck subscriber holds nobody up for long, shared
 * groups hand a departed member's messages to another member, and expiry is never forwarded
 * higher than it was set.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { ReasonCode, type Authorizer } from '../src/index.ts';
import { connect, delay, rawConnect, startBroker } from './helpers.ts';
import { PacketType, decodePublish, encodeConnect, encodePuback, frame, ofType, packetsOf, waitForType } from './raw-mqtt.ts';

const HERE = path.dirname(new URL(import.meta.url).pathname);
/** Debian's python3, where python3-paho-mqtt installs. */
const PY = '/usr/bin/python3';

function python(script: string, args: string[], ms: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(PY, [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), ms);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

function collector(port: number, options: IClientOptions): Promise<{ client: MqttClient; got: mqtt.IPublishPacket[] }> {
  return new Promise((resolve, reject) => {
    const got: mqtt.IPublishPacket[] = [];
    const client = mqtt.connect({ host: '127.0.0.1', port, reconnectPeriod: 0, ...options });
    client.on('message', (_t, _p, packet) => got.push(packet));
    client.once('connect', () => resolve({ client, got }));
    client.once('error', reject);
  });
}

async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await delay(20);
  }
  return true;
}

test('a will with Message Expiry Interval 100 is forwarded with 100 or less, 10 times out of 10 [MQTT-3.3.2-6]', async (t) => {
  const b = await startBroker();
  t.teardown(() => b.stop());
  const sub = await collector(b.port, { clientId: 'will-watch', protocolVersion: 5 });
  await sub.client.subscribeAsync('wills/expiry', { qos: 1 });
  for (let i = 0; i < 10; i++) {
    const c = await connect(b.port, { clientId: `will-exp-${i}`, protocolVersion: 5, will: { topic: 'wills/expiry', payload: Buffer.from(`w${i}`), qos: 1, retain: false, properties: { messageExpiryInterval: 100 } } });
    c.stream.destroy();
    t.true(await until(() => sub.got.length === i + 1, 3000));
  }
  const intervals = sub.got.map((p) => p.properties?.messageExpiryInterval);
  t.true(intervals.every((x) => x !== undefined && x <= 100 && x >= 99), `forwarded intervals: ${intervals.join(', ')}`);
  sub.client.end(true);
});

// ── flow control ─────────────────────────────────────────────────────────────

for (const version of [4, 5] as const) {
  test(`a burst of 10,000 QoS 1 messages sent at once reaches one healthy subscriber complete and in order, on the defaults (MQTT.js ${version === 5 ? 'v5' : 'v3.1.1'})`, async (t) => {
    const b = await startBroker();
    t.teardown(() => b.stop());
    const N = 10_000;
    const sub = await collector(b.port, { clientId: `burst-sub-${version}`, protocolVersion: version });
    await sub.client.subscribeAsync('burst/js', { qos: 1 });
    const pub = await connect(b.port, { clientId: `burst-pub-${version}`, protocolVersion: version });
    const acks: Promise<unknown>[] = [];
    for (let i = 0; i < N; i++) acks.push(pub.publishAsync('burst/js', String(i), { qos: 1 }));
    await Promise.all(acks);
    t.true(await until(() => sub.got.length >= N, 30_000), `received ${sub.got.length} of ${N}`);
    t.is(sub.got.length, N);
    t.true(sub.got.every((p, i) => p.payload.toString() === String(i)), 'in order');
    t.is(b.broker.stats.queueRefusedQos12, 0, 'nothing refused for lack of room');
    sub.client.end(true);
    pub.end(true);
  });
}

for (const version of ['3', '5'] as const) {
  test(`a burst of 10,000 QoS 1 messages from paho-mqtt (${version === '5' ? 'v5' : 'v3.1.1'}) arrives complete and in order`, async (t) => {
    if (!fs.existsSync(PY)) {
      t.log(`${PY} is missing: install python3-paho-mqtt`);
      t.pass();
      return;
    }
    const b = await startBroker();
    t.teardown(() => b.stop());
    const out = await python(path.join(HERE, 'delivery', 'paho_burst.py'), [String(b.port), '10000', version], 90_000);
    t.is(out.stdout.trim().split('\n').join(' '), '10000 OK', out.stderr);
  });
}

test('a stuck subscriber (never acks) beside a healthy one: the healthy one gets everything, the stuck one holds the publisher only until it stalls, its drops are counted and memory stays bounded', async (t) => {
  // stallMs leaves room for a busy machine: the healthy subscriber must never be taken for stalled.
  const b = await startBroker({ limits: { flowControl: { stallMs: 2000 }, maxQueuedMessages: 200 } });
  t.teardown(() => b.stop());
  const stuck = await rawConnect(b.port);
  stuck.write(encodeConnect({ clientId: 'stuck', version: 4 }));
  await waitForType(stuck, PacketType.CONNACK);
  stuck.write(frame(PacketType.SUBSCRIBE, 0x02, Buffer.from([0, 1, 0, 5, ...Buffer.from('stuck'), 1])));
  await waitForType(stuck, PacketType.SUBACK);
  const healthy = await collector(b.port, { clientId: 'healthy' });
  await healthy.client.subscribeAsync('stuck', { qos: 1 });
  const pub = await connect(b.port, { clientId: 'stuck-pub' });
  const N = 3000;
  const rssBefore = process.memoryUsage().rss;
  const started = Date.now();
  const acks: Promise<unknown>[] = [];
  for (let i = 0; i < N; i++) acks.push(pub.publishAsync('stuck', Buffer.alloc(256, i % 256), { qos: 1 }));
  await Promise.all(acks);
  t.true(await until(() => healthy.got.length >= N, 20_000), `healthy got ${healthy.got.length} of ${N}`);
  t.true(Date.now() - started < 15_000, 'the stuck subscriber held the publisher for a bounded time only');
  t.true(b.broker.stats.queueRefusedQos12 > 0, "the stuck subscriber's overflow is counted");
  t.true(process.memoryUsage().rss - rssBefore < 200 * 1024 * 1024, 'memory stays bounded');
  stuck.socket.destroy();
  healthy.client.end(true);
  pub.end(true);
});

test('a subscriber that acks just often enough (never stalled) holds its publisher at most limits.flowControl.maxHoldMs: the publisher\'s other topics and the other subscribers go on', async (t) => {
  const b = await startBroker({ limits: { flowControl: { stallMs: 6000, maxHoldMs: 4000 }, maxQueuedMessages: 100 } });
  t.teardown(() => b.stop());
  // The slow one reads everything and acknowledges one QoS 1 message every 300 ms: always progress.
  const slow = await rawConnect(b.port);
  t.teardown(() => slow.socket.destroy());
  slow.write(encodeConnect({ clientId: 'slow-acker', version: 4 }));
  await waitForType(slow, PacketType.CONNACK);
  slow.write(frame(PacketType.SUBSCRIBE, 0x02, Buffer.from([0, 1, 0, 4, ...Buffer.from('fc/#'), 1])));
  await waitForType(slow, PacketType.SUBACK);
  let acked = 0;
  const ticker = setInterval(() => {
    const publishes = ofType(packetsOf(slow), PacketType.PUBLISH);
    const next = publishes[acked];
    if (next === undefined) return;
    slow.write(encodePuback(decodePublish(next).packetId as number));
    acked++;
  }, 300);
  t.teardown(() => clearInterval(ticker));
  const healthy = await collector(b.port, { clientId: 'fc-healthy' });
  await healthy.client.subscribeAsync('fc/#', { qos: 1 });
  const other = await collector(b.port, { clientId: 'fc-other' });
  await other.client.subscribeAsync('fc-other/#', { qos: 1 });
  const pub = await connect(b.port, { clientId: 'fc-pub' });
  const N = 1000;
  const started = Date.now();
  for (let i = 0; i < N; i++) void pub.publishAsync('fc/x', `m${i}`, { qos: 1 }).catch(() => {});
  for (let i = 0; i < 10; i++) void pub.publishAsync('fc-other/x', `o${i}`, { qos: 1 }).catch(() => {});
  t.true(await until(() => other.got.length >= 10 && healthy.got.length >= N, 10_000), `after ${Date.now() - started} ms: other topic ${other.got.length} of 10, healthy ${healthy.got.length} of ${N}`);
  t.true(acked < 40, `the slow subscriber was still acking (${acked} acks): it was never stalled, only too slow`);

  // It acknowledges everything at once, then goes back to its slow pace: it does not get to hold
  // the publisher again at once (it would hold it most of the time, one maxHoldMs after another).
  const drainUntil = Date.now() + 1500;
  while (Date.now() < drainUntil) {
    const received = ofType(packetsOf(slow), PacketType.PUBLISH);
    for (; acked < received.length; acked++) slow.write(encodePuback(decodePublish(received[acked] as (typeof received)[number]).packetId as number));
    await delay(50);
  }
  const second = Date.now();
  for (let i = 0; i < 1000; i++) void pub.publishAsync('fc/x', `n${i}`, { qos: 1 }).catch(() => {});
  for (let i = 0; i < 10; i++) void pub.publishAsync('fc-other/x', `p${i}`, { qos: 1 }).catch(() => {});
  t.true(await until(() => other.got.length >= 20, 10_000), `other topic ${other.got.length} of 20`);
  t.true(Date.now() - second < 3000, `the second burst was not held again (${Date.now() - second} ms)`);
  pub.end(true);
  healthy.client.end(true);
  other.client.end(true);
});

// ── shared subscriptions ─────────────────────────────────────────────────────

test('a $share member that stops acking and goes away (session expiry 0): its in-flight and queued messages go to the other member, which gets all 10', async (t) => {
  const b = await startBroker();
  t.teardown(() => b.stop());
  // Member A: a raw v5 client with Receive Maximum 3 that never acks.
  const a = await rawConnect(b.port);
  a.write(encodeConnect({ clientId: 'member-a', version: 5, properties: { receiveMaximum: 3 } }));
  await waitForType(a, PacketType.CONNACK);
  a.write(frame(PacketType.SUBSCRIBE, 0x02, Buffer.from([0, 1, 0, 0, 17, ...Buffer.from('$share/g/shared/x'), 1])));
  await waitForType(a, PacketType.SUBACK);
  // Member B subscribes later: the first messages go to A (round robin takes turns).
  const bm = await collector(b.port, { clientId: 'member-b', protocolVersion: 5 });
  await bm.client.subscribeAsync('$share/g/shared/x', { qos: 1 });
  const pub = await connect(b.port, { clientId: 'share-pub', protocolVersion: 5 });
  for (let i = 0; i < 10; i++) await pub.publishAsync('shared/x', `m${i}`, { qos: 1 });
  await delay(200);
  const toA = ofType(packetsOf(a), PacketType.PUBLISH).length;
  t.true(toA > 0, 'A was sent some (and acked none)');
  a.socket.destroy();
  t.true(await until(() => bm.got.length >= 10, 5000), `B got ${bm.got.length} of 10`);
  t.deepEqual([...new Set(bm.got.map((p) => p.payload.toString()))].sort(), Array.from({ length: 10 }, (_, i) => `m${i}`).sort());
  bm.client.end(true);
  pub.end(true);
});

test('a $share member that may not read a message (deliver denied) or cannot take its size passes it to another member', async (t) => {
  const denyA: Authorizer = {
    id: 'deny-a',
    authorize: (who, action) => (action === 'deliver' && who.clientId === 'small-a' ? { kind: 'deny', reason: ReasonCode.NotAuthorized, detail: 'a may not read' } : { kind: 'allow', value: undefined }),
  };
  const b = await startBroker({ authorizers: [] }, { authorizers: [denyA] });
  t.teardown(() => b.stop());
  const a = await collector(b.port, { clientId: 'small-a', protocolVersion: 5 });
  await a.client.subscribeAsync('$share/g2/s/y', { qos: 1 });
  const c = await collector(b.port, { clientId: 'tiny-c', protocolVersion: 5, properties: { maximumPacketSize: 40 } });
  await c.client.subscribeAsync('$share/g2/s/y', { qos: 1 });
  const d = await collector(b.port, { clientId: 'ok-d', protocolVersion: 5 });
  await d.client.subscribeAsync('$share/g2/s/y', { qos: 1 });
  const pub = await connect(b.port, { clientId: 'share-pub2', protocolVersion: 5 });
  for (let i = 0; i < 6; i++) await pub.publishAsync('s/y', `big-message-${i}-${'x'.repeat(60)}`, { qos: 1 });
  t.true(await until(() => d.got.length >= 6, 3000), `d got ${d.got.length} of 6`);
  t.is(a.got.length, 0);
  t.is(c.got.length, 0);
  for (const x of [a, c, d]) x.client.end(true);
  pub.end(true);
});
