/**
 * How values are laid out in the LMDB store.
 *
 * Every value is an envelope around a body:
 * - 0x01 plain:  [0x01][CRC-32 of (table, key, body), 4 bytes][body]
 * - 0x02 sealed: [0x02][key id length][key id][epoch u32][counter u64][GCM tag 16][ciphertext]
 *   (AES-256-GCM, see keyring.ts; the table and key are the additional data)
 * The checksum and the tag bind a body to the record it was written for: a flipped bit, a torn
 * page or a value moved to another key is found at load, never served.
 *
 * A body is JSON followed by binary parts: [u32 JSON length][JSON]([u32 length][bytes])*. Payloads
 * and correlation data travel as bytes, never through strings. The LMDB store (format 3) keeps
 * queued, retained and in-flight messages in a binary layout instead (lmdb-records.ts); the
 * encoders here still write every other LMDB record, and every record of the Redis store.
 */
import zlib from 'node:zlib';
import type { PublishProperties, QoS } from '../protocol/codec.ts';
import type { Keyring } from './keyring.ts';
import type { StoredInflight, StoredMessage, StoredPrincipal, StoredSession, StoredSubscription, StoredWill } from './types.ts';

/** Table numbers, part of every checksum and of the encryption's additional data. */
export const Table = {
  meta: 1,
  sessions: 2,
  subscriptions: 3,
  inflight: 4,
  inflightIndex: 5,
  queue: 6,
  awaiting: 7,
  retained: 8,
  wills: 9,
} as const;
export type TableName = keyof typeof Table;
export const TABLES = Object.keys(Table) as TableName[];

/** Tables whose values carry client data and are encrypted when a key file is configured. */
export const SEALED_TABLES: ReadonlySet<TableName> = new Set(['sessions', 'inflight', 'queue', 'retained', 'wills']);

const PLAIN = 0x01;
const SEALED = 0x02;

/** A value that cannot be read back: what is wrong with it, for errors and `store check`. */
export class RecordError extends Error {
  constructor(
    readonly problem: 'checksum' | 'format' | 'authentication' | 'key' | 'epoch',
    message: string,
  ) {
    super(message);
  }
}

// ── CRC-32 (IEEE) ──────────────────────────────────────────────────────────

/** CRC-32 in JavaScript, chained like zlib.crc32 (`prev` is a finished CRC), for Node before 20.15. */
const CRC_TABLE = (() => {
  const t = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c;
  }
  return t;
})();
function crc32Js(buf: Uint8Array, prev = 0): number {
  let c = ~prev;
  for (let i = 0; i < buf.length; i++) c = (CRC_TABLE[(c ^ (buf[i] as number)) & 0xff] as number) ^ (c >>> 8);
  return ~c >>> 0;
}
const crc32: (buf: Uint8Array, prev?: number) => number = typeof zlib.crc32 === 'function' ? zlib.crc32 : crc32Js;

/** The CRC-32 of each table's one-byte tag: where a record's checksum starts. */
const TABLE_CRC = Array.from({ length: 256 }, (_, t) => crc32(Buffer.of(t)));

/**
 * CRC-32 (IEEE) of the table's tag, the key and the body from `bodyStart`: chained, the CRC of
 * the three one after the other (zlib.crc32, native, where Node has it).
 */
function recordCrc(table: number, key: Buffer, body: Buffer): number {
  // A key is short (8 to 40 bytes, mostly 10 or 16): the loop costs less than a native call.
  const keyCrc = key.length <= 40 ? crc32Js(key, TABLE_CRC[table] as number) : crc32(key, TABLE_CRC[table] as number);
  return crc32(body, keyCrc);
}

function aad(table: number, key: Buffer): Buffer {
  return Buffer.concat([Buffer.of(table), key]);
}

// ── envelope ───────────────────────────────────────────────────────────────

export function wrap(table: TableName, key: Buffer, body: Buffer, keyring: Keyring | null): Buffer {
  const t = Table[table];
  if (keyring !== null && SEALED_TABLES.has(table)) {
    const s = keyring.seal(aad(t, key), body);
    const id = Buffer.from(s.keyId, 'latin1');
    const out = Buffer.allocUnsafe(2 + id.length + 4 + 8 + 16 + s.ciphertext.length);
    let o = 0;
    out[o++] = SEALED;
    out[o++] = id.length;
    o += id.copy(out, o);
    out.writeUInt32BE(s.epoch >>> 0, o);
    out.writeUInt32BE(Math.floor(s.counter / 2 ** 32), o + 4);
    out.writeUInt32BE(s.counter >>> 0, o + 8);
    o += 12;
    o += s.tag.copy(out, o);
    s.ciphertext.copy(out, o);
    return out;
  }
  const out = Buffer.allocUnsafe(5 + body.length);
  out[0] = PLAIN;
  body.copy(out, 5);
  out.writeUInt32BE(recordCrc(t, key, body), 1);
  return out;
}

/** The bytes {@link wrapWithHeadroom} needs free in front of a body. */
export const HEADROOM = 5;

/**
 * {@link wrap} for a body written {@link HEADROOM} bytes into `record` (the encoders leave that
 * room): a plain envelope is filled in around it, in place, instead of copying the body into a
 * new value; a sealed one is made as wrap makes it. Returns the value to store.
 */
export function wrapWithHeadroom(table: TableName, key: Buffer, record: Buffer, keyring: Keyring | null): Buffer {
  const body = record.subarray(HEADROOM);
  if (keyring !== null && SEALED_TABLES.has(table)) return wrap(table, key, body, keyring);
  record[0] = PLAIN;
  record.writeUInt32BE(recordCrc(Table[table], key, body), 1);
  return record;
}

/** What a sealed value says about itself, without decrypting it (for stats and check). */
export function sealedKeyId(value: Buffer): string | undefined {
  if (value[0] !== SEALED || value.length < 2) return undefined;
  return value.subarray(2, 2 + (value[1] as number)).toString('latin1');
}

/**
 * Returns the body. In the clear it is a view of `value` (no copy): decode it at once, as every
 * caller does; the decoders copy what they keep (binary parts), so nothing refers to a buffer
 * LMDB may reuse. `size`: the value's length when `value` is a longer buffer that LMDB reuses
 * (the scan reads values in place, lmdb-scan.ts). Throws RecordError when the value is damaged
 * or cannot be decrypted.
 */
export function unwrap(table: TableName, key: Buffer, value: Buffer, keyring: Keyring | null, size = value.length): Buffer {
  const t = Table[table];
  if (size >= 5 && value[0] === PLAIN) {
    const want = value.readUInt32BE(1);
    const body = value.subarray(5, size);
    if (recordCrc(t, key, body) !== want) throw new RecordError('checksum', 'checksum mismatch');
    return body;
  }
  if (size < value.length) value = value.subarray(0, size);
  if (value.length >= 2 && value[0] === SEALED) {
    const idLen = value[1] as number;
    const head = 2 + idLen;
    if (value.length < head + 12 + 16) throw new RecordError('format', 'sealed value too short');
    const keyId = value.subarray(2, head).toString('latin1');
    if (keyring === null) throw new RecordError('key', `encrypted with key id '${keyId}' but no store key file is configured`);
    if (!keyring.hasKey(keyId)) throw new RecordError('key', `encrypted with key id '${keyId}', which is not in the key file`);
    const epoch = value.readUInt32BE(head);
    const counter = value.readUInt32BE(head + 4) * 2 ** 32 + value.readUInt32BE(head + 8);
    const tag = value.subarray(head + 12, head + 28);
    try {
      return keyring.open(aad(t, key), { keyId, epoch, counter, tag, ciphertext: value.subarray(head + 28) });
    } catch (err) {
      if ((err as { code?: string }).code === 'ERR_STORE_CORRUPT') throw new RecordError('epoch', (err as Error).message);
      throw new RecordError('authentication', 'decryption failed: the value was altered or belongs to another record');
    }
  }
  throw new RecordError('format', `unknown value format 0x${(value[0] ?? 0).toString(16)}`);
}

// ── bodies: JSON + binary parts ────────────────────────────────────────────

function pack(head: unknown, parts: Buffer[] = []): Buffer {
  const json = Buffer.from(JSON.stringify(head), 'utf8');
  let size = 4 + json.length;
  for (const p of parts) size += 4 + p.length;
  const out = Buffer.allocUnsafe(size);
  out.writeUInt32BE(json.length, 0);
  json.copy(out, 4);
  let o = 4 + json.length;
  for (const p of parts) {
    out.writeUInt32BE(p.length, o);
    o += 4;
    o += p.copy(out, o);
  }
  return out;
}

function unpack(body: Buffer): { head: Record<string, unknown>; parts: Buffer[] } {
  if (body.length < 4) throw new RecordError('format', 'body too short');
  const jsonLen = body.readUInt32BE(0);
  if (4 + jsonLen > body.length) throw new RecordError('format', 'body header overruns the value');
  let head: unknown;
  try {
    head = JSON.parse(body.subarray(4, 4 + jsonLen).toString('utf8'));
  } catch {
    throw new RecordError('format', 'body header is not JSON');
  }
  if (head === null || typeof head !== 'object' || Array.isArray(head)) throw new RecordError('format', 'body header is not an object');
  const parts: Buffer[] = [];
  let o = 4 + jsonLen;
  while (o < body.length) {
    if (o + 4 > body.length) throw new RecordError('format', 'truncated binary part');
    const len = body.readUInt32BE(o);
    o += 4;
    if (o + len > body.length) throw new RecordError('format', 'binary part overruns the value');
    parts.push(Buffer.from(body.subarray(o, o + len)));
    o += len;
  }
  return { head: head as Record<string, unknown>, parts };
}

function fail(what: string): never {
  throw new RecordError('format', `bad ${what}`);
}

function num(v: unknown, what: string): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : fail(what);
}

function str(v: unknown, what: string): string {
  return typeof v === 'string' ? v : fail(what);
}

function qos(v: unknown): QoS {
  return v === 0 || v === 1 || v === 2 ? v : fail('qos');
}

// ── messages ───────────────────────────────────────────────────────────────

interface MessageHead {
  t: string;
  q: QoS;
  r: boolean;
  e?: number;
  o?: string;
  p?: PublishProperties;
  /** Correlation data is the second binary part. */
  c?: 1;
  /** A queued delivery's subscription identifiers. */
  i?: number[];
}

function messageHead(m: StoredMessage): { head: MessageHead; parts: Buffer[] } {
  const head: MessageHead = { t: m.topic, q: m.qos, r: m.retain };
  if (m.expiresAt !== undefined) head.e = m.expiresAt;
  if (m.origin !== undefined) head.o = m.origin;
  if (m.subscriptionIds !== undefined && m.subscriptionIds.length > 0) head.i = m.subscriptionIds;
  const parts = [m.payload];
  if (m.properties !== undefined) {
    const { correlationData, ...rest } = m.properties;
    head.p = rest;
    if (correlationData !== undefined) {
      head.c = 1;
      parts.push(Buffer.isBuffer(correlationData) ? correlationData : Buffer.from(correlationData));
    }
  }
  return { head, parts };
}

/** A subscription identifier as the protocol allows it: 1 to 268,435,455 (MQTT 5, 3.8.2.1.2). */
export function subscriptionId(x: unknown): number {
  const n = num(x, 'subscription id');
  if (!Number.isInteger(n) || n < 1 || n > 268_435_455) fail('subscription id out of range');
  return n;
}

function messageFrom(head: unknown, parts: Buffer[], offset: number): StoredMessage {
  if (head === null || typeof head !== 'object') fail('message');
  const h = head as Record<string, unknown>;
  const payload = parts[offset] ?? fail('payload');
  const m: StoredMessage = { topic: str(h['t'], 'topic'), payload, qos: qos(h['q']), retain: h['r'] === true };
  if (h['e'] !== undefined) m.expiresAt = num(h['e'], 'expiresAt');
  if (h['o'] !== undefined) m.origin = str(h['o'], 'origin');
  if (h['i'] !== undefined) {
    if (!Array.isArray(h['i'])) fail('subscription ids');
    m.subscriptionIds = (h['i'] as unknown[]).map(subscriptionId);
  }
  if (h['p'] !== undefined) {
    if (h['p'] === null || typeof h['p'] !== 'object') fail('properties');
    const props = h['p'] as PublishProperties;
    if (h['c'] === 1) props.correlationData = parts[offset + 1] ?? fail('correlation data');
    m.properties = props;
  }
  return m;
}

export function encodeMessage(m: StoredMessage): Buffer {
  const { head, parts } = messageHead(m);
  return pack(head, parts);
}

export function decodeMessage(body: Buffer): StoredMessage {
  const { head, parts } = unpack(body);
  return messageFrom(head, parts, 0);
}

/** An in-flight entry: its packet id, state and subscription ids, around the message. */
export function encodeInflight(f: StoredInflight): Buffer {
  const { head, parts } = messageHead(f.message);
  return pack({ p: f.packetId, s: f.state, ...(f.subscriptionIds !== undefined ? { i: f.subscriptionIds } : {}), m: head }, parts);
}

export function decodeInflight(body: Buffer): StoredInflight {
  const { head, parts } = unpack(body);
  const state = head['s'] === 'publish' || head['s'] === 'pubrel' ? head['s'] : fail('in-flight state');
  const f: StoredInflight = { packetId: num(head['p'], 'packet id'), state, message: messageFrom(head['m'], parts, 0) };
  if (head['i'] !== undefined) {
    if (!Array.isArray(head['i'])) fail('subscription ids');
    f.subscriptionIds = (head['i'] as unknown[]).map((x) => num(x, 'subscription id'));
  }
  return f;
}

/** A session's will: its delay around the message. */
export function encodeWill(w: StoredWill): Buffer {
  const { head, parts } = messageHead(w.message);
  return pack({ d: w.delayInterval, m: head, ...(w.principal !== undefined ? { p: w.principal } : {}) }, parts);
}

export function decodeWill(body: Buffer): StoredWill {
  const { head, parts } = unpack(body);
  const will: StoredWill = { delayInterval: num(head['d'], 'will delay'), message: messageFrom(head['m'], parts, 0) };
  const p = head['p'];
  if (p !== undefined && p !== null && typeof p === 'object') {
    const q = p as Record<string, unknown>;
    if (typeof q['method'] !== 'string' || typeof q['provider'] !== 'string' || !Array.isArray(q['roles']) || typeof q['listener'] !== 'string') throw new RecordError('format', 'will principal is malformed');
    will.principal = q as unknown as StoredPrincipal;
  }
  return will;
}

// ── sessions and subscriptions ─────────────────────────────────────────────

/** A session's header record: what saveSession/setSessionExpiry write, and the session's sid. */
export interface SessionHeader {
  clientId: string;
  owner: string;
  protocolVersion: 3 | 4 | 5;
  expiryInterval: number;
  expiresAt?: number;
  sid: number;
}

export function encodeHeader(h: SessionHeader): Buffer {
  return pack({ c: h.clientId, o: h.owner, v: h.protocolVersion, x: h.expiryInterval, s: h.sid, ...(h.expiresAt !== undefined ? { e: h.expiresAt } : {}) });
}

export function decodeHeader(body: Buffer): SessionHeader {
  const { head } = unpack(body);
  const v = head['v'];
  if (v !== 3 && v !== 4 && v !== 5) fail('protocol version');
  const h: SessionHeader = { clientId: str(head['c'], 'client id'), owner: str(head['o'], 'owner'), protocolVersion: v, expiryInterval: num(head['x'], 'expiry interval'), sid: num(head['s'], 'sid') };
  if (head['e'] !== undefined) h.expiresAt = num(head['e'], 'expiresAt');
  return h;
}

export function headerOf(s: StoredSession, sid: number): SessionHeader {
  const h: SessionHeader = { clientId: s.clientId, owner: s.owner, protocolVersion: s.protocolVersion, expiryInterval: s.expiryInterval, sid };
  if (s.expiresAt !== undefined) h.expiresAt = s.expiresAt;
  return h;
}

export function encodeSubscription(s: StoredSubscription): Buffer {
  return pack(s);
}

export function decodeSubscription(body: Buffer): StoredSubscription {
  const { head } = unpack(body);
  const rh = head['retainHandling'];
  if (rh !== 0 && rh !== 1 && rh !== 2) fail('retain handling');
  const s: StoredSubscription = {
    filter: str(head['filter'], 'filter'),
    qos: qos(head['qos']),
    noLocal: head['noLocal'] === true,
    retainAsPublished: head['retainAsPublished'] === true,
    retainHandling: rh,
  };
  if (head['subscriptionId'] !== undefined) s.subscriptionId = num(head['subscriptionId'], 'subscription id');
  return s;
}

/** Small fixed bodies: a number (in-flight index, counters) or a marker (awaiting release). */
export function encodeNumber(n: number): Buffer {
  return pack({ n });
}

export function decodeNumber(body: Buffer): number {
  return num(unpack(body).head['n'], 'number');
}

export function encodeJson(value: Record<string, unknown>): Buffer {
  return pack(value);
}

export function decodeJson(body: Buffer): Record<string, unknown> {
  return unpack(body).head;
}

export function encodeBytes(bytes: Buffer): Buffer {
  return pack({}, [bytes]);
}

export function decodeBytes(body: Buffer): Buffer {
  return unpack(body).parts[0] ?? fail('bytes');
}
