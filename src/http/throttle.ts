/**
 * Failed authentications on the operations listener, throttled by what was guessed, so that
 * guessing costs the guesser time and the broker no argon2 work, and nobody holding a valid
 * credential is locked out by someone else's failures (many operators share one address behind
 * NAT, and a hostile page in an operator's browser shares the operator's address):
 *
 * - a request naming a token id that exists (`pct_<id>_...`) is judged on that token's own
 *   failures only: a bucket per token id. A (token id, address) pair that authenticated within
 *   the last 24 h is known good: it is judged on the failures of that same pair only, so
 *   someone who knows a token's id (ids are in audit records) cannot lock its holder out;
 * - any other request that fails (no credentials, a malformed header, an unknown token id, a
 *   bad client certificate) is judged on its source address;
 * - a verified client certificate is not throttled (nothing is guessed, and it is identified
 *   by the TLS handshake before any throttle is asked).
 *
 * Each bucket holds `burst` failures and refills at `perMinute`; while it is empty, requests
 * judged on it get 429 before any token is checked. An attempt takes its unit from the bucket
 * before the check runs (`attempt`), and a success gives it back: so requests pipelined in one
 * TCP chunk, all admitted before the first check ends, cannot run more than `burst` checks per
 * refill between them. Every map is bounded by two generations (util/generations.ts: what was
 * touched least recently is forgotten first, in O(1)), as the MQTT side's guard bounds its own.
 */

import { Generations } from '../util/generations.ts';

/** Most entries of each map (addresses, token ids, pairs, known-good pairs). */
const MAX_ENTRIES = 10_000;
const KNOWN_GOOD_MS = 24 * 3600_000;

interface Bucket {
  tokens: number;
  at: number;
}

/** Buckets of failures by key, in a bounded map; a full bucket is forgotten. */
class Buckets {
  private readonly map = new Generations<Bucket>(MAX_ENTRIES);

  constructor(
    private readonly burst: number,
    private readonly perMinute: number,
    private readonly now: () => number,
  ) {}

  get size(): number {
    return this.map.size;
  }

  private level(key: string): Bucket | undefined {
    const b = this.map.use(key);
    if (b === undefined) return undefined;
    const now = this.now();
    b.tokens = Math.min(this.burst, b.tokens + ((now - b.at) / 60_000) * this.perMinute);
    b.at = now;
    if (b.tokens >= this.burst) {
      this.map.delete(key);
      return undefined;
    }
    return b;
  }

  /** Seconds until the key may try again; 0 when it may now. */
  blockedFor(key: string): number {
    const b = this.level(key);
    if (b === undefined || b.tokens >= 1) return 0;
    return Math.ceil(((1 - b.tokens) * 60) / this.perMinute);
  }

  /** Takes one unit (a failure, or an attempt whose outcome is pending). */
  failed(key: string): void {
    let b = this.level(key);
    if (b === undefined) {
      b = { tokens: this.burst, at: this.now() };
      this.map.set(key, b);
    }
    b.tokens = Math.max(0, b.tokens - 1);
  }

  /** Gives back a unit an attempt took (it succeeded, or it was not the caller's doing). */
  giveBack(key: string): void {
    const b = this.level(key);
    if (b === undefined) return;
    b.tokens = Math.min(this.burst, b.tokens + 1);
    if (b.tokens >= this.burst) this.map.delete(key);
  }
}

/** An admitted attempt: its unit stays taken (a failure) unless it is given back. */
export interface Attempt {
  /** Gives the unit back: the attempt succeeded, or failed through no fault of the caller. */
  giveBack(): void;
}

/** Who a throttle decision is about: a source address, or a token id used from an address. */
export type ThrottleSubject = { kind: 'address'; address: string } | { kind: 'token'; id: string; address: string };

export class AuthThrottle {
  private readonly addresses: Buckets;
  private readonly tokens: Buckets;
  private readonly pairs: Buckets;
  /** (token id, address) → when it last authenticated. */
  private readonly knownGood = new Generations<number>(MAX_ENTRIES);

  constructor(
    burst: number,
    perMinute: number,
    private readonly now: () => number = Date.now,
  ) {
    this.addresses = new Buckets(burst, perMinute, now);
    this.tokens = new Buckets(burst, perMinute, now);
    this.pairs = new Buckets(burst, perMinute, now);
  }

  /** Entries held, for tests of the bounds. */
  get sizes(): { addresses: number; tokens: number; pairs: number; knownGood: number } {
    return { addresses: this.addresses.size, tokens: this.tokens.size, pairs: this.pairs.size, knownGood: this.knownGood.size };
  }

  private pairKey(id: string, address: string): string {
    return JSON.stringify([id, address]);
  }

  private isKnownGood(id: string, address: string): boolean {
    const key = this.pairKey(id, address);
    const at = this.knownGood.get(key);
    if (at === undefined) return false;
    if (this.now() - at < KNOWN_GOOD_MS) return true;
    this.knownGood.delete(key);
    return false;
  }

  /** Seconds until the subject may try again; 0 when it may now. */
  blockedFor(s: ThrottleSubject): number {
    if (s.kind === 'address') return this.addresses.blockedFor(s.address);
    return this.isKnownGood(s.id, s.address) ? this.pairs.blockedFor(this.pairKey(s.id, s.address)) : this.tokens.blockedFor(s.id);
  }

  /**
   * Admits an attempt judged on `s` and takes its unit now, before the check runs: the number
   * when the subject is blocked (seconds to wait), else the attempt, whose unit counts as a
   * failure unless it is given back. The unit is taken from the bucket that judged it, so a
   * pair that became known good meanwhile gives back to the right one.
   */
  attempt(s: ThrottleSubject): number | Attempt {
    const wait = this.blockedFor(s);
    if (wait > 0) return wait;
    const [buckets, key] = this.bucketOf(s);
    buckets.failed(key);
    let open = true;
    return {
      giveBack: () => {
        if (!open) return;
        open = false;
        buckets.giveBack(key);
      },
    };
  }

  private bucketOf(s: ThrottleSubject): [Buckets, string] {
    if (s.kind === 'address') return [this.addresses, s.address];
    return this.isKnownGood(s.id, s.address) ? [this.pairs, this.pairKey(s.id, s.address)] : [this.tokens, s.id];
  }

  failed(s: ThrottleSubject): void {
    if (s.kind === 'address') this.addresses.failed(s.address);
    else if (this.isKnownGood(s.id, s.address)) this.pairs.failed(this.pairKey(s.id, s.address));
    else this.tokens.failed(s.id);
  }

  /** A token authenticated from this address: the pair is known good for 24 h. */
  succeeded(id: string, address: string): void {
    const key = this.pairKey(id, address);
    this.knownGood.set(key, this.now());
  }
}
