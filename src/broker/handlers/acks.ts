/**
 * Acknowledgements. PUBACK / PUBREC / PUBCOMP free slots of our in-flight window towards the
 * client; PUBREL releases an inbound QoS 2 packet id.
 */
import type { PubackPacket, PubcompPacket, PubrecPacket, PubrelPacket } from '../../protocol/codec.ts';
import { ReasonCode } from '../../protocol/reason-codes.ts';
import type { Connection } from '../connection.ts';
import type { BrokerApi } from '../handler-api.ts';

export function handlePuback(broker: BrokerApi, conn: Connection, packet: PubackPacket): void {
  const session = conn.session;
  const id = packet.messageId ?? 0;
  const inflight = session?.inflight.get(id);
  if (session == null || inflight === undefined || inflight.qos !== 1) return;
  broker.delivery.completeInflight(session, id);
}

export function handlePubrec(broker: BrokerApi, conn: Connection, packet: PubrecPacket): void {
  const session = conn.session;
  const id = packet.messageId ?? 0;
  const inflight = session?.inflight.get(id);
  if (session == null || inflight === undefined || inflight.qos !== 2) {
    if (conn.v5) conn.send({ cmd: 'pubrel', messageId: id, reasonCode: ReasonCode.PacketIdentifierNotFound });
    return;
  }
  if ((packet.reasonCode ?? 0) >= 0x80) {
    // The client refused the message: the flow ends here [MQTT-4.3.3-4].
    broker.delivery.completeInflight(session, id);
    return;
  }
  broker.delivery.awaitComplete(session, inflight);
  conn.send({ cmd: 'pubrel', messageId: id });
}

export function handlePubcomp(broker: BrokerApi, conn: Connection, packet: PubcompPacket): void {
  const session = conn.session;
  const id = packet.messageId ?? 0;
  const inflight = session?.inflight.get(id);
  if (session == null || inflight === undefined || inflight.state !== 'pubrel') return;
  broker.delivery.completeInflight(session, id);
}

export function handlePubrel(broker: BrokerApi, conn: Connection, packet: PubrelPacket): void {
  const session = conn.session;
  if (session === null) return;
  const id = packet.messageId ?? 0;
  if (!broker.sessions.release(session, id)) {
    conn.send(conn.v5 ? { cmd: 'pubcomp', messageId: id, reasonCode: ReasonCode.PacketIdentifierNotFound } : { cmd: 'pubcomp', messageId: id });
    return;
  }
  conn.send({ cmd: 'pubcomp', messageId: id });
}
