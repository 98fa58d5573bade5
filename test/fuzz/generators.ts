/**
 * fast-check generators for hostile MQTT input, shared by the fuzz test (test/fuzz.test.ts)
 * and the long fuzz run (`npm run fuzz`).
 *
 * A case is a CONNECT and a short sequence of packets, each described as data and encoded
 * here byte by byte (no mqtt-packet), so a mutation can break anything: flags, lengths,
 * strings, properties. Encoding takes the client id from the runner, so concurrent cases never
 * share a session by accident.
 */
import fc from 'fast-check';
import { encodeString as str, encodeVarint as varint } from '../raw-mqtt.ts';

export { str, varint };

/** 3 is MQTT 3.1 (protocol name MQIsdp), 4 is 3.1.1, 5 is 5.0. */
export type Version = 3 | 4 | 5;

// ── encoders ─────────────────────────────────────────────────────────────────

export function u16(n: number): Buffer {
  return Buffer.from([(n >> 8) & 0xff, n & 0xff]);
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

export function frame(first: number, body: Buffer): Buffer {
  return Buffer.concat([Buffer.from([first]), varint(body.length), body]);
}

// ── MQTT 5 properties ────────────────────────────────────────────────────────

/** One property: its identifier and its encoded value. */
export interface Prop {
  id: number;
  value: Buffer;
}

export function props(list: Prop[]): Buffer {
  const body = Buffer.concat(list.flatMap((p) => [Buffer.from([p.id]), p.value]));
  return Buffer.concat([varint(body.length), body]);
}

const byteProp = (id: number, values: number[]) => fc.constantFrom(...values).map((v): Prop => ({ id, value: Buffer.from([v]) }));
const u16Prop = (id: number, min: number, max: number) => fc.integer({ min, max }).map((v): Prop => ({ id, value: u16(v) }));
const u32Prop = (id: number, min: number, max: number) => fc.integer({ min, max }).map((v): Prop => ({ id, value: u32(v) }));
const strProp = (id: number, s: fc.Arbitrary<string>) => s.map((v): Prop => ({ id, value: str(v) }));
const binProp = (id: number) => fc.uint8Array({ maxLength: 24 }).map((v): Prop => ({ id, value: str(Buffer.from(v)) }));

const level = fc.stringMatching(/^[a-z0-9_-]{1,6}$/);
/** Topic names stay under `fz/` with few distinct values, so retained messages stay bounded. */
export const topicName = fc.array(fc.constantFrom('a', 'b', 'c', 'dev-1', 'x_y', '0'), { minLength: 1, maxLength: 4 }).map((ls) => `fz/${ls.join('/')}`);
const filterLevel = fc.oneof(level, fc.constant('+'));
export const topicFilter = fc
  .tuple(fc.array(filterLevel, { minLength: 0, maxLength: 3 }), fc.boolean(), fc.option(fc.stringMatching(/^[a-z]{1,5}$/), { nil: undefined }))
  .map(([ls, hash, share]) => {
    const f = ['fz', ...ls, ...(hash ? ['#'] : [])].join('/');
    return share === undefined ? f : `$share/${share}/${f}`;
  });
const text = fc.string({ unit: 'grapheme', maxLength: 16 }).map((s) => s.replace(/\u0000/g, ''));
const userProp = fc.tuple(text, text).map(([k, v]): Prop => ({ id: 0x26, value: Buffer.concat([str(k), str(v)]) }));

/** Picks each property at most once (the spec forbids repeats, except user properties). */
function propSet(arbs: fc.Arbitrary<Prop>[]): fc.Arbitrary<Prop[]> {
  return fc
    .tuple(fc.tuple(...arbs.map((a) => fc.option(a, { nil: undefined }))), fc.array(userProp, { maxLength: 3 }))
    .map(([some, users]) => [...some.filter((p): p is Prop => p !== undefined), ...users]);
}

const connectProps = propSet([
  u32Prop(0x11, 0, 300), // session expiry interval
  u16Prop(0x21, 1, 65535), // receive maximum
  u32Prop(0x27, 64, 1 << 20), // maximum packet size
  u16Prop(0x22, 0, 64), // topic alias maximum
  byteProp(0x19, [0, 1]), // request response information
  byteProp(0x17, [0, 1]), // request problem information
]);

const willProps = propSet([
  u32Prop(0x18, 0, 3), // will delay interval
  byteProp(0x01, [0]), // payload format indicator
  u32Prop(0x02, 1, 3600), // message expiry interval
  strProp(0x03, text), // content type
  strProp(0x08, topicName), // response topic
  binProp(0x09), // correlation data
]);

const publishProps = propSet([
  byteProp(0x01, [0]),
  u32Prop(0x02, 1, 3600),
  u16Prop(0x23, 1, 32), // topic alias, within the broker's default maximum
  strProp(0x08, topicName),
  binProp(0x09),
  strProp(0x03, text),
]);

/** Authentication method and data (0x15, 0x16) for a CONNECT. */
const authProps = fc.tuple(strProp(0x15, fc.constantFrom('SCRAM-SHA-256', 'JWT', 'x')), binProp(0x16)).map(([m, d]): Prop[] => [m, d]);

const subscribeProps = propSet([fc.integer({ min: 1, max: 268_435_455 }).map((v): Prop => ({ id: 0x0b, value: varint(v) }))]);
const ackProps = propSet([strProp(0x1f, text)]); // reason string and user properties

// ── packets as data ──────────────────────────────────────────────────────────

export interface ConnectSpec {
  version: Version;
  clean: boolean;
  keepAlive: number;
  properties: Prop[];
  will?: { topic: string; payload: Buffer; qos: 0 | 1 | 2; retain: boolean; properties: Prop[] };
  username?: string;
  password?: Buffer;
}

export type PacketSpec =
  | { type: 'publish'; topic: string; payload: Buffer; qos: 0 | 1 | 2; retain: boolean; dup: boolean; packetId: number; properties: Prop[] }
  | { type: 'subscribe'; packetId: number; filters: { filter: string; qos: 0 | 1 | 2; nl: boolean; rap: boolean; rh: 0 | 1 | 2 }[]; properties: Prop[] }
  | { type: 'unsubscribe'; packetId: number; filters: string[]; properties: Prop[] }
  | { type: 'ack'; kind: 4 | 5 | 6 | 7; packetId: number; reason?: number; properties: Prop[] }
  | { type: 'pingreq' }
  | { type: 'disconnect'; reason: number }
  | { type: 'auth'; reason: number };

/** Packet ids the generators use; the runner's probe uses one outside this range. */
export const MAX_GENERATED_PACKET_ID = 60_000;
const packetId = fc.integer({ min: 1, max: MAX_GENERATED_PACKET_ID });

/**
 * A valid CONNECT. Keep-alive is 1 or 2 seconds, so a connection left waiting for the rest of a
 * frame is closed by the keep-alive check soon after the case stops sending.
 */
export function connectSpec(version: Version): fc.Arbitrary<ConnectSpec> {
  return fc.record(
    {
      version: fc.constant(version),
      clean: fc.boolean(),
      keepAlive: fc.integer({ min: 1, max: 2 }),
      properties: version === 5 ? connectProps : fc.constant<Prop[]>([]),
      will: fc.record({
        topic: topicName,
        payload: fc.uint8Array({ maxLength: 32 }).map((a) => Buffer.from(a)),
        qos: fc.constantFrom(0 as const, 1 as const, 2 as const),
        retain: fc.boolean(),
        properties: version === 5 ? willProps : fc.constant<Prop[]>([]),
      }),
      username: text,
      password: fc.uint8Array({ maxLength: 16 }).map((a) => Buffer.from(a)),
    },
    { requiredKeys: ['version', 'clean', 'keepAlive', 'properties'] },
  ).map((c) => {
    // MQTT 3.1 and 3.1.1 allow a password only with a user name [MQTT-3.1.2-22].
    if (version !== 5 && c.username === undefined && c.password !== undefined) {
      const { password: _p, ...rest } = c;
      return rest;
    }
    return c;
  });
}

/** A valid packet a connected client may send (no DISCONNECT or AUTH: those end the case early). */
export function packetSpec(version: Version): fc.Arbitrary<PacketSpec> {
  const v5 = version === 5;
  const none = fc.constant<Prop[]>([]);
  return fc.oneof(
    { weight: 4, arbitrary: fc.record({
      type: fc.constant('publish' as const),
      topic: topicName,
      payload: fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)),
      qos: fc.constantFrom(0 as const, 1 as const, 2 as const),
      retain: fc.boolean(),
      dup: fc.boolean(),
      packetId,
      properties: v5 ? publishProps : none,
    }) },
    { weight: 2, arbitrary: fc.record({
      type: fc.constant('subscribe' as const),
      packetId,
      filters: fc.array(
        fc.record({ filter: topicFilter, qos: fc.constantFrom(0 as const, 1 as const, 2 as const), nl: fc.boolean(), rap: fc.boolean(), rh: fc.constantFrom(0 as const, 1 as const, 2 as const) }),
        { minLength: 1, maxLength: 3 },
      ).map((fs) => (v5 ? fs.map((f) => (f.filter.startsWith('$share/') ? { ...f, nl: false } : f)) : fs.map((f) => ({ ...f, nl: false, rap: false, rh: 0 as const })))),
      properties: v5 ? subscribeProps : none,
    }) },
    { weight: 1, arbitrary: fc.record({ type: fc.constant('unsubscribe' as const), packetId, filters: fc.array(topicFilter, { minLength: 1, maxLength: 3 }), properties: v5 ? propSet([]) : none }) },
    { weight: 2, arbitrary: fc.record(
      {
        type: fc.constant('ack' as const),
        kind: fc.constantFrom(4 as const, 5 as const, 6 as const, 7 as const),
        packetId,
        reason: fc.nat(),
        properties: v5 ? ackProps : none,
      },
      { requiredKeys: ['type', 'kind', 'packetId', 'properties'] },
    ).map((a) => {
      if (!v5) return { type: a.type, kind: a.kind, packetId: a.packetId, properties: [] as Prop[] };
      if (a.reason === undefined) return a;
      // Each acknowledgement has its own set of reason codes (v5 3.4.2.1, 3.5.2.1, 3.6.2.1, 3.7.2.1).
      const allowed = a.kind === 4 || a.kind === 5 ? [0x00, 0x10, 0x80, 0x83, 0x87, 0x91, 0x97, 0x99] : [0x00, 0x92];
      return { ...a, reason: allowed[a.reason % allowed.length] as number };
    }) },
    { weight: 1, arbitrary: fc.constant({ type: 'pingreq' as const }) },
  );
}

/** A packet that ends the connection or the exchange on its own (in the random class only). */
export function endingSpec(version: Version): fc.Arbitrary<PacketSpec> {
  return version === 5
    ? fc.oneof(fc.record({ type: fc.constant('disconnect' as const), reason: fc.constantFrom(0x00, 0x04, 0x80) }), fc.record({ type: fc.constant('auth' as const), reason: fc.constantFrom(0x00, 0x18, 0x19) }))
    : fc.constant({ type: 'disconnect' as const, reason: 0 });
}

export const protocolName = (version: Version) => (version === 3 ? 'MQIsdp' : 'MQTT');

export function encodeConnectSpec(c: ConnectSpec, clientId: string | Buffer): Buffer {
  let flags = c.clean ? 0x02 : 0;
  if (c.will) flags |= 0x04 | (c.will.qos << 3) | (c.will.retain ? 0x20 : 0);
  if (c.password !== undefined) flags |= 0x40;
  if (c.username !== undefined) flags |= 0x80;
  const parts: Buffer[] = [str(protocolName(c.version)), Buffer.from([c.version, flags]), u16(c.keepAlive)];
  if (c.version === 5) parts.push(props(c.properties));
  parts.push(str(clientId));
  if (c.will) {
    if (c.version === 5) parts.push(props(c.will.properties));
    parts.push(str(c.will.topic), str(c.will.payload));
  }
  if (c.username !== undefined) parts.push(str(c.username));
  if (c.password !== undefined) parts.push(str(c.password));
  return frame(0x10, Buffer.concat(parts));
}

export function encodePacketSpec(p: PacketSpec, version: Version): Buffer {
  const v5 = version === 5;
  switch (p.type) {
    case 'publish': {
      const dup = p.qos > 0 && p.dup;
      const first = 0x30 | (dup ? 0x08 : 0) | (p.qos << 1) | (p.retain ? 1 : 0);
      return frame(first, Buffer.concat([str(p.topic), p.qos > 0 ? u16(p.packetId) : Buffer.alloc(0), v5 ? props(p.properties) : Buffer.alloc(0), p.payload]));
    }
    case 'subscribe': {
      const entries = p.filters.map((f) => Buffer.concat([str(f.filter), Buffer.from([f.qos | (f.nl ? 4 : 0) | (f.rap ? 8 : 0) | (f.rh << 4)])]));
      return frame(0x82, Buffer.concat([u16(p.packetId), v5 ? props(p.properties) : Buffer.alloc(0), ...entries]));
    }
    case 'unsubscribe':
      return frame(0xa2, Buffer.concat([u16(p.packetId), v5 ? props(p.properties) : Buffer.alloc(0), ...p.filters.map((f) => str(f))]));
    case 'ack': {
      const first = (p.kind << 4) | (p.kind === 6 ? 2 : 0);
      const tail = v5 && (p.reason !== undefined || p.properties.length > 0) ? Buffer.concat([Buffer.from([p.reason ?? 0]), props(p.properties)]) : Buffer.alloc(0);
      return frame(first, Buffer.concat([u16(p.packetId), tail]));
    }
    case 'pingreq':
      return Buffer.from([0xc0, 0x00]);
    case 'disconnect':
      return v5 ? frame(0xe0, Buffer.from([p.reason, 0x00])) : Buffer.from([0xe0, 0x00]);
    case 'auth':
      return frame(0xf0, Buffer.from([p.reason, 0x00]));
  }
}

// ── mutations ────────────────────────────────────────────────────────────────

/**
 * A random, byte-level corruption. Positions are drawn as large integers and reduced modulo the
 * packet's length when applied, so one mutation fits any packet.
 */
export type RandomMutation =
  | { kind: 'bitflip'; at: number; bit: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'insert'; at: number; bytes: Buffer }
  | { kind: 'length'; value: number }
  | { kind: 'flags'; flags: number }
  | { kind: 'overwrite'; at: number; byte: number };

export const randomMutation: fc.Arbitrary<RandomMutation> = fc.oneof(
  fc.record({ kind: fc.constant('bitflip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }).map((a) => Buffer.from(a)) }),
  fc.record({ kind: fc.constant('length' as const), value: fc.oneof(fc.integer({ min: 0, max: 300 }), fc.integer({ min: 0, max: 268_435_455 })) }),
  fc.record({ kind: fc.constant('flags' as const), flags: fc.integer({ min: 0, max: 15 }) }),
  fc.record({ kind: fc.constant('overwrite' as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
);

/** Where the fixed header's remaining length ends (index of the first body byte). */
function bodyStart(bytes: Buffer): number {
  let i = 1;
  while (i < bytes.length && i < 5 && ((bytes[i] as number) & 0x80) !== 0) i++;
  return Math.min(i + 1, bytes.length);
}

export function applyRandom(bytes: Buffer, m: RandomMutation): Buffer {
  const n = bytes.length;
  switch (m.kind) {
    case 'bitflip': {
      const copy = Buffer.from(bytes);
      const i = m.at % n;
      copy[i] = (copy[i] as number) ^ (1 << m.bit);
      return copy;
    }
    case 'truncate':
      return bytes.subarray(0, m.at % n);
    case 'insert': {
      const i = m.at % (n + 1);
      return Buffer.concat([bytes.subarray(0, i), m.bytes, bytes.subarray(i)]);
    }
    case 'length':
      return Buffer.concat([bytes.subarray(0, 1), varint(m.value), bytes.subarray(bodyStart(bytes))]);
    case 'flags':
      return Buffer.concat([Buffer.from([((bytes[0] as number) & 0xf0) | m.flags]), bytes.subarray(1)]);
    case 'overwrite': {
      const copy = Buffer.from(bytes);
      copy[m.at % n] = m.byte;
      return copy;
    }
  }
}

/**
 * A violation the broker must refuse, with the v5 reason codes that are right for it. Applied
 * to the last packet of a case that otherwise is valid.
 */
export type Violation =
  | { kind: 'wildcard-topic'; wildcard: '+' | '#' }
  | { kind: 'invalid-utf8'; bytes: Buffer }
  | { kind: 'nul'; where: 'topic' | 'filter' | 'user-property' }
  | { kind: 'wrong-flags'; packet: 'subscribe' | 'unsubscribe' | 'pubrel' | 'puback' | 'pingreq'; flags: number }
  | { kind: 'qos3' }
  | { kind: 'duplicate-property'; property: 'messageExpiry' | 'topicAlias' | 'payloadFormat' | 'contentType' | 'subscriptionId' }
  | { kind: 'five-byte-length' }
  | { kind: 'over-max-size'; extra: number }
  | { kind: 'packet-id-zero'; packet: 'publish' | 'subscribe' | 'unsubscribe' }
  | { kind: 'server-only'; type: 2 | 9 | 11 | 13 }
  | { kind: 'second-connect' }
  | { kind: 'reserved-type' };

/** Bytes that are never valid UTF-8 (a lone continuation, an overlong NUL, a surrogate, a truncated sequence). */
const badUtf8 = fc.constantFrom(Buffer.from([0x80]), Buffer.from([0xc0, 0x80]), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from([0xc3, 0x28]), Buffer.from([0xff]), Buffer.from([0xf4, 0x90, 0x80, 0x80]));

export const violation: fc.Arbitrary<Violation> = fc.oneof(
  fc.record({ kind: fc.constant('wildcard-topic' as const), wildcard: fc.constantFrom('+' as const, '#' as const) }),
  fc.record({ kind: fc.constant('invalid-utf8' as const), bytes: badUtf8 }),
  fc.record({ kind: fc.constant('nul' as const), where: fc.constantFrom('topic' as const, 'filter' as const, 'user-property' as const) }),
  fc.record({
    kind: fc.constant('wrong-flags' as const),
    packet: fc.constantFrom('subscribe' as const, 'unsubscribe' as const, 'pubrel' as const, 'puback' as const, 'pingreq' as const),
    flags: fc.integer({ min: 0, max: 15 }),
  }),
  fc.constant({ kind: 'qos3' as const }),
  fc.record({ kind: fc.constant('duplicate-property' as const), property: fc.constantFrom('messageExpiry' as const, 'topicAlias' as const, 'payloadFormat' as const, 'contentType' as const, 'subscriptionId' as const) }),
  fc.constant({ kind: 'five-byte-length' as const }),
  fc.record({ kind: fc.constant('over-max-size' as const), extra: fc.integer({ min: 1, max: 200_000_000 }) }),
  fc.record({ kind: fc.constant('packet-id-zero' as const), packet: fc.constantFrom('publish' as const, 'subscribe' as const, 'unsubscribe' as const) }),
  fc.record({ kind: fc.constant('server-only' as const), type: fc.constantFrom(2 as const, 9 as const, 11 as const, 13 as const) }),
  fc.constant({ kind: 'second-connect' as const }),
  fc.constant({ kind: 'reserved-type' as const }),
);

/** The bytes of a violation and the v5 DISCONNECT reason codes that are right for it. */
export function encodeViolation(v: Violation, version: Version, maxPacketSize: number): { bytes: Buffer; reasons: number[] } {
  const v5 = version === 5;
  const p5 = (list: Prop[]) => (v5 ? props(list) : Buffer.alloc(0));
  const pub = (topic: string | Buffer, properties: Prop[] = [], first = 0x32) =>
    frame(first, Buffer.concat([str(topic), (first & 0x06) !== 0 ? u16(7) : Buffer.alloc(0), p5(properties), Buffer.from('x')]));
  switch (v.kind) {
    case 'wildcard-topic':
      return { bytes: pub(`fz/${v.wildcard}`), reasons: [0x90] }; // [MQTT-3.3.2-2]
    case 'invalid-utf8':
      return { bytes: pub(Buffer.concat([Buffer.from('fz/'), v.bytes])), reasons: [0x81] }; // [MQTT-1.5.4-1]
    case 'nul':
      if (v.where === 'topic') return { bytes: pub(Buffer.from('fz/a\u0000b')), reasons: [0x81] }; // [MQTT-1.5.4-2]
      if (v.where === 'filter') return { bytes: frame(0x82, Buffer.concat([u16(9), p5([]), str(Buffer.from('fz/\u0000')), Buffer.from([1])])), reasons: [0x81] };
      if (!v5) return { bytes: pub(Buffer.from('fz/\u0000')), reasons: [0x81] };
      return { bytes: pub('fz/a', [{ id: 0x26, value: Buffer.concat([str('k\u0000'), str('v')]) }]), reasons: [0x81] };
    case 'wrong-flags': {
      const required = { subscribe: 2, unsubscribe: 2, pubrel: 2, puback: 0, pingreq: 0 }[v.packet];
      const flags = v.flags === required ? required ^ 1 : v.flags;
      const type = { subscribe: 8, unsubscribe: 10, pubrel: 6, puback: 4, pingreq: 12 }[v.packet];
      const body =
        v.packet === 'subscribe' ? Buffer.concat([u16(3), p5([]), str('fz/a'), Buffer.from([0])])
        : v.packet === 'unsubscribe' ? Buffer.concat([u16(3), p5([]), str('fz/a')])
        : v.packet === 'pingreq' ? Buffer.alloc(0)
        : u16(3);
      return { bytes: frame((type << 4) | flags, body), reasons: [0x81] }; // [MQTT-2.2.2-2]
    }
    case 'qos3':
      return { bytes: pub('fz/a', [], 0x36), reasons: [0x81] }; // [MQTT-3.3.1-4]
    case 'duplicate-property': {
      if (!v5) return { bytes: pub('fz/a', [], 0x36), reasons: [0x81] };
      const once: Prop = {
        messageExpiry: { id: 0x02, value: u32(60) },
        topicAlias: { id: 0x23, value: u16(1) },
        payloadFormat: { id: 0x01, value: Buffer.from([0]) },
        contentType: { id: 0x03, value: str('text/plain') },
        subscriptionId: { id: 0x0b, value: varint(5) },
      }[v.property];
      if (v.property === 'subscriptionId') {
        return { bytes: frame(0x82, Buffer.concat([u16(9), props([once, once]), str('fz/a'), Buffer.from([1])])), reasons: [0x81, 0x82] };
      }
      return { bytes: pub('fz/a', [once, once]), reasons: [0x81, 0x82] }; // "a Protocol Error to include it more than once"
    }
    case 'five-byte-length':
      return { bytes: Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x7f]), reasons: [0x81] }; // [MQTT-1.5.5-1]
    case 'over-max-size': {
      const claimed = Math.min(268_435_455, maxPacketSize + v.extra);
      return { bytes: Buffer.concat([Buffer.from([0x30]), varint(claimed)]), reasons: [0x95] };
    }
    case 'packet-id-zero':
      if (v.packet === 'publish') return { bytes: frame(0x32, Buffer.concat([str('fz/a'), u16(0), p5([]), Buffer.from('x')])), reasons: [0x81, 0x82] }; // [MQTT-2.3.1-1]
      if (v.packet === 'subscribe') return { bytes: frame(0x82, Buffer.concat([u16(0), p5([]), str('fz/a'), Buffer.from([0])])), reasons: [0x81, 0x82] };
      return { bytes: frame(0xa2, Buffer.concat([u16(0), p5([]), str('fz/a')])), reasons: [0x81, 0x82] };
    case 'server-only': {
      const body = v.type === 2 ? Buffer.from([0, 0]) : v.type === 13 ? Buffer.alloc(0) : Buffer.concat([u16(3), v5 ? p5([]) : Buffer.alloc(0), Buffer.from([0])]);
      return { bytes: frame(v.type << 4, body), reasons: [0x81, 0x82] };
    }
    case 'second-connect':
      return { bytes: frame(0x10, Buffer.concat([str(protocolName(version)), Buffer.from([version, 0x02]), u16(1), ...(v5 ? [props([])] : []), str('again')])), reasons: [0x82] }; // [MQTT-3.1.0-2]
    case 'reserved-type':
      return { bytes: Buffer.from([0x00, 0x02, 0x00, 0x00]), reasons: [0x81, 0x82] };
  }
}

/** A CONNECT the broker must refuse: no successful CONNACK, and the connection closed. */
export type ConnectViolation =
  | { kind: 'client-id-utf8'; bytes: Buffer }
  | { kind: 'username-nul' }
  | { kind: 'will-topic-wildcard'; wildcard: '+' | '#' }
  | { kind: 'reserved-connect-flag' }
  | { kind: 'will-qos3' }
  | { kind: 'will-flags-without-will' }
  | { kind: 'password-without-username' }
  | { kind: 'repeated-connect-property' }
  | { kind: 'protocol-name'; name: string };

export const connectViolation: fc.Arbitrary<ConnectViolation> = fc.oneof(
  fc.record({ kind: fc.constant('client-id-utf8' as const), bytes: badUtf8 }),
  fc.constant({ kind: 'username-nul' as const }),
  fc.record({ kind: fc.constant('will-topic-wildcard' as const), wildcard: fc.constantFrom('+' as const, '#' as const) }),
  fc.constant({ kind: 'reserved-connect-flag' as const }),
  fc.constant({ kind: 'will-qos3' as const }),
  fc.constant({ kind: 'will-flags-without-will' as const }),
  fc.constant({ kind: 'password-without-username' as const }),
  fc.constant({ kind: 'repeated-connect-property' as const }),
  fc.record({ kind: fc.constant('protocol-name' as const), name: fc.constantFrom('MQTX', 'mqtt', 'MQIsdp', '') }),
);

/** Encodes a CONNECT of the given version with one violation in it. */
export function encodeConnectViolation(v: ConnectViolation, version: Version, clientId: string): Buffer {
  const v5 = version === 5;
  const base = (o: { flags?: number; id?: string | Buffer; props?: Prop[]; tail?: Buffer[]; name?: string }) =>
    frame(0x10, Buffer.concat([str(o.name ?? protocolName(version)), Buffer.from([version, o.flags ?? 0x02]), u16(1), ...(v5 ? [props(o.props ?? [])] : []), str(o.id ?? clientId), ...(o.tail ?? [])]));
  const will = (topic: string) => [...(v5 ? [props([])] : []), str(topic), str('bye')];
  switch (v.kind) {
    case 'client-id-utf8':
      return base({ id: Buffer.concat([Buffer.from(clientId), v.bytes]) }); // [MQTT-1.5.4-1]
    case 'username-nul':
      return base({ flags: 0x82, tail: [str('us\u0000er')] }); // [MQTT-1.5.4-2]
    case 'will-topic-wildcard':
      return base({ flags: 0x06, tail: will(`fz/${v.wildcard}`) }); // [MQTT-3.1.3-11]
    case 'reserved-connect-flag':
      return base({ flags: 0x03 }); // [MQTT-3.1.2-3]
    case 'will-qos3':
      return base({ flags: 0x1e, tail: will('fz/w') }); // [MQTT-3.1.2-14]
    case 'will-flags-without-will':
      return base({ flags: 0x2a }); // will retain and QoS 1 without the will flag [MQTT-3.1.2-13, -15]
    case 'password-without-username':
      // MQTT 3.1 and 3.1.1 forbid it [MQTT-3.1.2-22]; v5 allows it, so v5 gets a repeated property instead.
      return v5 ? base({ props: [{ id: 0x21, value: u16(5) }, { id: 0x21, value: u16(6) }] }) : base({ flags: 0x42, tail: [str('secret')] });
    case 'repeated-connect-property':
      if (!v5) return base({ flags: 0x03 });
      return base({ props: [{ id: 0x11, value: u32(10) }, { id: 0x11, value: u32(0) }] });
    case 'protocol-name':
      return base({ name: v.name === protocolName(version) ? protocolName(version === 3 ? 4 : 3) : v.name }); // [MQTT-3.1.2-1]
  }
}

// ── cases ────────────────────────────────────────────────────────────────────

/**
 * One fuzz case on one connection:
 * - `noise`: random bytes, before or instead of a CONNECT;
 * - `random`: a valid CONNECT and packets, some corrupted at random (the CONNECT too);
 * - `violation`: a valid CONNECT and valid packets, then one packet the broker must refuse
 *   with a known reason code;
 * - `bad-connect`: a CONNECT the broker must refuse.
 */
export type FuzzCase =
  | { kind: 'noise'; version: Version; bytes: Buffer; afterConnect: boolean; connect: ConnectSpec }
  | { kind: 'random'; version: Version; connect: ConnectSpec; packets: PacketSpec[]; mutations: { index: number; mutation: RandomMutation }[] }
  | { kind: 'violation'; version: Version; connect: ConnectSpec; packets: PacketSpec[]; violation: Violation }
  | { kind: 'bad-connect'; version: Version; violation: ConnectViolation };

const version = fc.oneof({ weight: 1, arbitrary: fc.constant(3 as const) }, { weight: 3, arbitrary: fc.constant(4 as const) }, { weight: 4, arbitrary: fc.constant(5 as const) });

export const fuzzCase: fc.Arbitrary<FuzzCase> = version.chain((v) =>
  fc.oneof(
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('noise' as const), version: fc.constant(v), bytes: fc.uint8Array({ minLength: 1, maxLength: 512 }).map((a) => Buffer.from(a)), afterConnect: fc.boolean(), connect: connectSpec(v) }) },
    {
      weight: 3,
      arbitrary: fc.record({
        kind: fc.constant('random' as const),
        version: fc.constant(v),
        // One v5 CONNECT in eight also asks for extended authentication, which the anonymous listener refuses (0x8C).
        connect: fc.tuple(connectSpec(v), authProps, fc.integer({ min: 0, max: 7 })).map(([c, auth, pick]) =>
          v === 5 && pick === 0 ? { ...c, properties: [...c.properties, ...auth] } : c,
        ),
        // One case in six ends with a DISCONNECT or AUTH of its own.
        packets: fc.tuple(fc.array(packetSpec(v), { maxLength: 6 }), endingSpec(v), fc.integer({ min: 0, max: 5 })).map(([ps, end, die]) => (die === 0 ? [...ps, end] : ps)),
        mutations: fc.array(fc.record({ index: fc.nat(), mutation: randomMutation }), { minLength: 0, maxLength: 3 }),
      }),
    },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('violation' as const), version: fc.constant(v), connect: connectSpec(v), packets: fc.array(packetSpec(v), { maxLength: 4 }), violation }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('bad-connect' as const), version: fc.constant(v), violation: connectViolation }) },
  ),
);

/**
 * The bytes a case sends, one Buffer per packet (index 0 is the CONNECT, when there is one).
 * A random mutation with index i corrupts packet i modulo the number of packets.
 */
export function encodeCase(c: FuzzCase, clientId: string, maxPacketSize: number): { packets: Buffer[]; reasons?: number[] } {
  if (c.kind === 'bad-connect') return { packets: [encodeConnectViolation(c.violation, c.version, clientId)] };
  const connect = encodeConnectSpec(c.connect, clientId);
  switch (c.kind) {
    case 'noise':
      return { packets: c.afterConnect ? [connect, c.bytes] : [c.bytes] };
    case 'random': {
      const packets = [connect, ...c.packets.map((p) => encodePacketSpec(p, c.version))];
      for (const { index, mutation } of c.mutations) {
        const i = index % packets.length;
        const mutated = applyRandom(packets[i] as Buffer, mutation);
        packets[i] = mutated.length === 0 ? Buffer.from([0]) : mutated;
      }
      return { packets };
    }
    case 'violation': {
      const bad = encodeViolation(c.violation, c.version, maxPacketSize);
      return { packets: [connect, ...c.packets.map((p) => encodePacketSpec(p, c.version)), bad.bytes], reasons: bad.reasons };
    }
  }
}
