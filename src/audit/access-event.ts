/** The one way an access decision passed as `recordAccess` arguments becomes an {@link AuditEvent}. */
import type { AuditEvent, AuditEventName, AuditWho } from './types.ts';

/** An access decision as an event: what `recordAccess` writes, field for field (the sink's slow path, the metrics tee). */
export function accessEvent(
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
): AuditEvent {
  const e: AuditEvent = { event, decision, reasonCode };
  if (reason !== undefined) e.reason = reason;
  if (who.listener !== undefined) e.listener = who.listener;
  if (who.remoteAddress !== undefined) e.remoteAddress = who.remoteAddress;
  if (who.remotePort !== undefined) e.remotePort = who.remotePort;
  if (who.clientId !== undefined) e.clientId = who.clientId;
  if (who.username !== undefined) e.username = who.username;
  if (who.authMethod !== undefined) e.authMethod = who.authMethod;
  if (decidedBy !== undefined) e.decidedBy = decidedBy;
  if (rule !== undefined) e.rule = rule;
  if (who.certFingerprint !== undefined) e.certFingerprint = who.certFingerprint;
  if (who.certSubject !== undefined) e.certSubject = who.certSubject;
  e.topic = topic;
  e.qos = qos;
  e.retain = retain;
  if (policyVersion !== undefined) e.policyVersion = policyVersion;
  return e;
}
