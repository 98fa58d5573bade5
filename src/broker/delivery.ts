/**
 * Delivery: route a message to the matching subscriptions, authorize each delivery, send it
 * within the client's in-flight window, queue what cannot go now, and send the queue as acks
 * arrive. Retained messages are kept here. This is the one place a message leaves for a
 * subscriber, so it is where a cross-node bus hooks in.
 */
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import type { QoS } from '../protocol/codec.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';
import type { StoredSubscription } from '../store/types.ts';
import { encodePublish, withPacketId } from './encode.ts';
import type { DeliveryApi, GateApi } from './handler-api.ts';
import type { Message } from './message.ts';
import type { Client } from './ports.ts';
import { RetainedMessages } from './retained.ts';
import type { Router } from './router.ts';
import { queuedSize, type Inflight, type QueuedDelivery, type Session } from './session.ts';
import type { BrokerStats, CoarseClock } from './stats.ts';

/** What delivery keeps in the store (SessionRegistry writes it). */
export interface DeliveryStore {
  retained(message: Message): void;
  queued(session: Session, delivery: QueuedDelivery): void;
  dequeued(session: Session, count: number): void;
  inflight(session: Session, inflight: Inflight): void;
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
}

export class Delivery implements DeliveryApi {
  readonly retained = new RetainedMessages();
  private readonly config: Config;
  private readonly log: Logger;
  private readonly stats: BrokerStats;
  private readonly clock: CoarseClock;
  private readonly router: Router;
  private readonly gate: DeliveryParts['gate'];
  private readonly store: DeliveryStore;
  /** Sessions with QoS 1/2 queue refusals not yet in the audit log; the sweep records them. */
  private readonly refusalsPending = new Set<Session>();
  private dropWarnedAt = 0;

  constructor(parts: DeliveryParts) {
    this.config = parts.config;
    this.log = parts.log;
    this.stats = parts.stats;
    this.clock = parts.clock;
    this.router = parts.router;
    this.gate = parts.gate;
    this.store = parts.store;
  }

  // ── routing ────────────────────────────────────────────────────────────────

  route(message: Message): number {
    if (message.retain) {
      this.retained.set(message);
      this.store.retained(message);
    }
    const router = this.router;
    router.match(message.topic, message.origin);
    const matched = router.matched;
    const shared = router.sharedMatched;
    const n = matched.length;
    const total = n + shared.length;
    if (total === 0) return 0;
    // The router's arrays are reused by the next match; delivery can route (wills), so copy when needed.
    const sessions = n > 0 ? matched.slice() : matched;
    const picks = shared.length > 0 ? shared.slice() : shared;
    for (let i = 0; i < n; i++) {
      const session = sessions[i] as Session;
      const qos = (session.matchQos < message.qos ? session.matchQos : message.qos) as QoS;
      this.deliver(session, message, qos, session.matchRetainAsPublished ? message.retain : false, session.matchSubscriptionIds);
    }
    for (const { session, sub } of picks) {
      const qos = (sub.qos < message.qos ? sub.qos : message.qos) as QoS;
      this.deliver(session, message, qos, sub.retainAsPublished ? message.retain : false, sub.subscriptionId === undefined ? undefined : [sub.subscriptionId]);
    }
    return total;
  }

  /** Sends the retained messages matching a new subscription, each with the retain flag set [MQTT-3.3.1-9]. */
  sendRetained(session: Session, sub: StoredSubscription): void {
    this.retained.match(sub.filter, (message) => {
      const qos = (sub.qos < message.qos ? sub.qos : message.qos) as QoS;
      this.deliver(session, message, qos, true, sub.subscriptionId === undefined ? undefined : [sub.subscriptionId]);
    });
  }

  // ── delivery ───────────────────────────────────────────────────────────────

  deliver(session: Session, message: Message, qos: QoS, retain: boolean, subscriptionIds: number[] | undefined): void {
    if (message.expiresAt !== undefined && message.expiresAt <= this.clock.now) {
      this.stats.messagesExpired++;
      return;
    }
    const conn = session.connection;
    // A socket over limits.maxSocketBufferBytes is not written to: its deliveries queue (backpressure).
    if (conn !== null && conn.state === 'connected' && !conn.writeBlocked && (qos === 0 ? session.queuedQos0 === 0 : session.queue.length === 0 && session.inflight.size < conn.sendWindow)) {
      const allowed = this.gate.authorize(conn, 'deliver', message.topic, qos, retain);
      if (allowed instanceof Promise) {
        allowed.then((d) => d.kind === 'allow' && this.sendNow(session, conn, message, qos, retain, subscriptionIds));
      } else if (allowed.kind === 'allow') {
        this.sendNow(session, conn, message, qos, retain, subscriptionIds);
      }
      return;
    }
    if (conn === null) {
      if (!session.persistent) return;
      if (qos === 0 && !this.config.limits.queueQos0) return; // QoS 0 is not kept for offline sessions unless configured
    }
    this.enqueue(session, { message, qos, retain, subscriptionIds });
  }

  private sendNow(session: Session, conn: Client, message: Message, qos: QoS, retain: boolean, subscriptionIds: number[] | undefined): void {
    if (conn.state !== 'connected') return;
    if (qos === 0) {
      this.transmit(conn, message, 0, retain, subscriptionIds, 0, false);
      return;
    }
    const inflight: Inflight = { message, qos, retain, subscriptionIds, packetId: session.allocatePacketId(), state: 'publish' };
    if (!this.transmit(conn, message, qos, retain, subscriptionIds, inflight.packetId, false)) return;
    session.inflightForWrite().set(inflight.packetId, inflight);
    this.store.inflight(session, inflight);
  }

  /** Encodes and writes a PUBLISH. Returns false when the client's maximum packet size forbids it [MQTT-3.1.2-24]. */
  private transmit(conn: Client, message: Message, qos: QoS, retain: boolean, subscriptionIds: number[] | undefined, packetId: number, dup: boolean): boolean {
    const template = encodePublish(conn, message, qos, retain, subscriptionIds, this.clock.now);
    if (template.length > conn.clientMaxPacketSize) {
      this.drop('larger than the client maximum packet size');
      return false;
    }
    conn.write(qos === 0 ? template : withPacketId(template, packetId, dup));
    this.stats.messagesSent++;
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
  private enqueue(session: Session, delivery: QueuedDelivery): void {
    const limits = this.config.limits;
    const queue = session.queue;
    const size = queuedSize(delivery.message);
    const maxBytes = limits.maxQueuedBytes;
    const max = limits.maxQueuedMessages;
    if (queue.length >= max || (queue.length > 0 && session.queuedBytes + size > maxBytes)) {
      if (delivery.qos === 0) return this.queueLoss(session, delivery, false);
      let i = 0;
      while (session.queuedQos0 > 0 && (queue.length >= max || session.queuedBytes + size > maxBytes)) {
        while ((queue[i] as QueuedDelivery).qos !== 0) i++;
        const [evicted] = queue.splice(i, 1) as [QueuedDelivery];
        session.queuedBytes -= queuedSize(evicted.message);
        session.queuedQos0--;
        this.queueLoss(session, evicted, false);
      }
      if (queue.length >= max || (queue.length > 0 && session.queuedBytes + size > maxBytes)) return this.queueLoss(session, delivery, true);
    }
    queue.push(delivery);
    session.queuedBytes += size;
    if (delivery.qos === 0) session.queuedQos0++;
    this.store.queued(session, delivery);
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
      detail: { refusedSinceLastRecord: refusals, droppedBySession: session.droppedMessages, queued: session.queue.length, queuedBytes: session.queuedBytes },
    });
  }

  /** A persistent session going offline keeps only QoS 1/2 (and QoS 0 when limits.queueQos0). */
  wentOffline(session: Session): void {
    if (session.queue.length === 0 || this.config.limits.queueQos0) return;
    const kept = session.queue.filter((q) => q.qos > 0);
    const dropped = session.queue.length - kept.length;
    if (dropped === 0) return;
    session.droppedMessages += dropped;
    this.stats.queueDroppedQos0 += dropped;
    this.stats.messagesDropped += dropped;
    session.queue = kept;
    session.queuedBytes = 0;
    session.queuedQos0 = 0;
    for (const q of kept) session.queuedBytes += queuedSize(q.message);
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
    while (conn !== null && conn.state === 'connected' && !conn.writeBlocked && session.queue.length > sent) {
      const next = session.queue[sent] as QueuedDelivery;
      if (next.qos > 0 && session.inflight.size >= conn.sendWindow) break;
      sent++;
      bytes += queuedSize(next.message);
      if (next.qos > 0) stored++;
      else qos0++;
      if (next.message.expiresAt !== undefined && next.message.expiresAt <= this.clock.now) {
        this.stats.messagesExpired++;
        continue;
      }
      const allowed = this.gate.authorize(conn, 'deliver', next.message.topic, next.qos, next.retain);
      if (allowed instanceof Promise) {
        allowed.then((d) => d.kind === 'allow' && this.sendNow(session, conn, next.message, next.qos, next.retain, next.subscriptionIds));
      } else if (allowed.kind === 'allow') {
        this.sendNow(session, conn, next.message, next.qos, next.retain, next.subscriptionIds);
      }
    }
    if (sent > 0) {
      session.queue.splice(0, sent);
      session.queuedBytes -= bytes;
      session.queuedQos0 -= qos0;
      session.queueFullSince = 0;
      this.store.dequeued(session, stored);
    }
  }

  // ── in flight ──────────────────────────────────────────────────────────────

  completeInflight(session: Session, packetId: number): void {
    session.inflight.delete(packetId);
    session.queueFullSince = 0; // an acknowledgement is progress: not a stalled consumer
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
    const allowed = this.gate.authorize(conn, 'deliver', inflight.message.topic, inflight.qos, inflight.retain);
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
    return true;
  }
}
