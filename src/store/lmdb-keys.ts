/**
 * Binary key layout of the LMDB store. Keys are built by hand, not with lmdb-js's ordered-binary
 * encoding, so their order and uniqueness do not depend on how a library escapes strings (a
 * client id may hold U+0000).
 *
 * - A session header is keyed by 0x02 + SHA-256 of its session key (owner and client id): who owns
 *   a session is only inside the record, which an encrypted store seals. (A digest, not a secret:
 *   someone holding the file can test whether a given owner and client id have a session.)
 * - A text key (topic, filter) is 0x00 + its UTF-8 bytes, or, when longer than LMDB
 *   allows, 0x01 + SHA-256 of them (the full text is always kept in the value as well).
 * - Everything a session owns is keyed by the session's number (sid, 8 bytes big-endian) first,
 *   so one range scan finds it, and a session saved again under the same client id gets a new
 *   sid: nothing of the old one can come back.
 * - Queue entries are [sid, seq]: FIFO order is key order, and the next number is found from the
 *   last key of the session's range (no counter to rewrite on every enqueue).
 * - In-flight entries are [sid, packet id] (formats 2 and 3), with their resend order inside the value,
 *   so an acknowledgement deletes one by its packet id without a read. (Format 1 keyed them
 *   [sid, order] with an index [sid, packet id] → order beside them; a store in format 1 is
 *   rewritten at open, lmdb-base.ts.)
 */
import { createHash } from 'node:crypto';

const SHORT_TEXT = 0x00;
const HASHED_TEXT = 0x01;
/** LMDB's key limit is 511 bytes in portable builds; stay well below it with the sid in front. */
const MAX_TEXT_BYTES = 400;
const TWO_32 = 2 ** 32;

const SESSION_DIGEST = 0x02;

/** The key of a session's header record: a digest of its session key (see the layout above). */
export function sessionHeaderKey(sessionId: string): Buffer {
  return Buffer.concat([Buffer.of(SESSION_DIGEST), createHash('sha256').update(sessionId, 'utf8').digest()]);
}

export function textKey(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length <= MAX_TEXT_BYTES) {
    const key = Buffer.allocUnsafe(bytes.length + 1);
    key[0] = SHORT_TEXT;
    bytes.copy(key, 1);
    return key;
  }
  return Buffer.concat([Buffer.of(HASHED_TEXT), createHash('sha256').update(bytes).digest()]);
}

function writeU64(buf: Buffer, value: number, offset: number): void {
  buf.writeUInt32BE(Math.floor(value / TWO_32), offset);
  buf.writeUInt32BE(value >>> 0, offset + 4);
}

export function readU64(buf: Buffer, offset: number): number {
  return buf.readUInt32BE(offset) * TWO_32 + buf.readUInt32BE(offset + 4);
}

/** The 8-byte prefix of everything session `sid` owns. */
export function sidKey(sid: number): Buffer {
  const key = Buffer.allocUnsafe(8);
  writeU64(key, sid, 0);
  return key;
}

export function sidOf(key: Buffer): number {
  return readU64(key, 0);
}

/** [sid, 16-bit number]: packet ids (in-flight index, awaiting release). */
export function sidU16Key(sid: number, n: number): Buffer {
  const key = Buffer.allocUnsafe(10);
  writeU64(key, sid, 0);
  key.writeUInt16BE(n, 8);
  return key;
}

/** [sid, 53-bit number]: queue sequence, in-flight order. */
export function sidU64Key(sid: number, n: number): Buffer {
  const key = Buffer.allocUnsafe(16);
  writeU64(key, sid, 0);
  writeU64(key, n, 8);
  return key;
}

/** [sid, text]: subscriptions by filter. */
export function sidTextKey(sid: number, text: string): Buffer {
  return Buffer.concat([sidKey(sid), textKey(text)]);
}

/** The range of keys session `sid` owns, for getRange (end is exclusive). */
export function sidRange(sid: number): { start: Buffer; end: Buffer } {
  return { start: sidKey(sid), end: sidKey(sid + 1) };
}

/** For a reverse scan from the highest [sid, n] key down (start inclusive, end exclusive). */
export function sidReverseRange(sid: number): { start: Buffer; end: Buffer } {
  return { start: Buffer.concat([sidKey(sid), Buffer.alloc(8, 0xff)]), end: sidKey(sid) };
}

export function u16At(key: Buffer, offset: number): number {
  return key.readUInt16BE(offset);
}

export function u64Value(n: number): Buffer {
  const buf = Buffer.allocUnsafe(8);
  writeU64(buf, n, 0);
  return buf;
}

function text(key: Buffer): string {
  if (key.length === 33 && key[0] === HASHED_TEXT) return `sha256:${key.subarray(1).toString('hex')}`;
  if (key.length > 0 && key[0] === SHORT_TEXT) return JSON.stringify(key.subarray(1).toString('utf8'));
  return `0x${key.toString('hex')}`;
}

/** A key of `table` for messages and reports: client ids and topics as text, session-owned keys by session number. */
export function describeKey(table: string, key: Buffer): string {
  switch (table) {
    case 'meta':
      return JSON.stringify(key.toString('latin1'));
    case 'sessions':
    case 'retained':
      return text(key);
    case 'subscriptions':
      return key.length > 8 ? `session #${sidOf(key)} filter ${text(key.subarray(8))}` : `0x${key.toString('hex')}`;
    case 'inflight':
      if (key.length === 10) return `session #${sidOf(key)} packet id ${key.readUInt16BE(8)}`;
      return key.length === 16 ? `session #${sidOf(key)} #${readU64(key, 8)}` : `0x${key.toString('hex')}`;
    case 'queue':
      return key.length === 16 ? `session #${sidOf(key)} #${readU64(key, 8)}` : `0x${key.toString('hex')}`;
    case 'wills':
      return key.length === 8 ? `session #${sidOf(key)}` : `0x${key.toString('hex')}`;
    case 'inflightIndex':
    case 'awaiting':
      return key.length === 10 ? `session #${sidOf(key)} packet id ${key.readUInt16BE(8)}` : `0x${key.toString('hex')}`;
    default:
      return `0x${key.toString('hex')}`;
  }
}
