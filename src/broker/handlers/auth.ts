import type { AuthPacket } from '../../protocol/codec.ts';
import { ReasonCode } from '../../protocol/reason-codes.ts';
import type { Connection } from '../connection.ts';

/**
 * AUTH: enhanced authentication is not offered yet, so no client negotiated an authentication
 * method, and an AUTH packet is a protocol error [MQTT-4.12.0-1].
 */
export function handleAuth(conn: Connection, _packet: AuthPacket): void {
  conn.disconnect(ReasonCode.ProtocolError, 'AUTH without an authentication method');
}
