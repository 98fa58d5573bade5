/**
 * PUBLISH rate limits: token buckets per connection and per identity (user name), refilled
 * lazily from timestamps, so there is no timer per connection or per bucket. A throttled
 * connection stops being read; the broker's one sweep timer resumes it when its bucket has
 * refilled ({@link Connection.readPausedUntil}).
 *
 * Over the limit, by `rateLimits.v5Action` / `v3Action`:
 * - reject (v5 only): QoS 1/2 get PUBACK/PUBREC 0x96 Message rate too high, QoS 0 is dropped;
 * - throttle: the message is accepted and the socket is not read until the debt is paid back,
 *   so a client can never get ahead of its rate and nothing it sent is lost;
 * - disconnect: DISCONNECT 0x96 (v5) or the socket is closed (v3.1/3.1.1).
 */
import type { RateLimitsConfig } from '../config/rate-limit-schema.ts';
import type { Logger } from '../log.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';
import type { Connection } from './connection.ts';

type BucketConfig = RateLimitsConfig['perClient'];

/**
 * A token bucket in two dimensions: messages and bytes. A message larger than the byte burst
 * passes on a full bucket and leaves it in debt, so no message size is refused forever.
 *
 * @example
 * const b = new TokenBucket(10, 10, 0, 0, Date.now());
 * b.waitMs(100, Date.now()); // 0 while tokens remain
 */
export class TokenBucket {
  private messages: number;
  private bytes: number;
  private updatedAt: number;
  /** Connections holding this bucket (identity buckets only). */
  refs = 0;

  constructor(
    readonly messagesPerSecond: number,
    readonly burstMessages: number,
    readonly bytesPerSecond: number,
    readonly burstBytes: number,
    now: number,
  ) {
    this.messages = burstMessages;
    this.bytes = burstBytes;
    this.updatedAt = now;
  }

  private refill(now: number): void {
    const elapsed = now - this.updatedAt;
    if (elapsed <= 0) return;
    this.updatedAt = now;
    if (this.messagesPerSecond > 0) this.messages = Math.min(this.burstMessages, this.messages + (elapsed * this.messagesPerSecond) / 1000);
    if (this.bytesPerSecond > 0) this.bytes = Math.min(this.burstBytes, this.bytes + (elapsed * this.bytesPerSecond) / 1000);
  }

  /** Milliseconds until a message of `size` bytes may pass; 0 when it may pass now. */
  waitMs(size: number, now: number): number {
    this.refill(now);
    let wait = 0;
    if (this.messagesPerSecond > 0 && this.messages < 1) wait = ((1 - this.messages) * 1000) / this.messagesPerSecond;
    if (this.bytesPerSecond > 0) {
      const need = size < this.burstBytes ? size : this.burstBytes;
      if (this.bytes < need) wait = Math.max(wait, ((need - this.bytes) * 1000) / this.bytesPerSecond);
    }
    return wait === 0 ? 0 : Math.ceil(wait);
  }

  /** True when the bucket has refilled completely: forgetting it then gives nobody extra tokens. */
  isFull(now: number): boolean {
    this.refill(now);
    return (this.messagesPerSecond === 0 || this.messages >= this.burstMessages) && (this.bytesPerSecond === 0 || this.bytes >= this.burstBytes);
  }

  /** Takes one message of `size` bytes, possibly into debt. */
  take(size: number): void {
    if (this.messagesPerSecond > 0) this.messages -= 1;
    if (this.bytesPerSecond > 0) this.bytes -= size;
  }
}

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
  ) {}

  /** A limiter for the configuration, or null when every rate is 0 (the default). */
  static create(config: RateLimitsConfig, log: Logger): PublishRateLimiter | null {
    const on = (c: BucketConfig) => c.messagesPerSecond > 0 || c.bytesPerSecond > 0;
    return on(config.perClient) || on(config.perIdentity) ? new PublishRateLimiter(config, log) : null;
  }

  /** Number of live identity buckets (bounded by `maxIdentities`). */
  get identityCount(): number {
    return this.identities.size;
  }

  /** Gives a newly connected client its buckets. */
  attach(conn: Connection, now: number): void {
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
  release(conn: Connection): void {
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
   * when it was refused here (acknowledged with 0x96, dropped, or the client disconnected).
   */
  admit(conn: Connection, qos: number, packetId: number, size: number, now: number): boolean {
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
      conn.rateLimitedSince = 0;
      return true;
    }
    const stats = conn.broker.stats;
    stats.publishesRateLimited++;
    stats.messagesDropped++;
    this.report(conn, action);
    if (action === 'disconnect') {
      conn.broker.disconnectForSecurity(conn, ReasonCode.MessageRateTooHigh, 'rate-limit', 'message rate too high');
      return false;
    }
    // reject: the publisher learns it from the acknowledgement; QoS 0 has none [MQTT-3.3.4]
    if (qos === 1) conn.send({ cmd: 'puback', messageId: packetId, reasonCode: ReasonCode.MessageRateTooHigh });
    else if (qos === 2) conn.send({ cmd: 'pubrec', messageId: packetId, reasonCode: ReasonCode.MessageRateTooHigh });
    return false;
  }

  private throttle(conn: Connection, now: number, wait: number): void {
    const until = now + wait;
    if (conn.readPausedUntil === 0) {
      conn.broker.stats.connectionsThrottled++;
      if (conn.rateLimitedSince === 0) {
        conn.rateLimitedSince = now;
        this.warn(conn, 'throttle');
      }
    }
    if (until > conn.readPausedUntil) conn.readPausedUntil = until;
    conn.stream.pause();
  }

  /** One audit record per episode (the first refusal after an accepted publish), one warn line per 5 s. */
  private report(conn: Connection, action: string): void {
    if (conn.rateLimitedSince !== 0) return;
    conn.rateLimitedSince = conn.broker.clock;
    if (action !== 'disconnect') {
      conn.broker.audit(conn, { event: 'publish', action: 'rate-limit', decision: 'deny', reasonCode: ReasonCode.MessageRateTooHigh, reason: `message rate too high: ${action}` });
    }
    this.warn(conn, action);
  }

  private warn(conn: Connection, action: string): void {
    const now = conn.broker.clock;
    if (now - this.warnedAt < 5000) return;
    this.warnedAt = now;
    this.log.warn({ clientId: conn.clientId, username: conn.principal?.username, action, rateLimited: conn.broker.stats.publishesRateLimited, throttled: conn.broker.stats.connectionsThrottled }, 'publish rate limit reached');
  }
}
