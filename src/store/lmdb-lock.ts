/**
 * One process per store. LMDB itself lets many processes share a data file, so two brokers
 * started on one folder would both run and undo each other's sessions. The lock is a file
 * created with O_EXCL that names its holder: pid, host and (on Linux) the process start time,
 * so a pid reused after a crash is not mistaken for the old holder. A lock whose holder is gone
 * (kill -9, power cut) is stale and taken over, and the takeover is reported.
 *
 * A lock held by a process of this host that is still running is never broken. The store must be
 * on a local filesystem (LMDB requires it too); on a network filesystem two hosts could not see
 * each other's processes.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { StoreError } from './errors.ts';
import { LOCK_FILE, syncFolder } from './lmdb-files.ts';

export interface LockHolder {
  pid: number;
  host: string;
  /** When the holder took the lock (ISO time). */
  since: string;
  /** Linux: the holder's start time in clock ticks since boot (/proc/<pid>/stat field 22). */
  procStart?: string;
}

/** In this process: folders whose lock we hold, so a second Store here is refused too. */
const heldHere = new Set<string>();

/** Linux: fields 3 onwards of /proc/<pid>/stat (state first), or undefined elsewhere. */
function procStat(pid: number): string[] | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

function procStart(pid: number): string | undefined {
  return procStat(pid)?.[19];
}

function alive(holder: LockHolder): boolean {
  // Our own pid but not in heldHere: a previous process with the same pid (a container's pid 1).
  if (holder.pid === process.pid) return false;
  try {
    process.kill(holder.pid, 0);
  } catch (err) {
    // EPERM: the process exists but belongs to another user.
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  const stat = procStat(holder.pid);
  // A zombie has ended: its parent has not collected it yet (a container's init that reaps no
  // orphans), and kill(pid, 0) still succeeds on it.
  if (stat?.[0] === 'Z' || stat?.[0] === 'X') return false;
  if (holder.procStart === undefined) return true;
  const now = stat?.[19];
  return now === undefined || now === holder.procStart;
}

function parse(text: string): LockHolder | undefined {
  try {
    const h = JSON.parse(text) as Partial<LockHolder>;
    if (typeof h.pid === 'number' && typeof h.host === 'string' && typeof h.since === 'string') return h as LockHolder;
  } catch {
    // fall through
  }
  return undefined;
}

export class StoreLock {
  private constructor(
    readonly file: string,
    private readonly dir: string,
    private readonly content: string,
    /** The holder of a stale lock this one replaced (an unclean stop), if any. */
    readonly replaced: LockHolder | undefined,
  ) {}

  /** Takes the lock on `dir`; throws StoreError ERR_STORE_LOCKED naming the folder and the holder. */
  static acquire(dir: string): StoreLock {
    const key = fs.realpathSync(dir);
    const file = path.join(dir, LOCK_FILE);
    if (heldHere.has(key)) {
      throw new StoreError('ERR_STORE_LOCKED', `the store ${dir} is already open in this process`, file);
    }
    const me: LockHolder = { pid: process.pid, host: os.hostname(), since: new Date().toISOString() };
    const start = procStart(process.pid);
    if (start !== undefined) me.procStart = start;
    const content = `${JSON.stringify(me)}\n`;
    let replaced: LockHolder | undefined;
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        const fd = fs.openSync(file, 'wx', 0o600);
        try {
          fs.writeFileSync(fd, content);
          fs.fsyncSync(fd);
        } finally {
          fs.closeSync(fd);
        }
        syncFolder(dir);
        heldHere.add(key);
        return new StoreLock(file, key, content, replaced);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
          throw new StoreError('ERR_STORE_LOCKED', `cannot create the lock file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, file, { cause: err });
        }
      }
      let text: string;
      let age: number;
      try {
        text = fs.readFileSync(file, 'utf8');
        age = Date.now() - fs.statSync(file).mtimeMs;
      } catch {
        continue; // removed meanwhile: try again
      }
      const holder = parse(text);
      if (holder === undefined && age < 2000) {
        // Another process is between creating the file and writing it.
        sleep(50);
        continue;
      }
      if (holder !== undefined && alive(holder)) {
        throw new StoreError(
          'ERR_STORE_LOCKED',
          `the store ${dir} is in use by process ${holder.pid} on ${holder.host} (since ${holder.since}); two brokers cannot share a store. If that process is not a broker, remove ${file}`,
          file,
        );
      }
      // Stale: move it aside, and check that what moved is what was judged stale, not a fresh
      // lock a concurrent starter wrote in between (then put that one back).
      const aside = `${file}.stale-${randomBytes(4).toString('hex')}`;
      try {
        fs.renameSync(file, aside);
      } catch {
        continue;
      }
      const moved = fs.readFileSync(aside, 'utf8');
      if (moved !== text) {
        try {
          fs.linkSync(aside, file);
        } catch {
          // Someone else holds it now; the next round reports them.
        }
        fs.rmSync(aside, { force: true });
        continue;
      }
      fs.rmSync(aside, { force: true });
      replaced = holder ?? { pid: 0, host: 'unknown', since: 'unknown (unreadable lock file)' };
    }
    throw new StoreError('ERR_STORE_LOCKED', `cannot take the lock ${file}: other processes keep taking it`, file);
  }

  /** Releases the lock if the file is still ours. */
  release(): void {
    heldHere.delete(this.dir);
    try {
      if (fs.readFileSync(this.file, 'utf8') === this.content) fs.rmSync(this.file);
    } catch {
      // Already gone.
    }
  }

  /** Who holds the lock on `dir` now, if anyone alive (for the CLI tools' messages). */
  static holder(dir: string): LockHolder | undefined {
    try {
      const h = parse(fs.readFileSync(path.join(dir, LOCK_FILE), 'utf8'));
      return h !== undefined && alive(h) ? h : undefined;
    } catch {
      return undefined;
    }
  }
}

function sleep(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}
