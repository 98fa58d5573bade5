/**
 * The limit on denials per connection: a client whose requests keep being denied is
 * disconnected once it has had `limit` denials within `windowMs` (`audit.denials.disconnectAfter`
 * within `audit.denials.disconnectWindowSeconds`). Summaries keep such a client from filling the
 * audit log; this keeps it from keeping the authorizer busy.
 *
 * Only the client's own requests count (publish, subscribe, unsubscribe): a delivery withheld
 * from a subscriber is the publisher's doing, and a denial because the audit log cannot be
 * written (fail-closed) is nobody's. The caller decides what to count; this only counts.
 *
 * @example
 * const limiter = DenialLimiter.create(config.audit.denials); // null when the limit is off
 * // after an authorizer denied a client's own request:
 * if (limiter?.deny(conn) === true) broker.disconnectForSecurity(conn, ReasonCode.QuotaExceeded, 'denial-limit', limiter.reason());
 */

export interface DenialLimitSettings {
  /** Denials within the window that disconnect; 0 turns the limit off. */
  disconnectAfter: number;
  disconnectWindowSeconds: number;
}

interface Window {
  start: number;
  count: number;
  /** The limit was passed in this window (reported once). */
  tripped: boolean;
}

export class DenialLimiter {
  /** Per connection (any object the caller keeps for one): forgotten with it. */
  private readonly windows = new WeakMap<object, Window>();
  /** Times the limit was passed since start. */
  tripped = 0;

  private constructor(
    readonly limit: number,
    readonly windowMs: number,
  ) {}

  /** A limiter for the settings, or null when `disconnectAfter` is 0 (off). */
  static create(settings: DenialLimitSettings): DenialLimiter | null {
    if (settings.disconnectAfter <= 0) return null;
    return new DenialLimiter(settings.disconnectAfter, settings.disconnectWindowSeconds * 1000);
  }

  /**
   * Counts one denial of `connection`'s own request. True exactly once per window: at the denial
   * that reaches the limit. The caller then disconnects the client (and the disconnect is
   * audited); further denials of the same window answer false, so it is not done twice.
   */
  deny(connection: object, now = Date.now()): boolean {
    let w = this.windows.get(connection);
    if (w === undefined || now - w.start >= this.windowMs) {
      w = { start: now, count: 0, tripped: false };
      this.windows.set(connection, w);
    }
    w.count++;
    if (w.tripped || w.count < this.limit) return false;
    w.tripped = true;
    this.tripped++;
    return true;
  }

  /** Denials counted in `connection`'s current window (0 when it has none open). */
  count(connection: object, now = Date.now()): number {
    const w = this.windows.get(connection);
    return w === undefined || now - w.start >= this.windowMs ? 0 : w.count;
  }

  /** The reason for the disconnect, for the DISCONNECT packet and the audit record. */
  reason(): string {
    return `${this.limit} requests denied within ${this.windowMs / 1000} s`;
  }
}
