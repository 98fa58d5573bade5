/**
 * A tee in front of the configured audit sink: every access decision already becomes an audit
 * record, so counting the records that pass counts the decisions, with no hook in the broker.
 * It counts connects by result and reason code, access decisions by action and result, TLS
 * refusals, security disconnects, bans and reloads, and keeps the latest denials for the ops
 * console. Everything else (health, back-pressure, flushing) is the wrapped sink's, unchanged:
 * an optional method of the sink is offered only when the sink has it, because the broker reads
 * their presence (fail-closed needs `health`, read back-pressure needs both halves).
 *
 * What it sees is what the broker records: allowed publishes and deliveries only when
 * `audit.allowed` records them (denials always), allowed connects when `audit.allowed.connect`.
 */
import type { AuditEvent, AuditEventName, AuditSink } from '../audit/types.ts';
import { accessEvent } from '../audit/access-event.ts';
import { LabeledCounts, reasonLabel } from './counts.ts';

/** The access events, in the order of {@link AuditCounters.access}. */
export const ACCESS_EVENTS = ['publish', 'subscribe', 'unsubscribe', 'deliver', 'will'] as const;
type AccessEvent = (typeof ACCESS_EVENTS)[number];
const ACCESS_INDEX: Record<string, number> = { publish: 0, subscribe: 1, unsubscribe: 2, deliver: 3, will: 4 };

/** Denials of someone's request, kept for the console (a ban added or a failed reload is a 'deny' record too, but not a refusal). */
const KEPT_DENIALS: ReadonlySet<string> = new Set(['connect', 'tls', 'publish', 'subscribe', 'unsubscribe', 'deliver', 'will', 'disconnect', 'admin']);

/** A denial as the console shows it: the record's own fields (no secret is ever part of a record). */
export type RecentDenial = AuditEvent & { time: string };

export class AuditCounters {
  /** Access decisions: [ACCESS_EVENTS index][0: allow, 1: deny]; plain numbers, as the hot path writes them. */
  readonly access: [number, number][] = ACCESS_EVENTS.map(() => [0, 0] as [number, number]);
  /** Every other record, by event and decision. */
  readonly events = new LabeledCounts(['event', 'decision'], 32);
  /** Connects: allowed, and refused by reason code. */
  connectsAllowed = 0;
  readonly connectsRefused = new LabeledCounts(['reason_code'], 256);
  readonly tls = new LabeledCounts(['listener', 'reason'], 64);
  readonly disconnects = new LabeledCounts(['reason'], 48);
  readonly bans = new LabeledCounts(['event', 'action'], 32);
  readonly reloads = new LabeledCounts(['what', 'result'], 48);
  /** The latest denials: a ring of `keepDenials` slots, `next` the one written next. */
  private readonly recent: ({ event: AuditEvent; at: number } | undefined)[];
  private next = 0;

  constructor(private readonly keepDenials = 200) {
    this.recent = new Array(keepDenials).fill(undefined);
  }

  /** Counts one record, and keeps it when it is a denial. */
  count(e: AuditEvent): void {
    const i = ACCESS_INDEX[e.event];
    if (i !== undefined) {
      this.access[i]![e.decision === 'deny' ? 1 : 0]++;
    } else {
      this.events.add([e.event, e.decision]);
      switch (e.event) {
        case 'connect':
          if (e.decision === 'allow') this.connectsAllowed++;
          else this.connectsRefused.add([reasonLabel(e.reasonCode)]);
          break;
        case 'tls':
          this.tls.add([e.listener ?? 'unknown', typeof e.detail?.refusal === 'string' ? e.detail.refusal : 'unknown']);
          break;
        case 'disconnect':
          this.disconnects.add([e.action ?? 'unknown']);
          break;
        case 'ban':
        case 'unban':
          this.bans.add([e.event, e.action ?? 'unknown']);
          break;
        case 'reload':
          this.reloads.add([e.action ?? 'unknown', e.decision === 'allow' ? 'ok' : 'failed']);
          break;
      }
    }
    if (e.decision === 'deny' && KEPT_DENIALS.has(e.event)) this.keep(e);
  }

  /**
   * The access fast path: an allowed access decision is counted without building an event (with
   * `audit.allowed.publish` / `deliver` on, this runs once per message and per delivery).
   * Returns false for anything else (a denial, to be kept; not an access event): the caller then
   * builds the event and passes it to {@link count}. No closure is made per call.
   */
  countAllowedAccess(event: AuditEventName, decision: 'allow' | 'deny'): boolean {
    if (decision !== 'allow') return false;
    const i = ACCESS_INDEX[event];
    if (i === undefined) return false;
    (this.access[i] as [number, number])[0]++;
    return true;
  }

  /** Allowed and denied decisions of one access event. */
  accessCounts(event: AccessEvent): { allow: number; deny: number } {
    const [allow, deny] = this.access[ACCESS_INDEX[event] as number] as [number, number];
    return { allow, deny };
  }

  private keep(e: AuditEvent): void {
    // A copy: the sink may add to the event it was given.
    this.recent[this.next] = { event: { ...e }, at: Date.now() };
    this.next = (this.next + 1) % this.keepDenials;
  }

  /** The latest denials, newest first. */
  latestDenials(limit: number): RecentDenial[] {
    const out: RecentDenial[] = [];
    for (let k = 1; k <= this.keepDenials && out.length < limit; k++) {
      const slot = this.recent[(this.next - k + this.keepDenials) % this.keepDenials];
      if (slot === undefined) break;
      out.push({ ...slot.event, time: new Date(slot.at).toISOString() });
    }
    return out;
  }
}

/**
 * Wraps `sink` so that every record is counted first. The result offers exactly the optional
 * methods `sink` has.
 */
export function teeAuditSink(sink: AuditSink, counters: AuditCounters): AuditSink {
  const tee: AuditSink = {
    record(event) {
      counters.count(event);
      sink.record(event);
    },
    flush: () => sink.flush(),
    close: () => sink.close(),
  };
  const access = sink.recordAccess;
  if (access !== undefined) {
    tee.recordAccess = (who, event, decision, reasonCode, reason, decidedBy, rule, policyVersion, topic, qos, retain) => {
      if (!counters.countAllowedAccess(event, decision)) counters.count(accessEvent(who, event, decision, reasonCode, reason, decidedBy, rule, policyVersion, topic, qos, retain));
      access.call(sink, who, event, decision, reasonCode, reason, decidedBy, rule, policyVersion, topic, qos, retain);
    };
  }
  // Plain closures, not bound functions: the broker asks healthy() on every access decision.
  if (sink.health !== undefined) tee.health = () => (sink.health as () => ReturnType<NonNullable<AuditSink['health']>>).call(sink);
  if (sink.healthy !== undefined) tee.healthy = () => (sink.healthy as () => boolean).call(sink);
  if (sink.backlogged !== undefined) tee.backlogged = () => (sink.backlogged as () => boolean).call(sink);
  if (sink.whenDrained !== undefined) tee.whenDrained = (fn) => (sink.whenDrained as (f: () => void) => void).call(sink, fn);
  return tee;
}
