/** The audit record schema version written in every record. */
export const AUDIT_SCHEMA_VERSION = 1;

export type AuditEventName =
  | 'connect'
  | 'publish'
  | 'subscribe'
  | 'unsubscribe'
  | 'deliver'
  | 'will'
  | 'session'
  | 'disconnect'
  | 'reload'
  | 'admin';

/**
 * One access decision. Secrets (passwords, tokens, keys) and payloads are never part of it.
 */
export interface AuditEvent {
  event: AuditEventName;
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
  /** Each provider's verdict, for connect records. */
  verdicts?: { provider: string; kind: string; reason?: number; detail?: string }[];
  topic?: string;
  qos?: number;
  retain?: boolean;
  certFingerprint?: string;
  certSubject?: string;
  policyVersion?: string;
}

/** Where audit records go. `record` is non-blocking, bounded and never throws. */
export interface AuditSink {
  record(event: AuditEvent): void;
  flush(): Promise<void>;
  close(): Promise<void>;
}
