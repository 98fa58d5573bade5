/**
 * The audit record schema. Version 2 adds the hash chain (`prev`, `hash`), the action field,
 * certificate subject, rule and the security-disconnect, reload, ban, TLS and checkpoint events.
 * See docs/audit.md for every field.
 */
export const AUDIT_SCHEMA_VERSION = 2;

export type AuditEventName =
  | 'connect'
  | 'tls'
  | 'publish'
  | 'subscribe'
  | 'unsubscribe'
  | 'deliver'
  | 'will'
  | 'session'
  | 'disconnect'
  | 'reload'
  | 'ban'
  | 'unban'
  | 'admin'
  /** Written by the audit sink itself: start, recovery after a failure, dropped-record counts. */
  | 'audit'
  /** A signed checkpoint over the chain so far. */
  | 'checkpoint'
  /** The session store: opened (with what it recovered and purged), writes failing and recovering. */
  | 'store';

/**
 * One access decision. Secrets (passwords, tokens, keys) and payloads are never part of it.
 *
 * @example
 * sink.record({ event: 'publish', decision: 'deny', reasonCode: 0x87, reason: 'not authorized', clientId: 'dev-1', topic: 'a/b', qos: 1, retain: false });
 */
export interface AuditEvent {
  event: AuditEventName;
  /** What was attempted, when it is more specific than the event (e.g. 'policy' for a reload, 'expired' for a disconnect). */
  action?: string;
  decision: 'allow' | 'deny';
  reasonCode?: number;
  reason?: string;
  listener?: string;
  remoteAddress?: string;
  remotePort?: number;
  clientId?: string;
  username?: string;
  authMethod?: string;
  /** The provider or authorizer that decided. */
  decidedBy?: string;
  /** The policy rule that decided, when the authorizer reports one. */
  rule?: string;
  /** Each provider's verdict, for connect records. */
  verdicts?: { provider: string; kind: string; reason?: number; detail?: string }[];
  topic?: string;
  qos?: number;
  retain?: boolean;
  certFingerprint?: string;
  certSubject?: string;
  policyVersion?: string;
  /** Free-form, non-secret details (file name of a reload, counts). */
  detail?: Record<string, string | number | boolean>;
}

/** What the broker reads from a sink to apply the failure mode. */
export interface AuditHealth {
  /** False while the sink cannot write (disk full, permission lost) or its queue is full. */
  ok: boolean;
  /** Records waiting to be written. */
  pending: number;
  /** Records dropped since start (only ever when the queue was full); each drop is logged and counted. */
  dropped: number;
  /** Records written since start. */
  written: number;
  /** The last write error, while failing. */
  error?: string;
}

/** Who asked, for the records of access decisions: the same for every decision of a connection. */
export interface AuditWho {
  listener?: string | undefined;
  remoteAddress?: string | undefined;
  remotePort?: number | undefined;
  clientId?: string | undefined;
  username?: string | undefined;
  authMethod?: string | undefined;
  certFingerprint?: string | undefined;
  certSubject?: string | undefined;
}

/** Where audit records go. `record` is non-blocking, bounded and never throws. */
export interface AuditSink {
  record(event: AuditEvent): void;
  /**
   * Optional fast path for access decisions (publish, subscribe, unsubscribe, deliver, will):
   * the record must be exactly what `record()` writes for an event with these fields and `who`'s.
   * The broker passes the same `who` object for every decision of a connection, so a sink can
   * cache what it derives from it.
   */
  recordAccess?(
    who: AuditWho,
    event: AuditEventName,
    decision: 'allow' | 'deny',
    reasonCode: number,
    reason: string | undefined,
    decidedBy: string | undefined,
    rule: string | undefined,
    policyVersion: string | undefined,
    topic: string,
    qos: number,
    retain: boolean,
  ): void;
  flush(): Promise<void>;
  close(): Promise<void>;
  /** Sinks that can fail report it here; the broker applies `audit.failMode` while `ok` is false. */
  health?(): AuditHealth;
  /** The same as `health().ok`, without allocating: the broker asks it on every access decision. */
  healthy?(): boolean;
  /**
   * Records arrive faster than they are written: the broker stops reading from clients (read
   * back-pressure). Only used together with `whenDrained`; a sink with one and not the other is
   * never waited for.
   */
  backlogged?(): boolean;
  /** Calls back once, when the sink has caught up (or can no longer: writes fail, or it closed). */
  whenDrained?(fn: () => void): void;
}
