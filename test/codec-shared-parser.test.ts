/**
 * Every connection's frames go through one mqtt-packet parser. A frame that fails half way
 * (wrong protocol level, bad UTF-8, reserved flags, QoS 3, a bad property) must leave nothing
 * behind for the next connection's frame, and each reader keeps its own protocol version.
 */
import test from 'ava';
import mqttPacket from 'mqtt-packet';
import { PacketReader, type CodecError, type Packet } from '../src/protocol/codec.ts';

function reader(): { r: PacketReader; packets: Packet[]; errors: CodecError[] } {
  const packets: Packet[] = [];
  const errors: CodecError[] = [];
  const r = new PacketReader({ maxPacketSize: 1 << 20, maxConnectSize: 65536 }, (p) => packets.push(p), (e) => errors.push(e));
  return { r, packets, errors };
}

const connect = (version: 3 | 4 | 5, clientId: string) =>
  mqttPacket.generate({ cmd: 'connect', protocolId: version === 3 ? 'MQIsdp' : 'MQTT', protocolVersion: version, clean: true, clientId, keepalive: 60 } as mqttPacket.IConnectPacket);

const BROKEN: [string, Buffer, boolean][] = [
  // [what, bytes, needs a CONNECT first]
  ['protocol level 6', Buffer.from('101000044d5154540602003c000461626364', 'hex'), false],
  ['a client id with invalid UTF-8', Buffer.from('101000044d5154540402003c0004c328c328', 'hex'), false],
  ['connect flag bit 0 set', Buffer.from('101000044d5154540403003c000461626364', 'hex'), false],
  ['a PUBLISH with QoS 3', Buffer.from('3605000161000001', 'hex'), true],
  ['a SUBSCRIBE with reserved flags 0000', Buffer.from('8006000100016100', 'hex'), true],
  ['a PUBLISH whose topic length runs past the frame', Buffer.from('300400096162', 'hex'), true],
];

for (const [what, bytes, afterConnect] of BROKEN) {
  test(`after ${what} on one connection, the next connection's frames of every version parse`, (t) => {
    const bad = reader();
    if (afterConnect) bad.r.push(connect(4, 'bad'));
    bad.r.push(bytes);
    t.is(bad.errors.length, 1, `${what} is refused`);
    for (const version of [3, 4, 5] as const) {
      const good = reader();
      good.r.push(connect(version, `good-${version}`));
      good.r.push(mqttPacket.generate({ cmd: 'publish', topic: 'a/b', payload: Buffer.from('x'), qos: 1, messageId: 7, retain: false, dup: false }, { protocolVersion: version }));
      t.deepEqual(good.errors, [], `v${version} after ${what}`);
      t.deepEqual(
        good.packets.map((p) => p.cmd),
        ['connect', 'publish'],
      );
      t.is(good.r.protocolVersion, version);
      const pub = good.packets[1] as mqttPacket.IPublishPacket;
      t.is(pub.topic, 'a/b');
      t.is(pub.messageId, 7);
    }
  });
}

test('readers of different versions interleaved keep their own version (v5 properties are parsed only for v5)', (t) => {
  const v5 = reader();
  const v4 = reader();
  v5.r.push(connect(5, 'five'));
  v4.r.push(connect(4, 'four'));
  for (let i = 0; i < 3; i++) {
    v5.r.push(mqttPacket.generate({ cmd: 'publish', topic: 't', payload: Buffer.from('5'), qos: 0, retain: false, dup: false, properties: { contentType: 'text/plain' } }, { protocolVersion: 5 }));
    v4.r.push(mqttPacket.generate({ cmd: 'publish', topic: 't', payload: Buffer.from('4'), qos: 0, retain: false, dup: false }, { protocolVersion: 4 }));
  }
  t.deepEqual(v5.errors, []);
  t.deepEqual(v4.errors, []);
  t.is(v5.packets.length, 4);
  t.is(v4.packets.length, 4);
  t.is((v5.packets[1] as mqttPacket.IPublishPacket).properties?.contentType, 'text/plain');
  t.is((v4.packets[3] as mqttPacket.IPublishPacket).payload.toString(), '4');
});

test('a bridge CONNECT (protocol level 0x84) still makes its subscriptions no-local and retain-as-published, as mqtt-packet reads them', (t) => {
  const bridge = reader();
  bridge.r.push(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, bridgeMode: true, clean: true, clientId: 'bridge', keepalive: 60 } as mqttPacket.IConnectPacket));
  bridge.r.push(mqttPacket.generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'a/#', qos: 1 }] } as mqttPacket.ISubscribePacket));
  const plain = reader();
  plain.r.push(connect(4, 'plain'));
  plain.r.push(mqttPacket.generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'a/#', qos: 1 }] } as mqttPacket.ISubscribePacket));
  t.deepEqual(bridge.errors, []);
  const sub = (bridge.packets[1] as mqttPacket.ISubscribePacket).subscriptions[0];
  t.is(sub?.nl, true);
  t.is(sub?.rap, true);
  const plainSub = (plain.packets[1] as mqttPacket.ISubscribePacket).subscriptions[0];
  t.not(plainSub?.nl, true, 'an ordinary client is not read in bridge mode');
});
