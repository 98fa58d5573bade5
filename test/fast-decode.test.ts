/**
 * The fast decoder must agree with mqtt-packet on every frame it accepts, and hand back (null)
 * every frame it is not sure of. Frames come from mqtt-packet's generator, then random mutations
 * of their bodies and flag bits (the remaining length kept consistent, as the reader frames them).
 */
import test from 'ava';
import mqtt from 'mqtt-packet';
import type * as MP from 'mqtt-packet';
import { encode } from '../src/protocol/codec.ts';
import { decodeFast } from '../src/protocol/fast-decode.ts';
import { frame } from './raw-mqtt.ts';

type Version = 3 | 4 | 5;

function reference(frame: Buffer, version: number): { packet: MP.Packet | null; error: Error | null } {
  const parser = mqtt.parser(version === 0 ? {} : { protocolVersion: version as Version });
  let packet: MP.Packet | null = null;
  let error: Error | null = null;
  parser.on('packet', (p: MP.Packet) => (packet ??= p));
  parser.on('error', (e: Error) => (error ??= e));
  const left = parser.parse(frame);
  if (left !== 0 && error === null) error = new Error(`${left} bytes left over`);
  return { packet, error };
}

/** A plain-object copy, so objects from both decoders compare by fields alone. */
function plain(p: MP.Packet): Record<string, unknown> {
  const o: Record<string, unknown> = { ...p };
  if (o.will !== undefined && o.will !== null) o.will = { ...(o.will as object) };
  return o;
}

/** Where the body starts: after the fixed header and its remaining length. */
function header(frame: Buffer): number {
  let i = 1;
  while (((frame[i] as number) & 0x80) !== 0) i++;
  return i + 1;
}

/** Re-frames a body behind a first byte, with the remaining length encoded for it. */
function frameOf(first: number, body: Buffer): Buffer {
  return frame(first >> 4, first & 0x0f, body);
}

const payloads = [Buffer.alloc(0), Buffer.from('hello'), Buffer.alloc(300, 7)];
const topics = ['a', 'bench/sensor/1', 'ünïcödé/тема/😀', 'x'.repeat(200)];

function samples(): { frame: Buffer; version: number; name: string }[] {
  const out: { frame: Buffer; version: number; name: string }[] = [];
  const add = (packet: object, version: Version, decodeAs: number, name: string) =>
    out.push({ frame: mqtt.generate(packet as MP.Packet, { protocolVersion: version }), version: decodeAs, name });
  for (const v of [3, 4, 5] as const) {
    for (const qos of [0, 1, 2] as const)
      for (const topic of topics)
        for (const payload of payloads)
          for (const retain of [false, true])
            add({ cmd: 'publish', topic, payload, qos, retain, dup: qos > 0 && retain, ...(qos > 0 ? { messageId: 4242 } : {}) }, v, v, `publish v${v} q${qos}`);
    add({ cmd: 'publish', topic: 't', payload: Buffer.from('p'), qos: 1, messageId: 7, properties: { contentType: 'text/plain' } }, 5, 5, 'publish v5 with properties');
    for (const cmd of ['puback', 'pubrec', 'pubrel', 'pubcomp'] as const) add({ cmd, messageId: 65535 }, v, v, `${cmd} v${v}`);
    add({ cmd: 'pingreq' }, v, v, `pingreq v${v}`);
    add({ cmd: 'disconnect' }, v, v, `disconnect v${v}`);
  }
  for (const v of [3, 4, 5] as const) {
    for (const username of [undefined, 'user', 'ü']) {
      for (const password of [undefined, Buffer.from('secret')]) {
        for (const will of [undefined, { topic: 'will/t', payload: Buffer.from('bye'), qos: 1, retain: true }, { topic: 'w', payload: Buffer.alloc(0), qos: 0, retain: false }]) {
          for (const clean of [true, false]) {
            const packet = { cmd: 'connect', protocolId: v === 3 ? 'MQIsdp' : 'MQTT', protocolVersion: v, clientId: `c-${v}`, clean, keepalive: 60, username, password, will };
            if (password !== undefined && username === undefined) continue; // generate() refuses it
            add(packet, v, 0, `connect v${v}`);
          }
        }
      }
    }
  }
  add({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: '', clean: true, keepalive: 0 }, 4, 0, 'connect empty id');
  return out;
}

test('agrees with mqtt-packet on every generated frame it accepts, and accepts the common ones', (t) => {
  let accepted = 0;
  for (const { frame, version, name } of samples()) {
    const fast = decodeFast(frame, header(frame), version);
    const ref = reference(frame, version);
    t.is(ref.error, null, `${name}: mqtt-packet refused a generated frame`);
    if (fast === null) {
      // Only MQTT 5 CONNECTs, publishes with properties, acknowledgements with a reason code and DISCONNECT go the slow way.
      t.true(/connect v5|with properties|disconnect v5|pub(ack|rec|rel|comp) v5/.test(name), `${name}: the fast path should take this frame`);
      continue;
    }
    accepted++;
    t.deepEqual(plain(fast), plain(ref.packet!), name);
  }
  t.true(accepted > 250, `accepted ${accepted}`);
});

test('agrees with mqtt-packet on mutated frames, or leaves them to it', (t) => {
  let seed = 12345;
  const rand = (n: number): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  let accepted = 0;
  let declined = 0;
  for (const { frame, version } of samples()) {
    const h = header(frame);
    for (let k = 0; k < 60; k++) {
      let first = frame[0] as number;
      let body = Buffer.from(frame.subarray(h));
      const kind = rand(4);
      if (kind === 0) first ^= 1 << rand(4); // a flag bit
      else if (kind === 1 && body.length > 0) body[rand(body.length)] = rand(256); // any byte
      else if (kind === 2 && body.length > 0) body = body.subarray(0, rand(body.length)); // truncated
      else body = Buffer.concat([body, Buffer.from([rand(256)])]); // a trailing byte
      const mutated = frameOf(first, body);
      const fast = decodeFast(mutated, header(mutated), version);
      if (fast === null) {
        declined++;
        continue;
      }
      const ref = reference(mutated, version);
      t.is(ref.error, null, `accepted a frame mqtt-packet refuses: ${mutated.toString('hex')}`);
      if (ref.packet !== null) t.deepEqual(plain(fast), plain(ref.packet), mutated.toString('hex'));
      const text = JSON.stringify(fast, (_k, v: unknown) => (typeof v === 'string' ? v : v));
      t.false(text.includes('\\u0000'), 'U+0000 must go to the slow path');
      accepted++;
    }
  }
  t.true(accepted > 1000 && declined > 1000, `accepted ${accepted}, declined ${declined}`);
});

test('declines what only mqtt-packet may judge', (t) => {
  const whole = (f: Buffer, version: number) => decodeFast(f, header(f), version);
  const publish = (topic: Buffer) => frameOf(0x30, Buffer.concat([Buffer.from([0, topic.length]), topic, Buffer.from('p')]));
  t.is(whole(publish(Buffer.from('a\u0000b')), 4), null, 'U+0000 in a topic');
  t.is(whole(publish(Buffer.from([0x61, 0xc3, 0x28])), 4), null, 'invalid UTF-8 in a topic');
  t.is(whole(publish(Buffer.from('\uFFFD', 'utf8')), 4), null, 'U+FFFD (may stand for a bad sequence)');
  t.is(whole(frameOf(0x36, Buffer.from([0, 1, 0x61, 0, 1])), 4), null, 'QoS 3');
  t.is(whole(frameOf(0x30, Buffer.from([0, 1, 0x61])), 0), null, 'anything but CONNECT before CONNECT');
  const connect = mqtt.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'c', clean: true, keepalive: 10 } as MP.IConnectPacket);
  const bridge = Buffer.from(connect);
  bridge[header(connect) + 6] = 0x84;
  t.is(decodeFast(bridge, header(bridge), 0), null, 'a bridge CONNECT');
  const reserved = Buffer.from(connect);
  reserved[header(connect) + 7]! |= 1;
  t.is(decodeFast(reserved, header(reserved), 0), null, 'the reserved CONNECT flag');
  t.not(decodeFast(connect, header(connect), 0), null, 'the plain CONNECT itself is taken');
});

test('encode: the CONNACK and PINGRESP shortcuts write the bytes mqtt-packet writes', (t) => {
  for (const v of [3, 4] as const)
    for (const sessionPresent of [false, true])
      for (const returnCode of [0, 1, 2, 3, 4, 5]) {
        const p = { cmd: 'connack', returnCode, sessionPresent } as MP.IConnackPacket;
        t.deepEqual(encode(p, v), mqtt.generate(p, { protocolVersion: v }), `v${v} ${returnCode} ${sessionPresent}`);
      }
  for (const v of [3, 4, 5] as const) t.deepEqual(encode({ cmd: 'pingresp' }, v), mqtt.generate({ cmd: 'pingresp' }, { protocolVersion: v }));
  const v5 = { cmd: 'connack', reasonCode: 0, sessionPresent: true, properties: { receiveMaximum: 10 } } as MP.IConnackPacket;
  t.deepEqual(encode(v5, 5), mqtt.generate(v5, { protocolVersion: 5 }), 'MQTT 5 still goes through mqtt-packet');
});
