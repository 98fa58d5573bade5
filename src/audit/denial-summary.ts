/**
 * Repeated access decisions, summarised (denials, and allowed decisions past a larger budget). A client whose every request is denied wrote 708,000
 * full records (3.2 GB) in 20 s, and retention then deleted the history before it: one login
 * could erase the evidence. Per connection and per kind of denial (action, reason code, reason,
 * deciding authorizer, rule), the first `fullRecords` denials of a window are written in full
 * as they happen; the rest of the window is counted, and one `summary` record says how many,
 * with the first and last topic and their times, when the window ends. A flood then costs two
 * or so records per connection per kind per window, whatever its rate.
 *
 * The summary is an ordinary record in the chain: `audit verify` treats it like any other.
 */
import { cutTopicText } from './topic-cap.ts';
import type { AuditEvent, AuditEventName, AuditWho } from './types.ts';

export interface DenialSummarySettings {
  /** The window, per connection and kind of denial. */
  intervalMs: number;
  /** Denials of one kind written in full per window before the rest are counted. At least 1. */
  fullRecords: number;
  /**
   * Allowed decisions of one kind written in full per window before the rest are counted
   * (absent: allowed decisions are always written in full). An allowed re-subscribe repeated
   * in a loop wrote 43 MB of records a second and rotated the history away in about a minute.
   */
  fullAllowed?: number;
  /** Topics in summaries are cut to this length (see topic-cap.ts). */
  maxTopicLength: number;
}

/** One kind of denial of one connection, in its current window. */
interface Kind {
  event: AuditEventName;
  decision: 'allow' | 'deny';
  reasonCode: number;
  reason: string | undefined;
  decidedBy: string | undefined;
  rule: string | undefined;
  policyVersion: string | undefined;
  windowStart: number;
  /** Written in full in this window. */
  full: number;
  /** Counted (not written) in this window. */
  count: number;
  firstTopic: string;
  lastTopic: string;
  firstAt: number;
  lastAt: number;
}

/**
 * Bounds on what is remembered. Past them denials are written in full, as without summaries:
 * the bound on memory wins over the bound on records (each such record is still one line).
 */
const MAX_KINDS_PER_CONNECTION = 32;
const MAX_CONNECTIONS = 100_000;

/**
 * Full records one identity (its user name, or its address when it has none) may have written
 * per window across all its connections, before the rest are counted into each connection's
 * summaries. Per connection alone, one login with 500 connections wrote 7.5 MB of allowed
 * records a second. Bounded like the connections.
 */
export const IDENTITY_FULL_RECORDS = 1000;
const MAX_IDENTITIES = 100_000;

export class DenialSummarizer {
  /** Keyed by the `who` object the broker passes for every decision of a connection. */
  private readonly byWho = new Map<AuditWho, Kind[]>();
  /** Full records per identity in its current window. */
  private readonly byIdentity = new Map<string, { windowStart: number; full: number }>();
  /** Denials counted into summaries since start. */
  summarized = 0;

  constructor(
    private readonly settings: DenialSummarySettings,
    private readonly emit: (event: AuditEvent) => void,
  ) {}

  /** True when this denial is to be written in full now; false when it was counted into a summary. */
  admit(
    who: AuditWho,
    event: AuditEventName,
    decision: 'allow' | 'deny',
    reasonCode: number,
    reason: string | undefined,
    decidedBy: string | undefined,
    rule: string | undefined,
    policyVersion: string | undefined,
    topic: string,
    now: number,
  ): boolean {
    const fullRecords = decision === 'deny' ? this.settings.fullRecords : this.settings.fullAllowed;
    if (fullRecords === undefined) return true;
    let kinds = this.byWho.get(who);
    if (kinds === undefined) {
      if (this.byWho.size >= MAX_CONNECTIONS) return true;
      kinds = [];
      this.byWho.set(who, kinds);
    }
    let kind: Kind | undefined;
    for (const k of kinds) {
      if (k.event === event && k.decision === decision && k.reasonCode === reasonCode && k.reason === reason && k.decidedBy === decidedBy && k.rule === rule && k.policyVersion === policyVersion) {
        kind = k;
        break;
      }
    }
    if (kind === undefined) {
      if (kinds.length >= MAX_KINDS_PER_CONNECTION) return true;
      kind = { event, decision, reasonCode, reason, decidedBy, rule, policyVersion, windowStart: now, full: 0, count: 0, firstTopic: '', lastTopic: '', firstAt: 0, lastAt: 0 };
      kinds.push(kind);
    } else if (now - kind.windowStart >= this.settings.intervalMs) {
      // The sweep has not come round yet: this window's summary goes first, then a new window.
      this.summarize(who, kind);
      kind.windowStart = now;
      kind.full = 0;
    }
    if (kind.full < fullRecords && this.identityAllows(who, now)) {
      kind.full++;
      return true;
    }
    if (kind.count === 0) {
      kind.firstTopic = topic;
      kind.firstAt = now;
    }
    kind.count++;
    kind.lastTopic = topic;
    kind.lastAt = now;
    this.summarized++;
    return false;
  }

  /** Takes one of the identity's full records for this window; false when they are used up. */
  private identityAllows(who: AuditWho, now: number): boolean {
    const key = who.username !== undefined ? `u:${who.username}` : `a:${who.remoteAddress ?? ''}`;
    let id = this.byIdentity.get(key);
    if (id === undefined || now - id.windowStart >= this.settings.intervalMs) {
      if (id === undefined && this.byIdentity.size >= MAX_IDENTITIES) return true;
      id = { windowStart: now, full: 0 };
      this.byIdentity.set(key, id);
    }
    if (id.full >= IDENTITY_FULL_RECORDS) return false;
    id.full++;
    return true;
  }

  /** Writes the summaries of windows that have ended, and forgets kinds and connections that went quiet. */
  sweep(now: number): void {
    for (const [key, id] of this.byIdentity) if (now - id.windowStart >= this.settings.intervalMs) this.byIdentity.delete(key);
    for (const [who, kinds] of this.byWho) {
      for (let i = kinds.length - 1; i >= 0; i--) {
        const kind = kinds[i] as Kind;
        if (now - kind.windowStart < this.settings.intervalMs) continue;
        this.summarize(who, kind);
        // The next denial of this kind opens a new window (and is written in full).
        kinds.splice(i, 1);
      }
      if (kinds.length === 0) this.byWho.delete(who);
    }
  }

  /** Writes every pending summary, whether its window has ended or not (at close). */
  flushAll(): void {
    for (const [who, kinds] of this.byWho) for (const kind of kinds) this.summarize(who, kind);
    this.byWho.clear();
  }

  /** Connections with a window open (for tests and health). */
  get tracked(): number {
    return this.byWho.size;
  }

  private summarize(who: AuditWho, kind: Kind): void {
    if (kind.count === 0) return;
    const max = this.settings.maxTopicLength;
    const e: AuditEvent = { event: kind.event, action: 'summary', decision: kind.decision, reasonCode: kind.reasonCode };
    if (kind.reason !== undefined) e.reason = kind.reason;
    if (who.listener !== undefined) e.listener = who.listener;
    if (who.remoteAddress !== undefined) e.remoteAddress = who.remoteAddress;
    if (who.remotePort !== undefined) e.remotePort = who.remotePort;
    if (who.clientId !== undefined) e.clientId = who.clientId;
    if (who.username !== undefined) e.username = who.username;
    if (who.authMethod !== undefined) e.authMethod = who.authMethod;
    if (kind.decidedBy !== undefined) e.decidedBy = kind.decidedBy;
    if (kind.rule !== undefined) e.rule = kind.rule;
    if (who.certFingerprint !== undefined) e.certFingerprint = who.certFingerprint;
    if (who.certSubject !== undefined) e.certSubject = who.certSubject;
    // The first topic is the record's own (so `audit tail --topic` finds it); the sink cuts it.
    e.topic = kind.firstTopic;
    if (kind.policyVersion !== undefined) e.policyVersion = kind.policyVersion;
    e.detail = {
      count: kind.count,
      lastTopic: cutTopicText(kind.lastTopic, max),
      first: new Date(kind.firstAt).toISOString(),
      last: new Date(kind.lastAt).toISOString(),
      windowSeconds: this.settings.intervalMs / 1000,
    };
    kind.count = 0;
    kind.firstTopic = kind.lastTopic = '';
    this.emit(e);
  }
}
