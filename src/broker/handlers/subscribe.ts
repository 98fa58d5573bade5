/**
 * SUBSCRIBE: each filter is validated and authorized on its own and gets its own reason code
 * (v5 0x8F / 0x87 / 0x97, v3 0x80). Retained messages follow the SUBACK, honouring retain
 * handling, and each passes the deliver check.
 */
import type { SubscribePacket } from '../../protocol/codec.ts';
import { countUserProperties } from '../../protocol/codec.ts';
import { ReasonCode, toV3SubackCode } from '../../protocol/reason-codes.ts';
import { checkTopicFilter, parseShared, type TopicCheck } from '../../protocol/topic.ts';
import type { StoredSubscription } from '../../store/types.ts';
import type { Connection } from '../connection.ts';
import type { BrokerApi } from '../handler-api.ts';
import type { WriteStatus } from '../persistence.ts';

export async function handleSubscribe(broker: BrokerApi, conn: Connection, packet: SubscribePacket): Promise<void> {
  const gate = broker.gate;
  const limits = broker.config.limits;
  const session = conn.session;
  if (session === null) return;
  if (packet.subscriptions.length === 0) {
    return conn.disconnect(ReasonCode.ProtocolError, 'SUBSCRIBE with no topic filters'); // [MQTT-3.8.3-3]
  }
  const subscriptionId = packet.properties?.subscriptionIdentifier;
  if (subscriptionId === 0) return conn.disconnect(ReasonCode.ProtocolError, 'subscription identifier 0');
  if (countUserProperties(packet.properties) > limits.maxUserProperties) {
    return conn.disconnect(ReasonCode.ImplementationSpecificError, `more than limits.maxUserProperties (${limits.maxUserProperties}) user properties; raise it to admit more`);
  }

  // A protocol error anywhere refuses the whole packet before any filter is applied.
  for (const request of packet.subscriptions) {
    const shared = parseShared(request.topic);
    if (shared !== null && !('error' in shared) && request.nl === true) {
      return conn.disconnect(ReasonCode.ProtocolError, 'no-local on a shared subscription'); // [MQTT-3.8.3-4]
    }
  }
  const codes: number[] = [];
  /** Refusals a setting caused (quota, topic limits): logged once per SUBSCRIBE, naming the setting. */
  const bySetting = new Set<string>();
  const granted: { sub: StoredSubscription; existed: boolean; shared: boolean; index: number; written: Promise<WriteStatus> | null; refused?: boolean }[] = [];
  for (const request of packet.subscriptions) {
    const filter = request.topic;
    const shared = parseShared(filter);
    if (shared !== null && 'error' in shared) {
      gate.refuse(conn, { event: 'subscribe', decision: 'deny', reasonCode: ReasonCode.TopicFilterInvalid, reason: shared.error, topic: filter, qos: request.qos });
      codes.push(ReasonCode.TopicFilterInvalid);
      continue;
    }
    const inner = shared === null ? filter : shared.filter;
    // The whole filter counts, a share's `$share/{group}/` included, and the group has its own small limit.
    const check = shared === null ? checkTopicFilter(inner, limits) : checkSharedFilter(filter, shared.group, inner, limits);
    if (!check.ok) {
      gate.refuse(conn, { event: 'subscribe', decision: 'deny', reasonCode: ReasonCode.TopicFilterInvalid, reason: check.detail, topic: filter, qos: request.qos });
      codes.push(ReasonCode.TopicFilterInvalid);
      if (check.detail.includes('limits.')) bySetting.add(`0x8F: ${check.detail}`);
      continue;
    }
    const existed = session.subscriptions.has(filter);
    if (!existed && session.subscriptions.size >= limits.maxSubscriptionsPerClient) {
      gate.refuse(conn, { event: 'subscribe', decision: 'deny', reasonCode: ReasonCode.QuotaExceeded, reason: 'too many subscriptions (limits.maxSubscriptionsPerClient)', topic: filter, qos: request.qos });
      codes.push(ReasonCode.QuotaExceeded);
      bySetting.add(`0x97: the session holds limits.maxSubscriptionsPerClient (${limits.maxSubscriptionsPerClient}) subscriptions`);
      continue;
    }
    if (!existed && !broker.sessions.subscriptionFits(session)) {
      gate.refuse(conn, { event: 'subscribe', decision: 'deny', action: 'quota', reasonCode: ReasonCode.QuotaExceeded, reason: 'too many subscriptions for this identity (limits.quotas.subscriptions)', topic: filter, qos: request.qos });
      codes.push(ReasonCode.QuotaExceeded);
      bySetting.add(`0x97: the identity holds limits.quotas.subscriptions (${limits.quotas.subscriptions}) subscriptions across its sessions`);
      continue;
    }
    const decision = await gate.authorize(conn, 'subscribe', filter, request.qos, false);
    if (decision.kind !== 'allow') {
      codes.push(decision.kind === 'deny' ? decision.reason : ReasonCode.NotAuthorized);
      continue;
    }
    if (conn.state !== 'connected') return;
    const sub: StoredSubscription = {
      filter,
      qos: request.qos,
      noLocal: request.nl === true,
      retainAsPublished: request.rap === true,
      retainHandling: (request.rh ?? 0) as 0 | 1 | 2,
      ...(subscriptionId !== undefined ? { subscriptionId } : {}),
    };
    broker.sessions.trackWrites();
    broker.sessions.addSubscription(session, sub);
    granted.push({ sub, existed, shared: shared !== null, index: codes.length, written: broker.sessions.writesDone() });
    codes.push(request.qos);
  }
  // SUBACK only once the subscriptions it grants are in the store; one that could not be stored
  // is taken back and refused (v5 0x97 when the disk is full, else 0x80).
  for (const g of granted) {
    const status = g.written === null ? 'ok' : await g.written;
    if (status === 'ok') continue;
    if (!g.existed) broker.sessions.removeSubscription(session, g.sub.filter);
    codes[g.index] = status === 'full' ? ReasonCode.QuotaExceeded : ReasonCode.UnspecifiedError;
    g.refused = true;
  }
  if (conn.state !== 'connected') return;
  if (bySetting.size > 0) {
    // One line per SUBSCRIBE, not per filter: each refused filter already has its audit record.
    broker.log.info({ clientId: conn.clientId, listener: conn.peer.listener }, `subscription refused by a limit (raise it to admit more): ${[...bySetting].join('; ')}`);
  }
  conn.send({
    cmd: 'suback',
    messageId: packet.messageId ?? 0,
    granted: conn.v5 ? codes : codes.map(toV3SubackCode),
  });
  for (const { sub, existed, shared, refused } of granted) {
    // Retained messages are not sent for shared subscriptions; rh=1 only for a new one; rh=2 never.
    if (refused === true || shared || sub.retainHandling === 2 || (sub.retainHandling === 1 && existed)) continue;
    broker.delivery.sendRetained(session, sub);
  }
}

function checkSharedFilter(whole: string, group: string, inner: string, limits: { maxTopicLength: number; maxTopicLevels: number; maxShareNameLength: number }): TopicCheck {
  if (Buffer.byteLength(whole) > limits.maxTopicLength) return { ok: false, detail: `shared subscription longer than limits.maxTopicLength (${limits.maxTopicLength} bytes)` };
  if (Buffer.byteLength(group) > limits.maxShareNameLength) return { ok: false, detail: `share name longer than limits.maxShareNameLength (${limits.maxShareNameLength} bytes)` };
  return checkTopicFilter(inner, limits);
}
