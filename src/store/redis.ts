/**
 * The Redis store: sessions and retained messages in a Redis shared by one or more brokers
 * (`store.type: redis`, docs/persistence.md).
 *
 * A write's promise resolves when Redis has answered it (and, with `waitReplicas`, when that
 * many replicas have it): durable as far as Redis's own persistence goes (appendonly with
 * appendfsync always keeps every acknowledged write across a Redis crash or power cut). Each
 * write to a session is one Lua script on the session's two keys, atomic, and ignored for a
 * session that does not exist. Writes sent on one connection are applied in the order sent.
 *
 * Layout: redis-keys.ts; records and their checks: redis-records.ts; scripts: redis-scripts.ts;
 * the connection and its failure behaviour: redis-client.ts; open and close: redis-base.ts.
 */
import { RedisBase, throwIfProblems } from './redis-base.ts';
import type { Epochs } from './redis-scan.ts';
import { readSession } from './redis-scan.ts';
import { F, sessionDigest } from './redis-keys.ts';
import { decodeRetained, epochOfRecord, expiryRecord, indexScore, inflightRecord, queueElement, retainedRecord, saveArgs, subscriptionRecord, willRecord } from './redis-records.ts';
import { DELETE_IF_EXPIRY, DELETE_RETAINED, DELETE_RETAINED_IF, ENQUEUE, PUT_INFLIGHT, PUT_RETAINED, SAVE, SET_FIELD } from './redis-scripts.ts';
import { sessionKey, type PurgeOptions, type PurgeReport, type Store, type StoredInflight, type StoredMessage, type StoredSession, type StoredSubscription, type StoredWill } from './types.ts';

export type { RedisStoreOptions } from './redis-base.ts';

const PURGE_PAGE = 200;

export class RedisStore extends RedisBase implements Store {
  /** Bytes of commands sent to Redis and not answered yet (bounded by store.maxPendingBytes). */
  get pendingBytes(): number {
    return this.link?.pending ?? 0;
  }

  /** The connection, for a write: what open() read is stale from now on. */
  private writer() {
    this.preloaded = null;
    return this.conn();
  }

  private keysOf(key: string): { digest: string; hash: string; queue: string } {
    const digest = sessionDigest(key);
    return { digest, ...this.redisKeys.session(digest) };
  }

  // ── reads ──────────────────────────────────────────────────────────────────

  async loadSessions(): Promise<StoredSession[]> {
    const pre = this.preloaded?.sessions;
    if (pre !== undefined && pre !== null && this.preloaded !== null) {
      this.preloaded.sessions = null;
      return pre;
    }
    return (await this.scanNow()).sessions;
  }

  /** One session, read whole and verified with one command: what a broker of a cluster loads on demand. */
  async getSession(key: string): Promise<StoredSession | undefined> {
    const link = this.conn();
    const { digest } = this.keysOf(key);
    const decoded = await readSession(link, this.redisKeys, this.epochs as Epochs, this.sealing, digest, key);
    throwIfProblems(
      decoded.orphan ? [] : decoded.problems,
      this.target,
    );
    return decoded.session;
  }

  async loadRetained(): Promise<StoredMessage[]> {
    const pre = this.preloaded?.retained;
    if (pre !== undefined && pre !== null && this.preloaded !== null) {
      this.preloaded.retained = null;
      return pre;
    }
    return (await this.scanNow()).scan.retained.map((r) => r.message);
  }

  // ── sessions ───────────────────────────────────────────────────────────────

  async saveSession(session: StoredSession): Promise<void> {
    const link = this.writer();
    const k = this.keysOf(sessionKey(session.owner, session.clientId));
    const args = saveArgs(k.digest, session, this.keyring);
    // Both sent now, in this order, before anything written after this call (the broker does not
    // await every write, and Redis applies one connection's commands in the order sent). Indexed
    // first: a crash in between leaves an index entry without a session (skipped, cleaned up at
    // the next open), never a session that loadSessions cannot find. (In a Redis Cluster the two
    // are on different nodes, so that order is not guaranteed: `store check` finds such a session.)
    await Promise.all([
      link.write('index a session', 80, 'zadd', this.redisKeys.index, indexScore(session.expiresAt), k.digest),
      link.writeScript('save a session', SAVE, [k.hash, k.queue], args),
    ]);
  }

  async deleteSession(key: string): Promise<void> {
    const link = this.writer();
    const k = this.keysOf(key);
    await Promise.all([link.write('delete a session', 64, 'del', k.hash, k.queue), link.write('remove a session from the index', 64, 'zrem', this.redisKeys.index, k.digest)]);
  }

  async setSessionExpiry(key: string, expiresAt: number | undefined, expiryInterval: number): Promise<void> {
    const link = this.writer();
    const k = this.keysOf(key);
    const record = expiryRecord(k.digest, expiryInterval, expiresAt, this.keyring);
    // The index score only tells the purge where to look (XX: never adds a session that is not there).
    await Promise.all([
      link.write('index a session', 80, 'zadd', this.redisKeys.index, 'XX', indexScore(expiresAt), k.digest),
      link.writeScript('set a session expiry', SET_FIELD, [k.hash], [F.expiry, record]),
    ]);
  }

  // ── what a session holds ─────────────────────────────────────────────────────

  async putSubscription(key: string, subscription: StoredSubscription): Promise<void> {
    const k = this.keysOf(key);
    await this.writer().writeScript('put a subscription', SET_FIELD, [k.hash], [F.sub(subscription.filter), subscriptionRecord(k.digest, subscription, this.keyring)]);
  }

  async deleteSubscription(key: string, filter: string): Promise<void> {
    const k = this.keysOf(key);
    await this.writer().write('delete a subscription', 64 + filter.length, 'hdel', k.hash, F.sub(filter));
  }

  async putInflight(key: string, inflight: StoredInflight): Promise<void> {
    const k = this.keysOf(key);
    await this.writer().writeScript('put an in-flight message', PUT_INFLIGHT, [k.hash], [F.inflight(inflight.packetId), inflightRecord(k.digest, inflight, this.keyring)]);
  }

  async deleteInflight(key: string, packetId: number): Promise<void> {
    const k = this.keysOf(key);
    await this.writer().write('delete an in-flight message', 64, 'hdel', k.hash, F.inflight(packetId));
  }

  async enqueue(key: string, message: StoredMessage): Promise<void> {
    const k = this.keysOf(key);
    await this.writer().writeScript('queue a message', ENQUEUE, [k.hash, k.queue], [queueElement(k.digest, message, this.keyring)]);
  }

  async dequeue(key: string, count: number): Promise<void> {
    if (count <= 0) return;
    const k = this.keysOf(key);
    await this.writer().write('dequeue messages', 64, 'ltrim', k.queue, count, -1);
  }

  async putAwaitingRelease(key: string, packetId: number): Promise<void> {
    const k = this.keysOf(key);
    await this.writer().writeScript('put a packet id awaiting release', SET_FIELD, [k.hash], [F.awaiting(packetId), '']);
  }

  async deleteAwaitingRelease(key: string, packetId: number): Promise<void> {
    const k = this.keysOf(key);
    await this.writer().write('delete a packet id awaiting release', 64, 'hdel', k.hash, F.awaiting(packetId));
  }

  async putWill(key: string, will: StoredWill): Promise<void> {
    const k = this.keysOf(key);
    await this.writer().writeScript('put a will', SET_FIELD, [k.hash], [F.will, willRecord(k.digest, will, this.keyring)]);
  }

  async deleteWill(key: string): Promise<void> {
    const k = this.keysOf(key);
    await this.writer().write('delete a will', 64, 'hdel', k.hash, F.will);
  }

  // ── retained ───────────────────────────────────────────────────────────────

  async putRetained(message: StoredMessage): Promise<void> {
    if (message.payload.length === 0) return this.deleteRetained(message.topic);
    const link = this.writer();
    const record = retainedRecord(message, this.keyring);
    await link.writeScript('put a retained message', PUT_RETAINED, [this.redisKeys.retained, this.redisKeys.retainedExpiry], [Buffer.from(message.topic, 'utf8'), record, message.expiresAt !== undefined ? String(message.expiresAt) : '']);
  }

  async deleteRetained(topic: string): Promise<void> {
    const link = this.writer();
    await link.writeScript('delete a retained message', DELETE_RETAINED, [this.redisKeys.retained, this.redisKeys.retainedExpiry], [Buffer.from(topic, 'utf8')]);
  }

  // ── expiry ─────────────────────────────────────────────────────────────────

  /**
   * Finds expired sessions and retained messages from their index scores (a page at a time),
   * checks each against its record, and deletes it only if the record is still the one checked.
   */
  async purgeExpired(options: PurgeOptions = {}): Promise<PurgeReport> {
    const link = this.conn();
    const now = options.now ?? this.now();
    const report: PurgeReport = { expiredSessions: 0, expiredRetained: 0 };
    let offset = 0;
    for (;;) {
      const page = await link.read('find expired sessions', 'zrangebyscore', this.redisKeys.index, '-inf', now, 'WITHSCORES', 'LIMIT', offset, PURGE_PAGE);
      const items = Array.isArray(page) ? page.filter((x): x is Buffer => Buffer.isBuffer(x)) : [];
      if (items.length === 0) break;
      let gone = 0;
      for (let i = 0; i + 1 < items.length; i += 2) {
        const digest = (items[i] as Buffer).toString('latin1');
        const score = (items[i + 1] as Buffer).toString('latin1');
        const decoded = await readSession(link, this.redisKeys, this.epochs as Epochs, this.sealing, digest).catch(() => undefined);
        const s = decoded?.session;
        if (decoded === undefined || decoded.orphan || (s === undefined && decoded.problems.length > 0)) continue; // damage is for open and check to report
        if (s === undefined) {
          gone += (await this.unindex(link, digest, score)) === 1 ? 1 : 0;
          continue;
        }
        if (s.expiresAt === undefined || s.expiresAt > now || options.keep?.(this.sessionKeyOf(s)) === true || decoded.expiryValue === undefined) continue;
        const k = this.redisKeys.session(digest);
        if ((await link.writeScript('delete an expired session', DELETE_IF_EXPIRY, [k.hash, k.queue], [decoded.expiryValue])) === 1) {
          report.expiredSessions++;
          gone += (await this.unindex(link, digest, score)) === 1 ? 1 : 0;
        }
      }
      if (items.length < PURGE_PAGE * 2) break;
      // What was removed from the index no longer takes a place in it.
      offset += PURGE_PAGE - gone;
    }
    const topics = await link.read('find expired retained messages', 'zrangebyscore', this.redisKeys.retainedExpiry, '-inf', now);
    for (const topic of Array.isArray(topics) ? topics.filter((x): x is Buffer => Buffer.isBuffer(x)) : []) {
      const value = await link.read('read a retained message', 'hget', this.redisKeys.retained, topic);
      if (!Buffer.isBuffer(value)) {
        await link.write('clean the retained expiry index', 64, 'zrem', this.redisKeys.retainedExpiry, topic);
        continue;
      }
      let expiresAt: number | undefined;
      try {
        const epoch = epochOfRecord(value);
        if (epoch !== undefined) await (this.epochs as Epochs).ensure([epoch]);
        expiresAt = decodeRetained(topic, value, this.sealing).expiresAt;
      } catch {
        continue; // reported by open and check
      }
      if (expiresAt === undefined || expiresAt > now) continue;
      if ((await link.writeScript('delete an expired retained message', DELETE_RETAINED_IF, [this.redisKeys.retained, this.redisKeys.retainedExpiry], [topic, value])) === 1) report.expiredRetained++;
    }
    return report;
  }
}
