/**
 * Failed-login protection. It slows guessing and never locks out a client that holds valid
 * credentials. It is asked only before a provider checks a secret that can be guessed (a
 * password): certificate, PSK and JWT logins never meet it.
 *
 * What is throttled is what is guessed:
 * - the pair (source address, user name): `pair.backoffAfter` failures are free, then checks on
 *   the pair are spaced `baseDelayMs × 2^(n − backoffAfter)` apart, up to `maxDelayMs`;
 * - the user name across addresses (`username`), the same way with a larger allowance, against
 *   distributed guessing of one user;
 * - the source address alone only through a cap on credential checks per second (`address`),
 *   which a successful check does not use up.
 *
 * A failure is a credential that a provider checked and found wrong. An attempt the guard delays
 * or refuses is not one, so a client's own retries never lengthen its wait.
 *
 * A known-good client, one whose (source address, user name, client id) logged in within
 * `knownGood.windowMs`, is not held back by the pair, the user name, the address or a ban:
 * failures only count against it when they are made with that same address, user name and
 * client id (its own throttle). The client id alone is not enough (it is no secret: often it is
 * the user name), and the password is not used to recognise anyone: letting a credential that
 * matches a remembered one skip the throttle would answer every guess at full speed.
 *
 * A throttled attempt is held (its CONNACK delayed) until its turn, when that comes within
 * `tarpit.maxHoldMs`; otherwise it is refused (0x9F) after `maxHoldMs`. Holding rather than
 * refusing at once keeps a retry loop from spinning: a loop that spun would burn the address's
 * connect rate (admission control) and push out the other clients behind the same NAT.
 */
import type { AuditEvent } from '../audit/types.ts';
import type { AuthGuardConfig } from '../config/auth-schema.ts';
import type { Logger } from '../log.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';
import { AutoBan } from './auto-ban.ts';
import { CheckQueue, defaultMaxRunning } from './check-queue.ts';
import { CheckRate, FailureThrottle, KnownGood, type ThrottleEntry } from './throttle.ts';

/** One login attempt, as the guard keys it. */
export interface LoginAttempt {
  /** The source address (an IPv6 address by its prefix, see admission.ipv6Prefix). */
  address: string;
  username: string;
  clientId: string;
  listener: string;
}

export interface GuardRefusal {
  reason: ReasonCode;
  /** Told to the client (v5 reason string) and logged: names the key and the setting. */
  detail: string;
  /** For the audit record only. */
  note?: string;
}

/** What the guard decided for an attempt: check it (now, or after `waitMs`), or refuse it after `holdMs`. */
export type GuardAdmission = { kind: 'check'; ticket: GuardTicket } | { kind: 'refuse'; refusal: GuardRefusal; holdMs: number };

export type CheckOutcome = 'success' | 'failure' | 'neutral';

/** An admitted check: its reservations, to be settled once with the outcome. */
export class GuardTicket {
  settled = false;
  constructor(
    readonly attempt: LoginAttempt,
    /** The (address, user name) key, made once per attempt. */
    readonly pairKey: string,
    readonly knownGood: boolean,
    readonly reserved: readonly [FailureThrottle, ThrottleEntry][],
    readonly addressToken: boolean,
    /** How long the attempt must wait for its turn; 0: at once. */
    readonly waitMs: number,
    /** The key and setting that made it wait, for the audit record. */
    readonly delayedBy: string | undefined,
  ) {}
}

/** Which key decided an attempt's turn, for the refusal text and the audit record. */
type Binding =
  | { kind: 'pair'; entry: ThrottleEntry | undefined }
  | { kind: 'known-good'; entry: ThrottleEntry | undefined }
  | { kind: 'username'; entry: ThrottleEntry | undefined }
  | { kind: 'address' };

const SEP = '\u0000'; // MQTT strings cannot hold U+0000 [MQTT-1.5.4-2]: the keys cannot collide

export class AuthGuard {
  readonly checks: CheckQueue;
  /** Attempts held in the tarpit right now (LoginGate counts them). */
  holding = 0;
  private readonly pairs: FailureThrottle;
  private readonly users: FailureThrottle;
  private readonly clients: FailureThrottle;
  private readonly rate: CheckRate;
  private readonly knownGood: KnownGood;
  private readonly addressBans: AutoBan | undefined;
  private readonly usernameBans: AutoBan | undefined;
  private readonly sweeper: NodeJS.Timeout;
  private readonly failureListeners: ((a: LoginAttempt) => void)[] = [];

  constructor(
    private readonly config: AuthGuardConfig,
    audit: (event: AuditEvent) => void,
    private readonly log?: Logger,
    private readonly now: () => number = Date.now,
  ) {
    const c = config;
    this.checks = new CheckQueue(c.checkQueue.maxRunning ?? defaultMaxRunning(), c.checkQueue.maxWaiting);
    this.pairs = new FailureThrottle(c.pair, c.forgetAfterMs, c.maxEntries);
    this.users = new FailureThrottle(c.username, c.forgetAfterMs, c.maxEntries);
    this.clients = new FailureThrottle(c.pair, c.forgetAfterMs, c.maxEntries);
    this.rate = new CheckRate(c.address.checksPerSecond, c.address.burst, c.maxEntries);
    this.knownGood = new KnownGood(c.knownGood.windowMs, c.knownGood.maxEntries);
    if (c.bans.address.enabled) this.addressBans = new AutoBan('address', c.bans.address, c.forgetAfterMs, c.maxEntries, audit, log);
    if (c.bans.username.enabled) this.usernameBans = new AutoBan('username', c.bans.username, c.forgetAfterMs, c.maxEntries, audit, log);
    this.sweeper = setInterval(() => this.sweep(), Math.min(60_000, c.forgetAfterMs));
    this.sweeper.unref();
  }

  get maxHoldMs(): number {
    return this.config.tarpit.maxHoldMs;
  }

  /** Counts for tests and the docs' memory figures. */
  get sizes(): { pairs: number; usernames: number; knownGood: number; clients: number; addresses: number } {
    return { pairs: this.pairs.size, usernames: this.users.size, knownGood: this.knownGood.size, clients: this.clients.size, addresses: this.rate.size };
  }

  /**
   * Decides an attempt that is about to have a guessable secret checked. `maxHoldMs` may be lower
   * than the configured one (the listener's provider deadline). Synchronous.
   */
  admit(a: LoginAttempt, maxHoldMs = this.config.tarpit.maxHoldMs): GuardAdmission {
    if (!this.config.enabled) return { kind: 'check', ticket: new GuardTicket(a, '', false, [], false, 0, undefined) };
    const now = this.now();
    const pairKey = a.address + SEP + a.username;
    const known = this.knownGood.has(pairKey, a.clientId, now);
    let start = now;
    let by: Binding | undefined;
    let client: ThrottleEntry | undefined;
    let pair: ThrottleEntry | undefined;
    let user: ThrottleEntry | undefined;
    // Only a known-good client has an entry of its own (its failures); the key is made only then.
    const clientKey = known ? pairKey + SEP + a.clientId : '';
    if (known) {
      client = this.clients.get(clientKey, now);
      const t = this.clients.earliest(client, now);
      if (t > start) [start, by] = [t, { kind: 'known-good', entry: client }];
    } else {
      const banned = this.banned(a, now);
      if (banned !== undefined) return this.refuse(banned, maxHoldMs);
      pair = this.pairs.get(pairKey, now);
      let t = this.pairs.earliest(pair, now);
      if (t > start) [start, by] = [t, { kind: 'pair', entry: pair }];
      if (this.config.username.enabled) {
        user = this.users.get(a.username, now);
        t = this.users.earliest(user, now);
        if (t > start) [start, by] = [t, { kind: 'username', entry: user }];
      }
      if (this.rate.enabled) {
        t = this.rate.earliest(a.address, now);
        if (t > start) [start, by] = [t, { kind: 'address' }];
      }
    }
    const wait = start - now;
    if (by !== undefined && (wait > maxHoldMs || this.holding >= this.config.tarpit.maxHeld)) {
      const holdMs = this.holding >= this.config.tarpit.maxHeld ? 0 : maxHoldMs;
      return this.refuse({ reason: ReasonCode.ConnectionRateExceeded, detail: this.describe(by, a, wait - holdMs), ...(known ? { note: `known-good client '${a.clientId}': its own failures` } : {}) }, holdMs);
    }
    const reserved: [FailureThrottle, ThrottleEntry][] = [];
    if (known) {
      reserved.push([this.clients, this.clients.reserve(clientKey, client, start)]);
    } else {
      reserved.push([this.pairs, this.pairs.reserve(pairKey, pair, start)]);
      if (this.config.username.enabled) reserved.push([this.users, this.users.reserve(a.username, user, start)]);
      if (this.rate.enabled) this.rate.take(a.address, start);
    }
    const delayedBy = wait > 0 && by !== undefined ? this.describe(by, a, wait) : undefined;
    return { kind: 'check', ticket: new GuardTicket(a, pairKey, known, reserved, !known && this.rate.enabled, wait, delayedBy) };
  }

  /** The outcome of an admitted check; a ticket settles once. */
  settle(t: GuardTicket, outcome: CheckOutcome): void {
    if (t.settled) return;
    t.settled = true;
    if (!this.config.enabled) return;
    const now = this.now();
    const failed = outcome === 'failure';
    for (const [throttle, entry] of t.reserved) {
      throttle.settle(entry, failed, now);
      if (failed && entry.failures === throttle.settings.backoffAfter) this.engaged(throttle, t.attempt, entry);
    }
    const a = t.attempt;
    if (t.addressToken && !failed) this.rate.refund(a.address);
    if (outcome === 'success') {
      this.knownGood.add(t.pairKey, a.clientId, now);
      return;
    }
    if (!failed) return;
    // A known-good client's failure still counts against its pair and its user name.
    if (t.knownGood) this.failPairAndUser(a, t.pairKey, now);
    this.failedElsewhere(a, now);
  }

  /** Counts a failure against the pair and the user name, logging when either starts to throttle. */
  private failPairAndUser(a: LoginAttempt, pairKey: string, now: number): ThrottleEntry {
    const pair = this.pairs.fail(pairKey, now);
    if (pair.failures === this.pairs.settings.backoffAfter) this.engaged(this.pairs, a, pair);
    if (this.config.username.enabled) {
      const user = this.users.fail(a.username, now);
      if (user.failures === this.users.settings.backoffAfter) this.engaged(this.users, a, user);
    }
    return pair;
  }

  /** A failure's effect beyond the throttles: the opt-in bans and the listeners (other nodes). */
  private failedElsewhere(a: LoginAttempt, now: number): void {
    this.addressBans?.failed(a.address, now, a.listener);
    this.usernameBans?.failed(a.username, now, a.listener);
    for (const fn of this.failureListeners) fn(a);
  }

  /**
   * A credential that cannot be guessed (a token, a certificate identity) was checked and found
   * wrong: a failed login like any other for the pair and the user name. Its answer is not held
   * back by the guard before the check (a valid one never is), but once the pair is throttled the
   * refusal is held for the pair's delay, at most `maxHoldMs`, so a client retrying in a loop
   * cannot spin. Returns how long to hold the answer.
   */
  failedUnguarded(a: LoginAttempt, maxHoldMs = this.config.tarpit.maxHoldMs): number {
    if (!this.config.enabled) return 0;
    const now = this.now();
    const pair = this.failPairAndUser(a, a.address + SEP + a.username, now);
    this.failedElsewhere(a, now);
    if (pair.failures <= this.pairs.settings.backoffAfter || this.holding >= this.config.tarpit.maxHeld) return 0;
    return Math.max(0, Math.min(maxHoldMs, pair.next - now));
  }

  /** Calls `fn` for each failed login counted here (a cluster shares them with every node). */
  onFailure(fn: (a: LoginAttempt) => void): void {
    this.failureListeners.push(fn);
  }

  /**
   * A failed login counted on another node of the cluster: it counts here too, against the pair,
   * the user name and the automatic bans, as if it had been made here.
   */
  remoteFailure(a: LoginAttempt): void {
    if (!this.config.enabled) return;
    const now = this.now();
    const pair = this.pairs.fail(a.address + SEP + a.username, now);
    if (pair.failures === this.pairs.settings.backoffAfter) this.engaged(this.pairs, a, pair);
    if (this.config.username.enabled) {
      const user = this.users.fail(a.username, now);
      if (user.failures === this.users.settings.backoffAfter) this.engaged(this.users, a, user);
    }
    this.addressBans?.failed(a.address, now, a.listener);
    this.usernameBans?.failed(a.username, now, a.listener);
  }

  /** Stops the sweep and the unban timers (their records are not written after stop). */
  close(): void {
    clearInterval(this.sweeper);
    this.addressBans?.close();
    this.usernameBans?.close();
  }

  private banned(a: LoginAttempt, now: number): GuardRefusal | undefined {
    for (const [bans, key, who] of [
      [this.addressBans, a.address, a.address],
      [this.usernameBans, a.username, `'${a.username}'`],
    ] as const) {
      const until = bans?.bannedUntil(key, now) ?? 0;
      if (bans === undefined || until === 0) continue;
      const what = bans.kind === 'address' ? 'password checks from this address are refused' : 'password checks for this user name are refused';
      return {
        reason: ReasonCode.Banned,
        detail: `banned by ${bans.setting} (${who}) for ${seconds(until - now)} after ${bans.settings.after} failed logins: ${what}, except for clients that logged in before`,
      };
    }
    return undefined;
  }

  private refuse(refusal: GuardRefusal, holdMs: number): GuardAdmission {
    return { kind: 'refuse', refusal, holdMs: this.holding >= this.config.tarpit.maxHeld ? 0 : holdMs };
  }

  private describe(by: Binding, a: LoginAttempt, nextInMs: number): string {
    const next = `next check possible in ${seconds(Math.max(0, nextInMs))}; refused attempts are not counted`;
    switch (by.kind) {
      case 'pair':
      case 'known-good':
        return `throttled by authGuard.pair (${a.address}, '${a.username}'): ${by.entry?.failures ?? 0} failed logins; ${next}`;
      case 'username':
        return `throttled by authGuard.username ('${a.username}', all addresses): ${by.entry?.failures ?? 0} failed logins; ${next}`;
      case 'address':
        return `throttled by authGuard.address (${a.address}): over ${this.rate.perSecond} failed credential checks/s (burst ${this.rate.burst}); ${next}`;
    }
  }

  /** One log line when a key starts being throttled (not one per attempt). */
  private engaged(throttle: FailureThrottle, a: LoginAttempt, entry: ThrottleEntry): void {
    if (this.log === undefined) return;
    const setting = throttle === this.users ? 'authGuard.username' : 'authGuard.pair';
    const guardKey = throttle === this.users ? 'username' : throttle === this.clients ? 'known-good client' : 'pair';
    this.log.info(
      { guardKey, setting, remote: throttle === this.users ? undefined : a.address, username: a.username, clientId: throttle === this.clients ? a.clientId : undefined, failures: entry.failures, listener: a.listener },
      `login guard: ${guardKey} throttled after ${entry.failures} failed logins`,
    );
  }

  private sweep(): void {
    const now = this.now();
    this.pairs.sweep(now);
    this.users.sweep(now);
    this.clients.sweep(now);
    this.rate.sweep(now);
    this.knownGood.sweep(now);
    this.addressBans?.sweep(now);
    this.usernameBans?.sweep(now);
  }
}

function seconds(ms: number): string {
  return ms < 10_000 ? `${(Math.ceil(ms / 100) / 10).toFixed(1)} s` : `${Math.ceil(ms / 1000)} s`;
}
