/**
 * Admin actions taken with the `portcullis` CLI (issuing or revoking certificates, editing a
 * password file, reloading a policy, bans) reach the audit log through a spool directory: the
 * CLI writes one small JSON file per action (atomically: temporary name, then rename), and the
 * broker, which alone writes the hash-chained log, turns each file into an `admin` record and
 * deletes it. A broker that is not running picks the files up when it next starts, so an
 * action is never lost; a file it cannot read is renamed `*.bad` and recorded as a denial,
 * never dropped silently.
 *
 * The spool is `audit-spool/` beside the audit file (`audit.path`); the CLI takes it from
 * `--audit-spool` (default `data/audit-spool`, matching the default `audit.path`).
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ensureDir, writeAtomic } from '../util/fs.ts';
import type { AuditEvent } from './types.ts';

/** The spool directory that belongs to an audit file. */
export function spoolDirFor(auditPath: string): string {
  return path.join(path.dirname(auditPath), 'audit-spool');
}

/** What the CLI records: the command and its non-secret arguments. */
export interface AdminAction {
  /** e.g. `pki revoke`, `passwd add`. */
  command: string;
  /** Positional arguments and options, never a secret (passwords come from stdin, keys go to files). */
  args: string[];
}

const MAX_FILE_BYTES = 16 * 1024;
const MAX_ARG_CHARS = 512;

/** Writes one action to the spool; returns the file written. */
export function spoolAdminAction(dir: string, action: AdminAction): string {
  ensureDir(dir, 0o700);
  let user = 'unknown';
  try {
    user = os.userInfo().username;
  } catch {
    // no passwd entry for this uid (containers): keep 'unknown'
  }
  const body = {
    v: 1,
    time: new Date().toISOString(),
    command: action.command.slice(0, 100),
    args: action.args.slice(0, 32).map((a) => a.slice(0, MAX_ARG_CHARS)),
    osUser: user,
    pid: process.pid,
  };
  const name = `${Date.now().toString().padStart(15, '0')}-${process.pid}-${randomBytes(4).toString('hex')}`;
  const file = path.join(dir, `${name}.json`);
  writeAtomic(file, JSON.stringify(body), 0o600);
  return file;
}

/** Turns spool files into `admin` audit records, oldest first; runs at start, on change, and every few seconds. */
export class AdminSpool {
  private watcher: fs.FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private draining = false;
  /** Files already recorded, so a file that cannot be deleted is never recorded twice. */
  private readonly handled = new Set<string>();
  private readWarned = false;
  ingested = 0;

  constructor(
    readonly dir: string,
    private readonly record: (event: AuditEvent) => void,
    private readonly warn: (message: string) => void,
    /** Files are taken only while the sink can write, and deleted only once it has flushed. */
    private readonly sink: { healthy(): boolean; flush(): Promise<void> },
    private readonly pollMs = 2000,
  ) {}

  start(): void {
    try {
      ensureDir(this.dir, 0o700);
    } catch (err) {
      this.warn(`admin audit spool ${this.dir} cannot be created (${(err as Error).message}): CLI actions are not audited until it exists`);
    }
    void this.drain();
    try {
      this.watcher = fs.watch(this.dir, () => void this.drain());
      this.watcher.on('error', () => undefined);
    } catch {
      // no watch on this file system: the poll below still picks files up
    }
    this.timer = setInterval(() => void this.drain(), this.pollMs);
    this.timer.unref();
  }

  async close(): Promise<void> {
    this.watcher?.close();
    if (this.timer !== undefined) clearInterval(this.timer);
    await this.drain();
  }

  /**
   * Records every complete spool file, oldest first, then deletes them once the sink has
   * flushed: a crash or a failing disk before that leaves the files for the next drain.
   */
  async drain(): Promise<void> {
    if (this.draining || !this.sink.healthy()) return;
    this.draining = true;
    try {
      let names: string[];
      try {
        names = fs.readdirSync(this.dir).filter((n) => n.endsWith('.json') && !this.handled.has(n)).sort();
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'ENOENT' && !this.readWarned) {
          this.readWarned = true;
          this.warn(`admin audit spool ${this.dir} cannot be read (${code ?? (err as Error).message}): CLI actions are not audited until it can`);
        }
        return;
      }
      const done: string[] = [];
      for (const name of names) if (this.ingest(path.join(this.dir, name), name)) done.push(name);
      if (done.length === 0) return;
      await this.sink.flush();
      for (const name of done) {
        try {
          fs.unlinkSync(path.join(this.dir, name));
        } catch {
          // already gone, or not ours to delete: `handled` keeps it from being recorded again
        }
      }
    } catch (err) {
      this.warn(`admin audit spool: ${(err as Error).message}; the files stay for the next attempt`);
    } finally {
      this.draining = false;
    }
  }

  /** Records one file; true when it was recorded (and may be deleted after the flush). */
  private ingest(file: string, name: string): boolean {
    let parsed: unknown;
    try {
      const st = fs.statSync(file);
      if (st.size > MAX_FILE_BYTES) throw new Error(`larger than ${MAX_FILE_BYTES} bytes`);
      parsed = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      this.reject(file, name, (err as Error).message);
      return false;
    }
    const a = parsed as Partial<{ time: string; command: string; args: string[]; osUser: string; pid: number }>;
    if (typeof a !== 'object' || a === null || typeof a.command !== 'string' || !Array.isArray(a.args) || !a.args.every((x) => typeof x === 'string') || typeof a.time !== 'string') {
      this.reject(file, name, 'not an admin action record');
      return false;
    }
    this.record({
      event: 'admin',
      action: a.command,
      decision: 'allow',
      reason: `portcullis ${a.command}${a.args.length > 0 ? ` ${a.args.join(' ')}` : ''}`,
      detail: { cliTime: a.time, osUser: String(a.osUser ?? 'unknown'), pid: Number(a.pid ?? 0), spoolFile: name },
    });
    this.ingested++;
    this.handled.add(name);
    return true;
  }

  private reject(file: string, name: string, why: string): void {
    this.handled.add(name);
    this.record({ event: 'admin', action: 'spool', decision: 'deny', reason: `unreadable admin spool file kept as ${name}.bad: ${why}`, detail: { spoolFile: name } });
    this.warn(`admin audit spool: ${name} is unreadable (${why}); renamed to ${name}.bad`);
    try {
      fs.renameSync(file, `${file}.bad`);
    } catch {
      // gone meanwhile
    }
  }
}
