/**
 * Hand-encoded MQTT 3.1.1 packets and a minimal streaming frame reader for the load generator.
 * Deliberately tiny: only what the benchmark sends and receives, no allocation per packet on the
 * hot paths (PUBLISH batches are written straight into one buffer).
 */

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
  PINGRESP: 13,
  DISCONNECT: 14,
} as const;

/** Bytes needed for the MQTT variable-length "remaining length". */
export function varintSize(n: number): number {
  return n < 128 ? 1 : n < 16384 ? 2 : n < 2097152 ? 3 : 4;
}

export function writeVarint(buf: Buffer, offset: number, n: number): number {
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 0x80;
    buf[offset++] = byte;
  } while (n > 0);
  return offset;
}

function writeString(buf: Buffer, offset: number, s: Buffer): number {
  buf.writeUInt16BE(s.length, offset);
  s.copy(buf, offset + 2);
  return offset + 2 + s.length;
}

export type QoS = 0 | 1 | 2;

/** User name and password sent in CONNECT. */
export interface Credentials {
  username: string;
  password: string;
}

/** CONNECT, protocol level 4 (3.1.1), clean session, no will; user name and password when given. */
/** CONNECT (MQTT 3.1.1); `clean: false` asks for a persistent session (kept across connections, queued for while offline). */
export function encodeConnect(clientId: string, keepAlive = 60, credentials?: Credentials, clean = true): Buffer {
  const id = Buffer.from(clientId, 'utf8');
  const user = credentials ? Buffer.from(credentials.username, 'utf8') : null;
  const pass = credentials ? Buffer.from(credentials.password, 'utf8') : null;
  const remaining = 10 + 2 + id.length + (user ? 2 + user.length : 0) + (pass ? 2 + pass.length : 0);
  const buf = Buffer.alloc(1 + varintSize(remaining) + remaining);
  buf[0] = 0x10;
  let o = writeVarint(buf, 1, remaining);
  o = writeString(buf, o, Buffer.from('MQTT'));
  buf[o++] = 4; // protocol level
  buf[o++] = (clean ? 0x02 : 0) | (user ? 0x80 : 0) | (pass ? 0x40 : 0); // clean session, user name, password
  buf.writeUInt16BE(keepAlive, o);
  o += 2;
  o = writeString(buf, o, id);
  if (user) o = writeString(buf, o, user);
  if (pass) writeString(buf, o, pass);
  return buf;
}

/** SUBSCRIBE with one or more filters, all at the same maximum QoS. */
export function encodeSubscribe(packetId: number, topics: string | string[], qos: QoS): Buffer {
  const ts = (Array.isArray(topics) ? topics : [topics]).map((t) => Buffer.from(t, 'utf8'));
  const remaining = 2 + ts.reduce((a, t) => a + 2 + t.length + 1, 0);
  const buf = Buffer.alloc(1 + varintSize(remaining) + remaining);
  buf[0] = 0x82;
  let o = writeVarint(buf, 1, remaining);
  buf.writeUInt16BE(packetId, o);
  o += 2;
  for (const t of ts) {
    o = writeString(buf, o, t);
    buf[o++] = qos;
  }
  return buf;
}

export function encodePuback(packetId: number): Buffer {
  return Buffer.from([0x40, 0x02, packetId >> 8, packetId & 0xff]);
}

/** First byte of the four two-byte acknowledgements (PUBREL has the mandatory flags 0b0010). */
export const ACK_HEADER = { puback: 0x40, pubrec: 0x50, pubrel: 0x62, pubcomp: 0x70 } as const;

export const DISCONNECT = Buffer.from([0xe0, 0x00]);

/**
 * The benchmark payload header, at the start of every PUBLISH payload:
 * [0..1] publisher index (u16), [2..5] sequence number (u32), [6..13] send time (f64, ms, performance.now()).
 * The rest of the payload is zero padding.
 */
export const PAYLOAD_HEADER = 14;

/**
 * A precomputed PUBLISH layout for one topic/QoS/payload size, so a batch of N packets is one
 * Buffer.allocUnsafe plus a few integer writes per packet.
 */
export class PublishTemplate {
  readonly packetSize: number;
  private readonly prefix: Buffer; // fixed header + topic (+ room for packet id)
  private readonly payloadOffset: number;

  constructor(
    topic: string,
    readonly qos: QoS,
    readonly payloadSize: number,
    readonly retain = false,
  ) {
    if (payloadSize < PAYLOAD_HEADER) throw new Error(`payload must be at least ${PAYLOAD_HEADER} bytes`);
    const t = Buffer.from(topic, 'utf8');
    const remaining = 2 + t.length + (qos > 0 ? 2 : 0) + payloadSize;
    this.packetSize = 1 + varintSize(remaining) + remaining;
    const head = Buffer.alloc(this.packetSize - payloadSize);
    head[0] = 0x30 | (qos << 1) | (retain ? 1 : 0);
    let o = writeVarint(head, 1, remaining);
    o = writeString(head, o, t);
    this.prefix = head;
    this.payloadOffset = head.length;
  }

  /** Writes one PUBLISH at `offset` in `buf`; returns the offset after it. */
  write(buf: Buffer, offset: number, publisher: number, seq: number, sentAt: number, packetId = 0): number {
    this.prefix.copy(buf, offset);
    if (this.qos > 0) buf.writeUInt16BE(packetId, offset + this.payloadOffset - 2);
    const p = offset + this.payloadOffset;
    buf.writeUInt16BE(publisher, p);
    buf.writeUInt32BE(seq, p + 2);
    buf.writeDoubleBE(sentAt, p + 6);
    buf.fill(0, p + PAYLOAD_HEADER, p + this.payloadSize);
    return offset + this.packetSize;
  }
}

/** A received PUBLISH, decoded only as far as the benchmark needs. Reused between calls. */
export interface ReceivedPublish {
  qos: number;
  dup: boolean;
  retain: boolean;
  packetId: number;
  /** Topic bytes [topicStart, topicEnd) in the chunk being parsed (valid only during the callback). */
  buf: Buffer;
  topicStart: number;
  topicEnd: number;
  publisher: number;
  seq: number;
  sentAt: number;
  payloadLength: number;
}

export interface FrameHandlers {
  /** Any packet other than PUBLISH: its type, flags and body [start, end) in buf. */
  onPacket(type: number, flags: number, buf: Buffer, start: number, end: number): void;
  onPublish(p: ReceivedPublish): void;
  onError(err: Error): void;
}

/** Streaming MQTT frame reader: feed it socket chunks, it calls the handlers per complete packet. */
export class FrameReader {
  private pending: Buffer | null = null;
  private readonly pub: ReceivedPublish = { qos: 0, dup: false, retain: false, packetId: 0, buf: Buffer.alloc(0), topicStart: 0, topicEnd: 0, publisher: 0, seq: 0, sentAt: 0, payloadLength: 0 };
  private failed = false;

  constructor(private readonly handlers: FrameHandlers) {}

  feed(chunk: Buffer): void {
    if (this.failed) return;
    let buf = chunk;
    if (this.pending !== null) {
      buf = Buffer.concat([this.pending, chunk]);
      this.pending = null;
    }
    let o = 0;
    const len = buf.length;
    while (o < len) {
      // fixed header: 1 byte type/flags + 1..4 bytes remaining length
      if (o + 2 > len) break;
      let remaining = 0;
      let mul = 1;
      let i = o + 1;
      let complete = false;
      for (let n = 0; n < 4 && i < len; n++) {
        const b = buf[i++]!;
        remaining += (b & 0x7f) * mul;
        mul *= 128;
        if ((b & 0x80) === 0) {
          complete = true;
          break;
        }
      }
      if (!complete) {
        if (i - o - 1 >= 4) return this.fail(new Error('malformed remaining length'));
        break;
      }
      const start = i;
      const end = start + remaining;
      if (end > len) break;
      const type = buf[o]! >> 4;
      const flags = buf[o]! & 0x0f;
      if (type === PacketType.PUBLISH) {
        const p = this.pub;
        p.qos = (flags >> 1) & 3;
        p.dup = (flags & 8) !== 0;
        p.retain = (flags & 1) !== 0;
        p.buf = buf;
        p.topicStart = start + 2;
        let q = start + 2 + buf.readUInt16BE(start);
        p.topicEnd = q;
        if (p.qos > 0) {
          p.packetId = buf.readUInt16BE(q);
          q += 2;
        } else {
          p.packetId = 0;
        }
        p.payloadLength = end - q;
        if (p.payloadLength >= PAYLOAD_HEADER) {
          p.publisher = buf.readUInt16BE(q);
          p.seq = buf.readUInt32BE(q + 2);
          p.sentAt = buf.readDoubleBE(q + 6);
        } else {
          p.publisher = -1;
          p.seq = -1;
          p.sentAt = 0;
        }
        this.handlers.onPublish(p);
      } else {
        this.handlers.onPacket(type, flags, buf, start, end);
      }
      o = end;
    }
    if (o < len) this.pending = Buffer.from(buf.subarray(o)); // copy: the chunk may be reused
  }

  private fail(err: Error): void {
    this.failed = true;
    this.handlers.onError(err);
  }
}
