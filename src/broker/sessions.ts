/**
 * Sessions: attach, takeover, expiry and subscriptions, and the only caller of the Store.
 * Everything the broker must keep across a restart is written through here: sessions and their
 * subscriptions, queued and in-flight deliveries, inbound QoS 2 packet ids and retained
 * messages. Writes do not block the caller; a failed write is logged.
 */
import type { Logger } from '../log.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';
import { parseShared } from '../protocol/topic.ts';
import { sessionKey, type Store, type StoredSubscription } from '../store/types.ts';
import type { SessionsApi } from './handler-api.ts';
import { forStore, type Message } from './message.ts';
import type { Client } from './ports.ts';
import type { IdentityQuotas } from './quotas.ts';
import type { Router } from './router.ts';
import { Session, type Inflight, type QueuedDelivery } from './session.ts';

const NEVER_EXPIRES = 0xffffffff;
const MAX_TIMER = 2 ** 31 - 1;

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

export class SessionRegistry implements SessionsApi {
  private readonly sessions = new Map<string, Session>();

  constructor(
    private readonly log: Logger,
    private readonly store: Store,
    private readonly router: Router,
    private readonly hooks: SessionHooks,
    private readonly quotas: IdentityQuotas,
  ) {}

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

  /** Opens the store and brings back its sessions (expired ones are deleted); resolves with the retained messages. */
  async open(): Promise<Message[]> {
    await this.store.open();
    for (const stored of await this.store.loadSessions()) {
      const session = Session.fromStored(stored);
      if (session.expiresAt !== undefined && session.expiresAt <= Date.now()) {
        await this.store.deleteSession(session.key);
        continue;
      }
      this.sessions.set(session.key, session);
      for (const sub of session.subscriptions.values()) this.routeSubscription(session, sub, true);
      this.quotas.subscriptions(session.quotaKey, session.subscriptions.size);
      this.quotas.queued(session.quotaKey, session.queuedBytes);
      if (session.persistent) {
        session.quotaCounted = true;
        this.quotas.sessions(session.quotaKey, 1);
      }
      this.armExpiry(session);
    }
    return this.store.loadRetained();
  }

  /** Stops the expiry timers and closes the store. */
  async close(): Promise<void> {
    for (const session of this.sessions.values()) {
      if (session.expiryTimer !== null) clearTimeout(session.expiryTimer);
    }
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
    }, Math.max(0, Math.min(ms, MAX_TIMER)));
    session.expiryTimer.unref();
  }

  private destroy(session: Session): void {
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
      this.persist((s) => s.deleteSession(session.key));
    }
    this.hooks.sessionEnded(session);
  }

  // ── subscriptions ──────────────────────────────────────────────────────────

  addSubscription(session: Session, sub: StoredSubscription): void {
    const previous = session.subscriptions.get(sub.filter);
    if (previous !== undefined) this.routeSubscription(session, previous, false);
    else this.quotas.subscriptions(session.quotaKey, 1);
    session.subscriptionsForWrite().set(sub.filter, sub);
    this.routeSubscription(session, sub, true);
    if (session.persistent) this.persist((s) => s.putSubscription(session.key, sub));
  }

  removeSubscription(session: Session, filter: string): boolean {
    const sub = session.subscriptions.get(filter);
    if (sub === undefined) return false;
    session.subscriptions.delete(filter);
    this.quotas.subscriptions(session.quotaKey, -1);
    this.routeSubscription(session, sub, false);
    if (session.persistent) this.persist((s) => s.deleteSubscription(session.key, filter));
    return true;
  }

  private routeSubscription(session: Session, sub: StoredSubscription, add: boolean): void {
    const shared = parseShared(sub.filter);
    const group = shared !== null && !('error' in shared) ? shared : null;
    const filter = group === null ? sub.filter : group.filter;
    if (add) this.router.add(session, filter, sub, group?.group);
    else this.router.remove(session, filter, group?.group);
  }

  // ── inbound QoS 2 ──────────────────────────────────────────────────────────

  holdForRelease(session: Session, packetId: number): void {
    session.awaitingReleaseForWrite().add(packetId);
    if (session.persistent) this.persist((s) => s.putAwaitingRelease(session.key, packetId));
  }

  release(session: Session, packetId: number): boolean {
    if (!session.awaitingRelease.delete(packetId)) return false;
    if (session.persistent) this.persist((s) => s.deleteAwaitingRelease(session.key, packetId));
    return true;
  }

  // ── the store: what delivery keeps ─────────────────────────────────────────

  retained(message: Message): void {
    this.persist((s) => s.putRetained(forStore(message)));
  }

  queued(session: Session, delivery: QueuedDelivery): void {
    if (session.persistent && delivery.qos > 0) this.persist((s) => s.enqueue(session.key, { ...forStore(delivery.message), qos: delivery.qos, retain: delivery.retain }));
  }

  dequeued(session: Session, count: number): void {
    if (session.persistent && count > 0) this.persist((s) => s.dequeue(session.key, count));
  }

  inflight(session: Session, inflight: Inflight): void {
    if (!session.persistent) return;
    this.persist((s) =>
      s.putInflight(session.key, {
        packetId: inflight.packetId,
        state: inflight.state,
        message: { ...forStore(inflight.message), qos: inflight.qos, retain: inflight.retain },
        ...(inflight.subscriptionIds ? { subscriptionIds: inflight.subscriptionIds } : {}),
      }),
    );
  }

  inflightDone(session: Session, packetId: number): void {
    if (session.persistent) this.persist((s) => s.deleteInflight(session.key, packetId));
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
        this.persist((s) => s.setSessionExpiry(key, session.expiresAt, session.expiryInterval));
      } else {
        session.stored = true;
        const snapshot = session.toStored();
        this.persist((s) => s.saveSession(snapshot));
      }
    } else if (session.stored) {
      session.stored = false;
      this.persist((s) => s.deleteSession(key));
    }
  }

  /** Writes through to the store without blocking the caller; failures are logged. */
  private persist(write: (store: Store) => Promise<void>): void {
    write(this.store).catch((err: unknown) => this.log.error({ err: (err as Error).message }, 'store write failed'));
  }
}


