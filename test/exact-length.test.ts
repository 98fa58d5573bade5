/**
 * Exact packet lengths: a packet whose fields do not use exactly its Remaining Length is
 * malformed (v5: DISCONNECT 0x81, v3.1.1: the connection is closed), for every packet type a
 * client sends. Each case is first sent well-formed (and must be accepted, so the check has no
 * false positives), then with stray bytes inside its Remaining Length.
 */
import test from 'ava';
import mqttPacket from 'mqtt-packet';
import type * as MP from 'mqtt-packet';
import { rawConnect, startBroker, type RawClient } from './helpers.ts';
import { PacketType, ofType, packetsOf, waitForPackets, waitForType } from './raw-mqtt.ts';

const gen = (packet: object, version: 4 | 5) => mqttPacket.generate(packet as MP.Packet, { protocolVersion: version });

/** The same frame with `extra` more bytes in its body (the Remaining Length grows to match). */
function withTrailing(frame: Buffer, extra: number[]): Buffer {
  let i = 1;
  let length = 0;
  let multiplier = 1;
  for (;;) {
    const d = frame[i++] as number;
    length += (d & 0x7f) * multiplier;
    multiplier *= 128;
    if ((d & 0x80) === 0) break;
  }
  const body = Buffer.concat([frame.subarray(i), Buffer.from(extra)]);
  const n = body.length;
  const varint: number[] = [];
  let x = n;
  do {
    let d = x % 128;
    x = Math.floor(x / 128);
    if (x > 0) d |= 0x80;
    varint.push(d);
  } while (x > 0);
  return Buffer.concat([Buffer.from([frame[0] as number, ...varint]), body]);
}

const connect5 = { cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clean: true, keepalive: 60, clientId: 'x', properties: { sessionExpiryInterval: 0, userProperties: { a: 'b' } } };
const connect4 = { cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 60, clientId: 'x' };

/** Each packet a client may send after CONNECT, in both versions where it differs. */
const CASES: { name: string; version: 4 | 5; packet: object }[] = [
  { name: 'SUBSCRIBE', version: 4, packet: { cmd: 'subscribe', messageId: 7, subscriptions: [{ topic: 'a/b', qos: 1 }, { topic: 'c/#', qos: 0 }] } },
  { name: 'SUBSCRIBE', version: 5, packet: { cmd: 'subscribe', messageId: 7, subscriptions: [{ topic: 'a/b', qos: 1, nl: true, rap: true, rh: 1 }], properties: { subscriptionIdentifier: 3, userProperties: { k: 'v' } } } },
  { name: 'UNSUBSCRIBE', version: 4, packet: { cmd: 'unsubscribe', messageId: 8, unsubscriptions: ['a/b', 'c/#'] } },
  { name: 'UNSUBSCRIBE', version: 5, packet: { cmd: 'unsubscribe', messageId: 8, unsubscriptions: ['a/b'], properties: { userProperties: { k: 'v' } } } },
  { name: 'PUBACK', version: 4, packet: { cmd: 'puback', messageId: 9 } },
  { name: 'PUBACK', version: 5, packet: { cmd: 'puback', messageId: 9, reasonCode: 0x10, properties: { reasonString: 'no subscribers' } } },
  { name: 'PUBREC', version: 4, packet: { cmd: 'pubrec', messageId: 9 } },
  { name: 'PUBREC', version: 5, packet: { cmd: 'pubrec', messageId: 9, reasonCode: 0x10 } },
  { name: 'PUBREL', version: 4, packet: { cmd: 'pubrel', messageId: 9 } },
  { name: 'PUBREL', version: 5, packet: { cmd: 'pubrel', messageId: 9, reasonCode: 0x92, properties: { reasonString: 'gone' } } },
  { name: 'PUBCOMP', version: 4, packet: { cmd: 'pubcomp', messageId: 9 } },
  { name: 'PUBCOMP', version: 5, packet: { cmd: 'pubcomp', messageId: 9, reasonCode: 0x92 } },
  { name: 'PINGREQ', version: 4, packet: { cmd: 'pingreq' } },
  { name: 'PINGREQ', version: 5, packet: { cmd: 'pingreq' } },
];

async function connected(port: number, version: 4 | 5): Promise<RawClient> {
  const r = await rawConnect(port);
  r.write(gen(version === 5 ? connect5 : connect4, version));
  await waitForType(r, PacketType.CONNACK);
  return r;
}

for (const { name, version, packet } of CASES) {
  const v = version === 5 ? 'v5' : 'v3.1.1';
  test(`${v} ${name}: well-formed is accepted; with 3 stray bytes it is malformed (${version === 5 ? 'DISCONNECT 0x81' : 'closed'})`, async (t) => {
    const b = await startBroker();
    t.teardown(() => b.stop());
    const good = await connected(b.port, version);
    good.write(gen(packet, version));
    // A PINGREQ after it proves the connection survived the well-formed packet.
    good.write(gen({ cmd: 'pingreq' }, version));
    const ok = await waitForPackets(good, (ps) => ofType(ps, PacketType.PINGRESP).length > 0);
    t.true(ofType(ok, PacketType.PINGRESP).length > 0, 'the well-formed packet is accepted');
    t.is(ofType(ok, PacketType.DISCONNECT).length, 0);
    good.socket.destroy();

    const bad = await connected(b.port, version);
    bad.write(withTrailing(gen(packet, version), [0x00, 0x05, 0x61]));
    t.true(await bad.closed(2000), 'the connection is closed');
    const disconnects = ofType(packetsOf(bad), PacketType.DISCONNECT);
    if (version === 5) t.is(disconnects[0]?.body[0], 0x81, 'DISCONNECT Malformed Packet');
    else t.is(disconnects.length, 0);
  });
}

for (const version of [4, 5] as const) {
  test(`${version === 5 ? 'v5' : 'v3.1.1'} CONNECT with 3 stray bytes inside its Remaining Length is refused: no CONNACK 0x00, closed`, async (t) => {
    const b = await startBroker();
    t.teardown(() => b.stop());
    const good = await rawConnect(b.port);
    good.write(gen(version === 5 ? connect5 : connect4, version));
    const [ack] = await waitForType(good, PacketType.CONNACK);
    t.is(ack?.body[1], 0, 'the well-formed CONNECT is accepted');
    good.socket.destroy();
    const bad = await rawConnect(b.port);
    bad.write(withTrailing(gen(version === 5 ? connect5 : connect4, version), [0x01, 0x02, 0x03]));
    t.true(await bad.closed(2000));
    const acks = ofType(packetsOf(bad), PacketType.CONNACK);
    t.true(acks.every((a) => a.body[1] !== 0), 'never accepted');
  });
}

test('v5 DISCONNECT and AUTH with stray bytes are malformed too', async (t) => {
  const b = await startBroker();
  t.teardown(() => b.stop());
  const d = await connected(b.port, 5);
  d.write(withTrailing(gen({ cmd: 'disconnect', reasonCode: 0x04, properties: { reasonString: 'bye' } }, 5), [0x09]));
  t.true(await d.closed(2000));
  // A malformed DISCONNECT is not a DISCONNECT: the broker answers 0x81.
  t.is(ofType(packetsOf(d), PacketType.DISCONNECT)[0]?.body[0], 0x81);
  const a = await connected(b.port, 5);
  a.write(withTrailing(gen({ cmd: 'auth', reasonCode: 0x19, properties: { authenticationMethod: 'JWT' } }, 5), [0x00]));
  t.true(await a.closed(2000));
  t.is(ofType(packetsOf(a), PacketType.DISCONNECT)[0]?.body[0], 0x81);
});
