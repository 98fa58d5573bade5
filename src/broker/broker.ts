/**
 * The broker: wiring and lifecycle. It builds the rooms that do the work and connects them:
 *
 * - {@link SecurityGate} (gate.ts): authentication, authorization, audit;
 * - {@link SessionRegistry} (sessions.ts): sessions, subscriptions, the store;
 * - {@link Delivery} (delivery.ts): routing, in-flight windows, queues, retained messages;
 * - {@link WillScheduler} (will.ts) and {@link SysTopics} (sys.ts).
 *
 * It accepts sockets from the listeners, runs one sweep timer for every connection's deadlines,
 * and hands each packet to its handler through dispatch.ts with a {@link BrokerApi}: handlers
 * never see this class.
 */
import type { Duplex } from 'node:stream';
import type { AuditSink } from '../audit/types.ts';
import type { AuthenticatorChain } from '../auth/chain.ts';
import type { Principal } from '../auth/types.ts';
import type { AuthorizerChain } from '../authz/chain.ts';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import type { Packet } from '../protocol/codec.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';
import type { Store, StoreOpenReport } from '../store/types.ts';
import type { ConnectionHandle, Listener, PeerInfo } from '../transport/types.ts';
import { Connection } from './connection.ts';
import { Delivery } from './delivery.ts';
import { dispatch } from './dispatch.ts';
import { SecurityGate } from './gate.ts';
import type { BrokerApi } from './handler-api.ts';
import type { ClusterRuntime } from './cluster-port.ts';
import { Migration } from './migration.ts';
import type { Message } from './message.ts';
import type { Client, ConnectionHost, ConnectionState } from './ports.ts';
import { IdentityQuotas } from './quotas.ts';
import { PublishRateLimiter } from './rate-limit.ts';
import { recheckAfterReload, recheckSession, type PolicyReport, type RecheckSummary } from './recheck.ts';
import { Router } from './router.ts';
import { SessionRegistry } from './sessions.ts';
import type { Session } from './session.ts';
import { CoarseClock, newBrokerStats, type BrokerStats } from './stats.ts';
import { SysTopics, type SysCluster } from './sys.ts';
import { WillScheduler } from './will.ts';

export type { BrokerStats } from './stats.ts';
export type { RecheckSummary } from './recheck.ts';

export interface BrokerParts {
  log: Logger;
  store: Store;
  audit: AuditSink;
  listeners: Listener[];
  chains: Map<string, AuthenticatorChain>;
  authorizers: AuthorizerChain;
  /** A cluster node (src/cluster/); absent on a single node. */
  cluster?: ClusterRuntime;
  /** In a cluster: how $SYS reports per node and in total. */
  sys?: SysCluster;
}

/** How often the store is asked to drop what expired (sessions it holds that the broker does not, retained messages). */
const STORE_PURGE_MS = 60_000;

export interface ListenerAddress {
  name: string;
  type: string;
  host: string;
  port: number;
}

export class Broker implements ConnectionHost<Connection>, BrokerApi {
  readonly config: Config;
  readonly log: Logger;
  readonly stats: BrokerStats = newBrokerStats();
  readonly clock = new CoarseClock();
  readonly gate: SecurityGate;
  readonly sessions: SessionRegistry;
  readonly delivery: Delivery;
  readonly rateLimiter: PublishRateLimiter | null;
  readonly connections = new Set<Connection>();
  readonly startedAt = Date.now();
  connected = 0;
  /** The packet-size limits every connection's reader applies: one object for all of them. */
  readonly readerLimits: { maxPacketSize: number; maxConnectSize: number };
  private readonly listeners: Listener[];
  private readonly wills: WillScheduler;
  private readonly cluster: ClusterRuntime | null;
  /** In a cluster: what the other nodes may ask of this one. */
  readonly migration: Migration | null = null;
  private readonly willChecks: ((conn: Client) => string | undefined)[] = [];
  private readonly sys: SysTopics;
  private timers: NodeJS.Timeout[] = [];
  /** When the policy reloads started failing (0: the last one was good). */
  private policyFailedSince = 0;
  private running = false;

  constructor(config: Config, parts: BrokerParts) {
    this.config = config;
    this.log = parts.log;
    this.listeners = parts.listeners;
    this.readerLimits = { maxPacketSize: config.limits.maxPacketSize, maxConnectSize: config.limits.maxConnectSize };
    const router = new Router();
    const quotas = new IdentityQuotas(config.limits.quotas);
    this.gate = new SecurityGate({ config, log: this.log, stats: this.stats, audit: parts.audit, chains: parts.chains, authorizers: parts.authorizers });
    // Sessions and delivery call each other only through the hooks wired here.
    let delivery: Delivery | undefined;
    this.wills = new WillScheduler(
      this.gate,
      (message) => this.publishInternal(message),
      this.log,
      this.clock,
      (message, key) => this.delivery.retainFits(message, key),
      (key) => this.sessions.dropWillOf(key),
      (conn) => {
        for (const check of this.willChecks) {
          const why = check(conn);
          if (why !== undefined) return why;
        }
        return undefined;
      },
    );
    this.sessions = new SessionRegistry(this.log, parts.store, router, {
      cancelWill: (clientId, sessionEnds) => this.wills.cancel(clientId, sessionEnds),
      fireWill: (clientId) => this.wills.fire(clientId),
      wentOffline: (session) => delivery?.wentOffline(session),
      sessionEnded: (session) => delivery?.sessionEnded(session),
    }, quotas, (event) => this.gate.audit(null, event));
    delivery = this.delivery = new Delivery({ config, log: this.log, stats: this.stats, clock: this.clock, router, gate: this.gate, store: this.sessions, quotas });
    this.cluster = parts.cluster ?? null;
    if (this.cluster !== null) {
      this.sessions.attachCluster(this.cluster);
      this.delivery.attachCluster(this.cluster);
      this.migration = new Migration({ log: this.log, sessions: this.sessions, delivery: this.delivery, wills: this.wills, remoteInterest: router.remoteInterest });
    }
    this.rateLimiter = PublishRateLimiter.create(config.rateLimits, this.log, {
      stats: this.stats,
      clock: this.clock,
      audit: (conn, event) => this.gate.audit(conn, event),
      disconnectForSecurity: (conn, code, action, reason, dropWill) => this.gate.disconnectForSecurity(conn, code, action, reason, dropWill),
    });
    const broker = this;
    this.sys = new SysTopics({
      startedAt: this.startedAt,
      stats: this.stats,
      get connected() {
        return broker.connected;
      },
      sessionCount: () => this.sessions.size,
      retainedCount: () => this.delivery.retained.size,
      publishInternal: (message) => this.publishInternal(message),
      cluster: parts.sys,
    });
  }

  get limits(): Config['limits'] {
    return this.config.limits;
  }

  // ── lifecycle ──────────────────────────────────────────────────────────────

  async start(): Promise<ListenerAddress[]> {
    await this.cluster?.prepare();
    const { report, retained, wills } = await this.sessions.open();
    this.storeOpened(report);
    this.delivery.restoreRetained(retained);
    for (const w of wills) this.wills.restore(w);
    if (this.cluster !== null) {
      try {
        await this.cluster.start(this.migration as Migration, this.sessions.store, report);
      } catch (err) {
        await this.sessions.close().catch(() => undefined);
        throw err;
      }
    }
    const tick = Math.max(20, Math.min(100, Math.floor(this.config.limits.connectTimeoutMs / 4)));
    this.timers.push(setInterval(() => this.sweep(), tick).unref());
    this.timers.push(setInterval(() => this.sessions.purgeExpired(), STORE_PURGE_MS).unref());
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
    await this.waitForConnections(this.config.shutdown.graceMs);
    for (const conn of this.connections) conn.stream.destroy();
    await closing;
    // After the connections: their sessions are offline and written, and go with the partition.
    await this.cluster?.stop();
    await this.gate.flushAudit();
    await this.gate.authorizers.close();
    await this.sessions.close();
  }

  /** The store's open report goes to the log and the audit: what was recovered, purged and warned about. */
  private storeOpened(report: StoreOpenReport): void {
    const { loaded, purged, recovery } = report;
    const reason = `${report.type} store opened${report.created ? ' (new)' : ''}: ${loaded.sessions} sessions, ${loaded.queued} queued, ${loaded.inflight} in flight, ${loaded.retained} retained; purged ${purged.expiredSessions} expired sessions, ${purged.expiredMessages} expired messages, ${purged.expiredRetained} expired retained${purged.orphans > 0 ? `, ${purged.orphans} orphan records` : ''}${recovery.uncleanShutdown ? '; the last broker did not stop cleanly' : ''}`;
    (recovery.uncleanShutdown || report.warnings.length > 0 ? this.log.warn.bind(this.log) : this.log.info.bind(this.log))(
      { path: report.path, durability: report.durability, durationMs: report.durationMs, warnings: report.warnings, staleLock: recovery.staleLock },
      reason,
    );
    this.gate.audit(null, {
      event: 'store',
      action: 'open',
      decision: 'allow',
      reason,
      detail: {
        type: report.type,
        durable: report.durable,
        sessions: loaded.sessions,
        queued: loaded.queued,
        inflight: loaded.inflight,
        retained: loaded.retained,
        wills: loaded.wills,
        purgedSessions: purged.expiredSessions,
        purgedMessages: purged.expiredMessages,
        purgedRetained: purged.expiredRetained,
        orphans: purged.orphans,
        uncleanShutdown: recovery.uncleanShutdown,
      },
    });
  }

  private async waitForConnections(ms: number): Promise<void> {
    const deadline = Date.now() + ms;
    while (this.connections.size > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  private accept(stream: Duplex, peer: PeerInfo): ConnectionHandle | void {
    if (!this.running) {
      stream.destroy();
      return;
    }
    const conn = new Connection(this, stream, peer);
    this.connections.add(conn);
    return conn;
  }

  /** Keep-alive and CONNECT deadlines, rate-limit throttles and slow consumers, checked by one timer for all connections. */
  private sweep(): void {
    const now = this.clock.tick();
    const connectDeadline = this.config.limits.connectTimeoutMs;
    this.delivery.sweepRefusals(now);
    this.delivery.sweepFlow(now);
    for (const conn of this.connections) {
      if (conn.state === 'connected') {
        // A client held back by its rate limit or by flow control is not read, so it cannot show activity: no keep-alive check then.
        if (conn.keepAlive > 0 && conn.readPausedUntil === 0 && conn.flowHolds === 0 && now - conn.lastSeen > conn.keepAlive * 1500) {
          conn.disconnect(ReasonCode.KeepAliveTimeout, 'keep-alive timeout'); // [MQTT-3.1.2-22]
          continue;
        }
        if (conn.readPausedUntil !== 0 && now >= conn.readPausedUntil) conn.resumeReading();
        if (conn.session !== null) this.delivery.checkSlowConsumer(conn, conn.session, now);
      } else if (conn.state !== 'closed' && now - conn.openedAt > connectDeadline) {
        this.log.info({ remote: conn.peer.remoteAddress, listener: conn.peer.listener }, `no CONNECT within limits.connectTimeoutMs (${connectDeadline} ms): closing`);
        conn.close({ code: ReasonCode.MaximumConnectTime, detail: 'no CONNECT within the deadline' });
        conn.stream.destroy();
      }
    }
  }

  // ── what a connection asks of its host ─────────────────────────────────────

  dispatch(conn: Connection, packet: Packet): void | Promise<void> {
    return dispatch(this, conn, packet);
  }

  auditBacklogged(): boolean {
    return this.gate.auditBacklogged();
  }

  holdForAudit(conn: Connection): void {
    this.gate.holdForAudit(conn);
  }

  securityClose(conn: Connection, action: string, reason: string): void {
    this.gate.disconnectForSecurity(conn, ReasonCode.NotAuthorized, action, reason);
  }

  drained(conn: Connection): void {
    if (conn.session !== null) this.delivery.pump(conn.session);
  }

  connectionOpened(conn: Client, principal: Principal): void {
    this.connected++;
    this.rateLimiter?.attach(conn, Date.now());
    this.stats.connectsAccepted++;
    // Checked first: the fields object would be made for nothing at a quieter level (per connect).
    if (this.log.isLevelEnabled('info')) {
      this.log.info(
        { clientId: conn.clientId, listener: conn.peer.listener, remote: conn.peer.remoteAddress, username: principal.username, method: principal.method, protocol: conn.version, ...(conn.bridge ? { bridge: true } : {}) },
        'client connected',
      );
    }
    this.gate.armCredentialExpiry(conn);
  }

  connectionClosed(conn: Connection, before: ConnectionState): void {
    this.connections.delete(conn);
    if (conn.expiryTimer !== null) clearTimeout(conn.expiryTimer);
    if (before === 'new') {
      // Refused before its CONNECT was handled (too large, malformed): the connect steps logged
      // nothing, so say why here. A socket that just went away is not worth a line.
      const r = conn.closeReason;
      if (r !== null && r.code !== ReasonCode.UnspecifiedError && r.code !== ReasonCode.MaximumConnectTime) {
        this.log.info({ listener: conn.peer.listener, remote: conn.peer.remoteAddress, cause: conn.describeClose() }, 'connection refused before CONNECT');
      }
      return;
    }
    if (before !== 'connected') return;
    this.connected--;
    this.rateLimiter?.release(conn);
    if (this.log.isLevelEnabled('info')) this.log.info({ clientId: conn.clientId, listener: conn.peer.listener, cause: conn.describeClose() }, 'client disconnected');
    const session = conn.session;
    this.wills.connectionEnded(conn, session);
    if (session !== null) this.sessions.detach(conn, session);
  }

  // ── reloads and messages from the broker itself ────────────────────────────

  /** Re-checks every session's subscriptions after a policy reload, and audits it (see recheck.ts). */
  async policyReloaded(report: PolicyReport): Promise<RecheckSummary> {
    const summary = await recheckAfterReload({ log: this.log, gate: this.gate, authorizers: this.gate.authorizers, sessions: this.sessions }, report);
    // After a failed reload the log's last word on the policy was "FAILED": say when that is over.
    if (report.ok && this.policyFailedSince !== 0) {
      this.log.info({ version: report.version, failedForMs: Date.now() - this.policyFailedSince }, 'policy reload succeeded after a failure: the new policy is in force');
    }
    this.policyFailedSince = report.ok ? 0 : this.policyFailedSince || Date.now();
    return summary;
  }

  recheckRestored(session: Session, conn: Client): Promise<number> {
    const principal = conn.principal;
    if (principal === null) return Promise.resolve(0);
    return recheckSession({ log: this.log, gate: this.gate, authorizers: this.gate.authorizers, sessions: this.sessions }, session, principal, conn, 'after a restart, before the session resumed');
  }

  /**
   * Adds a check asked before a will that waited is published: it names why the identity that
   * left the will no longer stands (banned, certificate revoked), or returns undefined.
   */
  addWillCheck(check: (conn: Client) => string | undefined): void {
    this.willChecks.push(check);
  }

  /** Publishes a message originating in the broker itself ($SYS, wills). */
  publishInternal(message: Message): number {
    return this.delivery.route(message);
  }
}
