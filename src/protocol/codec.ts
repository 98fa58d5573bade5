/**
 * The codec adapter: the only file that knows mqtt-packet.
 *
 * mqtt-packet parses and generates packets, but it does not bound packet sizes and accepts
 * invalid UTF-8 and U+0000. This adapter frames the byte stream itself, so an oversized or
 * malformed remaining length is refused from the fixed header alone, before the body is
 * buffered, and it checks every UTF-8 string the parser decodes.
 */
import { isUtf8 } from 'node:buffer';
import mqtt from 'mqtt-packet';
import type * as MP from 'mqtt-packet';
import { decodeFast } from './fast-decode.ts';
import { ReasonCode } from './reason-codes.ts';

export type Packet = MP.Packet;
export type ConnectPacket = MP.IConnectPacket;
export type PublishPacket = MP.IPublishPacket;
export type SubscribePacket = MP.ISubscribePacket;
export type UnsubscribePacket = MP.IUnsubscribePacket;
export type DisconnectPacket = MP.IDisconnectPacket;
export type AuthPacket = MP.IAuthPacket;
export type PubackPacket = MP.IPubackPacket;
export type PubrecPacket = MP.IPubrecPacket;
export type PubrelPacket = MP.IPubrelPacket;
export type PubcompPacket = MP.IPubcompPacket;
export type QoS = MP.QoS;
export type UserProperties = MP.UserProperties;
export type PublishProperties = NonNullable<MP.IPublishPacket['properties']>;
export type ProtocolVersion = 3 | 4 | 5;

/** A protocol violation found while decoding: the reason code to report and what was wrong. */
export class CodecError extends Error {
  constructor(
    readonly reason: ReasonCode,
    readonly detail: string,
  ) {
    super(detail);
  }
}

export interface ReaderLimits {
  maxPacketSize: number;
  maxConnectSize: number;
}

const EMPTY = Buffer.alloc(0);
const CONNECT = 1;
/** Incomplete frames shorter than this are kept by concatenation; longer ones are collected in parts. */
const COLLECT_THRESHOLD = 16 * 1024;

type MqttParser = MP.Parser & {
  _list: { slice(start: number, end: number): Buffer; length: number };
  _pos: number;
  _parseString: (maybeBuffer?: boolean) => string | null;
  _parseProperties: () => object | false;
  _parsePayload: () => boolean;
  settings: ParserSettings;
  packet: { length: number; cmd?: string };
  _resetState(): void;
};

type ParserSettings = { protocolVersion?: number; bridgeMode?: boolean };
const NO_SETTINGS: ParserSettings = Object.freeze({});
const SETTINGS: Record<number, ParserSettings> = { 3: Object.freeze({ protocolVersion: 3 }), 4: Object.freeze({ protocolVersion: 4 }), 5: Object.freeze({ protocolVersion: 5 }) };
/** A bridge's CONNECT (protocol level | 0x80): mqtt-packet then reads its subscriptions as no-local, retain-as-published. */
const BRIDGE_SETTINGS: Record<number, ParserSettings> = {
  3: Object.freeze({ protocolVersion: 3, bridgeMode: true }),
  4: Object.freeze({ protocolVersion: 4, bridgeMode: true }),
  5: Object.freeze({ protocolVersion: 5, bridgeMode: true }),
};

/** The reader whose frame the shared parser is parsing (parse() is synchronous). */
let parsing: PacketReader | null = null;
let shared: MqttParser | null = null;

/**
 * One mqtt-packet parser for every connection: frames are whole when they reach it, so between
 * two frames it holds no state but the protocol version, which each reader sets before parsing
 * (a parser per connection cost about 1.5 KiB each, and kept the CONNECT packet, password
 * included, as its settings). Its hooks report to the reader being parsed.
 */
function sharedParser(): MqttParser {
  if (shared !== null) return shared;
  const parser = mqtt.parser() as MqttParser;
  const parseString = parser._parseString.bind(parser);
  // Check every decoded string for well-formed UTF-8 without U+0000 [MQTT-1.5.4-1..2].
  parser._parseString = (maybeBuffer?: boolean) => {
    const start = parser._pos + 2;
    const result = parseString(maybeBuffer);
    const reader = parsing;
    if (result !== null && reader !== null && reader.badString === null) {
      const end = parser._pos;
      if (result.includes('\u0000')) reader.badString = 'a string contains U+0000';
      else if (result.includes('\uFFFD') && !isUtf8(parser._list.slice(start, end))) {
        reader.badString = 'a string is not valid UTF-8';
      }
    }
    return result;
  };
  const parseProperties = parser._parseProperties.bind(parser);
  parser._parseProperties = () => {
    const start = parser._pos;
    const result = parseProperties();
    const reader = parsing;
    if (result !== false && reader !== null && reader.repeated === null) reader.repeated = repeatedProperty(parser._list.slice(start, parser._pos));
    return result;
  };
  // mqtt-packet skips whatever follows a packet's last field: a packet whose fields do not use
  // exactly its Remaining Length is malformed. A PUBLISH's payload is the rest by definition.
  const parsePayload = parser._parsePayload.bind(parser);
  parser._parsePayload = () => {
    const done = parsePayload();
    const reader = parsing;
    if (done && reader !== null && reader.parseError === null && parser.packet.cmd !== 'publish' && parser._pos !== parser.packet.length) {
      reader.unused = parser.packet.length - parser._pos;
    }
    return done;
  };
  parser.on('packet', (packet: Packet) => {
    if (parsing !== null) parsing.parsed = packet;
  });
  parser.on('error', (error: Error) => {
    if (parsing !== null) parsing.parseError = error;
  });
  shared = parser;
  return parser;
}

/**
 * Turns a byte stream into packets. Each complete frame is handed to mqtt-packet on its own, so
 * the parser never holds more than one bounded frame.
 */
export class PacketReader {
  private buf: Buffer = EMPTY;
  private parts: Buffer[] | null = null;
  private partsLength = 0;
  private need = 0;
  /** What the shared parser is told about this connection: the version its CONNECT declared. */
  private settings: ParserSettings = NO_SETTINGS;
  /** Set by the parser hooks while this reader's frame is being parsed. */
  badString: string | null = null;
  /** A property identifier found twice in the frame being decoded. */
  repeated: number | null = null;
  /** Bytes of the frame being decoded that its fields did not use (0: none). */
  unused = 0;
  parsed: Packet | null = null;
  parseError: Error | null = null;
  /** Set after CONNECT; until then only a CONNECT of at most `maxConnectSize` is accepted. */
  connected = false;
  /** Set when an error was reported; the reader then ignores further input. */
  failed = false;

  /**
   * `onPacket` and `onError` are called with `context` as `this`: a connection passes shared
   * functions and itself instead of two closures of its own.
   */
  constructor(
    private readonly limits: ReaderLimits,
    private readonly onPacket: (this: never, packet: Packet) => void,
    private readonly onError: (this: never, error: CodecError) => void,
    private readonly context?: unknown,
  ) {}

  /** The protocol version the CONNECT declared (4 until then). */
  get protocolVersion(): ProtocolVersion {
    return (this.settings.protocolVersion as ProtocolVersion | undefined) ?? 4;
  }

  push(chunk: Buffer): void {
    if (this.failed) return;
    let b: Buffer;
    if (this.parts !== null) {
      this.parts.push(chunk);
      this.partsLength += chunk.length;
      if (this.partsLength < this.need) return;
      b = Buffer.concat(this.parts, this.partsLength);
      this.parts = null;
    } else {
      b = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    }
    let off = 0;
    const end = b.length;
    while (off < end && !this.failed) {
      const first = b[off] as number;
      if (!this.connected && first >> 4 !== CONNECT) {
        return this.fail(ReasonCode.ProtocolError, 'the first packet must be CONNECT'); // [MQTT-3.1.0-1]
      }
      let length = 0;
      let multiplier = 1;
      let i = off + 1;
      let complete = false;
      for (let n = 0; n < 4 && i < end; n++) {
        const digit = b[i++] as number;
        length += (digit & 0x7f) * multiplier;
        multiplier *= 128;
        if ((digit & 0x80) === 0) {
          complete = true;
          break;
        }
      }
      if (!complete) {
        if (i - off - 1 >= 4) return this.fail(ReasonCode.MalformedPacket, 'malformed remaining length');
        break; // wait for the rest of the fixed header
      }
      const total = i - off + length;
      const limit = this.connected ? this.limits.maxPacketSize : this.limits.maxConnectSize;
      if (total > limit) {
        const setting = this.connected ? 'limits.maxPacketSize' : 'limits.maxConnectSize';
        return this.fail(ReasonCode.PacketTooLarge, `packet of ${total} bytes exceeds ${setting} (${limit} bytes); raise it to admit larger packets`);
      }
      if (end - off < total) {
        if (total - (end - off) > COLLECT_THRESHOLD) {
          this.parts = [b.subarray(off)];
          this.partsLength = end - off;
          this.need = total;
          this.buf = EMPTY;
          return;
        }
        break;
      }
      const frame = b.subarray(off, off + total);
      const bodyStart = i - off;
      off += total;
      this.decode(frame, bodyStart);
    }
    this.buf = off >= end ? EMPTY : b.subarray(off);
  }

  /** One whole frame; its body starts at `bodyStart` (after the fixed header). */
  private decode(frame: Buffer, bodyStart: number): void {
    const fast = decodeFast(frame, bodyStart, this.settings.protocolVersion ?? 0);
    if (fast !== null) return this.accept(fast);
    this.parsed = null;
    this.parseError = null;
    this.badString = null;
    this.repeated = null;
    this.unused = 0;
    const parser = sharedParser();
    parser.settings = this.settings;
    parsing = this;
    let clean = false;
    try {
      parser.parse(frame);
      clean = this.parseError === null && this.parsed !== null && parser._list.length === 0 && parser.packet.length === -1;
    } finally {
      parsing = null;
      parser.settings = NO_SETTINGS;
      // A frame is parsed whole; anything left in the parser (an error, a throw, a length that
      // did not match) must not reach the next connection's frame.
      if (!clean) {
        // _resetState() leaves the read position where the error stopped it, and the next
        // header's length is read from there: it must start at 0.
        parser._resetState();
        parser._pos = 0;
      }
    }
    if (this.parseError !== null) {
      const message = (this.parseError as Error).message;
      const reason = /protocol version|Invalid protocolId/i.test(message)
        ? ReasonCode.UnsupportedProtocolVersion
        : ReasonCode.MalformedPacket;
      return this.fail(reason, message);
    }
    if (this.badString !== null) return this.fail(ReasonCode.MalformedPacket, this.badString);
    if (this.unused !== 0) {
      return this.fail(ReasonCode.MalformedPacket, `the packet's fields do not match its remaining length (${this.unused > 0 ? `${this.unused} bytes left over` : 'too short'})`);
    }
    const packet = this.parsed as Packet | null;
    // Not kept: an idle connection would hold its CONNECT (password included) until its next packet.
    this.parsed = null;
    if (packet === null) return this.fail(ReasonCode.MalformedPacket, 'packet length does not match its contents');
    const repeated = this.repeated as number | null; // set by the parser hook during parse()
    if (repeated !== null) return this.fail(ReasonCode.ProtocolError, `property 0x${repeated.toString(16).padStart(2, '0')} appears more than once`);
    this.accept(packet);
  }

  /** A decoded packet, from either decoder: CONNECT's checks and version, then the handler. */
  private accept(packet: Packet): void {
    if (packet.cmd === 'connect') {
      const v = packet.protocolVersion ?? 4;
      this.settings = ((packet as { bridgeMode?: boolean }).bridgeMode === true ? BRIDGE_SETTINGS[v] : SETTINGS[v]) ?? NO_SETTINGS;
      const flags = connectFlagError(packet);
      if (flags !== null) return this.fail(ReasonCode.MalformedPacket, flags);
      this.connected = true;
    }
    this.onPacket.call(this.context as never, packet);
  }

  private fail(reason: ReasonCode, detail: string): void {
    this.failed = true;
    this.buf = EMPTY;
    this.parts = null;
    this.onError.call(this.context as never, new CodecError(reason, detail));
  }
}

/** CONNECT flag rules that mqtt-packet does not check (found by fuzzing). */
function connectFlagError(packet: ConnectPacket): string | null {
  if (packet.will !== undefined && packet.will !== null && (packet.will.qos as number) > 2) return 'will QoS 3'; // [MQTT-3.1.2-14]
  if (packet.protocolVersion !== 5 && packet.password !== undefined && packet.username === undefined) {
    return 'a password without a user name'; // [MQTT-3.1.2-22]; MQTT 3.1 says the same
  }
  return null;
}

/** MQTT 5 property identifiers and how their values are encoded (MQTT 5, table 2-4). */
const PROPERTY_TYPES: Record<number, 'byte' | 'int16' | 'int32' | 'var' | 'string' | 'binary' | 'pair'> = {
  0x01: 'byte', 0x02: 'int32', 0x03: 'string', 0x08: 'string', 0x09: 'binary', 0x0b: 'var', 0x11: 'int32',
  0x12: 'string', 0x13: 'int16', 0x15: 'string', 0x16: 'binary', 0x17: 'byte', 0x18: 'int32', 0x19: 'byte',
  0x1a: 'string', 0x1c: 'string', 0x1f: 'string', 0x21: 'int16', 0x22: 'int16', 0x23: 'int16', 0x24: 'byte',
  0x25: 'byte', 0x26: 'pair', 0x27: 'int32', 0x28: 'byte', 0x29: 'byte', 0x2a: 'byte',
};
const USER_PROPERTY = 0x26;

/**
 * The first property in an encoded property block (length prefix included) that appears more
 * than once, or null. Only user properties may repeat in what a client sends; any other
 * repeat is a Protocol Error. mqtt-packet does not refuse repeats: it makes an array of them,
 * or keeps the last when the first was falsy. Malformed blocks are left to the parser.
 */
function repeatedProperty(block: Buffer): number | null {
  let off = 0;
  let length = 0;
  let multiplier = 1;
  for (let n = 0; n < 4 && off < block.length; n++) {
    const digit = block[off++] as number;
    length += (digit & 0x7f) * multiplier;
    multiplier *= 128;
    if ((digit & 0x80) === 0) break;
  }
  const end = Math.min(block.length, off + length);
  let seenLow = 0; // identifiers 0x00..0x1f, one bit each
  let seenHigh = 0; // identifiers 0x20..0x3f
  const skipString = () => {
    off = off + 2 <= end ? off + 2 + block.readUInt16BE(off) : end;
  };
  while (off < end) {
    const id = block[off++] as number;
    const type = PROPERTY_TYPES[id];
    if (type === undefined) return null;
    if (id !== USER_PROPERTY) {
      const bit = 1 << (id & 0x1f);
      if (((id < 0x20 ? seenLow : seenHigh) & bit) !== 0) return id;
      if (id < 0x20) seenLow |= bit;
      else seenHigh |= bit;
    }
    if (type === 'byte') off += 1;
    else if (type === 'int16') off += 2;
    else if (type === 'int32') off += 4;
    else if (type === 'var') while (off < end && ((block[off++] as number) & 0x80) !== 0);
    else if (type === 'pair') {
      skipString();
      skipString();
    } else skipString();
  }
  return null;
}

const generateOptions: Record<ProtocolVersion, { protocolVersion: ProtocolVersion }> = {
  3: { protocolVersion: 3 },
  4: { protocolVersion: 4 },
  5: { protocolVersion: 5 },
};

const ACK_HEADERS: Partial<Record<Packet['cmd'], number>> = { puback: 0x40, pubrec: 0x50, pubrel: 0x62, pubcomp: 0x70 };

/** Encodes any packet for the given protocol version. Plain acknowledgements take a fast path. */
export function encode(packet: Packet, version: ProtocolVersion): Buffer {
  const ack = ACK_HEADERS[packet.cmd];
  if (ack !== undefined && (packet as { reasonCode?: number }).reasonCode === undefined && (packet as { properties?: unknown }).properties === undefined) {
    const id = packet.messageId ?? 0;
    return Buffer.from([ack, 2, id >> 8, id & 0xff]);
  }
  if (packet.cmd === 'connack' && version !== 5 && packet.properties === undefined) {
    // MQTT 3.1 / 3.1.1 CONNACK: flags, return code (the same bytes mqtt-packet writes).
    const rc = packet.returnCode ?? 0;
    if (Number.isInteger(rc) && rc >= 0 && rc <= 255) return Buffer.from([0x20, 2, packet.sessionPresent ? 1 : 0, rc]);
  }
  if (packet.cmd === 'pingresp') return Buffer.from([0xd0, 0]);
  return mqtt.generate(packet, generateOptions[version]);
}

/** Counts the user properties of a decoded packet (a key with several values counts each). */
export function countUserProperties(properties: { userProperties?: UserProperties } | undefined): number {
  const up = properties?.userProperties;
  if (up === undefined) return 0;
  let n = 0;
  for (const key in up) {
    const value = up[key];
    n += Array.isArray(value) ? value.length : 1;
  }
  return n;
}

function varintLength(n: number): number {
  return n < 128 ? 1 : n < 16384 ? 2 : n < 2097152 ? 3 : 4;
}

function writeVarint(buf: Buffer, off: number, n: number): number {
  do {
    let digit = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) digit |= 0x80;
    buf[off++] = digit;
  } while (n > 0);
  return off;
}

/**
 * Encodes a PUBLISH with no properties, the hot path of delivery. The packet id, if any, is
 * written as 0 and patched per subscriber with {@link withPacketId}.
 */
export function encodeBarePublish(
  topic: string,
  payload: Buffer,
  qos: QoS,
  retain: boolean,
  version: ProtocolVersion,
): Buffer {
  const topicLength = Buffer.byteLength(topic);
  const remaining = 2 + topicLength + (qos > 0 ? 2 : 0) + (version === 5 ? 1 : 0) + payload.length;
  const buf = Buffer.allocUnsafe(1 + varintLength(remaining) + remaining);
  buf[0] = 0x30 | (qos << 1) | (retain ? 1 : 0);
  let off = writeVarint(buf, 1, remaining);
  buf.writeUInt16BE(topicLength, off);
  off += 2;
  off += buf.write(topic, off, 'utf8');
  if (qos > 0) {
    buf.writeUInt16BE(0, off);
    off += 2;
  }
  if (version === 5) buf[off++] = 0;
  payload.copy(buf, off);
  return buf;
}

/** Returns a copy of an encoded QoS 1/2 PUBLISH with the packet id and DUP flag set. */
export function withPacketId(encoded: Buffer, packetId: number, dup: boolean): Buffer {
  const copy = Buffer.allocUnsafe(encoded.length);
  encoded.copy(copy);
  let i = 1;
  while ((copy[i] as number) & 0x80) i++;
  i++;
  const topicLength = copy.readUInt16BE(i);
  copy.writeUInt16BE(packetId, i + 2 + topicLength);
  if (dup) copy[0] = (copy[0] as number) | 0x08;
  return copy;
}
