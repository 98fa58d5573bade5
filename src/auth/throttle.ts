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
 * Every map is bounded ({@link Generations}): the entries touched least recently are dropped
 * first. Memory per entry is measured in docs/performance.md.
 */
import { Generations } from '../util/generations.ts';

export interface ThrottleSettings {
  backoffAfter: number;
  baseDelayMs: number;
  maxDelayMs: number;
}

export class ThrottleEntry {
  constructor(readonly key: string) {}
  failures = 0;
  /** Checks admitted on this key whose outcome is not known yet. */
  pending = 0;
  /** While throttled, no check may start before this time (epoch ms). */
  next = 0;
  lastFailure = 0;
}

export class FailureThrottle {
  private readonly entries: Generations<ThrottleEntry>;

  constructor(
    readonly settings: ThrottleSettings,
    private readonly forgetAfterMs: number,
    maxEntries: number,
  ) {
    this.entries = new Generations(maxEntries);
  }

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

  /**
   * A check on a reserved entry ended; `failed` counts it. An entry without failures stays for
   * the next connect of the same key (most logins repeat one) until the sweep drops it.
   */
  settle(e: ThrottleEntry, failed: boolean, now: number): void {
    if (e.pending > 0) e.pending--;
    if (failed) this.count(e, now);
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

  /** Drops entries with nothing left to remember. */
  sweep(now: number): void {
    this.entries.deleteWhere((e) => e.pending === 0 && now - e.lastFailure > this.forgetAfterMs);
  }

  private count(e: ThrottleEntry, now: number): void {
    e.failures++;
    e.lastFailure = now;
    e.next = Math.max(e.next, now + this.delay(e.failures));
    // A key that keeps failing stays young (and is kept); one evicted meanwhile stays out.
    if (this.entries.get(e.key) === e) this.entries.set(e.key, e);
  }

  private create(key: string): ThrottleEntry {
    const e = new ThrottleEntry(key);
    this.entries.set(key, e);
    return e;
  }
}

/**
 * Credential checks per second per address, as a token bucket in its GCRA form: one number per
 * address, the theoretical arrival time. A booking in the future is a reservation for a held
 * attempt.
 */
export class CheckRate {
  /** Per address, its theoretical arrival time, in a box so a refund needs no second map write. */
  private readonly tat: Generations<{ t: number }>;
  private readonly interval: number;
  private readonly tolerance: number;

  constructor(
    readonly perSecond: number,
    readonly burst: number,
    maxEntries: number,
  ) {
    this.interval = perSecond > 0 ? 1000 / perSecond : 0;
    this.tolerance = (burst - 1) * this.interval;
    this.tat = new Generations(maxEntries);
  }

  get enabled(): boolean {
    return this.perSecond > 0;
  }

  /** The earliest time a check from this address may start. */
  earliest(key: string, now: number): number {
    const b = this.tat.get(key);
    if (b === undefined) return now;
    return Math.max(now, b.t - this.tolerance);
  }

  /** Takes a token for a check starting at `start` (not before `earliest`). */
  take(key: string, start: number): void {
    const b = this.tat.get(key);
    if (b === undefined) return this.tat.set(key, { t: start + this.interval });
    b.t = Math.max(b.t, start) + this.interval;
    this.tat.set(key, b); // an address in use stays young
  }

  /** Gives a token back (the check succeeded, or never ran). */
  refund(key: string): void {
    const b = this.tat.get(key);
    if (b !== undefined) b.t -= this.interval;
  }

  get size(): number {
    return this.tat.size;
  }

  /** Drops addresses whose bucket is full again. */
  sweep(now: number): void {
    this.tat.deleteWhere((b) => b.t <= now);
  }
}

/**
 * Clients that logged in, and when: by (address, user name) pair, then by client id, at most
 * `perPair` client ids per pair (the most recent). Keyed in two steps so a connect adds no key
 * string of its own: the pair key is the one the throttle uses, the client id the one it sent.
 */
export class KnownGood {
  private readonly pairs: Generations<Map<string, number>>;

  constructor(
    private readonly windowMs: number,
    maxPairs: number,
    private readonly perPair = 16,
  ) {
    this.pairs = new Generations(maxPairs);
  }

  has(pairKey: string, clientId: string, now: number): boolean {
    const t = this.pairs.get(pairKey)?.get(clientId);
    return t !== undefined && now - t <= this.windowMs;
  }

  add(pairKey: string, clientId: string, now: number): void {
    let ids = this.pairs.get(pairKey);
    if (ids === undefined) ids = new Map();
    ids.delete(clientId); // re-inserted: the map's order is the order of last success
    ids.set(clientId, now);
    if (ids.size > this.perPair) ids.delete(ids.keys().next().value as string);
    this.pairs.set(pairKey, ids); // a pair in use stays young
  }

  /** Pairs remembered. */
  get size(): number {
    return this.pairs.size;
  }

  sweep(now: number): void {
    this.pairs.deleteWhere((ids) => {
      for (const [id, t] of ids) if (now - t > this.windowMs) ids.delete(id);
      return ids.size === 0;
    });
  }
}
