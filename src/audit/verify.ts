/**
 * `portcullis audit verify`: walks one chain across the given files in order, recomputing each
 * record's hash and checking that it names the previous record's hash and the next sequence
 * number. With a public key it also checks every checkpoint's signature, what it signs, and the
 * cadence (verify-signatures.ts); with anchors, the records against the digests sent out
 * (anchor-file.ts). It stops at the first problem and says which file, line and record it is.
 */
import fs from 'node:fs';
import type { KeyObject } from 'node:crypto';
import { AnchorCheck, type AnchorEntry, type AnchorSummary } from './anchor-file.ts';
import { GENESIS, parseRecord, sha256, splitHash, type ChainTip } from './record.ts';
import { SignatureCheck, type RestartGap, type UnsignedTail } from './verify-signatures.ts';

export type VerifyProblemCode =
  | 'unreadable' // a file cannot be read
  | 'malformed' // a line is not a JSON record (torn write, edit, truncation)
  | 'hash-mismatch' // a record's content does not match its hash (edited)
  | 'missing' // records are missing before this one (deleted lines, truncation in the middle)
  | 'out-of-order' // the sequence goes backwards (reordered, spliced)
  | 'chain-broken' // the previous-hash link is wrong
  | 'unsigned-checkpoint' // with a key: a checkpoint without a signature (stripped)
  | 'bad-signature' // with a key: a checkpoint signature does not verify (another key, header or payload changed)
  | 'checkpoint-mismatch' // with a key: a valid signature over something other than these records (chain recomputed)
  | 'unsigned-gap' // with a key: records went longer than the cadence without a signature
  | 'unsigned-tail' // with a key: the records after the last signed checkpoint span longer than the cadence
  | 'anchor-mismatch' // with anchors: a record differs from the digest sent out for it
  | 'anchor-missing' // with anchors: an anchored checkpoint is beyond the end of the log (cut off)
  | 'no-checkpoint'; // --require-checkpoint and no valid checkpoint was found

export interface VerifyProblem {
  code: VerifyProblemCode;
  file: string;
  /** 1-based line number in the file. */
  line?: number;
  /** The record named. */
  seq?: number;
  /** When the change cannot be pinned to one record (the chain was recomputed): the records it is among. */
  range?: { from: number; to: number };
  message: string;
}

export interface VerifyReport {
  ok: boolean;
  records: number;
  files: number;
  /** The first record's link, when the chain starts after records that were not given. */
  startsAfter?: ChainTip;
  last?: ChainTip & { time?: string };
  checkpoints: { verified: number; unverified: number };
  /** With a key: the last valid checkpoint; it and every record before it are covered by a signature. */
  lastSignedSeq?: number;
  /** With a key: the records after the last valid checkpoint, covered by no signature. */
  tail?: UnsignedTail;
  /** With a key: tails of runs that crashed, signed only when the broker started again. */
  restarts?: RestartGap[];
  /** With a key: the longest stretch of records without a signature, ms. */
  longestUnsignedMs?: number;
  /** With anchors. */
  anchors?: AnchorSummary;
  problem?: VerifyProblem;
}

export interface VerifyOptions {
  /** An Ed25519 public key; without it checkpoint signatures are counted but not checked. */
  key?: KeyObject;
  /** Fail when no checkpoint verifies (needs `key`). */
  requireCheckpoint?: boolean;
  /**
   * The longest a record may go without a signature, ms (`--max-unsigned-gap`). Default: the
   * interval each checkpoint signed, plus a grace (see unsignedGapLimitMs).
   */
  maxUnsignedGapMs?: number;
  /** Digests of checkpoints sent out of the broker's reach (for this log's name only). */
  anchors?: AnchorEntry[];
  /** The time the tail's age is measured to (default: now). */
  now?: number;
}

export async function verifyAuditFiles(files: string[], options: VerifyOptions = {}): Promise<VerifyReport> {
  const report: VerifyReport = { ok: true, records: 0, files: 0, checkpoints: { verified: 0, unverified: 0 } };
  const signatures = options.key !== undefined ? new SignatureCheck(options.key, options.maxUnsignedGapMs) : null;
  const anchors = options.anchors !== undefined ? new AnchorCheck(options.anchors) : null;
  let tip: ChainTip | null = null;
  const finish = (): VerifyReport => {
    if (signatures !== null) {
      report.checkpoints.verified = signatures.verified;
      if (signatures.lastSignedSeq !== undefined) report.lastSignedSeq = signatures.lastSignedSeq;
      report.restarts = signatures.restarts;
      report.longestUnsignedMs = signatures.longestUnsignedMs;
    }
    if (anchors !== null) report.anchors = anchors.result();
    return report;
  };
  const fail = (p: VerifyProblem): VerifyReport => {
    report.ok = false;
    report.problem = p;
    return finish();
  };
  for (const file of files) {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      return fail({ code: 'unreadable', file, message: `cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})` });
    }
    report.files++;
    const lines = text.split('\n');
    // A file ends with a newline; anything after the last one is a torn record.
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i] as string;
      const lineNo = i + 1;
      if (line.length === 0) {
        if (i === lines.length - 1) continue;
        return fail({ code: 'malformed', file, line: lineNo, message: `${file}:${lineNo}: empty line inside the log` });
      }
      const where = `${file}:${lineNo}`;
      const rec = parseRecord(line);
      const parts = splitHash(line);
      if (rec === null || parts === null) {
        const truncated = i === lines.length - 1 ? ' (the file ends with an incomplete record: truncated)' : '';
        return fail({ code: 'malformed', file, line: lineNo, ...(tip ? { seq: tip.seq + 1 } : {}), message: `${where}: not a valid audit record${truncated}${tip ? `; expected seq ${tip.seq + 1}` : ''}` });
      }
      if (sha256(parts.body) !== parts.hash) {
        return fail({ code: 'hash-mismatch', file, line: lineNo, seq: rec.seq, message: `${where}: record seq ${rec.seq} was changed: its content does not match its hash` });
      }
      if (tip === null) {
        if (rec.prev !== GENESIS) report.startsAfter = { seq: rec.seq - 1, hash: rec.prev };
        else if (rec.seq !== 1) return fail({ code: 'missing', file, line: lineNo, seq: rec.seq, message: `${where}: the chain starts at seq ${rec.seq}, expected 1` });
      } else {
        const expected = tip.seq + 1;
        if (rec.seq > expected && lines.slice(i + 1).some((l) => l.includes(`"seq":${expected},`))) {
          return fail({ code: 'out-of-order', file, line: lineNo, seq: rec.seq, message: `${where}: record seq ${rec.seq} is out of order: seq ${expected} comes later in the file (reordered)` });
        }
        if (rec.seq > expected) {
          return fail({ code: 'missing', file, line: lineNo, seq: rec.seq, range: { from: expected, to: rec.seq - 1 }, message: `${where}: records ${expected}..${rec.seq - 1} are missing (found seq ${rec.seq}, expected ${expected})` });
        }
        if (rec.seq < expected) {
          return fail({ code: 'out-of-order', file, line: lineNo, seq: rec.seq, message: `${where}: record seq ${rec.seq} is out of order (expected ${expected})` });
        }
        if (rec.prev !== tip.hash) {
          return fail({ code: 'chain-broken', file, line: lineNo, seq: rec.seq, message: `${where}: record seq ${rec.seq} does not follow record ${tip.seq} (previous-hash mismatch)` });
        }
      }
      const timeMs = Date.parse(rec.time);
      if (typeof rec.time !== 'string' || Number.isNaN(timeMs)) {
        return fail({ code: 'malformed', file, line: lineNo, seq: rec.seq, message: `${where}: record seq ${rec.seq} has no valid time` });
      }
      if (signatures !== null) {
        const p = await signatures.record(rec, { file, line: lineNo, seq: rec.seq, timeMs }, where);
        if (p !== null) return fail({ code: p.code, file: p.at.file, line: p.at.line, seq: p.at.seq, ...(p.range ? { range: p.range } : {}), message: p.message });
      } else if (rec.event === 'checkpoint') {
        report.checkpoints.unverified++;
      }
      if (anchors !== null) {
        const a = anchors.record(rec.seq, rec.hash, rec.event === 'checkpoint');
        if (a !== null) {
          return fail({
            code: 'anchor-mismatch',
            file,
            line: lineNo,
            seq: rec.seq,
            message: `${where}: record seq ${rec.seq} is not the one whose digest was sent out${a.time ? ` at ${a.time}` : ''} (${a.file}:${a.line}): the log was rewritten at or before it`,
          });
        }
      }
      tip = { seq: rec.seq, hash: rec.hash };
      report.last = { ...tip, time: rec.time };
      report.records++;
    }
  }
  const lastFile = files[files.length - 1] ?? '';
  if (anchors !== null) {
    const beyond = anchors.end(report.last?.seq);
    if (beyond !== null) {
      const end = report.last !== undefined ? `the log ends at seq ${report.last.seq}` : 'the log holds no record';
      return fail({
        code: 'anchor-missing',
        file: lastFile,
        seq: beyond.seq,
        message: `checkpoint seq ${beyond.seq} was anchored${beyond.time ? ` at ${beyond.time}` : ''} (${beyond.file}:${beyond.line}) but ${end}: records were cut off the end`,
      });
    }
  }
  if (signatures !== null) {
    const { tail, problem } = signatures.end(options.now ?? Date.now());
    if (tail !== undefined) report.tail = tail;
    if (problem !== undefined) return fail({ code: problem.code, file: problem.at.file, line: problem.at.line, seq: problem.at.seq, ...(problem.range ? { range: problem.range } : {}), message: problem.message });
  }
  if (options.requireCheckpoint && (signatures?.verified ?? 0) === 0) {
    return fail({ code: 'no-checkpoint', file: lastFile, message: 'no checkpoint with a valid signature was found' });
  }
  return finish();
}
