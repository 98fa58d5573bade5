/**
 * `portcullis audit verify`: walks one chain across the given files in order, recomputing each
 * record's hash and checking that it names the previous record's hash and the next sequence
 * number. It stops at the first problem and says which file, line and record it is.
 */
import fs from 'node:fs';
import type { KeyObject } from 'node:crypto';
import { verifyCheckpoint } from './checkpoint.ts';
import { GENESIS, parseRecord, sha256, splitHash, type ChainTip } from './record.ts';

export type VerifyProblemCode =
  | 'unreadable' // a file cannot be read
  | 'malformed' // a line is not a JSON record (torn write, edit, truncation)
  | 'hash-mismatch' // a record's content does not match its hash (edited)
  | 'missing' // records are missing before this one (deleted lines, truncation in the middle)
  | 'out-of-order' // the sequence goes backwards (reordered)
  | 'chain-broken' // the previous-hash link is wrong
  | 'bad-signature' // a checkpoint signature does not verify
  | 'no-checkpoint'; // --require-checkpoint and no valid checkpoint was found

export interface VerifyProblem {
  code: VerifyProblemCode;
  file: string;
  /** 1-based line number in the file. */
  line?: number;
  seq?: number;
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
  /** The last record covered by a valid signature. */
  lastSignedSeq?: number;
  problem?: VerifyProblem;
}

export interface VerifyOptions {
  /** An Ed25519 public key; without it checkpoint signatures are counted but not checked. */
  key?: KeyObject;
  /** Fail when no checkpoint verifies (needs `key`). */
  requireCheckpoint?: boolean;
}

export async function verifyAuditFiles(files: string[], options: VerifyOptions = {}): Promise<VerifyReport> {
  const report: VerifyReport = { ok: true, records: 0, files: 0, checkpoints: { verified: 0, unverified: 0 } };
  let tip: ChainTip | null = null;
  const fail = (p: VerifyProblem): VerifyReport => {
    report.ok = false;
    report.problem = p;
    return report;
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
        return fail({ code: 'malformed', file, line: lineNo, message: `${where}: not a valid audit record${truncated}${tip ? `; expected seq ${tip.seq + 1}` : ''}` });
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
          return fail({ code: 'missing', file, line: lineNo, seq: rec.seq, message: `${where}: records ${expected}..${rec.seq - 1} are missing (found seq ${rec.seq}, expected ${expected})` });
        }
        if (rec.seq < expected) {
          return fail({ code: 'out-of-order', file, line: lineNo, seq: rec.seq, message: `${where}: record seq ${rec.seq} is out of order (expected ${expected})` });
        }
        if (rec.prev !== tip.hash) {
          return fail({ code: 'chain-broken', file, line: lineNo, seq: rec.seq, message: `${where}: record seq ${rec.seq} does not follow record ${tip.seq} (previous-hash mismatch)` });
        }
      }
      if (rec.event === 'checkpoint') {
        if (options.key === undefined || typeof rec.signature !== 'string') report.checkpoints.unverified++;
        else {
          let ok = false;
          try {
            const payload = await verifyCheckpoint(rec.signature, options.key);
            ok = payload.seq === rec.seq && payload.prev === rec.prev;
          } catch {
            ok = false;
          }
          if (!ok) return fail({ code: 'bad-signature', file, line: lineNo, seq: rec.seq, message: `${where}: checkpoint seq ${rec.seq} has an invalid signature` });
          report.checkpoints.verified++;
          report.lastSignedSeq = rec.seq - 1;
        }
      }
      tip = { seq: rec.seq, hash: rec.hash };
      report.last = { ...tip, time: rec.time };
      report.records++;
    }
  }
  if (options.requireCheckpoint && report.checkpoints.verified === 0) {
    return fail({ code: 'no-checkpoint', file: files[files.length - 1] ?? '', message: 'no checkpoint with a valid signature was found' });
  }
  return report;
}
