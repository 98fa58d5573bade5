/**
 * Message bodies of the LMDB store in format 3: a binary layout, decoded without JSON and without
 * a Buffer per field, for queued, retained and in-flight messages (the records a restart loads
 * by the million). Other records (session headers, subscriptions, wills, metadata) keep the JSON
 * layout of records.ts, and so does the Redis store.
 *
 * A message:
 *   [0xB3][flags][topic length u16][topic UTF-8]
 *   [expiresAt f64]?  [origin length u32][origin UTF-8]?  [properties length u32][properties JSON]?
 *   [correlation data length u32][bytes]?  [n u16][n × subscription id u32]?  [payload: the rest]
 *   flags: bits 0-1 QoS, 2 retain, 3 expiresAt, 4 origin, 5 properties, 6 correlation data,
 *   7 subscription ids (a queued delivery's).
 * An in-flight record (keyed [sid, packet id], lmdb-keys.ts):
 *   [resend order u64][0xB3][packet id u16][state: 0 publish, 1 pubrel][n u16][n × subscription id u32][message]
 *
 * Formats 1 and 2 wrote these bodies in the JSON layout (records.ts), which starts with a u32
 * length below 2^24, so its first byte is 0: the tag tells the layouts apart, and the readers
 * here read both (a format 1 or 2 store is rewritten at open, lmdb-base.ts, and the tools read
 * stores that were not opened since).
 */
import type { PublishProperties, QoS } from '../protocol/codec.ts';
import { RecordError, decodeInflight, decodeMessage, subscriptionId } from './records.ts';
import type { StoredInflight, StoredMessage } from './types.ts';

/** The first byte of a format 3 message body (and of an in-flight entry after its order). */
export const BINARY_TAG = 0xb3;
const TWO_32 = 2 ** 32;

const RETAIN = 0x04;
const EXPIRES = 0x08;
const ORIGIN = 0x10;
const PROPS = 0x20;
const CORRELATION = 0x40;
const SUB_IDS = 0x80;
const KNOWN_FLAGS = 0xff;

function fail(what: string): never {
  throw new RecordError('format', what);
}

/**
 * Where decoded payloads and correlation data are copied to: slabs shared by many small ones (one
 * Buffer object each, views of a slab) instead of an allocation each. A slab stays alive while one
 * of its views does, so a scan uses an arena per table (retained messages outlive queued ones).
 */
export class Arena {
  private slab = Buffer.alloc(0);
  private used = 0;

  constructor(private readonly slabSize = 64 * 1024) {}

  copy(src: Buffer, start: number, end: number): Buffer {
    const n = end - start;
    if (n > this.slabSize >>> 4) return Buffer.from(src.subarray(start, end));
    if (this.used + n > this.slab.length) {
      // Zeroed: a slab's unused bytes are reachable through `payload.buffer`.
      this.slab = Buffer.alloc(this.slabSize);
      this.used = 0;
    }
    const at = this.used;
    src.copy(this.slab, at, start, end);
    this.used = at + n;
    return this.slab.subarray(at, at + n);
  }
}

/** Copies without an arena: a Buffer of its own. */
const OWN: Pick<Arena, 'copy'> = { copy: (src, start, end) => Buffer.from(src.subarray(start, end)) };

// ── messages ───────────────────────────────────────────────────────────────

/**
 * The message in the binary layout, after `headroom` free bytes (where the store puts the
 * record's envelope without copying the body again, records.ts wrapWithHeadroom).
 */
export function encodeMessageBinary(m: StoredMessage, headroom = 0): Buffer {
  const topicLength = Buffer.byteLength(m.topic, 'utf8');
  if (topicLength > 0xffff) fail('topic longer than 65535 bytes');
  let flags = m.qos | (m.retain ? RETAIN : 0);
  let size = headroom + 4 + topicLength + m.payload.length;
  let origin: Buffer | undefined;
  let props: Buffer | undefined;
  let correlation: Buffer | undefined;
  if (m.expiresAt !== undefined) {
    flags |= EXPIRES;
    size += 8;
  }
  if (m.origin !== undefined) {
    flags |= ORIGIN;
    origin = Buffer.from(m.origin, 'utf8');
    size += 4 + origin.length;
  }
  if (m.properties !== undefined) {
    const { correlationData, ...rest } = m.properties;
    flags |= PROPS;
    props = Buffer.from(JSON.stringify(rest), 'utf8');
    size += 4 + props.length;
    if (correlationData !== undefined) {
      flags |= CORRELATION;
      correlation = Buffer.isBuffer(correlationData) ? correlationData : Buffer.from(correlationData);
      size += 4 + correlation.length;
    }
  }
  const ids = m.subscriptionIds;
  if (ids !== undefined && ids.length > 0) {
    if (ids.length > 0xffff) fail('too many subscription ids');
    flags |= SUB_IDS;
    size += 2 + 4 * ids.length;
  }
  const out = Buffer.allocUnsafe(size);
  let o = headroom;
  out[o] = BINARY_TAG;
  out[o + 1] = flags;
  out.writeUInt16BE(topicLength, o + 2);
  o += 4;
  o += out.write(m.topic, o, 'utf8');
  if (m.expiresAt !== undefined) o = out.writeDoubleBE(m.expiresAt, o);
  if (origin !== undefined) o = putPart(out, o, origin);
  if (props !== undefined) o = putPart(out, o, props);
  if (correlation !== undefined) o = putPart(out, o, correlation);
  if ((flags & SUB_IDS) !== 0) {
    o = out.writeUInt16BE((ids as number[]).length, o);
    for (const id of ids as number[]) o = out.writeUInt32BE(id, o);
  }
  m.payload.copy(out, o);
  return out;
}

function putPart(out: Buffer, o: number, part: Buffer): number {
  o = out.writeUInt32BE(part.length, o);
  return o + part.copy(out, o);
}

/** A u32-length-prefixed part at `o`; returns its end (its start is o + 4). */
function partEnd(b: Buffer, o: number, end: number, what: string): number {
  if (o + 4 > end) fail(`truncated ${what}`);
  const e = o + 4 + b.readUInt32BE(o);
  if (e > end) fail(`${what} overruns the value`);
  return e;
}

/** Decodes the binary message in body[start, end); payload and correlation data are copied (to `arena`). */
function decodeBinaryMessage(b: Buffer, start: number, end: number, arena: Pick<Arena, 'copy'>): StoredMessage {
  if (end - start < 4 || b[start] !== BINARY_TAG) fail('message too short or not in the binary layout');
  const flags = b[start + 1] as number;
  const q = flags & 0x03;
  if (q === 3 || (flags & ~KNOWN_FLAGS) !== 0) fail('bad message flags');
  let o = start + 4 + ((b[start + 2] as number) << 8 | (b[start + 3] as number));
  if (o > end) fail('topic overruns the value');
  const m: StoredMessage = { topic: b.toString('utf8', start + 4, o), payload: b, qos: q as QoS, retain: (flags & RETAIN) !== 0 };
  if ((flags & EXPIRES) !== 0) {
    if (o + 8 > end) fail('truncated expiry');
    m.expiresAt = b.readDoubleBE(o);
    if (!Number.isFinite(m.expiresAt)) fail('bad expiresAt');
    o += 8;
  }
  if ((flags & ORIGIN) !== 0) {
    const e = partEnd(b, o, end, 'origin');
    m.origin = b.toString('utf8', o + 4, e);
    o = e;
  }
  if ((flags & PROPS) !== 0) {
    const e = partEnd(b, o, end, 'properties');
    let props: unknown;
    try {
      props = JSON.parse(b.toString('utf8', o + 4, e));
    } catch {
      fail('properties are not JSON');
    }
    if (props === null || typeof props !== 'object' || Array.isArray(props)) fail('bad properties');
    m.properties = props as PublishProperties;
    o = e;
  } else if ((flags & CORRELATION) !== 0) fail('correlation data without properties');
  if ((flags & CORRELATION) !== 0) {
    const e = partEnd(b, o, end, 'correlation data');
    (m.properties as PublishProperties).correlationData = arena.copy(b, o + 4, e);
    o = e;
  }
  if ((flags & SUB_IDS) !== 0) {
    if (o + 2 > end) fail('truncated subscription ids');
    const e = o + 2 + 4 * b.readUInt16BE(o);
    if (e > end) fail('subscription ids overrun the value');
    m.subscriptionIds = [];
    for (let i = o + 2; i < e; i += 4) m.subscriptionIds.push(subscriptionId(b.readUInt32BE(i)));
    o = e;
  }
  m.payload = arena.copy(b, o, end);
  return m;
}

/**
 * A queued or retained message in either layout (format 3 binary, or the JSON layout of formats
 * 1 and 2). `body` may be a buffer LMDB reuses: nothing decoded refers to it.
 */
export function decodeStoredMessage(body: Buffer, arena: Pick<Arena, 'copy'> = OWN, start = 0, end = body.length): StoredMessage {
  if (end > start && body[start] === BINARY_TAG) return decodeBinaryMessage(body, start, end, arena);
  return decodeMessage(start === 0 && end === body.length ? body : body.subarray(start, end));
}

/** True when a queue or retained body is in the JSON layout of formats 1 and 2 (the upgrade rewrites it). */
export function isLegacyMessage(body: Buffer): boolean {
  return body[0] !== BINARY_TAG;
}

// ── in-flight records ──────────────────────────────────────────────────────

/**
 * An in-flight record as formats 2 and 3 key it, under [sid, packet id] (lmdb-keys.ts): its resend
 * order (u64, big-endian) first, then the entry. The order is in the value, not the key, so that
 * an acknowledgement deletes the record by its packet id without reading anything first.
 */
export function encodeInflightRecord(order: number, f: StoredInflight, headroom = 0): Buffer {
  const ids = f.subscriptionIds ?? [];
  if (ids.length > 0xffff) fail('too many subscription ids');
  // The message is encoded in place, after the entry's fields (and the caller's headroom).
  const at = headroom + 14 + 4 * ids.length;
  const out = encodeMessageBinary(f.message, at);
  setInflightRecordOrder(out, order, headroom);
  out[headroom + 8] = BINARY_TAG;
  out.writeUInt16BE(f.packetId, headroom + 9);
  out[headroom + 11] = f.state === 'pubrel' ? 1 : 0;
  out.writeUInt16BE(ids.length, headroom + 12);
  let o = headroom + 14;
  for (const id of ids) o = out.writeUInt32BE(id, o);
  return out;
}

/** Sets the order of a record {@link encodeInflightRecord} made (known only inside the write), `headroom` bytes in. */
export function setInflightRecordOrder(record: Buffer, order: number, headroom = 0): void {
  record.writeUInt32BE(Math.floor(order / TWO_32), headroom);
  record.writeUInt32BE(order >>> 0, headroom + 4);
}

export function inflightRecordOrder(body: Buffer): number {
  if (body.length < 9) fail('in-flight record too short');
  return body.readUInt32BE(0) * TWO_32 + body.readUInt32BE(4);
}

/** An in-flight record in either layout (format 3, or format 2's JSON entry after the order). */
export function decodeInflightRecord(body: Buffer, arena: Pick<Arena, 'copy'> = OWN): { order: number; inflight: StoredInflight } {
  const order = inflightRecordOrder(body);
  if (body[8] !== BINARY_TAG) return { order, inflight: decodeInflight(body.subarray(8)) };
  if (body.length < 14) fail('in-flight record too short');
  const state = body[11] === 0 ? 'publish' : body[11] === 1 ? 'pubrel' : fail('bad in-flight state');
  const n = body.readUInt16BE(12);
  const at = 14 + 4 * n;
  if (at > body.length) fail('subscription ids overrun the value');
  const f: StoredInflight = { packetId: body.readUInt16BE(9), state, message: decodeBinaryMessage(body, at, body.length, arena) };
  if (n > 0) {
    f.subscriptionIds = [];
    for (let o = 14; o < at; o += 4) f.subscriptionIds.push(body.readUInt32BE(o));
  }
  return { order, inflight: f };
}

/** True when an in-flight record (format 2 layout, [order][JSON entry]) needs the upgrade's rewrite. */
export function isLegacyInflightRecord(body: Buffer): boolean {
  return body.length > 8 && body[8] !== BINARY_TAG;
}
