/**
 * Session and retained records of the Redis store: what the scripts are given, and how what
 * Redis gives back is checked before anything of it is used. Values are the LMDB store's
 * envelopes (records.ts): a CRC-32, or with a key file an AES-256-GCM seal, over the table, a
 * binding key (redis-keys.ts) and the body. A value that fails its check, does not parse, sits
 * under the wrong session, field or topic, or repeats, is a {@link Problem}: reported, never
 * loaded.
 */
import { randomBytes } from 'node:crypto';
import type { Keyring } from './keyring.ts';
import { F, bindRetained, bindSession, packetIdOf, sessionDigest, u16 } from './redis-keys.ts';
import {
  RecordError,
  SEALED_TABLES,
  decodeInflight,
  decodeJson,
  decodeMessage,
  decodeSubscription,
  decodeWill,
  encodeInflight,
  encodeJson,
  encodeMessage,
  encodeSubscription,
  encodeWill,
  unwrap,
  wrap,
  type TableName,
} from './records.ts';
import type { Reply } from './redis-client.ts';
import { sessionKey, type StoredInflight, type StoredMessage, type StoredSession, type StoredSubscription, type StoredWill } from './types.ts';

/** Something in Redis that cannot be used: where (a Redis key, and the field or element), and what is wrong. */
export interface Problem {
  where: string;
  problem: string;
}

const QUEUE_ID_BYTES = 12;

// ── writing ────────────────────────────────────────────────────────────────

export function identityRecord(digest: string, s: Pick<StoredSession, 'clientId' | 'owner' | 'protocolVersion'>, keyring: Keyring | null): Buffer {
  return wrap('sessions', bindSession('identity', digest), encodeJson({ c: s.clientId, o: s.owner, v: s.protocolVersion }), keyring);
}

export function expiryRecord(digest: string, expiryInterval: number, expiresAt: number | undefined, keyring: Keyring | null): Buffer {
  return wrap('sessions', bindSession('expiry', digest), encodeJson(expiresAt !== undefined ? { x: expiryInterval, e: expiresAt } : { x: expiryInterval }), keyring);
}

export function subscriptionRecord(digest: string, s: StoredSubscription, keyring: Keyring | null): Buffer {
  return wrap('subscriptions', bindSession('subscription', digest, Buffer.from(s.filter, 'utf8')), encodeSubscription(s), keyring);
}

export function inflightRecord(digest: string, f: StoredInflight, keyring: Keyring | null): Buffer {
  return wrap('inflight', bindSession('inflight', digest, u16(f.packetId)), encodeInflight(f), keyring);
}

/** A queue element: a random id (so a copied element is found), then the record bound to it. */
export function queueElement(digest: string, m: StoredMessage, keyring: Keyring | null): Buffer {
  const id = randomBytes(QUEUE_ID_BYTES);
  return Buffer.concat([id, wrap('queue', bindSession('queue', digest, id), encodeMessage(m), keyring)]);
}

export function willRecord(digest: string, w: StoredWill, keyring: Keyring | null): Buffer {
  return wrap('wills', bindSession('will', digest), encodeWill(w), keyring);
}

export function retainedRecord(m: StoredMessage, keyring: Keyring | null): Buffer {
  return wrap('retained', bindRetained(m.topic), encodeMessage(m), keyring);
}

/** The score of a session in the index: when it expires, or +inf while connected or never expiring. */
export function indexScore(expiresAt: number | undefined): string {
  return expiresAt === undefined ? '+inf' : String(expiresAt);
}

/** The arguments of the SAVE script (after the keys) for a whole session. Encoded now: the caller may change the object later. */
export function saveArgs(digest: string, s: StoredSession, keyring: Keyring | null): (string | Buffer)[] {
  const pairs: (string | Buffer)[] = [];
  for (const sub of s.subscriptions) pairs.push(F.sub(sub.filter), subscriptionRecord(digest, sub, keyring));
  // A packet id listed twice keeps its first place and its last record, as a put would.
  const inflight = new Map<number, { order: number; f: StoredInflight }>();
  for (const f of s.inflight) inflight.set(f.packetId, { order: inflight.get(f.packetId)?.order ?? inflight.size + 1, f });
  for (const { order, f } of inflight.values()) pairs.push(F.inflight(f.packetId), Buffer.concat([Buffer.from(`${order}:`), inflightRecord(digest, f, keyring)]));
  for (const id of new Set(s.awaitingRelease)) pairs.push(F.awaiting(id), '');
  if (s.will !== undefined) pairs.push(F.will, willRecord(digest, s.will, keyring));
  const queue = s.queue.map((m) => queueElement(digest, m, keyring));
  return [identityRecord(digest, s, keyring), expiryRecord(digest, s.expiryInterval, s.expiresAt, keyring), String(inflight.size), String(pairs.length / 2), ...pairs, ...queue];
}

// ── reading ────────────────────────────────────────────────────────────────

/** A session as the LOAD script returns it, split into its records (nothing verified yet). */
export interface RawSession {
  digest: string;
  identity?: Buffer;
  expiry?: Buffer;
  subscriptions: { filter: string; value: Buffer }[];
  inflight: { field: string; packetId: number | undefined; order: number | undefined; value: Buffer }[];
  awaiting: string[];
  will?: Buffer;
  queue: Buffer[];
  /** Fields this store never writes. */
  unknown: string[];
  /** The hash or the queue exists at all. */
  exists: boolean;
}

function buffers(reply: Reply | undefined): Buffer[] {
  return Array.isArray(reply) ? reply.filter((x): x is Buffer => Buffer.isBuffer(x)) : [];
}

/** Splits the LOAD script's reply ([HGETALL flat, LRANGE]) into records. */
export function rawSession(digest: string, reply: Reply): RawSession {
  const parts = Array.isArray(reply) ? reply : [];
  const flat = buffers(parts[0]);
  const raw: RawSession = { digest, subscriptions: [], inflight: [], awaiting: [], queue: buffers(parts[1]), unknown: [], exists: false };
  for (let i = 0; i + 1 < flat.length; i += 2) {
    const field = flat[i] as Buffer;
    const value = flat[i + 1] as Buffer;
    const name = field.toString('utf8');
    if (name === F.identity) raw.identity = value;
    else if (name === F.expiry) raw.expiry = value;
    else if (name === F.will) raw.will = value;
    else if (name === F.order) continue;
    else if (name.startsWith('s:')) raw.subscriptions.push({ filter: field.subarray(2).toString('utf8'), value });
    else if (name.startsWith('f:')) {
      const colon = value.indexOf(0x3a);
      const orderText = colon > 0 && colon <= 16 ? value.subarray(0, colon).toString('latin1') : '';
      raw.inflight.push({ field: name, packetId: packetIdOf(name.slice(2)), order: /^[0-9]+$/.test(orderText) ? Number(orderText) : undefined, value: value.subarray(colon + 1) });
    } else if (name.startsWith('a:')) raw.awaiting.push(name.slice(2));
    else raw.unknown.push(name);
  }
  raw.exists = flat.length > 0 || raw.queue.length > 0;
  return raw;
}

/** The encryption epoch of a sealed record (records.ts layout), if it is one. */
function sealedEpoch(value: Buffer): number | undefined {
  if (value.length < 2 || value[0] !== 0x02) return undefined;
  const at = 2 + (value[1] as number);
  return value.length >= at + 4 ? value.readUInt32BE(at) : undefined;
}

/** The epochs a session's sealed records were made under (their salts must be known to open them). */
export function epochsOf(raw: RawSession): Set<number> {
  const out = new Set<number>();
  const add = (v: Buffer | undefined) => {
    const e = v !== undefined ? sealedEpoch(v) : undefined;
    if (e !== undefined) out.add(e);
  };
  add(raw.identity);
  add(raw.expiry);
  add(raw.will);
  for (const s of raw.subscriptions) add(s.value);
  for (const f of raw.inflight) add(f.value);
  for (const q of raw.queue) add(q.subarray(QUEUE_ID_BYTES));
  return out;
}

export function epochOfRecord(value: Buffer): number | undefined {
  return sealedEpoch(value);
}

/** How records are read back: the keys that open sealed ones, and whether records in the clear are accepted. */
export interface Sealing {
  keyring: Keyring | null;
  /**
   * With a keyring: accept records in the clear in the tables that are sealed (a store that was
   * used without encryption before). Off by default: anyone who can write to Redis can write a
   * record in the clear with a valid checksum, but not a sealed one.
   */
  acceptPlaintext: boolean;
}

function open<T>(table: TableName, key: Buffer, value: Buffer, sealing: Sealing, decode: (body: Buffer) => T): T {
  if (sealing.keyring !== null && !sealing.acceptPlaintext && value[0] === 0x01 && SEALED_TABLES.has(table)) {
    throw new RecordError('format', 'a record in the clear in an encrypted store: forged, or written before encryption was on (store.encryption.acceptPlaintext)');
  }
  return decode(unwrap(table, key, value, sealing.keyring));
}

export interface DecodedSession {
  /** Undefined when the session's own record is missing or cannot be read. */
  session?: StoredSession;
  problems: Problem[];
  /** Records without a readable identity record. */
  orphan: boolean;
  /** The expiry record as stored (the purge deletes only if it is unchanged). */
  expiryValue?: Buffer;
}

/**
 * Verifies and decodes a session. `keys` are its Redis keys, for problems. With `expect` (a
 * session key), a session that is not that one is a problem too.
 */
export function decodeSession(raw: RawSession, sealing: Sealing, keys: { hash: string; queue: string }, expect?: string): DecodedSession {
  const problems: Problem[] = [];
  const where = keys.hash;
  const d = raw.digest;
  const at = (field: string) => `${where} field ${field}`;
  const attemptAt = <T>(place: string, fn: () => T): T | undefined => {
    try {
      return fn();
    } catch (err) {
      if (!(err instanceof RecordError)) throw err;
      problems.push({ where: place, problem: err.message });
      return undefined;
    }
  };
  const attempt = <T>(field: string, fn: () => T): T | undefined => attemptAt(at(field), fn);
  // Records without their session record (orphans) are not damage: open drops them and counts them, as the LMDB store does.
  if (raw.identity === undefined) return { problems, orphan: raw.exists };
  const identity = attempt(F.identity, () => {
    const h = open('sessions', bindSession('identity', d), raw.identity as Buffer, sealing, decodeJson);
    const v = h['v'];
    if (typeof h['c'] !== 'string' || typeof h['o'] !== 'string' || (v !== 3 && v !== 4 && v !== 5)) throw new RecordError('format', 'bad session record');
    const id = { clientId: h['c'], owner: h['o'], protocolVersion: v as 3 | 4 | 5 };
    if (sessionDigest(sessionKey(id.owner, id.clientId)) !== d) throw new RecordError('format', 'the session record belongs to another session');
    return id;
  });
  const expiry = attempt(F.expiry, () => {
    if (raw.expiry === undefined) throw new RecordError('format', 'missing expiry record');
    const e = open('sessions', bindSession('expiry', d), raw.expiry, sealing, decodeJson);
    if (typeof e['x'] !== 'number' || (e['e'] !== undefined && typeof e['e'] !== 'number')) throw new RecordError('format', 'bad expiry record');
    return { expiryInterval: e['x'], expiresAt: e['e'] as number | undefined };
  });
  if (identity === undefined || expiry === undefined) return { problems, orphan: false };
  if (expect !== undefined && sessionKey(identity.owner, identity.clientId) !== expect) {
    problems.push({ where, problem: 'holds another session than the one asked for' });
    return { problems, orphan: false };
  }
  const session: StoredSession = { ...identity, expiryInterval: expiry.expiryInterval, subscriptions: [], inflight: [], queue: [], awaitingRelease: [] };
  if (expiry.expiresAt !== undefined) session.expiresAt = expiry.expiresAt;

  for (const { filter, value } of raw.subscriptions) {
    const sub = attempt(`s:${JSON.stringify(filter)}`, () => open('subscriptions', bindSession('subscription', d, Buffer.from(filter, 'utf8')), value, sealing, decodeSubscription));
    if (sub === undefined) continue;
    if (sub.filter !== filter) problems.push({ where: at(`s:${JSON.stringify(filter)}`), problem: 'holds the subscription of another filter' });
    else session.subscriptions.push(sub);
  }

  const inflight: { order: number; f: StoredInflight }[] = [];
  for (const e of raw.inflight) {
    if (e.packetId === undefined || e.order === undefined) {
      problems.push({ where: at(e.field), problem: e.packetId === undefined ? 'not a packet id' : 'no order number' });
      continue;
    }
    const packetId = e.packetId;
    const f = attempt(e.field, () => open('inflight', bindSession('inflight', d, u16(packetId)), e.value, sealing, decodeInflight));
    if (f === undefined) continue;
    if (f.packetId !== packetId) problems.push({ where: at(e.field), problem: `holds packet id ${f.packetId}` });
    else inflight.push({ order: e.order, f });
  }
  inflight.sort((a, b) => a.order - b.order);
  session.inflight = inflight.map((x) => x.f);

  for (const text of raw.awaiting) {
    const id = packetIdOf(text);
    if (id === undefined) problems.push({ where: at(`a:${text}`), problem: 'not a packet id' });
    else session.awaitingRelease.push(id);
  }

  if (raw.will !== undefined) {
    const will = attempt(F.will, () => open('wills', bindSession('will', d), raw.will as Buffer, sealing, decodeWill));
    if (will !== undefined) session.will = will;
  }

  const seen = new Set<string>();
  raw.queue.forEach((element, i) => {
    const id = element.subarray(0, QUEUE_ID_BYTES);
    const hex = id.toString('hex');
    const m = attemptAt(`${keys.queue} element ${i}`, () => {
      if (element.length <= QUEUE_ID_BYTES) throw new RecordError('format', 'queue element too short');
      return open('queue', bindSession('queue', d, id), element.subarray(QUEUE_ID_BYTES), sealing, decodeMessage);
    });
    if (m === undefined) return;
    if (seen.has(hex)) problems.push({ where: `${keys.queue} element ${i}`, problem: 'the same queued message appears twice' });
    seen.add(hex);
    session.queue.push(m);
  });
  for (const name of raw.unknown) problems.push({ where: at(JSON.stringify(name)), problem: 'a field this store does not write' });
  return { session, problems, orphan: false, ...(raw.expiry !== undefined ? { expiryValue: raw.expiry } : {}) };
}

/** Verifies and decodes a retained message stored under `topic`. Throws RecordError. */
export function decodeRetained(topic: Buffer, value: Buffer, sealing: Sealing): StoredMessage {
  const text = topic.toString('utf8');
  const m = open('retained', bindRetained(text), value, sealing, decodeMessage);
  if (m.topic !== text) throw new RecordError('format', 'holds the retained message of another topic');
  return m;
}
