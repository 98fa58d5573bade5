/**
 * The bodies inside a frame (frame.ts): one byte of kind, then the kind's content.
 *
 * - A publish is binary: whether plain subscribers take it, how many times its `$share` group
 *   copies were passed on (node.ts), the `$share` groups the receiving partition takes it for
 *   (JSON, rare), then the message encoded once for every partition it goes to
 *   ({@link PublishWire}).
 * - Everything else (takeovers, acknowledgements, interest, reloads...) is JSON.
 *
 * Buffers inside JSON (correlation data, payloads of a session snapshot) travel as
 * `{"$b": base64}`.
 */
import type { Message, Stamp } from '../broker/message.ts';
import type { QoS } from '../protocol/codec.ts';
import type { BodyWriter } from './frame.ts';

export const BodyKind = { Publish: 1, Control: 2 } as const;

/** A publish as it arrives: the message, and for whom on the receiving partition. */
export interface PublishBody {
  kind: typeof BodyKind.Publish;
  message: Message;
  plain: boolean;
  groups: string[] | null;
  /** How many partitions passed these group copies on before (0: sent by the publishing node). */
  passes: number;
}

export interface ControlBody {
  kind: typeof BodyKind.Control;
  control: Control;
}

/** Control messages. `replyTo` and `to` are partitions (their inboxes). */
export type Control =
  // sessions moving between nodes (moves.ts)
  | { t: 'takeover'; id: string; key: string; clean: boolean; replyTo: string }
  | { t: 'subs'; id: string; key: string; session: JsonValue }
  | { t: 'commit'; id: string; key: string }
  | { t: 'released'; id: string; key: string; present: boolean; vector: Record<string, number>; snapshot: JsonValue | null }
  | { t: 'redirect'; id: string; key: string }
  // cross-node flow control (flow.ts): a subscriber here holds, or lets go, a publisher of the node it goes to
  | { t: 'flow'; key: string; hold: boolean }
  // broadcast (the ctl stream)
  | { t: 'interest'; p: string; add: string[]; del: string[]; ackTo?: string }
  | { t: 'retain'; m: JsonValue; ackTo?: string }
  | { t: 'partition'; p: string; event: 'created' | 'adopted' | 'gone' | 'freed'; host?: string }
  | { t: 'node'; run: string; event: 'up' | 'down' }
  | { t: 'ack'; ids: string[] }
  | { t: 'reload'; id: string; what: string[]; trigger: string; replyTo: string }
  | { t: 'reloaded'; id: string; node: string; reports: JsonValue }
  | { t: 'auth-failures'; list: [string, string, string][] }
  | { t: 'bans'; entries: JsonValue; trigger: string }
  | { t: 'bans-wanted'; replyTo: string }
  // a node that joins with a store of its own asks one live node for the retained messages (node.ts)
  | { t: 'retained-wanted'; replyTo: string; ask: string }
  | { t: 'retained-snapshot'; m: JsonValue[]; last: boolean }
  | { t: 'rate'; usage: [string, number, number][] };

export type JsonValue = null | boolean | number | string | JsonValue[] | { [k: string]: JsonValue };

// ── JSON with buffers ───────────────────────────────────────────────────────

/** A JSON-safe copy: Buffers become `{ $b: base64 }`, undefined members are left out. */
export function toJson(value: unknown): JsonValue {
  if (value === null || value === undefined) return null;
  if (Buffer.isBuffer(value)) return { $b: value.toString('base64') };
  if (value instanceof Uint8Array) return { $b: Buffer.from(value).toString('base64') };
  if (Array.isArray(value)) return value.map(toJson);
  if (typeof value === 'object') {
    const out: { [k: string]: JsonValue } = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) if (v !== undefined) out[k] = toJson(v);
    return out;
  }
  if (typeof value === 'number' || typeof value === 'string' || typeof value === 'boolean') return value;
  return null;
}

/** The inverse of {@link toJson}. */
export function fromJson(value: JsonValue): unknown {
  if (value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.map(fromJson);
  const keys = Object.keys(value);
  if (keys.length === 1 && keys[0] === '$b' && typeof value.$b === 'string') return Buffer.from(value.$b, 'base64');
  const out: Record<string, unknown> = {};
  for (const k of keys) out[k] = fromJson(value[k] as JsonValue);
  return out;
}

// ── messages ────────────────────────────────────────────────────────────────

const F_RETAIN = 0x04;
const F_EXPIRES = 0x08;
const F_ORIGIN = 0x10;
const F_STAMP = 0x20;
const F_PROPS = 0x40;
/** The stamp's node is the frame's sender (the usual case: only its sequence number travels). */
const F_STAMP_SENDER = 0x80;

/**
 * A publish body as every partition receives it: the header (see {@link publishHeader}), then
 * the message, binary, so that a message costs no JSON on the way out or in. flags (QoS in the
 * low two bits) | u16 topic | [f64 expiry] | [u16 origin] | [u8 stamp node] f64 stamp sequence |
 * [u32 properties JSON] | payload (the rest). `sender`: the run that writes the frame.
 *
 * Measured once, written straight into the packing buffer of each inbox it goes to (frame.ts
 * BodyWriter, outbox.ts), not into a buffer of its own first. The sending node keeps one and
 * sets it for each message ({@link set}): the outbox writes it at once. Every part is written
 * with `TypedArray#set` (Node's `utf8Write` and `copy` cost more per call than the copy of a
 * small part): the topic's and the origin's UTF-8 bytes are kept from the previous message, which
 * a publisher's next message usually shares.
 */
export class PublishWire implements BodyWriter {
  length = 0;
  private flags = 0;
  private header: Buffer = EMPTY;
  private topic: Buffer = EMPTY;
  private payload: Buffer = EMPTY;
  private expiresAt = 0;
  private origin: Buffer = EMPTY;
  private stampNode: Buffer = EMPTY;
  private stampSeq = 0;
  private props: Buffer | null = null;
  private readonly topics = new Utf8Cache();
  private readonly origins = new Utf8Cache();

  /** Takes what it writes from `m` now (it is written right after, by the outbox). */
  constructor(header?: Buffer, m?: Message, sender?: string) {
    if (header !== undefined && m !== undefined) this.set(header, m, sender ?? '');
  }

  /** Takes what it writes from `m` now, for the next {@link writeTo}; returns itself. */
  set(header: Buffer, m: Message, sender: string): this {
    let flags: number = m.qos;
    if (m.retain) flags |= F_RETAIN;
    this.header = header;
    const topic = (this.topic = this.topics.bytes(m.topic));
    if (topic.length > 0xffff) throw new Error('topic too long for the bus');
    this.payload = m.payload;
    let size = header.length + 1 + 2 + topic.length + m.payload.length;
    this.expiresAt = m.expiresAt ?? 0;
    if (m.expiresAt !== undefined) {
      flags |= F_EXPIRES;
      size += 8;
    }
    this.origin = EMPTY;
    if (m.origin !== undefined) {
      flags |= F_ORIGIN;
      const origin = (this.origin = this.origins.bytes(m.origin));
      if (origin.length > 0xffff) throw new Error('origin too long for the bus');
      size += 2 + origin.length;
    }
    this.stampNode = EMPTY;
    this.stampSeq = 0;
    if (m.stamp !== undefined) {
      flags |= F_STAMP;
      this.stampSeq = m.stamp.seq;
      if (m.stamp.node === sender) flags |= F_STAMP_SENDER;
      else {
        this.stampNode = Buffer.from(m.stamp.node);
        if (this.stampNode.length > 0xff) throw new Error('stamp node too long for the bus');
        size += 1 + this.stampNode.length;
      }
      size += 8;
    }
    let props: Buffer | null = null;
    if (m.properties !== undefined) {
      flags |= F_PROPS;
      props = Buffer.from(JSON.stringify(toJson(m.properties)));
      size += 4 + props.length;
    }
    this.props = props;
    this.flags = flags;
    this.length = size;
    return this;
  }

  writeTo(out: Buffer, at: number): void {
    const flags = this.flags;
    out.set(this.header, at);
    let o = at + this.header.length;
    out[o++] = flags;
    const topic = this.topic;
    out[o++] = topic.length >>> 8;
    out[o++] = topic.length & 0xff;
    out.set(topic, o);
    o += topic.length;
    if ((flags & F_EXPIRES) !== 0) o = out.writeDoubleBE(this.expiresAt, o);
    if ((flags & F_ORIGIN) !== 0) {
      const origin = this.origin;
      out[o++] = origin.length >>> 8;
      out[o++] = origin.length & 0xff;
      out.set(origin, o);
      o += origin.length;
    }
    if ((flags & F_STAMP) !== 0) {
      if ((flags & F_STAMP_SENDER) === 0) {
        out[o++] = this.stampNode.length;
        out.set(this.stampNode, o);
        o += this.stampNode.length;
      }
      o = out.writeDoubleBE(this.stampSeq, o);
    }
    if (this.props !== null) {
      o = out.writeUInt32BE(this.props.length, o);
      out.set(this.props, o);
      o += this.props.length;
    }
    out.set(this.payload, o);
  }
}

/** The UTF-8 bytes of the last string asked for, kept for the next ask (a publisher's messages share a topic and an origin). */
class Utf8Cache {
  private text = '';
  private encoded: Buffer = EMPTY;

  bytes(text: string): Buffer {
    if (text !== this.text) {
      this.encoded = Buffer.from(text, 'utf8');
      this.text = text;
    }
    return this.encoded;
  }
}

/**
 * The string of the last bytes decoded, kept for the next (a frame's messages mostly share a
 * topic and an origin): a string is made only when the bytes differ. Bytes are compared one by
 * one up to {@link INTERN_MAX} (above, a string is made every time).
 */
class StringIntern {
  private text = '';
  private readonly last = Buffer.allocUnsafe(INTERN_MAX);
  private lastLength = -1;

  decode(buf: Buffer, start: number, end: number): string {
    const n = end - start;
    if (n === this.lastLength) {
      const last = this.last;
      let i = 0;
      while (i < n && buf[start + i] === last[i]) i++;
      if (i === n) return this.text;
    }
    const text = (buf as RawBuffer).utf8Slice(start, end);
    if (n <= INTERN_MAX) {
      // Copied byte by byte: short, and no view made.
      for (let i = 0; i < n; i++) this.last[i] = buf[start + i] as number;
      this.lastLength = n;
      this.text = text;
    } else this.lastLength = -1;
    return text;
  }
}

const INTERN_MAX = 128;

/** The message as {@link PublishWire} writes it, in a buffer of its own (tests, tools). */
export function messageWire(m: Message, sender: string): Buffer {
  const w = new PublishWire(EMPTY, m, sender);
  const out = Buffer.allocUnsafe(w.length);
  w.writeTo(out, 0);
  return out;
}

const EMPTY = Buffer.alloc(0);

/** Node's UTF-8 encoder and decoder without `write`'s and `toString`'s argument handling (bounds are checked here). */
type RawBuffer = Buffer & { utf8Write(text: string, offset: number, length: number): number; utf8Slice(start: number, end: number): string };

/** Reads the message in `buf` from `start` to `end` (a body inside a frame: read in place). */
export function decodeMessageWire(buf: Buffer, start: number, sender: string, end = buf.length, topics: StringIntern | null = null, origins: StringIntern | null = null): Message {
  let o = start;
  if (o + 3 > end) throw new Error('bad message');
  const flags = buf[o++] as number;
  const qos = (flags & 0x03) as QoS;
  if (qos > 2) throw new Error('bad message');
  const topicLen = ((buf[o] as number) << 8) | (buf[o + 1] as number);
  o += 2;
  if (o + topicLen > end) throw new Error('bad message');
  const topic = topics === null ? (buf as RawBuffer).utf8Slice(o, o + topicLen) : topics.decode(buf, o, o + topicLen);
  o += topicLen;
  let expiresAt: number | undefined;
  let origin: string | undefined;
  let stamp: Stamp | undefined;
  let properties: Message['properties'];
  if ((flags & F_EXPIRES) !== 0) {
    expiresAt = buf.readDoubleBE(o);
    o += 8;
  }
  if ((flags & F_ORIGIN) !== 0) {
    const n = buf.readUInt16BE(o);
    o += 2;
    if (o + n > end) throw new Error('bad message');
    origin = origins === null ? (buf as RawBuffer).utf8Slice(o, o + n) : origins.decode(buf, o, o + n);
    o += n;
  }
  if ((flags & F_STAMP) !== 0) {
    let node = sender;
    if ((flags & F_STAMP_SENDER) === 0) {
      const n = buf.readUInt8(o++);
      node = buf.toString('utf8', o, (o += n));
    }
    stamp = { node, seq: buf.readDoubleBE(o) };
    o += 8;
  }
  if ((flags & F_PROPS) !== 0) {
    const n = buf.readUInt32BE(o);
    o += 4;
    properties = fromJson(JSON.parse(buf.toString('utf8', o, (o += n))) as JsonValue) as Message['properties'];
  }
  if (o > end) throw new Error('bad message');
  // A copy: the payload must not pin the whole frame (and the stream reply) while it waits in a queue.
  const payload = Buffer.allocUnsafe(end - o);
  buf.copy(payload, 0, o, end);
  const retain = (flags & F_RETAIN) !== 0;
  // The usual message (origin and stamp, nothing else) made in one step, in the shape a local publish has.
  if (origin !== undefined && stamp !== undefined && expiresAt === undefined && properties === undefined) return { topic, payload, qos, retain, origin, stamp };
  const message: Message = { topic, payload, qos, retain };
  if (expiresAt !== undefined) message.expiresAt = expiresAt;
  if (origin !== undefined) message.origin = origin;
  if (stamp !== undefined) message.stamp = stamp;
  if (properties !== undefined) message.properties = properties;
  return message;
}

/**
 * The few bytes before the message in a publish body: kind, plain subscribers and passes (one
 * byte: bit 0 plain, the bits above it how many partitions passed the group copies on), the
 * `$share` groups. A node that predates passes reads a passed copy (never plain) as not plain.
 */
export function publishHeader(plain: boolean, groups: readonly string[] | null, passes = 0): Buffer {
  if (passes < 0 || passes > MAX_PASSES_ON_WIRE) throw new Error('bad pass count');
  if ((groups === null || groups.length === 0) && passes === 0) return plain ? PLAIN_HEADER : NO_PLAIN_HEADER;
  const g = groups === null || groups.length === 0 ? EMPTY : Buffer.from(JSON.stringify(groups));
  const out = Buffer.allocUnsafe(6 + g.length);
  out.writeUInt8(BodyKind.Publish, 0);
  out.writeUInt8((plain ? 1 : 0) | (passes << 1), 1);
  out.writeUInt32BE(g.length, 2);
  g.copy(out, 6);
  return out;
}

/** What the pass count's seven bits hold. */
const MAX_PASSES_ON_WIRE = 0x7f;

const PLAIN_HEADER = Buffer.from([BodyKind.Publish, 1, 0, 0, 0, 0]);
const NO_PLAIN_HEADER = Buffer.from([BodyKind.Publish, 0, 0, 0, 0, 0]);

/** A publish body for one partition (one buffer: tests and tools; the outbox sends header and message without joining them). */
export function encodePublish(m: Message, plain: boolean, groups: readonly string[] | null, sender = '', passes = 0): Buffer {
  return Buffer.concat([publishHeader(plain, groups, passes), messageWire(m, sender)]);
}

export function encodeControl(c: Control): Buffer {
  const json = Buffer.from(JSON.stringify(c));
  const out = Buffer.allocUnsafe(1 + json.length);
  out.writeUInt8(BodyKind.Control, 0);
  json.copy(out, 1);
  return out;
}

/**
 * Parses a body; throws on a malformed one (the frame was signed by a node, so that is a bug,
 * logged). `sender`: the run that wrote the frame.
 */
export function decodeBody(buf: Buffer, sender = ''): PublishBody | ControlBody {
  const r = new BodyReader();
  if (r.read(buf, 0, buf.length, sender)) return { kind: BodyKind.Publish, plain: r.plain, groups: r.groups, passes: r.passes, message: r.message as Message };
  return { kind: BodyKind.Control, control: r.control as Control };
}

/**
 * Reads bodies in place, inside their frame, into its own fields: one reader per node, so a
 * received message costs the message and what it holds, and no body object or view around it.
 * What it reads is valid until the next {@link read}.
 */
export class BodyReader {
  plain = false;
  /** See {@link PublishBody.passes}. */
  passes = 0;
  groups: string[] | null = null;
  message: Message | null = null;
  control: Control | null = null;
  /** The last topic and origin read, kept as strings for the next message that repeats them. */
  private readonly topics = new StringIntern();
  private readonly origins = new StringIntern();

  /** Reads the body in `buf` from `start` to `end`: true for a publish, false for a control message; throws on a malformed one. */
  read(buf: Buffer, start: number, end: number, sender: string): boolean {
    if (end <= start) throw new Error('empty body');
    const kind = buf.readUInt8(start);
    if (kind === BodyKind.Publish) {
      if (start + 6 > end) throw new Error('bad publish body');
      const who = buf.readUInt8(start + 1);
      this.plain = (who & 1) === 1;
      this.passes = who >>> 1;
      const gl = buf.readUInt32BE(start + 2);
      if (start + 6 + gl > end) throw new Error('bad publish body');
      this.groups = gl === 0 ? null : (JSON.parse(buf.toString('utf8', start + 6, start + 6 + gl)) as string[]);
      this.message = decodeMessageWire(buf, start + 6 + gl, sender, end, this.topics, this.origins);
      this.control = null;
      return true;
    }
    if (kind === BodyKind.Control) {
      const control = JSON.parse(buf.toString('utf8', start + 1, end)) as Control;
      if (control === null || typeof control !== 'object' || typeof control.t !== 'string') throw new Error('bad control body');
      this.control = control;
      this.message = null;
      this.groups = null;
      return false;
    }
    throw new Error(`unknown body kind ${kind}`);
  }
}
