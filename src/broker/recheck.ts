/**
 * After a policy reload: every session's subscriptions are asked about again, and those that
 * lost access are removed. MQTT 5 has no server-side UNSUBSCRIBE, so a v5 client is told with
 * a QoS 0 PUBLISH on {@link REVOKED_TOPIC} (payload: the filter) instead of a DISCONNECT; a v3
 * client is not told. Offline persistent sessions are re-checked as the principal they last
 * connected with (and every delivery is authorized again when it is sent). One `reload` audit
 * record gives the policy version and what was affected. A failed reload is only recorded.
 */
import type { AuditEvent } from '../audit/types.ts';
import type { AuthorizerChain } from '../authz/chain.ts';
import type { AccessContext } from '../authz/types.ts';
import type { Logger } from '../log.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';
import type { GateApi } from './handler-api.ts';
import type { Principal } from '../auth/types.ts';
import type { Client } from './ports.ts';
import type { Session } from './session.ts';

/** Where a v5 client is told that a policy reload removed one of its subscriptions. */
export const REVOKED_TOPIC = '$portcullis/subscription-revoked';

/**
 * Asks the authorizers again about one session's subscriptions, as `principal`, and removes those
 * that lost access, each audited (`why`: after a policy reload, after a restart). A live v5
 * client is told on {@link REVOKED_TOPIC}. Returns how many were removed.
 */
export async function recheckSession(parts: RecheckParts, session: Session, principal: Principal, conn: Client | null, why: string): Promise<number> {
  const { gate, authorizers, sessions } = parts;
  let lost = 0;
  for (const sub of [...session.subscriptions.values()]) {
    const ctx: AccessContext = { qos: sub.qos, retain: false, listener: conn !== null ? conn.peer.listener : session.listener, will: false };
    const d = await authorizers.authorize(principal, 'subscribe', sub.filter, ctx);
    if (d.kind === 'allow' || !sessions.removeSubscription(session, sub.filter)) continue;
    lost++;
    const reason = d.kind === 'deny' ? d.detail : 'no authorizer allowed it';
    const record: AuditEvent = { event: 'subscribe', decision: 'deny', reasonCode: ReasonCode.NotAuthorized, reason: `subscription removed ${why}${conn === null ? ' (session offline)' : ''}: ${reason}`, topic: sub.filter, qos: sub.qos };
    if (conn === null) {
      record.clientId = session.clientId;
      record.listener = session.listener;
      if (principal.username !== undefined) record.username = principal.username;
      record.authMethod = principal.method;
    }
    gate.audit(conn, record);
    if (conn !== null && conn.v5 && conn.state === 'connected') {
      conn.send({ cmd: 'publish', topic: REVOKED_TOPIC, payload: Buffer.from(sub.filter), qos: 0, retain: false, dup: false, properties: { userProperties: { filter: sub.filter, reason: 'not authorized' } } });
    }
  }
  return lost;
}

/** What a policy reload did to the live sessions. */
export interface RecheckSummary {
  sessionsChecked: number;
  sessionsAffected: number;
  subscriptionsRemoved: number;
}

export interface PolicyReport {
  ok: boolean;
  version?: string;
  detail?: string;
  authorizer?: string;
  trigger?: string;
}

export interface RecheckParts {
  log: Logger;
  gate: Pick<GateApi, 'audit'>;
  authorizers: AuthorizerChain;
  sessions: { values(): IterableIterator<Session>; removeSubscription(session: Session, filter: string): boolean };
}

export async function recheckAfterReload(parts: RecheckParts, report: PolicyReport): Promise<RecheckSummary> {
  const { log, gate } = parts;
  const summary: RecheckSummary = { sessionsChecked: 0, sessionsAffected: 0, subscriptionsRemoved: 0 };
  if (report.ok) {
    for (const session of [...parts.sessions.values()]) {
      // Live sessions are checked as their connection's principal; offline persistent sessions
      // as the principal they last connected with. A session restored from the store without
      // one is checked when it resumes (recheckSession from the connect steps), and every
      // delivery is authorized again when it is sent.
      const live = session.connection;
      const conn = live !== null && live.state === 'connected' ? live : null;
      const principal = conn?.principal ?? session.principal;
      if (principal === null) continue;
      summary.sessionsChecked++;
      const lost = await recheckSession(parts, session, principal, conn, 'after a policy reload');
      if (lost > 0) {
        summary.sessionsAffected++;
        summary.subscriptionsRemoved += lost;
      }
    }
  } else {
    log.error({ authorizer: report.authorizer, trigger: report.trigger, error: report.detail }, 'policy reload FAILED: the last good policy stays in force');
  }
  gate.audit(null, {
    event: 'reload',
    decision: report.ok ? 'allow' : 'deny',
    reason: report.ok
      ? `policy reloaded (${report.trigger ?? 'api'}): ${summary.sessionsAffected} of ${summary.sessionsChecked} sessions (live and offline) lost ${summary.subscriptionsRemoved} subscriptions`
      : `policy reload failed (${report.trigger ?? 'api'}), last good policy kept: ${report.detail ?? 'unknown error'}`,
    ...(report.version !== undefined ? { policyVersion: report.version } : {}),
    ...(report.authorizer !== undefined ? { decidedBy: report.authorizer } : {}),
  });
  if (report.ok) log.info({ version: report.version, ...summary }, 'policy reloaded');
  return summary;
}
