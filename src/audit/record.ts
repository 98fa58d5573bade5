/**
 * One audit record on the wire: a JSON object on one line, its fields in a fixed order, ending
 * with `prev` (the hash of the record before it) and `hash` (SHA-256 over this line with the
 * `hash` field left out). Any edit to a record changes its hash; any deleted, inserted or moved
 * record breaks the `prev` link of the record after it.
 */
import { createHash } from 'node:crypto';
import { AUDIT_SCHEMA_VERSION, type AuditEvent } from './types.ts';

/** The `prev` of the very first record of a chain. */
export const GENESIS = '0'.repeat(64);

/** Where a chain stands: the last record's sequence number and hash. */
export interface ChainTip {
  seq: number;
  hash: string;
}

/** A parsed record: the event plus the fields the sink adds. */
export type AuditRecord = AuditEvent & {
  v: number;
  time: string;
  seq: number;
  signature?: string;
  prev: string;
  hash: string;
};

const HASH_SUFFIX = /,"hash":"([0-9a-f]{64})"\}$/;
// JSON.stringify escapes C0 controls and quotes; these are valid JSON unescaped but could still
// confuse terminals and line-oriented tools, so they are escaped too.
const UNSAFE = /[\u007f-\u009f\u2028\u2029]/g;

/** Escapes DEL, C1 controls and the Unicode line separators, which JSON.stringify leaves raw. */
export function escapeUnsafe(text: string): string {
  UNSAFE.lastIndex = 0;
  if (!UNSAFE.test(text)) return text;
  return text.replace(UNSAFE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/**
 * Serializes one record and links it to `tip`. The field order is fixed so a reader can
 * recompute the hash from the line as written.
 */
export function serializeRecord(event: AuditEvent, seq: number, time: string, prev: string, signature?: string): { line: string; hash: string } {
  const ordered = {
    v: AUDIT_SCHEMA_VERSION,
    time,
    seq,
    event: event.event,
    action: event.action,
    decision: event.decision,
    reasonCode: event.reasonCode,
    reason: event.reason,
    listener: event.listener,
    remoteAddress: event.remoteAddress,
    remotePort: event.remotePort,
    clientId: event.clientId,
    username: event.username,
    authMethod: event.authMethod,
    decidedBy: event.decidedBy,
    rule: event.rule,
    verdicts: event.verdicts,
    certFingerprint: event.certFingerprint,
    certSubject: event.certSubject,
    topic: event.topic,
    qos: event.qos,
    retain: event.retain,
    policyVersion: event.policyVersion,
    detail: event.detail,
    signature,
    prev,
  };
  const body = escapeUnsafe(JSON.stringify(ordered));
  const hash = sha256(body);
  return { line: `${body.slice(0, -1)},"hash":"${hash}"}`, hash };
}

export function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/** Splits a written line into the hashed body and the hash it claims; null when it has no hash field. */
export function splitHash(line: string): { body: string; hash: string } | null {
  const m = HASH_SUFFIX.exec(line);
  if (m === null) return null;
  return { body: `${line.slice(0, m.index)}}`, hash: m[1] as string };
}

/** Parses a line into a record when it is well formed (hash not checked). */
export function parseRecord(line: string): AuditRecord | null {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return null;
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return null;
  const r = value as Record<string, unknown>;
  if (typeof r.seq !== 'number' || typeof r.prev !== 'string' || typeof r.hash !== 'string' || typeof r.event !== 'string') return null;
  return value as AuditRecord;
}
