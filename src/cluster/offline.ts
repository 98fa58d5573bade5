/**
 * Partitions adopted from nodes that died (or stopped): their sessions are all offline (their
 * connections died with the node), so this node keeps them on the store, not in the broker's
 * session registry. It goes on reading the partition's inbox where the dead node stopped and
 * queues each message for the matching sessions in the store, as the dead node would have:
 *
 * - QoS 1/2 only (QoS 0 is not kept for an offline session), at the lower of the message's and
 *   the subscription's QoS, retain flag as the subscription's retain-as-published says;
 * - within limits.maxQueuedMessages and maxQueuedBytes (beyond: refused and counted, as a full
 *   queue refuses);
 * - a `$share` group the sender chose this partition for goes to one of its members here;
 * - expired messages are dropped; an expired session ends (its will is published) and is deleted.
 *
 * A pending will is published after its delay, as the identity it was stored with. When a
 * client comes back (to any node) the session leaves by the takeover protocol (moves.ts), and a
 * partition with no session left ends.
 */
import type { ArrivingSession, ClusterHost, Departing } from '../broker/cluster-port.ts';
import type { Message } from '../broker/message.ts';
import { forStore, messageSize } from '../broker/message.ts';
import type { WriteStatus } from '../broker/ports.ts';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import type { QoS } from '../protocol/codec.ts';
import { sessionKey, splitSessionKey, type Store, type StoredSession, type StoredSubscription } from '../store/types.ts';
import { timerDelay } from '../util/timers.ts';
import { InterestTable } from './interest.ts';

interface OfflineSession {
  key: string;
  clientId: string;
  owner: string;
  protocolVersion: 3 | 4 | 5;
  expiryInterval: number;
  expiresAt: number | undefined;
  subscriptions: StoredSubscription[];
  queued: number;
  queuedBytes: number;
  lastWrite: Promise<unknown>;
  expiryTimer: NodeJS.Timeout | null;
  willTimer: NodeJS.Timeout | null;
  will: StoredSession['will'];
}

/** One adopted partition. */
class Partition {
  readonly sessions = new Map<string, OfflineSession>();
  /** filter → sessions with it (the partition's interest, each filter counted). */
  readonly byFilter = new Map<string, Set<OfflineSession>>();
  /** The same filters as a trie, each filter its own entry: a match gives the matching filters. */
  readonly table = new InterestTable();
  readonly rr = new Map<string, number>();
  constructor(readonly id: string) {}
}

export interface OfflineHooks {
  readonly log: Logger;
  limits(): Config['limits'];
  store(): Store;
  host(): ClusterHost;
  /** The partition's interest changed (a filter's last session left). */
  interestGone(p: string, filters: string[]): void;
  /** A session ended here (expired, or clean start): its key is free. */
  ended(p: string, key: string): void;
  /** A partition has no session left. */
  empty(p: string): void;
}

export class OfflinePartitions {
  private readonly partitions = new Map<string, Partition>();
  /** Counters for $SYS and tests. */
  readonly stats = { queued: 0, refused: 0, expired: 0 };

  constructor(private readonly hooks: OfflineHooks) {}

  hosts(p: string): boolean {
    return this.partitions.has(p);
  }

  get ids(): string[] {
    return [...this.partitions.keys()];
  }

  sessionCount(): number {
    let n = 0;
    for (const p of this.partitions.values()) n += p.sessions.size;
    return n;
  }

  /** Starts hosting a partition with these sessions (as the store holds them). */
  adopt(p: string, stored: StoredSession[]): void {
    const partition = new Partition(p);
    this.partitions.set(p, partition);
    const now = Date.now();
    for (const s of stored) {
      if (s.expiresAt !== undefined && s.expiresAt <= now) {
        // It expired while nobody hosted it: it ends now (its will goes), as at a store's open.
        this.add(partition, s).expiresAt = now;
      } else this.add(partition, s);
    }
    for (const session of partition.sessions.values()) this.arm(partition, session);
    this.hooks.log.info({ partition: p, sessions: partition.sessions.size }, 'cluster: adopted the partition of a node that is gone: its sessions are kept here until their clients return');
    if (partition.sessions.size === 0) this.hooks.empty(p);
  }

  /** Stops hosting (this node stops): timers end; the store holds everything. */
  close(): void {
    for (const partition of this.partitions.values()) {
      for (const s of partition.sessions.values()) {
        if (s.expiryTimer !== null) clearTimeout(s.expiryTimer);
        if (s.willTimer !== null) clearTimeout(s.willTimer);
      }
    }
    this.partitions.clear();
  }

  /** Forgets a partition without touching the store (it went to another node). */
  drop(p: string): void {
    const partition = this.partitions.get(p);
    if (partition === undefined) return;
    for (const s of partition.sessions.values()) {
      if (s.expiryTimer !== null) clearTimeout(s.expiryTimer);
      if (s.willTimer !== null) clearTimeout(s.willTimer);
    }
    this.partitions.delete(p);
  }

  private add(partition: Partition, s: StoredSession): OfflineSession {
    const key = sessionKey(s.owner, s.clientId);
    let bytes = 0;
    for (const m of s.queue) bytes += messageSize(m);
    const session: OfflineSession = {
      key,
      clientId: s.clientId,
      owner: s.owner,
      protocolVersion: s.protocolVersion,
      expiryInterval: s.expiryInterval,
      expiresAt: s.expiresAt,
      subscriptions: [...s.subscriptions],
      queued: s.queue.length,
      queuedBytes: bytes,
      lastWrite: Promise.resolve(),
      expiryTimer: null,
      willTimer: null,
      will: s.will,
    };
    partition.sessions.set(key, session);
    for (const sub of session.subscriptions) {
      let set = partition.byFilter.get(sub.filter);
      if (set === undefined) {
        partition.byFilter.set(sub.filter, (set = new Set()));
        partition.table.add(sub.filter, sub.filter);
      }
      set.add(session);
    }
    return session;
  }

  /** Expiry and the pending will. */
  private arm(partition: Partition, session: OfflineSession): void {
    const now = Date.now();
    if (session.expiresAt !== undefined) {
      const ms = timerDelay(session.expiresAt - now);
      session.expiryTimer = setTimeout(() => this.expire(partition, session), ms);
      session.expiryTimer.unref();
    }
    const will = session.will;
    if (will !== undefined && will.principal !== undefined) {
      // Its connection died with the node: the will goes after its delay from now, unless the client returns first.
      const delay = Math.min(will.delayInterval, session.expiryInterval) * 1000;
      session.willTimer = setTimeout(() => this.publishWill(partition, session), delay);
      session.willTimer.unref();
    } else if (will !== undefined) {
      session.will = undefined;
      session.lastWrite = this.write(session, (st) => st.deleteWill(session.key));
    }
  }

  private publishWill(partition: Partition, session: OfflineSession): void {
    session.willTimer = null;
    const will = session.will;
    if (will === undefined || will.principal === undefined || !partition.sessions.has(session.key)) return;
    session.will = undefined;
    const p = will.principal;
    this.hooks.host().publishWill({
      key: session.key,
      clientId: session.clientId,
      quotaKey: session.owner,
      will,
      principal: { clientId: session.clientId, ...(p.username !== undefined ? { username: p.username } : {}), method: p.method, provider: p.provider, roles: [...p.roles], attributes: p.attributes },
      listener: p.listener,
    });
    session.lastWrite = this.write(session, (st) => st.deleteWill(session.key));
  }

  private expire(partition: Partition, session: OfflineSession): void {
    session.expiryTimer = null;
    if (!partition.sessions.has(session.key)) return;
    this.stats.expired++;
    this.hooks.log.info({ clientId: session.clientId, partition: partition.id }, 'session expired');
    if (session.willTimer !== null) {
      clearTimeout(session.willTimer);
      this.publishWill(partition, session); // the session ends: a pending will goes now
    }
    this.remove(partition, session);
    session.lastWrite = this.write(session, (st) => st.deleteSession(session.key));
    void session.lastWrite.then(() => this.hooks.ended(partition.id, session.key));
  }

  private remove(partition: Partition, session: OfflineSession): void {
    partition.sessions.delete(session.key);
    if (session.expiryTimer !== null) clearTimeout(session.expiryTimer);
    if (session.willTimer !== null) clearTimeout(session.willTimer);
    session.expiryTimer = session.willTimer = null;
    const gone: string[] = [];
    for (const sub of session.subscriptions) {
      const set = partition.byFilter.get(sub.filter);
      if (set === undefined) continue;
      set.delete(session);
      if (set.size === 0) {
        partition.byFilter.delete(sub.filter);
        partition.table.remove(sub.filter, sub.filter);
        gone.push(sub.filter);
      }
    }
    if (gone.length > 0) this.hooks.interestGone(partition.id, gone);
    if (partition.sessions.size === 0) this.hooks.empty(partition.id);
  }

  private write(session: OfflineSession, op: (store: Store) => Promise<void>): Promise<unknown> {
    // Writes of one session are issued in order after the ones before them settled.
    const next = session.lastWrite.then(() => op(this.hooks.store()));
    next.catch((err: unknown) => this.hooks.log.error({ err: (err as Error).message, clientId: session.clientId }, 'cluster: a store write for an adopted session failed'));
    return next.catch(() => undefined);
  }

  // ── messages ───────────────────────────────────────────────────────────────

  /** Whether a session of partition `p` is a member of `$share` group `key` (`$share/g/f`). */
  hasMember(p: string, key: string): boolean {
    return (this.partitions.get(p)?.byFilter.get(key)?.size ?? 0) > 0;
  }

  /** A message in the partition's inbox: queued for its matching sessions; resolves once stored. */
  apply(p: string, message: Message, plain: boolean, groups: readonly string[] | null): Promise<WriteStatus> | null {
    const partition = this.partitions.get(p);
    if (partition === undefined) return null;
    if (message.expiresAt !== undefined && message.expiresAt <= Date.now()) return null;
    const best = new Map<OfflineSession, { qos: QoS; retain: boolean }>();
    const consider = (session: OfflineSession, sub: StoredSubscription) => {
      if (sub.noLocal && session.key === message.origin) return; // [MQTT-3.8.3-3]
      const qos = (sub.qos < message.qos ? sub.qos : message.qos) as QoS;
      const retain = sub.retainAsPublished ? message.retain : false;
      const had = best.get(session);
      if (had === undefined) best.set(session, { qos, retain });
      else best.set(session, { qos: (qos > had.qos ? qos : had.qos) as QoS, retain: had.retain || retain });
    };
    const match = partition.table.match(message.topic);
    if (plain) {
      for (const filter of match.plain) {
        for (const session of partition.byFilter.get(filter) ?? []) {
          const sub = session.subscriptions.find((x) => x.filter === filter);
          if (sub !== undefined) consider(session, sub);
        }
      }
    }
    if (groups !== null) {
      for (const group of groups) {
        const members = partition.byFilter.get(group);
        if (members === undefined || members.size === 0) continue;
        const list = [...members];
        const at = (partition.rr.get(group) ?? 0) % list.length;
        partition.rr.set(group, at + 1);
        const session = list[at] as OfflineSession;
        const sub = session.subscriptions.find((s) => s.filter === group);
        if (sub !== undefined) consider(session, sub);
      }
    }
    if (best.size === 0) return null;
    const limits = this.hooks.limits();
    const waits: Promise<unknown>[] = [];
    for (const [session, { qos, retain }] of best) {
      if (qos === 0) continue; // QoS 0 is not kept for an offline session
      const size = messageSize(message);
      if (session.queued >= limits.maxQueuedMessages || (session.queued > 0 && session.queuedBytes + size > limits.maxQueuedBytes)) {
        this.stats.refused++;
        continue;
      }
      session.queued++;
      session.queuedBytes += size;
      this.stats.queued++;
      const stored = { ...forStore(message), qos, retain };
      session.lastWrite = this.write(session, (st) => st.enqueue(session.key, stored));
      waits.push(session.lastWrite);
    }
    if (waits.length === 0) return null;
    return Promise.all(waits).then(() => 'ok' as WriteStatus);
  }

  // ── the takeover protocol (owner side) ─────────────────────────────────────

  holds(p: string, key: string): boolean {
    return this.partitions.get(p)?.sessions.has(key) ?? false;
  }

  /** A client returned: its pending will is settled as a reconnect settles it; clean start ends the session. */
  async depart(p: string, key: string, cleanStart: boolean): Promise<Departing> {
    const partition = this.partitions.get(p);
    const session = partition?.sessions.get(key);
    if (partition === undefined || session === undefined) return { present: false };
    if (session.willTimer !== null) {
      clearTimeout(session.willTimer);
      session.willTimer = null;
      if (cleanStart) this.publishWill(partition, session); // [MQTT-3.1.3-9]: the session ends, so the will goes
    }
    if (session.will !== undefined) {
      session.will = undefined;
      session.lastWrite = this.write(session, (st) => st.deleteWill(key));
    }
    if (cleanStart) {
      this.remove(partition, session);
      session.lastWrite = this.write(session, (st) => st.deleteSession(key));
      await session.lastWrite;
      return { present: false };
    }
    const arriving: ArrivingSession = { key, clientId: session.clientId, owner: session.owner, protocolVersion: session.protocolVersion, expiryInterval: session.expiryInterval, subscriptions: session.subscriptions };
    return { present: true, session: arriving };
  }

  /** The move is committed: the session leaves; resolves once its writes are done, with its state from the store. */
  async release(p: string, key: string): Promise<StoredSession | null> {
    const partition = this.partitions.get(p);
    const session = partition?.sessions.get(key);
    if (partition === undefined || session === undefined) return null;
    this.remove(partition, session);
    await session.lastWrite;
    return (await this.hooks.store().getSession(key)) ?? null;
  }

  /** A session that moved into an adopted partition (a move this partition's old node had begun). */
  arrived(p: string, stored: StoredSession): void {
    const partition = this.partitions.get(p);
    if (partition === undefined || partition.sessions.has(sessionKey(stored.owner, stored.clientId))) return;
    this.arm(partition, this.add(partition, stored));
  }

  /** The keys of a partition's sessions. */
  keys(p: string): string[] {
    return [...(this.partitions.get(p)?.sessions.keys() ?? [])];
  }

  /** The interest of a partition (its filters). */
  filters(p: string): string[] {
    return [...(this.partitions.get(p)?.byFilter.keys() ?? [])];
  }

  /** The owner of a session key, for logs. */
  static clientOf(key: string): string {
    return splitSessionKey(key).clientId;
  }
}
