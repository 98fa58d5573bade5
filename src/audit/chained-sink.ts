/**
 * The hash-chained JSON Lines sink. `record()` only appends to a bounded in-memory queue. Once
 * per event-loop turn (setImmediate) the queued events are serialized, each linked to the one
 * before (SHA-256), into a buffer; a writer hands everything serialized since its last write to
 * an output (a file with rotation, or stdout) in one write, in order. Serializing does not wait
 * for the previous write to finish, so under load the sink's CPU work keeps pace with the turns
 * that produce the records instead of waiting behind them; the bound covers both the events
 * not yet serialized and the serialized records not yet written.
 *
 * When the output fails (disk full, permission lost), the serialized batch is kept and retried;
 * `health().ok` turns false so the broker can apply its failure mode. When the queue is full,
 * records are dropped, counted, logged loudly, and a record saying how many were dropped is
 * written into the chain as soon as it can be: nothing is dropped silently.
 */
import type { KeyObject } from 'node:crypto';
import type { Logger } from '../log.ts';
import { signCheckpoint } from './checkpoint.ts';
import { createTimeFormatter, GENESIS, serializeBody, sha256, type ChainTip } from './record.ts';
import type { AuditEvent, AuditHealth, AuditSink } from './types.ts';

/** Where the serialized batches go. */
export interface AuditOutput {
  /** A short name for logs: the file path or 'stdout'. */
  readonly name: string;
  /** Called before each write; a file output may rotate here. */
  prepare?(batchBytes: number): Promise<void>;
  write(data: Buffer): Promise<void>;
  /** Undoes a partial write before a failed batch is retried. */
  rollback?(): Promise<void>;
  sync?(): Promise<void>;
  close(): Promise<void>;
}

export interface ChainedSinkOptions {
  maxQueue: number;
  log: Logger;
  /** The chain to continue (the last record of the previous run or file). */
  tip?: ChainTip;
  /** How long to wait before retrying a failed write. Default 1000 ms. */
  retryMs?: number;
  /** fsync at most this often; 0 syncs after every batch. Default 1000 ms. */
  fsyncIntervalMs?: number;
  checkpoint?: { key: KeyObject; intervalMs: number; kid?: string };
  /** Written as the first record, e.g. where the chain was resumed from. */
  startDetail?: Record<string, string | number | boolean>;
}

const CHECKPOINT = Symbol('checkpoint');
type Item = AuditEvent | typeof CHECKPOINT;
const MAX_BATCH = 8192;
/** A batch ends once it holds this much, whatever its record count (records can be large). */
const MAX_BATCH_BYTES = 16 << 20;
/**
 * Serializing pauses while this much waits for the disk: the events stay queued (sharing their
 * strings with the broker) instead of being copied, escaped, into ever more buffers.
 */
const MAX_READY_BYTES = 64 << 20;
/** The usual size of a batch's buffer; a batch with huge records gets a larger one of its own. */
const BATCH_BYTES = 4 << 20;
const HASH_FIELD = ',"hash":"';
/** A batch starts in a fresh buffer when the current one has less room than this left. */
const MIN_ROOM = 64 * 1024;
const LOUD_LOG_INTERVAL_MS = 5000;

/**
 * Node's Buffer has these encoder methods under `write`; `write` itself spends as long checking
 * its arguments as the encoding of a short line takes.
 */
type RawBuffer = Buffer & { utf8Write(text: string, offset: number): number; latin1Write(text: string, offset: number): number };

/** Serialized records waiting to be written: `buffer[start, end)`, `count` lines. */
interface Batch {
  buffer: Buffer;
  start: number;
  end: number;
  count: number;
}

/**
 * Encodes chained records into a buffer from `start`, moving to a larger buffer of its own when
 * a record does not fit (earlier batches keep the old one until they are written).
 */
class BatchWriter {
  private used: number;
  private count = 0;

  constructor(
    private buffer: Buffer,
    private start: number,
  ) {
    this.used = start;
  }

  /** Appends `body` (a record without its hash field) as a line; returns the record's hash. */
  append(body: string): string {
    // UTF-8 takes at most 3 bytes per UTF-16 unit; the hash field adds 75 bytes and the newline 1.
    const worst = body.length * 3 + 80;
    if (this.used + worst > this.buffer.length) {
      const bigger = Buffer.allocUnsafeSlow(Math.max(BATCH_BYTES, (this.used - this.start + worst) * 2));
      this.buffer.copy(bigger, 0, this.start, this.used);
      this.used -= this.start;
      this.start = 0;
      this.buffer = bigger;
    }
    const raw = this.buffer as RawBuffer;
    const start = this.used;
    const bytes = raw.utf8Write(body, start);
    const hash = sha256(raw.subarray(start, start + bytes));
    // Replace the closing brace with `,"hash":"…"}` and end the line.
    let at = start + bytes - 1;
    at += raw.latin1Write(HASH_FIELD, at);
    at += raw.latin1Write(hash, at);
    raw[at++] = 0x22; // "
    raw[at++] = 0x7d; // }
    raw[at++] = 0x0a; // \n
    this.used = at;
    this.count++;
    return hash;
  }

  get bytes(): number {
    return this.used - this.start;
  }

  finish(): Batch {
    return { buffer: this.buffer, start: this.start, end: this.used, count: this.count };
  }
}

export class ChainedAuditSink implements AuditSink {
  private items: Item[] = [];
  private times: number[] = [];
  /** Serialized, chained batches not yet written, oldest first. */
  private ready: Batch[] = [];
  private readyCount = 0;
  private readyBytes = 0;
  /** The buffer the next batch is serialized into, and how much of it earlier batches use. */
  private open: Buffer | null = null;
  private openUsed = 0;
  private serializing = false;
  private tip: ChainTip;
  /** The writer is running. */
  private running = false;
  private scheduled = false;
  private closed = false;
  private needsRollback = false;
  private failedSince: number | null = null;
  private lastError: string | undefined;
  private retryTimer: NodeJS.Timeout | null = null;
  private syncTimer: NodeJS.Timeout | null = null;
  private checkpointTimer: NodeJS.Timeout | null = null;
  private dirty = false;
  private sinceCheckpoint = 0;
  private droppedUnreported = 0;
  private dropLoggedAt = 0;
  private failLoggedAt = 0;
  private waiters: (() => void)[] = [];
  private readonly formatTime = createTimeFormatter();
  dropped = 0;
  written = 0;

  constructor(
    private readonly output: AuditOutput,
    private readonly options: ChainedSinkOptions,
  ) {
    this.tip = options.tip ?? { seq: 0, hash: GENESIS };
    const fsyncMs = options.fsyncIntervalMs ?? 1000;
    if (fsyncMs > 0 && output.sync) {
      this.syncTimer = setInterval(() => void this.syncNow(), fsyncMs);
      this.syncTimer.unref();
    }
    const cp = options.checkpoint;
    if (cp !== undefined) {
      this.checkpointTimer = setInterval(() => this.checkpoint(), cp.intervalMs);
      this.checkpointTimer.unref();
    }
    this.record({
      event: 'audit',
      action: 'start',
      decision: 'allow',
      reason: this.tip.seq === 0 ? 'new chain' : 'chain resumed',
      ...(options.startDetail !== undefined ? { detail: options.startDetail } : {}),
    });
  }

  record(event: AuditEvent): void {
    if (this.closed) {
      this.drop();
      return;
    }
    this.enqueue(event);
  }

  private enqueue(event: AuditEvent): void {
    if (this.items.length + this.readyCount >= this.options.maxQueue) {
      this.drop();
      return;
    }
    this.items.push(event);
    this.times.push(Date.now());
    this.sinceCheckpoint++;
    this.schedule();
  }

  /** Queues a signed checkpoint when records were written since the last one. */
  checkpoint(): void {
    if (this.options.checkpoint === undefined || this.sinceCheckpoint === 0 || this.closed) return;
    this.sinceCheckpoint = 0;
    this.items.push(CHECKPOINT);
    this.times.push(Date.now());
    this.schedule();
  }

  healthy(): boolean {
    return this.failedSince === null && this.items.length + this.readyCount < this.options.maxQueue;
  }

  health(): AuditHealth {
    const h: AuditHealth = {
      ok: this.failedSince === null && this.items.length + this.readyCount < this.options.maxQueue,
      pending: this.items.length + this.readyCount,
      dropped: this.dropped,
      written: this.written,
    };
    if (this.lastError !== undefined && this.failedSince !== null) h.error = this.lastError;
    return h;
  }

  /** The last record written to the chain so far (serialized, possibly not yet on disk). */
  get chainTip(): ChainTip {
    return { ...this.tip };
  }

  async flush(): Promise<void> {
    for (;;) {
      void this.serialize();
      void this.run();
      if (this.failedSince !== null) return;
      if (!this.running && !this.serializing && this.ready.length === 0 && this.items.length === 0 && this.droppedUnreported === 0) return;
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    if (this.options.checkpoint !== undefined) this.checkpoint();
    for (const t of [this.syncTimer, this.checkpointTimer]) if (t !== null) clearInterval(t);
    // Records that arrive during this last flush (rotation, recovery) are still written.
    await this.flush();
    this.closed = true;
    if (this.failedSince !== null) {
      // One last attempt (after a retry already under way, if any), then say exactly what is lost.
      this.clearRetry();
      while (this.running) await new Promise<void>((resolve) => this.waiters.push(resolve));
      await this.run();
      if (this.failedSince === null) await this.flush();
    }
    const lost = this.items.length + this.readyCount;
    if (lost > 0) {
      this.options.log.error({ lost, output: this.output.name, err: this.lastError }, `audit log closed with ${lost} records that could not be written`);
    }
    if (this.dropped > 0) this.options.log.error({ dropped: this.dropped }, `audit log: ${this.dropped} records were dropped while running`);
    try {
      await this.output.sync?.();
    } catch {
      // already reported by the failed write
    }
    await this.output.close();
  }

  private drop(): void {
    this.dropped++;
    this.droppedUnreported++;
    const now = Date.now();
    if (this.dropped === 1 || now - this.dropLoggedAt > LOUD_LOG_INTERVAL_MS) {
      this.dropLoggedAt = now;
      this.options.log.error(
        { dropped: this.dropped, queue: this.items.length, output: this.output.name, err: this.lastError },
        'AUDIT RECORDS DROPPED: the audit queue is full',
      );
    }
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      void this.serialize();
    });
  }

  private clearRetry(): void {
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }

  /**
   * Serializes one batch of queued events and hands it to the writer; schedules the next turn
   * when more are queued. Nothing is serialized while writes fail: the events wait in the queue
   * (and count against its bound) until a write succeeds.
   */
  private async serialize(): Promise<void> {
    if (this.serializing || this.failedSince !== null || this.readyBytes >= MAX_READY_BYTES) return;
    if (this.items.length === 0 && this.droppedUnreported === 0) return;
    this.serializing = true;
    try {
      // Everything queued so far, in batches: when a turn leaves records behind, a busy broker
      // makes more records per turn than the sink serializes, and the queue fills.
      do {
        const batch = await this.serializeBatch();
        if (batch.count > 0) {
          this.ready.push(batch);
          this.readyCount += batch.count;
          this.readyBytes += batch.end - batch.start;
        }
        // The next batch goes on in the same buffer while it has room.
        this.open = batch.buffer.length - batch.end >= MIN_ROOM ? batch.buffer : null;
        this.openUsed = batch.end;
        void this.run();
      } while (this.items.length > 0 && this.failedSince === null && this.readyBytes < MAX_READY_BYTES);
    } finally {
      this.serializing = false;
    }
    // When the disk is behind, the writer schedules the rest after its next write.
    if ((this.items.length > 0 || this.droppedUnreported > 0) && this.readyBytes < MAX_READY_BYTES) this.schedule();
    void this.run();
    this.wake();
  }

  /** Writes the serialized batches in order; on failure keeps them (the retry writes the same bytes). */
  private async run(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      for (;;) {
        if (this.ready.length === 0) break;
        // Everything serialized while the last write was in flight goes out in one write: under
        // load an event-loop turn can be long, and one write per turn must carry a turn's records.
        const data = this.takeReady();
        const batches = this.ready.length;
        const count = this.readyCount;
        try {
          if (this.needsRollback) {
            await this.output.rollback?.();
            this.needsRollback = false;
          }
          await this.output.prepare?.(data.length);
          await this.output.write(data);
        } catch (err) {
          this.onFailure(err);
          break;
        }
        this.ready.splice(0, batches);
        this.readyCount -= count;
        this.readyBytes -= data.length;
        this.written += count;
        this.dirty = true;
        if ((this.options.fsyncIntervalMs ?? 1000) === 0 && !(await this.syncNow())) break;
        if (this.failedSince !== null) this.onRecovery();
        if (this.items.length > 0 || this.droppedUnreported > 0) this.schedule();
        this.wake();
      }
    } finally {
      this.running = false;
      this.wake();
    }
  }

  /**
   * The ready batches as one buffer: a view when they sit end to end in one buffer (the usual
   * case), else a copy. The batches stay in `ready` until the write succeeds.
   */
  private takeReady(): Buffer {
    const first = this.ready[0] as Batch;
    let contiguous = true;
    for (let i = 1; i < this.ready.length && contiguous; i++) {
      const b = this.ready[i] as Batch;
      const before = this.ready[i - 1] as Batch;
      contiguous = b.buffer === first.buffer && b.start === before.end;
    }
    if (contiguous) return first.buffer.subarray(first.start, (this.ready[this.ready.length - 1] as Batch).end);
    const merged = Buffer.concat(this.ready.map((b) => b.buffer.subarray(b.start, b.end)));
    // Keep the copy as the only ready batch, so a retry after a failure writes the same bytes.
    const count = this.readyCount;
    this.ready = [{ buffer: merged, start: 0, end: merged.length, count }];
    return merged;
  }

  /**
   * Serializes, chains and encodes up to MAX_BATCH queued records (or MAX_BATCH_BYTES) into one
   * buffer: each body is encoded once, hashed over its bytes, and its closing brace replaced by
   * the `hash` field.
   */
  private async serializeBatch(): Promise<Batch> {
    const batch = this.open !== null ? new BatchWriter(this.open, this.openUsed) : new BatchWriter(Buffer.allocUnsafeSlow(BATCH_BYTES), 0);
    if (this.droppedUnreported > 0) {
      const count = this.droppedUnreported;
      this.droppedUnreported = 0;
      this.link(batch, { event: 'audit', action: 'dropped', decision: 'deny', reason: `${count} records were dropped: the audit queue was full`, detail: { dropped: count, droppedTotal: this.dropped } }, Date.now());
    }
    // Records queued while a checkpoint is signed go on the end of the queue; the front is ours.
    let i = 0;
    for (; i < this.items.length && i < MAX_BATCH && batch.bytes < MAX_BATCH_BYTES; i++) {
      const item = this.items[i] as Item;
      const at = this.times[i] as number;
      if (item === CHECKPOINT) {
        const cp = this.options.checkpoint;
        if (cp === undefined) continue;
        const time = this.formatTime(at);
        const payload = { seq: this.tip.seq + 1, prev: this.tip.hash, time };
        const signature = await signCheckpoint(payload, cp.key, cp.kid);
        this.tip = { seq: payload.seq, hash: batch.append(serializeBody({ event: 'checkpoint', decision: 'allow', reason: 'signed checkpoint' }, payload.seq, time, payload.prev, signature)) };
      } else {
        this.link(batch, item, at);
      }
    }
    this.items.splice(0, i);
    this.times.splice(0, i);
    return batch.finish();
  }

  private link(batch: BatchWriter, event: AuditEvent, at: number): void {
    const seq = this.tip.seq + 1;
    this.tip = { seq, hash: batch.append(serializeBody(event, seq, this.formatTime(at), this.tip.hash)) };
  }

  private async syncNow(): Promise<boolean> {
    if (!this.dirty || this.output.sync === undefined) return true;
    this.dirty = false;
    try {
      await this.output.sync();
      return true;
    } catch (err) {
      this.dirty = true;
      this.onFailure(err);
      return false;
    }
  }

  private onFailure(err: unknown): void {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    this.lastError = code;
    this.needsRollback = true;
    const now = Date.now();
    if (this.failedSince === null) this.failedSince = now;
    if (now - this.failLoggedAt > LOUD_LOG_INTERVAL_MS) {
      this.failLoggedAt = now;
      this.options.log.error(
        { err: code, output: this.output.name, pending: this.items.length + this.readyCount },
        'AUDIT LOG WRITE FAILED: records are held and retried',
      );
    }
    if (!this.closed) {
      this.clearRetry();
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        void this.run();
      }, this.options.retryMs ?? 1000);
      this.retryTimer.unref();
    }
    this.wake();
  }

  private onRecovery(): void {
    const failedMs = Date.now() - (this.failedSince ?? Date.now());
    const error = this.lastError ?? 'unknown';
    this.failedSince = null;
    this.failLoggedAt = 0;
    this.options.log.warn({ output: this.output.name, failedMs, err: error }, 'audit log writes recovered');
    this.enqueue({ event: 'audit', action: 'recovered', decision: 'allow', reason: `writes failed for ${failedMs} ms (${error})`, detail: { failedMs, error } });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}
