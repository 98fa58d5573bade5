/**
 * The one switch: every packet a client sends goes through here to its handler.
 */
import type { Packet } from '../protocol/codec.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';
import type { Connection } from './connection.ts';
import type { BrokerApi } from './handler-api.ts';
import { handleAuth } from './handlers/auth.ts';
import { handleConnect } from './handlers/connect.ts';
import { handleDisconnect } from './handlers/disconnect.ts';
import { handlePuback, handlePubcomp, handlePubrec, handlePubrel } from './handlers/acks.ts';
import { handlePingreq } from './handlers/ping.ts';
import { handlePublish } from './handlers/publish.ts';
import { handleSubscribe } from './handlers/subscribe.ts';
import { handleUnsubscribe } from './handlers/unsubscribe.ts';

function needsPacketId(packet: Packet): boolean {
  return packet.cmd === 'subscribe' || packet.cmd === 'unsubscribe' || (packet.cmd === 'publish' && packet.qos > 0);
}

export function dispatch(broker: BrokerApi, conn: Connection, packet: Packet): void | Promise<void> {
  if (conn.state === 'new') {
    if (packet.cmd !== 'connect') return conn.disconnect(ReasonCode.ProtocolError, 'the first packet must be CONNECT'); // [MQTT-3.1.0-1]
    return handleConnect(broker, conn, packet);
  }
  if (conn.state !== 'connected') return;
  if (packet.messageId === 0 && needsPacketId(packet)) {
    return conn.disconnect(ReasonCode.ProtocolError, `${packet.cmd.toUpperCase()} with packet identifier 0`); // [MQTT-2.3.1-1]
  }
  switch (packet.cmd) {
    case 'publish':
      return handlePublish(broker, conn, packet);
    case 'puback':
      return handlePuback(broker, conn, packet);
    case 'pubrec':
      return handlePubrec(broker, conn, packet);
    case 'pubrel':
      return handlePubrel(broker, conn, packet);
    case 'pubcomp':
      return handlePubcomp(broker, conn, packet);
    case 'subscribe':
      return handleSubscribe(broker, conn, packet);
    case 'unsubscribe':
      return handleUnsubscribe(broker, conn, packet);
    case 'pingreq':
      return handlePingreq(conn);
    case 'disconnect':
      return handleDisconnect(broker, conn, packet);
    case 'auth':
      return handleAuth(broker, conn, packet);
    case 'connect':
      return conn.disconnect(ReasonCode.ProtocolError, 'a second CONNECT is a protocol error'); // [MQTT-3.1.0-2]
    case 'connack':
    case 'suback':
    case 'unsuback':
    case 'pingresp':
      return conn.disconnect(ReasonCode.ProtocolError, `${packet.cmd.toUpperCase()} is sent only by a server`);
  }
}
