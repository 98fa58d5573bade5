/**
 * Quotas per identity: what one identity may hold in the broker's memory across all its
 * sessions — retained messages (count and bytes), persistent sessions, subscriptions and queued
 * bytes — so that no single identity (or, for anonymous clients, no single address) can take
 * more than its share, whatever each session's own limits allow. The broker's other limits are
 * per connection or per session; these are what make the per-identity ceiling a number.
 *
 * An identity is the session owner (src/auth/owner.ts). Anonymous clients are all one owner,
 * so they are counted per source address instead: one anonymous client cannot use up the quota
 * of the others.
 */
import type { Principal } from '../auth/types.ts';

export interface QuotaLimits {
  retainedMessages: number;
  retainedBytes: number;
  persistentSessions: number;
  subscriptions: number;
  queuedBytes: number;
}

interface Usage {
  retained: number;
  retainedBytes: number;
  sessions: number;
  subscriptions: number;
  queuedBytes: number;
}

/** Whose quota a connection's sessions and messages count against. */
export function quotaKeyOf(owner: string, principal: Principal | null, remoteAddress: string): string {
  return principal !== null && principal.method === 'anonymous' ? `${owner}@${remoteAddress}` : owner;
}

export class IdentityQuotas {
  private readonly usage = new Map<string, Usage>();
  /** Hits since start, by kind (for $SYS and tests). */
  readonly hits = { retained: 0, sessions: 0, subscriptions: 0, queuedBytes: 0 };

  constructor(readonly limits: QuotaLimits) {}

  /** Identities that hold anything (bounded by what they hold: an entry with nothing is removed). */
  get tracked(): number {
    return this.usage.size;
  }

  private get(key: string): Usage {
    let u = this.usage.get(key);
    if (u === undefined) {
      u = { retained: 0, retainedBytes: 0, sessions: 0, subscriptions: 0, queuedBytes: 0 };
      this.usage.set(key, u);
    }
    return u;
  }

  private tidy(key: string, u: Usage): void {
    if (u.retained === 0 && u.sessions === 0 && u.subscriptions === 0 && u.queuedBytes === 0) this.usage.delete(key);
  }

  // ── retained messages ──────────────────────────────────────────────────────

  /** Whether `key` may retain one more message of `bytes` (after giving up `freed` bytes it replaces, if it was its own). */
  retainFits(key: string, bytes: number, replacesOwn: { bytes: number } | null): boolean {
    const u = this.usage.get(key);
    const count = (u?.retained ?? 0) + (replacesOwn === null ? 1 : 0);
    const total = (u?.retainedBytes ?? 0) + bytes - (replacesOwn?.bytes ?? 0);
    if (count <= this.limits.retainedMessages && total <= this.limits.retainedBytes) return true;
    this.hits.retained++;
    return false;
  }

  retained(key: string, count: number, bytes: number): void {
    const u = this.get(key);
    u.retained += count;
    u.retainedBytes += bytes;
    this.tidy(key, u);
  }

  // ── persistent sessions ────────────────────────────────────────────────────

  /** Whether `key` may hold one more persistent session, `freeing` others it is about to end. */
  sessionFits(key: string, freeing = 0): boolean {
    if ((this.usage.get(key)?.sessions ?? 0) - freeing < this.limits.persistentSessions) return true;
    this.hits.sessions++;
    return false;
  }

  sessions(key: string, delta: number): void {
    const u = this.get(key);
    u.sessions += delta;
    this.tidy(key, u);
  }

  // ── subscriptions ──────────────────────────────────────────────────────────

  subscriptionFits(key: string): boolean {
    if ((this.usage.get(key)?.subscriptions ?? 0) < this.limits.subscriptions) return true;
    this.hits.subscriptions++;
    return false;
  }

  subscriptions(key: string, delta: number): void {
    const u = this.get(key);
    u.subscriptions += delta;
    this.tidy(key, u);
  }

  // ── queued bytes ───────────────────────────────────────────────────────────

  queuedFits(key: string, bytes: number): boolean {
    if ((this.usage.get(key)?.queuedBytes ?? 0) + bytes <= this.limits.queuedBytes) return true;
    this.hits.queuedBytes++;
    return false;
  }

  queued(key: string, bytes: number): void {
    if (bytes === 0) return;
    const u = this.get(key);
    u.queuedBytes += bytes;
    this.tidy(key, u);
  }

  /** What an identity holds now (for tests and the admin API). */
  of(key: string): Readonly<Usage> {
    return { ...(this.usage.get(key) ?? { retained: 0, retainedBytes: 0, sessions: 0, subscriptions: 0, queuedBytes: 0 }) };
  }
}
