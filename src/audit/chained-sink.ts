/**
 * The hash-chained JSON Lines sink. `record()` and `recordAccess()` only lay the record out in a
 * compact, bounded segment (see chain-segment.ts); a worker thread numbers, formats and chains
 * (SHA-256) each segment into lines, so the broker's thread spends about as long per record as
 * it takes to copy a topic; a writer hands everything chained since its last write to an output
 * (a file with rotation, or stdout) in one write, in order. The bound covers every record not yet
 * written, wherever it is.
 *
 * When the output fails (disk full, permission lost), the serialized batch is kept and retried;
 * `health().ok` turns false so the broker can apply its failure mode. When the queue is full,
 * records are dropped, counted, logged loudly, and a record saying how many were dropped is
 * written into the chain as soon as it can be: nothing is dropped silently.
 */
import type { KeyObject } from 'node:crypto';
import type { Logger } from '../log.ts';
import { signCheckpoint, type CheckpointPayload } from './checkpoint.ts';
import { inlineChainer, workerChainer, type Chainer } from './chain-segment.ts';
import { DenialSummarizer } from './denial-summary.ts';
import { GENESIS, isPlainJson, isPlainJsonChar, jsonString, RECORD_PREFIX, serializeField, serializeFields, type ChainTip } from './record.ts';
import { capEventTopic, DEFAULT_MAX_TOPIC_LENGTH } from './topic-cap.ts';
import type { AuditEvent, AuditEventName, AuditHealth, AuditSink, AuditWho } from './types.ts';
import { accessEvent } from './access-event.ts';

/** Where the serialized batches go. */
export interface AuditOutput {
  /** A short name for logs: the file path or 'stdout'. */
  readonly name: string;
  /** Called before each write; a file output may rotate here. */
  prepare?(batchBytes: number): Promise<void>;
  write(data: Buffer): Promise<void>;
  /** Writes several buffers, in order, as one write (one system call where it can). */
  writev?(chunks: Buffer[]): Promise<void>;
  /**
   * True when the output keeps no reference to a buffer once its write has resolved: the sink
   * then reuses the buffer (it is handed back to the chaining thread). Streams that may hold a
   * chunk after the write callback (a PassThrough someone reads later) must leave this unset.
   */
  readonly releasesBuffers?: boolean;
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
  /** Told about each signed checkpoint once it has been written (the outside witness, anchor.ts). */
  anchor?: CheckpointWitness;
  /** Summarise repeated access denials per connection (denial-summary.ts); every denial in full when absent. */
  denialSummary?: { intervalMs: number; fullRecords: number; fullAllowed?: number };
  /** Topics and filters longer than this are cut in records (topic-cap.ts). Default DEFAULT_MAX_TOPIC_LENGTH. */
  maxTopicLength?: number;
  /** Written as the first record, e.g. where the chain was resumed from. */
  startDetail?: Record<string, string | number | boolean>;
  /** Chain records in a worker thread (the default), or on the calling thread. */
  chainInWorker?: boolean;
  /** Access records per reading of the clock within one run of synchronous code (default CLOCK_REUSE; 1: every record). */
  clockReuse?: number;
  /** Tests: what chains the segments (instead of a worker or the calling thread). */
  createChainer?: (tip: ChainTip, prefix: string) => Chainer;
}

/** A checkpoint waiting its turn among the sealed segments: signed once the chain before it is known. */
interface CheckpointMark {
  checkpointAt: number;
}

/** A signed checkpoint as it was written: what an anchor carries. */
export interface WrittenCheckpoint {
  seq: number;
  /** The checkpoint record's own hash: it covers the whole chain up to it, signature included. */
  hash: string;
  time: string;
  kid?: string;
}

/** Where written checkpoints are reported (anchor.ts). */
export interface CheckpointWitness {
  publish(checkpoint: WrittenCheckpoint): void;
  /** Waits (boundedly) for what was published to be delivered. */
  close(): Promise<void>;
}
/** A segment is sealed once it holds this many records or this much text. */
const MAX_SEGMENT_RECORDS = 8192;
const MAX_SEGMENT_BYTES = 1 << 20;
/**
 * Chaining pauses while this much waits for the disk: the records stay in their (compact)
 * segments instead of being expanded into ever more lines.
 */
const MAX_READY_BYTES = 64 << 20;
/**
 * A segment smaller than this waits (from the last dispatch) for more records, at most a fifth
 * of the fsync interval and at most MAX_DISPATCH_INTERVAL_MS: each hand-over to the chaining
 * thread and each write costs the broker's thread about a hundred microseconds, which at a
 * moderate rate weighs more than the records themselves. With fsync after every write
 * (fsyncIntervalMs 0) nothing waits.
 */
const MIN_DISPATCH_RECORDS = 4096;
/** The share of `maxQueue` at which the broker stops reading from clients, and the share at which it reads again. */
const BACKLOG_HIGH = 0.5;
const BACKLOG_LOW = 0.25;
const MAX_DISPATCH_INTERVAL_MS = 200;
/**
 * Access records made in one run of synchronous code (one socket read's packets, one timer's
 * fan-out) share one reading of the clock, this many at most: made one after another, they are
 * microseconds apart. The reading expires with the run (a microtask), however short it was.
 */
const CLOCK_REUSE = 16;
/** Definitions kept before the table starts over (ids are then reused, in order). */
const MAX_DEFS = 4096;
const LOUD_LOG_INTERVAL_MS = 5000;

/**
 * Node's Buffer has these encoder methods under `write`; `write` itself spends as long checking
 * its arguments as the encoding of a short piece takes.
 */
type RawBuffer = Buffer & { utf8Write(text: string, offset: number): number; latin1Write(text: string, offset: number): number };

/** Chained lines waiting to be written: `buffer[start, end)`, `count` lines, the last of them `lastSeq`. */
interface Batch {
  buffer: Buffer;
  start: number;
  end: number;
  count: number;
  lastSeq: number;
}
/** At most this much goes out in one write when several batches are ready. */
const MAX_WRITE_BYTES = 16 << 20;

/** Records laid out for chaining (see chain-segment.ts): numbers and JSON text. */
class Segment {
  n = 0;
  used = 0;
  records = 0;
  nums: Float64Array;
  text: RawBuffer;

  constructor(nums?: Float64Array, text?: Uint8Array) {
    this.nums = nums ?? new Float64Array(65536);
    // Its own memory (not Node's shared pool): it is moved to the chaining thread and back.
    this.text = (text !== undefined ? Buffer.from(text.buffer, text.byteOffset, text.byteLength) : Buffer.allocUnsafeSlow(256 * 1024)) as RawBuffer;
  }

  /** Makes room for `count` more numbers. */
  room(count: number): void {
    if (this.n + count <= this.nums.length) return;
    const bigger = new Float64Array(Math.max(this.nums.length * 2, this.n + count));
    bigger.set(this.nums.subarray(0, this.n));
    this.nums = bigger;
  }

  /** Makes room for `bytes` more bytes of text. */
  private reserve(bytes: number): void {
    if (this.used + bytes <= this.text.length) return;
    const bigger = Buffer.allocUnsafeSlow(Math.max(this.text.length * 2, this.used + bytes)) as RawBuffer;
    this.text.copy(bigger, 0, 0, this.used);
    this.text = bigger;
  }

  /** Appends JSON text; returns where it starts. */
  write(text: string): number {
    this.reserve(text.length * 3);
    const start = this.used;
    this.used += this.text.utf8Write(text, start);
    return start;
  }

  /** Appends `text` (printable ASCII, no quotes or backslashes) as an inline piece the chaining side puts in quotes. */
  inlineQuoted(text: string): void {
    this.reserve(text.length);
    const start = this.used;
    this.used += this.text.latin1Write(text, start);
    this.nums[this.n++] = -(start + 1);
    this.nums[this.n++] = start - this.used;
  }

  /**
   * Appends `text` as an inline piece the chaining side puts in quotes, when it is plain JSON
   * (see isPlainJson: printable ASCII, no quotes or backslashes); returns false, having written
   * nothing, when it is not. Checks and copies in one pass; room for 2 numbers must be made.
   */
  inlinePlain(text: string): boolean {
    const len = text.length;
    if (len > 128) {
      if (!isPlainJson(text)) return false;
      this.inlineQuoted(text);
      return true;
    }
    this.reserve(len);
    const buf = this.text;
    const start = this.used;
    for (let i = 0; i < len; i++) {
      const c = text.charCodeAt(i);
      if (!isPlainJsonChar(c)) return false;
      buf[start + i] = c;
    }
    this.used = start + len;
    this.nums[this.n++] = -(start + 1);
    this.nums[this.n++] = -len;
    return true;
  }

  /** Appends an inline piece reference for `text` at nums[n], nums[n+1] (room must be made). */
  inline(text: string): void {
    const start = this.write(text);
    this.nums[this.n++] = -(start + 1);
    this.nums[this.n++] = this.used - start;
  }
}

/**
 * The definition ids of a `who`'s pieces, kept on the object itself (the broker passes the same
 * one for every decision of a connection): a property read is cheaper than a WeakMap lookup.
 */
const WHO_IDS = Symbol('audit definition ids');
/** The pieces of a connection's last access record, but for its topic. */
interface AccessPieces {
  event: AuditEventName;
  decision: 'allow' | 'deny';
  reasonCode: number;
  reason: string | undefined;
  decidedBy: string | undefined;
  rule: string | undefined;
  policyVersion: string | undefined;
  qos: number;
  retain: boolean;
  /** Definition ids before the topic, and after it. */
  before: number[];
  after: number[];
}
/** Valid while `sink` and its definition table (`gen`) are the same. */
interface WhoIds {
  sink: ChainedAuditSink;
  gen: number;
  a: number;
  b: number;
  last: AccessPieces | null;
}
type WhoWithIds = AuditWho & { [WHO_IDS]?: WhoIds };

export class ChainedAuditSink implements AuditSink {
  /** The segment being filled; sealed segments (and checkpoints) wait their turn, in order. */
  private open = new Segment();
  private sealed: (Segment | CheckpointMark)[] = [];
  private sealedRecords = 0;
  private inflightRecords = 0;
  private inflightSegments = 0;
  private spare: Segment[] = [];
  private chainer: Chainer;
  /** Chained batches not yet written, oldest first. */
  private ready: Batch[] = [];
  private readyCount = 0;
  private readyBytes = 0;
  private signing = false;
  private lastDispatch = 0;
  private readonly dispatchIntervalMs: number;
  private dispatchTimer: NodeJS.Timeout | null = null;
  /** flush() is waiting: small segments go at once. */
  private flushing = 0;
  private tip: ChainTip;
  /** Definition ids by piece text, and caches from raw values to those ids. */
  private defs = new Map<string, number>();
  private defGen = 0;
  private heads = new Map<string, Map<number, number>>();
  private valueIds: Map<string, number>[] = [new Map(), new Map(), new Map(), new Map()];
  private qosRetainIds: number[] = [];

  /** The writer is running. */
  private running = false;
  private scheduled = false;
  /** The clock as last read for an access record, and how many more may use it before it expires. */
  private clock = 0;
  private clockUses = 0;
  private readonly clockExpires = (): void => {
    this.clockUses = 0;
  };
  private closed = false;
  private needsRollback = false;
  private failedSince: number | null = null;
  private lastError: string | undefined;
  private retryTimer: NodeJS.Timeout | null = null;
  private syncTimer: NodeJS.Timeout | null = null;
  private checkpointTimer: NodeJS.Timeout | null = null;
  private dirty = false;
  private sinceCheckpoint = 0;
  /**
   * The seq of the last checkpoint this sink signed, else of the record before its start record:
   * the next checkpoint says it is the first signature for the records after it (its `count`).
   */
  private lastCheckpointSeq: number;
  /** Checkpoints chained but not yet written, for the witness. */
  private unwrittenCheckpoints: WrittenCheckpoint[] = [];
  private readonly summary: DenialSummarizer | null;
  private summaryTimer: NodeJS.Timeout | null = null;
  private readonly maxTopicLength: number;
  private droppedUnreported = 0;
  private dropLoggedAt = 0;
  private failLoggedAt = 0;
  private waiters: (() => void)[] = [];
  private drainWaiters: (() => void)[] = [];
  dropped = 0;
  written = 0;

  constructor(
    private readonly output: AuditOutput,
    private readonly options: ChainedSinkOptions,
  ) {
    this.tip = options.tip ?? { seq: 0, hash: GENESIS };
    this.lastCheckpointSeq = this.tip.seq;
    this.maxTopicLength = options.maxTopicLength ?? DEFAULT_MAX_TOPIC_LENGTH;
    const ds = options.denialSummary;
    this.summary = ds === undefined ? null : new DenialSummarizer({ ...ds, maxTopicLength: this.maxTopicLength }, (e) => this.record(e));
    if (ds !== undefined) {
      // Windows are closed (and their summaries written) at most half a window late.
      this.summaryTimer = setInterval(() => this.summary?.sweep(Date.now()), Math.max(100, Math.floor(ds.intervalMs / 2)));
      this.summaryTimer.unref();
    }
    this.dispatchIntervalMs = Math.min(MAX_DISPATCH_INTERVAL_MS, Math.floor((options.fsyncIntervalMs ?? 1000) / 5));
    this.chainer = this.startChainer();
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
    // Signed at once: the chain this run continues (with the tail of a run that crashed, if it
    // did) is vouched for from now on, and the checkpoint's count marks where this run began.
    if (cp !== undefined) this.checkpoint();
  }

  private startChainer(): Chainer {
    if (this.options.createChainer !== undefined) return this.options.createChainer(this.tip, RECORD_PREFIX);
    if (this.options.chainInWorker === false) return inlineChainer(this.tip, RECORD_PREFIX);
    try {
      return workerChainer(this.tip, RECORD_PREFIX);
    } catch (err) {
      this.options.log.warn({ err: (err as Error).message }, 'audit: no worker thread for chaining records; chaining on the main thread');
      return inlineChainer(this.tip, RECORD_PREFIX);
    }
  }

  private get pendingCount(): number {
    return this.open.records + this.sealedRecords + this.inflightRecords + this.readyCount;
  }

  record(event: AuditEvent): void {
    if (this.closed || this.pendingCount >= this.options.maxQueue) {
      this.drop();
      return;
    }
    this.appendFields(serializeFields(capEventTopic(event, this.maxTopicLength)), Date.now());
  }

  /** Denials counted into summaries since start (not written one by one). */
  get summarized(): number {
    return this.summary?.summarized ?? 0;
  }

  /**
   * An access decision (publish, subscribe, unsubscribe, deliver, will), without an event object:
   * the record is the one `record()` writes for the same fields. The pieces that repeat (who, the
   * rule, the policy version) are sent to the chaining thread once and named by number after.
   */
  recordAccess(
    who: AuditWho,
    event: AuditEventName,
    decision: 'allow' | 'deny',
    reasonCode: number,
    reason: string | undefined,
    decidedBy: string | undefined,
    rule: string | undefined,
    policyVersion: string | undefined,
    topic: string,
    qos: number,
    retain: boolean,
  ): void {
    if (this.closed) {
      this.drop();
      return;
    }
    // A repeated decision is counted into its connection's summary, before it can take a place in the queue.
    if (this.summary !== null && !this.summary.admit(who, event, decision, reasonCode, reason, decidedBy, rule, policyVersion, topic, Date.now())) return;
    if (this.pendingCount >= this.options.maxQueue) {
      this.drop();
      return;
    }
    if (topic.length > this.maxTopicLength) {
      // Rare: the record goes the slow way, which cuts the topic and says how long it was.
      this.record(accessEvent(who, event, decision, reasonCode, reason, decidedBy, rule, policyVersion, topic, qos, retain));
      return;
    }
    // A record defines at most 7 pieces: start the table over before it, never in the middle
    // (that would reuse an id the record already holds).
    if (this.defs.size > MAX_DEFS - 8) this.resetDefs();
    let ids = (who as WhoWithIds)[WHO_IDS];
    if (ids === undefined || ids.sink !== this || ids.gen !== this.defGen) {
      ids = {
        sink: this,
        gen: this.defGen,
        a: this.define(
          serializeField(',"listener":', who.listener) +
            serializeField(',"remoteAddress":', who.remoteAddress) +
            serializeField(',"remotePort":', who.remotePort) +
            serializeField(',"clientId":', who.clientId) +
            serializeField(',"username":', who.username) +
            serializeField(',"authMethod":', who.authMethod),
        ),
        b: this.define(`${serializeField(',"certFingerprint":', who.certFingerprint)}${serializeField(',"certSubject":', who.certSubject)},"topic":`),
        last: null,
      };
      (who as WhoWithIds)[WHO_IDS] = ids;
    }
    // A client's decisions mostly repeat all but the topic: the pieces of its last one are kept.
    let m = ids.last;
    if (
      m === null ||
      m.event !== event ||
      m.decision !== decision ||
      m.reasonCode !== reasonCode ||
      m.reason !== reason ||
      m.decidedBy !== decidedBy ||
      m.rule !== rule ||
      m.policyVersion !== policyVersion ||
      m.qos !== qos ||
      m.retain !== retain
    ) {
      ids.last = m = { event, decision, reasonCode, reason, decidedBy, rule, policyVersion, qos, retain, before: [], after: [] };
      this.definePieces(ids, m);
    }
    const before = m.before;
    const after = m.after;
    const seg = this.open;
    seg.room(4 + before.length + after.length);
    const nums = seg.nums;
    // Reading the clock costs about a third of this method: within one run of synchronous code it
    // is read for every CLOCK_REUSE-th access record only (a few microseconds of work apart). The
    // reading expires when the run ends, so a later run (after an idle wait) never reuses it.
    if (this.clockUses === 0) {
      this.clock = Date.now();
      this.clockUses = this.options.clockReuse ?? CLOCK_REUSE;
      queueMicrotask(this.clockExpires);
    }
    this.clockUses--;
    nums[seg.n++] = this.clock;
    nums[seg.n++] = before.length + 1 + after.length;
    for (let i = 0; i < before.length; i++) nums[seg.n++] = before[i] as number;
    // (An empty topic goes as JSON text: its quoted form has no bytes to mark as "to be quoted".)
    if (topic.length === 0 || !seg.inlinePlain(topic)) seg.inline(jsonString(topic));
    for (let i = 0; i < after.length; i++) nums[seg.n++] = after[i] as number;
    this.added(seg);
  }

  /** Fills in `m.before` and `m.after`: the definition ids its record is made of, before the topic and after it. */
  private definePieces(ids: WhoIds, m: AccessPieces): void {
    let heads = this.heads.get(m.event);
    if (heads === undefined) this.heads.set(m.event, (heads = new Map()));
    const headKey = m.decision === 'allow' ? m.reasonCode * 2 : m.reasonCode * 2 + 1;
    let head = heads.get(headKey);
    if (head === undefined) heads.set(headKey, (head = this.define(serializeField(',"event":', m.event) + serializeField(',"decision":', m.decision) + serializeField(',"reasonCode":', m.reasonCode))));
    const before = m.before;
    before.push(head);
    if (m.reason !== undefined) before.push(this.valueId(0, ',"reason":', m.reason));
    before.push(ids.a);
    if (m.decidedBy !== undefined) before.push(this.valueId(1, ',"decidedBy":', m.decidedBy));
    if (m.rule !== undefined) before.push(this.valueId(2, ',"rule":', m.rule));
    before.push(ids.b);
    const qr = m.qos * 2 + (m.retain ? 1 : 0);
    let qrId = this.qosRetainIds[qr];
    if (qrId === undefined) this.qosRetainIds[qr] = qrId = this.define(`,"qos":${m.qos},"retain":${m.retain}`);
    m.after.push(qrId);
    if (m.policyVersion !== undefined) m.after.push(this.valueId(3, ',"policyVersion":', m.policyVersion));
  }

  /** The id of `name` + value as a piece, from a cache of raw values. */
  private valueId(kind: number, name: string, value: string): number {
    const ids = this.valueIds[kind] as Map<string, number>;
    let id = ids.get(value);
    if (id === undefined) {
      id = this.define(serializeField(name, value));
      ids.set(value, id);
    }
    return id;
  }

  /** The id of a piece of JSON text, defined in the open segment the first time it is seen. */
  private define(text: string): number {
    let id = this.defs.get(text);
    if (id !== undefined) return id;
    id = this.defs.size;
    this.defs.set(text, id);
    const seg = this.open;
    seg.room(4);
    const start = seg.write(text);
    const nums = seg.nums;
    nums[seg.n++] = -1;
    nums[seg.n++] = id;
    nums[seg.n++] = start;
    nums[seg.n++] = seg.used - start;
    return id;
  }

  /** Starts the definition table over: ids are reused from 0, each defined again before its next use. */
  private resetDefs(): void {
    this.defs.clear();
    this.heads.clear();
    for (const m of this.valueIds) m.clear();
    this.qosRetainIds = [];
    this.defGen++;
  }

  /** Appends a record made of one inline piece: the event's fields as JSON text. */
  private appendFields(fields: string, at: number): void {
    const seg = this.open;
    seg.room(4);
    seg.nums[seg.n++] = at;
    seg.nums[seg.n++] = 1;
    seg.inline(fields);
    this.added(seg);
  }

  private added(seg: Segment): void {
    seg.records++;
    this.sinceCheckpoint++;
    if (seg.records >= MAX_SEGMENT_RECORDS || seg.used >= MAX_SEGMENT_BYTES) this.seal();
    // The dispatch timer is armed: it pumps when the segment is due, so there is nothing for a
    // pump to do before. Not scheduling one saves a setImmediate per event-loop turn (per
    // connect, at a steady connect rate).
    else if (this.dispatchTimer !== null) return;
    this.schedule();
  }

  private seal(): void {
    if (this.open.records === 0) return;
    this.sealed.push(this.open);
    this.sealedRecords += this.open.records;
    this.open = this.spare.pop() ?? new Segment();
    // Definitions live in the chaining thread; the new segment names them by number as well.
  }

  /** Queues a signed checkpoint when records were written since the last one. */
  checkpoint(): void {
    if (this.options.checkpoint === undefined || this.sinceCheckpoint === 0 || this.closed) return;
    this.sinceCheckpoint = 0;
    this.seal();
    this.sealed.push({ checkpointAt: Date.now() });
    this.schedule();
  }

  healthy(): boolean {
    return this.failedSince === null && this.pendingCount < this.options.maxQueue;
  }

  health(): AuditHealth {
    const pending = this.pendingCount;
    const h: AuditHealth = { ok: this.failedSince === null && pending < this.options.maxQueue, pending, dropped: this.dropped, written: this.written };
    if (this.lastError !== undefined && this.failedSince !== null) h.error = this.lastError;
    return h;
  }

  /** The last record chained so far (possibly not yet on disk). */
  get chainTip(): ChainTip {
    return { ...this.tip };
  }

  async flush(): Promise<void> {
    this.flushing++;
    try {
      for (;;) {
        this.pump();
        void this.run();
        if (this.failedSince !== null) return;
        if (this.idle()) return;
        await new Promise<void>((resolve) => this.waiters.push(resolve));
      }
    } finally {
      this.flushing--;
    }
  }

  private idle(): boolean {
    return !this.running && this.inflightSegments === 0 && !this.signing && this.sealed.length === 0 && this.open.records === 0 && this.ready.length === 0 && this.droppedUnreported === 0;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    // Counts of denials not yet summarised are written, and signed by the last checkpoint.
    this.summary?.flushAll();
    if (this.options.checkpoint !== undefined) this.checkpoint();
    for (const t of [this.syncTimer, this.checkpointTimer, this.dispatchTimer, this.summaryTimer]) if (t !== null) clearInterval(t);
    // Records that arrive during this last flush (rotation, recovery) are still written.
    await this.flush();
    this.closed = true;
    const waitFor = (busy: () => boolean) => (async () => {
      while (busy()) await new Promise<void>((resolve) => this.waiters.push(resolve));
    })();
    // Segments still with the chaining thread (flush() returns early while writes fail) come
    // back: count them where they are, not as lost by the thread.
    await waitFor(() => this.inflightSegments > 0 || this.signing);
    if (this.failedSince !== null) {
      // One last attempt (after a retry already under way, if any), then say exactly what is lost.
      this.clearRetry();
      await waitFor(() => this.running);
      await this.retry();
      if (this.failedSince === null) await this.flush();
    }
    // No write may still be under way when the output closes.
    await waitFor(() => this.running);
    this.clearRetry();
    const lost = this.pendingCount;
    if (lost > 0) {
      this.options.log.error({ lost, output: this.output.name, err: this.lastError }, `audit log closed with ${lost} records that could not be written`);
    }
    if (this.dropped > 0) this.options.log.error({ dropped: this.dropped }, `audit log: ${this.dropped} records were dropped while running`);
    try {
      await this.output.sync?.();
    } catch {
      // already reported by the failed write
    }
    // The last checkpoint's anchor is on its way: wait for it (each delivery has a deadline).
    await this.options.anchor?.close();
    await this.chainer.close();
    await this.output.close();
  }

  private drop(count = 1): void {
    this.dropped += count;
    this.droppedUnreported += count;
    const now = Date.now();
    if (this.dropped === count || now - this.dropLoggedAt > LOUD_LOG_INTERVAL_MS) {
      this.dropLoggedAt = now;
      this.options.log.error(
        { dropped: this.dropped, queue: this.pendingCount, output: this.output.name, err: this.lastError },
        'AUDIT RECORDS DROPPED: the audit queue is full',
      );
    }
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.pump();
    });
  }

  private clearRetry(): void {
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }

  /**
   * Sends the sealed segments (sealing the open one when it is due) to be chained. Several can
   * be in flight: the chaining thread takes them in order, and under load the broker's thread may
   * only look at its replies once per event-loop turn, which can be long. A checkpoint waits
   * until everything before it is chained. Nothing is chained while writes fail or while too much
   * waits for the disk: records wait in their segments (and count against the bound).
   */
  private pump(): void {
    if (this.signing || this.failedSince !== null || this.readyBytes >= MAX_READY_BYTES) return;
    if (this.droppedUnreported > 0) {
      const count = this.droppedUnreported;
      this.droppedUnreported = 0;
      this.appendFields(
        serializeFields({ event: 'audit', action: 'dropped', decision: 'deny', reason: `${count} records were dropped: the audit queue was full`, detail: { dropped: count, droppedTotal: this.dropped } }),
        Date.now(),
      );
    }
    if (this.sealed.length === 0 && this.open.records > 0) {
      const wait = this.lastDispatch + this.dispatchIntervalMs - Date.now();
      if (this.open.records < MIN_DISPATCH_RECORDS && wait > 0 && this.flushing === 0 && !this.closed) {
        if (this.dispatchTimer === null) {
          this.dispatchTimer = setTimeout(() => {
            this.dispatchTimer = null;
            this.pump();
          }, wait);
          this.dispatchTimer.unref();
        }
        return;
      }
      this.seal();
    }
    for (let next = this.sealed[0]; next !== undefined; next = this.sealed[0]) {
      if (next instanceof Segment) {
        this.sealed.shift();
        this.sealedRecords -= next.records;
        this.dispatch(next);
        continue;
      }
      if (this.inflightSegments > 0) return; // the checkpoint signs the chain as it stands after them
      this.sealed.shift();
      this.signing = true;
      this.signCheckpoint(next.checkpointAt)
        .catch((err: unknown) => this.options.log.error({ err: (err as Error).message }, 'AUDIT CHECKPOINT NOT SIGNED: the checkpoint is skipped'))
        .finally(() => {
          this.signing = false;
          this.pump();
          this.wake();
        });
      return;
    }
  }

  /** Signs a checkpoint over the chain so far (everything before it is chained) and sends it next. */
  private async signCheckpoint(at: number): Promise<void> {
    const cp = this.options.checkpoint;
    if (cp === undefined) return;
    const seq = this.tip.seq + 1;
    const payload: CheckpointPayload = { seq, prev: this.tip.hash, time: new Date(at).toISOString(), count: seq - 1 - this.lastCheckpointSeq, interval: cp.intervalMs / 1000 };
    const signature = await signCheckpoint(payload, cp.key, cp.kid);
    const seg = this.spare.pop() ?? new Segment();
    seg.room(4);
    seg.nums[seg.n++] = at;
    seg.nums[seg.n++] = 1;
    seg.inline(serializeFields({ event: 'checkpoint', decision: 'allow', reason: 'signed checkpoint' }, signature));
    seg.records = 1;
    this.dispatch(seg, { time: payload.time, ...(cp.kid !== undefined ? { kid: cp.kid } : {}) });
  }

  /** `checkpoint`: the segment is one signed checkpoint, to be reported to the witness once written. */
  private dispatch(seg: Segment, checkpoint?: { time: string; kid?: string }): void {
    this.lastDispatch = Date.now();
    this.inflightSegments++;
    this.inflightRecords += seg.records;
    const chainer = this.chainer;
    chainer.chain(seg.nums, seg.n, seg.text.subarray(0, seg.used)).then(
      (r) => {
        this.inflightSegments--;
        this.inflightRecords -= seg.records;
        this.tip = { seq: r.seq, hash: r.hash };
        if (checkpoint !== undefined) {
          // Counted from here only once it is in the chain (a chaining thread that died loses it).
          this.lastCheckpointSeq = r.seq;
          if (this.options.anchor !== undefined) this.unwrittenCheckpoints.push({ seq: r.seq, hash: r.hash, ...checkpoint });
        }
        if (r.count > 0) {
          this.ready.push({ buffer: r.out, start: 0, end: r.end, count: r.count, lastSeq: r.seq });
          this.readyCount += r.count;
          this.readyBytes += r.end;
        }
        if (this.spare.length < 8) this.spare.push(new Segment(r.nums, new Uint8Array(r.text.buffer)));
        void this.run();
        this.pump();
        this.wake();
      },
      (err: Error) => {
        if (chainer === this.chainer && !this.closed) this.onChainerFailure(err);
        else if (chainer === this.chainer) {
          // Closing: the records are counted in the "closed with N records lost" line.
          this.inflightSegments--;
          this.wake();
        }
      },
    );
  }

  /**
   * The chaining thread died: the records it held, and those laid out for it (they name its
   * definitions), are lost. Count them as dropped (the chain says so), and chain on this thread.
   */
  private onChainerFailure(err: Error): void {
    const lost = this.inflightRecords + this.sealedRecords + this.open.records;
    this.inflightSegments = 0;
    this.inflightRecords = 0;
    this.options.log.error({ err: err.message, lost }, 'AUDIT CHAINING FAILED: chaining on the main thread from now on');
    this.sealed = this.sealed.filter((s) => !(s instanceof Segment));
    this.sealedRecords = 0;
    this.open = new Segment();
    this.resetDefs();
    void this.chainer.close().catch(() => {});
    this.chainer = inlineChainer(this.tip, RECORD_PREFIX);
    if (lost > 0) this.drop(lost);
    this.pump();
    this.wake();
  }

  /**
   * Writes the chained batches in order: all that are ready (up to MAX_WRITE_BYTES) in one write
   * when the output can write several buffers at once, because under load the broker's thread
   * sees a write finish only once per event-loop turn. On failure the batches are kept; the
   * retry writes them again (the output first cuts off what the failed write left). Written
   * batches' buffers go back to the chaining side for reuse.
   */
  private async run(): Promise<void> {
    if (this.running) return;
    this.running = true;
    // Waiters are woken only if this run tried to write. Woken by a run that found nothing to
    // do, two flush() calls woke each other in microtasks for ever while a segment was still
    // with the chaining thread, whose reply (a macrotask) then never came: the broker hung.
    let tried = false;
    try {
      for (;;) {
        if (this.ready.length === 0) break;
        tried = true;
        let take = 1;
        let bytes = (this.ready[0] as Batch).end - (this.ready[0] as Batch).start;
        // Several batches per write only where a failed write can be cut off before the retry
        // (rollback): elsewhere a retry would write again what a partial write already wrote.
        if (this.output.writev !== undefined && this.output.rollback !== undefined) {
          for (; take < this.ready.length; take++) {
            const b = this.ready[take] as Batch;
            if (bytes + b.end - b.start > MAX_WRITE_BYTES) break;
            bytes += b.end - b.start;
          }
        }
        const chunks = this.ready.slice(0, take).map((b) => b.buffer.subarray(b.start, b.end));
        try {
          if (this.needsRollback) {
            await this.output.rollback?.();
            this.needsRollback = false;
          }
          await this.output.prepare?.(bytes);
          if (take === 1) await this.output.write(chunks[0] as Buffer);
          else await (this.output.writev as (chunks: Buffer[]) => Promise<void>)(chunks);
        } catch (err) {
          this.onFailure(err);
          break;
        }
        let writtenSeq = 0;
        for (const batch of this.ready.splice(0, take)) {
          this.readyCount -= batch.count;
          this.readyBytes -= batch.end - batch.start;
          this.written += batch.count;
          writtenSeq = batch.lastSeq;
          if (this.output.releasesBuffers === true) this.chainer.recycle(batch.buffer.buffer as ArrayBuffer);
        }
        this.witness(writtenSeq);
        this.dirty = true;
        if ((this.options.fsyncIntervalMs ?? 1000) === 0 && !(await this.syncNow())) break;
        if (this.failedSince !== null) this.onRecovery();
        this.pump();
        this.wake();
      }
    } finally {
      this.running = false;
      if (tried) this.wake();
    }
  }

  /** Reports the checkpoints written up to `writtenSeq` to the witness: never one that is not in the file. */
  private witness(writtenSeq: number): void {
    const anchor = this.options.anchor;
    while (anchor !== undefined && this.unwrittenCheckpoints.length > 0 && (this.unwrittenCheckpoints[0] as WrittenCheckpoint).seq <= writtenSeq) {
      anchor.publish(this.unwrittenCheckpoints.shift() as WrittenCheckpoint);
    }
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
        { err: code, output: this.output.name, pending: this.pendingCount },
        'AUDIT LOG WRITE FAILED: records are held and retried',
      );
    }
    if (!this.closed) {
      this.clearRetry();
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        void this.retry();
      }, this.options.retryMs ?? 1000);
      this.retryTimer.unref();
    }
    this.wake();
  }

  /**
   * Tries again after a failure: the held batches when there are any; otherwise the failure was
   * an fsync with nothing left to write, so the fsync is what is retried (without this, a failed
   * fsync with an empty queue would never be seen to recover, and nothing would be chained).
   */
  private async retry(): Promise<void> {
    if (this.ready.length > 0 || this.running) {
      await this.run();
      return;
    }
    this.dirty = true;
    if (await this.syncNow()) {
      if (this.failedSince !== null) this.onRecovery();
      this.pump();
      this.wake();
    }
  }

  private onRecovery(): void {
    const failedMs = Date.now() - (this.failedSince ?? Date.now());
    const error = this.lastError ?? 'unknown';
    this.failedSince = null;
    this.failLoggedAt = 0;
    this.options.log.warn({ output: this.output.name, failedMs, err: error }, 'audit log writes recovered');
    this.enqueueInternal({ event: 'audit', action: 'recovered', decision: 'allow', reason: `writes failed for ${failedMs} ms (${error})`, detail: { failedMs, error } });
  }

  /** A record of the sink's own (also while closing), within the bound. */
  private enqueueInternal(event: AuditEvent): void {
    if (this.pendingCount >= this.options.maxQueue) this.drop();
    else this.appendFields(serializeFields(event), Date.now());
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
    if (this.drainWaiters.length > 0 && (this.pendingCount <= this.options.maxQueue * BACKLOG_LOW || this.failedSince !== null || this.closed)) {
      const d = this.drainWaiters;
      this.drainWaiters = [];
      for (const f of d) f();
    }
  }

  /**
   * True while records arrive faster than they are written: half the queue is taken, and writes
   * are not failing (a failing log is `healthy()`'s business, and `audit.failMode` decides). The
   * broker then stops reading from its clients until {@link whenDrained} calls back, so a burst
   * is slowed down instead of filling the queue (where fail-closed would deny and fail-open drop).
   */
  backlogged(): boolean {
    return this.failedSince === null && !this.closed && this.pendingCount >= this.options.maxQueue * BACKLOG_HIGH;
  }

  /** Calls `fn` once the queue is down to a quarter, or writes fail, or the sink closes. */
  whenDrained(fn: () => void): void {
    this.drainWaiters.push(fn);
    this.wake();
  }
}
