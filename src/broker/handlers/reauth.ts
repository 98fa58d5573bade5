/**
 * MQTT 5 enhanced authentication, single step: a client that sent an Authentication Method in
 * CONNECT may re-authenticate with AUTH 0x19 and fresh Authentication Data [MQTT-4.12.1]. The
 * listener's chain decides again; success swaps in the new Principal (new expiry, new claims)
 * and answers AUTH 0x00; failure disconnects with 0x87.
 */
import type { AuthPacket } from '../../protocol/codec.ts';
import { ReasonCode } from '../../protocol/reason-codes.ts';
import type { Connection } from '../connection.ts';
import type { BrokerApi } from '../handler-api.ts';

const methods = new WeakMap<Connection, string>();

/** Remembers the method a connection authenticated with in CONNECT (for AUTH re-authentication). */
export function rememberAuthMethod(conn: Connection, method: string): void {
  methods.set(conn, method);
}

export function authMethodOf(conn: Connection): string | undefined {
  return methods.get(conn);
}

export async function reauthenticate(broker: BrokerApi, conn: Connection, packet: AuthPacket): Promise<void> {
  const gate = broker.gate;
  const method = methods.get(conn);
  const before = conn.principal;
  if (method === undefined || before === null) return conn.disconnect(ReasonCode.ProtocolError, 'AUTH without an authentication method'); // [MQTT-4.12.0-1]
  if (packet.reasonCode !== ReasonCode.ReAuthenticate) {
    return conn.disconnect(ReasonCode.ProtocolError, 'AUTH from a client must be re-authenticate (0x19): no authentication exchange is in progress');
  }
  if (packet.properties?.authenticationMethod !== method) {
    return conn.disconnect(ReasonCode.ProtocolError, 'AUTH must name the authentication method of CONNECT'); // [MQTT-4.12.1-1]
  }
  const data = packet.properties.authenticationData;
  const result = await gate.decideAuthentication(conn.peer.listener, {
    clientId: conn.clientId,
    ...(before.username !== undefined ? { username: before.username } : {}),
    protocolVersion: conn.version,
    peer: conn.peer,
    authenticationMethod: method,
    ...(data !== undefined ? { authenticationData: data } : {}),
  });
  if (conn.state !== 'connected') return;
  const d = result.decision;
  let refusal: string | undefined;
  if (d.kind !== 'allow') refusal = d.kind === 'deny' ? d.detail : 'every provider abstained';
  else if (d.value.username !== before.username || d.value.provider !== before.provider) refusal = 'the new credentials are for another identity';
  const common = { action: 'reauthenticate', ...(result.decidedBy !== undefined ? { decidedBy: result.decidedBy } : {}), verdicts: result.verdicts };
  if (refusal !== undefined || d.kind !== 'allow') {
    // The identity is no longer proven: a security disconnect, and its will is discarded.
    const willDiscarded = conn.will !== null && !conn.discardWill;
    conn.discardWill = true;
    gate.audit(conn, { event: 'disconnect', decision: 'deny', reasonCode: ReasonCode.NotAuthorized, reason: `re-authentication failed: ${refusal}`, ...common, ...(willDiscarded ? { detail: { willDiscarded: true } } : {}) });
    return conn.disconnect(ReasonCode.NotAuthorized, 're-authentication failed');
  }
  const principal = { ...d.value, clientId: conn.clientId };
  conn.principal = principal;
  if (conn.session !== null && conn.session !== undefined) conn.session.principal = principal;
  gate.armCredentialExpiry(conn);
  gate.audit(conn, { event: 'connect', decision: 'allow', reasonCode: ReasonCode.Success, reason: 're-authenticated', ...common });
  conn.send({ cmd: 'auth', reasonCode: ReasonCode.Success, properties: { authenticationMethod: method } });
}
