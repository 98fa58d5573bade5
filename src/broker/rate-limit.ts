/**
 * PUBLISH rate limits: token buckets per connection and per identity (user name), refilled
 * lazily from timestamps, so there is no timer per connection or per bucket. A throttled
 * connection stops being read; the broker's one sweep timer resumes it when its bucket has
 * refilled ({@link Client.readPausedUntil}).
 *
 * Over the limit, by `rateLimits.v5Action` / `v3Action`:
 * - reject (v5 only): QoS 1/2 get PUBACK/PUBREC 0x97 Quota exceeded (MQTT 5 allows 0x96 Message
 *   rate too high only in DISCONNECT, and clients end the connection on it), QoS 0 is dropped;
 * - throttle: the message is accepted and the socket is not read until the debt is paid back,
 *   so a client can never get ahead of its rate and nothing it sent is lost;
 * - disconnect: DISCONNECT 0x96 (v5) or the socket is closed (v3.1/3.1.1).
 */
import type { RateLimitsConfig } from '../config/rate-limit-schema.ts';
import type { Logger } from '../log.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';
import type { AuditEvent } from '../audit/types.ts';
import type { Client } from './ports.ts';
import type { BrokerStats, CoarseClock } from './stats.ts';
import { TokenBucket } from './token-bucket.ts';

/** What the limiter reports to: the broker's counters and clock, and the security gate. */
export interface RateLimitHooks {
  readonly stats: BrokerStats;
  readonly clock: CoarseClock;
  audit(conn: Client, event: AuditEvent): void;
  disconnectForSecurity(conn: Client, code: number, action: string, reason: string, dropWill?: boolean): void;
}

type BucketConfig = RateLimitsConfig['perClient'];

function makeBucket(c: BucketConfig, now: number): TokenBucket | null {
  if (c.messagesPerSecond === 0 && c.bytesPerSecond === 0) return null;
  return new TokenBucket(c.messagesPerSecond, c.burstMessages ?? Math.max(1, c.messagesPerSecond), c.bytesPerSecond, c.burstBytes ?? Math.max(1, c.bytesPerSecond), now);
}

/** One per broker; null when no rate is configured. */
export class PublishRateLimiter {
  private readonly identities = new Map<string, TokenBucket>();
  private overflow: TokenBucket | null = null;
  private warnedAt = 0;

  private constructor(
    private readonly config: RateLimitsConfig,
    private readonly log: Logger,
    private readonly hooks: RateLimitHooks,
  ) {}

  /** A limiter for the configuration, or null when every rate is 0 (the default). */
  static create(config: RateLimitsConfig, log: Logger, hooks: RateLimitHooks): PublishRateLimiter | null {
    const on = (c: BucketConfig) => c.messagesPerSecond > 0 || c.bytesPerSecond > 0;
    return on(config.perClient) || on(config.perIdentity) ? new PublishRateLimiter(config, log, hooks) : null;
  }

  /** In a cluster: what each identity used here since the last report, to be debited on the other nodes. */
  private usage: Map<string, [number, number]> | null = null;

  /** Starts counting each identity's use for the other nodes of a cluster ({@link drainUsage}). */
  shareUsage(): void {
    this.usage ??= new Map();
  }

  /** What each identity used here since the last call: [identity, messages, bytes]. */
  drainUsage(): [string, number, number][] {
    const u = this.usage;
    if (u === null || u.size === 0) return [];
    const out = [...u].map(([k, [m, b]]) => [k, m, b] as [string, number, number]);
    u.clear();
    return out;
  }

  private used(conn: Client, size: number): void {
    if (conn.identityKey === null || this.usage === null) return;
    const u = this.usage.get(conn.identityKey);
    if (u === undefined) this.usage.set(conn.identityKey, [1, size]);
    else {
      u[0]++;
      u[1] += size;
    }
  }

  /** An identity's use on another node: taken from its bucket here, so its limit holds across the cluster (approximately: one sync interval late). */
  debit(identity: string, messages: number, bytes: number): void {
    this.identities.get(identity)?.debit(messages, bytes, Date.now());
  }

  /** Number of live identity buckets (bounded by `maxIdentities`). */
  get identityCount(): number {
    return this.identities.size;
  }

  /** Gives a newly connected client its buckets. */
  attach(conn: Client, now: number): void {
    conn.clientBucket = makeBucket(this.config.perClient, now);
    const username = conn.principal?.username;
    if (username === undefined) return;
    let bucket = this.identities.get(username) ?? null;
    if (bucket === null) {
      if (this.identities.size >= this.config.maxIdentities) this.pruneIdle(now);
      if (this.identities.size >= this.config.maxIdentities) {
        // Bounded: identities beyond the cap share one bucket, which only makes them slower.
        bucket = this.overflow ??= makeBucket(this.config.perIdentity, now);
        conn.identityBucket = bucket;
        conn.identityKey = null;
        return;
      }
      bucket = makeBucket(this.config.perIdentity, now);
      if (bucket === null) return;
      this.identities.set(username, bucket);
    }
    bucket.refs++;
    conn.identityBucket = bucket;
    conn.identityKey = username;
  }

  /**
   * Lets go of a connection's identity bucket. The bucket itself stays until it has refilled
   * (pruned when the table is full), so closing and reconnecting does not buy a fresh burst.
   */
  release(conn: Client): void {
    const bucket = conn.identityBucket;
    conn.identityBucket = null;
    conn.identityKey = null;
    if (bucket !== null) bucket.refs--;
  }

  /** Forgets identity buckets that no connection holds and that have refilled completely. */
  private pruneIdle(now: number): void {
    for (const [key, bucket] of this.identities) if (bucket.refs <= 0 && bucket.isFull(now)) this.identities.delete(key);
  }

  /**
   * Charges one PUBLISH of `size` bytes. Returns true when the caller goes on handling it; false
   * when it was refused here (acknowledged with 0x97, dropped, or the client disconnected).
   */
  admit(conn: Client, qos: number, packetId: number, size: number, now: number): boolean {
    const own = conn.clientBucket;
    const shared = conn.identityBucket;

    let wait = own === null ? 0 : own.waitMs(size, now);
    if (shared !== null) {
      const w = shared.waitMs(size, now);
      if (w > wait) wait = w;
    }
    const action = conn.v5 ? this.config.v5Action : this.config.v3Action;
    if (action === 'throttle') {
      // Already read, so it is handled (possibly into debt); then nothing more is read until
      // the buckets could take another message.
      own?.take(size);
      shared?.take(size);
      if (this.usage !== null) this.used(conn, size);
      const ownNext = own === null ? 0 : own.waitMs(1, now);
      const sharedNext = shared === null ? 0 : shared.waitMs(1, now);
      const next = ownNext > sharedNext ? ownNext : sharedNext;
      if (next > 0) this.throttle(conn, now, next);
      else conn.rateLimitedSince = 0;
      return true;
    }
    if (wait === 0) {
      own?.take(size);
      shared?.take(size);
      if (this.usage !== null) this.used(conn, size);
      conn.rateLimitedSince = 0;
      return true;
    }
    const stats = this.hooks.stats;
    stats.publishesRateLimited++;
    stats.messagesDropped++;
    this.report(conn, action);
    if (action === 'disconnect') {
      this.hooks.disconnectForSecurity(conn, ReasonCode.MessageRateTooHigh, 'rate-limit', 'message rate too high', false);
      return false;
    }
    // reject: the publisher learns it from the acknowledgement; QoS 0 has none [MQTT-3.3.4]
    if (qos === 1) conn.send({ cmd: 'puback', messageId: packetId, reasonCode: ReasonCode.QuotaExceeded });
    else if (qos === 2) conn.send({ cmd: 'pubrec', messageId: packetId, reasonCode: ReasonCode.QuotaExceeded });
    return false;
  }

  private throttle(conn: Client, now: number, wait: number): void {
    const until = now + wait;
    if (conn.readPausedUntil === 0) {
      this.hooks.stats.connectionsThrottled++;
      if (conn.rateLimitedSince === 0) {
        conn.rateLimitedSince = now;
        this.warn(conn, 'throttle');
      }
    }
    if (until > conn.readPausedUntil) conn.readPausedUntil = until;
    conn.stream.pause();
  }

  /** One audit record per episode (the first refusal after an accepted publish), one warn line per 5 s. */
  private report(conn: Client, action: string): void {
    if (conn.rateLimitedSince !== 0) return;
    conn.rateLimitedSince = this.hooks.clock.now;
    if (action !== 'disconnect') {
      this.hooks.audit(conn, { event: 'publish', action: 'rate-limit', decision: 'deny', reasonCode: ReasonCode.MessageRateTooHigh, reason: `message rate too high: ${action}` });
    }
    this.warn(conn, action);
  }

  private warn(conn: Client, action: string): void {
    const now = this.hooks.clock.now;
    if (now - this.warnedAt < 5000) return;
    this.warnedAt = now;
    this.log.warn({ clientId: conn.clientId, username: conn.principal?.username, action, rateLimited: this.hooks.stats.publishesRateLimited, throttled: this.hooks.stats.connectionsThrottled }, 'publish rate limit reached');
  }
}
