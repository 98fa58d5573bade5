import { countUserProperties, type UnsubscribePacket } from '../../protocol/codec.ts';
import { ReasonCode } from '../../protocol/reason-codes.ts';
import type { Connection } from '../connection.ts';
import type { BrokerApi } from '../handler-api.ts';

/** UNSUBSCRIBE: each filter is authorized, then removed; v5 reports 0x11 for a filter that had no subscription. */
export async function handleUnsubscribe(broker: BrokerApi, conn: Connection, packet: UnsubscribePacket): Promise<void> {
  const session = conn.session;
  if (session === null) return;
  if (packet.unsubscriptions.length === 0) return conn.disconnect(ReasonCode.ProtocolError, 'UNSUBSCRIBE with no topic filters');
  const max = broker.config.limits.maxUserProperties;
  if (countUserProperties(packet.properties) > max) return conn.disconnect(ReasonCode.ImplementationSpecificError, `more than limits.maxUserProperties (${max}) user properties; raise it to admit more`);
  const codes: number[] = [];
  const written: Promise<unknown>[] = [];
  for (const filter of packet.unsubscriptions) {
    const decision = await broker.gate.authorize(conn, 'unsubscribe', filter, 0, false);
    if (decision.kind !== 'allow') {
      codes.push(decision.kind === 'deny' ? decision.reason : ReasonCode.NotAuthorized);
      continue;
    }
    broker.sessions.trackWrites();
    codes.push(broker.sessions.removeSubscription(session, filter) ? ReasonCode.Success : ReasonCode.NoSubscriptionExisted);
    const w = broker.sessions.writesDone();
    if (w !== null) written.push(w);
  }
  // UNSUBACK once the store no longer holds them (a failed delete is rewritten with the session).
  if (written.length > 0) await Promise.all(written);
  if (conn.state !== 'connected') return;
  conn.send(
    conn.v5
      ? { cmd: 'unsuback', messageId: packet.messageId ?? 0, granted: codes }
      : ({ cmd: 'unsuback', messageId: packet.messageId ?? 0 } as never),
  );
}
