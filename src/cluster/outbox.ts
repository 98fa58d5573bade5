/**
 * Writing to the bus. Everything a node sends in one turn of the event loop goes out together:
 * one frame (one XADD) per inbox it writes to, and one frame on the broadcast stream (through the
 * interest script, which updates this node's interest snapshot in the same step). An inbox whose
 * previous frame is not yet answered gets its next one when the answer comes (see inFlight). So
 * the number of Redis commands per publish is O(1) and falls as the load rises.
 *
 * Bounded: bytes waiting for Redis are capped (`cluster.maxPendingBytes`). Over the cap, or while
 * Redis is unreachable, a send fails at once: a QoS 1/2 publish that needed it is not
 * acknowledged (PUBACK 0x80), a QoS 0 one is dropped and counted. Nothing piles up in memory.
 *
 * Frames to one stream carry increasing sequence numbers (replay protection, frame.ts): a number
 * is taken when the command is issued, and commands go out on one connection in that order.
 */
import type { WriteStatus } from '../broker/ports.ts';
import type { Logger } from '../log.ts';
import { bodyLength, encodeFrame, encodePackedFrame, writeBody, type Body } from './frame.ts';
import type { ClusterKey } from './keys.ts';
import type { Names } from './names.ts';
import { redisReady, type RedisClient } from './redis.ts';
import { runScript } from './scripts.ts';

/** Broadcast entries kept in the stream (live nodes read within milliseconds; a node further behind reloads the snapshots). */
export const CONTROL_MAXLEN = 100_000;
/** Above this a frame is split (Redis takes far larger values; smaller frames keep replies and memory even). */
const MAX_FRAME_BYTES = 4 * 1024 * 1024;

/** Packing buffers kept for the next turn's batches: at most this many, of at most this size. */
const SPARE_BUFFERS = 4;
const SPARE_MAX_BYTES = 1024 * 1024;
const PACK_START_BYTES = 16 * 1024;

type Waiter = (status: WriteStatus) => void;

/**
 * A turn's bodies for one inbox. Each body is written into a packing buffer as it is sent (its
 * u32 length, then the body: the frame's layout), so a message is copied once, at once, and
 * nothing of it (objects, views) is kept until the flush; the flush copies the packed bytes into
 * the frame. Cut into parts of at most MAX_FRAME_BYTES (a single larger body goes alone).
 */
interface Batch {
  parts: Part[];
  waiters: Waiter[];
  /** What every send into this batch that waits gets: one promise per batch, not per message. */
  written: Promise<WriteStatus> | null;
  /** Parts not yet answered, and the worst outcome so far (every part must be written before the waiters hear 'ok'). */
  left: number;
  worst: WriteStatus;
  /** The stream it was written to (set when it is written; it is in Outbox.inFlight until every part is answered). */
  stream: string | null;
}

interface Part {
  packed: Buffer;
  /** Bytes used in `packed` (bodies and their lengths). */
  used: number;
  /** Bodies in it, and their bytes (what `pendingBytes` counts). */
  count: number;
  bytes: number;
}

interface ControlBatch {
  bodies: Body[];
  bytes: number;
  adds: string[];
  removes: string[];
  idWaiters: ((id: string | null) => void)[];
}

export interface OutboxStats {
  /** Frames written (XADDs, broadcast included). */
  frames: number;
  /** Bodies (messages) written. */
  bodies: number;
  /** Sends refused: Redis unreachable, or over maxPendingBytes. */
  refused: number;
  /** Writes that failed (timeout, error). */
  failed: number;
}

export class Outbox {
  readonly stats: OutboxStats = { frames: 0, bodies: 0, refused: 0, failed: 0 };
  private readonly batches = new Map<string, Batch>();
  private control: ControlBatch | null = null;
  private scheduled = false;
  private pendingBytes = 0;
  private readonly seqs = new Map<string, number>();
  private failingSince = 0;
  private readonly flushNow = () => this.flush();
  /** Partition → its inbox's stream name (made once, not per message). */
  private readonly streams = new Map<string, string>();
  /** Packing buffers free for reuse (copied into their frames at the flush). */
  private readonly spare: Buffer[] = [];
  /**
   * Streams with a frame written and not yet answered. A stream's next batch waits for that
   * answer (and grows meanwhile): under load a frame carries what came during a round trip
   * instead of what came during one turn, so the per-frame costs (a write to Redis and the wake-up
   * it makes, the reader's read and trim, the signature) are shared by more messages. Idle, nothing
   * is in flight and a send goes out at the end of its turn, as before.
   */
  private readonly inFlight = new Set<string>();

  constructor(
    private readonly client: RedisClient,
    private readonly key: () => ClusterKey,
    private readonly run: string,
    private readonly names: Names,
    /** This node's partition (whose interest snapshot the broadcast updates). */
    private readonly home: () => string,
    private readonly maxPendingBytes: number,
    private readonly log: Logger,
  ) {}

  /** Bytes sent and not yet answered by Redis, or waiting to be sent. */
  get pending(): number {
    return this.pendingBytes;
  }

  /** The next sequence number for frames to `target` (taken when the command is issued). */
  nextSeq(target: string): number {
    const n = (this.seqs.get(target) ?? 0) + 1;
    this.seqs.set(target, n);
    return n;
  }

  /** A signed frame for `target` with `bodies`, numbered now: issue its command right away. */
  frame(target: string, bodies: readonly Body[]): Buffer {
    return encodeFrame(this.key(), { sender: this.run, target, ts: Date.now(), seq: this.nextSeq(target) }, bodies);
  }

  /** Whether a send of `bytes` more may go now. */
  private admits(bytes: number): boolean {
    if (!redisReady(this.client) || this.pendingBytes + bytes > this.maxPendingBytes) {
      this.stats.refused++;
      return false;
    }
    return true;
  }

  /**
   * Sends a body to a partition's inbox in this turn's frame. With `wait`, resolves once Redis
   * holds it ('ok') or it could not be written ('failed'); without, null.
   */
  send(partition: string, body: Body, wait: boolean, knownLength = -1): Promise<WriteStatus> | null {
    const length = knownLength >= 0 ? knownLength : bodyLength(body);
    if (!this.admits(length)) return wait ? FAILED : null;
    let stream = this.streams.get(partition);
    if (stream === undefined) {
      // `cli:<id>`: the reply stream of a command-line client (admin.ts).
      stream = partition.startsWith('cli:') ? this.names.replies(partition.slice(4)) : this.names.inbox(partition);
      if (this.streams.size >= 10_000) this.streams.clear();
      this.streams.set(partition, stream);
    }
    let batch = this.batches.get(stream);
    if (batch === undefined) this.batches.set(stream, (batch = { parts: [], waiters: [], written: null, left: 0, worst: 'ok', stream: null }));
    this.pack(batch, body, length);
    this.pendingBytes += length;
    this.schedule();
    if (!wait) return null;
    // Every body of a batch is written by one XADD: they all hear the same outcome.
    const b = batch;
    return (b.written ??= new Promise((resolve) => b.waiters.push(resolve)));
  }

  /** Writes `body` (`length` bytes) into the batch's last part, or a new one when it does not fit in MAX_FRAME_BYTES. */
  private pack(batch: Batch, body: Body, length: number): void {
    const need = 4 + length;
    let part = batch.parts[batch.parts.length - 1];
    if (part === undefined || (part.count > 0 && part.used + need > MAX_FRAME_BYTES)) {
      let packed = this.spare.pop();
      if (packed === undefined || packed.length < need) packed = Buffer.allocUnsafe(Math.max(PACK_START_BYTES, need));
      batch.parts.push((part = { packed, used: 0, count: 0, bytes: 0 }));
    } else if (part.used + need > part.packed.length) {
      const grown = Buffer.allocUnsafe(Math.max(part.packed.length * 2, part.used + need));
      part.packed.copy(grown, 0, 0, part.used);
      part.packed = grown;
    }
    part.used = writeBody(part.packed, part.used, body, length);
    part.count++;
    part.bytes += length;
  }

  /** Broadcasts a body to every node; resolves with its entry id once written (null: it was not). */
  broadcast(body: Buffer): Promise<string | null> {
    if (!this.admits(body.length)) return Promise.resolve(null);
    const batch = this.controlBatch();
    batch.bodies.push(body);
    batch.bytes += body.length;
    this.pendingBytes += body.length;
    this.schedule();
    return new Promise((resolve) => batch.idWaiters.push(resolve));
  }

  /** This node's interest changes: written to its snapshot and broadcast in this turn's broadcast frame. */
  interest(filter: string, present: boolean): Promise<string | null> {
    const batch = this.controlBatch();
    // Cancel out an add and a remove of one filter in the same turn.
    const other = present ? batch.removes : batch.adds;
    const at = other.indexOf(filter);
    if (at >= 0) other.splice(at, 1);
    else (present ? batch.adds : batch.removes).push(filter);
    this.schedule();
    return new Promise((resolve) => batch.idWaiters.push(resolve));
  }

  private controlBatch(): ControlBatch {
    return (this.control ??= { bodies: [], bytes: 0, adds: [], removes: [], idWaiters: [] });
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(this.flushNow);
  }

  /** Set by the node: the broadcast body announcing this turn's interest changes (null: none). */
  interestBody: ((adds: readonly string[], removes: readonly string[]) => Buffer | null) | null = null;

  /** Writes everything collected in this turn (a stream's batch waits while its previous frame is unanswered: see inFlight). */
  flush(): void {
    this.scheduled = false;
    const batches: [string, Batch][] = [];
    for (const entry of this.batches) if (!this.inFlight.has(entry[0])) batches.push(entry);
    for (const [stream] of batches) this.batches.delete(stream);
    const control = this.control;
    this.control = null;
    if (batches.length === 0 && control === null) return;
    if (!redisReady(this.client)) {
      for (const [, b] of batches) {
        b.left = b.parts.length;
        for (const part of b.parts) this.settle(b, part, 'failed');
      }
      if (control !== null) this.settleControl(control, null);
      return;
    }
    if (control === null && batches.length === 1 && (batches[0] as [string, Batch])[1].parts.length === 1) {
      // The usual turn under load: one frame to one inbox. Issued as a command of its own: an
      // ioredis pipeline costs far more to make than the command (it copies every script
      // defined on the connection onto itself), and with one command there is nothing to join.
      const [stream, batch] = batches[0] as [string, Batch];
      const part = batch.parts[0] as Part;
      batch.left = 1;
      batch.stream = stream;
      this.inFlight.add(stream);
      const frame = this.packedFrame(stream, part);
      this.client.xadd(stream, 'NOMKSTREAM', '*', 'f', frame).then(
        () => this.settle(batch, part, 'ok'),
        (err: Error) => this.settle(batch, part, 'failed', err),
      );
      return;
    }
    const pipeline = this.client.pipeline();
    const replies: ((err: Error | null, reply: unknown) => void)[] = [];
    for (const [stream, batch] of batches) {
      batch.left = batch.parts.length;
      batch.stream = stream;
      this.inFlight.add(stream);
      for (const part of batch.parts) {
        const frame = this.packedFrame(stream, part);
        pipeline.xadd(stream, 'NOMKSTREAM', '*', 'f', frame);
        replies.push((err) => this.settle(batch, part, err === null ? 'ok' : 'failed', err));
      }
    }
    if (control !== null) {
      const body = this.interestBody?.(control.adds, control.removes) ?? null;
      const bodies = body === null ? control.bodies : [body, ...control.bodies];
      if (bodies.length > 0 || control.adds.length + control.removes.length > 0) {
        const frame = this.frame(this.names.control, bodies);
        this.stats.frames++;
        this.stats.bodies += bodies.length;
        const home = this.home();
        const args = [frame, String(CONTROL_MAXLEN), String(control.adds.length), ...control.adds, ...control.removes];
        (pipeline as unknown as Record<string, (...a: unknown[]) => unknown>)['interest']?.(this.names.interest(home), this.names.control, ...args);
        replies.push((err, reply) => this.settleControl(control, err === null ? String(reply) : null, err));
      } else this.settleControl(control, null);
    }
    pipeline.exec().then(
      (results) => {
        if (results === null) return replies.forEach((r) => r(new Error('pipeline discarded'), null));
        results.forEach(([err, reply], i) => replies[i]?.(err, reply));
      },
      (err: Error) => replies.forEach((r) => r(err, null)),
    );
  }

  /** The signed frame of a batch's part, numbered now (its command is issued right after); its packing buffer goes back to the spares. */
  private packedFrame(stream: string, part: Part): Buffer {
    this.stats.frames++;
    this.stats.bodies += part.count;
    const frame = encodePackedFrame(this.key(), { sender: this.run, target: stream, ts: Date.now(), seq: this.nextSeq(stream) }, part.count, part.packed, part.used);
    if (this.spare.length < SPARE_BUFFERS && part.packed.length <= SPARE_MAX_BYTES) this.spare.push(part.packed);
    return frame;
  }

  private settle(batch: Batch, part: Part, status: WriteStatus, err?: Error | null): void {
    this.pendingBytes -= part.bytes;
    if (status !== 'ok') {
      this.failed(part.count, err);
      batch.worst = status;
    } else if (this.failingSince !== 0) this.recovered();
    if (--batch.left !== 0) return;
    for (const w of batch.waiters) w(batch.worst);
    // The stream's next batch, held while this one was unanswered, goes now.
    if (batch.stream !== null) {
      this.inFlight.delete(batch.stream);
      if (this.batches.has(batch.stream)) this.schedule();
    }
  }

  private settleControl(batch: ControlBatch, id: string | null, err?: Error | null): void {
    this.pendingBytes -= batch.bytes;
    if (id === null && (batch.bodies.length > 0 || batch.adds.length + batch.removes.length > 0)) this.failed(batch.bodies.length, err);
    for (const w of batch.idWaiters) w(id);
  }

  private failed(bodies: number, err?: Error | null): void {
    this.stats.failed += bodies;
    if (this.failingSince === 0) {
      this.failingSince = Date.now();
      this.log.error({ err: err?.message }, 'cluster bus: a write to Redis failed: QoS 1/2 messages that needed it are refused (PUBACK 0x80), QoS 0 dropped, until writes succeed again');
    }
  }

  private recovered(): void {
    this.log.warn({ failedForMs: Date.now() - this.failingSince }, 'cluster bus: writes to Redis succeed again');
    this.failingSince = 0;
  }

  /** Runs a script with a frame for `target` numbered now (release, for example). */
  script(name: 'release', keys: string[], args: (string | Buffer)[]): Promise<unknown> {
    return runScript(this.client, name, keys, args);
  }
}

const FAILED: Promise<WriteStatus> = Promise.resolve('failed');
