/**
 * A cap on credential checks (argon2 verifications) running at once, and on those waiting to
 * run. argon2 runs on libuv's thread pool, which the audit log's file writes, file reads and
 * WebCrypto (JWT signatures) share; the pool's queue is first come, first served and unbounded.
 * A login flood would otherwise queue thousands of 50 ms hashes in front of every audit write.
 * With at most `maxRunning` checks on the pool (one thread fewer than the pool has), one thread
 * is always free for everything else; beyond `maxWaiting` waiting checks a connect is refused at
 * once (0x88) instead of joining an ever longer queue. See docs/performance.md.
 */
import os from 'node:os';

/** libuv's pool size: UV_THREADPOOL_SIZE (clamped to 1..1024 by libuv), 4 when unset. */
export function threadPoolSize(env: NodeJS.ProcessEnv = process.env): number {
  const n = Number.parseInt(env.UV_THREADPOOL_SIZE ?? '', 10);
  return Number.isFinite(n) && n > 0 ? Math.min(n, 1024) : 4;
}

/** One thread fewer than the pool, and no more than the CPUs (argon2 is CPU-bound): at least 1. */
export function defaultMaxRunning(): number {
  return Math.max(1, Math.min(threadPoolSize() - 1, os.availableParallelism()));
}

interface Waiter {
  resolve(ok: boolean): void;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

export class CheckQueue {
  private running = 0;
  private readonly waiting: Waiter[] = [];
  private head = 0;
  /** Connects refused because the queue was full, since start. */
  refused = 0;
  /** The longest the queue of waiting checks has been, since start. */
  peakWaiting = 0;

  constructor(
    readonly maxRunning: number,
    readonly maxWaiting: number,
  ) {}

  get stats(): { running: number; waiting: number; refused: number; peakWaiting: number } {
    return { running: this.running, waiting: this.waitingCount, refused: this.refused, peakWaiting: this.peakWaiting };
  }

  get waitingCount(): number {
    return this.waiting.length - this.head;
  }

  /**
   * A slot: `true` at once, `'full'` when the queue is full (nothing was taken), or a promise
   * that resolves true when a slot is handed over, false when `signal` aborted first. Every
   * `true` must be followed by exactly one release().
   */
  acquire(signal?: AbortSignal): true | 'full' | Promise<boolean> {
    if (this.running < this.maxRunning && this.waitingCount === 0) {
      this.running++;
      return true;
    }
    if (this.waitingCount >= this.maxWaiting) {
      this.refused++;
      return 'full';
    }
    return new Promise<boolean>((resolve) => {
      const w: Waiter = { resolve, signal, onAbort: undefined };
      if (signal !== undefined) {
        w.onAbort = () => {
          const i = this.waiting.indexOf(w, this.head);
          if (i >= 0) this.waiting.splice(i, 1);
          resolve(false);
        };
        signal.addEventListener('abort', w.onAbort, { once: true });
      }
      this.waiting.push(w);
      this.peakWaiting = Math.max(this.peakWaiting, this.waitingCount);
    });
  }

  /** Ends a check: the slot goes to the first waiter, if any. */
  release(): void {
    const next = this.waiting[this.head];
    if (next === undefined) {
      this.running = Math.max(0, this.running - 1);
      return;
    }
    this.waiting[this.head] = undefined as unknown as Waiter;
    this.head++;
    if (this.head > 1024 && this.head * 2 > this.waiting.length) {
      this.waiting.splice(0, this.head);
      this.head = 0;
    }
    if (next.onAbort !== undefined) next.signal?.removeEventListener('abort', next.onAbort);
    next.resolve(true);
  }
}
