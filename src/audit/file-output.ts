/**
 * The audit file: appended with O_APPEND, mode 0600, rotated by size and age into
 * `<stem>.<UTC time>.jsonl` beside it, with old rotated files removed by count and age.
 * The file is opened synchronously at start so an unwritable path stops the broker with a
 * clear error instead of failing later.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../log.ts';
import type { AuditOutput } from './chained-sink.ts';
import { parseRecord, splitHash, type ChainTip } from './record.ts';
import type { AuditEvent } from './types.ts';
import { ensureDir } from '../util/fs.ts';

/** The two calls a disk failure shows up in; injectable so tests can simulate ENOSPC or EACCES. */
export interface AuditFileIO {
  write(fd: number, data: Buffer): Promise<void>;
  /** Several buffers in order; without it they are written one after the other. */
  writev?(fd: number, chunks: Buffer[]): Promise<void>;
  fsync(fd: number): Promise<void>;
}

export const nodeFileIO: AuditFileIO = {
  async write(fd, data) {
    let off = 0;
    while (off < data.length) {
      const { bytesWritten } = await new Promise<{ bytesWritten: number }>((resolve, reject) =>
        fs.write(fd, data, off, data.length - off, null, (err, n) => (err ? reject(err) : resolve({ bytesWritten: n }))),
      );
      off += bytesWritten;
    }
  },
  async writev(fd, chunks) {
    const total = chunks.reduce((n, c) => n + c.length, 0);
    const written = await new Promise<number>((resolve, reject) => fs.writev(fd, chunks, null, (err, n) => (err ? reject(err) : resolve(n))));
    if (written === total) return;
    // A short write (rare for a regular file): the rest, buffer by buffer.
    let skip = written;
    for (const c of chunks) {
      if (skip >= c.length) {
        skip -= c.length;
        continue;
      }
      await nodeFileIO.write(fd, skip > 0 ? c.subarray(skip) : c);
      skip = 0;
    }
  },
  fsync: (fd) => new Promise((resolve, reject) => fs.fsync(fd, (err) => (err ? reject(err) : resolve()))),
};

export interface FileOutputOptions {
  path: string;
  /** Rotate before a write would take the file past this size; 0 turns size rotation off. */
  maxBytes: number;
  /** Rotate when the file is older than this; 0 turns time rotation off. */
  intervalMs: number;
  /** Rotated files to keep; 0 keeps all. */
  maxFiles: number;
  /** Delete rotated files older than this; 0 keeps them whatever their age. */
  maxAgeMs: number;
  /** Retention deleting a file last written less than this long ago raises an alarm (log and audit); 0 never. */
  alarmMinAgeMs?: number;
  log: Logger;
  io?: AuditFileIO;
  /** Receives records about rotation and retention, to be written into the chain. */
  onEvent?: (event: AuditEvent) => void;
}

export class FileAuditOutput implements AuditOutput {
  /** Writes are complete when they resolve: the sink may reuse the buffers. */
  readonly releasesBuffers = true;
  readonly name: string;
  private fd: number | null;
  private size: number;
  private openedAt: number;
  private readonly io: AuditFileIO;

  constructor(private readonly options: FileOutputOptions) {
    this.name = options.path;
    this.io = options.io ?? nodeFileIO;
    ensureDir(path.dirname(options.path));
    const fd = fs.openSync(options.path, 'a+', 0o600); // throws on an unwritable path
    this.fd = fd;
    const stat = fs.fstatSync(fd);
    this.size = stat.size;
    this.openedAt = this.size === 0 ? Date.now() : (firstRecordTime(options.path) ?? stat.mtimeMs);
    if (this.size > 0 && lastByte(fd, this.size) !== 0x0a) {
      // The previous run died mid-record: start on a fresh line (verify will report the torn record).
      fs.writeSync(fd, '\n');
      this.size++;
      options.log.error({ file: options.path }, 'audit file ends with an incomplete record (crash or truncation); verify will report it');
    }
  }

  async prepare(batchBytes: number): Promise<void> {
    const { maxBytes, intervalMs } = this.options;
    if (this.fd === null) await this.reopen();
    const tooBig = maxBytes > 0 && this.size > 0 && this.size + batchBytes > maxBytes;
    const tooOld = intervalMs > 0 && this.size > 0 && Date.now() - this.openedAt >= intervalMs;
    if (tooBig || tooOld) await this.rotate(tooBig ? 'size' : 'age');
  }

  async write(data: Buffer): Promise<void> {
    if (this.fd === null) await this.reopen();
    await this.io.write(this.fd as number, data);
    this.size += data.length;
  }

  async writev(chunks: Buffer[]): Promise<void> {
    if (this.fd === null) await this.reopen();
    const fd = this.fd as number;
    if (this.io.writev !== undefined) await this.io.writev(fd, chunks);
    else for (const c of chunks) await this.io.write(fd, c);
    for (const c of chunks) this.size += c.length;
  }

  /** Cuts a partly written batch off before it is retried, so no torn record stays in the file. */
  async rollback(): Promise<void> {
    if (this.fd === null) return;
    const fd = this.fd;
    // A failed truncation fails the retry (it is tried again), so a torn record never stays.
    await new Promise<void>((resolve, reject) => fs.ftruncate(fd, this.size, (err) => (err ? reject(err) : resolve())));
  }

  async sync(): Promise<void> {
    if (this.fd !== null) await this.io.fsync(this.fd);
  }

  async close(): Promise<void> {
    if (this.fd === null) return;
    const fd = this.fd;
    this.fd = null;
    await new Promise<void>((resolve) => fs.close(fd, () => resolve()));
  }

  private async reopen(): Promise<void> {
    this.fd = await new Promise<number>((resolve, reject) => fs.open(this.options.path, 'a', 0o600, (err, fd) => (err ? reject(err) : resolve(fd))));
    this.size = (await fsp.stat(this.options.path)).size;
    this.openedAt = Date.now();
  }

  private async rotate(why: 'size' | 'age'): Promise<void> {
    const fd = this.fd as number;
    await this.io.fsync(fd);
    const target = await freeRotatedName(this.options.path);
    await fsp.rename(this.options.path, target);
    this.fd = null;
    await new Promise<void>((resolve) => fs.close(fd, () => resolve()));
    await this.reopen();
    this.options.onEvent?.({ event: 'audit', action: 'rotate', decision: 'allow', reason: `rotated by ${why}`, detail: { file: path.basename(target) } });
    await this.applyRetention();
  }

  /** Logs the alarm before a young file is deleted, and returns the record that says so. */
  private async youngFileAlarm(file: string): Promise<AuditEvent | null> {
    const min = this.options.alarmMinAgeMs ?? 0;
    if (min <= 0) return null;
    const st = await fsp.stat(file).catch(() => null);
    if (st === null) return null;
    const alarm = retentionAlarm(file, st.mtimeMs, Date.now(), min);
    if (alarm !== null) {
      this.options.log.error(
        { file, ageSeconds: alarm.detail?.ageSeconds, alarmMinAgeHours: min / 3_600_000 },
        'AUDIT RETENTION ALARM: retention is deleting a rotated audit file younger than audit.retention.alarmMinAgeHours: records arrive faster than retention keeps them (a flood?)',
      );
    }
    return alarm;
  }

  private async applyRetention(): Promise<void> {
    const { maxFiles, maxAgeMs, log } = this.options;
    const rotated = listRotatedFiles(this.options.path);
    const doomed = new Set<string>();
    if (maxFiles > 0 && rotated.length > maxFiles) for (const f of rotated.slice(0, rotated.length - maxFiles)) doomed.add(f);
    if (maxAgeMs > 0) {
      for (const f of rotated) {
        const st = await fsp.stat(f).catch(() => null);
        if (st !== null && Date.now() - st.mtimeMs > maxAgeMs) doomed.add(f);
      }
    }
    for (const f of doomed) {
      const alarm = await this.youngFileAlarm(f);
      try {
        await fsp.unlink(f);
        log.info({ file: f }, 'audit retention: removed an old rotated file');
        // One record either way: the alarm is the retention record (a record more per rotation
        // would make each rotation write more of what makes files rotate).
        this.options.onEvent?.(alarm ?? { event: 'audit', action: 'retention', decision: 'allow', reason: 'rotated file removed by retention', detail: { file: path.basename(f) } });
      } catch (err) {
        log.error({ file: f, err: (err as NodeJS.ErrnoException).code }, 'audit retention: cannot remove an old rotated file');
      }
    }
  }
}

/**
 * Retention is there to bound the disk, not to erase recent history: a file it deletes that was
 * written to less than `alarmMinAgeMs` ago means records arrive far faster than retention was
 * sized for (a flood, or a misconfiguration), and that recent evidence is going. Said loudly in
 * the log and in the chain, before the file goes.
 */
export function retentionAlarm(file: string, mtimeMs: number, now: number, alarmMinAgeMs: number): AuditEvent | null {
  const ageMs = now - mtimeMs;
  if (alarmMinAgeMs <= 0 || ageMs >= alarmMinAgeMs) return null;
  const ageSeconds = Math.max(0, Math.round(ageMs / 1000));
  return {
    event: 'audit',
    action: 'retention-alarm',
    decision: 'deny',
    reason: `retention removed a rotated file last written ${ageSeconds} s ago`,
    detail: { file: path.basename(file), ageSeconds, alarmMinAgeHours: alarmMinAgeMs / 3_600_000 },
  };
}

/** `audit.jsonl` → `audit.<time>.jsonl`, the stem and extension of rotated files. */
function splitName(file: string): { dir: string; stem: string; ext: string } {
  const dir = path.dirname(file);
  const base = path.basename(file);
  const ext = path.extname(base);
  return { dir, stem: ext ? base.slice(0, -ext.length) : base, ext };
}

const ROTATED_TIME = /^\d{8}T\d{9}Z(-\d+)?$/;

async function freeRotatedName(file: string): Promise<string> {
  const { dir, stem, ext } = splitName(file);
  const stamp = new Date().toISOString().replace(/[-:.]/g, '');
  for (let i = 0; ; i++) {
    const candidate = path.join(dir, `${stem}.${stamp}${i === 0 ? '' : `-${i}`}${ext}`);
    if (!fs.existsSync(candidate)) return candidate;
  }
}

/** The rotated files of an audit file, oldest first. */
export function listRotatedFiles(file: string): string[] {
  const { dir, stem, ext } = splitName(file);
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  return names
    .filter((n) => n.startsWith(`${stem}.`) && n.endsWith(ext) && ROTATED_TIME.test(n.slice(stem.length + 1, n.length - ext.length)))
    .sort(compareRotated)
    .map((n) => path.join(dir, n));
}

function compareRotated(a: string, b: string): number {
  const key = (n: string) => n.replace(/(-\d+)?(\.[^.]*)?$/, (_m, dup: string | undefined) => `#${(dup ?? '-0').slice(1).padStart(6, '0')}`);
  return key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0;
}

/** Every file of an audit log in chain order: rotated files oldest first, then the live file. */
export function chainFiles(file: string): string[] {
  return [...listRotatedFiles(file), ...(fs.existsSync(file) ? [file] : [])];
}

function lastByte(fd: number, size: number): number {
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, size - 1);
  return b[0] as number;
}

function firstRecordTime(file: string): number | undefined {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(4096);
    const n = fs.readSync(fd, buf, 0, buf.length, 0);
    const line = buf.subarray(0, n).toString('utf8').split('\n')[0] ?? '';
    const rec = parseRecord(line);
    const t = rec === null ? NaN : Date.parse(rec.time);
    return Number.isNaN(t) ? undefined : t;
  } finally {
    fs.closeSync(fd);
  }
}

/** The last well-formed, hashed record of a file, read from its end; null when it has none. */
export function lastRecordOf(file: string): ChainTip | null {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch {
    return null;
  }
  try {
    const size = fs.fstatSync(fd).size;
    for (let window = 64 * 1024; ; window *= 4) {
      const start = Math.max(0, size - window);
      const buf = Buffer.alloc(size - start);
      fs.readSync(fd, buf, 0, buf.length, start);
      const lines = buf.toString('utf8').split('\n');
      if (start > 0) lines.shift(); // probably a partial line
      for (let i = lines.length - 1; i >= 0; i--) {
        const line = lines[i] as string;
        if (line.length === 0) continue;
        const rec = parseRecord(line);
        if (rec !== null && splitHash(line) !== null) return { seq: rec.seq, hash: rec.hash };
      }
      if (start === 0) return null;
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Where to continue the chain after a restart: the live file's last record, else the newest rotated file's. */
export function findChainTip(file: string): { tip: ChainTip; from: string } | null {
  for (const f of [file, ...listRotatedFiles(file).reverse()]) {
    const tip = lastRecordOf(f);
    if (tip !== null) return { tip, from: f };
  }
  return null;
}
