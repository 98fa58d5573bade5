/**
 * The security gate: the one place where the broker asks the authentication chains and the
 * authorizer chain, and where every access decision becomes an audit record. Its fail-closed
 * rules sit here together:
 *
 * - a connection with no principal is denied everything;
 * - with `audit.failMode: fail-closed`, no access that cannot be audited (giving up a
 *   subscription excepted);
 * - the broker's reserved trees (`$SYS`, `$portcullis`) are never a client's to publish to, by
 *   PUBLISH or by will: the authorizer chain refuses them before any authorizer is asked
 *   (src/authz/chain.ts);
 * - credentials that expire end the connection.
 */
import { DenialLimiter } from '../audit/denial-limit.ts';
import type { AuditEvent, AuditHealth, AuditSink, AuditWho } from '../audit/types.ts';
import { AuthenticatorChain, type ChainResult } from '../auth/chain.ts';
import type { ConnectRequest } from '../auth/types.ts';
import type { AuthorizerChain } from '../authz/chain.ts';
import type { AccessContext, Action, AuthzResult } from '../authz/types.ts';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import type { QoS } from '../protocol/codec.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';
import { timerDelay } from '../util/timers.ts';
import type { GateApi } from './handler-api.ts';
import type { Client } from './ports.ts';
import type { BrokerStats } from './stats.ts';

/** fail-open: how long clients may be held for an audit log that does not catch up. */
const AUDIT_HOLD_MAX_MS = 2000;

export interface GateParts {
  config: Config;
  log: Logger;
  stats: BrokerStats;
  audit: AuditSink;
  chains: Map<string, AuthenticatorChain>;
  authorizers: AuthorizerChain;
}

export class SecurityGate implements GateApi {
  private readonly config: Config;
  private readonly log: Logger;
  private readonly stats: BrokerStats;
  private readonly sink: AuditSink;
  private readonly chains: Map<string, AuthenticatorChain>;
  readonly authorizers: AuthorizerChain;
  private readonly auditAllowed: Record<Action | 'connect' | 'will', boolean>;
  private readonly auditFailClosed: boolean;
  /** Connections that stopped reading until the audit log catches up (see holdForAudit). */
  private readonly auditHeld = new Set<Client>();
  /** fail-open: the log did not catch up in time; nobody is held until it does. */
  private auditHoldBypassed = false;
  private readonly scratchContext: AccessContext = { qos: 0, retain: false, listener: '', will: false, shareGroup: undefined };
  /** audit.denials.disconnectAfter: a client whose own requests keep being denied is disconnected. */
  private readonly denialLimiter: DenialLimiter | null;

  constructor(parts: GateParts) {
    this.config = parts.config;
    this.log = parts.log;
    this.stats = parts.stats;
    this.sink = parts.audit;
    this.chains = parts.chains;
    this.authorizers = parts.authorizers;
    this.auditAllowed = { ...parts.config.audit.allowed, will: true };
    this.auditFailClosed = parts.config.audit.failMode === 'fail-closed' && typeof parts.audit.health === 'function';
    this.denialLimiter = DenialLimiter.create(parts.config.audit.denials);
  }

  // ── authentication ─────────────────────────────────────────────────────────

  /** True when a provider on this listener offers the MQTT 5 authentication method (e.g. 'JWT'). */
  supportsAuthMethod(listener: string, method: string): boolean {
    return this.chains.get(listener)?.supportsMethod(method) ?? false;
  }

  /** The listener's chain's answer: synchronous when no provider has to wait (see AuthenticatorChain.decide). */
  decideAuthentication(listener: string, req: ConnectRequest): ChainResult | Promise<ChainResult> {
    const chain = this.chains.get(listener) ?? new AuthenticatorChain([], this.config.authDeadlineMs);
    return chain.decide(req);
  }

  /** Ends the connection when its principal's credentials expire (a JWT's exp, a certificate's notAfter). */
  armCredentialExpiry(conn: Client): void {
    if (conn.expiryTimer !== null) clearTimeout(conn.expiryTimer);
    conn.expiryTimer = null;
    const expiresAt = conn.principal?.expiresAt;
    if (expiresAt === undefined) return;
    conn.expiryTimer = setTimeout(
      () => this.disconnectForSecurity(conn, ReasonCode.MaximumConnectTime, 'credentials-expired', 'credentials expired'),
      timerDelay(expiresAt - Date.now()),
    );
    conn.expiryTimer.unref();
  }

  // ── authorization ──────────────────────────────────────────────────────────

  /**
   * Asks the authorizer chain and records the decision. Synchronous when the authorizers are.
   * The context object is reused between calls, so the delivery path allocates nothing per
   * subscriber; an authorizer must copy it if it needs it after returning.
   */
  authorize(conn: Client, action: Action, topic: string, qos: QoS, retain: boolean, will = false, shareGroup?: string): AuthzResult | Promise<AuthzResult> {
    const principal = conn.principal;
    if (principal === null) {
      const denied: AuthzResult = { kind: 'deny', reason: ReasonCode.NotAuthorized, detail: 'not authenticated' };
      this.recordAccess(conn, action, topic, qos, retain, will, denied);
      return denied;
    }
    if (this.auditFailClosed && action !== 'unsubscribe' && !this.auditAvailable()) {
      // fail-closed: no access that cannot be audited. Giving up a subscription stays allowed.
      this.recordAccess(conn, action, topic, qos, retain, will, AUDIT_UNAVAILABLE);
      return AUDIT_UNAVAILABLE;
    }
    const ctx = this.scratchContext;
    ctx.qos = qos;
    ctx.retain = retain;
    ctx.listener = conn.peer.listener;
    ctx.will = will;
    // A `$share/{group}/...` rule speaks about deliveries through that group only.
    ctx.shareGroup = shareGroup;
    const result = this.authorizers.authorize(principal, action, topic, ctx);
    if (result instanceof Promise) {
      return result.then((r) => {
        this.recordAccess(conn, action, topic, qos, retain, will, r);
        if (r.kind !== 'allow' && action !== 'deliver' && !will) this.noteDenial(conn);
        return r;
      });
    }
    this.recordAccess(conn, action, topic, qos, retain, will, result);
    if (result.kind !== 'allow' && action !== 'deliver' && !will) this.noteDenial(conn);
    return result;
  }

  /**
   * A request refused before any authorizer was asked (a malformed or too long filter, a bad
   * `$share` name, a quota): audited as a denial through the same summarised path as the
   * authorizers' denials. Written one by one, a loop of such subscribes wrote 80-100 MB of audit
   * a second. Not counted toward audit.denials.disconnectAfter: a client over a limit learns it
   * from the SUBACK / PUBACK codes, as the spec has it, whatever their number.
   */
  refuse(conn: Client, event: AuditEvent & { event: 'subscribe' | 'unsubscribe' | 'publish'; decision: 'deny' }): void {
    const sink = this.sink;
    if (sink.recordAccess !== undefined) {
      try {
        sink.recordAccess(this.auditWho(conn), event.event, 'deny', event.reasonCode ?? ReasonCode.UnspecifiedError, event.reason, event.decidedBy ?? 'limits', undefined, undefined, event.topic ?? '', event.qos ?? 0, event.retain ?? false);
      } catch (err) {
        this.log.error({ err: (err as Error).message }, 'audit sink failed');
      }
    } else {
      this.audit(conn, event);
    }
  }

  /**
   * Counts a denial of the client's own request (not a withheld delivery, not a will, not an
   * audit outage); past audit.denials.disconnectAfter in its window the client is disconnected
   * (0x97) at once: the handler finds the connection closed and answers nothing more, and the
   * packets it had sent after this one are not handled.
   */
  private noteDenial(conn: Client): void {
    const limiter = this.denialLimiter;
    if (limiter === null || !limiter.deny(conn)) return;
    this.disconnectForSecurity(conn, ReasonCode.QuotaExceeded, 'denial-limit', limiter.reason(), false);
  }

  private recordAccess(conn: Client, action: Action, topic: string, qos: QoS, retain: boolean, will: boolean, result: AuthzResult): void {
    const event = will ? 'will' : action;
    if (result.kind === 'allow' && !this.auditAllowed[event]) return;
    // Built field by field, not with spreads: with every publish and delivery audited this runs
    // twice per message.
    const decision = result.kind === 'allow' ? 'allow' : 'deny';
    const reasonCode = result.kind === 'deny' ? result.reason : result.kind === 'allow' ? ReasonCode.Success : ReasonCode.NotAuthorized;
    const reason = result.kind === 'deny' ? result.detail : result.kind === 'abstain' ? 'no authorizer allowed it' : undefined;
    const sink = this.sink;
    if (sink.recordAccess !== undefined) {
      // No event object: with every publish and delivery audited this runs twice per message.
      try {
        sink.recordAccess(this.auditWho(conn), event, decision, reasonCode, reason, result.decidedBy, result.rule, result.policyVersion, topic, qos, retain);
      } catch (err) {
        this.log.error({ err: (err as Error).message }, 'audit sink failed');
      }
      return;
    }
    const record: AuditEvent = { event, decision, reasonCode };
    if (reason !== undefined) record.reason = reason;
    if (result.decidedBy !== undefined) record.decidedBy = result.decidedBy;
    if (result.rule !== undefined) record.rule = result.rule;
    if (result.policyVersion !== undefined) record.policyVersion = result.policyVersion;
    record.topic = topic;
    record.qos = qos;
    record.retain = retain;
    this.audit(conn, record);
  }

  // ── audit ──────────────────────────────────────────────────────────────────

  /** Who a connection's access records name; made again when its principal or client id changes. */
  private auditWho(conn: Client): AuditWho {
    const cached = conn.auditWho;
    if (cached !== null && conn.auditWhoPrincipal === conn.principal && cached.clientId === conn.clientId) return cached;
    const p = conn.principal;
    const who: AuditWho = { listener: conn.peer.listener, remoteAddress: conn.peer.remoteAddress, remotePort: conn.peer.remotePort, clientId: conn.clientId };
    if (p !== null) {
      if (p.username !== undefined) who.username = p.username;
      who.authMethod = p.method;
    }
    const tls = conn.peer.tls;
    if (tls?.fingerprint256 !== undefined) who.certFingerprint = tls.fingerprint256;
    if (tls?.subject !== undefined) who.certSubject = formatSubject(tls.subject);
    conn.auditWho = who;
    conn.auditWhoPrincipal = p;
    return who;
  }

  /** Whether allowed connects are recorded (audit.events): the connect step builds no record when not. */
  auditsConnects(): boolean {
    return this.auditAllowed.connect;
  }

  /** Writes one audit record, filled with who and where. */
  audit(conn: Client | null, event: AuditEvent): void {
    if (event.event === 'connect' && event.decision === 'allow' && !this.auditAllowed.connect) return;
    if (conn !== null) {
      const p = conn.principal;
      event.listener ??= conn.peer.listener;
      event.remoteAddress ??= conn.peer.remoteAddress;
      event.remotePort ??= conn.peer.remotePort;
      event.clientId ??= conn.clientId;
      if (p !== null) {
        if (p.username !== undefined) event.username ??= p.username;
        event.authMethod ??= p.method;
      }
      const tls = conn.peer.tls;
      if (tls?.fingerprint256 !== undefined) event.certFingerprint ??= tls.fingerprint256;
      if (tls?.subject !== undefined) event.certSubject ??= formatSubject(tls.subject);
    }
    try {
      this.sink.record(event);
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'audit sink failed');
    }
  }

  /** True while the audit log is behind (see AuditSink.backlogged): connections stop reading until it catches up. */
  auditBacklogged(): boolean {
    // Both halves of the protocol, or none: a sink that cannot call back would hold clients forever.
    return !this.auditHoldBypassed && this.sink.whenDrained !== undefined && this.sink.backlogged?.() === true;
  }

  /**
   * Holds a connection's reading until the audit log has caught up; every held connection is
   * released at once. With `audit.failMode: fail-open`, a log that has not caught up within
   * AUDIT_HOLD_MAX_MS (a write that hangs) no longer holds anyone until it does: availability
   * first, and records that do not fit are dropped and counted, as fail-open promises.
   */
  holdForAudit(conn: Client): void {
    this.auditHeld.add(conn);
    this.stats.auditHolds++;
    if (this.auditHeld.size > 1) return; // a callback is already waiting
    let timer: NodeJS.Timeout | undefined;
    if (!this.auditFailClosed) {
      timer = setTimeout(() => {
        this.auditHoldBypassed = true;
        this.log.warn({ heldMs: AUDIT_HOLD_MAX_MS, held: this.auditHeld.size }, 'audit log has not caught up: fail-open reads clients again; records that do not fit are dropped');
        this.releaseAuditHeld();
      }, AUDIT_HOLD_MAX_MS);
      timer.unref();
    }
    this.sink.whenDrained?.(() => {
      clearTimeout(timer);
      this.auditHoldBypassed = false;
      this.releaseAuditHeld();
    });
  }

  private releaseAuditHeld(): void {
    const held = [...this.auditHeld];
    this.auditHeld.clear();
    for (const c of held) c.releaseAudit();
  }

  /** False while the audit sink cannot write and `audit.failMode` is fail-closed: connects are refused, access denied. */
  auditAvailable(): boolean {
    if (!this.auditFailClosed) return true;
    const sink = this.sink;
    return sink.healthy !== undefined ? sink.healthy() : (sink.health as () => AuditHealth).call(sink).ok;
  }

  /** The audit sink's state (for metrics); sinks that cannot fail report ok. */
  auditHealth(): AuditHealth {
    return this.sink.health?.() ?? { ok: true, pending: 0, dropped: 0, written: 0 };
  }

  async flushAudit(): Promise<void> {
    await this.sink.flush();
    await this.sink.close();
  }

  /**
   * Disconnects a client for a security reason and records it. `action` names the cause in the
   * audit record. When the identity itself is no longer good (credentials expired, certificate
   * revoked, banned, kicked, re-authentication failed: `dropWill`), its will is discarded: a
   * message the broker would publish in its name after cutting it off. Protective disconnects
   * (a slow consumer, a rate limit) keep the will, as any other lost connection does.
   */
  disconnectForSecurity(conn: Client, code: number, action: string, reason: string, dropWill = true): void {
    if (conn.state === 'closed') return;
    const willDiscarded = dropWill && conn.will !== null && !conn.discardWill;
    if (dropWill) conn.discardWill = true;
    this.audit(conn, { event: 'disconnect', action, decision: 'deny', reasonCode: code, reason, ...(willDiscarded ? { detail: { willDiscarded: true } } : {}) });
    conn.disconnect(code, reason);
  }

  /**
   * Records a reload of policy, certificates, CRLs or a password file, successful or not.
   * Call it from whatever performs the reload.
   *
   * @example
   * gate.recordReload('policy', { ok: false, detail: 'policies/acl.csv:12: unknown effect' });
   */
  recordReload(what: string, report: { ok: boolean; version?: string; detail?: string; file?: string }): void {
    this.audit(null, {
      event: 'reload',
      action: what,
      decision: report.ok ? 'allow' : 'deny',
      reason: report.detail ?? (report.ok ? 'reloaded' : 'reload failed'),
      ...(report.version !== undefined ? { policyVersion: report.version } : {}),
      ...(report.file !== undefined ? { detail: { file: report.file } } : {}),
    });
  }
}

const AUDIT_UNAVAILABLE: AuthzResult = Object.freeze({ kind: 'deny', reason: ReasonCode.UnspecifiedError, detail: 'audit log unavailable', decidedBy: 'audit' }) as AuthzResult;

/** `{ CN: 'dev-1', O: ['a', 'b'] }` → `CN=dev-1, O=a, O=b`. */
function formatSubject(subject: Record<string, string | string[]>): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(subject)) for (const x of Array.isArray(v) ? v : [v]) parts.push(`${k}=${x}`);
  return parts.join(', ');
}
