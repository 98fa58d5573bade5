/**
 * The broker: owns listeners, connections, sessions, the router and retained messages, and is
 * the one place that talks to the security seams (authentication chains, the authorizer chain
 * and the audit sink).
 */
import type { Duplex } from 'node:stream';
import type { AuditEvent, AuditHealth, AuditSink, AuditWho } from '../audit/types.ts';
import { AuthenticatorChain, type ChainResult } from '../auth/chain.ts';
import type { ConnectRequest, Principal } from '../auth/types.ts';
import { AuthorizerChain } from '../authz/chain.ts';
import type { AccessContext, Action, AuthzResult } from '../authz/types.ts';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import type { QoS } from '../protocol/codec.ts';
import { ReasonCode, reasonName } from '../protocol/reason-codes.ts';
import { parseShared } from '../protocol/topic.ts';
import type { Store, StoredSubscription } from '../store/types.ts';
import type { Listener, PeerInfo } from '../transport/types.ts';
import { Connection } from './connection.ts';
import { encodePublish, withPacketId } from './encode.ts';
import type { Message } from './message.ts';
import { RetainedMessages } from './retained.ts';
import { Router } from './router.ts';
import { PublishRateLimiter } from './rate-limit.ts';
import { Session, queuedSize, type Inflight, type QueuedDelivery } from './session.ts';
import { SysTopics } from './sys.ts';
import { WillScheduler } from './will.ts';

export interface BrokerParts {
  log: Logger;
  store: Store;
  audit: AuditSink;
  listeners: Listener[];
  chains: Map<string, AuthenticatorChain>;
  authorizers: AuthorizerChain;
}

export interface ListenerAddress {
  name: string;
  type: string;
  host: string;
  port: number;
}

/** fail-open: how long clients may be held for an audit log that does not catch up. */
const AUDIT_HOLD_MAX_MS = 2000;

export interface BrokerStats {
  connectsAccepted: number;
  connectsRefused: number;
  messagesReceived: number;
  messagesSent: number;
  messagesDropped: number;
  messagesExpired: number;
  /** QoS 0 messages a subscriber's full queue (limits.maxQueuedMessages / maxQueuedBytes) dropped. */
  queueDroppedQos0: number;
  /** QoS 1/2 messages a subscriber's full queue refused (each counted, logged and audited). */
  queueRefusedQos12: number;
  /** Clients disconnected because their queue stayed full for limits.slowConsumerTimeoutMs. */
  slowConsumersDisconnected: number;
  /** PUBLISH packets over a rate limit that were rejected, dropped or caused a disconnect. */
  publishesRateLimited: number;
  /** Times a connection's reading was paused by a rate limit (throttle). */
  connectionsThrottled: number;
  /** Times a connection stopped reading because the audit log was behind (read back-pressure). */
  auditHolds: number;
}

/** What a policy reload did to the live sessions. */
export interface RecheckSummary {
  sessionsChecked: number;
  sessionsAffected: number;
  subscriptionsRemoved: number;
}

/** Where a v5 client is told that a policy reload removed one of its subscriptions. */
export const REVOKED_TOPIC = '$portcullis/subscription-revoked';

const NEVER_EXPIRES = 0xffffffff;
const MAX_TIMER = 2 ** 31 - 1;

export class Broker {
  readonly log: Logger;
  readonly store: Store;
  readonly sessions = new Map<string, Session>();
  /** Sessions with QoS 1/2 queue refusals not yet in the audit log; the sweep records them. */
  private readonly refusalsPending = new Set<Session>();
  readonly connections = new Set<Connection>();
  readonly router = new Router();
  readonly retained = new RetainedMessages();
  readonly stats: BrokerStats = {
    connectsAccepted: 0,
    connectsRefused: 0,
    messagesReceived: 0,
    messagesSent: 0,
    messagesDropped: 0,
    messagesExpired: 0,
    queueDroppedQos0: 0,
    queueRefusedQos12: 0,
    slowConsumersDisconnected: 0,
    publishesRateLimited: 0,
    connectionsThrottled: 0,
    auditHolds: 0,
  };
  /** PUBLISH rate limits; null when none is configured (the default). */
  readonly rateLimiter: PublishRateLimiter | null;
  clock = Date.now();
  startedAt = Date.now();
  connected = 0;
  private readonly auditSink: AuditSink;
  private readonly auditAllowed: Record<Action | 'connect' | 'will', boolean>;
  private readonly auditFailClosed: boolean;
  /** Connections that stopped reading until the audit log catches up (see holdForAudit). */
  private readonly auditHeld = new Set<Connection>();
  /** fail-open: the log did not catch up in time; nobody is held until it does. */
  private auditHoldBypassed = false;
  private readonly chains: Map<string, AuthenticatorChain>;
  private readonly authorizers: AuthorizerChain;
  private readonly listeners: Listener[];
  private readonly wills: WillScheduler;
  private readonly sys: SysTopics;
  private timers: NodeJS.Timeout[] = [];
  private running = false;
  private dropWarnedAt = 0;
  private readonly scratchContext: AccessContext = { qos: 0, retain: false, listener: '', will: false };
  /** The packet-size limits every connection's reader applies: one object for all of them. */
  readonly readerLimits: { maxPacketSize: number; maxConnectSize: number };

  constructor(
    readonly config: Config,
    parts: BrokerParts,
  ) {
    this.log = parts.log;
    this.store = parts.store;
    this.readerLimits = { maxPacketSize: config.limits.maxPacketSize, maxConnectSize: config.limits.maxConnectSize };
    this.auditSink = parts.audit;
    this.chains = parts.chains;
    this.authorizers = parts.authorizers;
    this.listeners = parts.listeners;
    const allowed = config.audit.allowed;
    this.auditAllowed = { ...allowed, will: true };
    const sink = parts.audit;
    this.auditFailClosed = config.audit.failMode === 'fail-closed' && typeof sink.health === 'function';
    this.wills = new WillScheduler(this);
    this.sys = new SysTopics(this);
    this.rateLimiter = PublishRateLimiter.create(config.rateLimits, this.log);
  }

  // ── lifecycle ──────────────────────────────────────────────────────────────

  async start(): Promise<ListenerAddress[]> {
    await this.store.open();
    for (const stored of await this.store.loadSessions()) {
      const session = Session.fromStored(stored);
      if (session.expiresAt !== undefined && session.expiresAt <= Date.now()) {
        await this.store.deleteSession(session.clientId);
        continue;
      }
      this.sessions.set(session.clientId, session);
      for (const sub of session.subscriptions.values()) this.routeSubscription(session, sub, true);
      this.armExpiry(session);
    }
    for (const message of await this.store.loadRetained()) this.retained.set(message);

    const tick = Math.max(20, Math.min(100, Math.floor(this.config.limits.connectTimeoutMs / 4)));
    this.timers.push(setInterval(() => this.sweep(), tick).unref());
    this.running = true;
    const addresses: ListenerAddress[] = [];
    try {
      for (const listener of this.listeners) {
        const address = await listener.start((stream, peer) => this.accept(stream, peer));
        addresses.push({ name: listener.name, type: listener.kind, ...address });
      }
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.sys.start(this.config.sys.intervalSeconds);
    return addresses;
  }

  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    this.sys.stop();
    this.wills.stop();
    // server.close() resolves only when every socket has gone, so start it and await it last.
    const closing = Promise.all(this.listeners.map((l) => l.stop()));
    for (const conn of [...this.connections]) {
      conn.discardWill = true;
      conn.disconnect(ReasonCode.ServerShuttingDown, 'server shutting down');
    }
    for (const session of this.sessions.values()) {
      if (session.expiryTimer !== null) clearTimeout(session.expiryTimer);
    }
    await this.waitForConnections(this.config.shutdown.graceMs);
    for (const conn of this.connections) conn.stream.destroy();
    await closing;
    await this.auditSink.flush();
    await this.auditSink.close();
    await this.authorizers.close();
    await this.store.close();
  }

  private async waitForConnections(ms: number): Promise<void> {
    const deadline = Date.now() + ms;
    while (this.connections.size > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  private accept(stream: Duplex, peer: PeerInfo): void {
    if (!this.running) {
      stream.destroy();
      return;
    }
    const conn = new Connection(this, stream, peer);
    this.connections.add(conn);
  }

  /** Keep-alive and CONNECT deadlines, rate-limit throttles and slow consumers, checked by one timer for all connections. */
  private sweep(): void {
    const now = (this.clock = Date.now());
    const connectDeadline = this.config.limits.connectTimeoutMs;
    const slowConsumerMs = this.config.limits.slowConsumerTimeoutMs;
    for (const session of this.refusalsPending) if (now - session.refusalsAuditedAt >= 1000) this.auditQueueRefusals(session);
    for (const conn of this.connections) {
      if (conn.state === 'connected') {
        // A client held back by its rate limit is not read, so it cannot show activity: no keep-alive check then.
        if (conn.keepAlive > 0 && conn.readPausedUntil === 0 && now - conn.lastSeen > conn.keepAlive * 1500) {
          conn.disconnect(ReasonCode.KeepAliveTimeout, 'keep-alive timeout'); // [MQTT-3.1.2-22]
          continue;
        }
        if (conn.readPausedUntil !== 0 && now >= conn.readPausedUntil) conn.resumeReading();
        const session = conn.session;
        if (slowConsumerMs > 0 && session !== null && session.queueFullSince !== 0 && now - session.queueFullSince > slowConsumerMs) {
          this.disconnectSlowConsumer(conn, session, now);
        }
      } else if (conn.state !== 'closed' && now - conn.openedAt > connectDeadline) {
        this.log.info({ remote: conn.peer.remoteAddress, listener: conn.peer.listener }, 'no CONNECT within the deadline: closing');
        conn.close({ code: ReasonCode.MaximumConnectTime, detail: 'no CONNECT within the deadline' });
        conn.stream.destroy();
      }
    }
  }

  // ── security seams ─────────────────────────────────────────────────────────

  /** True when a provider on this listener offers the MQTT 5 authentication method (e.g. 'JWT'). */
  supportsAuthMethod(listener: string, method: string): boolean {
    return this.chains.get(listener)?.supportsMethod(method) ?? false;
  }

  authenticate(listener: string, req: ConnectRequest): Promise<ChainResult> {
    return Promise.resolve(this.decideAuthentication(listener, req));
  }

  /** The listener's chain's answer: synchronous when no provider has to wait (see AuthenticatorChain.decide). */
  decideAuthentication(listener: string, req: ConnectRequest): ChainResult | Promise<ChainResult> {
    const chain = this.chains.get(listener) ?? new AuthenticatorChain([], this.config.authDeadlineMs);
    return chain.decide(req);
  }

  /**
   * Asks the authorizer chain and records the decision. Synchronous when the authorizers are.
   * The context object is reused between calls, so the delivery path allocates nothing per
   * subscriber; an authorizer must copy it if it needs it after returning.
   */
  authorize(conn: Connection, action: Action, topic: string, qos: QoS, retain: boolean, will = false): AuthzResult | Promise<AuthzResult> {
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
    const result = this.authorizers.authorize(principal, action, topic, ctx);
    if (result instanceof Promise) {
      return result.then((r) => {
        this.recordAccess(conn, action, topic, qos, retain, will, r);
        return r;
      });
    }
    this.recordAccess(conn, action, topic, qos, retain, will, result);
    return result;
  }

  private recordAccess(conn: Connection, action: Action, topic: string, qos: QoS, retain: boolean, will: boolean, result: AuthzResult): void {
    const event = will ? 'will' : action;
    if (result.kind === 'allow' && !this.auditAllowed[event]) return;
    // Built field by field, not with spreads: with every publish and delivery audited this runs
    // twice per message.
    const decision = result.kind === 'allow' ? 'allow' : 'deny';
    const reasonCode = result.kind === 'deny' ? result.reason : result.kind === 'allow' ? ReasonCode.Success : ReasonCode.NotAuthorized;
    const reason = result.kind === 'deny' ? result.detail : result.kind === 'abstain' ? 'no authorizer allowed it' : undefined;
    const sink = this.auditSink;
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

  /** Who a connection's access records name; made again when its principal or client id changes. */
  private auditWho(conn: Connection): AuditWho {
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
  audit(conn: Connection | null, event: AuditEvent): void {
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
      this.auditSink.record(event);
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'audit sink failed');
    }
  }

  /** True while the audit log is behind (see AuditSink.backlogged): connections stop reading until it catches up. */
  auditBacklogged(): boolean {
    // Both halves of the protocol, or none: a sink that cannot call back would hold clients forever.
    return !this.auditHoldBypassed && this.auditSink.whenDrained !== undefined && this.auditSink.backlogged?.() === true;
  }

  /**
   * Holds a connection's reading until the audit log has caught up; every held connection is
   * released at once. With `audit.failMode: fail-open`, a log that has not caught up within
   * AUDIT_HOLD_MAX_MS (a write that hangs) no longer holds anyone until it does: availability
   * first, and records that do not fit are dropped and counted, as fail-open promises.
   */
  holdForAudit(conn: Connection): void {
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
    this.auditSink.whenDrained?.(() => {
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
    const sink = this.auditSink;
    return sink.healthy !== undefined ? sink.healthy() : (sink.health as () => AuditHealth).call(sink).ok;
  }

  /** The audit sink's state (for metrics); sinks that cannot fail report ok. */
  auditHealth(): AuditHealth {
    return this.auditSink.health?.() ?? { ok: true, pending: 0, dropped: 0, written: 0 };
  }

  /**
   * Disconnects a client for a security reason (credentials expired, certificate revoked,
   * access lost after a reload) and records it. `action` names the cause in the audit record.
   */
  disconnectForSecurity(conn: Connection, code: number, action: string, reason: string): void {
    if (conn.state === 'closed') return;
    this.audit(conn, { event: 'disconnect', action, decision: 'deny', reasonCode: code, reason });
    conn.disconnect(code, reason);
  }

  /**
   * Records a reload of policy, certificates, CRLs or a password file, successful or not.
   * Call it from whatever performs the reload.
   *
   * @example
   * broker.recordReload('policy', { ok: false, detail: 'policies/acl.csv:12: unknown effect' });
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

  // ── sessions ───────────────────────────────────────────────────────────────

  /** Attaches a connection's session: takes over a live one, discards it on clean start, or resumes it. */
  attachSession(conn: Connection, clientId: string, owner: string, cleanStart: boolean, expiryInterval: number): { session: Session; present: boolean } {
    let session = this.sessions.get(clientId);
    if (session !== undefined) {
      const old = session.connection;
      if (old !== null && old !== conn) {
        session.connection = null;
        old.takenOver = true;
        old.sessionEnding = cleanStart;
        this.log.info({ clientId }, 'session taken over by a new connection');
        old.disconnect(ReasonCode.SessionTakenOver, 'session taken over'); // [MQTT-3.1.4-3]
      }
      this.wills.cancel(clientId, cleanStart); // a new connection before the delay cancels the will [MQTT-3.1.3-9]
      if (session.expiryTimer !== null) clearTimeout(session.expiryTimer);
      session.expiryTimer = null;
      if (cleanStart) {
        this.destroySession(session);
        session = undefined;
      }
    }
    const present = session !== undefined;
    if (session === undefined) {
      session = new Session(clientId, owner, conn.version, expiryInterval);
      this.sessions.set(clientId, session);
    } else {
      session.expiryInterval = expiryInterval;
      session.protocolVersion = conn.version;
    }
    session.expiresAt = undefined;
    this.syncStored(session);
    return { session, present };
  }

  /** Writes the session to the store when it is persistent, or removes it when it no longer is. */
  private syncStored(session: Session): void {
    const clientId = session.clientId;
    if (session.persistent) {
      if (session.stored) {
        this.persist((s) => s.setSessionExpiry(clientId, session.expiresAt, session.expiryInterval));
      } else {
        session.stored = true;
        const snapshot = session.toStored();
        this.persist((s) => s.saveSession(snapshot));
      }
    } else if (session.stored) {
      session.stored = false;
      this.persist((s) => s.deleteSession(clientId));
    }
  }

  connectionOpened(conn: Connection, principal: Principal): void {
    this.connected++;
    this.rateLimiter?.attach(conn, Date.now());
    this.stats.connectsAccepted++;
    // Checked first: the fields object would be made for nothing at a quieter level (per connect).
    if (this.log.isLevelEnabled('info')) {
      this.log.info(
        { clientId: conn.clientId, listener: conn.peer.listener, remote: conn.peer.remoteAddress, username: principal.username, method: principal.method, protocol: conn.version },
        'client connected',
      );
    }
    if (principal.expiresAt !== undefined) {
      const ms = principal.expiresAt - Date.now();
      conn.expiryTimer = setTimeout(
        () => this.disconnectForSecurity(conn, ReasonCode.MaximumConnectTime, 'credentials-expired', 'credentials expired'),
        Math.max(0, Math.min(ms, MAX_TIMER)),
      );
      conn.expiryTimer.unref();
    }
  }

  connectionClosed(conn: Connection, wasConnected: boolean): void {
    this.connections.delete(conn);
    if (conn.expiryTimer !== null) clearTimeout(conn.expiryTimer);
    if (!wasConnected) return;
    this.connected--;
    this.rateLimiter?.release(conn);
    if (this.log.isLevelEnabled('info')) this.log.info({ clientId: conn.clientId, listener: conn.peer.listener, cause: conn.describeClose() }, 'client disconnected');
    const session = conn.session;
    const will = conn.will;
    if (will !== null && !conn.discardWill) {
      if (conn.takenOver) {
        if (will.delaySeconds === 0 || conn.sessionEnding) this.wills.publish(conn, will);
      } else {
        const delay = conn.v5 ? Math.min(will.delaySeconds, session?.expiryInterval ?? 0) : 0;
        this.wills.schedule(conn, will, delay);
      }
    }
    if (session === null || session.connection !== conn) return;
    session.connection = null;
    session.queueFullSince = 0;
    if (!session.persistent) {
      this.destroySession(session);
      return;
    }
    if (session.queue.length > 0 && !this.config.limits.queueQos0) this.dropQueuedQos0(session);
    session.expiresAt = session.expiryInterval === NEVER_EXPIRES ? undefined : Date.now() + session.expiryInterval * 1000;
    this.syncStored(session);
    this.armExpiry(session);
  }

  private armExpiry(session: Session): void {
    if (session.expiresAt === undefined || session.connection !== null) return;
    const ms = session.expiresAt - Date.now();
    session.expiryTimer = setTimeout(() => {
      session.expiryTimer = null;
      if (session.connection !== null) return;
      if (session.expiresAt !== undefined && session.expiresAt > Date.now()) return this.armExpiry(session);
      this.log.info({ clientId: session.clientId }, 'session expired');
      this.wills.fire(session.clientId); // the session ends: a pending will goes now
      this.destroySession(session);
    }, Math.max(0, Math.min(ms, MAX_TIMER)));
    session.expiryTimer.unref();
  }

  private destroySession(session: Session): void {
    for (const sub of session.subscriptions.values()) this.routeSubscription(session, sub, false);
    if (this.sessions.get(session.clientId) === session) this.sessions.delete(session.clientId);
    if (session.expiryTimer !== null) clearTimeout(session.expiryTimer);
    if (session.stored) {
      session.stored = false;
      this.persist((s) => s.deleteSession(session.clientId));
    }
  }

  // ── subscriptions ──────────────────────────────────────────────────────────

  addSubscription(session: Session, sub: StoredSubscription): void {
    const previous = session.subscriptions.get(sub.filter);
    if (previous !== undefined) this.routeSubscription(session, previous, false);
    session.subscriptionsForWrite().set(sub.filter, sub);
    this.routeSubscription(session, sub, true);
    if (session.persistent) this.persist((s) => s.putSubscription(session.clientId, sub));
  }

  removeSubscription(session: Session, filter: string): boolean {
    const sub = session.subscriptions.get(filter);
    if (sub === undefined) return false;
    session.subscriptions.delete(filter);
    this.routeSubscription(session, sub, false);
    if (session.persistent) this.persist((s) => s.deleteSubscription(session.clientId, filter));
    return true;
  }

  /**
   * After a policy reload: asks the authorizers again about every session's subscriptions,
   * removes those that lost access, and writes one `reload` audit record with the policy version
   * and what was affected. MQTT 5 has no server-side UNSUBSCRIBE, so a v5 client is told with a
   * QoS 0 PUBLISH on {@link REVOKED_TOPIC} (payload: the filter) instead of a DISCONNECT; a v3
   * client is not told. Offline persistent sessions are re-checked as the principal they last
   * connected with (and every delivery is authorized again when it is sent). A failed reload is
   * only recorded.
   */
  async policyReloaded(report: { ok: boolean; version?: string; detail?: string; authorizer?: string; trigger?: string }): Promise<RecheckSummary> {
    const summary: RecheckSummary = { sessionsChecked: 0, sessionsAffected: 0, subscriptionsRemoved: 0 };
    if (report.ok) {
      for (const session of [...this.sessions.values()]) {
        // Live sessions are checked as their connection's principal; offline persistent sessions
        // as the principal they last connected with. A session restored from the store without
        // one is left to the deliver check, which runs again on every message it is sent.
        const live = session.connection;
        const conn = live !== null && live.state === 'connected' ? live : null;
        const principal = conn?.principal ?? session.principal;
        if (principal === null) continue;
        summary.sessionsChecked++;
        let lost = 0;
        for (const sub of [...session.subscriptions.values()]) {
          const ctx: AccessContext = { qos: sub.qos, retain: false, listener: conn !== null ? conn.peer.listener : session.listener, will: false };
          const d = await this.authorizers.authorize(principal, 'subscribe', sub.filter, ctx);
          if (d.kind === 'allow' || !this.removeSubscription(session, sub.filter)) continue;
          lost++;
          const why = d.kind === 'deny' ? d.detail : 'no authorizer allowed it';
          const record: AuditEvent = { event: 'subscribe', decision: 'deny', reasonCode: ReasonCode.NotAuthorized, reason: `subscription removed after a policy reload${conn === null ? ' (session offline)' : ''}: ${why}`, topic: sub.filter, qos: sub.qos };
          if (conn === null) {
            record.clientId = session.clientId;
            record.listener = session.listener;
            if (principal.username !== undefined) record.username = principal.username;
            record.authMethod = principal.method;
          }
          this.audit(conn, record);
          if (conn !== null && conn.v5 && conn.state === 'connected') {
            conn.send({ cmd: 'publish', topic: REVOKED_TOPIC, payload: Buffer.from(sub.filter), qos: 0, retain: false, dup: false, properties: { userProperties: { filter: sub.filter, reason: 'not authorized' } } });
          }
        }
        if (lost > 0) {
          summary.sessionsAffected++;
          summary.subscriptionsRemoved += lost;
        }
      }
    } else {
      this.log.error({ authorizer: report.authorizer, trigger: report.trigger, error: report.detail }, 'policy reload FAILED: the last good policy stays in force');
    }
    this.audit(null, {
      event: 'reload',
      decision: report.ok ? 'allow' : 'deny',
      reason: report.ok
        ? `policy reloaded (${report.trigger ?? 'api'}): ${summary.sessionsAffected} of ${summary.sessionsChecked} sessions (live and offline) lost ${summary.subscriptionsRemoved} subscriptions`
        : `policy reload failed (${report.trigger ?? 'api'}), last good policy kept: ${report.detail ?? 'unknown error'}`,
      ...(report.version !== undefined ? { policyVersion: report.version } : {}),
      ...(report.authorizer !== undefined ? { decidedBy: report.authorizer } : {}),
    });
    if (report.ok) this.log.info({ version: report.version, ...summary }, 'policy reloaded');
    return summary;
  }

  private routeSubscription(session: Session, sub: StoredSubscription, add: boolean): void {
    const shared = parseShared(sub.filter);
    const group = shared !== null && !('error' in shared) ? shared : null;
    const filter = group === null ? sub.filter : group.filter;
    if (add) this.router.add(session, filter, sub, group?.group);
    else this.router.remove(session, filter, group?.group);
  }

  // ── routing and delivery ───────────────────────────────────────────────────

  /** Stores a retained message if needed and delivers to every matching subscription; returns how many matched. */
  route(message: Message): number {
    if (message.retain) {
      this.retained.set(message);
      this.persist((s) => s.putRetained(stripForStore(message)));
    }
    const router = this.router;
    router.match(message.topic, message.origin);
    const matched = router.matched;
    const shared = router.sharedMatched;
    const n = matched.length;
    const total = n + shared.length;
    if (total === 0) return 0;
    // The router's arrays are reused by the next match; delivery can route (wills), so copy when needed.
    const sessions = n > 0 ? matched.slice() : matched;
    const picks = shared.length > 0 ? shared.slice() : shared;
    for (let i = 0; i < n; i++) {
      const session = sessions[i] as Session;
      const qos = (session.matchQos < message.qos ? session.matchQos : message.qos) as QoS;
      this.deliver(session, message, qos, session.matchRetainAsPublished ? message.retain : false, session.matchSubscriptionIds);
    }
    for (const { session, sub } of picks) {
      const qos = (sub.qos < message.qos ? sub.qos : message.qos) as QoS;
      this.deliver(session, message, qos, sub.retainAsPublished ? message.retain : false, sub.subscriptionId === undefined ? undefined : [sub.subscriptionId]);
    }
    return total;
  }

  /** Publishes a message originating in the broker itself ($SYS, wills). */
  publishInternal(message: Message): number {
    return this.route(message);
  }

  deliver(session: Session, message: Message, qos: QoS, retain: boolean, subscriptionIds: number[] | undefined): void {
    if (message.expiresAt !== undefined && message.expiresAt <= this.clock) {
      this.stats.messagesExpired++;
      return;
    }
    const conn = session.connection;
    // A socket over limits.maxSocketBufferBytes is not written to: its deliveries queue (backpressure).
    if (conn !== null && conn.state === 'connected' && !conn.writeBlocked && (qos === 0 ? session.queuedQos0 === 0 : (session.queue.length === 0 && session.inflight.size < conn.sendWindow))) {
      const allowed = this.authorize(conn, 'deliver', message.topic, qos, retain);
      if (allowed instanceof Promise) {
        allowed.then((d) => d.kind === 'allow' && this.sendNow(session, conn, message, qos, retain, subscriptionIds));
      } else if (allowed.kind === 'allow') {
        this.sendNow(session, conn, message, qos, retain, subscriptionIds);
      }
      return;
    }
    if (conn === null) {
      if (!session.persistent) return;
      if (qos === 0 && !this.config.limits.queueQos0) return; // QoS 0 is not kept for offline sessions unless configured
    }
    this.enqueue(session, { message, qos, retain, subscriptionIds });
  }

  private sendNow(session: Session, conn: Connection, message: Message, qos: QoS, retain: boolean, subscriptionIds: number[] | undefined): void {
    if (conn.state !== 'connected') return;
    if (qos === 0) {
      this.transmit(conn, message, 0, retain, subscriptionIds, 0, false);
      return;
    }
    const inflight: Inflight = { message, qos, retain, subscriptionIds, packetId: session.allocatePacketId(), state: 'publish' };
    if (!this.transmit(conn, message, qos, retain, subscriptionIds, inflight.packetId, false)) return;
    session.inflightForWrite().set(inflight.packetId, inflight);
    this.persistInflight(session, inflight);
  }

  /** Encodes and writes a PUBLISH. Returns false when the client's maximum packet size forbids it [MQTT-3.1.2-24]. */
  private transmit(conn: Connection, message: Message, qos: QoS, retain: boolean, subscriptionIds: number[] | undefined, packetId: number, dup: boolean): boolean {
    const template = encodePublish(conn, message, qos, retain, subscriptionIds, this.clock);
    if (template.length > conn.clientMaxPacketSize) {
      this.drop('larger than the client maximum packet size');
      return false;
    }
    conn.write(qos === 0 ? template : withPacketId(template, packetId, dup));
    this.stats.messagesSent++;
    // Only block when the stream will emit 'drain', which unblocks it and pumps the queue.
    if (conn.stream.writableLength > this.config.limits.maxSocketBufferBytes && conn.stream.writableNeedDrain) conn.writeBlocked = true;
    return true;
  }

  /**
   * Queues a delivery within limits.maxQueuedMessages and maxQueuedBytes. When full: a new QoS 0
   * message is dropped; a new QoS 1/2 message evicts the oldest QoS 0 ones, and with none left it
   * is refused for this subscriber (the messages already queued were acknowledged to their
   * publishers and are kept). Every loss is counted, and QoS 1/2 refusals are audited. The first
   * message always fits, so no size is undeliverable. Only QoS 1/2 entries are written to the store.
   */
  private enqueue(session: Session, delivery: QueuedDelivery): void {
    const limits = this.config.limits;
    const queue = session.queue;
    const size = queuedSize(delivery.message);
    const maxBytes = limits.maxQueuedBytes;
    const max = limits.maxQueuedMessages;
    if (queue.length >= max || (queue.length > 0 && session.queuedBytes + size > maxBytes)) {
      if (delivery.qos === 0) return this.queueLoss(session, delivery, false);
      let i = 0;
      while (session.queuedQos0 > 0 && (queue.length >= max || session.queuedBytes + size > maxBytes)) {
        while ((queue[i] as QueuedDelivery).qos !== 0) i++;
        const [evicted] = queue.splice(i, 1) as [QueuedDelivery];
        session.queuedBytes -= queuedSize(evicted.message);
        session.queuedQos0--;
        this.queueLoss(session, evicted, false);
      }
      if (queue.length >= max || (queue.length > 0 && session.queuedBytes + size > maxBytes)) return this.queueLoss(session, delivery, true);
    }
    queue.push(delivery);
    session.queuedBytes += size;
    if (delivery.qos === 0) session.queuedQos0++;
    if (session.persistent && delivery.qos > 0) this.persist((s) => s.enqueue(session.clientId, { ...stripForStore(delivery.message), qos: delivery.qos, retain: delivery.retain }));
  }

  /** Counts a message a subscriber's full queue lost; logs (rate-limited) and audits QoS 1/2 refusals. */
  private queueLoss(session: Session, delivery: QueuedDelivery, refused: boolean): void {
    session.droppedMessages++;
    if (session.connection !== null && session.queueFullSince === 0) session.queueFullSince = this.clock;
    if (!refused) {
      this.stats.queueDroppedQos0++;
      this.drop('queue full: QoS 0 message dropped', session);
      return;
    }
    this.stats.queueRefusedQos12++;
    this.drop(`queue full: QoS ${delivery.qos} message refused for this subscriber`, session);
    session.refusalsUnaudited++;
    if (this.clock - session.refusalsAuditedAt < 1000) {
      // Recorded by the sweep within a second if no later refusal records it first.
      this.refusalsPending.add(session);
      return;
    }
    this.auditQueueRefusals(session, delivery.message.topic, delivery.qos);
  }

  /** One `deliver` / `queue-full` record for the QoS 1/2 refusals of a session not yet recorded. */
  private auditQueueRefusals(session: Session, topic?: string, qos?: number): void {
    this.refusalsPending.delete(session);
    if (session.refusalsUnaudited === 0) return;
    session.refusalsAuditedAt = this.clock;
    const refusals = session.refusalsUnaudited;
    session.refusalsUnaudited = 0;
    this.audit(session.connection, {
      event: 'deliver',
      action: 'queue-full',
      decision: 'deny',
      reasonCode: ReasonCode.QuotaExceeded,
      reason: 'subscriber queue full: QoS 1/2 message refused',
      clientId: session.clientId,
      ...(topic !== undefined ? { topic } : {}),
      ...(qos !== undefined ? { qos } : {}),
      detail: { refusedSinceLastRecord: refusals, droppedBySession: session.droppedMessages, queued: session.queue.length, queuedBytes: session.queuedBytes },
    });
  }

  /** A persistent session going offline keeps only QoS 1/2 (and QoS 0 when limits.queueQos0). */
  private dropQueuedQos0(session: Session): void {
    const kept = session.queue.filter((q) => q.qos > 0);
    const dropped = session.queue.length - kept.length;
    if (dropped === 0) return;
    session.droppedMessages += dropped;
    this.stats.queueDroppedQos0 += dropped;
    this.stats.messagesDropped += dropped;
    session.queue = kept;
    session.queuedBytes = 0;
    session.queuedQos0 = 0;
    for (const q of kept) session.queuedBytes += queuedSize(q.message);
  }

  /** A client whose queue stayed full with no delivery for limits.slowConsumerTimeoutMs: DISCONNECT 0x97. */
  private disconnectSlowConsumer(conn: Connection, session: Session, now: number): void {
    this.stats.slowConsumersDisconnected++;
    const detail = `slow consumer: queue full for ${now - session.queueFullSince} ms, ${session.droppedMessages} messages dropped`;
    this.log.warn({ clientId: conn.clientId, dropped: session.droppedMessages, queued: session.queue.length, queuedBytes: session.queuedBytes }, detail);
    session.queueFullSince = 0;
    this.disconnectForSecurity(conn, ReasonCode.QuotaExceeded, 'slow-consumer', detail);
  }

  private drop(why: string, session?: Session): void {
    this.stats.messagesDropped++;
    if (this.clock - this.dropWarnedAt > 5000) {
      this.dropWarnedAt = this.clock;
      this.log.warn(
        { clientId: session?.clientId, droppedBySession: session?.droppedMessages, dropped: this.stats.messagesDropped, queueDroppedQos0: this.stats.queueDroppedQos0, queueRefusedQos12: this.stats.queueRefusedQos12 },
        `message dropped: ${why}`,
      );
    }
  }

  /** Sends queued messages while the client's in-flight window has room and its socket is not over the mark. */
  pump(session: Session): void {
    const conn = session.connection;
    let sent = 0;
    let stored = 0;
    let bytes = 0;
    let qos0 = 0;
    while (conn !== null && conn.state === 'connected' && !conn.writeBlocked && session.queue.length > sent) {
      const next = session.queue[sent] as QueuedDelivery;
      if (next.qos > 0 && session.inflight.size >= conn.sendWindow) break;
      sent++;
      bytes += queuedSize(next.message);
      if (next.qos > 0) stored++;
      else qos0++;
      if (next.message.expiresAt !== undefined && next.message.expiresAt <= this.clock) {
        this.stats.messagesExpired++;
        continue;
      }
      const allowed = this.authorize(conn, 'deliver', next.message.topic, next.qos, next.retain);
      if (allowed instanceof Promise) {
        allowed.then((d) => d.kind === 'allow' && this.sendNow(session, conn, next.message, next.qos, next.retain, next.subscriptionIds));
      } else if (allowed.kind === 'allow') {
        this.sendNow(session, conn, next.message, next.qos, next.retain, next.subscriptionIds);
      }
    }
    if (sent > 0) {
      session.queue.splice(0, sent);
      session.queuedBytes -= bytes;
      session.queuedQos0 -= qos0;
      session.queueFullSince = 0;
      if (session.persistent && stored > 0) this.persist((s) => s.dequeue(session.clientId, stored));
    }
  }

  completeInflight(session: Session, packetId: number): void {
    session.inflight.delete(packetId);
    session.queueFullSince = 0; // an acknowledgement is progress: not a stalled consumer
    if (session.persistent) this.persist((s) => s.deleteInflight(session.clientId, packetId));
    const conn = session.connection;
    if (conn !== null) {
      for (const inflight of session.inflight.values()) {
        if (inflight.resend === true) {
          this.resend(session, conn, inflight);
          return;
        }
      }
    }
    if (session.queue.length > 0) this.pump(session);
  }

  /** After CONNACK: re-send unacknowledged messages with DUP, then the queue [MQTT-4.4.0-1]. */
  resumeDelivery(session: Session): void {
    const conn = session.connection;
    if (conn === null) return;
    // Re-send no more than the client's receive maximum allows now; the rest follow as acks arrive.
    let sent = 0;
    for (const inflight of session.inflight.values()) {
      if (sent >= conn.sendWindow) inflight.resend = true;
      else {
        sent++;
        this.resend(session, conn, inflight);
      }
    }
    this.pump(session);
  }

  private resend(session: Session, conn: Connection, inflight: Inflight): void {
    inflight.resend = false;
    if (inflight.state === 'pubrel') conn.send({ cmd: 'pubrel', messageId: inflight.packetId });
    else if (!this.transmit(conn, inflight.message, inflight.qos, inflight.retain, inflight.subscriptionIds, inflight.packetId, true)) {
      session.inflight.delete(inflight.packetId);
    }
  }

  /** Sends the retained messages matching a new subscription, each with the retain flag set [MQTT-3.3.1-9]. */
  sendRetained(session: Session, sub: StoredSubscription): void {
    this.retained.match(sub.filter, (message) => {
      const qos = (sub.qos < message.qos ? sub.qos : message.qos) as QoS;
      this.deliver(session, message, qos, true, sub.subscriptionId === undefined ? undefined : [sub.subscriptionId]);
    });
  }

  // ── persistence ────────────────────────────────────────────────────────────

  /** Writes through to the store without blocking the caller; failures are logged. */
  persist(write: (store: Store) => Promise<void>): void {
    write(this.store).catch((err: unknown) => this.log.error({ err: (err as Error).message }, 'store write failed'));
  }

  persistInflight(session: Session, inflight: Inflight): void {
    if (!session.persistent) return;
    this.persist((s) =>
      s.putInflight(session.clientId, {
        packetId: inflight.packetId,
        state: inflight.state,
        message: { ...stripForStore(inflight.message), qos: inflight.qos, retain: inflight.retain },
        ...(inflight.subscriptionIds ? { subscriptionIds: inflight.subscriptionIds } : {}),
      }),
    );
  }

  describeReason(code: number): string {
    return reasonName(code);
  }
}

const AUDIT_UNAVAILABLE: AuthzResult = Object.freeze({ kind: 'deny', reason: ReasonCode.UnspecifiedError, detail: 'audit log unavailable', decidedBy: 'audit' }) as AuthzResult;

/** `{ CN: 'dev-1', O: ['a', 'b'] }` → `CN=dev-1, O=a, O=b`. */
function formatSubject(subject: Record<string, string | string[]>): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(subject)) for (const x of Array.isArray(v) ? v : [v]) parts.push(`${k}=${x}`);
  return parts.join(', ');
}

function stripForStore(message: Message): Message {
  if (message.encoded === undefined) return message;
  const { encoded: _e, ...rest } = message;
  return rest;
}
