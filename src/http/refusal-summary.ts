/**
 * Audit records for refusals that a stranger can repeat at will on the operations listener
 * (connections over the per-address cap or when the listener is full, requests the HTTP parser
 * refuses, a foreign Host, a throttled address or token, a failed authentication, a token check
 * refused because the checks are busy), summarised so that a flood cannot flood the audit log:
 * the first refusals of a kind from an address (one, or `FULL_FIRST` of the kind) are recorded
 * in full at once; further ones within the interval are counted and written as one summary
 * record when it ends. Beyond `maxKeys` (address, kind) pairs in one interval, refusals are
 * summed into one record with `remoteAddress: '*'`. So an address costs at most
 * `FULL_FIRST[kind] + 1` records per kind per interval, and any flood at most
 * (max FULL_FIRST + 1) × maxKeys + 1.
 */
import type { AuditEvent } from '../audit/types.ts';

/** What a refusal is, for the summary key and the record's `detail.refusal`. */
export type RefusalKind = 'connection-cap' | 'listener-full' | 'parser' | 'host' | 'throttled' | 'unauthenticated' | 'busy';

/**
 * Refusals of these kinds recorded in full per address and interval before the rest are counted
 * (one for the others). A few failed authentications are an operator's typo or an expired
 * token, worth a record each; hundreds are a flood.
 */
const FULL_FIRST: Partial<Record<RefusalKind, number>> = { unauthenticated: 10 };

interface Window {
  since: number;
  address: string;
  kind: RefusalKind;
  /** Recorded in full in this interval. */
  full: number;
  count: number;
  byStatus: Map<number, number>;
}

export class RefusalSummary {
  private readonly windows = new Map<string, Window>();
  private overflow = { count: 0, byKind: new Map<string, number>() };
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly audit: (event: AuditEvent) => void,
    private readonly intervalMs = 10_000,
    private readonly maxKeys = 1000,
    private readonly now: () => number = Date.now,
  ) {
    this.timer = setInterval(() => this.flush(), Math.max(250, Math.floor(intervalMs / 4)));
    this.timer.unref();
  }

  /**
   * Notes one refusal: true when it is to be recorded in full now (the first of its kind from
   * this address in the interval), false when it was counted into the summary.
   */
  admit(address: string, kind: RefusalKind, status: number): boolean {
    const key = JSON.stringify([address, kind]);
    const w = this.windows.get(key);
    if (w !== undefined) {
      if (w.full < (FULL_FIRST[kind] ?? 1)) {
        w.full++;
        return true;
      }
      w.count++;
      w.byStatus.set(status, (w.byStatus.get(status) ?? 0) + 1);
      return false;
    }
    if (this.windows.size >= this.maxKeys) {
      this.overflow.count++;
      this.overflow.byKind.set(kind, (this.overflow.byKind.get(kind) ?? 0) + 1);
      return false;
    }
    this.windows.set(key, { since: this.now(), address, kind, full: 1, count: 0, byStatus: new Map() });
    return true;
  }

  /** Writes the summaries of intervals that have ended; `all` writes every one (at close). */
  flush(all = false): void {
    const now = this.now();
    for (const [key, w] of this.windows) {
      if (!all && now - w.since < this.intervalMs) continue;
      this.windows.delete(key);
      if (w.count === 0) continue;
      this.audit({
        event: 'admin',
        action: 'http.refusals',
        decision: 'deny',
        reason: `${w.count} more ${w.kind} refusals from this address within ${now - w.since} ms (summarised)`,
        listener: 'http',
        remoteAddress: w.address,
        detail: { refusal: w.kind, count: w.count, ...Object.fromEntries([...w.byStatus].map(([s, n]) => [`status${s}`, n])) },
      });
    }
    if (this.overflow.count > 0 && (all || this.windows.size < this.maxKeys)) {
      this.audit({
        event: 'admin',
        action: 'http.refusals',
        decision: 'deny',
        reason: `${this.overflow.count} refusals from addresses beyond the ${this.maxKeys} recorded individually (summarised)`,
        listener: 'http',
        remoteAddress: '*',
        detail: { count: this.overflow.count, ...Object.fromEntries(this.overflow.byKind) },
      });
      this.overflow = { count: 0, byKind: new Map() };
    }
  }

  close(): void {
    clearInterval(this.timer);
    this.flush(true);
  }
}
