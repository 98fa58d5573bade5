/**
 * PUBLISH from a client: validate, resolve the topic alias, authorize, route, acknowledge.
 * QoS 2 uses method A: the message is routed on PUBLISH and its packet id held until PUBREL,
 * so a re-sent PUBLISH with the same id is not routed twice [MQTT-4.3.3-10].
 */
import type { PublishPacket } from '../../protocol/codec.ts';
import { countUserProperties } from '../../protocol/codec.ts';
import { ReasonCode } from '../../protocol/reason-codes.ts';
import { checkTopicName } from '../../protocol/topic.ts';
import type { AuthzResult } from '../../authz/types.ts';
import type { Connection } from '../connection.ts';
import type { BrokerApi } from '../handler-api.ts';
import type { Message } from '../message.ts';
import { countReceived } from '../stats.ts';

export function handlePublish(broker: BrokerApi, conn: Connection, packet: PublishPacket): void | Promise<void> {
  const limits = broker.config.limits;
  const session = conn.session;
  if (session === null) return;
  let topic = packet.topic;
  const properties = packet.properties;

  if (conn.v5 && properties !== undefined) {
    const alias = properties.topicAlias;
    if (alias !== undefined) {
      if (alias === 0 || alias > limits.topicAliasMaximum) {
        return conn.disconnect(ReasonCode.TopicAliasInvalid, `topic alias ${alias} is outside 1..limits.topicAliasMaximum (${limits.topicAliasMaximum}), the maximum CONNACK announced`); // [MQTT-3.3.2-8..9]
      }
      conn.inboundAliases ??= new Map();
      if (topic.length > 0) conn.inboundAliases.set(alias, topic);
      else {
        const known = conn.inboundAliases.get(alias);
        if (known === undefined) return conn.disconnect(ReasonCode.ProtocolError, `topic alias ${alias} is not set`);
        topic = known;
      }
    }
    if (countUserProperties(properties) > limits.maxUserProperties) {
      return conn.disconnect(ReasonCode.ImplementationSpecificError, `more than limits.maxUserProperties (${limits.maxUserProperties}) user properties; raise it to admit more`);
    }
    const responseTopic = properties.responseTopic;
    if (responseTopic !== undefined) {
      const rt = checkTopicName(responseTopic, limits);
      if (!rt.ok) return conn.disconnect(ReasonCode.ProtocolError, `Response Topic: ${rt.detail}`); // [MQTT-3.3.2-14]
    }
  }
  if (topic.length === 0) return conn.disconnect(ReasonCode.ProtocolError, 'PUBLISH with an empty topic and no topic alias');
  const check = checkTopicName(topic, limits);
  if (!check.ok) return conn.disconnect(ReasonCode.TopicNameInvalid, check.detail); // [MQTT-3.3.2-2]

  const qos = packet.qos;
  const packetId = packet.messageId ?? 0;
  if (qos === 2) {
    if (session.awaitingRelease.has(packetId)) {
      // A re-sent QoS 2 PUBLISH: already routed, acknowledge again.
      conn.send({ cmd: 'pubrec', messageId: packetId });
      return;
    }
    if (session.awaitingRelease.size >= limits.receiveMaximum) {
      return conn.disconnect(ReasonCode.ReceiveMaximumExceeded, `more than limits.receiveMaximum (${limits.receiveMaximum}) QoS 2 messages unacknowledged, the Receive Maximum CONNACK announced`); // [MQTT-3.3.4-9]
    }
  }
  const limiter = broker.rateLimiter;
  if (limiter !== null && !limiter.admit(conn, qos, packetId, packet.payload.length + topic.length, Date.now())) return;

  const payload = typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload;
  const message: Message = { topic, payload, qos, retain: packet.retain, origin: session.key, quotaKey: session.quotaKey };
  if (conn.v5 && properties !== undefined) {
    const { topicAlias: _a, subscriptionIdentifier: _s, messageExpiryInterval, ...pass } = properties;
    if (messageExpiryInterval !== undefined) {
      message.expiresAt = broker.clock.now + messageExpiryInterval * 1000;
      (pass as Record<string, unknown>).messageExpiryInterval = messageExpiryInterval;
    }
    if (Object.keys(pass).length > 0) message.properties = pass;
  }

  const decision = broker.gate.authorize(conn, 'publish', topic, qos, packet.retain);
  if (decision instanceof Promise) return decision.then((d) => finish(broker, conn, message, packetId, d));
  finish(broker, conn, message, packetId, decision);
}

function finish(broker: BrokerApi, conn: Connection, message: Message, packetId: number, decision: AuthzResult): void {
  const session = conn.session;
  if (session === null || conn.state !== 'connected') return;
  broker.stats.messagesReceived++;
  countReceived(broker.stats, message);
  // What routing writes to the store (queues of persistent sessions, in-flight, retained, the
  // QoS 2 packet id) is committed before the PUBACK / PUBREC that promises it is sent.
  if (message.qos > 0) broker.sessions.trackWrites();
  let reason: number = ReasonCode.Success;
  if (decision.kind === 'allow' && message.retain && !broker.delivery.retainFits(message, session.quotaKey)) {
    // Over the identity's retained quota or the broker's retained limits: not published at all.
    broker.gate.refuse(conn, { event: 'publish', action: 'quota', decision: 'deny', reasonCode: ReasonCode.QuotaExceeded, reason: 'retained messages over quota (limits.quotas.retainedMessages / retainedBytes, limits.maxRetainedMessages / maxRetainedBytes)', topic: message.topic, qos: message.qos, retain: true });
    reason = conn.v5 ? ReasonCode.QuotaExceeded : ReasonCode.Success;
  } else if (decision.kind === 'allow') {
    const matched = broker.delivery.route(message, conn);
    if (matched === 0 && conn.v5) reason = ReasonCode.NoMatchingSubscribers;
  } else {
    // v5 learns why; a v3.1.1 publisher is acknowledged as usual and the message dropped.
    reason = conn.v5 ? (decision.kind === 'deny' ? decision.reason : ReasonCode.NotAuthorized) : ReasonCode.Success;
  }
  if (message.qos === 0) return;
  if (message.qos === 2 && reason < 0x80) broker.sessions.holdForRelease(session, packetId);
  const written = broker.sessions.writesDone();
  const cmd = message.qos === 1 ? 'puback' : 'pubrec';
  conn.sendWhenWritten(written, (status) => {
    if (status !== 'ok') {
      // Not durable, so not acknowledged: v5 is told why; v3 has no way to say it, so the
      // connection is closed and the client sends the message again.
      if (message.qos === 2) broker.sessions.release(session, packetId);
      if (!conn.v5) {
        conn.disconnect(ReasonCode.UnspecifiedError, 'the message could not be stored');
        return null;
      }
      return { cmd, messageId: packetId, reasonCode: status === 'full' ? ReasonCode.QuotaExceeded : ReasonCode.UnspecifiedError };
    }
    return reason === ReasonCode.Success ? { cmd, messageId: packetId } : { cmd, messageId: packetId, reasonCode: reason };
  });
}
