/**
 * Delivery: route a message to the matching subscriptions, authorize each delivery, send it
 * within the client's in-flight window, queue what cannot go now, and send the queue as acks
 * arrive. Retained messages are kept here. This is the one place a message leaves for a
 * subscriber, so it is where a cross-node bus hooks in.
 */
import type { AuthzResult } from '../authz/types.ts';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import type { QoS } from '../protocol/codec.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';
import { splitSessionKey, type StoredSubscription } from '../store/types.ts';
import { encodePublish, withPacketId } from './encode.ts';
import type { ClusterLink, LocalShare } from './cluster-port.ts';
import type { DeliveryApi, GateApi } from './handler-api.ts';
import { messageSize, type Message } from './message.ts';
import type { WriteStatus } from './persistence.ts';
import type { Client, FlowSource } from './ports.ts';
import type { IdentityQuotas } from './quotas.ts';
import { RetainedMessages } from './retained.ts';
import type { Router } from './router.ts';
import { queuedSize, type Inflight, type QueuedDelivery, type Session, type SharedTarget } from './session.ts';
import { countSent, type BrokerStats, type CoarseClock } from './stats.ts';

/** What delivery keeps in the store (SessionRegistry writes it). */
export interface DeliveryStore {
  /** Resolves once committed. */
  retained(message: Message): Promise<WriteStatus>;
  /** Adds a wait to the writes an acknowledgement is collecting (a bus write in a cluster). */
  track(wait: Promise<WriteStatus>): void;
  queued(session: Session, delivery: QueuedDelivery): void;
  dequeued(session: Session, count: number): void;
  /** Resolves once the in-flight record is committed; null when there is nothing to wait for. */
  inflight(session: Session, inflight: Inflight): Promise<WriteStatus> | null;
  inflightDone(session: Session, packetId: number): void;
}

export interface DeliveryParts {
  config: Config;
  log: Logger;
  stats: BrokerStats;
  clock: CoarseClock;
  router: Router;
  gate: Pick<GateApi, 'authorize' | 'audit' | 'disconnectForSecurity'>;
  store: DeliveryStore;
  quotas: IdentityQuotas;
}

const NO_SHARES: readonly LocalShare[] = [];
/** An asynchronous deliver decision that threw instead of answering: a denial (fail closed). */
const DECISION_FAILED: AuthzResult = { kind: 'deny', reason: ReasonCode.UnspecifiedError, detail: 'the deliver decision failed' };
const NO_PICKS: readonly { session: Session; sub: StoredSubscription; group: SharedTarget }[] = [];

/** A subscriber too slow once holds nobody for this many maxHoldMs periods afterwards. */
const SLOW_COOLDOWN_HOLDS = 6;
/**
 * A publisher's hold budget: it is held (by anything: subscribers here and other nodes, counted
 * once) at most HOLD_BUDGET maxHoldMs in total within any window of HOLD_BUDGET_WINDOW maxHoldMs
 * (a sixth of the time). Two, not one: one slow subscriber's longest hold (maxHoldMs) must leave
 * as much again for healthy subscribers beside it to absorb a burst.
 */
const HOLD_BUDGET = 2;
const HOLD_BUDGET_WINDOW = 12;
/** Held spans closer than this part of the window are kept as one (the gap counts as held): bounded memory. */
const HOLD_SPAN_GRAIN = 64;
/**
 * What one queue entry costs beyond its message's bytes (the entry, its message object, the
 * store's copy), charged against the in-transit allowance so that tiny messages cannot make it
 * unbounded in entries.
 */
const TRANSIT_ENTRY_BYTES = 256;

/** A hold a node asked of this node's publisher (cross-node flow control): whose, and since when. */
interface RemoteHold {
  conn: Client;
  since: number;
}

/** When a publisher of this node was held, within the budget's window (HOLD_BUDGET_WINDOW). */
interface HoldBudget {
  /** Past held spans, `start, end` pairs, oldest first. */
  spans: number[];
  /** When the hold in force began; 0: not held now. */
  since: number;
}

/**
 * The last match of a message from another node, kept while the router is unchanged (its
 * version) for the next one with the same topic and publisher: a bus frame carries hundreds of
 * messages, usually of a few topics. The match's per-session results are copied out (the router
 * writes them on the sessions, and the next match overwrites them). Never kept when a shared group
 * matched: its pick rotates on every match. Authorization is not kept: every delivery is still
 * decided for its subscriber.
 */
class RemoteMemo {
  private constructor(
    readonly topic: string,
    readonly origin: string | undefined,
    readonly version: number,
    readonly sessions: readonly Session[],
    readonly qos: readonly number[],
    readonly retainAsPublished: readonly boolean[],
    readonly subscriptionIds: readonly (number[] | undefined)[],
  ) {}

  static of(topic: string, origin: string | undefined, version: number, matched: readonly Session[]): RemoteMemo {
    const n = matched.length;
    const sessions = new Array<Session>(n);
    const qos = new Array<number>(n);
    const rap = new Array<boolean>(n);
    const ids = new Array<number[] | undefined>(n);
    for (let i = 0; i < n; i++) {
      const s = matched[i] as Session;
      sessions[i] = s;
      qos[i] = s.matchQos;
      rap[i] = s.matchRetainAsPublished;
      ids[i] = s.matchSubscriptionIds;
    }
    return new RemoteMemo(topic, origin, version, sessions, qos, rap, ids);
  }
}

export class Delivery implements DeliveryApi {
  readonly retained = new RetainedMessages();
  /** See {@link RemoteMemo}. */
  private remoteMemo: RemoteMemo | null = null;
  private readonly config: Config;
  private readonly log: Logger;
  private readonly stats: BrokerStats;
  private readonly clock: CoarseClock;
  private readonly router: Router;
  private readonly gate: DeliveryParts['gate'];
  private readonly store: DeliveryStore;
  private readonly quotas: IdentityQuotas;
  /** Sessions with QoS 1/2 queue refusals not yet in the audit log; the sweep records them. */
  private readonly refusalsPending = new Set<Session>();
  /** Connected subscribers over their high-water mark that hold publishers (flow control). */
  private readonly holding = new Set<Session>();
  private readonly flowOn: boolean;
  private readonly stallMs: number;
  private readonly maxHoldMs: number;
  private readonly highWater: number;
  private readonly highWaterBytes: number;
  private readonly lowWater: number;
  private readonly lowWaterBytes: number;
  private dropWarnedAt = 0;
  /** In a cluster: where messages routed here go on to the other nodes. */
  private cluster: ClusterLink | null = null;
  /**
   * In a cluster: bytes (TRANSIT_ENTRY_BYTES each, plus their size) queued beyond subscribers'
   * limits because they were on the bus when their publisher's hold was sent; at most
   * `transitMax` (cluster.maxPendingBytes) for the whole node.
   */
  private transitBytes = 0;
  private readonly transitMax: number;
  /** Holds other nodes asked of this node's publishers, by holder and publisher (`run\0session key`). */
  private readonly remoteHolds = new Map<string, RemoteHold>();
  /** A hold that ran out (maxHoldMs): the same holder cannot hold the same publisher again before this time. */
  private readonly remoteCooldown = new Map<string, number>();
  /** Cross-node flow control counters (the cluster's status reports them); refused: asked while the publisher's hold budget was spent. */
  readonly remoteFlow = { applied: 0, expired: 0, refused: 0 };
  /** Hold budgets of this node's publishers that were held within the window. */
  private readonly budgets = new Map<Client, HoldBudget>();
  private readonly budgetWindowMs: number;
  private readonly budgetMs: number;

  constructor(parts: DeliveryParts) {
    this.config = parts.config;
    this.log = parts.log;
    this.stats = parts.stats;
    this.clock = parts.clock;
    this.router = parts.router;
    this.gate = parts.gate;
    this.store = parts.store;
    this.quotas = parts.quotas;
    const limits = parts.config.limits;
    this.flowOn = limits.flowControl.enabled && limits.maxQueuedMessages > 1;
    this.stallMs = limits.flowControl.stallMs;
    this.maxHoldMs = limits.flowControl.maxHoldMs;
    this.budgetWindowMs = HOLD_BUDGET_WINDOW * this.maxHoldMs;
    this.budgetMs = HOLD_BUDGET * this.maxHoldMs;
    this.highWater = Math.ceil(limits.maxQueuedMessages / 2);
    this.highWaterBytes = Math.ceil(limits.maxQueuedBytes / 2);
    this.lowWater = Math.floor(limits.maxQueuedMessages / 4);
    this.lowWaterBytes = Math.floor(limits.maxQueuedBytes / 4);
    this.transitMax = parts.config.cluster?.maxPendingBytes ?? 0;
  }

  // ── routing ────────────────────────────────────────────────────────────────

  /** Joins a cluster: every message routed here also goes to the other nodes whose subscribers it matches. */
  attachCluster(link: ClusterLink): void {
    this.cluster = link;
  }

  /** `from`: the publishing client, which flow control may hold; null for the broker's own messages. */
  route(message: Message, from: Client | null = null): number {
    const cluster = this.cluster;
    if (cluster !== null) cluster.stamp(message);
    if (message.retain) this.retain(message);
    const router = this.router;
    // In a cluster the same walk finds the partitions elsewhere with matching subscribers.
    router.match(message.topic, message.origin, cluster !== null);
    const matched = router.matched;
    const shared = router.sharedMatched;
    const n = matched.length;
    let total = n + shared.length;
    let remoteGroups: ReadonlySet<string> | null = null;
    if (cluster !== null) {
      // Forwarded before local delivery (which may route again: wills), while the router's arrays hold this match.
      const forwarded = cluster.forward(message, shared.length === 0 ? NO_SHARES : shared.map((p) => p.group), router);
      if (forwarded.written !== null) this.store.track(forwarded.written);
      remoteGroups = forwarded.remoteGroups;
      total += forwarded.partitions;
    }
    if (n + shared.length === 0) return total;
    // The router's arrays are reused by the next match; delivery can route (wills), so copy when needed.
    const sessions = n > 0 ? matched.slice() : matched;
    const picks = shared.length > 0 ? shared.slice() : shared;
    for (let i = 0; i < n; i++) {
      const session = sessions[i] as Session;
      const qos = (session.matchQos < message.qos ? session.matchQos : message.qos) as QoS;
      this.deliver(session, message, qos, session.matchRetainAsPublished ? message.retain : false, session.matchSubscriptionIds, from);
    }
    for (const { session, sub, group } of picks) {
      if (remoteGroups !== null && remoteGroups.has(group.key)) continue; // a member on another node takes it
      this.deliverShared(group, session, sub, message, from, null);
    }
    return total;
  }

  /**
   * A message from another node of the cluster, routed there and sent here because subscribers
   * here match it: delivered to them (`plain`) and to the `$share` groups the sender chose this
   * node for. It is not retained again and not forwarded again.
   */
  deliverRemote(message: Message, plain: boolean, groups: readonly string[] | null, from: FlowSource | null): void {
    const router = this.router;
    let memo = this.remoteMemo;
    if (memo === null || message.topic !== memo.topic || message.origin !== memo.origin || router.version !== memo.version) {
      router.match(message.topic, message.origin);
      const matched = router.matched;
      const shared = router.sharedMatched;
      if (shared.length > 0) {
        // A shared group's pick rotates on every match: nothing is kept.
        this.remoteMemo = null;
        const n = plain ? matched.length : 0;
        const sessions = n > 0 ? matched.slice() : matched;
        const picks = groups !== null ? shared.filter((p) => groups.includes(p.group.key)) : NO_PICKS;
        for (let i = 0; i < n; i++) {
          const session = sessions[i] as Session;
          const qos = (session.matchQos < message.qos ? session.matchQos : message.qos) as QoS;
          this.deliver(session, message, qos, session.matchRetainAsPublished ? message.retain : false, session.matchSubscriptionIds, from);
        }
        for (const { session, sub, group } of picks) this.deliverShared(group, session, sub, message, from, null);
        return;
      }
      this.remoteMemo = memo = RemoteMemo.of(message.topic, message.origin, router.version, matched);
    }
    if (!plain) return;
    // The memo's own arrays: a delivery that changes the router (or a nested match) leaves them as they are.
    const { sessions, qos, retainAsPublished, subscriptionIds } = memo;
    for (let i = 0; i < sessions.length; i++) {
      const q = qos[i] as number;
      this.deliver(sessions[i] as Session, message, (q < message.qos ? q : message.qos) as QoS, retainAsPublished[i] === true ? message.retain : false, subscriptionIds[i], from);
    }
  }

  /** A retained message set or cleared on another node; `persist`: this node's own store keeps retained messages too. */
  applyRetained(message: Message, persist: boolean): void {
    if (message.origin !== undefined) message.quotaKey = splitSessionKey(message.origin).owner;
    const previous = this.retained.set(message);
    if (previous?.quotaKey !== undefined) this.quotas.retained(previous.quotaKey, -1, -messageSize(previous));
    if (message.payload.length > 0 && message.quotaKey !== undefined) this.quotas.retained(message.quotaKey, 1, messageSize(message));
    if (persist) void this.store.retained(message);
  }

  /**
   * A message for a `$share` group goes to one member. A member that refuses it now (not
   * authorized to read it, or it is larger than the member's Maximum Packet Size) passes it to
   * another member, until one takes it or every member has refused [MQTT 5.0 4.8.2].
   */
  private deliverShared(group: SharedTarget, first: Session, sub: StoredSubscription, message: Message, from: FlowSource | null, tried: Set<Session> | null): void {
    let session = first;
    let s = sub;
    for (;;) {
      const qos = (s.qos < message.qos ? s.qos : message.qos) as QoS;
      if (this.deliver(session, message, qos, s.retainAsPublished ? message.retain : false, s.subscriptionId === undefined ? undefined : [s.subscriptionId], from, group)) return;
      tried ??= new Set();
      tried.add(session);
      const next = group.pickExcept(tried);
      if (next === undefined) return;
      session = next.session;
      s = next.sub;
    }
  }

  /**
   * A delivery that came through a shared group and that `session` could not take: another member
   * gets it. `left`: the session ended with it; when no member here can take it, a member on
   * another node gets it (cluster.passShared). A refusal stays on this node, as on one node: two
   * nodes whose members both refuse a message must not hand it back and forth.
   */
  private passOn(session: Session, delivery: QueuedDelivery, left = false): void {
    const share = delivery.share;
    if (share === undefined) return;
    const tried = new Set<Session>([session]);
    const next = share.pickExcept(tried);
    if (next !== undefined) this.deliverShared(share, next.session, next.sub, delivery.message, null, tried);
    else if (left && this.cluster !== null) this.cluster.passShared(delivery.message, share.key);
  }

  /**
   * Whether a retained message may be kept: within the publishing identity's quota
   * (limits.quotas.retainedMessages / retainedBytes, a message it replaces of its own freed) and
   * the broker's limits (maxRetainedMessages / maxRetainedBytes). Clearing a topic always fits.
   */
  retainFits(message: Message, quotaKey: string): boolean {
    if (message.payload.length === 0) return true;
    const size = messageSize(message);
    const previous = this.retained.get(message.topic);
    const own = previous !== undefined && previous.quotaKey === quotaKey ? { bytes: messageSize(previous) } : null;
    const limits = this.config.limits;
    if (previous === undefined && this.retained.size >= limits.maxRetainedMessages) return false;
    if (this.retained.bytes + size - (previous === undefined ? 0 : messageSize(previous)) > limits.maxRetainedBytes) return false;
    return this.quotas.retainFits(quotaKey, size, own);
  }

  /** The retained messages brought back from the store, each counted against its publisher's identity. */
  restoreRetained(messages: Message[]): void {
    for (const m of messages) {
      if (m.origin !== undefined) m.quotaKey = splitSessionKey(m.origin).owner;
      this.retained.set(m);
      if (m.quotaKey !== undefined) this.quotas.retained(m.quotaKey, 1, messageSize(m));
    }
  }

  /** Keeps (or clears) a retained message, moving its quota from the identity whose message it replaces. */
  private retain(message: Message): void {
    const previous = this.retained.set(message);
    if (previous?.quotaKey !== undefined) this.quotas.retained(previous.quotaKey, -1, -messageSize(previous));
    if (message.payload.length > 0 && message.quotaKey !== undefined) this.quotas.retained(message.quotaKey, 1, messageSize(message));
    const written = this.store.retained(message);
    if (this.cluster !== null) {
      // Every node keeps the retained messages: they learn this one after it is in the store.
      const known = this.cluster.retained(message, written);
      if (known !== null) this.store.track(known);
    }
  }

  /** Sends the retained messages matching a new subscription, each with the retain flag set [MQTT-3.3.1-9]. */
  sendRetained(session: Session, sub: StoredSubscription): void {
    this.retained.match(sub.filter, (message) => {
      const qos = (sub.qos < message.qos ? sub.qos : message.qos) as QoS;
      this.deliver(session, message, qos, true, sub.subscriptionId === undefined ? undefined : [sub.subscriptionId]);
    });
  }

  // ── delivery ───────────────────────────────────────────────────────────────

  /**
   * One delivery to one session: sent now, queued, or (expired, offline QoS 0) dropped. Returns
   * false only when the session refused it at once, leaving nothing queued: the deliver check
   * denied it, or it is larger than the client's Maximum Packet Size. A shared group then tries
   * another member.
   */
  deliver(session: Session, message: Message, qos: QoS, retain: boolean, subscriptionIds: number[] | undefined, from: FlowSource | null = null, share?: SharedTarget): boolean {
    if (message.expiresAt !== undefined && message.expiresAt <= this.clock.now) {
      this.stats.messagesExpired++;
      return true;
    }
    const conn = session.connection;
    // A socket over limits.maxSocketBufferBytes is not written to: its deliveries queue (backpressure).
    if (conn !== null && conn.state === 'connected' && !conn.writeBlocked && (qos === 0 ? session.queuedQos0 === 0 : session.queue.length === 0 && session.inflight.size < conn.sendWindow)) {
      const allowed = this.gate.authorize(conn, 'deliver', message.topic, qos, retain, false, share?.name);
      if (!(allowed instanceof Promise)) return allowed.kind === 'allow' && this.sendNow(session, conn, message, qos, retain, subscriptionIds, share);
      // An asynchronous decision: the delivery waits in the queue (and in the store), and the pump
      // sends it when the answer comes back, one at a time (pump). The answer is used only when the
      // delivery is first in the queue at once, for this connection; behind others (a QoS 0 passes
      // queued QoS 1/2 here) it is asked again when its turn comes.
      const delivery: QueuedDelivery = { message, qos, retain, subscriptionIds };
      if (session.queue.length === 0) delivery.decision = allowed;
      if (share !== undefined) delivery.share = share;
      this.enqueue(session, delivery, false);
      this.pump(session);
      return true;
    }
    // An arriving session (moving here from another node, cluster-port.ts) keeps everything until its client is attached.
    if (conn === null && !session.arriving) {
      if (!session.persistent) return true;
      if (qos === 0 && !this.config.limits.queueQos0) return true; // QoS 0 is not kept for offline sessions unless configured
    }
    const delivery: QueuedDelivery = { message, qos, retain, subscriptionIds };
    if (share !== undefined) delivery.share = share;
    if (from === null || qos === 0) {
      this.enqueue(session, delivery, false);
      return true;
    }
    // A publisher on another node is held one bus round trip late: what it sent meanwhile is on the
    // bus, acknowledged, and kept beyond the queue's limits (within the node's allowance) while
    // this subscriber may hold it.
    if (this.enqueue(session, delivery, from.remote === true && this.mayHold(session, from))) this.holdPublisher(session, from);
    return true;
  }

  /** Writes the delivery to the client; false when its Maximum Packet Size forbids it. */
  private sendNow(session: Session, conn: Client, message: Message, qos: QoS, retain: boolean, subscriptionIds: number[] | undefined, share?: SharedTarget): boolean {
    if (conn.state !== 'connected') return true;
    if (qos === 0) return this.transmit(conn, message, 0, retain, subscriptionIds, 0, false);
    const inflight: Inflight = { message, qos, retain, subscriptionIds, packetId: session.allocatePacketId(), state: 'publish' };
    if (share !== undefined) inflight.share = share;
    if (qos === 2 && session.persistent) {
      // A QoS 2 PUBLISH goes out only once the store knows its packet id: a client holds that id
      // until PUBREL and drops another message that reuses it [MQTT-4.3.3-9], so a broker that
      // restarted must never hand the id to a new message while the client may still hold it.
      const buf = this.encodeFor(conn, message, qos, retain, subscriptionIds);
      if (buf === null) return false;
      session.inflightForWrite().set(inflight.packetId, inflight);
      const written = this.store.inflight(session, inflight);
      conn.sendWhenWritten(written, () => {
        this.stats.messagesSent++;
        return withPacketId(buf, inflight.packetId, false);
      });
      return true;
    }
    if (!this.transmit(conn, message, qos, retain, subscriptionIds, inflight.packetId, false)) return false;
    session.inflightForWrite().set(inflight.packetId, inflight);
    this.store.inflight(session, inflight);
    return true;
  }

  /** The encoded PUBLISH for this client, or null (counted as a drop) when its Maximum Packet Size forbids it. */
  private encodeFor(conn: Client, message: Message, qos: QoS, retain: boolean, subscriptionIds: number[] | undefined): Buffer | null {
    const template = encodePublish(conn, message, qos, retain, subscriptionIds, this.clock.now);
    if (template.length <= conn.clientMaxPacketSize) return template;
    this.drop('larger than the client maximum packet size');
    return null;
  }

  /** Encodes and writes a PUBLISH. Returns false when the client's maximum packet size forbids it [MQTT-3.1.2-24]. */
  private transmit(conn: Client, message: Message, qos: QoS, retain: boolean, subscriptionIds: number[] | undefined, packetId: number, dup: boolean): boolean {
    const template = encodePublish(conn, message, qos, retain, subscriptionIds, this.clock.now);
    if (template.length > conn.clientMaxPacketSize) {
      this.stats.droppedTooLarge++;
      this.drop('larger than the client maximum packet size');
      return false;
    }
    conn.write(qos === 0 ? template : withPacketId(template, packetId, dup));
    this.stats.messagesSent++;
    countSent(this.stats, message, qos, retain, dup);
    // Only block when the stream will emit 'drain', which unblocks it and pumps the queue.
    if (conn.stream.writableLength > this.config.limits.maxSocketBufferBytes && conn.stream.writableNeedDrain) conn.writeBlocked = true;
    return true;
  }

  // ── the queue ──────────────────────────────────────────────────────────────

  /**
   * Queues a delivery within limits.maxQueuedMessages and maxQueuedBytes. When full: a new QoS 0
   * message is dropped; a new QoS 1/2 message evicts the oldest QoS 0 ones, and with none left it
   * is refused for this subscriber (the messages already queued were acknowledged to their
   * publishers and are kept). Every loss is counted, and QoS 1/2 refusals are audited. The first
   * message always fits, so no size is undeliverable. Only QoS 1/2 entries are written to the store.
   */
  private enqueue(session: Session, delivery: QueuedDelivery, inTransit: boolean): boolean {
    const limits = this.config.limits;
    const queue = session.queue;
    const size = queuedSize(delivery.message);
    const maxBytes = limits.maxQueuedBytes;
    const max = limits.maxQueuedMessages;
    // The identity's queued bytes across all its sessions (limits.quotas.queuedBytes): treated as a full queue.
    if (!this.quotas.queuedFits(session.quotaKey, size)) {
      this.queueLoss(session, delivery, delivery.qos > 0);
      return false;
    }
    if (queue.length >= max || (queue.length > 0 && session.queuedBytes + size > maxBytes)) {
      if (delivery.qos === 0) {
        this.queueLoss(session, delivery, false);
        return false;
      }
      let i = 0;
      while (session.queuedQos0 > 0 && (queue.length >= max || session.queuedBytes + size > maxBytes)) {
        while ((queue[i] as QueuedDelivery).qos !== 0) i++;
        const [evicted] = queue.splice(i, 1) as [QueuedDelivery];
        const freed = queuedSize(evicted.message);
        session.queuedBytes -= freed;
        this.quotas.queued(session.quotaKey, -freed);
        session.queuedQos0--;
        this.queueLoss(session, evicted, false);
      }
      if (queue.length >= max || (queue.length > 0 && session.queuedBytes + size > maxBytes)) {
        const cost = size + TRANSIT_ENTRY_BYTES;
        if (!inTransit || this.transitBytes + cost > this.transitMax) {
          this.queueLoss(session, delivery, true);
          return false;
        }
        this.transitBytes += cost;
        session.transitCharged += cost;
      }
    }
    queue.push(delivery);
    session.queuedBytes += size;
    this.quotas.queued(session.quotaKey, size);
    if (delivery.qos === 0) session.queuedQos0++;
    this.store.queued(session, delivery);
    return true;
  }

  // ── flow control ───────────────────────────────────────────────────────────

  /**
   * A QoS 1/2 message was queued for a connected subscriber: when its queue is over the
   * high-water mark (half of limits.maxQueuedMessages or maxQueuedBytes), the publisher is not
   * read again until the subscriber is down to the low-water mark (a quarter). So a burst is
   * slowed down by TCP instead of overflowing the queue after the publisher was told "accepted".
   * Never for a subscriber's own messages (it must stay readable to send its acks), and never
   * for a subscriber that has stalled (flowControl.stallMs with no progress, or one hold longer
   * than flowControl.maxHoldMs: a subscriber that acks just often enough must not freeze its
   * publishers, and everything else they send, at its pace).
   */
  private holdPublisher(session: Session, from: FlowSource): void {
    if (!this.mayHold(session, from)) return;
    if (session.queue.length < this.highWater && session.queuedBytes < this.highWaterBytes) return;
    let waiters = session.flowWaiters;
    if (waiters?.has(from) === true) return;
    // A publisher of this node whose hold budget is spent is not held by anyone: its messages
    // queue under the subscribers' limits. (One on another node: its own node keeps its budget.)
    if (from.remote !== true && !this.budgetLeft(from as Client)) return;
    if (waiters === null) {
      waiters = session.flowWaiters = new Set();
      session.lastProgressAt = session.flowHeldSince = this.clock.now;
      this.holding.add(session);
    }
    waiters.add(from);
    this.hold(from);
  }

  /** Holds a publisher; one of this node starts a held span when nothing held it. */
  private hold(from: FlowSource): void {
    if (from.remote !== true) {
      const conn = from as Client;
      if (conn.flowHolds === 0) {
        let budget = this.budgets.get(conn);
        if (budget === undefined) this.budgets.set(conn, (budget = { spans: [], since: 0 }));
        budget.since = this.clock.now;
      }
    }
    from.holdForFlow();
  }

  /** Releases a publisher; one of this node ends its held span when nothing holds it any more. */
  private release(from: FlowSource): void {
    from.releaseFlow();
    if (from.remote === true) return;
    const conn = from as Client;
    const budget = this.budgets.get(conn);
    if (conn.flowHolds !== 0 || budget === undefined || budget.since === 0) return;
    const now = this.clock.now;
    const spans = budget.spans;
    const last = spans.length - 1;
    // Spans close together are kept as one, and the oldest merged past a cap: the budget only
    // ever counts more held time than there was, never less.
    if (last > 0 && budget.since - (spans[last] as number) < this.budgetWindowMs / HOLD_SPAN_GRAIN) spans[last] = now;
    else spans.push(budget.since, now);
    budget.since = 0;
    if (spans.length > 2 * HOLD_SPAN_GRAIN) spans.splice(1, 2);
  }

  /** Time this node's publisher was held within the budget's window, up to now. */
  private heldWithin(budget: HoldBudget, now: number): number {
    const from = now - this.budgetWindowMs;
    const spans = budget.spans;
    let held = budget.since === 0 ? 0 : now - Math.max(budget.since, from);
    for (let i = 0; i < spans.length; i += 2) {
      const end = spans[i + 1] as number;
      if (end > from) held += end - Math.max(spans[i] as number, from);
    }
    return held;
  }

  /** Whether this node's publisher may be held now: held less than maxHoldMs within the window. */
  private budgetLeft(conn: Client): boolean {
    const budget = this.budgets.get(conn);
    return budget === undefined || this.heldWithin(budget, this.clock.now) < this.budgetMs;
  }

  /** Whether this subscriber may hold this publisher at all now (its queue aside). */
  private mayHold(session: Session, from: FlowSource): boolean {
    const conn = session.connection;
    return this.flowOn && conn !== null && conn !== from && !session.flowStalled && from.state === 'connected' && session.flowSlowUntil <= this.clock.now;
  }

  /** The subscriber caught up, left, or stalled: every publisher it held is read again. */
  private releasePublishers(session: Session): void {
    const waiters = session.flowWaiters;
    if (waiters === null) return;
    session.flowWaiters = null;
    this.holding.delete(session);
    for (const c of waiters) this.release(c);
  }

  /**
   * Called by the broker's sweep: a subscriber that made no progress for stallMs, or has held
   * its publishers for maxHoldMs without draining to its low-water mark, lets them go.
   */
  sweepFlow(now: number): void {
    for (const session of this.holding) {
      const stalled = now - session.lastProgressAt > this.stallMs;
      if (!stalled && now - session.flowHeldSince <= this.maxHoldMs) continue;
      session.flowStalled = true;
      // Too slow or stalled: no new hold for a while even once drained, so that draining in one
      // go after each hold (or each stall) cannot keep its publishers held most of the time.
      session.flowSlowUntil = now + SLOW_COOLDOWN_HOLDS * this.maxHoldMs;
      this.log.warn(
        { clientId: session.clientId, queued: session.queue.length, held: session.flowWaiters?.size ?? 0, ...(stalled ? { stallMs: this.stallMs } : { maxHoldMs: this.maxHoldMs }) },
        stalled ? 'subscriber stalled: publishers it held are read again; its queue limits apply' : 'subscriber too slow: it held its publishers for limits.flowControl.maxHoldMs; they are read again and its queue limits apply',
      );
      this.releasePublishers(session);
    }
    for (const [key, hold] of this.remoteHolds) {
      if (hold.conn.state === 'closed') this.remoteHolds.delete(key);
      else if (now - hold.since > this.maxHoldMs) {
        // The node that asked did not release it in time (it is slow, cut off or gone): the same
        // rule as for a subscriber here, and the same cooldown before it may hold it again.
        this.remoteHolds.delete(key);
        this.remoteCooldown.set(key, now + SLOW_COOLDOWN_HOLDS * this.maxHoldMs);
        this.remoteFlow.expired++;
        this.log.warn({ clientId: hold.conn.clientId, holder: key.slice(0, key.indexOf('\u0000')), maxHoldMs: this.maxHoldMs }, 'a subscriber on another node held this publisher for limits.flowControl.maxHoldMs: it is read again');
        this.release(hold.conn);
      }
    }
    for (const [key, until] of this.remoteCooldown) if (until <= now) this.remoteCooldown.delete(key);
    this.sweepBudgets(now);
  }

  /**
   * A publisher of this node held for its budget (HOLD_BUDGET maxHoldMs) in total within the
   * budget's window, by any number of subscribers here and on other nodes taking turns, is let go
   * by all of them at once, and nobody holds it again until its held time within the window is
   * under the budget.
   */
  private sweepBudgets(now: number): void {
    for (const [conn, budget] of this.budgets) {
      if (conn.state === 'closed') {
        this.budgets.delete(conn);
        continue;
      }
      if (budget.since === 0) {
        const spans = budget.spans;
        while (spans.length > 0 && (spans[1] as number) <= now - this.budgetWindowMs) spans.splice(0, 2);
        if (spans.length === 0) this.budgets.delete(conn);
        continue;
      }
      if (this.heldWithin(budget, now) < this.budgetMs) continue;
      let holders = 0;
      for (const session of this.holding) {
        const waiters = session.flowWaiters;
        if (waiters === null || !waiters.delete(conn)) continue;
        holders++;
        if (waiters.size === 0) {
          session.flowWaiters = null;
          this.holding.delete(session);
        }
        this.release(conn);
      }
      for (const [key, hold] of this.remoteHolds) {
        if (hold.conn !== conn) continue;
        holders++;
        this.remoteHolds.delete(key);
        this.remoteFlow.expired++;
        this.release(conn);
      }
      this.log.warn(
        { clientId: conn.clientId, holders, budgetMs: this.budgetMs, windowMs: this.budgetWindowMs },
        'publisher held for its hold budget (twice limits.flowControl.maxHoldMs within twelve): it is read again, and nobody holds it until the window has passed; subscribers\' queue limits apply',
      );
    }
  }

  /**
   * Cross-node flow control: a subscriber on node `holder` is behind on the messages of this
   * node's publisher (session `key`) and holds it (`hold`), or lets it go. The same rules as a
   * subscriber here: at most maxHoldMs at a time, then a cooldown. A hold for a publisher that is
   * not connected here is ignored. True when it held the publisher.
   */
  remoteHold(conn: Client | null, key: string, holder: string, hold: boolean): boolean {
    const id = `${holder}\u0000${key}`;
    let held = this.remoteHolds.get(id);
    if (held !== undefined && held.conn.state === 'closed') {
      this.remoteHolds.delete(id);
      held = undefined;
    }
    if (!hold) {
      if (held === undefined) return false;
      this.remoteHolds.delete(id);
      this.release(held.conn);
      return false;
    }
    if (held !== undefined || conn === null || conn.state !== 'connected' || !this.flowOn) return false;
    const until = this.remoteCooldown.get(id);
    if (until !== undefined && until > this.clock.now) return false;
    // The publisher's hold budget counts every holder, here and on every node: a node cannot
    // restart it by releasing and asking again.
    if (!this.budgetLeft(conn)) {
      this.remoteFlow.refused++;
      return false;
    }
    this.remoteHolds.set(id, { conn, since: this.clock.now });
    this.remoteFlow.applied++;
    this.hold(conn);
    return true;
  }

  /** A node is gone: every hold it asked of this node's publishers ends. */
  remoteHolderGone(holder: string): void {
    const prefix = `${holder}\u0000`;
    for (const [key, hold] of this.remoteHolds) {
      if (!key.startsWith(prefix)) continue;
      this.remoteHolds.delete(key);
      this.release(hold.conn);
    }
  }

  /** Publishers of this node held now by subscribers on other nodes. */
  get remoteHeld(): number {
    return this.remoteHolds.size;
  }

  /** Bytes queued beyond subscribers' limits because they were on the bus when their publisher's hold was sent (at most cluster.maxPendingBytes). */
  get inTransitBytes(): number {
    return this.transitBytes;
  }

  /** The queue is back within its limits (or gone): the in-transit allowance it held is the node's again. */
  private refundTransit(session: Session): void {
    this.transitBytes -= session.transitCharged;
    session.transitCharged = 0;
  }

  /** Counts a message a subscriber's full queue lost; logs (rate-limited) and audits QoS 1/2 refusals. */
  private queueLoss(session: Session, delivery: QueuedDelivery, refused: boolean): void {
    session.droppedMessages++;
    if (session.connection !== null && session.queueFullSince === 0) session.queueFullSince = this.clock.now;
    if (!refused) {
      this.stats.queueDroppedQos0++;
      this.drop('queue full: QoS 0 message dropped', session);
      return;
    }
    this.stats.queueRefusedQos12++;
    this.drop(`queue full: QoS ${delivery.qos} message refused for this subscriber`, session);
    session.refusalsUnaudited++;
    if (this.clock.now - session.refusalsAuditedAt < 1000) {
      // Recorded by the sweep within a second if no later refusal records it first.
      this.refusalsPending.add(session);
      return;
    }
    this.auditQueueRefusals(session, delivery.message.topic, delivery.qos);
  }

  /** Records the refusals that waited for their second (called by the broker's sweep). */
  sweepRefusals(now: number): void {
    for (const session of this.refusalsPending) if (now - session.refusalsAuditedAt >= 1000) this.auditQueueRefusals(session);
  }

  /** One `deliver` / `queue-full` record for the QoS 1/2 refusals of a session not yet recorded. */
  private auditQueueRefusals(session: Session, topic?: string, qos?: number): void {
    this.refusalsPending.delete(session);
    if (session.refusalsUnaudited === 0) return;
    session.refusalsAuditedAt = this.clock.now;
    const refusals = session.refusalsUnaudited;
    session.refusalsUnaudited = 0;
    this.gate.audit(session.connection, {
      event: 'deliver',
      action: 'queue-full',
      decision: 'deny',
      reasonCode: ReasonCode.QuotaExceeded,
      reason: 'subscriber queue full: QoS 1/2 message refused',
      clientId: session.clientId,
      ...(topic !== undefined ? { topic } : {}),
      ...(qos !== undefined ? { qos } : {}),
      detail: {
        refusedSinceLastRecord: refusals,
        droppedBySession: session.droppedMessages,
        queued: session.queue.length,
        queuedBytes: session.queuedBytes,
        // Across all the identity's sessions (limits.quotas.queuedBytes), which can fill before this session's own queue does.
        identityQueuedBytes: this.quotas.of(session.quotaKey).queuedBytes,
      },
    });
  }

  /**
   * A delivery an arriving copy of a session collected while the session moved here: queued in
   * the session that arrived, after what it brought (and stored with it when it is persistent).
   */
  enqueueMoved(session: Session, delivery: QueuedDelivery): void {
    const { share: _share, ...rest } = delivery;
    this.enqueue(session, rest, false);
  }

  /** The session moved to another node: publishers it held are read again; nothing it held is passed on (it goes with it). */
  sessionMoved(session: Session): void {
    this.releasePublishers(session);
    this.refundTransit(session);
    this.refusalsPending.delete(session);
  }

  /** A persistent session going offline keeps only QoS 1/2 (and QoS 0 when limits.queueQos0). */
  wentOffline(session: Session): void {
    this.releasePublishers(session);
    // Its queue waits for the client, within the identity's quota; the node's in-transit
    // allowance is for connected subscribers catching up, not for sessions that cannot drain.
    this.refundTransit(session);
    if (session.queue.length === 0 || this.config.limits.queueQos0) return;
    const kept = session.queue.filter((q) => q.qos > 0);
    const dropped = session.queue.length - kept.length;
    if (dropped === 0) return;
    session.droppedMessages += dropped;
    this.stats.queueDroppedQos0 += dropped;
    this.stats.messagesDropped += dropped;
    const before = session.queuedBytes;
    session.queue = kept;
    session.queuedBytes = 0;
    session.queuedQos0 = 0;
    for (const q of kept) session.queuedBytes += queuedSize(q.message);
    this.quotas.queued(session.quotaKey, session.queuedBytes - before);
  }

  /** A client whose queue stayed full with no delivery for limits.slowConsumerTimeoutMs: DISCONNECT 0x97. */
  checkSlowConsumer(conn: Client, session: Session, now: number): void {
    const slowConsumerMs = this.config.limits.slowConsumerTimeoutMs;
    if (slowConsumerMs === 0 || session.queueFullSince === 0 || now - session.queueFullSince <= slowConsumerMs) return;
    this.stats.slowConsumersDisconnected++;
    const detail = `slow consumer: queue full for ${now - session.queueFullSince} ms, ${session.droppedMessages} messages dropped`;
    this.log.warn({ clientId: conn.clientId, dropped: session.droppedMessages, queued: session.queue.length, queuedBytes: session.queuedBytes }, detail);
    session.queueFullSince = 0;
    this.gate.disconnectForSecurity(conn, ReasonCode.QuotaExceeded, 'slow-consumer', detail, false);
  }

  private drop(why: string, session?: Session): void {
    this.stats.messagesDropped++;
    const now = this.clock.now;
    if (now - this.dropWarnedAt > 5000) {
      this.dropWarnedAt = now;
      this.log.warn(
        { clientId: session?.clientId, droppedBySession: session?.droppedMessages, dropped: this.stats.messagesDropped, queueDroppedQos0: this.stats.queueDroppedQos0, queueRefusedQos12: this.stats.queueRefusedQos12 },
        `message dropped: ${why}`,
      );
    }
  }

  /** Sends queued messages while the client's in-flight window has room and its socket is not over the mark. */
  pump(session: Session): void {
    const conn = session.connection;
    let sent = 0;
    let stored = 0;
    let bytes = 0;
    let qos0 = 0;
    while (conn !== null && conn.state === 'connected' && !conn.writeBlocked && session.deciding === null && session.queue.length > sent) {
      const next = session.queue[sent] as QueuedDelivery;
      if (next.qos > 0 && session.inflight.size >= conn.sendWindow) break;
      const expired = next.message.expiresAt !== undefined && next.message.expiresAt <= this.clock.now;
      // A decision asked before it was queued (deliver) is used, not asked again.
      const allowed = expired ? null : (next.decision ?? this.gate.authorize(conn, 'deliver', next.message.topic, next.qos, next.retain, false, next.share?.name));
      if (allowed instanceof Promise) {
        // An asynchronous decision: the delivery stays first in the queue and in the store until it
        // comes back (decided), one at a time, so the in-flight window counts it and nothing is
        // lost when the client leaves meanwhile.
        this.takeFront(session, sent, bytes, stored, qos0);
        delete next.decision;
        session.deciding = next;
        allowed.then(
          (d) => this.decided(session, conn, next, d),
          () => this.decided(session, conn, next, DECISION_FAILED),
        );
        return;
      }
      sent++;
      bytes += queuedSize(next.message);
      if (next.qos > 0) stored++;
      else qos0++;
      if (allowed === null) {
        this.stats.messagesExpired++;
        continue;
      }
      if (allowed.kind !== 'allow' || !this.sendNow(session, conn, next.message, next.qos, next.retain, next.subscriptionIds, next.share)) this.passOn(session, next);
    }
    this.takeFront(session, sent, bytes, stored, qos0);
  }

  /**
   * An asynchronous deliver decision came back for `next`, first in the queue. Allowed and the
   * client still there: it is taken off the queue and sent. Denied: taken off (a shared group
   * tries another member). The client left, or another connection took the session over: it stays
   * first in the queue, and the next connection's pump decides again, for that connection.
   */
  private decided(session: Session, conn: Client, next: QueuedDelivery, d: AuthzResult): void {
    // The session ended or left this node meanwhile (sessions.ts clears `deciding`): nothing to act on.
    if (session.deciding !== next) return;
    session.deciding = null;
    // Still first in the queue (an overflow may have evicted a QoS 0 head, a client going offline
    // drops QoS 0): then it is settled here; else the pump goes on with what is first now.
    if (session.queue[0] === next) {
      const present = conn.state === 'connected' && session.connection === conn;
      const expired = next.message.expiresAt !== undefined && next.message.expiresAt <= this.clock.now;
      // Asked for a connection that is gone (offline, or replaced by a reconnect): whatever the
      // answer, it stays first, and the pump asks again for the connection there is now (the
      // answer was for another connection's principal; a denial, or a missed authzDeadlineMs,
      // must not withdraw a message the new one may read).
      if (present || expired) {
        this.takeFront(session, 1, queuedSize(next.message), next.qos > 0 ? 1 : 0, next.qos > 0 ? 0 : 1);
        if (expired) this.stats.messagesExpired++;
        // Too large for the client: counted as a drop where it was found (transmit, encodeFor).
        else if (d.kind === 'allow') this.sendNow(session, conn, next.message, next.qos, next.retain, next.subscriptionIds, next.share);
        // A denial is not passed on to another member of a shared group: with asynchronous answers
        // two members that may not read it would hand it back and forth for ever.
      }
    }
    this.pump(session);
  }

  /** Takes the first `sent` deliveries off the queue (they were sent, dropped or passed on): bytes, quotas, the store, flow control. */
  private takeFront(session: Session, sent: number, bytes: number, stored: number, qos0: number): void {
    if (sent > 0) {
      // One at a time is the usual case (a PUBACK frees one slot): shift() takes it from the front
      // without moving the rest of a long queue, which splice() does.
      if (sent === 1) session.queue.shift();
      else session.queue.splice(0, sent);
      session.queuedBytes -= bytes;
      this.quotas.queued(session.quotaKey, -bytes);
      session.queuedQos0 -= qos0;
      session.queueFullSince = 0;
      session.lastProgressAt = this.clock.now;
      this.store.dequeued(session, stored);
      if (session.transitCharged > 0 && session.queue.length <= this.config.limits.maxQueuedMessages && session.queuedBytes <= this.config.limits.maxQueuedBytes) this.refundTransit(session);
      if (session.queue.length <= this.lowWater && session.queuedBytes <= this.lowWaterBytes) {
        session.flowStalled = false;
        this.releasePublishers(session);
      }
    }
  }

  // ── in flight ──────────────────────────────────────────────────────────────

  completeInflight(session: Session, packetId: number): void {
    session.inflight.delete(packetId);
    session.queueFullSince = 0; // an acknowledgement is progress: not a stalled consumer
    session.lastProgressAt = this.clock.now;
    this.store.inflightDone(session, packetId);
    const conn = session.connection;
    if (conn !== null) {
      for (const inflight of session.inflight.values()) {
        if (inflight.resend === true) {
          this.resend(session, conn, inflight);
          return;
        }
      }
    }
    if (session.queue.length > 0) this.pump(session);
  }

  awaitComplete(session: Session, inflight: Inflight): void {
    inflight.state = 'pubrel';
    this.store.inflight(session, inflight);
  }

  /** After CONNACK: re-send unacknowledged messages with DUP, then the queue [MQTT-4.4.0-1]. */
  resumeDelivery(session: Session): void {
    const conn = session.connection;
    if (conn === null) return;
    // Re-send no more than the client's receive maximum allows now; the rest follow as acks arrive.
    let sent = 0;
    for (const inflight of session.inflight.values()) {
      if (sent >= conn.sendWindow) inflight.resend = true;
      else {
        sent++;
        this.resend(session, conn, inflight);
      }
    }
    this.pump(session);
  }

  /**
   * Re-sends one in-flight delivery with DUP. A PUBLISH passes the deliver check again first: the
   * policy may have changed while the client was away (a reload that removed its read access),
   * and a message it may no longer read is withdrawn, not re-sent (the denial is audited).
   */
  private resend(session: Session, conn: Client, inflight: Inflight): void {
    inflight.resend = false;
    if (inflight.state === 'pubrel') {
      conn.send({ cmd: 'pubrel', messageId: inflight.packetId });
      return;
    }
    const allowed = this.gate.authorize(conn, 'deliver', inflight.message.topic, inflight.qos, inflight.retain, false, inflight.share?.name);
    if (allowed instanceof Promise) {
      allowed.then((d) => {
        if (this.resendDecided(session, conn, inflight, d.kind === 'allow')) this.pump(session);
      });
    } else this.resendDecided(session, conn, inflight, allowed.kind === 'allow');
  }

  /** Sends the re-checked delivery, or withdraws it; true when it was withdrawn (its slot is free). */
  private resendDecided(session: Session, conn: Client, inflight: Inflight, allowed: boolean): boolean {
    if (conn.state !== 'connected' || session.inflight.get(inflight.packetId) !== inflight) return false;
    if (allowed && this.transmit(conn, inflight.message, inflight.qos, inflight.retain, inflight.subscriptionIds, inflight.packetId, true)) return false;
    session.inflight.delete(inflight.packetId);
    this.store.inflightDone(session, inflight.packetId);
    this.passOn(session, inflight);
    return true;
  }

  /**
   * A session ended (not a persistent one going offline): publishers it held are read again, and
   * what it held from shared groups, in flight and queued, goes to other members in the order it
   * was sent [MQTT 5.0 4.8.2]. A message the client already acknowledged with PUBREC is done.
   */
  sessionEnded(session: Session): void {
    this.releasePublishers(session);
    this.refundTransit(session);
    this.refusalsPending.delete(session);
    for (const inflight of session.inflight.values()) if (inflight.state === 'publish') this.passOn(session, inflight, true);
    for (const queued of session.queue) this.passOn(session, queued, true);
  }
}
