/**
 * Frames: what the nodes write to Redis. Redis is a trust boundary (SECURITY.md): whoever can
 * write to it must not be able to inject, alter or replay a publish, a takeover or a reload. So
 * every frame is signed with the cluster key (HMAC-SHA256) over all of it, and names:
 *
 * - the key id that signed it (rotation, keys.ts);
 * - the sender: a node's run (`<node id>~<epoch>`, new at every start);
 * - the target: the stream it was written to (a partition's inbox, or the broadcast stream), so
 *   a frame copied into another stream is refused;
 * - a timestamp, which must be within `maxClockSkewMs` of the time Redis gave the stream entry
 *   (a frame copied later into the same stream carries an old timestamp under a new entry id);
 * - a sequence number per sender and target, strictly increasing: a frame whose number the
 *   reader has seen is a replay.
 *
 * Layout: 'PCB1' | u8 n, key id | u8 n, sender | u16 n, target | f64 timestamp | f64 sequence |
 * u32 count | count × (u32 length, body) | 32-byte HMAC of everything before it.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { ClusterKey } from './keys.ts';

const MAGIC = Buffer.from('PCB1');
const MAC_BYTES = 32;

export interface FrameHeader {
  keyId: string;
  sender: string;
  target: string;
  ts: number;
  seq: number;
}

export interface Frame extends FrameHeader {
  /** The frame as read (bodies are read from it in place: it must not be changed afterwards). */
  buf: Buffer;
  /** Where each body is in `buf`: start and end, two numbers per body (no view per body on the receiving path). */
  spans: number[];
  /** Each body as a view of `buf` (made on first use; control paths and tools). */
  readonly bodies: Buffer[];
}

/** A verified frame; `bodies` made only when asked for. */
class DecodedFrame implements Frame {
  private views: Buffer[] | null = null;

  constructor(
    readonly keyId: string,
    readonly sender: string,
    readonly target: string,
    readonly ts: number,
    readonly seq: number,
    readonly buf: Buffer,
    readonly spans: number[],
  ) {}

  get bodies(): Buffer[] {
    if (this.views === null) {
      const views: Buffer[] = [];
      for (let i = 0; i < this.spans.length; i += 2) views.push(this.buf.subarray(this.spans[i], this.spans[i + 1]));
      this.views = views;
    }
    return this.views;
  }
}

/**
 * A body written straight into place, without a buffer of its own (a publish: into the outbox's
 * packing buffer as it is sent, which is copied into the frame at the flush).
 */
export interface BodyWriter {
  readonly length: number;
  /** Writes the body's `length` bytes at `at`. */
  writeTo(out: Buffer, at: number): void;
}

/** A body: one buffer, parts written one after the other, or a writer. */
export type Body = Buffer | readonly Buffer[] | BodyWriter;

export function bodyLength(b: Body): number {
  if (Buffer.isBuffer(b)) return b.length;
  if (!Array.isArray(b)) return (b as BodyWriter).length;
  let n = 0;
  for (const part of b as readonly Buffer[]) n += part.length;
  return n;
}

/** Writes `b` (of `n` bytes) at `o` in `out`, after its u32 length; returns where it ends. */
export function writeBody(out: Buffer, o: number, b: Body, n: number): number {
  o = out.writeUInt32BE(n, o);
  if (Buffer.isBuffer(b)) return o + b.copy(out, o);
  if (Array.isArray(b)) {
    for (const part of b as readonly Buffer[]) o += part.copy(out, o);
    return o;
  }
  (b as BodyWriter).writeTo(out, o);
  return o + n;
}

/** Builds and signs a frame holding `bodies`. */
export function encodeFrame(key: ClusterKey, header: Omit<FrameHeader, 'keyId'>, bodies: readonly Body[]): Buffer {
  let bytes = 0;
  for (const b of bodies) bytes += 4 + bodyLength(b);
  const { out, at } = frameStart(key, header, bodies.length, bytes);
  let o = at;
  for (const b of bodies) o = writeBody(out, o, b, bodyLength(b));
  return frameSign(key, out, o);
}

/**
 * Builds and signs a frame from bodies already written one after the other (each after its u32
 * length, {@link writeBody}): `packed` bytes 0 to `bytes`, `count` bodies. The same frame as
 * {@link encodeFrame} with those bodies.
 */
export function encodePackedFrame(key: ClusterKey, header: Omit<FrameHeader, 'keyId'>, count: number, packed: Buffer, bytes: number): Buffer {
  const { out, at } = frameStart(key, header, count, bytes);
  return frameSign(key, out, at + packed.copy(out, at, 0, bytes));
}

/** A frame's buffer with its header written, room for `bytes` of bodies and the MAC; `at`: where the bodies go. */
function frameStart(key: ClusterKey, header: Omit<FrameHeader, 'keyId'>, count: number, bytes: number): { out: Buffer; at: number } {
  const keyId = Buffer.from(key.id);
  const sender = Buffer.from(header.sender);
  const target = Buffer.from(header.target);
  const size = 4 + 1 + keyId.length + 1 + sender.length + 2 + target.length + 8 + 8 + 4 + bytes + MAC_BYTES;
  const out = Buffer.allocUnsafe(size);
  let o = MAGIC.copy(out, 0);
  o = out.writeUInt8(keyId.length, o);
  o += keyId.copy(out, o);
  o = out.writeUInt8(sender.length, o);
  o += sender.copy(out, o);
  o = out.writeUInt16BE(target.length, o);
  o += target.copy(out, o);
  o = out.writeDoubleBE(header.ts, o);
  o = out.writeDoubleBE(header.seq, o);
  o = out.writeUInt32BE(count, o);
  return { out, at: o };
}

/** Signs the frame in `out` whose bodies end at `o` (the MAC fills the rest). */
function frameSign(key: ClusterKey, out: Buffer, o: number): Buffer {
  if (o + MAC_BYTES !== out.length) throw new Error('frame length mismatch');
  createHmac('sha256', key.key).update(out.subarray(0, o)).digest().copy(out, o);
  return out;
}

export type FrameProblem = 'malformed' | 'unknown-key' | 'bad-signature' | 'wrong-target';

/** Parses and verifies a frame written to `target`. */
export function decodeFrame(buf: Buffer, keys: ReadonlyMap<string, Buffer>, target: string): Frame | { problem: FrameProblem } {
  try {
    if (buf.length < 4 + MAC_BYTES || !buf.subarray(0, 4).equals(MAGIC)) return { problem: 'malformed' };
    let o = 4;
    const kl = buf.readUInt8(o++);
    const keyId = buf.toString('utf8', o, (o += kl));
    const key = keys.get(keyId);
    if (key === undefined) return { problem: 'unknown-key' };
    const end = buf.length - MAC_BYTES;
    const mac = createHmac('sha256', key).update(buf.subarray(0, end)).digest();
    if (!timingSafeEqual(mac, buf.subarray(end))) return { problem: 'bad-signature' };
    const sl = buf.readUInt8(o++);
    const sender = buf.toString('utf8', o, (o += sl));
    const tl = buf.readUInt16BE(o);
    o += 2;
    const frameTarget = buf.toString('utf8', o, (o += tl));
    if (frameTarget !== target) return { problem: 'wrong-target' };
    const ts = buf.readDoubleBE(o);
    o += 8;
    const seq = buf.readDoubleBE(o);
    o += 8;
    const count = buf.readUInt32BE(o);
    o += 4;
    const spans: number[] = [];
    for (let i = 0; i < count; i++) {
      const n = buf.readUInt32BE(o);
      o += 4;
      if (o + n > end) return { problem: 'malformed' };
      spans.push(o, (o += n));
    }
    if (o !== end) return { problem: 'malformed' };
    return new DecodedFrame(keyId, sender, frameTarget, ts, seq, buf, spans);
  } catch {
    return { problem: 'malformed' };
  }
}

/** The milliseconds part of a stream entry id (`<ms>-<n>`), the time Redis wrote it. */
export function entryTime(id: string): number {
  const dash = id.indexOf('-');
  return Number(dash < 0 ? id : id.slice(0, dash));
}

/** The entry id right after `id`: trimming to it (XTRIM MINID) removes `id` and everything before. */
export function nextEntryId(id: string): string {
  const dash = id.indexOf('-');
  return dash < 0 ? `${id}-1` : `${id.slice(0, dash)}-${Number(id.slice(dash + 1)) + 1}`;
}

/**
 * Replay protection for one reader: the last sequence number seen per sender and target, and
 * the clock check. A map bounded by forgetting senders not heard from for a while (a sender's
 * run ends when it stops; a new run is a new sender).
 */
export class ReplayGuard {
  private readonly last = new Map<string, { seq: number; at: number }>();

  constructor(private readonly maxSkewMs: number) {}

  /** Null when the frame may be applied; otherwise why not. */
  check(frame: FrameHeader, entryId: string, now: number): 'replay' | 'clock' | null {
    if (Math.abs(entryTime(entryId) - frame.ts) > this.maxSkewMs) return 'clock';
    const k = `${frame.sender}\u0000${frame.target}`;
    const seen = this.last.get(k);
    if (seen !== undefined && frame.seq <= seen.seq) return 'replay';
    this.last.set(k, { seq: frame.seq, at: now });
    return null;
  }

  /** Forgets senders silent for longer than `ms`. */
  sweep(now: number, ms: number): void {
    for (const [k, v] of this.last) if (now - v.at > ms) this.last.delete(k);
  }
}
