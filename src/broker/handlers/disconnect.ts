import type { DisconnectPacket } from '../../protocol/codec.ts';
import { ReasonCode } from '../../protocol/reason-codes.ts';
import type { Connection } from '../connection.ts';
import type { BrokerApi } from '../handler-api.ts';

/**
 * DISCONNECT from the client. 0x00 discards the will [MQTT-3.14.4-3]; 0x04 keeps it. A v5
 * client may change the session expiry, but not from 0 to non-zero [MQTT-3.14.2-2].
 */
export function handleDisconnect(broker: BrokerApi, conn: Connection, packet: DisconnectPacket): void {
  const code = packet.reasonCode ?? ReasonCode.Success;
  const expiry = packet.properties?.sessionExpiryInterval;
  const session = conn.session;
  if (expiry !== undefined && session !== null) {
    if (session.expiryInterval === 0 && expiry !== 0) {
      conn.discardWill = false;
      return conn.disconnect(ReasonCode.ProtocolError, 'session expiry cannot be set on DISCONNECT when it was 0 at CONNECT');
    }
    session.expiryInterval = Math.min(expiry, broker.config.limits.maxSessionExpiry);
  }
  // Only a normal disconnect (0x00) deletes the will; 0x04 and error codes keep it.
  conn.discardWill = code === ReasonCode.Success;
  conn.close({ code, detail: code === ReasonCode.Success ? 'client disconnected' : `client disconnected with reason 0x${code.toString(16)}` });
  conn.endAfterDisconnect();
}
