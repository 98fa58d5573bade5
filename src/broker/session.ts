import type { Principal } from '../auth/types.ts';
import type { QoS } from '../protocol/codec.ts';
import type { AuthzResult } from '../authz/types.ts';
import { sessionKey, type StoredSession, type StoredSubscription } from '../store/types.ts';
import type { Client, FlowSource } from './ports.ts';
import { forStore, messageSize, type Message } from './message.ts';

/** A `$share` group a delivery came through: another member may take it (router.ts SharedGroup). */
export interface SharedTarget {
  readonly name: string;
  /** `$share/{name}/{filter}`. */
  readonly key: string;
  pickExcept(exclude: ReadonlySet<Session>): { session: Session; sub: StoredSubscription } | undefined;
}

/** A delivery waiting for the client: offline, or its in-flight window is full. */
export interface QueuedDelivery {
  message: Message;
  qos: QoS;
  retain: boolean;
  subscriptionIds: number[] | undefined;
  /** Set when it came through a shared subscription: it goes to another member if this one cannot take it. */
  share?: SharedTarget;
  /** An asynchronous deliver decision asked before it was queued (Delivery.deliver), used by the pump instead of asking again. */
  decision?: Promise<AuthzResult>;
}

/** An outgoing QoS 1/2 delivery not yet fully acknowledged. */
export interface Inflight extends QueuedDelivery {
  packetId: number;
  state: 'publish' | 'pubrel';
  /** Waiting to be re-sent after a reconnect, once the client's receive maximum has room. */
  resend?: boolean;
}

class ReadOnlyEmptyMap<K, V> extends Map<K, V> {
  override set(): this {
    throw new Error('internal error: write to a session collection through its *ForWrite() method');
  }
  override delete(): boolean {
    return false;
  }
  override clear(): void {}
}
class ReadOnlyEmptySet<T> extends Set<T> {
  override add(): this {
    throw new Error('internal error: write to a session collection through its *ForWrite() method');
  }
  override delete(): boolean {
    return false;
  }
  override clear(): void {}
}
const EMPTY_MAP: Map<unknown, unknown> = new ReadOnlyEmptyMap();
const EMPTY_SET: Set<number> = new ReadOnlyEmptySet<number>();

/** Session state: lives as long as the connection, or longer for a persistent session. */
export class Session {
  /**
   * Subscriptions, in-flight deliveries and QoS 2 ids awaiting release are made on first write:
   * an idle connection then holds no hash tables (about 0.6 KiB). Until then these read as shared
   * empty collections that throw if written to, so a write that skipped the *ForWrite() methods
   * fails loudly instead of changing every session.
   */
  private subs: Map<string, StoredSubscription> = EMPTY_MAP as Map<string, StoredSubscription>;
  private inflightMap: Map<number, Inflight> = EMPTY_MAP as Map<number, Inflight>;
  private awaiting: Set<number> = EMPTY_SET;

  get subscriptions(): Map<string, StoredSubscription> {
    return this.subs;
  }
  get inflight(): Map<number, Inflight> {
    return this.inflightMap;
  }
  /** Inbound QoS 2 packet ids received and not yet released [MQTT-4.3.3]. */
  get awaitingRelease(): Set<number> {
    return this.awaiting;
  }
  subscriptionsForWrite(): Map<string, StoredSubscription> {
    if (this.subs === EMPTY_MAP) this.subs = new Map();
    return this.subs;
  }
  inflightForWrite(): Map<number, Inflight> {
    if (this.inflightMap === EMPTY_MAP) this.inflightMap = new Map();
    return this.inflightMap;
  }
  awaitingReleaseForWrite(): Set<number> {
    if (this.awaiting === EMPTY_SET) this.awaiting = new Set();
    return this.awaiting;
  }
  queue: QueuedDelivery[] = [];
  /** Payload + topic bytes held in `queue`, bounded by limits.maxQueuedBytes. */
  queuedBytes = 0;
  /** QoS 0 entries in `queue`: when 0, a full queue has nothing to evict. */
  queuedQos0 = 0;
  /** Messages this session lost to its queue limits: QoS 0 dropped, QoS 1/2 refused. */
  droppedMessages = 0;
  /** When the queue started losing messages while connected, with no delivery since; 0: it is not. */
  queueFullSince = 0;
  /**
   * The queued delivery whose asynchronous deliver decision is awaited (first in the queue, and
   * still in the store), or null. One at a time, so the in-flight window counts it and a client
   * that leaves meanwhile loses nothing (Delivery.pump).
   */
  deciding: QueuedDelivery | null = null;
  /** QoS 1/2 refusals not yet written to the audit log, and when the last such record was written. */
  refusalsUnaudited = 0;
  refusalsAuditedAt = 0;
  connection: Client | null = null;
  principal: Principal | null = null;
  /** Publishers held (flow control) because this subscriber's queue is over its high-water mark. */
  flowWaiters: Set<FlowSource> | null = null;
  /** Last acknowledgement or send from the queue while holding publishers (ms, the broker's clock). */
  lastProgressAt = 0;
  /** When this subscriber began holding its current publishers (ms, the broker's clock). */
  flowHeldSince = 0;
  /** Too slow once (a hold past flowControl.maxHoldMs): holds nobody before this time, drained or not. */
  flowSlowUntil = 0;
  /** Held publishers for too long without progress: holds nobody until its queue is down to the low-water mark. */
  flowStalled = false;
  /**
   * In a cluster: bytes of the node's in-transit allowance this queue holds (messages from a
   * publisher on another node, held, that arrived beyond the queue's limits; see Delivery.deliver).
   */
  transitCharged = 0;
  /** The listener of the last connection, for checks made while the session is offline. */
  listener = '';
  expiryTimer: NodeJS.Timeout | null = null;
  expiresAt: number | undefined;
  /** True once the session has been written to the store. */
  stored = false;
  private nextPacketId = 1;

  // Scratch fields written by Router.match, so matching allocates nothing per subscriber.
  matchGen = 0;
  matchQos: QoS = 0;
  matchRetainAsPublished = false;
  matchSubscriptionIds: number[] | undefined = undefined;

  /** The session's name: its owner and client id (see sessionKey). */
  readonly key: string;
  /** Whose quotas it counts against (quotas.ts): its owner, or for anonymous clients the owner at an address. */
  quotaKey: string;
  /** Counted as one of its identity's persistent sessions. */
  quotaCounted = false;
  /** Brought back from the store at start: its subscriptions are checked against the policy when it resumes. */
  restored = false;
  /** Its connection's will is kept in the store. */
  willStored = false;
  /** The last store write made for it: when that settles, all its writes have (a move waits for it). */
  lastWrite: Promise<unknown> | null = null;
  /**
   * In a cluster, a session moving here from another node: messages for it are queued in memory
   * and not stored until its state has come (cluster-port.ts).
   */
  arriving = false;

  constructor(
    readonly clientId: string,
    readonly owner: string,
    public protocolVersion: 3 | 4 | 5,
    /** Seconds the session outlives its connection (0: ends with it). */
    public expiryInterval: number,
  ) {
    this.key = sessionKey(owner, clientId);
    this.quotaKey = owner;
  }

  get persistent(): boolean {
    return this.expiryInterval > 0;
  }

  /** The next free packet id, skipping ids still in flight. */
  allocatePacketId(): number {
    for (let i = 0; i < 65535; i++) {
      const id = this.nextPacketId;
      this.nextPacketId = id === 65535 ? 1 : id + 1;
      if (!this.inflight.has(id)) return id;
    }
    throw new Error('no free packet id');
  }

  toStored(): StoredSession {
    const stored: StoredSession = {
      clientId: this.clientId,
      owner: this.owner,
      protocolVersion: this.protocolVersion,
      expiryInterval: this.expiryInterval,
      subscriptions: [...this.subscriptions.values()],
      inflight: [...this.inflight.values()].map((f) => ({
        packetId: f.packetId,
        state: f.state,
        message: { ...forStore(f.message), qos: f.qos, retain: f.retain },
        ...(f.subscriptionIds ? { subscriptionIds: f.subscriptionIds } : {}),
      })),
      // QoS 0 is at most once: it is never written to the store (see Delivery.enqueue).
      // With each delivery's subscription identifiers, as the store's queue entries have them
      // (a session moved to another node sent its queued messages without them [MQTT-3.3.4-3]).
      queue: this.queue.filter((q) => q.qos > 0).map((q) => ({ ...forStore(q.message), qos: q.qos, retain: q.retain, ...(q.subscriptionIds !== undefined ? { subscriptionIds: q.subscriptionIds } : {}) })),
      awaitingRelease: [...this.awaitingRelease],
    };
    if (this.expiresAt !== undefined) stored.expiresAt = this.expiresAt;
    return stored;
  }

  static fromStored(stored: StoredSession): Session {
    const session = new Session(stored.clientId, stored.owner, stored.protocolVersion, stored.expiryInterval);
    session.expiresAt = stored.expiresAt;
    session.stored = true;
    for (const sub of stored.subscriptions) session.subscriptionsForWrite().set(sub.filter, sub);
    for (const f of stored.inflight) {
      session.inflightForWrite().set(f.packetId, {
        packetId: f.packetId,
        state: f.state,
        message: f.message,
        qos: f.message.qos,
        retain: f.message.retain,
        subscriptionIds: f.subscriptionIds,
      });
    }
    session.queue = stored.queue.map((m) => ({ message: m, qos: m.qos, retain: m.retain, subscriptionIds: m.subscriptionIds }));
    for (const m of stored.queue) {
      session.queuedBytes += queuedSize(m);
      if (m.qos === 0) session.queuedQos0++;
    }
    for (const id of stored.awaitingRelease) session.awaitingReleaseForWrite().add(id);
    return session;
  }
}



/** What a queued message counts against limits.maxQueuedBytes and the identity's queued-bytes quota. */
export function queuedSize(message: Message): number {
  return messageSize(message);
}
