/**
 * Failed authentications per source address: a bucket of `burst` failures that refills at
 * `perMinute`. While an address's bucket is empty its requests get 429 before any token is
 * checked, so guessing costs the guesser time and the broker no argon2 work. Addresses are
 * tracked in a bounded map (the oldest forgotten first).
 */
const MAX_ADDRESSES = 10_000;

/** A throttled address's 429s are audited one per this window, with the count of those left out. */
const REFUSAL_AUDIT_MS = 10_000;

export class FailureThrottle {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private readonly refusals = new Map<string, { at: number; unaudited: number }>();

  constructor(
    private readonly burst: number,
    private readonly perMinute: number,
    private readonly now: () => number = Date.now,
  ) {}

  private level(address: string): { tokens: number; at: number } | undefined {
    const b = this.buckets.get(address);
    if (b === undefined) return undefined;
    const now = this.now();
    b.tokens = Math.min(this.burst, b.tokens + ((now - b.at) / 60_000) * this.perMinute);
    b.at = now;
    if (b.tokens >= this.burst) {
      this.buckets.delete(address);
      return undefined;
    }
    return b;
  }

  /** Seconds until the address may try again; 0 when it may now. */
  blockedFor(address: string): number {
    const b = this.level(address);
    if (b === undefined || b.tokens >= 1) return 0;
    return Math.ceil(((1 - b.tokens) * 60) / this.perMinute);
  }

  /**
   * For a 429 to this address: undefined when it is left out of the audit log (one is written
   * per address per 10 s), else how many were left out before it. A flood of requests from a
   * throttled address cannot flood the audit log.
   */
  refusalToAudit(address: string): number | undefined {
    const now = this.now();
    const r = this.refusals.get(address);
    if (r !== undefined && now - r.at < REFUSAL_AUDIT_MS) {
      r.unaudited++;
      return undefined;
    }
    if (r === undefined && this.refusals.size >= MAX_ADDRESSES) this.refusals.delete(this.refusals.keys().next().value as string);
    this.refusals.set(address, { at: now, unaudited: 0 });
    return r?.unaudited ?? 0;
  }

  failed(address: string): void {
    let b = this.level(address);
    if (b === undefined) {
      if (this.buckets.size >= MAX_ADDRESSES) this.buckets.delete(this.buckets.keys().next().value as string);
      b = { tokens: this.burst, at: this.now() };
      this.buckets.set(address, b);
    }
    b.tokens = Math.max(0, b.tokens - 1);
  }
}
