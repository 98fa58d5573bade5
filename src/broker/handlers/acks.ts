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
  // PUBREL only once the store knows the message was received: after a restart it is not sent again.
  broker.sessions.trackWrites();
  broker.delivery.awaitComplete(session, inflight);
  conn.sendWhenWritten(broker.sessions.writesDone(), () => ({ cmd: 'pubrel', messageId: id }));
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
  broker.sessions.trackWrites();
  const released = broker.sessions.release(session, id);
  const written = broker.sessions.writesDone();
  if (!released) {
    conn.sendWhenWritten(null, () => (conn.v5 ? { cmd: 'pubcomp', messageId: id, reasonCode: ReasonCode.PacketIdentifierNotFound } : { cmd: 'pubcomp', messageId: id }));
    return;
  }
  // PUBCOMP once the id is free in the store too: a restart must not take a new message with the
  // same id for a duplicate [MQTT-4.3.3-10].
  conn.sendWhenWritten(written, () => ({ cmd: 'pubcomp', messageId: id }));
}
