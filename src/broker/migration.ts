/**
 * The broker's side of a cluster ({@link ClusterHost}): what the cluster (src/cluster/) may ask
 * of this node's sessions and delivery. Messages that arrive from other nodes are delivered here,
 * retained messages set elsewhere are kept here, and sessions move between nodes here: a
 * takeover ends the connection and settles the will as one node would (`depart`), the session
 * leaves once the move is committed (`release`), and on the new node an arriving copy collects
 * messages until the state has come (`prepareArrival`, `arrive`). The protocol around these steps
 * is the cluster's (src/cluster/moves.ts, docs/cluster.md).
 */
import type { Logger } from '../log.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';
import { sessionKey, type StoredSession } from '../store/types.ts';
import type { ArrivingSession, ClusterHost, Departing, DetachedWill, RemoteInterest } from './cluster-port.ts';
import type { Delivery } from './delivery.ts';
import type { Message } from './message.ts';
import type { FlowSource, WriteStatus } from './ports.ts';
import { Session } from './session.ts';
import type { SessionRegistry } from './sessions.ts';
import type { WillScheduler } from './will.ts';

export interface MigrationParts {
  log: Logger;
  sessions: SessionRegistry;
  delivery: Delivery;
  wills: WillScheduler;
  /** The router's index of the other partitions' interest. */
  remoteInterest: RemoteInterest;
}

export class Migration implements ClusterHost {
  private readonly log: Logger;
  private readonly sessions: SessionRegistry;
  private readonly delivery: Delivery;
  private readonly wills: WillScheduler;
  readonly remoteInterest: RemoteInterest;

  constructor(parts: MigrationParts) {
    this.remoteInterest = parts.remoteInterest;
    this.log = parts.log;
    this.sessions = parts.sessions;
    this.delivery = parts.delivery;
    this.wills = parts.wills;
  }

  deliverRemote(message: Message, plain: boolean, groups: readonly string[] | null, from: FlowSource | null): Promise<WriteStatus> | null {
    this.sessions.trackWrites();
    this.delivery.deliverRemote(message, plain, groups, from);
    return this.sessions.writesDone();
  }

  flowHold(key: string, holder: string, hold: boolean): boolean {
    const session = this.sessions.byKey(key);
    return this.delivery.remoteHold(session === undefined || session.arriving ? null : session.connection, key, holder, hold);
  }

  flowHolderGone(holder: string): void {
    this.delivery.remoteHolderGone(holder);
  }

  flowStatus(): { applied: number; expired: number; refused: number; held: number; transitBytes: number } {
    return { ...this.delivery.remoteFlow, held: this.delivery.remoteHeld, transitBytes: this.delivery.inTransitBytes };
  }

  applyRetained(message: Message, persist: boolean): void {
    this.delivery.applyRetained(message, persist);
  }

  retainedSnapshot(): Message[] {
    return this.delivery.retained.all();
  }

  holds(key: string): boolean {
    const session = this.sessions.byKey(key);
    return session !== undefined && !session.arriving;
  }

  depart(key: string, cleanStart: boolean): Departing {
    const session = this.sessions.byKey(key);
    if (session === undefined || session.arriving) return { present: false };
    const old = session.connection;
    if (old !== null) {
      old.takenOver = true;
      old.sessionEnding = cleanStart;
      this.log.info({ clientId: session.clientId }, 'session taken over by a connection on another node');
      // A persistent session goes offline (and expires) as it would here until the move commits.
      if (session.persistent && !cleanStart) this.sessions.detach(old, session);
      else session.connection = null;
      old.disconnect(ReasonCode.SessionTakenOver, 'session taken over'); // [MQTT-3.1.4-3]
    }
    this.wills.cancel(key, cleanStart); // a new connection before the delay cancels the will [MQTT-3.1.3-9]
    this.sessions.dropWill(session);
    if (cleanStart) {
      this.sessions.endForMove(session);
      return { present: false };
    }
    return {
      present: true,
      session: {
        key,
        clientId: session.clientId,
        owner: session.owner,
        protocolVersion: session.protocolVersion,
        expiryInterval: session.expiryInterval,
        subscriptions: [...session.subscriptions.values()],
      },
    };
  }

  async release(key: string): Promise<StoredSession | null> {
    const session = this.sessions.byKey(key);
    if (session === undefined || session.arriving) return null;
    this.sessions.leave(session);
    this.delivery.sessionMoved(session);
    // The new owner reads the session from the store: every write made for it must be there.
    await session.lastWrite?.catch(() => undefined);
    return session.toStored();
  }

  prepareArrival(arriving: ArrivingSession): Promise<WriteStatus> | null {
    if (this.sessions.byKey(arriving.key) !== undefined) return null;
    const copy = new Session(arriving.clientId, arriving.owner, arriving.protocolVersion, arriving.expiryInterval);
    copy.arriving = true;
    for (const sub of arriving.subscriptions) copy.subscriptionsForWrite().set(sub.filter, sub);
    // Routing to it makes its filters this node's interest; the other nodes confirm they know them.
    this.sessions.trackWrites();
    this.sessions.install(copy);
    return this.sessions.writesDone();
  }

  async arrive(key: string, stored: StoredSession | null, keep: (message: Message) => boolean): Promise<void> {
    const copy = this.sessions.byKey(key);
    const arrivingCopy = copy !== undefined && copy.arriving ? copy : null;
    const fromStore = stored === null;
    const state = stored ?? (await this.sessions.store.getSession(key));
    const current = this.sessions.byKey(key);
    if (current !== undefined && !current.arriving) return; // it arrived by another path meanwhile
    let written: Promise<WriteStatus> | null = null;
    if (state !== undefined && (state.expiresAt === undefined || state.expiresAt > Date.now())) {
      const session = Session.fromStored(state);
      session.stored = fromStore;
      session.willStored = state.will !== undefined; // a will left in the store is dropped when it is attached
      // Installed before the copy leaves, so the filters they share stay this node's interest throughout.
      this.sessions.trackWrites();
      this.sessions.install(session);
      if (!fromStore) this.sessions.saveWhole(session);
      if (arrivingCopy !== null) {
        // A copy that came through a $share group was sent to this partition only (each group
        // copy goes to one node), so the old node never had it: the delivered-up-to filter, right
        // for plain copies that both nodes receive, would drop it.
        for (const delivery of arrivingCopy.queue) if (delivery.share !== undefined || keep(delivery.message)) this.delivery.enqueueMoved(session, delivery);
      }
      written = this.sessions.writesDone();
    }
    if (arrivingCopy !== null) this.sessions.leave(arrivingCopy);
    if (written !== null) await written;
  }

  abandonArrival(key: string): void {
    const copy = this.sessions.byKey(key);
    if (copy !== undefined && copy.arriving) this.sessions.leave(copy);
  }

  adoptStored(stored: StoredSession): void {
    if (this.sessions.byKey(sessionKey(stored.owner, stored.clientId)) !== undefined) return;
    if (stored.expiresAt !== undefined && stored.expiresAt <= Date.now()) return;
    const session = Session.fromStored(stored);
    session.willStored = stored.will !== undefined;
    this.sessions.install(session);
  }

  publishWill(will: DetachedWill): void {
    this.wills.publishDetached(will);
  }

  dropAll(reason: string): void {
    const gone = this.sessions.fence();
    for (const { key: k, connection } of gone) {
      this.wills.forget(k);
      if (connection === null) continue;
      connection.discardWill = true;
      connection.disconnect(ReasonCode.SessionTakenOver, reason);
    }
    this.log.warn({ sessions: gone.length }, `every session of this node ended: ${reason}`);
  }

  interestSnapshot(): string[] {
    return this.sessions.interestSnapshot();
  }

  sessionKeys(): string[] {
    const keys: string[] = [];
    for (const s of this.sessions.values()) if (!s.arriving) keys.push(s.key);
    return keys;
  }
}
