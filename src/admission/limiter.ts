/**
 * Connection caps and the connect rate, decided on the raw TCP socket at accept time, before
 * a TLS handshake, an HTTP upgrade or a byte of MQTT is read.
 *
 *   total cap → listener cap → per-address cap → connect rate (token bucket) → admitted
 *
 * State per source address is bounded (`maxTrackedAddresses`) and idle entries are expired
 * by the one shared sweep the caller runs; there is no timer per address.
 */
import { type Address, formatAddress, masked } from '../util/address.ts';
import type { ConnectionLimits, ListenerLimits } from '../config/admission-schema.ts';

export type LimitRefusal = 'total-cap' | 'listener-cap' | 'ip-cap' | 'rate' | 'tracking-full';

export const limitRefusalText: Record<LimitRefusal, string> = {
  'total-cap': 'connection cap for the broker reached',
  'listener-cap': 'connection cap for the listener reached',
  'ip-cap': 'connection cap for the source address reached',
  rate: 'connect rate for the source address exceeded',
  'tracking-full': 'too many source addresses tracked',
};

/** The setting behind each refusal, named in the log and the audit record so an operator knows what to change. */
export const limitRefusalSetting: Record<LimitRefusal, string> = {
  'total-cap': 'limits.maxConnections',
  'listener-cap': "the listener's limits.maxConnections",
  'ip-cap': "limits.maxConnectionsPerIp or the listener's own",
  rate: "limits.connectRate or the listener's own",
  'tracking-full': 'admission.maxTrackedAddresses',
};

interface AddressState {
  live: number;
  tokens: number;
  refilledAt: number;
}

/** What one listener enforces, the global values with its own overrides applied. */
export interface ListenerPolicy {
  name: string;
  maxConnections: number | undefined;
  /** Set when the listener counts addresses on its own (its own cap and/or rate). */
  scoped: boolean;
  maxConnectionsPerIp: number;
  connectRate: { perSecond: number; burst: number };
  live: number;
}

/** An admitted connection's place in the counts; `release` gives it back, once. */
export class Admitted {
  private released = false;

  constructor(
    private readonly limiter: ConnectionLimiter,
    private readonly listener: ListenerPolicy,
    private readonly address: AddressState | undefined,
  ) {}

  release(): void {
    if (this.released) return;
    this.released = true;
    this.limiter.giveBack(this.listener, this.address);
  }
}

export class ConnectionLimiter {
  private readonly addresses = new Map<string, AddressState>();
  private total = 0;
  private lastEmergencySweep = 0;

  constructor(
    private readonly limits: ConnectionLimits,
    private readonly maxTracked: number,
    private readonly ipv6Prefix: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** The policy of one listener. */
  policy(name: string, own: ListenerLimits | undefined): ListenerPolicy {
    return {
      name,
      maxConnections: own?.maxConnections,
      scoped: own?.maxConnectionsPerIp !== undefined || own?.connectRate !== undefined,
      maxConnectionsPerIp: own?.maxConnectionsPerIp ?? this.limits.maxConnectionsPerIp,
      connectRate: own?.connectRate ?? this.limits.connectRate,
      live: 0,
    };
  }

  /**
   * The key an address is counted under: the address, or its network for IPv6. `text` is the
   * address's canonical text (formatAddress of `a`, or the raw text when it did not parse).
   */
  keyOf(a: Address | undefined, text: string): string {
    if (a === undefined) return text;
    if (a.family === 6 && this.ipv6Prefix < 128) return `${formatAddress(masked({ ...a, prefix: this.ipv6Prefix }))}/${this.ipv6Prefix}`;
    return text;
  }

  get connections(): number {
    return this.total;
  }

  get tracked(): number {
    return this.addresses.size;
  }

  /** Decides one connection. `exempt` skips every cap, the rate and the address table; it is still counted in the totals. */
  admit(l: ListenerPolicy, key: string, exempt: boolean): Admitted | LimitRefusal {
    const now = this.now();
    if (!exempt) {
      if (this.total >= this.limits.maxConnections) return 'total-cap';
      if (l.maxConnections !== undefined && l.live >= l.maxConnections) return 'listener-cap';
    }
    // Exempt addresses need no entry: nothing about them is enforced, not even the table size.
    // A listener with its own per-address cap or rate keeps its own entry (count and bucket);
    // the others share one entry per address.
    const s = exempt ? undefined : this.state(l.scoped ? `${l.name}\u0000${key}` : key, now);
    if (!exempt && s === undefined) return 'tracking-full';
    if (s !== undefined) {
      if (s.live >= l.maxConnectionsPerIp) return 'ip-cap';
      const rate = l.connectRate;
      if (rate.perSecond > 0) {
        refill(s, rate, now);
        if (s.tokens < 1) return 'rate';
        s.tokens -= 1;
      }
    }
    this.total++;
    l.live++;
    if (s !== undefined) s.live++;
    return new Admitted(this, l, s);
  }

  /** What Admitted.release undoes of admit(). */
  giveBack(l: ListenerPolicy, s: AddressState | undefined): void {
    this.total--;
    l.live--;
    if (s !== undefined) s.live--;
  }

  /**
   * Drops idle entries: no live connection and a bucket that has refilled (it holds nothing an
   * absent entry would not). Run by the shared sweep.
   */
  sweep(policies: readonly ListenerPolicy[]): void {
    const now = this.now();
    const slowest = Math.min(this.limits.connectRate.perSecond || Infinity, ...policies.map((p) => p.connectRate.perSecond || Infinity));
    const burst = Math.max(this.limits.connectRate.burst, ...policies.map((p) => p.connectRate.burst));
    // Time for the slowest bucket to refill completely from empty.
    const idleMs = Number.isFinite(slowest) ? (burst / slowest) * 1000 : 0;
    for (const [key, s] of this.addresses) {
      if (s.live === 0 && now - s.refilledAt >= idleMs) this.addresses.delete(key);
    }
  }

  private state(key: string, now: number): AddressState | undefined {
    let s = this.addresses.get(key);
    if (s !== undefined) return s;
    if (this.addresses.size >= this.maxTracked) {
      // Under a spread flood: forget idle addresses (their rate history too), at most once a second.
      if (now - this.lastEmergencySweep < 1000) return undefined;
      this.lastEmergencySweep = now;
      for (const [k, x] of this.addresses) if (x.live === 0) this.addresses.delete(k);
      if (this.addresses.size >= this.maxTracked) return undefined;
    }
    s = { live: 0, tokens: Number.POSITIVE_INFINITY, refilledAt: now };
    this.addresses.set(key, s);
    return s;
  }
}

function refill(s: AddressState, rate: { perSecond: number; burst: number }, now: number): void {
  const tokens = s.tokens + ((now - s.refilledAt) / 1000) * rate.perSecond;
  s.tokens = tokens > rate.burst ? rate.burst : tokens;
  s.refilledAt = now;
}
