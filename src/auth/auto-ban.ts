/**
 * Automatic temporary bans of one kind of key (source address or user name), off by default.
 * `after` failed logins, each within `forgetAfterMs` of the one before, ban the key for `banMs`;
 * each repeated ban doubles, up to `maxBanMs`. Bans and their expiry are audited and logged.
 * What a ban refuses is the guard's business (see guard.ts): only attempts that would check a
 * guessable secret, and never a known-good client.
 */
import type { AuditEvent } from '../audit/types.ts';
import type { Logger } from '../log.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';
import { FailureThrottle } from './throttle.ts';

export interface AutoBanSettings {
  enabled: boolean;
  after: number;
  banMs: number;
  maxBanMs: number;
}

interface Ban {
  until: number;
  /** Bans so far (the next one lasts twice as long). */
  count: number;
  timer?: NodeJS.Timeout;
}

export class AutoBan {
  private readonly failures: FailureThrottle;
  private readonly bans = new Map<string, Ban>();

  constructor(
    readonly kind: 'address' | 'username',
    readonly settings: AutoBanSettings,
    forgetAfterMs: number,
    private readonly maxEntries: number,
    private readonly audit: (event: AuditEvent) => void,
    private readonly log: Logger | undefined,
  ) {
    // Only the failure count is used: the throttle's spacing never applies here.
    this.failures = new FailureThrottle({ backoffAfter: Number.MAX_SAFE_INTEGER, baseDelayMs: 1, maxDelayMs: 1 }, forgetAfterMs, maxEntries);
  }

  get setting(): string {
    return `authGuard.bans.${this.kind}`;
  }

  /** The end of the key's ban, or 0 when it is not banned. */
  bannedUntil(key: string, now: number): number {
    const b = this.bans.get(key);
    return b !== undefined && b.until > now ? b.until : 0;
  }

  /** Counts a failed login; bans the key when it reaches `after`. */
  failed(key: string, now: number, listener: string): void {
    if (this.bannedUntil(key, now) > 0) return; // attempts while banned do not lengthen the ban
    const e = this.failures.fail(key, now);
    if (e.failures < this.settings.after) return;
    e.failures = 0;
    this.ban(key, now, listener);
  }

  private ban(key: string, now: number, listener: string): void {
    const b = this.bans.get(key) ?? { until: 0, count: 0 };
    this.bans.delete(key);
    this.bans.set(key, b);
    this.evict(now);
    b.count++;
    const ms = Math.min(this.settings.maxBanMs, this.settings.banMs * 2 ** Math.min(b.count - 1, 40));
    b.until = now + ms;
    const who = this.kind === 'address' ? { remoteAddress: key } : { username: key };
    const reason = `${b.count > 1 ? 'repeated ' : ''}ban for ${ms} ms after ${this.settings.after} failed logins (${this.setting})`;
    this.audit({ event: 'ban', decision: 'deny', reasonCode: ReasonCode.Banned, reason, listener, ...who, detail: { key: this.kind, setting: this.setting, durationMs: ms, bans: b.count } });
    this.log?.warn({ guardKey: this.kind, ...who, setting: this.setting, durationMs: ms, bans: b.count }, 'login guard: automatic ban');
    clearTimeout(b.timer);
    b.timer = setTimeout(() => {
      b.timer = undefined;
      this.audit({ event: 'unban', decision: 'allow', reason: 'ban expired', listener, ...who, detail: { key: this.kind, setting: this.setting, bans: b.count } });
    }, ms);
    b.timer.unref();
  }

  /** Keeps the map bounded: expired bans go first, then the oldest. */
  private evict(now: number): void {
    if (this.bans.size <= this.maxEntries) return;
    for (const [key, b] of this.bans) {
      if (this.bans.size <= this.maxEntries) return;
      if (b.until <= now) {
        clearTimeout(b.timer);
        this.bans.delete(key);
      }
    }
    while (this.bans.size > this.maxEntries) {
      const [key, b] = this.bans.entries().next().value as [string, Ban];
      clearTimeout(b.timer);
      this.bans.delete(key);
    }
  }

  sweep(now: number): void {
    this.failures.sweep(now);
  }

  close(): void {
    for (const b of this.bans.values()) clearTimeout(b.timer);
  }
}
