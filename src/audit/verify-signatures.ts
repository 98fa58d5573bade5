/**
 * What `audit verify --key` checks beyond the hash chain: every checkpoint carries a valid
 * signature; what it signs (its sequence number, the head hash before it, its time, and how many
 * records it is the first signature for) is what the records say; and no record went unsigned
 * for longer than the cadence the broker promised (`audit.checkpoint.intervalSeconds`, or
 * `--max-unsigned-gap`).
 *
 * Why the cadence matters: a signature vouches for everything before it, so someone who can
 * write the file can only change what no signature covers yet. They can make that stretch long
 * by removing checkpoints (and recomputing the chain): the stretch is then longer than the
 * broker would ever have left it, and that fails. What cannot be told from the file alone: the
 * records after the last checkpoint (the tail), cut off or rewritten within the cadence, and a
 * file rewritten by someone who holds the signing key. Anchors (anchor.ts) close both.
 *
 * Restarts: a broker that stops cleanly signs a last checkpoint; one that crashed leaves the
 * records after its last checkpoint unsigned until it starts again, when it signs a checkpoint
 * at once over its `start` record. That checkpoint's signed count says where the new run began,
 * so the records before it are known to be the crashed run's tail; they pass when they span no
 * longer than the cadence (the crashed run was signing on time), and are reported: they stayed
 * unsigned while the broker was down.
 */
import { decodeProtectedHeader, type ProtectedHeaderParameters } from 'jose';
import type { KeyObject } from 'node:crypto';
import { verifyCheckpoint, type CheckpointPayload } from './checkpoint.ts';
import type { AuditRecord } from './record.ts';

/** `audit.checkpoint.intervalSeconds`' default: the cadence assumed when nothing says otherwise. */
export const DEFAULT_CHECKPOINT_INTERVAL_SECONDS = 60;

/**
 * The longest a record may wait for its first signature when the broker signs every
 * `intervalSeconds`: the interval plus a grace for a late timer (a quarter of it, at least 1 s).
 */
export function unsignedGapLimitMs(intervalSeconds: number): number {
  return intervalSeconds * 1000 + Math.max(1000, intervalSeconds * 250);
}

/** Where a record is, for messages. */
export interface Place {
  file: string;
  line: number;
  seq: number;
  timeMs: number;
}

export type SignatureProblemCode = 'unsigned-checkpoint' | 'bad-signature' | 'checkpoint-mismatch' | 'unsigned-gap' | 'unsigned-tail';

export interface SignatureProblem {
  code: SignatureProblemCode;
  /** The record named: the checkpoint that fails, or the first record left unsigned too long. */
  at: Place;
  /** The records among which the change is, when it cannot be pinned to one (the chain was recomputed). */
  range?: { from: number; to: number };
  message: string;
}

/** Records after the last valid checkpoint: signed by nothing yet. */
export interface UnsignedTail {
  records: number;
  fromSeq: number;
  toSeq: number;
  firstTime: string;
  lastTime: string;
  /** From its first record to its last. */
  spanMs: number;
  /** From its first record to the time of the check. */
  ageMs: number;
  /** The longest the broker would have left it unsigned (the limit applied). */
  limitMs: number;
}

/** The tail of a run that ended without a last checkpoint (a crash), signed only after the restart. */
export interface RestartGap {
  fromSeq: number;
  toSeq: number;
  records: number;
  /** The `start` record of the run that signed them. */
  resumedAtSeq: number;
  /** From the crashed run's last record to the new run's start record. */
  downtimeMs: number;
}

interface StartRecord {
  at: Place;
  /** The time of the record before it, when that record is in the same unsigned stretch. */
  prevTimeMs: number | null;
}

const fmt = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

export class SignatureCheck {
  verified = 0;
  lastSignedSeq: number | undefined;
  readonly restarts: RestartGap[] = [];
  /** The longest stretch without a signature seen so far, ms. */
  longestUnsignedMs = 0;
  /** The first record after the last valid checkpoint (or the first record read). */
  private stretch: Place | null = null;
  private starts: StartRecord[] = [];
  private seenCheckpoint = false;
  private lastInterval: number | undefined;
  private last: Place | null = null;

  constructor(
    private readonly key: KeyObject,
    /** A fixed limit (`--max-unsigned-gap`), else each checkpoint's signed interval decides. */
    private readonly fixedLimitMs: number | undefined,
  ) {}

  private limitMs(interval: number | undefined): number {
    return this.fixedLimitMs ?? unsignedGapLimitMs(interval ?? this.lastInterval ?? DEFAULT_CHECKPOINT_INTERVAL_SECONDS);
  }

  /** Takes the next record of the chain (its hash and link already checked); a problem ends the check. */
  async record(rec: AuditRecord, at: Place, where: string): Promise<SignatureProblem | null> {
    const problem = rec.event === 'checkpoint' ? await this.checkpoint(rec, at, where) : null;
    if (problem !== null) return problem;
    if (rec.event !== 'checkpoint') {
      if (this.stretch === null) this.stretch = at;
      if (rec.event === 'audit' && rec.action === 'start') {
        this.starts.push({ at, prevTimeMs: this.last !== null && this.last.seq === at.seq - 1 && this.stretch.seq < at.seq ? this.last.timeMs : null });
      }
    }
    this.last = at;
    return null;
  }

  private async checkpoint(rec: AuditRecord, at: Place, where: string): Promise<SignatureProblem | null> {
    const seq = at.seq;
    if (typeof rec.signature !== 'string') {
      return { code: 'unsigned-checkpoint', at, message: `${where}: checkpoint seq ${seq} has no signature (stripped, or written without a key)` };
    }
    let payload: CheckpointPayload;
    try {
      payload = await verifyCheckpoint(rec.signature, this.key);
    } catch {
      return { code: 'bad-signature', at, message: `${where}: checkpoint seq ${seq} has an invalid signature${describeKid(rec.signature)}: not made by this key over this checkpoint (re-signed with another key, or its header or payload changed)` };
    }
    const stretch = this.stretch;
    if (payload.seq !== seq) {
      const n = Math.abs(payload.seq - seq);
      return {
        code: 'checkpoint-mismatch',
        at,
        message:
          payload.seq > seq
            ? `${where}: the checkpoint at seq ${seq} carries the signature of checkpoint seq ${payload.seq}: ${n} record(s) before it were deleted and the chain recomputed`
            : `${where}: the checkpoint at seq ${seq} carries the signature of checkpoint seq ${payload.seq}: ${n} record(s) were inserted before it and the chain recomputed`,
      };
    }
    if (payload.prev !== rec.prev) {
      // Everything up to the previous valid checkpoint is vouched for by it: the change is after it.
      const lo = this.seenCheckpoint && stretch !== null ? stretch.seq - 1 : undefined;
      const among = lo !== undefined ? `records ${lo}..${seq - 1} (the previous checkpoint and the records after it)` : `the records before seq ${seq}`;
      return {
        code: 'checkpoint-mismatch',
        at,
        ...(lo !== undefined ? { range: { from: lo, to: seq - 1 } } : {}),
        message: `${where}: checkpoint seq ${seq} signed another chain than the one before it: one of ${among} was altered, inserted, deleted or moved, and the hashes recomputed`,
      };
    }
    if (payload.time !== rec.time) {
      return { code: 'checkpoint-mismatch', at, message: `${where}: checkpoint seq ${seq} was signed at ${payload.time}, but the record says ${rec.time}` };
    }
    const limit = this.limitMs(payload.interval);
    if (stretch !== null) {
      let runStart = stretch;
      if (payload.count !== undefined) {
        const first = seq - payload.count;
        if (first < stretch.seq && this.seenCheckpoint) {
          return { code: 'checkpoint-mismatch', at, message: `${where}: checkpoint seq ${seq} says it is the first signature for records ${first}..${seq - 1}, but seq ${stretch.seq - 1} is a checkpoint` };
        }
        if (first > stretch.seq) {
          const start = this.starts.find((s) => s.at.seq === first);
          if (start === undefined || start.prevTimeMs === null) {
            return { code: 'checkpoint-mismatch', at, range: { from: stretch.seq, to: first - 1 }, message: `${where}: checkpoint seq ${seq} is the first signature for records ${first}..${seq - 1} only, and seq ${first} is not the start of a run: records ${stretch.seq}..${first - 1} were signed by no checkpoint` };
          }
          // The tail of a run that crashed: it must have been within the cadence when it stopped.
          const tailSpan = start.prevTimeMs - stretch.timeMs;
          this.longestUnsignedMs = Math.max(this.longestUnsignedMs, tailSpan);
          if (tailSpan > limit) {
            return { code: 'unsigned-gap', at: stretch, range: { from: stretch.seq, to: first - 1 }, message: `${stretch.file}:${stretch.line}: records ${stretch.seq}..${first - 1} went ${fmt(tailSpan)} without a signed checkpoint before the broker stopped (the limit is ${fmt(limit)})` };
          }
          this.restarts.push({ fromSeq: stretch.seq, toSeq: first - 1, records: first - stretch.seq, resumedAtSeq: first, downtimeMs: start.at.timeMs - start.prevTimeMs });
          runStart = start.at;
        }
      }
      const span = at.timeMs - runStart.timeMs;
      this.longestUnsignedMs = Math.max(this.longestUnsignedMs, span);
      if (span > limit) {
        return { code: 'unsigned-gap', at: runStart, range: { from: runStart.seq, to: seq - 1 }, message: `${runStart.file}:${runStart.line}: records ${runStart.seq}..${seq - 1} went ${fmt(span)} without a signed checkpoint (the limit is ${fmt(limit)}): checkpoints are missing, or were not written` };
      }
    }
    this.verified++;
    this.lastSignedSeq = seq;
    this.seenCheckpoint = true;
    if (payload.interval !== undefined) this.lastInterval = payload.interval;
    this.stretch = null;
    this.starts = [];
    return null;
  }

  /** After the last record: the unsigned tail, and a problem when it is longer than the broker would have left it. */
  end(now: number): { tail?: UnsignedTail; problem?: SignatureProblem } {
    const stretch = this.stretch;
    const last = this.last;
    if (stretch === null || last === null) return {};
    const limitMs = this.limitMs(undefined);
    const spanMs = last.timeMs - stretch.timeMs;
    const tail: UnsignedTail = {
      records: last.seq - stretch.seq + 1,
      fromSeq: stretch.seq,
      toSeq: last.seq,
      firstTime: new Date(stretch.timeMs).toISOString(),
      lastTime: new Date(last.timeMs).toISOString(),
      spanMs,
      ageMs: now - stretch.timeMs,
      limitMs,
    };
    this.longestUnsignedMs = Math.max(this.longestUnsignedMs, spanMs);
    if (spanMs <= limitMs) return { tail };
    return {
      tail,
      problem: {
        code: 'unsigned-tail',
        at: stretch,
        range: { from: stretch.seq, to: last.seq },
        message: `${stretch.file}:${stretch.line}: the ${tail.records} record(s) after the last signed checkpoint (seq ${stretch.seq}..${last.seq}) span ${fmt(spanMs)}, longer than the broker leaves records unsigned (${fmt(limitMs)}): checkpoints after seq ${stretch.seq - 1} were removed, or were not written`,
      },
    };
  }
}

function describeKid(jws: string): string {
  let header: ProtectedHeaderParameters;
  try {
    header = decodeProtectedHeader(jws);
  } catch {
    return ' (its header is not a JWS header)';
  }
  return typeof header.kid === 'string' ? ` (key id ${JSON.stringify(header.kid)})` : '';
}
