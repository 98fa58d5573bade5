import type { AuthPacket } from '../../protocol/codec.ts';
import { ReasonCode } from '../../protocol/reason-codes.ts';
import type { Connection } from '../connection.ts';
import type { BrokerApi } from '../handler-api.ts';
import { authMethodOf, reauthenticate } from './reauth.ts';

/**
 * AUTH: only clients that authenticated with an Authentication Method in CONNECT may send it, to
 * re-authenticate (see reauth.ts); from any other client it is a protocol error [MQTT-4.12.0-1].
 */
export function handleAuth(broker: BrokerApi, conn: Connection, packet: AuthPacket): void | Promise<void> {
  if (authMethodOf(conn) !== undefined) return reauthenticate(broker, conn, packet);
  conn.disconnect(ReasonCode.ProtocolError, 'AUTH without an authentication method');
}
