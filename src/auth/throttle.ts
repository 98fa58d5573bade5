/**
 * The failed-login guard's bookkeeping, one small structure per kind of key:
 *
 * - {@link FailureThrottle}: failures on a key (a pair of address and user name, a user name, a
 *   known-good client) space out the credential checks on it. `backoffAfter` failures are free;
 *   after that each check waits `baseDelayMs × 2^(n − backoffAfter)` (capped) after the one
 *   before. Checks still running hold a reservation, so parallel attempts cannot all start
 *   before the first of them has failed.
 * - {@link CheckRate}: a token bucket (GCRA) of credential checks per source address. A check
 *   that succeeds gives its token back, so it caps failed checks and checks in flight.
 * - {@link KnownGood}: when a (source address, user name, client id) last logged in.
 *
 * Every map is bounded; the entries touched least recently are dropped first. Memory per entry
 * is measured in docs/performance.md.
 */

export interface ThrottleSettings {
  backoffAfter: number;
  baseDelayMs: number;
  maxDelayMs: number;
}

export class ThrottleEntry {
  failures = 0;
  /** Checks admitted on this key whose outcome is not known yet. */
  pending = 0;
  /** While throttled, no check may start before this time (epoch ms). */
  next = 0;
  lastFailure = 0;
}

export class FailureThrottle {
  private readonly entries = new Map<string, ThrottleEntry>();

  constructor(
    readonly settings: ThrottleSettings,
    private readonly forgetAfterMs: number,
    private readonly maxEntries: number,
  ) {}

  /** The key's entry, with failures forgotten after a quiet `forgetAfterMs`. */
  get(key: string, now: number): ThrottleEntry | undefined {
    const e = this.entries.get(key);
    if (e !== undefined && e.failures > 0 && e.pending === 0 && now - e.lastFailure > this.forgetAfterMs) {
      e.failures = 0;
      e.next = 0;
    }
    return e;
  }

  /** The space before the next check once `failures` checks on the key have failed. */
  delay(failures: number): number {
    const s = this.settings;
    if (failures < s.backoffAfter) return 0;
    return Math.min(s.maxDelayMs, s.baseDelayMs * 2 ** Math.min(failures - s.backoffAfter, 40));
  }

  /** The earliest time a new check on this key may start: now, unless the key is throttled. */
  earliest(e: ThrottleEntry | undefined, now: number): number {
    if (e === undefined || e.failures + e.pending < this.settings.backoffAfter) return now;
    return Math.max(now, e.next);
  }

  /** Books a check that starts at `start`; the next one waits as if this one failed. */
  reserve(key: string, e: ThrottleEntry | undefined, start: number): ThrottleEntry {
    const entry = e ?? this.create(key);
    entry.pending++;
    entry.next = Math.max(entry.next, start + this.delay(entry.failures + entry.pending));
    return entry;
  }

  /** A check on a reserved entry ended; `failed` counts it. An entry with nothing to remember is dropped. */
  settle(e: ThrottleEntry, failed: boolean, now: number): void {
    if (e.pending > 0) e.pending--;
    if (failed) return this.count(e, now);
    if (e.failures === 0 && e.pending === 0) {
      const key = keyOf.get(e);
      if (key !== undefined && this.entries.get(key) === e) this.entries.delete(key);
    }
  }

  /** Counts a failure on a key that no check was reserved on (a known-good client's failure on its pair). */
  fail(key: string, now: number): ThrottleEntry {
    const e = this.get(key, now) ?? this.create(key);
    this.count(e, now);
    return e;
  }

  get size(): number {
    return this.entries.size;
  }

  /** Drops entries with nothing left to remember (called from the guard's sweep). */
  sweep(now: number): void {
    // The map is in the order of the last failure: stop at the first one still remembered.
    for (const [key, e] of this.entries) {
      if (e.pending > 0) continue;
      if (now - e.lastFailure <= this.forgetAfterMs) break;
      this.entries.delete(key);
    }
  }

  private count(e: ThrottleEntry, now: number): void {
    e.failures++;
    e.lastFailure = now;
    e.next = Math.max(e.next, now + this.delay(e.failures));
    this.touch(e);
  }

  private create(key: string): ThrottleEntry {
    const e = new ThrottleEntry();
    this.entries.set(key, e);
    keyOf.set(e, key);
    while (this.entries.size > this.maxEntries) {
      const oldest = this.entries.keys().next().value as string;
      this.entries.delete(oldest);
    }
    return e;
  }

  /** Moves the entry to the back of the eviction order (the map keeps insertion order). */
  private touch(e: ThrottleEntry): void {
    const key = keyOf.get(e);
    if (key === undefined || this.entries.get(key) !== e) return; // evicted meanwhile
    this.entries.delete(key);
    this.entries.set(key, e);
  }
}

const keyOf = new WeakMap<ThrottleEntry, string>();

/**
 * Credential checks per second per address, as a token bucket in its GCRA form: one number per
 * address, the theoretical arrival time. A booking in the future is a reservation for a held
 * attempt.
 */
export class CheckRate {
  private readonly tat = new Map<string, number>();
  private readonly interval: number;
  private readonly tolerance: number;

  constructor(
    readonly perSecond: number,
    readonly burst: number,
    private readonly maxEntries: number,
  ) {
    this.interval = perSecond > 0 ? 1000 / perSecond : 0;
    this.tolerance = (burst - 1) * this.interval;
  }

  get enabled(): boolean {
    return this.perSecond > 0;
  }

  /** The earliest time a check from this address may start. */
  earliest(key: string, now: number): number {
    const tat = this.tat.get(key);
    if (tat === undefined) return now;
    return Math.max(now, tat - this.tolerance);
  }

  /** Takes a token for a check starting at `start` (not before `earliest`). */
  take(key: string, start: number): void {
    const tat = this.tat.get(key);
    if (tat === undefined) {
      this.tat.set(key, start + this.interval);
      while (this.tat.size > this.maxEntries) this.tat.delete(this.tat.keys().next().value as string);
      return;
    }
    this.tat.set(key, Math.max(tat, start) + this.interval);
  }

  /** Gives a token back (the check succeeded, or never ran). */
  refund(key: string): void {
    const tat = this.tat.get(key);
    if (tat !== undefined) this.tat.set(key, tat - this.interval);
  }

  get size(): number {
    return this.tat.size;
  }

  /** Drops addresses whose bucket is full again. */
  sweep(now: number): void {
    for (const [key, tat] of this.tat) if (tat <= now) this.tat.delete(key);
  }
}

/** Clients (address, user name, client id) that logged in, and when; least recently successful dropped first. */
export class KnownGood {
  private readonly last = new Map<string, number>();

  constructor(
    private readonly windowMs: number,
    private readonly maxEntries: number,
  ) {}

  has(key: string, now: number): boolean {
    const t = this.last.get(key);
    return t !== undefined && now - t <= this.windowMs;
  }

  add(key: string, now: number): void {
    // Re-inserted so the map's order is the order of last success.
    this.last.delete(key);
    this.last.set(key, now);
    if (this.last.size > this.maxEntries) this.last.delete(this.last.keys().next().value as string);
  }

  get size(): number {
    return this.last.size;
  }

  sweep(now: number): void {
    for (const [key, t] of this.last) {
      if (now - t <= this.windowMs) break;
      this.last.delete(key);
    }
  }
}
