/**
 * Minimal hand-written MQTT encoders and a packet splitter for raw-socket tests. They build
 * bytes directly (no mqtt-packet), so a test controls every flag and packet id, and can send
 * what a well-behaved client library would not (a DUP re-send, a missing acknowledgement...).
 */
import { delay, type RawClient } from './helpers.ts';

export const PacketType = {
  CONNECT: 1,
  CONNACK: 2,
  PUBLISH: 3,
  PUBACK: 4,
  PUBREC: 5,
  PUBREL: 6,
  PUBCOMP: 7,
  SUBSCRIBE: 8,
  SUBACK: 9,
  UNSUBSCRIBE: 10,
  UNSUBACK: 11,
  PINGREQ: 12,
  PINGRESP: 13,
  DISCONNECT: 14,
  AUTH: 15,
} as const;

export type Version = 3 | 4 | 5;

export function encodeVarint(n: number): Buffer {
  const out: number[] = [];
  do {
    let digit = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) digit |= 0x80;
    out.push(digit);
  } while (n > 0);
  return Buffer.from(out);
}

export function encodeString(s: string | Buffer): Buffer {
  const b = Buffer.isBuffer(s) ? s : Buffer.from(s, 'utf8');
  const len = Buffer.alloc(2);
  len.writeUInt16BE(b.length);
  return Buffer.concat([len, b]);
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

/** The v5 properties these tests need (a subset), in the spec's identifiers. */
export interface RawProperties {
  sessionExpiryInterval?: number; // 0x11, four-byte integer
  receiveMaximum?: number; // 0x21, two-byte integer
  willDelayInterval?: number; // 0x18, four-byte integer
  topicAliasMaximum?: number; // 0x22, two-byte integer
}

/** A v5 property block: variable-byte length followed by the properties. */
export function encodeProperties(p: RawProperties = {}): Buffer {
  const parts: Buffer[] = [];
  if (p.sessionExpiryInterval !== undefined) parts.push(Buffer.from([0x11]), u32(p.sessionExpiryInterval));
  if (p.receiveMaximum !== undefined) parts.push(Buffer.from([0x21]), u16(p.receiveMaximum));
  if (p.willDelayInterval !== undefined) parts.push(Buffer.from([0x18]), u32(p.willDelayInterval));
  if (p.topicAliasMaximum !== undefined) parts.push(Buffer.from([0x22]), u16(p.topicAliasMaximum));
  const body = Buffer.concat(parts);
  return Buffer.concat([encodeVarint(body.length), body]);
}

/** Fixed header (type, flags, remaining length) + body. */
export function frame(type: number, flags: number, body: Buffer): Buffer {
  return Buffer.concat([Buffer.from([(type << 4) | (flags & 0x0f)]), encodeVarint(body.length), body]);
}

export interface ConnectOptions {
  clientId: string;
  clean?: boolean;
  keepAlive?: number;
  version?: Version;
  properties?: RawProperties;
  will?: { topic: string; payload: string | Buffer; qos?: 0 | 1 | 2; retain?: boolean; properties?: RawProperties };
  username?: string;
  password?: string;
}

export function encodeConnect(o: ConnectOptions): Buffer {
  const version = o.version ?? 4;
  const clean = o.clean ?? true;
  const keepAlive = o.keepAlive ?? 60;
  let flags = clean ? 0x02 : 0;
  if (o.will) {
    flags |= 0x04 | ((o.will.qos ?? 0) << 3) | (o.will.retain ? 0x20 : 0);
  }
  if (o.password !== undefined) flags |= 0x40;
  if (o.username !== undefined) flags |= 0x80;
  const parts: Buffer[] = [
    encodeString(version === 3 ? 'MQIsdp' : 'MQTT'),
    Buffer.from([version, flags]),
    u16(keepAlive),
  ];
  if (version === 5) parts.push(encodeProperties(o.properties));
  parts.push(encodeString(o.clientId));
  if (o.will) {
    if (version === 5) parts.push(encodeProperties(o.will.properties));
    parts.push(encodeString(o.will.topic), encodeString(Buffer.isBuffer(o.will.payload) ? o.will.payload : Buffer.from(o.will.payload)));
  }
  if (o.username !== undefined) parts.push(encodeString(o.username));
  if (o.password !== undefined) parts.push(encodeString(o.password));
  return frame(PacketType.CONNECT, 0, Buffer.concat(parts));
}

export interface PublishOptions {
  topic: string;
  payload: string | Buffer;
  qos?: 0 | 1 | 2;
  packetId?: number;
  dup?: boolean;
  retain?: boolean;
  version?: Version;
}

export function encodePublish(o: PublishOptions): Buffer {
  const qos = o.qos ?? 0;
  const flags = (o.dup ? 0x08 : 0) | (qos << 1) | (o.retain ? 0x01 : 0);
  const parts: Buffer[] = [encodeString(o.topic)];
  if (qos > 0) parts.push(u16(o.packetId ?? 1));
  if ((o.version ?? 4) === 5) parts.push(Buffer.from([0x00]));
  parts.push(Buffer.isBuffer(o.payload) ? o.payload : Buffer.from(o.payload));
  return frame(PacketType.PUBLISH, flags, Buffer.concat(parts));
}

export function encodeSubscribe(o: { packetId: number; filters: { topic: string; qos: 0 | 1 | 2 }[]; version?: Version }): Buffer {
  const parts: Buffer[] = [u16(o.packetId)];
  if ((o.version ?? 4) === 5) parts.push(Buffer.from([0x00]));
  for (const f of o.filters) parts.push(encodeString(f.topic), Buffer.from([f.qos]));
  return frame(PacketType.SUBSCRIBE, 0x02, Buffer.concat(parts)); // [MQTT-3.8.1-1]: flags 0010
}

/** PUBACK / PUBREC / PUBCOMP: packet id only (reason code 0 is implied in v5 by the short form). */
export function encodePuback(packetId: number): Buffer {
  return frame(PacketType.PUBACK, 0, u16(packetId));
}

export function encodePubrec(packetId: number): Buffer {
  return frame(PacketType.PUBREC, 0, u16(packetId));
}

export function encodePubrel(packetId: number): Buffer {
  return frame(PacketType.PUBREL, 0x02, u16(packetId)); // [MQTT-3.6.1-1]: flags 0010
}

export function encodePubcomp(packetId: number): Buffer {
  return frame(PacketType.PUBCOMP, 0, u16(packetId));
}

export function encodePingreq(): Buffer {
  return frame(PacketType.PINGREQ, 0, Buffer.alloc(0));
}

export function encodeDisconnect(version: Version = 4, reasonCode = 0): Buffer {
  if (version === 5 && reasonCode !== 0) return frame(PacketType.DISCONNECT, 0, Buffer.from([reasonCode, 0x00]));
  return frame(PacketType.DISCONNECT, 0, Buffer.alloc(0));
}

export interface RawPacket {
  type: number;
  flags: number;
  body: Buffer;
}

/** Splits a byte stream into complete packets; an incomplete trailing packet is left out. */
export function parsePackets(bytes: Buffer): RawPacket[] {
  const out: RawPacket[] = [];
  let off = 0;
  while (off < bytes.length) {
    const first = bytes[off] as number;
    let length = 0;
    let multiplier = 1;
    let i = off + 1;
    let complete = false;
    while (i < bytes.length && i - off <= 4) {
      const digit = bytes[i++] as number;
      length += (digit & 0x7f) * multiplier;
      multiplier *= 128;
      if ((digit & 0x80) === 0) {
        complete = true;
        break;
      }
    }
    if (!complete || i + length > bytes.length) break;
    out.push({ type: first >> 4, flags: first & 0x0f, body: bytes.subarray(i, i + length) });
    off = i + length;
  }
  return out;
}

export interface DecodedPublish {
  topic: string;
  payload: string;
  qos: number;
  dup: boolean;
  retain: boolean;
  packetId: number | undefined;
}

export function decodePublish(p: RawPacket, version: Version = 4): DecodedPublish {
  const qos = (p.flags >> 1) & 0x03;
  const topicLength = p.body.readUInt16BE(0);
  const topic = p.body.subarray(2, 2 + topicLength).toString('utf8');
  let off = 2 + topicLength;
  let packetId: number | undefined;
  if (qos > 0) {
    packetId = p.body.readUInt16BE(off);
    off += 2;
  }
  if (version === 5) {
    let propLength = 0;
    let multiplier = 1;
    for (;;) {
      const digit = p.body[off++] as number;
      propLength += (digit & 0x7f) * multiplier;
      multiplier *= 128;
      if ((digit & 0x80) === 0) break;
    }
    off += propLength;
  }
  return { topic, payload: p.body.subarray(off).toString('utf8'), qos, dup: (p.flags & 0x08) !== 0, retain: (p.flags & 0x01) !== 0, packetId };
}

export interface DecodedConnack {
  sessionPresent: boolean;
  /** v3.1.1 return code or v5 reason code. */
  code: number;
}

export function decodeConnack(p: RawPacket): DecodedConnack {
  return { sessionPresent: ((p.body[0] as number) & 0x01) === 1, code: p.body[1] as number };
}

/** Packet id of a PUBACK / PUBREC / PUBREL / PUBCOMP, and its v5 reason code (0 when omitted). */
export function decodeAck(p: RawPacket): { packetId: number; reasonCode: number } {
  return { packetId: p.body.readUInt16BE(0), reasonCode: p.body.length > 2 ? (p.body[2] as number) : 0 };
}

/** All complete packets the raw client has received so far. */
export function packetsOf(raw: RawClient): RawPacket[] {
  return parsePackets(raw.received());
}

/**
 * Waits until the packets received satisfy `done`, or `ms` passes (or the socket closes);
 * resolves with the packets received either way, so the test asserts on what really came.
 */
export async function waitForPackets(raw: RawClient, done: (packets: RawPacket[]) => boolean, ms = 2000): Promise<RawPacket[]> {
  const end = Date.now() + ms;
  for (;;) {
    const packets = packetsOf(raw);
    if (done(packets) || Date.now() >= end || raw.socket.destroyed) return packets;
    await delay(10);
  }
}

export const ofType = (packets: RawPacket[], type: number): RawPacket[] => packets.filter((p) => p.type === type);

/** Waits for at least `n` packets of `type`. */
export function waitForType(raw: RawClient, type: number, n = 1, ms = 2000): Promise<RawPacket[]> {
  return waitForPackets(raw, (ps) => ofType(ps, type).length >= n, ms).then((ps) => ofType(ps, type));
}
