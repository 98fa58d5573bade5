/**
 * Reading the audit log for the admin API: its files (the live one and the rotated ones beside
 * it), a query over one of them, and the tail of the live one. A file is named by its base name
 * and must be one of the listed files: a name with a path in it, `..`, or anything else is
 * refused before the file system is touched, so no request can read outside the audit log.
 *
 * Reading shares the event loop with the MQTT side, so it never holds it for long: files are
 * read asynchronously in chunks of 64 KiB, each chunk parsed and then the loop given a turn
 * before the next; a tail reads back from the end at most 4 MiB; a follower reads only what was
 * appended since its last look. Answers are bounded (`limit` records, 4 MiB of them).
 */
import fs from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { listRotatedFiles } from '../audit/file-output.ts';
import { matchesFilter, type RecordFilter } from '../audit/query.ts';
import { parseRecord, type AuditRecord } from '../audit/record.ts';
import { ApiError } from './errors.ts';

export interface AuditFileInfo {
  name: string;
  bytes: number;
  modified: string;
  live: boolean;
}

export interface AuditQuery extends RecordFilter {
  decision?: 'allow' | 'deny';
  /** Only records after this sequence number. */
  afterSeq?: number;
  limit: number;
}

/** How much of the live file a tail reads back from its end. */
const TAIL_BYTES = 4 * 1024 * 1024;
/** How much is read (and then parsed) before the event loop gets a turn. */
const CHUNK = 64 * 1024;
/** A line longer than this is not a record the broker wrote: skipped as malformed, never buffered whole. */
const MAX_LINE = 1024 * 1024;
/** The most record bytes one answer holds. */
const MAX_ANSWER_BYTES = 4 * 1024 * 1024;

/** Where a follower of the live file stopped: the file (inode) and the offset after its last whole line. */
export interface TailPosition {
  ino: number;
  offset: number;
}

export interface ReadResult {
  records: AuditRecord[];
  scanned: number;
  malformed: number;
  /** Records left out to keep the answer within 4 MiB. */
  truncated: boolean;
}

const NEWLINE = 0x0a;

/** Gives the event loop a turn (I/O, timers) between chunks. */
const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

interface Kept {
  rec: AuditRecord;
  bytes: number;
}

/** Parses lines and counts what it saw; `take` gives a line's record when it matches the query. */
class Scan {
  scanned = 0;
  malformed = 0;
  constructor(private readonly q: AuditQuery) {}

  take(text: string): Kept | undefined {
    if (text.length === 0) return undefined;
    this.scanned++;
    const rec = parseRecord(text);
    if (rec === null) {
      this.malformed++;
      return undefined;
    }
    return matches(rec, this.q) ? { rec, bytes: text.length } : undefined;
  }

  /**
   * The answer from records in file order, at most `limit` of them and MAX_ANSWER_BYTES: the
   * last ones (`newest`) or the first ones; the rest are cut and `truncated` says so.
   */
  answer(list: Kept[], newest: boolean): ReadResult {
    let chosen = newest ? list.slice(-this.q.limit) : list.slice(0, this.q.limit);
    let bytes = 0;
    let n = 0;
    for (; n < chosen.length; n++) {
      bytes += (chosen[newest ? chosen.length - 1 - n : n] as Kept).bytes;
      if (bytes > MAX_ANSWER_BYTES) break;
    }
    const truncated = n < chosen.length;
    if (truncated) chosen = newest ? chosen.slice(chosen.length - n) : chosen.slice(0, n);
    return { records: chosen.map((k) => k.rec), scanned: this.scanned, malformed: this.malformed, truncated };
  }
}

async function open(file: string): Promise<FileHandle> {
  try {
    return await fs.promises.open(file, 'r');
  } catch (err) {
    throw new ApiError(404, 'ERR_NOT_FOUND', `cannot read the audit file (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }
}

/**
 * Reads [from, to) forward in chunks, handing each whole line to `each` (which returns true to
 * stop). Returns the offset after the last whole line read (a record still being written has no
 * newline yet and is left for the next look).
 */
async function forward(fh: FileHandle, from: number, to: number, each: (line: string) => boolean, scan: Scan): Promise<number> {
  const buf = Buffer.alloc(CHUNK);
  let carry: Buffer[] = [];
  let carryBytes = 0;
  let oversized = false;
  let pos = from;
  let done = from;
  while (pos < to) {
    const { bytesRead } = await fh.read(buf, 0, Math.min(CHUNK, to - pos), pos);
    if (bytesRead === 0) break;
    const chunk = buf.subarray(0, bytesRead);
    let start = 0;
    for (let nl = chunk.indexOf(NEWLINE); nl >= 0; nl = chunk.indexOf(NEWLINE, start)) {
      const piece = chunk.subarray(start, nl);
      let stop = false;
      if (oversized || carryBytes + piece.length > MAX_LINE) scan.malformed++;
      else stop = each((carryBytes > 0 ? Buffer.concat([...carry, piece]) : piece).toString('utf8'));
      carry = [];
      carryBytes = 0;
      oversized = false;
      start = nl + 1;
      done = pos + start;
      if (stop) return done;
    }
    const rest = chunk.subarray(start);
    if (!oversized && carryBytes + rest.length <= MAX_LINE) {
      carry.push(Buffer.from(rest));
      carryBytes += rest.length;
    } else {
      oversized = true;
      carry = [];
      carryBytes = 0;
    }
    pos += bytesRead;
    await turn();
  }
  return done;
}

export class AuditFiles {
  constructor(private readonly live: string) {}

  list(): AuditFileInfo[] {
    const files = [...listRotatedFiles(this.live), ...(fs.existsSync(this.live) ? [this.live] : [])];
    return files.flatMap((f) => {
      try {
        const st = fs.statSync(f);
        return [{ name: path.basename(f), bytes: st.size, modified: st.mtime.toISOString(), live: f === this.live }];
      } catch {
        return []; // rotated away meanwhile
      }
    });
  }

  /** The file a name stands for, or a 400 naming why it is not one of the audit log's files. */
  resolve(name: string | undefined): string {
    if (name === undefined) return this.live;
    if (name.includes('/') || name.includes('\\') || name.includes('\u0000') || name === '.' || name === '..' || name.includes('..')) {
      throw new ApiError(400, 'ERR_BAD_FILE', `file '${name.slice(0, 100)}' is not an audit file name: give a base name from GET /api/v1/audit/files (no path)`);
    }
    const match = this.list().find((f) => f.name === name);
    if (match === undefined) throw new ApiError(400, 'ERR_BAD_FILE', `'${name.slice(0, 100)}' is not one of the audit log's files (GET /api/v1/audit/files)`);
    return path.join(path.dirname(this.live), match.name);
  }

  /** Matching records of one file: the first `limit` after `afterSeq`, else the last `limit`. */
  async query(file: string, q: AuditQuery): Promise<ReadResult> {
    const fh = await open(file);
    const scan = new Scan(q);
    const newest = q.afterSeq === undefined;
    const kept: Kept[] = [];
    try {
      const { size } = await fh.stat();
      await forward(fh, 0, size, (line) => forwardKeep(scan, kept, line, newest, q.limit), scan);
    } finally {
      await fh.close();
    }
    return scan.answer(kept, newest);
  }

  /**
   * The last `limit` matching records of the live file (those after `afterSeq` when given),
   * reading back from its end at most 4 MiB, and where a follower continues from.
   */
  async tail(q: AuditQuery): Promise<ReadResult & { position: TailPosition }> {
    let fh: FileHandle;
    try {
      fh = await fs.promises.open(this.live, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { records: [], scanned: 0, malformed: 0, truncated: false, position: { ino: -1, offset: 0 } };
      throw new ApiError(404, 'ERR_NOT_FOUND', `cannot read the audit file (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
    }
    const scan = new Scan(q);
    /** Newest first. */
    const found: Kept[] = [];
    try {
      const st = await fh.stat();
      const floor = Math.max(0, st.size - TAIL_BYTES);
      const buf = Buffer.alloc(CHUNK);
      let end: number | undefined;
      // The head of a line that began before the chunk read last (it ends with its newline).
      let carry = Buffer.alloc(0);
      for (let pos = st.size; pos > floor && found.length < q.limit; ) {
        const start = Math.max(floor, pos - CHUNK);
        const { bytesRead } = await fh.read(buf, 0, pos - start, start);
        let data = carry.length > 0 ? Buffer.concat([buf.subarray(0, bytesRead), carry]) : Buffer.from(buf.subarray(0, bytesRead));
        pos = start;
        if (end === undefined) {
          // The bytes after the last newline are a record still being written: not yet part of the file.
          const last = data.lastIndexOf(NEWLINE);
          if (last < 0) continue;
          end = start + last + 1;
          data = data.subarray(0, last + 1);
        }
        // Unless this chunk starts the file, its first line began earlier: keep it for the next read
        // (at the 4 MiB floor it is cut, and dropped).
        let whole = data;
        carry = Buffer.alloc(0);
        if (start > 0) {
          const head = data.indexOf(NEWLINE);
          const cut = head < 0 ? data.length : head + 1;
          whole = data.subarray(cut);
          if (start > floor) carry = data.subarray(0, cut);
          if (carry.length > MAX_LINE) {
            scan.malformed++;
            carry = Buffer.alloc(0);
          }
        }
        const lines = whole.toString('utf8').split('\n');
        for (let i = lines.length - 1; i >= 0 && found.length < q.limit; i--) {
          const k = scan.take(lines[i] as string);
          if (k !== undefined) found.push(k);
        }
        await turn();
      }
      return { ...scan.answer(found.reverse(), true), position: { ino: st.ino, offset: end ?? 0 } };
    } finally {
      await fh.close();
    }
  }

  /**
   * What was appended to the live file since `from` (the whole new file when it was rotated or
   * truncated): the last `limit` matching records, and where to continue.
   */
  async follow(from: TailPosition, q: AuditQuery): Promise<ReadResult & { position: TailPosition }> {
    let st: fs.Stats;
    try {
      st = await fs.promises.stat(this.live);
    } catch {
      return { records: [], scanned: 0, malformed: 0, truncated: false, position: from };
    }
    const offset = st.ino !== from.ino || st.size < from.offset ? 0 : from.offset;
    if (st.size === offset) return { records: [], scanned: 0, malformed: 0, truncated: false, position: { ino: st.ino, offset } };
    // Far behind: read back from the end instead of everything in between.
    if (st.size - offset > TAIL_BYTES) return this.tail(q);
    const fh = await open(this.live);
    const scan = new Scan(q);
    const kept: Kept[] = [];
    try {
      const done = await forward(fh, offset, st.size, (line) => forwardKeep(scan, kept, line, true, q.limit), scan);
      return { ...scan.answer(kept, true), position: { ino: st.ino, offset: done } };
    } finally {
      await fh.close();
    }
  }
}

/** Keeps a matching line's record: the last `limit` (trimmed in batches) or the first `limit` (true: stop). */
function forwardKeep(scan: Scan, kept: Kept[], line: string, newest: boolean, limit: number): boolean {
  const k = scan.take(line);
  if (k === undefined) return false;
  kept.push(k);
  if (!newest) return kept.length >= limit;
  if (kept.length >= 2 * limit) kept.splice(0, kept.length - limit);
  return false;
}

function matches(rec: AuditRecord, q: AuditQuery): boolean {
  if (q.afterSeq !== undefined && rec.seq <= q.afterSeq) return false;
  if (q.decision !== undefined && rec.decision !== q.decision) return false;
  return matchesFilter(rec, q);
}
