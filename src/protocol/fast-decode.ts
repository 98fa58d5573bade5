/**
 * A decoder for the packets a busy broker reads most: PUBLISH (no MQTT 5 properties), the four
 * publish acknowledgements, PINGREQ, and MQTT 3.1 / 3.1.1 CONNECT and DISCONNECT.
 *
 * It reads a whole frame in one pass, with no buffer list, copy or debug call, and produces
 * exactly the object mqtt-packet would (same fields, same order, payloads as views of the frame).
 * It accepts only frames it is sure of: anything unusual (a reserved bit, a property, a string
 * holding U+0000 or a byte sequence that may not be UTF-8, trailing bytes, a bridge CONNECT, an
 * MQTT 5 CONNECT) returns null, and the caller hands the frame to mqtt-packet, whose answer,
 * errors included, is then the only one. test/fast-decode.test.ts compares the two on generated
 * and mutated frames.
 */
import type { Packet } from './codec.ts';

type Cmd = 'publish' | 'puback' | 'pubrec' | 'pubrel' | 'pubcomp' | 'pingreq' | 'disconnect';

/** A decoded string, or null when the frame must go to mqtt-packet (the reader's UTF-8 checks run there). */
function plainString(frame: Buffer, start: number, end: number): string | null {
  const s = frame.toString('utf8', start, end);
  // U+FFFD may come from a malformed sequence and U+0000 is forbidden: mqtt-packet's path
  // (with the reader's checks) decides both.
  return s.includes('\u0000') || s.includes('\uFFFD') ? null : s;
}

function bare(cmd: Cmd, header: number, length: number): Packet {
  return { cmd, retain: (header & 1) !== 0, qos: (header >> 1) & 3, dup: (header & 8) !== 0, length, topic: null, payload: null } as unknown as Packet;
}

const ACKS: Record<number, Cmd> = { 0x40: 'puback', 0x50: 'pubrec', 0x62: 'pubrel', 0x70: 'pubcomp' };

/**
 * Decodes one whole frame for a connection that declared `version` (0 before its CONNECT). The
 * reader has framed it: the body starts at `bodyStart` and runs to the end of `frame`. Returns
 * null when the frame is not one of the simple shapes above.
 */
export function decodeFast(frame: Buffer, bodyStart: number, version: number): Packet | null {
  const header = frame[0] as number;
  let pos = bodyStart;
  const end = frame.length;
  const length = end - bodyStart;
  const type = header >> 4;
  if (version === 0) return type === 1 ? decodeConnect(frame, pos, end, length) : null;
  if (type === 3) {
    const qos = (header >> 1) & 3;
    if (qos === 3 || end - pos < 2) return null;
    const topicEnd = pos + 2 + frame.readUInt16BE(pos);
    if (topicEnd > end) return null;
    const topic = plainString(frame, pos + 2, topicEnd);
    if (topic === null) return null;
    pos = topicEnd;
    let messageId = 0;
    if (qos > 0) {
      if (end - pos < 2) return null;
      messageId = frame.readUInt16BE(pos);
      pos += 2;
    }
    if (version === 5) {
      if (pos >= end || frame[pos] !== 0) return null; // properties: mqtt-packet reads them
      pos++;
    }
    const payload = frame.subarray(pos, end);
    const retain = (header & 1) !== 0;
    const dup = (header & 8) !== 0;
    return (qos > 0
      ? { cmd: 'publish', retain, qos, dup, length, topic, payload, messageId }
      : { cmd: 'publish', retain, qos, dup, length, topic, payload }) as unknown as Packet;
  }
  const ack = ACKS[header];
  if (ack !== undefined) {
    if (length !== 2) return null;
    const p = bare(ack, header, length) as Packet & { messageId: number; reasonCode?: number };
    p.messageId = frame.readUInt16BE(pos);
    if (version === 5) p.reasonCode = 0;
    return p;
  }
  if (length === 0 && header === 0xc0) return bare('pingreq', header, 0);
  if (length === 0 && header === 0xe0 && version !== 5) return bare('disconnect', header, 0);
  return null;
}

/** The end of the length-prefixed field at `pos`, or -1 when it does not fit before `end`. */
function fieldEnd(frame: Buffer, pos: number, end: number): number {
  if (end - pos < 2) return -1;
  const e = pos + 2 + frame.readUInt16BE(pos);
  return e > end ? -1 : e;
}

/** MQTT 3.1.1 ('MQTT', level 4) or 3.1 ('MQIsdp', level 3) CONNECT, not a bridge's. */
function decodeConnect(frame: Buffer, pos: number, end: number, length: number): Packet | null {
  if ((frame[0] as number) !== 0x10 || end - pos < 2) return null;
  const idLength = frame.readUInt16BE(pos);
  let protocolId: string;
  let level: number;
  if (idLength === 4 && end - pos >= 10 && frame.toString('latin1', pos + 2, pos + 6) === 'MQTT') {
    protocolId = 'MQTT';
    level = 4;
  } else if (idLength === 6 && end - pos >= 12 && frame.toString('latin1', pos + 2, pos + 8) === 'MQIsdp') {
    protocolId = 'MQIsdp';
    level = 3;
  } else return null;
  pos += 2 + idLength;
  if (frame[pos] !== level) return null;
  const flags = frame[pos + 1] as number;
  const willFlag = (flags & 0x04) !== 0;
  const willQos = (flags >> 3) & 3;
  const willRetain = (flags & 0x20) !== 0;
  if ((flags & 1) !== 0 || willQos === 3 || (!willFlag && (willQos !== 0 || willRetain))) return null;
  const keepalive = frame.readUInt16BE(pos + 2);
  pos += 4;
  let e = fieldEnd(frame, pos, end);
  if (e < 0) return null;
  const clientId = plainString(frame, pos + 2, e);
  if (clientId === null) return null;
  pos = e;
  let will: { retain: boolean; qos: number; topic?: string; payload?: Buffer } | undefined;
  if (willFlag) {
    will = { retain: willRetain, qos: willQos };
    e = fieldEnd(frame, pos, end);
    if (e < 0) return null;
    const topic = plainString(frame, pos + 2, e);
    if (topic === null) return null;
    will.topic = topic;
    pos = e;
    e = fieldEnd(frame, pos, end);
    if (e < 0) return null;
    will.payload = frame.subarray(pos + 2, e);
    pos = e;
  }
  let username: string | undefined;
  if ((flags & 0x80) !== 0) {
    e = fieldEnd(frame, pos, end);
    if (e < 0) return null;
    const u = plainString(frame, pos + 2, e);
    if (u === null) return null;
    username = u;
    pos = e;
  }
  let password: Buffer | undefined;
  if ((flags & 0x40) !== 0) {
    e = fieldEnd(frame, pos, end);
    if (e < 0) return null;
    password = frame.subarray(pos + 2, e);
    pos = e;
  }
  if (pos !== end) return null; // trailing bytes: mqtt-packet's call
  const clean = (flags & 0x02) !== 0;
  const p: Record<string, unknown> = { cmd: 'connect', retain: false, qos: 0, dup: false, length, topic: null, payload: null, protocolId, protocolVersion: level };
  if (will !== undefined) p.will = will;
  p.clean = clean;
  p.keepalive = keepalive;
  p.clientId = clientId;
  if (username !== undefined) p.username = username;
  if (password !== undefined) p.password = password;
  return p as unknown as Packet;
}
