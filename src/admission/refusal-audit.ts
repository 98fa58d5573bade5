/**
 * Audit records for connections refused at accept time, rate-limited so that a flood cannot
 * flood the audit log: the first refusal from an address is recorded at once; further ones
 * within `intervalMs` are counted and recorded as one summary when the interval ends. Beyond
 * `maxAddresses` addresses in one interval, refusals are summed into a single record with
 * `remoteAddress: '*'`. So one address costs at most two records per interval, and any flood at
 * most 2 × maxAddresses + 1.
 */
import type { AuditEvent } from '../audit/types.ts';
import type { Logger } from '../log.ts';
import { limitRefusalSetting } from './limiter.ts';

export interface Refusal {
  /** Stable name: total-cap, listener-cap, ip-cap, rate, tracking-full, banned. */
  refusal: string;
  reason: string;
  listener: string;
  remoteAddress: string;
  remotePort: number;
  /** Extra non-secret detail for the first record (e.g. the ban that matched). */
  detail?: Record<string, string | number>;
}

interface Window {
  since: number;
  listener: string;
  suppressed: number;
  byRefusal: Map<string, number>;
}

/** The setting behind each refusal at accept time, named in the log line. */
const SETTING: Record<string, string> = { ...limitRefusalSetting, banned: 'the ban file, admission.bans.file' };

export class RefusalAuditor {
  private readonly windows = new Map<string, Window>();
  private overflow: { count: number; byRefusal: Map<string, number> } = { count: 0, byRefusal: new Map() };
  private sinceLog: Map<string, number> = new Map();
  private logged = 0;
  /** Refusals since start, by refusal name. */
  readonly counts = new Map<string, number>();

  constructor(
    private readonly intervalMs: number,
    private readonly maxAddresses: number,
    private readonly audit: (event: AuditEvent) => void,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  note(r: Refusal): void {
    this.counts.set(r.refusal, (this.counts.get(r.refusal) ?? 0) + 1);
    this.sinceLog.set(r.refusal, (this.sinceLog.get(r.refusal) ?? 0) + 1);
    this.logged++;
    const w = this.windows.get(r.remoteAddress);
    if (w !== undefined) {
      w.suppressed++;
      w.byRefusal.set(r.refusal, (w.byRefusal.get(r.refusal) ?? 0) + 1);
      return;
    }
    if (this.windows.size >= this.maxAddresses) {
      this.overflow.count++;
      this.overflow.byRefusal.set(r.refusal, (this.overflow.byRefusal.get(r.refusal) ?? 0) + 1);
      return;
    }
    this.windows.set(r.remoteAddress, { since: this.now(), listener: r.listener, suppressed: 0, byRefusal: new Map() });
    this.audit({
      event: 'connect',
      action: 'admission',
      decision: 'deny',
      reason: r.reason,
      listener: r.listener,
      remoteAddress: r.remoteAddress,
      remotePort: r.remotePort,
      detail: { refusal: r.refusal, count: 1, ...r.detail },
    });
  }

  /** Writes the summaries of intervals that have ended; `all` flushes every window (at stop). */
  flush(all = false): void {
    const now = this.now();
    for (const [address, w] of this.windows) {
      if (!all && now - w.since < this.intervalMs) continue;
      this.windows.delete(address);
      if (w.suppressed === 0) continue;
      this.audit({
        event: 'connect',
        action: 'admission',
        decision: 'deny',
        reason: `${w.suppressed} more connections refused from this address within ${now - w.since} ms`,
        listener: w.listener,
        remoteAddress: address,
        detail: { count: w.suppressed, ...Object.fromEntries(w.byRefusal) },
      });
    }
    if (this.overflow.count > 0 && (all || this.windows.size < this.maxAddresses)) {
      this.audit({
        event: 'connect',
        action: 'admission',
        decision: 'deny',
        reason: `${this.overflow.count} connections refused from addresses beyond the ${this.maxAddresses} recorded individually`,
        remoteAddress: '*',
        detail: { count: this.overflow.count, ...Object.fromEntries(this.overflow.byRefusal) },
      });
      this.overflow = { count: 0, byRefusal: new Map() };
    }
    if (this.logged > 0) {
      const why = [...this.sinceLog.keys()].map((refusal) => `${refusal}: ${SETTING[refusal] ?? refusal}`).join('; ');
      this.log.warn({ refused: this.logged, ...Object.fromEntries(this.sinceLog) }, `connections refused at accept time (${why}); raise the setting, or list trusted sources in admission.exempt`);
      this.logged = 0;
      this.sinceLog = new Map();
    }
  }
}
