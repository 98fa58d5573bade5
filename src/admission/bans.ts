/**
 * The ban list in force: loaded from the ban file, matched by address, range, client id and
 * user name. A reload replaces it atomically and reports what changed; a ban whose `until` has
 * passed stops applying at once and its expiry is reported exactly once.
 */
import { type Address, type CidrRange, inRange, parseAddress, parseCidr } from '../util/address.ts';
import { type BanEntry, type BanKind, banKey } from './ban-file.ts';

export interface BanChange {
  change: 'added' | 'updated' | 'removed' | 'expired';
  ban: BanEntry;
}

export class BanList {
  private readonly byKey = new Map<string, BanEntry>();
  private readonly exact = new Map<string, BanEntry>();
  private ranges: { range: CidrRange; ban: BanEntry }[] = [];
  private readonly expiredReported = new WeakSet<BanEntry>();
  private nextExpiry = Number.POSITIVE_INFINITY;

  constructor(private readonly now: () => number = Date.now) {}

  get size(): number {
    return this.byKey.size;
  }

  /** The bans in force now. */
  active(): BanEntry[] {
    const now = this.now();
    return [...this.byKey.values()].filter((b) => isActive(b, now));
  }

  /** Replaces the list; returns what changed for bans that are (or were) in force. */
  replace(entries: readonly BanEntry[]): BanChange[] {
    const now = this.now();
    const changes: BanChange[] = [];
    const next = new Map(entries.map((e) => [banKey(e.kind, e.value), e]));
    for (const [key, old] of this.byKey) {
      if (!next.has(key) && isActive(old, now)) changes.push({ change: 'removed', ban: old });
    }
    for (const [key, e] of next) {
      const old = this.byKey.get(key);
      if (!isActive(e, now)) {
        this.expiredReported.add(e); // already over when it was loaded: nothing to report later
        continue;
      }
      if (old === undefined || !isActive(old, now)) changes.push({ change: 'added', ban: e });
      else if (old.until !== e.until || old.reason !== e.reason) changes.push({ change: 'updated', ban: e });
    }
    this.byKey.clear();
    this.exact.clear();
    this.ranges = [];
    this.nextExpiry = Number.POSITIVE_INFINITY;
    for (const [key, e] of next) {
      this.byKey.set(key, e);
      if (e.kind === 'ip') this.exact.set(`ip\u0000${e.value}`, e);
      else if (e.kind === 'cidr') {
        const r = parseCidr(e.value);
        if (r.ok) this.ranges.push({ range: r.value, ban: e });
      } else this.exact.set(`${e.kind}\u0000${e.value}`, e);
      if (e.until !== undefined && e.until > now && e.until < this.nextExpiry) this.nextExpiry = e.until;
    }
    return changes;
  }

  /** The ban in force for an address (exact address first, then ranges), if any. */
  matchAddress(a: Address | undefined, text: string): BanEntry | undefined {
    if (this.byKey.size === 0) return undefined;
    const now = this.now();
    const exact = this.exact.get(`ip\u0000${text}`);
    if (exact !== undefined && isActive(exact, now)) return exact;
    const addr = a ?? parseAddress(text);
    if (addr === undefined) return undefined;
    for (const { range, ban } of this.ranges) if (isActive(ban, now) && inRange(addr, range)) return ban;
    return undefined;
  }

  match(kind: Exclude<BanKind, 'ip' | 'cidr'>, value: string | undefined): BanEntry | undefined {
    if (value === undefined || this.byKey.size === 0) return undefined;
    const ban = this.exact.get(`${kind}\u0000${value}`);
    return ban !== undefined && isActive(ban, this.now()) ? ban : undefined;
  }

  /** Bans whose time has come since the last call, each reported once. Cheap when none is due. */
  expired(): BanEntry[] {
    const now = this.now();
    if (now < this.nextExpiry) return [];
    const out: BanEntry[] = [];
    this.nextExpiry = Number.POSITIVE_INFINITY;
    for (const e of this.byKey.values()) {
      if (e.until === undefined) continue;
      if (e.until <= now) {
        if (!this.expiredReported.has(e)) {
          this.expiredReported.add(e);
          out.push(e);
        }
      } else if (e.until < this.nextExpiry) this.nextExpiry = e.until;
    }
    return out;
  }
}

export function isActive(b: BanEntry, now: number): boolean {
  return b.until === undefined || b.until > now;
}

/** A short description of a ban for reason strings: `ip 192.0.2.1 until 2026-…Z (scanner)`. */
export function describeBan(b: BanEntry): string {
  return `${b.kind} ${b.value}${b.until !== undefined ? ` until ${new Date(b.until).toISOString()}` : ''}${b.reason !== undefined ? ` (${b.reason})` : ''}`;
}
