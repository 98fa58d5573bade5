/**
 * The bodies inside a frame (frame.ts): one byte of kind, then the kind's content.
 *
 * - A publish (`PUB`) is binary around JSON: flags (plain subscribers), the `$share` groups the
 *   receiving partition takes it for, then the message encoded once for every partition it goes
 *   to (meta JSON, then the payload bytes as they are).
 * - Everything else (takeovers, acknowledgements, interest, reloads...) is JSON.
 *
 * Buffers inside JSON (correlation data, payloads of a session snapshot) travel as
 * `{"$b": base64}`.
 */
import type { Message, Stamp } from '../broker/message.ts';
import type { QoS } from '../protocol/codec.ts';

export const BodyKind = { Publish: 1, Control: 2 } as const;

/** A publish as it arrives: the message, and for whom on the receiving partition. */
export interface PublishBody {
  kind: typeof BodyKind.Publish;
  message: Message;
  plain: boolean;
  groups: string[] | null;
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

interface Meta {
  t: string;
  q: QoS;
  r: boolean;
  p?: JsonValue;
  e?: number;
  o?: string;
  s?: [string, number];
}

/** The message as every partition receives it: made once per message (cached on it). */
export function messageWire(m: Message): Buffer {
  if (m.wire !== undefined) return m.wire;
  const meta: Meta = { t: m.topic, q: m.qos, r: m.retain };
  if (m.properties !== undefined) meta.p = toJson(m.properties);
  if (m.expiresAt !== undefined) meta.e = m.expiresAt;
  if (m.origin !== undefined) meta.o = m.origin;
  if (m.stamp !== undefined) meta.s = [m.stamp.node, m.stamp.seq];
  const json = Buffer.from(JSON.stringify(meta));
  const out = Buffer.allocUnsafe(4 + json.length + m.payload.length);
  out.writeUInt32BE(json.length, 0);
  json.copy(out, 4);
  m.payload.copy(out, 4 + json.length);
  m.wire = out;
  return out;
}

export function decodeMessageWire(buf: Buffer): Message {
  const n = buf.readUInt32BE(0);
  const meta = JSON.parse(buf.toString('utf8', 4, 4 + n)) as Meta;
  if (typeof meta.t !== 'string' || (meta.q !== 0 && meta.q !== 1 && meta.q !== 2) || typeof meta.r !== 'boolean') throw new Error('bad message');
  // A copy: the payload must not pin the whole frame (and the stream reply) while it waits in a queue.
  const message: Message = { topic: meta.t, payload: Buffer.from(buf.subarray(4 + n)), qos: meta.q, retain: meta.r };
  if (meta.p !== undefined) message.properties = fromJson(meta.p) as Message['properties'];
  if (typeof meta.e === 'number') message.expiresAt = meta.e;
  if (typeof meta.o === 'string') message.origin = meta.o;
  if (Array.isArray(meta.s)) message.stamp = { node: String(meta.s[0]), seq: Number(meta.s[1]) } satisfies Stamp;
  return message;
}

/** A publish body for one partition: who there takes it, and the message. */
export function encodePublish(m: Message, plain: boolean, groups: readonly string[] | null): Buffer {
  const wire = messageWire(m);
  const g = groups === null || groups.length === 0 ? null : Buffer.from(JSON.stringify(groups));
  const out = Buffer.allocUnsafe(1 + 1 + 4 + (g?.length ?? 0) + wire.length);
  let o = out.writeUInt8(BodyKind.Publish, 0);
  o = out.writeUInt8(plain ? 1 : 0, o);
  o = out.writeUInt32BE(g?.length ?? 0, o);
  if (g !== null) o += g.copy(out, o);
  wire.copy(out, o);
  return out;
}

export function encodeControl(c: Control): Buffer {
  const json = Buffer.from(JSON.stringify(c));
  const out = Buffer.allocUnsafe(1 + json.length);
  out.writeUInt8(BodyKind.Control, 0);
  json.copy(out, 1);
  return out;
}

/** Parses a body; throws on a malformed one (the frame was signed by a node, so that is a bug, logged). */
export function decodeBody(buf: Buffer): PublishBody | ControlBody {
  const kind = buf.readUInt8(0);
  if (kind === BodyKind.Publish) {
    const plain = buf.readUInt8(1) === 1;
    const gl = buf.readUInt32BE(2);
    const groups = gl === 0 ? null : (JSON.parse(buf.toString('utf8', 6, 6 + gl)) as string[]);
    return { kind: BodyKind.Publish, plain, groups, message: decodeMessageWire(buf.subarray(6 + gl)) };
  }
  if (kind === BodyKind.Control) {
    const control = JSON.parse(buf.toString('utf8', 1)) as Control;
    if (control === null || typeof control !== 'object' || typeof control.t !== 'string') throw new Error('bad control body');
    return { kind: BodyKind.Control, control };
  }
  throw new Error(`unknown body kind ${kind}`);
}
