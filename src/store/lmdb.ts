/**
 * The durable store: LMDB (lmdb-js), embedded in the broker process, no server to run.
 *
 * Every write is one LMDB transaction callback. lmdb-js runs all callbacks queued in one event
 * turn inside one transaction and commits it with one sync, so a burst of messages costs one
 * fsync, not one each (group commit). Callbacks run in the order they were called, so writes
 * the broker does not await still apply in order. A write's promise resolves when its batch is:
 * - `sync` (default): committed and flushed to the disk (fdatasync): survives a power cut;
 * - `commit`: committed to the OS (its page cache), flushed by a timer every flushIntervalMs:
 *   survives a crash of the broker process; a power cut or kernel crash can lose up to that
 *   interval of writes, and can damage the store (found at the next open, never served).
 * A failed commit (disk full, I/O error) rejects every write of the batch with StoreWriteError,
 * and LMDB keeps none of them.
 *
 * Layout: see lmdb-keys.ts (keys) and records.ts (values); folder and files: lmdb-files.ts;
 * opening, closing and the write primitive: lmdb-base.ts.
 */
import { LmdbBase, META_NEXT_SID } from './lmdb-base.ts';
import { throwIfDamaged } from './lmdb-failures.ts';
import { sessionHeaderKey, sidKey, sidRange, sidTextKey, sidU16Key, sidU64Key, textKey } from './lmdb-keys.ts';
import { scanStore, type Tables } from './lmdb-scan.ts';
import { decodeInflightRecord, decodeStoredMessage, encodeInflightRecord, encodeMessageBinary, inflightRecordOrder, setInflightRecordOrder } from './lmdb-records.ts';
import { HEADROOM, decodeHeader, decodeSubscription, decodeWill, encodeHeader, encodeJson, encodeSubscription, encodeWill, headerOf, type SessionHeader } from './records.ts';
import { sessionKey, type PurgeOptions, type PurgeReport, type Store, type StoredInflight, type StoredMessage, type StoredSession, type StoredSubscription, type StoredWill } from './types.ts';

export type { Durability, LmdbStoreOptions } from './lmdb-base.ts';

const EMPTY = Buffer.alloc(0);

export class LmdbStore extends LmdbBase implements Store {
  async loadSessions(): Promise<StoredSession[]> {
    const pre = this.preloaded?.sessions;
    if (pre !== undefined && pre !== null && this.preloaded !== null) {
      this.preloaded.sessions = null;
      return pre;
    }
    const scan = scanStore(this.tables(), this.keyring);
    throwIfDamaged(scan, this.dataFile);
    return [...scan.sessions.values()].map((s) => s.session);
  }

  async getSession(key: string): Promise<StoredSession | undefined> {
    const found = this.header(key);
    if (found === undefined) return undefined;
    const { h } = found;
    const db = this.tables();
    const range = sidRange(h.sid);
    const s: StoredSession = {
      clientId: h.clientId,
      owner: h.owner,
      protocolVersion: h.protocolVersion,
      expiryInterval: h.expiryInterval,
      subscriptions: [],
      inflight: [],
      queue: [],
      awaitingRelease: [],
    };
    if (h.expiresAt !== undefined) s.expiresAt = h.expiresAt;
    for (const { key, value } of db.subscriptions.getRange(range)) s.subscriptions.push(this.read('subscriptions', Buffer.from(key), value, decodeSubscription));
    const inflight: { order: number; inflight: StoredInflight }[] = [];
    for (const { key, value } of db.inflight.getRange(range)) inflight.push(this.read('inflight', Buffer.from(key), value, (b) => decodeInflightRecord(b)));
    s.inflight = inflight.sort((a, b) => a.order - b.order).map((e) => e.inflight);
    for (const { key, value } of db.queue.getRange(range)) s.queue.push(this.read('queue', Buffer.from(key), value, (b) => decodeStoredMessage(b)));
    for (const key of db.awaiting.getKeys(range)) s.awaitingRelease.push((key as Buffer).readUInt16BE(8));
    const willKey = sidKey(h.sid);
    const will = db.wills.get(willKey);
    if (will !== undefined) s.will = this.read('wills', willKey, will, decodeWill);
    return s;
  }

  async loadRetained(): Promise<StoredMessage[]> {
    const pre = this.preloaded?.retained;
    if (pre !== undefined && pre !== null && this.preloaded !== null) {
      this.preloaded.retained = null;
      return pre;
    }
    const db = this.tables();
    const out: StoredMessage[] = [];
    for (const { key, value } of db.retained.getRange({})) out.push(this.read('retained', Buffer.from(key), value, (b) => decodeStoredMessage(b)));
    return out;
  }

  async saveSession(session: StoredSession): Promise<void> {
    // Encoded now: the caller may change the object once this returns.
    const subs = session.subscriptions.map((s) => ({ filter: s.filter, body: encodeSubscription(s) }));
    const inflight = session.inflight.map((f) => ({ packetId: f.packetId, inflight: f }));
    const queue = session.queue.map((m) => encodeMessageBinary(m, HEADROOM));
    const awaiting = [...new Set(session.awaitingRelease)];
    const will = session.will !== undefined ? encodeWill(session.will) : undefined;
    const snapshot = { ...session };
    await this.write(() => {
      const old = this.header(sessionKey(snapshot.owner, snapshot.clientId));
      const sid = this.nextSid++;
      if (old !== undefined) this.deleteSid(old.h.sid, old.key);
      this.putMeta(META_NEXT_SID, encodeJson({ n: this.nextSid }));
      const headerKey = sessionHeaderKey(sessionKey(snapshot.owner, snapshot.clientId));
      this.put('sessions', headerKey, encodeHeader(headerOf(snapshot, sid)));
      this.headerChanged(headerKey, sid);
      for (const s of subs) this.put('subscriptions', sidTextKey(sid, s.filter), s.body);
      // In list order; a packet id listed twice keeps its first place and its last state.
      const orders = new Map<number, number>();
      for (const f of inflight) {
        let order = orders.get(f.packetId);
        if (order === undefined) orders.set(f.packetId, (order = this.nextInflightOrder++));
        this.putRecord('inflight', sidU16Key(sid, f.packetId), encodeInflightRecord(order, f.inflight, HEADROOM));
      }
      queue.forEach((record, i) => this.putRecord('queue', sidU64Key(sid, i), record));
      for (const id of awaiting) this.put('awaiting', sidU16Key(sid, id), EMPTY);
      if (will !== undefined) this.put('wills', sidKey(sid), will);
    });
  }

  async deleteSession(key: string): Promise<void> {
    await this.write(() => {
      const old = this.header(key);
      if (old !== undefined) this.deleteSid(old.h.sid, old.key);
    });
  }

  async setSessionExpiry(key: string, expiresAt: number | undefined, expiryInterval: number): Promise<void> {
    await this.write(() => {
      const old = this.header(key);
      if (old === undefined) return;
      const h: SessionHeader = { ...old.h, expiryInterval };
      if (expiresAt === undefined) delete h.expiresAt;
      else h.expiresAt = expiresAt;
      this.put('sessions', old.key, encodeHeader(h));
    });
  }

  async putSubscription(key: string, subscription: StoredSubscription): Promise<void> {
    const body = encodeSubscription(subscription);
    const filter = subscription.filter;
    await this.write(() => {
      const s = this.sidOf(key);
      if (s !== undefined) this.put('subscriptions', sidTextKey(s.sid, filter), body);
    });
  }

  async deleteSubscription(key: string, filter: string): Promise<void> {
    await this.write(() => {
      const s = this.sidOf(key);
      if (s !== undefined) (this.db as Tables).subscriptions.removeSync(sidTextKey(s.sid, filter));
    });
  }

  async putInflight(key: string, inflight: StoredInflight): Promise<void> {
    // Encoded now (the caller may change the object once this returns); the order is set inside the write.
    const record = encodeInflightRecord(0, inflight, HEADROOM);
    const packetId = inflight.packetId;
    await this.write(() => {
      const s = this.sidOf(key);
      if (s === undefined) return;
      const recordKey = sidU16Key(s.sid, packetId);
      // Replacing by packet id keeps the entry's place (a QoS 2 entry moving on to 'pubrel'); a
      // new one goes last (resend order, MQTT-4.6.0-1). A new entry's lookup finds nothing: one
      // B-tree probe, nothing decoded.
      const raw = (this.db as Tables).inflight.get(recordKey);
      const order = raw !== undefined ? this.read('inflight', recordKey, raw, inflightRecordOrder) : this.nextInflightOrder++;
      setInflightRecordOrder(record, order, HEADROOM);
      this.putRecord('inflight', recordKey, record);
    });
  }

  async deleteInflight(key: string, packetId: number): Promise<void> {
    await this.write(() => {
      const s = this.sidOf(key);
      // Keyed by packet id: no read, one delete (a missing record is no error).
      if (s !== undefined) (this.db as Tables).inflight.removeSync(sidU16Key(s.sid, packetId));
    });
  }

  async enqueue(key: string, message: StoredMessage): Promise<void> {
    const record = encodeMessageBinary(message, HEADROOM);
    await this.write(() => {
      const s = this.sidOf(key);
      if (s !== undefined) this.putRecord('queue', sidU64Key(s.sid, this.nextQueueNumber(s.sid)), record);
    });
  }

  async dequeue(key: string, count: number): Promise<void> {
    if (count <= 0) return;
    await this.write(() => {
      const s = this.sidOf(key);
      if (s !== undefined) this.removeQueueFront(s.sid, count);
    });
  }

  async putAwaitingRelease(key: string, packetId: number): Promise<void> {
    await this.write(() => {
      const s = this.sidOf(key);
      if (s !== undefined) this.put('awaiting', sidU16Key(s.sid, packetId), EMPTY);
    });
  }

  async deleteAwaitingRelease(key: string, packetId: number): Promise<void> {
    await this.write(() => {
      const s = this.sidOf(key);
      if (s !== undefined) (this.db as Tables).awaiting.removeSync(sidU16Key(s.sid, packetId));
    });
  }

  async putWill(key: string, will: StoredWill): Promise<void> {
    const body = encodeWill(will);
    await this.write(() => {
      const s = this.sidOf(key);
      if (s !== undefined) this.put('wills', sidKey(s.sid), body);
    });
  }

  async deleteWill(key: string): Promise<void> {
    await this.write(() => {
      const s = this.sidOf(key);
      if (s !== undefined) (this.db as Tables).wills.removeSync(sidKey(s.sid));
    });
  }

  async putRetained(message: StoredMessage): Promise<void> {
    const key = textKey(message.topic);
    if (message.payload.length === 0) return this.deleteRetained(message.topic);
    const record = encodeMessageBinary(message, HEADROOM);
    const expiresAt = message.expiresAt;
    await this.write(() => {
      this.putRecord('retained', key, record);
      if (expiresAt !== undefined) this.retainedExpiry.set(key.toString('hex'), expiresAt);
      else this.retainedExpiry.delete(key.toString('hex'));
    });
  }

  async deleteRetained(topic: string): Promise<void> {
    const key = textKey(topic);
    await this.write(() => {
      (this.db as Tables).retained.removeSync(key);
      this.retainedExpiry.delete(key.toString('hex'));
    });
  }

  async purgeExpired(options: PurgeOptions = {}): Promise<PurgeReport> {
    const now = options.now ?? this.now();
    const candidates = [...this.retainedExpiry].filter(([, at]) => at <= now).map(([hex]) => Buffer.from(hex, 'hex'));
    return this.write(() => {
      const db = this.db as Tables;
      const report: PurgeReport = { expiredSessions: 0, expiredRetained: 0 };
      const gone: { sid: number; key: Buffer }[] = [];
      for (const { key, value } of db.sessions.getRange({})) {
        const k = Buffer.from(key);
        const h = this.read('sessions', k, value, decodeHeader);
        if (h.expiresAt !== undefined && h.expiresAt <= now && options.keep?.(sessionKey(h.owner, h.clientId)) !== true) gone.push({ sid: h.sid, key: k });
      }
      for (const g of gone) this.deleteSid(g.sid, g.key);
      report.expiredSessions = gone.length;
      // The map is a hint: each candidate is re-read here, inside the write, before it goes.
      for (const key of candidates) {
        const raw = db.retained.get(key);
        this.retainedExpiry.delete(key.toString('hex'));
        if (raw === undefined) continue;
        const m = this.read('retained', key, raw, (b) => decodeStoredMessage(b));
        if (m.expiresAt !== undefined && m.expiresAt <= now) {
          db.retained.removeSync(key);
          report.expiredRetained++;
        } else if (m.expiresAt !== undefined) this.retainedExpiry.set(key.toString('hex'), m.expiresAt);
      }
      return report;
    });
  }

  /** Closes the store but keeps the folder locked, for a tool that replaces the data file (compact). */
}
