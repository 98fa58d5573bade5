/**
 * One audit record on the wire: a JSON object on one line, its fields in a fixed order, ending
 * with `prev` (the hash of the record before it) and `hash` (SHA-256 over this line with the
 * `hash` field left out). Any edit to a record changes its hash; any deleted, inserted or moved
 * record breaks the `prev` link of the record after it.
 */
import crypto from 'node:crypto';
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
 * One JSON string literal, exactly as `escapeUnsafe(JSON.stringify(text))` writes it, without its
 * cost in the common case. Anything but printable ASCII (and quotes and backslashes) takes the
 * slow path: JSON.stringify escapes C0 controls and lone surrogates, escapeUnsafe the rest.
 * A plain loop, because a RegExp call costs more than scanning a short client id or topic.
 */
export function jsonString(text: string): string {
  return isPlainJson(text) ? `"${text}"` : escapeUnsafe(JSON.stringify(text));
}

/** True when `text` is printable ASCII without quotes or backslashes: its JSON string is itself in quotes. */
export function isPlainJson(text: string): boolean {
  for (let i = 0; i < text.length; i++) if (!isPlainJsonChar(text.charCodeAt(i))) return false;
  return true;
}

/** A UTF-16 code unit JSON writes as itself inside a string: printable ASCII but `"` and `\`. */
export function isPlainJsonChar(c: number): boolean {
  return c >= 0x20 && c <= 0x7e && c !== 0x22 && c !== 0x5c;
}

/** One JSON value as `escapeUnsafe(JSON.stringify(value))` writes it; undefined when JSON leaves the field out. */
function jsonValue(value: unknown): string | undefined {
  switch (typeof value) {
    case 'string':
      return jsonString(value);
    case 'number':
      return Number.isFinite(value) ? String(value) : 'null';
    case 'boolean':
      return value ? 'true' : 'false';
    case 'undefined':
      return undefined;
    default: {
      const text = JSON.stringify(value) as string | undefined;
      return text === undefined ? undefined : escapeUnsafe(text);
    }
  }
}

export const RECORD_PREFIX = `{"v":${AUDIT_SCHEMA_VERSION},"time":"`;

/** `,"name":value`, or nothing when JSON leaves the field out. */
function field(name: string, value: unknown): string {
  if (value === undefined) return '';
  const text = jsonValue(value);
  return text === undefined ? '' : name + text;
}

/**
 * The hashed body of a record: the line without its `hash` field. Built by hand for the fixed
 * schema (the field order below is the record's); byte for byte what
 * `escapeUnsafe(JSON.stringify(orderedRecord))` gives (a test holds it to that for hostile
 * strings), at a fraction of the cost.
 */
export function serializeBody(e: AuditEvent, seq: number, time: string, prev: string, signature?: string): string {
  return `${RECORD_PREFIX}${time}","seq":${seq}${serializeFields(e, signature)},"prev":"${prev}"}`;
}

/**
 * The event's own fields as they sit in a record: everything between `seq` and `prev`, each
 * starting with its comma. Each field is read by name so property access stays fast.
 */
export function serializeFields(e: AuditEvent, signature?: string): string {
  return (
    field(',"event":', e.event) +
    field(',"action":', e.action) +
    field(',"decision":', e.decision) +
    field(',"reasonCode":', e.reasonCode) +
    field(',"reason":', e.reason) +
    field(',"listener":', e.listener) +
    field(',"remoteAddress":', e.remoteAddress) +
    field(',"remotePort":', e.remotePort) +
    field(',"clientId":', e.clientId) +
    field(',"username":', e.username) +
    field(',"authMethod":', e.authMethod) +
    field(',"decidedBy":', e.decidedBy) +
    field(',"rule":', e.rule) +
    field(',"verdicts":', e.verdicts) +
    field(',"certFingerprint":', e.certFingerprint) +
    field(',"certSubject":', e.certSubject) +
    field(',"topic":', e.topic) +
    field(',"qos":', e.qos) +
    field(',"retain":', e.retain) +
    field(',"policyVersion":', e.policyVersion) +
    field(',"detail":', e.detail) +
    field(',"signature":', signature)
  );
}

/** `,"name":value` for one field of a record, or nothing when JSON leaves it out. */
export { field as serializeField };

/**
 * Serializes one record and links it to `tip`. The field order is fixed so a reader can
 * recompute the hash from the line as written.
 */
export function serializeRecord(event: AuditEvent, seq: number, time: string, prev: string, signature?: string): { line: string; hash: string } {
  const body = serializeBody(event, seq, time, prev, signature);
  const hash = sha256(body);
  return { line: `${body.slice(0, -1)},"hash":"${hash}"}`, hash };
}

/** The reference serializer the hand-written one must match: kept for tests. */
export function serializeBodyWithJson(event: AuditEvent, seq: number, time: string, prev: string, signature?: string): string {
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
  return escapeUnsafe(JSON.stringify(ordered));
}

/**
 * RFC 3339 UTC with milliseconds, as `new Date(ms).toISOString()` writes it, formatted once per
 * millisecond: records that share a millisecond share the string.
 */
export function createTimeFormatter(): (ms: number) => string {
  let lastMs = NaN;
  let last = '';
  return (ms) => {
    if (ms !== lastMs) {
      lastMs = ms;
      last = new Date(ms).toISOString();
    }
    return last;
  };
}

/** SHA-256 (hex) in one native call where Node has `crypto.hash` (20.12+): no Hash object per record. */
export const sha256: (data: string | Uint8Array) => string = sha256Of(crypto);

/**
 * SHA-256 in hex from a given crypto module. Self-contained (it uses only its argument), because
 * the audit chaining thread is sent its source text (chain-segment.ts).
 */
export function sha256Of(c: typeof crypto): (data: string | Uint8Array) => string {
  return typeof c.hash === 'function' ? (data) => c.hash('sha256', data, 'hex') : (data) => c.createHash('sha256').update(data).digest('hex');
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
