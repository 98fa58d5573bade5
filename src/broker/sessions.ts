/**
 * Sessions: attach, takeover, expiry and subscriptions, and the only caller of the Store
 * (through persistence.ts, which keeps the durability contract). Everything the broker must keep
 * across a restart is written through here: sessions and their subscriptions, queued and
 * in-flight deliveries, inbound QoS 2 packet ids, wills and retained messages.
 */
import type { AuditEvent } from '../audit/types.ts';
import type { Principal } from '../auth/types.ts';
import type { Logger } from '../log.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';
import { parseShared } from '../protocol/topic.ts';
import { sessionKey, type Store, type StoreOpenReport, type StoredMessage, type StoredPrincipal, type StoredSubscription, type StoredWill } from '../store/types.ts';
import { timerDelay } from '../util/timers.ts';
import type { ClaimResult, ClusterLink } from './cluster-port.ts';
import type { SessionsApi } from './handler-api.ts';
import { forStore, storedAs, type Message } from './message.ts';
import type { Client } from './ports.ts';
import { Persistence, type WriteStatus, type WriteTag } from './persistence.ts';
import type { IdentityQuotas } from './quotas.ts';
import type { Router } from './router.ts';
import { Session, type Inflight, type QueuedDelivery } from './session.ts';

const NEVER_EXPIRES = 0xffffffff;

/** What a session's life means elsewhere: wills, and the queue of a session that went offline. */
export interface SessionHooks {
  /** A new connection for the session (by its key): drop a pending will, or send it now if the session ends. */
  cancelWill(key: string, sessionEnds: boolean): void;
  /** The session expired: a pending will goes now. */
  fireWill(key: string): void;
  /** A persistent session lost its connection: trim its queue to what offline sessions keep. */
  wentOffline(session: Session): void;
  /** A session ended (its routes are gone): what it held from shared groups goes to other members. */
  sessionEnded(session: Session): void;
}

/** A will that a broker which did not stop cleanly still owes: restored with its session. */
export interface RestoredWill {
  session: Session;
  will: StoredWill;
  principal: Principal;
  listener: string;
}

export class SessionRegistry implements SessionsApi {
  private readonly sessions = new Map<string, Session>();
  private readonly persistence: Persistence;
  /** In a cluster: the bus, and how many subscriptions here use each filter (this node's interest). */
  private link: ClusterLink | null = null;
  private readonly interest = new Map<string, number>();
  /** Set when this node lost its partition to another node: nothing more is written for its sessions. */
  private fenced = false;

  constructor(
    private readonly log: Logger,
    store: Store,
    private readonly router: Router,
    private readonly hooks: SessionHooks,
    private readonly quotas: IdentityQuotas,
    audit: (event: AuditEvent) => void,
  ) {
    this.persistence = new Persistence(store, log, audit);
  }

  get store(): Store {
    return this.persistence.store;
  }

  /** Joins a cluster: sessions are claimed across nodes, and the filters subscribed here are this node's interest. */
  attachCluster(link: ClusterLink): void {
    this.link = link;
  }

  get clustered(): boolean {
    return this.link !== null;
  }

  /** Adds a wait (a bus write, the other nodes' confirmation) to the writes being collected. */
  track(wait: Promise<WriteStatus>): void {
    this.persistence.track(wait);
  }

  /** Collects the store writes of the synchronous code that follows, until {@link writesDone}. */
  trackWrites(): void {
    this.persistence.collect();
  }

  /** Once committed, what the writes since {@link trackWrites} came to; null when nothing needs waiting for. */
  writesDone(): Promise<WriteStatus> | null {
    return this.persistence.collected();
  }

  /** True while store writes fail (disk full, unwritable store). */
  get storeFailing(): boolean {
    return this.persistence.failing;
  }

  get size(): number {
    return this.sessions.size;
  }

  /** The session of an identity (its owner) and a client id. */
  get(owner: string, clientId: string): Session | undefined {
    return this.sessions.get(sessionKey(owner, clientId));
  }

  values(): IterableIterator<Session> {
    return this.sessions.values();
  }

  /**
   * Opens the store and brings back its sessions (expired ones are deleted). Resolves with the
   * open report, the retained messages, and the wills still owed when the last broker did not
   * stop cleanly (a crash while their clients were connected).
   */
  async open(): Promise<{ report: StoreOpenReport; retained: Message[]; wills: RestoredWill[] }> {
    const report = await this.store.open();
    this.persistence.durable = report.durable;
    const wills: RestoredWill[] = [];
    // In a cluster, the sessions in the store belong to partitions: the cluster loads the ones it hosts.
    for (const stored of this.link !== null ? [] : await this.store.loadSessions()) {
      const session = Session.fromStored(stored);
      if (session.expiresAt !== undefined && session.expiresAt <= Date.now()) {
        await this.store.deleteSession(session.key);
        continue;
      }
      session.restored = true;
      this.sessions.set(session.key, session);
      for (const sub of session.subscriptions.values()) this.routeSubscription(session, sub, true);
      this.quotas.subscriptions(session.quotaKey, session.subscriptions.size);
      this.quotas.queued(session.quotaKey, session.queuedBytes);
      if (session.persistent) {
        session.quotaCounted = true;
        this.quotas.sessions(session.quotaKey, 1);
      }
      const will = stored.will;
      if (will !== undefined && report.recovery.uncleanShutdown && will.principal !== undefined) {
        wills.push({ session, will, principal: principalFrom(will.principal, session.clientId), listener: will.principal.listener });
        session.willStored = true;
      } else if (will !== undefined) {
        // A clean stop discards wills, as it does for connected clients; a will without its principal cannot be authorized.
        void this.persistence.write(session, (s) => s.deleteWill(session.key));
      }
      this.armExpiry(session);
    }
    return { report, retained: await this.store.loadRetained(), wills };
  }

  /** Asks the store to drop what expired (sessions the broker does not hold, retained messages past their expiry). */
  purgeExpired(): void {
    void this.store
      // In a cluster a session expires where it is held (another node may hold it): only retained messages are purged here.
      .purgeExpired({ keep: (key) => this.link !== null || this.sessions.has(key) })
      .then((r) => {
        if (r.expiredSessions + r.expiredRetained > 0) this.log.info(r, 'store: expired sessions and retained messages purged');
      })
      .catch((err: unknown) => this.log.warn({ err: (err as Error).message }, 'store purge failed'));
  }

  /** Stops the expiry timers and closes the store. */
  async close(): Promise<void> {
    for (const session of this.sessions.values()) {
      if (session.expiryTimer !== null) clearTimeout(session.expiryTimer);
    }
    await this.persistence.drained();
    await this.store.close();
  }

  // ── attach and detach ──────────────────────────────────────────────────────

  /**
   * Takes over a live session, discards it on clean start, or resumes it. Null when the session
   * would be one persistent session too many for its identity (limits.quotas.persistentSessions).
   */
  attach(conn: Client, clientId: string, owner: string, cleanStart: boolean, expiryInterval: number, quotaKey: string): { session: Session; present: boolean } | null {
    const key = sessionKey(owner, clientId);
    let session = this.sessions.get(key);
    // Resuming a session already counted adds none; a clean start frees the one it replaces.
    const counted = session !== undefined && session.quotaCounted;
    if (expiryInterval > 0 && !(counted && !cleanStart) && !this.quotas.sessionFits(quotaKey, counted ? 1 : 0)) return null;
    if (session !== undefined) {
      const old = session.connection;
      if (old !== null && old !== conn) {
        session.connection = null;
        old.takenOver = true;
        old.sessionEnding = cleanStart;
        this.log.info({ clientId }, 'session taken over by a new connection');
        old.disconnect(ReasonCode.SessionTakenOver, 'session taken over'); // [MQTT-3.1.4-3]
      }
      this.hooks.cancelWill(key, cleanStart); // a new connection before the delay cancels the will [MQTT-3.1.3-9]
      this.dropWill(session); // the new connection stores its own
      if (session.expiryTimer !== null) clearTimeout(session.expiryTimer);
      session.expiryTimer = null;
      if (cleanStart) {
        this.destroy(session);
        session = undefined;
      }
    }
    const present = session !== undefined;
    if (session === undefined) {
      session = new Session(clientId, owner, conn.version, expiryInterval);
      session.quotaKey = quotaKey;
      this.sessions.set(key, session);
    } else {
      session.expiryInterval = expiryInterval;
      session.protocolVersion = conn.version;
    }
    session.expiresAt = undefined;
    this.syncStored(session);
    return { session, present };
  }

  /**
   * In a cluster, makes the session this node's before it is attached (taking it over from the
   * node that holds it). Null: nothing to wait for (a single node, or it is held here already).
   */
  claim(owner: string, clientId: string, cleanStart: boolean): Promise<ClaimResult> | null {
    if (this.link === null) return null;
    const key = sessionKey(owner, clientId);
    const held = this.sessions.get(key);
    return this.link.claim(key, cleanStart, held !== undefined && !held.arriving);
  }

  /** A claim was not followed by an attach (the client went away while it was claimed). */
  unclaimed(owner: string, clientId: string): void {
    const key = sessionKey(owner, clientId);
    if (this.link !== null && !this.sessions.has(key)) this.link.unclaimed(key);
  }

  /** Whether the session's identity may hold one more subscription (limits.quotas.subscriptions). */
  subscriptionFits(session: Session): boolean {
    return this.quotas.subscriptionFits(session.quotaKey);
  }

  /** The session's connection closed: it ends, or (persistent) waits offline until it expires. */
  detach(conn: Client, session: Session): void {
    if (session.connection !== conn) return;
    session.connection = null;
    session.queueFullSince = 0;
    if (!session.persistent) {
      this.destroy(session);
      return;
    }
    this.hooks.wentOffline(session);
    session.expiresAt = session.expiryInterval === NEVER_EXPIRES ? undefined : Date.now() + session.expiryInterval * 1000;
    this.syncStored(session);
    this.armExpiry(session);
  }

  private armExpiry(session: Session): void {
    if (session.expiresAt === undefined || session.connection !== null) return;
    const ms = session.expiresAt - Date.now();
    session.expiryTimer = setTimeout(() => {
      session.expiryTimer = null;
      if (session.connection !== null) return;
      if (session.expiresAt !== undefined && session.expiresAt > Date.now()) return this.armExpiry(session);
      this.log.info({ clientId: session.clientId }, 'session expired');
      this.hooks.fireWill(session.key); // the session ends: a pending will goes now
      this.destroy(session);
    }, timerDelay(ms));
    session.expiryTimer.unref();
  }

  private destroy(session: Session, notifyCluster = true): void {
    // An asynchronous deliver decision still out for it acts on nothing when it comes back (Delivery.decided).
    session.deciding = null;
    for (const sub of session.subscriptions.values()) this.routeSubscription(session, sub, false);
    this.quotas.subscriptions(session.quotaKey, -session.subscriptions.size);
    this.quotas.queued(session.quotaKey, -session.queuedBytes);
    if (session.quotaCounted) {
      session.quotaCounted = false;
      this.quotas.sessions(session.quotaKey, -1);
    }
    if (this.sessions.get(session.key) === session) this.sessions.delete(session.key);
    if (session.expiryTimer !== null) clearTimeout(session.expiryTimer);
    if (session.stored) {
      session.stored = false;
      this.persist(session, (s) => s.deleteSession(session.key), { kind: 'whole' });
    }
    this.hooks.sessionEnded(session);
    if (notifyCluster && !session.arriving) this.link?.ended(session.key);
  }

  // ── moves between nodes (a cluster; see migration.ts) ──────────────────────

  /** The session by its key. */
  byKey(key: string): Session | undefined {
    return this.sessions.get(key);
  }

  /** A takeover from another node with clean start: the session ends here, and its key moves on. */
  endForMove(session: Session): void {
    this.destroy(session, false);
  }

  /**
   * The session moves to another node, which keeps it from now on: it leaves this node's memory
   * and routes, its quotas are given back, and nothing is deleted from the store. Its will was
   * settled when the move began.
   */
  leave(session: Session): void {
    session.deciding = null;
    for (const sub of session.subscriptions.values()) this.routeSubscription(session, sub, false);
    this.quotas.queued(session.quotaKey, -session.queuedBytes);
    if (!session.arriving) {
      this.quotas.subscriptions(session.quotaKey, -session.subscriptions.size);
      if (session.quotaCounted) {
        session.quotaCounted = false;
        this.quotas.sessions(session.quotaKey, -1);
      }
    }
    if (this.sessions.get(session.key) === session) this.sessions.delete(session.key);
    if (session.expiryTimer !== null) clearTimeout(session.expiryTimer);
    session.expiryTimer = null;
  }

  /**
   * A session that moved here, or the arriving copy of one: routed and counted (an arriving copy
   * counts against no quota: the session it stands for still does, on the node it comes from).
   */
  install(session: Session): void {
    this.sessions.set(session.key, session);
    for (const sub of session.subscriptions.values()) this.routeSubscription(session, sub, true);
    this.quotas.queued(session.quotaKey, session.queuedBytes);
    if (session.arriving) return;
    this.quotas.subscriptions(session.quotaKey, session.subscriptions.size);
    if (session.persistent && !session.quotaCounted) {
      session.quotaCounted = true;
      this.quotas.sessions(session.quotaKey, 1);
    }
    this.armExpiry(session);
  }

  /**
   * This node's partition was taken over by another node while this one was cut off from the
   * cluster: its sessions are that node's now. Nothing more is written for them, and they are
   * forgotten here (their connections are ended by the caller).
   */
  fence(): { key: string; connection: Client | null }[] {
    this.fenced = true;
    const gone: { key: string; connection: Client | null }[] = [];
    for (const session of [...this.sessions.values()]) {
      gone.push({ key: session.key, connection: session.connection });
      session.connection = null; // its connection's close then writes nothing
      session.stored = false;
      session.willStored = false;
      this.leave(session);
    }
    this.fenced = false;
    return gone;
  }

  /** A session that moved here from a node with its own store: written here whole. */
  saveWhole(session: Session): void {
    if (!session.persistent || session.stored) return;
    session.stored = true;
    const snapshot = session.toStored();
    this.persist(session, (s) => s.saveSession(snapshot));
  }

  // ── subscriptions ──────────────────────────────────────────────────────────

  addSubscription(session: Session, sub: StoredSubscription): void {
    const previous = session.subscriptions.get(sub.filter);
    if (previous !== undefined) this.routeSubscription(session, previous, false);
    else this.quotas.subscriptions(session.quotaKey, 1);
    session.subscriptionsForWrite().set(sub.filter, sub);
    this.routeSubscription(session, sub, true);
    if (session.persistent) this.persist(session, (s) => s.putSubscription(session.key, sub));
  }

  removeSubscription(session: Session, filter: string): boolean {
    const sub = session.subscriptions.get(filter);
    if (sub === undefined) return false;
    session.subscriptions.delete(filter);
    this.quotas.subscriptions(session.quotaKey, -1);
    this.routeSubscription(session, sub, false);
    if (session.persistent) this.persist(session, (s) => s.deleteSubscription(session.key, filter));
    return true;
  }

  private routeSubscription(session: Session, sub: StoredSubscription, add: boolean): void {
    const shared = parseShared(sub.filter);
    const group = shared !== null && !('error' in shared) ? shared : null;
    const filter = group === null ? sub.filter : group.filter;
    if (add) this.router.add(session, filter, sub, group?.group);
    else this.router.remove(session, filter, group?.group);
    if (this.link !== null) this.countInterest(sub.filter, add);
  }

  /**
   * This node's interest: the filters its sessions subscribe to, each counted. The other nodes
   * learn a filter when its count leaves 0 (a SUBACK waits until they have) and forget it when it
   * returns to 0.
   */
  private countInterest(filter: string, add: boolean): void {
    const link = this.link as ClusterLink;
    const n = (this.interest.get(filter) ?? 0) + (add ? 1 : -1);
    if (n > 0) {
      this.interest.set(filter, n);
      if (n === 1 && add) {
        const known = link.interest(filter, true);
        if (known !== null) this.persistence.track(known);
      }
      return;
    }
    this.interest.delete(filter);
    link.interest(filter, false);
  }

  /** The filters this node has interest in (the cluster announces them when it joins or recovers). */
  interestSnapshot(): string[] {
    return [...this.interest.keys()];
  }

  // ── inbound QoS 2 ──────────────────────────────────────────────────────────

  holdForRelease(session: Session, packetId: number): void {
    session.awaitingReleaseForWrite().add(packetId);
    if (session.persistent) this.persist(session, (s) => s.putAwaitingRelease(session.key, packetId));
  }

  release(session: Session, packetId: number): boolean {
    if (!session.awaitingRelease.delete(packetId)) return false;
    if (session.persistent) this.persist(session, (s) => s.deleteAwaitingRelease(session.key, packetId));
    return true;
  }

  // ── the store: what delivery keeps ─────────────────────────────────────────

  /** Keeps (or clears) a retained message; resolves once committed. */
  retained(message: Message): Promise<WriteStatus> {
    return this.persistence.write(null, (s) => s.putRetained(forStore(message)));
  }

  queued(session: Session, delivery: QueuedDelivery): void {
    if (session.persistent && delivery.qos > 0 && !session.arriving) this.persist(session, (s) => s.enqueue(session.key, queueRecord(delivery)), ENQUEUE_TAG);
  }

  dequeued(session: Session, count: number): void {
    if (session.persistent && count > 0 && !session.arriving) {
      const key = session.key;
      const make = (n: number) => (s: Store) => s.dequeue(key, n);
      // Called after the entries left the memory queue: what is left there that the store holds.
      this.persist(session, make(count), { kind: 'dequeue', count, storedAfter: session.queue.length - session.queuedQos0, make });
    }
  }

  /** Records an in-flight delivery; resolves when it is committed (null: nothing to wait for, a memory store or a session that ends with its connection). */
  inflight(session: Session, inflight: Inflight): Promise<WriteStatus> | null {
    if (!session.persistent || this.fenced) return null;
    const written = this.persistence.write(session, (s) =>
      s.putInflight(session.key, {
        packetId: inflight.packetId,
        state: inflight.state,
        message: storedAs(inflight.message, inflight.qos, inflight.retain),
        ...(inflight.subscriptionIds ? { subscriptionIds: inflight.subscriptionIds } : {}),
      }),
      { kind: 'put', packetId: inflight.packetId, first: inflight.state === 'publish' },
    );
    return this.persistence.durable ? written : null;
  }

  inflightDone(session: Session, packetId: number): void {
    if (session.persistent) this.persist(session, (s) => s.deleteInflight(session.key, packetId), { kind: 'delete', packetId });
  }

  /** Writes the session to the store when it is persistent, or removes it when it no longer is. */
  private syncStored(session: Session): void {
    const key = session.key;
    if (session.persistent !== session.quotaCounted) {
      session.quotaCounted = session.persistent;
      this.quotas.sessions(session.quotaKey, session.persistent ? 1 : -1);
    }
    if (session.persistent) {
      if (session.stored) {
        this.persist(session, (s) => s.setSessionExpiry(key, session.expiresAt, session.expiryInterval));
      } else {
        session.stored = true;
        const snapshot = session.toStored();
        this.persist(session, (s) => s.saveSession(snapshot), { kind: 'whole' });
      }
    } else if (session.stored) {
      session.stored = false;
      this.persist(session, (s) => s.deleteSession(key), { kind: 'whole' });
    }
  }

  /** Writes through to the store without blocking the caller (see persistence.ts). */
  private persist(session: Session | null, write: (store: Store) => Promise<void>, tag?: WriteTag): void {
    if (this.fenced) return;
    void this.persistence.write(session, write, tag);
  }

  // ── wills ──────────────────────────────────────────────────────────────────

  /**
   * A persistent session's connection has a will: kept with the session, with the identity it
   * is authorized as, so that a broker that crashes while the client is connected still
   * publishes it after a restart.
   */
  storeWill(session: Session, will: StoredWill, principal: Principal, listener: string): void {
    if (!session.persistent) return;
    session.willStored = true;
    const stored: StoredWill = { ...will, principal: principalSnapshot(principal, listener) };
    this.persist(session, (s) => s.putWill(session.key, stored));
  }

  /** The will of the session with this key was published, discarded or cancelled. */
  dropWillOf(key: string): void {
    const session = this.sessions.get(key);
    if (session !== undefined) this.dropWill(session);
  }

  /** The will was published, discarded or replaced by a new connection. */
  dropWill(session: Session): void {
    if (!session.willStored) return;
    session.willStored = false;
    this.persist(session, (s) => s.deleteWill(session.key));
  }
}



/** Every enqueue's write-elision tag: one object, nothing to vary. */
const ENQUEUE_TAG: WriteTag = { kind: 'enqueue' };

/** A queue entry as the store keeps it: the message as delivered, with the delivery's subscription identifiers. */
function queueRecord(delivery: QueuedDelivery): StoredMessage {
  const record = storedAs(delivery.message, delivery.qos, delivery.retain);
  if (delivery.subscriptionIds !== undefined) record.subscriptionIds = delivery.subscriptionIds;
  return record;
}

/** What a will keeps of the identity it is published as: no secret (no password, no token). */
function principalSnapshot(p: Principal, listener: string): StoredPrincipal {
  return {
    ...(p.username !== undefined ? { username: p.username } : {}),
    method: p.method,
    provider: p.provider,
    roles: [...p.roles],
    attributes: JSON.parse(JSON.stringify(p.attributes)) as Record<string, unknown>,
    listener,
  };
}

function principalFrom(p: StoredPrincipal, clientId: string): Principal {
  return { clientId, ...(p.username !== undefined ? { username: p.username } : {}), method: p.method, provider: p.provider, roles: [...p.roles], attributes: p.attributes };
}
