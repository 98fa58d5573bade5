/**
 * One pass over every record of an LMDB store: decodes and verifies each value (checksum or
 * authentication tag), puts sessions back together, and notes what is expired, orphaned or
 * damaged. open() uses it to load and to refuse a damaged store; `portcullis store check`,
 * `stats` and `export` use it to report.
 *
 * The pass is synchronous, so it reads one consistent snapshot even while a broker writes.
 */
import type { Database } from 'lmdb';
import type { Keyring } from './keyring.ts';
import { describeKey, readU64, sidOf } from './lmdb-keys.ts';
import { Arena, decodeInflightRecord, decodeStoredMessage, isLegacyInflightRecord, isLegacyMessage } from './lmdb-records.ts';
import {
  RecordError,
  decodeBytes,
  decodeHeader,
  decodeInflight,
  decodeNumber,
  decodeSubscription,
  decodeWill,
  sealedKeyId,
  unwrap,
  type SessionHeader,
  type TableName,
} from './records.ts';
import type { StoreCounts, StoredInflight, StoredMessage, StoredSession } from './types.ts';

export type Tables = Record<TableName, Database<Buffer, Buffer>>;

export interface Problem {
  table: TableName;
  key: string;
  problem: string;
}

export interface LoadedSession {
  header: SessionHeader;
  key: Buffer;
  session: StoredSession;
  /** Queued messages with a message expiry: their place in the queue and their key (for purging them). */
  expiring: { index: number; key: Buffer }[];
}

export interface ScanResult {
  sessions: Map<number, LoadedSession>;
  retained: { key: Buffer; message: StoredMessage }[];
  /** Epoch salts for the keyring, by epoch number. */
  epochs: Map<number, Buffer>;
  meta: Map<string, Buffer>;
  counts: StoreCounts;
  /** Records whose session does not exist, by table. */
  orphans: { table: TableName; key: Buffer }[];
  problems: Problem[];
  /** Records sealed with each key id, and records in the clear (''). */
  keyIds: Map<string, number>;
  maxSid: number;
  /** The highest in-flight resend order in the store (-1: none); new entries are numbered above it. */
  maxInflightOrder: number;
  /**
   * Records of an older format, which open() rewrites (lmdb-base.ts): format 1 in-flight records
   * ([sid, order] keys) and index records; in-flight (format 2), queued and retained records
   * whose message is in the JSON layout of formats 1 and 2. Empty in a format 3 store.
   */
  legacy: {
    inflight: { sid: number; key: Buffer; order: number; inflight: StoredInflight }[];
    index: Buffer[];
    messages: { table: 'queue' | 'retained'; key: Buffer; message: StoredMessage }[];
  };
}

/**
 * A second handle on a table whose values are handed to the scan in place, in the buffer lmdb-js
 * reuses for every read, instead of as a copy each: a restart reads a million records, and a
 * copy each (a Buffer with memory of its own) was a large part of its time, mostly in garbage
 * collection. The decoder only notes the buffer and returns the value's size; the scan decodes
 * each value before it asks for the next, and copies what it keeps.
 */
interface RawView {
  db: Database<number, Buffer>;
  holder: { bytes: Buffer };
}
/** lmdb-js opens a sibling table from any table's handle (its typings list openDB on the root only). */
type Opener = { openDB(options: Record<string, unknown>): unknown };
const rawViews = new WeakMap<Database<Buffer, Buffer>, RawView>();

/**
 * The in-place view of `db` (opened on first use; the store opens them with its tables, before
 * any write, lmdb-base.ts).
 */
export function rawView(db: Database<Buffer, Buffer>, name: TableName): RawView {
  let view = rawViews.get(db);
  if (view === undefined) {
    const holder: { bytes: Buffer } = { bytes: Buffer.alloc(0) };
    const encoder = {
      encode: (value: unknown): unknown => value,
      decode: (bytes: Buffer, size: number): number => {
        holder.bytes = bytes;
        return size;
      },
    };
    const raw = (db as unknown as Opener).openDB({ name, keyEncoding: 'binary', encoding: 'binary', encoder }) as Database<number, Buffer>;
    view = { db: raw, holder };
    rawViews.set(db, view);
  }
  return view;
}


/** Reads every record. Damage is collected in `problems`, never thrown (except an unreadable LMDB tree, recorded too). */
export function scanStore(db: Tables, keyring: Keyring | null, options: { skipUnreadable?: boolean } = {}): ScanResult {
  const r: ScanResult = {
    sessions: new Map(),
    retained: [],
    epochs: new Map(),
    meta: new Map(),
    counts: { sessions: 0, subscriptions: 0, inflight: 0, queued: 0, awaitingRelease: 0, retained: 0, wills: 0 },
    orphans: [],
    problems: [],
    keyIds: new Map(),
    maxSid: 0,
    maxInflightOrder: -1,
    legacy: { inflight: [], index: [], messages: [] },
  };
  const bySid = r.sessions;
  const inflightOrder = new Map<number, { order: number; packetId: number; inflight: StoredInflight }[]>();

  let plain = 0;
  function each(table: TableName, visit: (key: Buffer, body: Buffer, arena: Arena) => void): void {
    const view = rawView(db[table], table);
    const arena = new Arena();
    try {
      for (const { key, value: size } of view.db.getRange({})) {
        const k = key; // lmdb hands out keys as copies (Uint8Array slice): safe to keep
        const value = view.holder.bytes; // valid until the next record: decoded at once
        const id = sealedKeyId(value);
        if (id === undefined) plain++;
        else r.keyIds.set(id, (r.keyIds.get(id) ?? 0) + 1);
        let body: Buffer;
        try {
          body = unwrap(table, k, value, keyring, size);
        } catch (err) {
          if (!(err instanceof RecordError)) throw err;
          if (err.problem === 'key' && options.skipUnreadable === true) continue;
          r.problems.push({ table, key: describeKey(table, k), problem: err.message });
          continue;
        }
        try {
          visit(k, body, arena);
        } catch (err) {
          if (!(err instanceof RecordError)) throw err;
          r.problems.push({ table, key: describeKey(table, k), problem: err.message });
        }
      }
    } catch (err) {
      // LMDB found its own structure damaged (MDB_CORRUPTED, MDB_PAGE_NOTFOUND...).
      r.problems.push({ table, key: '(table structure)', problem: (err as Error).message });
    }
  }

  each('meta', (key, body) => {
    const name = key.toString('latin1');
    r.meta.set(name, Buffer.from(body)); // a copy: the body is a view of a buffer lmdb reuses
    if (name.startsWith('epoch:')) r.epochs.set(Number(name.slice(6)), decodeBytes(body));
  });
  if (keyring !== null) for (const [epoch, salt] of r.epochs) keyring.addEpoch(epoch, salt);

  each('sessions', (key, body) => {
    const header = decodeHeader(body);
    const session: StoredSession = {
      clientId: header.clientId,
      owner: header.owner,
      protocolVersion: header.protocolVersion,
      expiryInterval: header.expiryInterval,
      subscriptions: [],
      inflight: [],
      queue: [],
      awaitingRelease: [],
    };
    if (header.expiresAt !== undefined) session.expiresAt = header.expiresAt;
    if (bySid.has(header.sid)) throw new RecordError('format', `session number ${header.sid} is used twice`);
    bySid.set(header.sid, { header, key, session, expiring: [] });
    r.maxSid = Math.max(r.maxSid, header.sid);
    r.counts.sessions++;
  });

  /** The session a sid-prefixed key belongs to, or records it as an orphan. */
  const owner = (table: TableName, key: Buffer): LoadedSession | undefined => {
    const s = key.length >= 8 ? bySid.get(sidOf(key)) : undefined;
    if (s === undefined) r.orphans.push({ table, key });
    return s;
  };

  each('subscriptions', (key, body) => {
    const sub = decodeSubscription(body);
    const s = owner('subscriptions', key);
    if (s === undefined) return;
    s.session.subscriptions.push(sub);
    r.counts.subscriptions++;
  });

  // In-flight entries: format 2 keys them [sid, packet id] with the order in the value; format 1
  // keyed them [sid, order], with an index [sid, packet id] → order (both read here, for the
  // rewrite at open and for the tools on a store that has not been opened since).
  const inflightByKey = new Map<string, StoredInflight>();
  each('inflight', (key, body, arena) => {
    let order: number;
    let f: StoredInflight;
    if (key.length === 10) {
      ({ order, inflight: f } = decodeInflightRecord(body, arena));
      if (f.packetId !== key.readUInt16BE(8)) throw new RecordError('format', `in-flight record for packet id ${key.readUInt16BE(8)} holds packet id ${f.packetId}`);
    } else if (key.length === 16) {
      f = decodeInflight(body);
      order = readU64(key, 8);
    } else throw new RecordError('format', 'in-flight key has the wrong length');
    const s = owner('inflight', key);
    if (s === undefined) return;
    if (key.length === 16) {
      inflightByKey.set(key.toString('hex'), f);
      r.legacy.inflight.push({ sid: s.header.sid, key, order, inflight: f });
    } else if (isLegacyInflightRecord(body)) r.legacy.inflight.push({ sid: s.header.sid, key, order, inflight: f });
    let list = inflightOrder.get(s.header.sid);
    if (list === undefined) inflightOrder.set(s.header.sid, (list = []));
    list.push({ order, packetId: f.packetId, inflight: f });
    r.maxInflightOrder = Math.max(r.maxInflightOrder, order);
    r.counts.inflight++;
  });

  each('inflightIndex', (key, body) => {
    const order = decodeNumber(body);
    const s = owner('inflightIndex', key);
    if (s === undefined) return;
    if (key.length !== 10) throw new RecordError('format', 'in-flight index key has the wrong length');
    r.legacy.index.push(key);
    const packetId = key.readUInt16BE(8);
    const target = Buffer.concat([key.subarray(0, 8), Buffer.alloc(8)]);
    target.writeUInt32BE(Math.floor(order / 2 ** 32), 8);
    target.writeUInt32BE(order >>> 0, 12);
    const f = inflightByKey.get(target.toString('hex'));
    if (f === undefined || f.packetId !== packetId) throw new RecordError('format', `in-flight index for packet id ${packetId} points at a missing entry`);
  });
  for (const [sid, list] of inflightOrder) {
    // Resend order (MQTT-4.6.0-1): by order number, whatever the key layout.
    list.sort((a, b) => a.order - b.order);
    const ids = new Set<number>();
    for (const e of list) {
      if (ids.has(e.packetId)) r.problems.push({ table: 'inflight', key: `session #${sid}`, problem: `packet id ${e.packetId} is in flight twice` });
      ids.add(e.packetId);
    }
    const s = bySid.get(sid);
    if (s !== undefined) s.session.inflight = list.map((e) => e.inflight);
  }

  each('queue', (key, body, arena) => {
    const m = decodeStoredMessage(body, arena);
    const s = owner('queue', key);
    if (s === undefined) return;
    if (key.length !== 16) throw new RecordError('format', 'queue key has the wrong length');
    if (m.expiresAt !== undefined) s.expiring.push({ index: s.session.queue.length, key });
    s.session.queue.push(m);
    if (isLegacyMessage(body)) r.legacy.messages.push({ table: 'queue', key, message: m });
    r.counts.queued++;
  });

  each('awaiting', (key) => {
    const s = owner('awaiting', key);
    if (s === undefined) return;
    if (key.length !== 10) throw new RecordError('format', 'awaiting-release key has the wrong length');
    s.session.awaitingRelease.push(key.readUInt16BE(8));
    r.counts.awaitingRelease++;
  });

  each('wills', (key, body) => {
    const will = decodeWill(body);
    const s = owner('wills', key);
    if (s === undefined) return;
    if (key.length !== 8) throw new RecordError('format', 'will key has the wrong length');
    s.session.will = will;
    r.counts.wills++;
  });

  each('retained', (key, body, arena) => {
    const message = decodeStoredMessage(body, arena);
    r.retained.push({ key, message });
    if (isLegacyMessage(body)) r.legacy.messages.push({ table: 'retained', key, message });
    r.counts.retained++;
  });

  if (plain > 0) r.keyIds.set('', (r.keyIds.get('') ?? 0) + plain);
  return r;
}

/** What is expired at `now`, taken out of the scan (so it is not loaded) and listed for deletion. */
export function takeExpired(scan: ScanResult, now: number): {
  purged: { expiredSessions: number; expiredMessages: number; expiredRetained: number; orphans: number };
  sessions: { key: Buffer; sid: number }[];
  queue: Buffer[];
  retained: Buffer[];
} {
  const out = { purged: { expiredSessions: 0, expiredMessages: 0, expiredRetained: 0, orphans: scan.orphans.length }, sessions: [] as { key: Buffer; sid: number }[], queue: [] as Buffer[], retained: [] as Buffer[] };
  for (const [sid, s] of scan.sessions) {
    if (s.header.expiresAt !== undefined && s.header.expiresAt <= now) {
      out.sessions.push({ key: s.key, sid });
      scan.sessions.delete(sid);
      out.purged.expiredSessions++;
      continue;
    }
    // Only queues holding messages with an expiry are looked at (most hold none).
    const gone = new Set<number>();
    for (const e of s.expiring) {
      const m = s.session.queue[e.index] as StoredMessage;
      if (m.expiresAt !== undefined && m.expiresAt <= now) {
        gone.add(e.index);
        out.queue.push(e.key);
        out.purged.expiredMessages++;
      }
    }
    if (gone.size > 0) s.session.queue = s.session.queue.filter((_, i) => !gone.has(i));
    s.expiring = [];
  }
  scan.retained = scan.retained.filter((r) => {
    if (r.message.expiresAt === undefined || r.message.expiresAt > now) return true;
    out.retained.push(r.key);
    out.purged.expiredRetained++;
    return false;
  });
  return out;
}
