/**
 * Quality of service over real loopback sockets: end-to-end QoS 0/1/2 with downgrade, exactly
 * once for QoS 2, redelivery with DUP, the in-flight window towards clients and the broker's
 * own receive maximum. Raw sockets are used where a client must misbehave (never acknowledge,
 * re-send with DUP, skip PUBREL).
 */
import test, { type ExecutionContext } from 'ava';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import type { ConfigInput } from '../src/index.ts';
import { delay, rawConnect, startBroker, type RawClient, type TestBroker } from './helpers.ts';
import {
  PacketType,
  decodeAck,
  decodeConnack,
  decodePublish,
  encodeConnect,
  encodePuback,
  encodePublish,
  encodePubrel,
  encodeSubscribe,
  ofType,
  packetsOf,
  waitForType,
  type ConnectOptions,
  type Version,
} from './raw-mqtt.ts';

// ── local helpers ────────────────────────────────────────────────────────────

interface Received {
  topic: string;
  payload: string;
  qos: number;
  retain: boolean;
  dup: boolean;
}

async function broker(t: ExecutionContext, config: Partial<ConfigInput> = {}): Promise<TestBroker> {
  const b = await startBroker(config);
  t.teardown(() => b.stop());
  return b;
}

/** An mqtt.js client that records every message from the first byte on. */
function open(t: ExecutionContext, port: number, options: IClientOptions = {}): Promise<{ client: MqttClient; messages: Received[] }> {
  return new Promise((resolve, reject) => {
    const messages: Received[] = [];
    const client = mqtt.connect({ host: '127.0.0.1', port, reconnectPeriod: 0, connectTimeout: 3000, ...options });
    t.teardown(() => {
      client.end(true);
    });
    client.on('message', (topic, payload, packet) => {
      messages.push({ topic, payload: payload.toString(), qos: packet.qos, retain: packet.retain, dup: packet.dup });
    });
    client.once('connect', () => resolve({ client, messages }));
    client.once('error', reject);
    client.once('close', () => reject(new Error('closed before CONNACK')));
  });
}

async function until(cond: () => boolean, ms = 2000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() >= end) return false;
    await delay(10);
  }
  return true;
}

/** A raw socket that has completed CONNECT (CONNACK 0 asserted by the caller via the result). */
async function rawSession(t: ExecutionContext, port: number, connect: ConnectOptions): Promise<{ r: RawClient; connack: { sessionPresent: boolean; code: number } | undefined }> {
  const r = await rawConnect(port);
  t.teardown(() => {
    r.socket.destroy();
  });
  r.write(encodeConnect(connect));
  const [ack] = await waitForType(r, PacketType.CONNACK);
  return { r, connack: ack === undefined ? undefined : decodeConnack(ack) };
}

/** Subscribes a raw client and waits for its SUBACK. */
async function rawSubscribe(r: RawClient, topic: string, qos: 0 | 1 | 2, version: Version, packetId = 1): Promise<number[]> {
  r.write(encodeSubscribe({ packetId, filters: [{ topic, qos }], version }));
  const acks = await waitForType(r, PacketType.SUBACK);
  const ack = acks.find((a) => a.body.readUInt16BE(0) === packetId);
  if (ack === undefined) return [];
  // v5 SUBACK carries a property length after the packet id.
  return [...ack.body.subarray(version === 5 ? 3 : 2)];
}

const publishesOf = (r: RawClient, version: Version) => ofType(packetsOf(r), PacketType.PUBLISH).map((p) => decodePublish(p, version));

type V = 4 | 5;
const VERSIONS: V[] = [4, 5];
const vname = (v: V) => (v === 5 ? 'v5' : 'v3.1.1');

// ── end to end ───────────────────────────────────────────────────────────────

for (const v of VERSIONS) {
  for (const qos of [0, 1, 2] as const) {
    test(`${vname(v)}: QoS ${qos} publish to a QoS ${qos} subscription is delivered once at QoS ${qos}`, async (t) => {
      const b = await broker(t);
      const sub = await open(t, b.port, { clientId: `e2e-sub-${v}-${qos}`, protocolVersion: v });
      const granted = await sub.client.subscribeAsync('e2e/t', { qos });
      t.is(granted[0]?.qos, qos);
      const pub = await open(t, b.port, { clientId: `e2e-pub-${v}-${qos}`, protocolVersion: v });
      await pub.client.publishAsync('e2e/t', `qos${qos}`, { qos }); // resolves on PUBACK / PUBCOMP for QoS 1 / 2
      t.true(await until(() => sub.messages.length >= 1));
      await delay(100);
      t.deepEqual(sub.messages, [{ topic: 'e2e/t', payload: `qos${qos}`, qos, retain: false, dup: false }]);
    });
  }

  test(`${vname(v)}: delivery is downgraded to the subscription's QoS and never upgraded`, async (t) => {
    const b = await broker(t);
    const sub1 = await open(t, b.port, { clientId: `down-sub1-${v}`, protocolVersion: v });
    await sub1.client.subscribeAsync('down/t', { qos: 1 });
    const sub0 = await open(t, b.port, { clientId: `down-sub0-${v}`, protocolVersion: v });
    await sub0.client.subscribeAsync('down/t', { qos: 0 });
    const sub2 = await open(t, b.port, { clientId: `down-sub2-${v}`, protocolVersion: v });
    await sub2.client.subscribeAsync('down/t', { qos: 2 });
    const pub = await open(t, b.port, { clientId: `down-pub-${v}`, protocolVersion: v });

    await pub.client.publishAsync('down/t', 'sent at 2', { qos: 2 });
    t.true(await until(() => sub1.messages.length === 1 && sub0.messages.length === 1 && sub2.messages.length === 1));
    t.is(sub1.messages[0]?.qos, 1); // [MQTT-3.8.4-6] / v5 [MQTT-3.8.4-8]: min(publish QoS, granted QoS)
    t.is(sub0.messages[0]?.qos, 0);
    t.is(sub2.messages[0]?.qos, 2);

    await pub.client.publishAsync('down/t', 'sent at 1', { qos: 1 });
    t.true(await until(() => sub2.messages.length === 2));
    t.is(sub2.messages[1]?.qos, 1, 'a QoS 1 message is not upgraded for a QoS 2 subscription');
  });
}

// ── QoS 2 exactly once ───────────────────────────────────────────────────────

for (const v of VERSIONS) {
  test(`${vname(v)}: a QoS 2 PUBLISH re-sent with DUP before PUBREL is delivered exactly once`, async (t) => {
    const b = await broker(t);
    const sub = await open(t, b.port, { clientId: `once-sub-${v}`, protocolVersion: v });
    await sub.client.subscribeAsync('once/t', { qos: 2 });
    const { r, connack } = await rawSession(t, b.port, { clientId: `once-pub-${v}`, version: v });
    t.is(connack?.code, 0);

    r.write(encodePublish({ topic: 'once/t', payload: 'exactly once', qos: 2, packetId: 7, version: v }));
    const first = await waitForType(r, PacketType.PUBREC, 1);
    t.is(first.length, 1);
    r.write(encodePublish({ topic: 'once/t', payload: 'exactly once', qos: 2, packetId: 7, dup: true, version: v }));
    const recs = await waitForType(r, PacketType.PUBREC, 2);
    t.deepEqual(
      recs.map((p) => decodeAck(p).packetId),
      [7, 7],
      'PUBREC answers both copies', // v3.1.1 [MQTT-4.3.3-2] / v5 [MQTT-4.3.3-10]
    );
    t.true(recs.every((p) => decodeAck(p).reasonCode === 0));
    t.deepEqual(ofType(packetsOf(r), PacketType.PUBCOMP), [], 'no PUBCOMP before PUBREL');

    r.write(encodePubrel(7));
    const [comp] = await waitForType(r, PacketType.PUBCOMP, 1);
    t.is(comp === undefined ? undefined : decodeAck(comp).packetId, 7); // v3.1.1 [MQTT-4.3.3-2] / v5 [MQTT-4.3.3-11]: PUBCOMP with the same packet id
    t.is(comp === undefined ? undefined : decodeAck(comp).reasonCode, 0);

    await delay(300);
    t.deepEqual(
      sub.messages.map((m) => m.payload),
      ['exactly once'],
    ); // v3.1.1 [MQTT-4.3.3-2] / v5 [MQTT-4.3.3-10]: no duplicate onward delivery

    // After PUBREL the id is free again: a new PUBLISH with id 7 is a new message (v5 [MQTT-4.3.3-12]).
    r.write(encodePublish({ topic: 'once/t', payload: 'a new message', qos: 2, packetId: 7, version: v }));
    t.true(await until(() => sub.messages.length === 2));
    t.is(sub.messages[1]?.payload, 'a new message');
  });
}

// ── redelivery with DUP ──────────────────────────────────────────────────────

for (const v of VERSIONS) {
  test(`${vname(v)}: an unacknowledged QoS 1 message is re-sent with DUP and the same packet id after reconnect`, async (t) => {
    const b = await broker(t);
    const session: ConnectOptions = { clientId: `redeliver-${v}`, clean: false, version: v, ...(v === 5 ? { properties: { sessionExpiryInterval: 300 } } : {}) };
    const first = await rawSession(t, b.port, session);
    t.is(first.connack?.code, 0);
    t.deepEqual(await rawSubscribe(first.r, 'redeliver/t', 1, v), [1]);

    const pub = await open(t, b.port, { clientId: `redeliver-pub-${v}` });
    await pub.client.publishAsync('redeliver/t', 'ack me', { qos: 1 });
    const [p1] = (await waitForType(first.r, PacketType.PUBLISH, 1)).map((p) => decodePublish(p, v));
    t.truthy(p1);
    if (p1 === undefined) return;
    t.false(p1.dup);
    t.is(p1.qos, 1);
    // Never PUBACK it; drop the connection.
    first.r.socket.destroy();
    await delay(100);

    const second = await rawSession(t, b.port, session);
    t.deepEqual(second.connack, { sessionPresent: true, code: 0 });
    const [p2] = (await waitForType(second.r, PacketType.PUBLISH, 1)).map((p) => decodePublish(p, v));
    t.truthy(p2, 'the message is sent again'); // [MQTT-4.4.0-1]
    if (p2 === undefined) return;
    t.true(p2.dup, 'with the DUP flag set'); // [MQTT-3.3.1-1]
    t.is(p2.packetId, p1.packetId, 'with the same packet id');
    t.is(p2.payload, 'ack me');
    t.is(p2.qos, 1);

    // Once acknowledged it is not sent a third time.
    second.r.write(encodePuback(p2.packetId as number));
    await delay(100);
    second.r.socket.destroy();
    await delay(100);
    const third = await rawSession(t, b.port, session);
    await delay(300);
    t.deepEqual(publishesOf(third.r, v), []);
  });
}

// ── in-flight window ─────────────────────────────────────────────────────────

test('limits.maxInflight 2: a subscriber that never acks gets 2 of 5 QoS 1 messages, and the next after one PUBACK', async (t) => {
  const b = await broker(t, { limits: { maxInflight: 2 } });
  const { r, connack } = await rawSession(t, b.port, { clientId: 'window-sub', version: 4 });
  t.is(connack?.code, 0);
  t.deepEqual(await rawSubscribe(r, 'window/t', 1, 4), [1]);

  const pub = await open(t, b.port, { clientId: 'window-pub' });
  for (let i = 1; i <= 5; i++) await pub.client.publishAsync('window/t', `m${i}`, { qos: 1 });
  await waitForType(r, PacketType.PUBLISH, 3, 500); // give a third message the chance to (wrongly) arrive
  const before = publishesOf(r, 4);
  t.deepEqual(
    before.map((p) => p.payload),
    ['m1', 'm2'],
  );

  r.write(encodePuback(before[0]?.packetId as number));
  await waitForType(r, PacketType.PUBLISH, 4, 500);
  const after = publishesOf(r, 4);
  t.deepEqual(
    after.map((p) => p.payload),
    ['m1', 'm2', 'm3'],
    'one acknowledgement frees one slot',
  );
});

test('v5: a client with Receive Maximum 1 gets only one unacknowledged QoS 1 message at a time', async (t) => {
  const b = await broker(t);
  const { r, connack } = await rawSession(t, b.port, { clientId: 'rmax-sub', version: 5, properties: { receiveMaximum: 1 } });
  t.is(connack?.code, 0);
  t.deepEqual(await rawSubscribe(r, 'rmax/t', 1, 5), [1]);

  const pub = await open(t, b.port, { clientId: 'rmax-pub', protocolVersion: 5 });
  for (let i = 1; i <= 3; i++) await pub.client.publishAsync('rmax/t', `m${i}`, { qos: 1 });
  await waitForType(r, PacketType.PUBLISH, 2, 500);
  const before = publishesOf(r, 5);
  t.deepEqual(
    before.map((p) => p.payload),
    ['m1'],
  ); // [MQTT-3.3.4-9]

  r.write(encodePuback(before[0]?.packetId as number));
  await waitForType(r, PacketType.PUBLISH, 3, 500);
  t.deepEqual(
    publishesOf(r, 5).map((p) => p.payload),
    ['m1', 'm2'],
  );
});

// ── the broker's receive maximum ─────────────────────────────────────────────

test('limits.receiveMaximum 2: a v5 client sending a third QoS 2 PUBLISH without PUBREL gets DISCONNECT 0x93', async (t) => {
  const b = await broker(t, { limits: { receiveMaximum: 2 } });
  const { r, connack } = await rawSession(t, b.port, { clientId: 'rmax-flood', version: 5 });
  t.is(connack?.code, 0);
  for (const id of [1, 2, 3]) r.write(encodePublish({ topic: 'flood/t', payload: `p${id}`, qos: 2, packetId: id, version: 5 }));
  t.true(await r.closed(2000), 'the broker closes the connection');
  const packets = packetsOf(r);
  t.deepEqual(
    ofType(packets, PacketType.PUBREC).map((p) => decodeAck(p).packetId),
    [1, 2],
  );
  const disconnect = ofType(packets, PacketType.DISCONNECT)[0];
  t.truthy(disconnect);
  t.is(disconnect?.body[0], 0x93); // v5 §3.3.4: Receive Maximum exceeded
});

test('limits.receiveMaximum 2: the limit counts only unreleased QoS 2 messages', async (t) => {
  const b = await broker(t, { limits: { receiveMaximum: 2 } });
  const { r } = await rawSession(t, b.port, { clientId: 'rmax-ok', version: 5 });
  for (const id of [1, 2, 3, 4]) {
    r.write(encodePublish({ topic: 'flood/ok', payload: `p${id}`, qos: 2, packetId: id, version: 5 }));
    await waitForType(r, PacketType.PUBREC, id);
    r.write(encodePubrel(id));
    await waitForType(r, PacketType.PUBCOMP, id);
  }
  t.false(await r.closed(200));
  t.deepEqual(
    ofType(packetsOf(r), PacketType.PUBCOMP).map((p) => decodeAck(p).packetId),
    [1, 2, 3, 4],
  );
});

// ── PUBREL for an unknown packet id ──────────────────────────────────────────

test('v5: PUBREL for an unknown packet id is answered with PUBCOMP 0x92', async (t) => {
  const b = await broker(t);
  const { r } = await rawSession(t, b.port, { clientId: 'pubrel-unknown-5', version: 5 });
  r.write(encodePubrel(42));
  const [comp] = await waitForType(r, PacketType.PUBCOMP);
  t.truthy(comp);
  t.deepEqual(comp === undefined ? undefined : decodeAck(comp), { packetId: 42, reasonCode: 0x92 });
  t.false(await r.closed(200), 'the connection stays open');
});

test('v3.1.1: PUBREL for an unknown packet id is answered with PUBCOMP', async (t) => {
  const b = await broker(t);
  const { r } = await rawSession(t, b.port, { clientId: 'pubrel-unknown-4', version: 4 });
  r.write(encodePubrel(42));
  const [comp] = await waitForType(r, PacketType.PUBCOMP);
  t.truthy(comp);
  t.is(comp?.body.length, 2, 'v3.1.1 PUBCOMP carries only the packet id');
  t.is(comp === undefined ? undefined : decodeAck(comp).packetId, 42);
  t.false(await r.closed(200), 'the connection stays open');
});

// ── QoS 2 across reconnects ──────────────────────────────────────────────────

test('v3.1.1: after PUBREC without PUBCOMP the broker re-sends PUBREL (not the PUBLISH) on reconnect', async (t) => {
  const b = await broker(t);
  const session: ConnectOptions = { clientId: 'rel-again', clean: false, version: 4 };
  const first = await rawSession(t, b.port, session);
  t.deepEqual(await rawSubscribe(first.r, 'relagain/t', 2, 4), [2]);
  const pub = await open(t, b.port, { clientId: 'rel-again-pub' });
  await pub.client.publishAsync('relagain/t', 'two phase', { qos: 2 });
  const [p] = (await waitForType(first.r, PacketType.PUBLISH, 1)).map((x) => decodePublish(x, 4));
  t.is(p?.qos, 2);
  first.r.write(Buffer.from([0x50, 0x02, (p?.packetId ?? 0) >> 8, (p?.packetId ?? 0) & 0xff])); // PUBREC
  const [rel] = await waitForType(first.r, PacketType.PUBREL, 1);
  t.is(rel === undefined ? undefined : decodeAck(rel).packetId, p?.packetId);
  first.r.socket.destroy(); // no PUBCOMP
  await delay(100);

  const second = await rawSession(t, b.port, session);
  t.deepEqual(second.connack, { sessionPresent: true, code: 0 });
  const [rel2] = await waitForType(second.r, PacketType.PUBREL, 1);
  t.is(rel2 === undefined ? undefined : decodeAck(rel2).packetId, p?.packetId); // [MQTT-4.4.0-1]
  t.is(rel2?.flags, 0x02); // [MQTT-3.6.1-1]
  await delay(200);
  t.deepEqual(publishesOf(second.r, 4), [], 'the PUBLISH is not sent again after PUBREC');
});

test('v3.1.1: a QoS 2 PUBLISH re-sent after reconnect, before PUBREL, is not delivered twice', async (t) => {
  const b = await broker(t);
  const sub = await open(t, b.port, { clientId: 'once-across-sub' });
  await sub.client.subscribeAsync('oncex/t', { qos: 2 });
  const session: ConnectOptions = { clientId: 'once-across-pub', clean: false, version: 4 };
  const first = await rawSession(t, b.port, session);
  first.r.write(encodePublish({ topic: 'oncex/t', payload: 'survives reconnect', qos: 2, packetId: 5 }));
  await waitForType(first.r, PacketType.PUBREC, 1);
  first.r.socket.destroy(); // PUBREC lost to us; no PUBREL sent
  await delay(100);

  const second = await rawSession(t, b.port, session);
  t.true(second.connack?.sessionPresent);
  second.r.write(encodePublish({ topic: 'oncex/t', payload: 'survives reconnect', qos: 2, packetId: 5, dup: true }));
  const [rec] = await waitForType(second.r, PacketType.PUBREC, 1);
  t.is(rec === undefined ? undefined : decodeAck(rec).packetId, 5);
  second.r.write(encodePubrel(5));
  const [comp] = await waitForType(second.r, PacketType.PUBCOMP, 1);
  t.is(comp === undefined ? undefined : decodeAck(comp).packetId, 5);
  await delay(200);
  t.deepEqual(
    sub.messages.map((m) => m.payload),
    ['survives reconnect'],
  ); // v3.1.1 [MQTT-4.3.3-2] / v5 [MQTT-4.3.3-10]
});

test('v5: on reconnect with a smaller Receive Maximum the broker re-sends no more than it allows', async (t) => {
  const b = await broker(t);
  const session = (receiveMaximum: number): ConnectOptions => ({
    clientId: 'rmax-resume',
    clean: false,
    version: 5,
    properties: { sessionExpiryInterval: 300, receiveMaximum },
  });
  const first = await rawSession(t, b.port, session(2));
  t.deepEqual(await rawSubscribe(first.r, 'rmaxr/t', 1, 5), [1]);
  const pub = await open(t, b.port, { clientId: 'rmax-resume-pub' });
  for (let i = 1; i <= 3; i++) await pub.client.publishAsync('rmaxr/t', `m${i}`, { qos: 1 });
  await waitForType(first.r, PacketType.PUBLISH, 2);
  t.is(publishesOf(first.r, 5).length, 2);
  first.r.socket.destroy();
  await delay(100);

  const second = await rawSession(t, b.port, session(1));
  t.true(second.connack?.sessionPresent);
  await waitForType(second.r, PacketType.PUBLISH, 2, 500);
  const resent = publishesOf(second.r, 5);
  t.true(resent.length >= 1, 'an unacknowledged message is re-sent');
  t.is(resent.length, 1, `the client allows 1 unacknowledged QoS 1 message, got ${JSON.stringify(resent.map((p) => p.payload))}`); // [MQTT-3.3.4-9]
  const firstSent = publishesOf(first.r, 5);
  t.deepEqual(resent[0], { ...firstSent[0], dup: true } as typeof resent[0]);

  // Each PUBACK lets exactly one more through: first the other unacknowledged message (DUP, same id), then the queued one.
  second.r.write(encodePuback(resent[0]?.packetId as number));
  await waitForType(second.r, PacketType.PUBLISH, 3, 500);
  const afterOne = publishesOf(second.r, 5);
  t.is(afterOne.length, 2);
  t.deepEqual(afterOne[1], { ...firstSent[1], dup: true } as typeof resent[0]); // [MQTT-4.4.0-1]
  second.r.write(encodePuback(afterOne[1]?.packetId as number));
  await waitForType(second.r, PacketType.PUBLISH, 4, 500);
  const afterTwo = publishesOf(second.r, 5);
  t.deepEqual(
    afterTwo.map((p) => [p.payload, p.dup]),
    [
      ['m1', true],
      ['m2', true],
      ['m3', false],
    ],
  );
});
