/**
 * Failed-login protection, by source IP and by user name. After `backoffAfter` failures an
 * attempt must wait `baseDelayMs × 2^(n − backoffAfter)` (capped) after the last failure; an
 * attempt that comes sooner is refused at once (0x9F) and counts as a failure. After `banAfter` failures the key is
 * banned for `banMs`, doubling with each repeated ban up to `maxBanMs`; banned attempts are
 * refused at once (0x8A) before any provider or argon2 runs. Bans and unbans are audited.
 */
import type { AuditEvent } from '../audit/types.ts';
import type { AuthGuardConfig } from '../config/auth-schema.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';

interface Entry {
  failures: number;
  lastFailure: number;
  bannedUntil: number;
  bans: number;
  unbanTimer?: NodeJS.Timeout;
}

export interface GuardRefusal {
  reason: ReasonCode;
  detail: string;
}

export class AuthGuard {
  private readonly entries = new Map<string, Entry>();

  constructor(
    private readonly config: AuthGuardConfig,
    private readonly audit: (event: AuditEvent) => void,
    private readonly now: () => number = Date.now,
  ) {}

  private keys(ip: string, username: string | undefined): string[] {
    const keys: string[] = [];
    if (this.config.byIp) keys.push(`ip:${ip}`);
    if (this.config.byUsername && username !== undefined && username !== '') keys.push(`user:${username}`);
    return keys;
  }

  /** A refusal when the IP or user name is banned or backing off; undefined lets the attempt run. */
  check(ip: string, username: string | undefined): GuardRefusal | undefined {
    if (!this.config.enabled) return undefined;
    const now = this.now();
    for (const key of this.keys(ip, username)) {
      const e = this.entries.get(key);
      if (e === undefined) continue;
      if (e.bannedUntil > now) return { reason: ReasonCode.Banned, detail: `${kindOf(key)} banned for ${Math.ceil((e.bannedUntil - now) / 1000)} s after repeated failed logins` };
      if (e.failures >= this.config.backoffAfter) {
        const wait = Math.min(this.config.maxDelayMs, this.config.baseDelayMs * 2 ** (e.failures - this.config.backoffAfter));
        if (now - e.lastFailure < wait) return { reason: ReasonCode.ConnectionRateExceeded, detail: `${kindOf(key)} backing off: retry after ${wait} ms (${e.failures} failed logins)` };
      }
    }
    return undefined;
  }

  /** Counts a failed login (bad credentials) against the IP and the user name. */
  failure(ip: string, username: string | undefined, listener: string): void {
    if (!this.config.enabled) return;
    const now = this.now();
    for (const key of this.keys(ip, username)) {
      let e = this.entries.get(key);
      if (e !== undefined && now - e.lastFailure > this.config.forgetAfterMs && e.bannedUntil <= now) {
        e.failures = 0;
      }
      if (e === undefined) {
        e = { failures: 0, lastFailure: now, bannedUntil: 0, bans: 0 };
        this.entries.set(key, e);
        this.evict();
      }
      e.failures++;
      e.lastFailure = now;
      if (e.failures >= this.config.banAfter && e.bannedUntil <= now) this.ban(key, e, listener);
    }
  }

  /** A successful login clears the user name's failures (the IP's decay with time only). */
  success(username: string | undefined): void {
    if (!this.config.enabled || username === undefined) return;
    const e = this.entries.get(`user:${username}`);
    if (e !== undefined && e.bannedUntil <= this.now()) {
      e.failures = 0;
    }
  }

  private ban(key: string, e: Entry, listener: string): void {
    e.bans++;
    const ms = Math.min(this.config.maxBanMs, this.config.banMs * 2 ** (e.bans - 1));
    e.bannedUntil = this.now() + ms;
    e.failures = 0;
    this.audit({ event: 'ban', decision: 'deny', reasonCode: ReasonCode.Banned, reason: `${e.bans > 1 ? 'repeated ' : ''}ban for ${ms} ms after ${this.config.banAfter} failed logins`, listener, ...subject(key), detail: { durationMs: ms, bans: e.bans } });
    clearTimeout(e.unbanTimer);
    e.unbanTimer = setTimeout(() => {
      e.unbanTimer = undefined;
      this.audit({ event: 'unban', decision: 'allow', reason: 'ban expired', listener, ...subject(key), detail: { bans: e.bans } });
    }, ms);
    e.unbanTimer.unref();
  }

  private evict(): void {
    while (this.entries.size > this.config.maxEntries) {
      const [oldest, e] = this.entries.entries().next().value as [string, Entry];
      if (e.bannedUntil > this.now()) {
        // Keep bans: move it to the back; drop the next one instead.
        this.entries.delete(oldest);
        this.entries.set(oldest, e);
        const next = [...this.entries.entries()].find(([, x]) => x.bannedUntil <= this.now());
        if (next === undefined) return;
        this.entries.delete(next[0]);
        continue;
      }
      this.entries.delete(oldest);
    }
  }

  /** Stops unban timers (their records are not written after stop). */
  close(): void {
    for (const e of this.entries.values()) clearTimeout(e.unbanTimer);
  }
}

function kindOf(key: string): string {
  return key.startsWith('ip:') ? `source address ${key.slice(3)}` : 'user name';
}

function subject(key: string): Pick<AuditEvent, 'remoteAddress' | 'username'> {
  return key.startsWith('ip:') ? { remoteAddress: key.slice(3) } : { username: key.slice(5) };
}
