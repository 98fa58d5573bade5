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
  | 'checkpoint';

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

/** Where audit records go. `record` is non-blocking, bounded and never throws. */
export interface AuditSink {
  record(event: AuditEvent): void;
  flush(): Promise<void>;
  close(): Promise<void>;
  /** Sinks that can fail report it here; the broker applies `audit.failMode` while `ok` is false. */
  health?(): AuditHealth;
  /** The same as `health().ok`, without allocating: the broker asks it on every access decision. */
  healthy?(): boolean;
}
