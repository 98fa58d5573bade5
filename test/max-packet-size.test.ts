/**
 * Every packet the broker sends fits the client's Maximum Packet Size [MQTT-3.1.2-24]: reason
 * strings go first, then user properties, then properties that only repeat a default; a
 * packet that still cannot fit is not sent (a PUBLISH is dropped, anything else closes the
 * connection). Checked with a raw v5 client that records every frame it receives.
 */
import test from 'ava';
import mqttPacket from 'mqtt-packet';
import type * as MP from 'mqtt-packet';
import { rawConnect, startBroker, type RawClient } from './helpers.ts';
import { PacketType, ofType, packetsOf, waitForPackets, type RawPacket } from './raw-mqtt.ts';

const gen = (packet: object) => mqttPacket.generate(packet as MP.Packet, { protocolVersion: 5 });
const connectWith = (clientId: string, max: number, extra: Record<string, unknown> = {}) =>
  gen({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clean: true, keepalive: 60, clientId, properties: { maximumPacketSize: max, ...extra } });

/** The whole size of a received frame (fixed header included). */
function frameSize(p: RawPacket): number {
  const n = p.body.length;
  return 1 + (n < 128 ? 1 : n < 16384 ? 2 : 3) + n;
}

function assertAllFit(t: { true(v: boolean, m?: string): void }, r: RawClient, max: number): void {
  for (const p of packetsOf(r)) t.true(frameSize(p) <= max, `a type-${p.type} packet of ${frameSize(p)} bytes was sent to a client whose maximum is ${max}`);
}

/** The v5 properties of a CONNACK (body: flags, reason, properties). */
function connackProps(p: RawPacket | undefined): Record<string, unknown> {
  if (p === undefined) return {};
  const decoded = mqttPacket.parser({ protocolVersion: 5 });
  let out: Record<string, unknown> = {};
  decoded.on('packet', (x: MP.Packet) => (out = ((x as { properties?: Record<string, unknown> }).properties ?? {}) as Record<string, unknown>));
  decoded.parse(Buffer.concat([Buffer.from([0x20, p.body.length]), p.body]));
  return out;
}

test('max 64: a successful CONNACK with an assigned client identifier fits (defaults left out), and keeps the identifier', async (t) => {
  const b = await startBroker();
  t.teardown(() => b.stop());
  const r = await rawConnect(b.port);
  r.write(connectWith('', 64));
  const [ack] = ofType(await waitForPackets(r, (ps) => ofType(ps, PacketType.CONNACK).length > 0), PacketType.CONNACK);
  t.is(ack?.body[1], 0);
  const props = connackProps(ack);
  t.is(typeof props.assignedClientIdentifier, 'string', 'the assigned identifier is kept: the client needs it');
  t.is(props.retainAvailable, undefined, 'a default-valued property was left out to make room');
  assertAllFit(t, r, 64);
  r.socket.destroy();
});

test('max 32: a refused CONNACK drops its reason string and keeps its reason code', async (t) => {
  const b = await startBroker();
  t.teardown(() => b.stop());
  const r = await rawConnect(b.port);
  r.write(connectWith('refused', 32, { authenticationMethod: 'SCRAM-SHA-1' }));
  const [ack] = ofType(await waitForPackets(r, (ps) => ofType(ps, PacketType.CONNACK).length > 0), PacketType.CONNACK);
  t.is(ack?.body[1], 0x8c, 'Bad authentication method');
  t.is(connackProps(ack).reasonString, undefined);
  assertAllFit(t, r, 32);
  r.socket.destroy();
});

test('max 32: DISCONNECT 0x94 (topic alias invalid) drops its reason string and keeps its code', async (t) => {
  const b = await startBroker();
  t.teardown(() => b.stop());
  const r = await rawConnect(b.port);
  r.write(connectWith('alias', 32));
  await waitForPackets(r, (ps) => ofType(ps, PacketType.CONNACK).length > 0);
  r.write(gen({ cmd: 'publish', topic: 'a', payload: Buffer.from('x'), qos: 0, retain: false, dup: false, properties: { topicAlias: 60000 } }));
  const [d] = ofType(await waitForPackets(r, (ps) => ofType(ps, PacketType.DISCONNECT).length > 0), PacketType.DISCONNECT);
  t.is(d?.body[0], 0x94);
  assertAllFit(t, r, 32);
  t.true(await r.closed(2000));
});

test('max 32: SUBACK, UNSUBACK, PUBACK with a reason code, the QoS 2 flow and PINGRESP all fit; a PUBLISH too large for the client is not sent', async (t) => {
  const b = await startBroker();
  t.teardown(() => b.stop());
  const r = await rawConnect(b.port);
  r.write(connectWith('flows', 32));
  await waitForPackets(r, (ps) => ofType(ps, PacketType.CONNACK).length > 0);
  r.write(gen({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'm/#', qos: 2 }, { topic: 'n', qos: 1 }] }));
  await waitForPackets(r, (ps) => ofType(ps, PacketType.SUBACK).length > 0);
  r.write(gen({ cmd: 'publish', topic: 'nobody', payload: Buffer.from('x'), qos: 1, messageId: 2, retain: false, dup: false }));
  await waitForPackets(r, (ps) => ofType(ps, PacketType.PUBACK).length > 0);
  r.write(gen({ cmd: 'publish', topic: 'm/small', payload: Buffer.from('hi'), qos: 2, messageId: 3, retain: false, dup: false }));
  await waitForPackets(r, (ps) => ofType(ps, PacketType.PUBREC).length > 0);
  r.write(gen({ cmd: 'pubrel', messageId: 3 }));
  await waitForPackets(r, (ps) => ofType(ps, PacketType.PUBCOMP).length > 0 && ofType(ps, PacketType.PUBLISH).length > 0);
  const sent = ofType(packetsOf(r), PacketType.PUBLISH)[0];
  t.truthy(sent, 'the small message is delivered');
  r.write(gen({ cmd: 'pubrec', messageId: sent === undefined ? 0 : sent.body.readUInt16BE(2 + sent.body.readUInt16BE(0)) }));
  await waitForPackets(r, (ps) => ofType(ps, PacketType.PUBREL).length > 0);
  r.write(gen({ cmd: 'publish', topic: 'm/big', payload: Buffer.alloc(100, 0x61), qos: 1, messageId: 4, retain: false, dup: false }));
  r.write(gen({ cmd: 'unsubscribe', messageId: 5, unsubscriptions: ['n'] }));
  r.write(gen({ cmd: 'pingreq' }));
  const all = await waitForPackets(r, (ps) => ofType(ps, PacketType.PINGRESP).length > 0 && ofType(ps, PacketType.UNSUBACK).length > 0);
  t.is(ofType(all, PacketType.PUBLISH).length, 1, 'the 100-byte message is not sent to a client with a 32-byte maximum');
  assertAllFit(t, r, 32);
  t.false(await r.closed(300), 'and the connection goes on');
  r.socket.destroy();
});

test('max 32: a SUBACK that cannot fit (40 filters) is not sent: the connection is closed instead', async (t) => {
  const b = await startBroker();
  t.teardown(() => b.stop());
  const r = await rawConnect(b.port);
  r.write(connectWith('many', 32));
  await waitForPackets(r, (ps) => ofType(ps, PacketType.CONNACK).length > 0);
  r.write(gen({ cmd: 'subscribe', messageId: 1, subscriptions: Array.from({ length: 40 }, (_, i) => ({ topic: `f/${i}`, qos: 0 })) }));
  t.true(await r.closed(2000));
  t.is(ofType(packetsOf(r), PacketType.SUBACK).length, 0);
  assertAllFit(t, r, 32);
});
