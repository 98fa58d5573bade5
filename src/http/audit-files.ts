/**
 * Reading the audit log for the admin API: its files (the live one and the rotated ones beside
 * it), a query over one of them, and the tail of the live one. A file is named by its base name
 * and must be one of the listed files: a name with a path in it, `..`, or anything else is
 * refused before the file system is touched, so no request can read outside the audit log.
 */
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
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
  async query(file: string, q: AuditQuery): Promise<{ records: AuditRecord[]; scanned: number; malformed: number }> {
    const out: AuditRecord[] = [];
    let scanned = 0;
    let malformed = 0;
    let stream: fs.ReadStream;
    try {
      stream = fs.createReadStream(file, { encoding: 'utf8' });
      await new Promise<void>((resolve, reject) => {
        stream.once('open', () => resolve());
        stream.once('error', reject);
      });
    } catch (err) {
      throw new ApiError(404, 'ERR_NOT_FOUND', `cannot read the audit file (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
    }
    const lines = readline.createInterface({ input: stream, crlfDelay: Infinity });
    try {
      for await (const line of lines) {
        if (line.length === 0) continue;
        scanned++;
        const rec = parseRecord(line);
        if (rec === null) {
          malformed++;
          continue;
        }
        if (!matches(rec, q)) continue;
        out.push(rec);
        if (q.afterSeq !== undefined) {
          if (out.length >= q.limit) break;
        } else if (out.length > q.limit) out.shift();
      }
    } finally {
      lines.close();
      stream.destroy();
    }
    return { records: out, scanned, malformed };
  }

  /** The last `lines` matching records of the live file (those after `afterSeq` when given). */
  tail(q: AuditQuery): AuditRecord[] {
    let fd: number;
    try {
      fd = fs.openSync(this.live, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw new ApiError(404, 'ERR_NOT_FOUND', `cannot read the audit file (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
    }
    let text: string;
    try {
      const size = fs.fstatSync(fd).size;
      const start = Math.max(0, size - TAIL_BYTES);
      const buf = Buffer.alloc(size - start);
      fs.readSync(fd, buf, 0, buf.length, start);
      text = buf.toString('utf8');
      // A cut at the start leaves half a line: drop it. A record still being written has no newline yet.
      if (start > 0) text = text.slice(text.indexOf('\n') + 1);
      text = text.slice(0, text.lastIndexOf('\n') + 1);
    } finally {
      fs.closeSync(fd);
    }
    const out: AuditRecord[] = [];
    for (const line of text.split('\n')) {
      if (line.length === 0) continue;
      const rec = parseRecord(line);
      if (rec !== null && matches(rec, q)) out.push(rec);
    }
    return out.slice(-q.limit);
  }

  /** Size of the live file (0 when missing): a tail waits for it to grow. */
  liveSize(): number {
    try {
      return fs.statSync(this.live).size;
    } catch {
      return 0;
    }
  }
}

function matches(rec: AuditRecord, q: AuditQuery): boolean {
  if (q.afterSeq !== undefined && rec.seq <= q.afterSeq) return false;
  if (q.decision !== undefined && rec.decision !== q.decision) return false;
  return matchesFilter(rec, q);
}
