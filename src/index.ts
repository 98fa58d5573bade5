/**
 * Portcullis public API.
 *
 * @example
 * import { createBroker } from 'portcullis';
 * const broker = createBroker({
 *   listeners: [{ type: 'tcp', host: '127.0.0.1', port: 1883, auth: ['anonymous'] }],
 *   authorizers: ['allow-all'],
 * });
 * const { listeners } = await broker.start();
 * // ...
 * await broker.stop();
 */
import { isLoopbackHost } from './config/auth-schema.ts';
import { AdminSpool, spoolDirFor } from './audit/admin-spool.ts';
import { AuditSetupError, createAuditSink } from './audit/sinks.ts';
import type { AuditEvent, AuditHealth, AuditSink } from './audit/types.ts';
import { AnonymousAuthenticator } from './auth/anonymous.ts';
import { AuthenticatorChain } from './auth/chain.ts';
import { StaticUsersAuthenticator } from './auth/static-users.ts';
import { CertificateAuthenticator } from './auth/certificate.ts';
import { PskAuthenticator } from './auth/psk.ts';
import { AuthGuard } from './auth/guard.ts';
import { Admission, type AdmissionStats, type BanReloadReport } from './admission/admission.ts';
import { BanFileError } from './admission/ban-file.ts';
import { AdmittingAuthenticator } from './admission/connect-gate.ts';
import { describeBan } from './admission/bans.ts';
import type { AdmitSocket } from './transport/admit.ts';
import { ReasonCode } from './protocol/reason-codes.ts';
import { JwtAuthenticator } from './auth/jwt/provider.ts';
import { PasswordAuthenticator } from './auth/password/provider.ts';
import { makeOwnProvider, ProviderSetupError } from './auth/providers.ts';
import type { Authenticator } from './auth/types.ts';
import { AllowAllAuthorizer } from './authz/allow-all.ts';
import { AuthorizerChain } from './authz/chain.ts';
import type { Authorizer, ReloadReport } from './authz/types.ts';
import { CasbinAuthorizer } from './authz/casbin/authorizer.ts';
import { listenerBindings, type ListenerBinding } from './authz/casbin/client-id.ts';
import { PolicyError } from './authz/casbin/policy-file.ts';
import { ModuleAuthorizer } from './authz/module.ts';
import type { AuthorizerConfig } from './config/schema.ts';
import { Broker, type BrokerStats, type ListenerAddress } from './broker/broker.ts';
import { VERSION } from './broker/sys.ts';
import { type Config, type ConfigInput, type ListenerConfig, type ProviderConfig, ConfigError, parseConfig } from './config/schema.ts';
import { createLogger, type Logger } from './log.ts';
import { StoreError } from './store/errors.ts';
import { createStore } from './store/factory.ts';
import type { Store } from './store/types.ts';
import { TcpListener } from './transport/tcp.ts';
import type { Listener } from './transport/types.ts';
import { WebSocketListener } from './transport/websocket.ts';
import { TlsListener } from './transport/tls.ts';
import { TlsFileError } from './transport/tls-material.ts';
import { ClusterError } from './cluster/errors.ts';
import { ClusterNode } from './cluster/node.ts';
import type { ClusterReloadReport, ClusterStatus, NodeReloadReport } from './cluster/status.ts';
import { ClusterSync, RELOAD_ALL } from './cluster/sync.ts';
import { DeliveryLatency } from './broker/stats.ts';
import type { OpsContext, ReadyCheck } from './http/context.ts';
import { explainPolicy } from './http/explain.ts';
import type { OpsServer } from './http/server.ts';
import { prepareOps } from './http/setup.ts';
import { teeAuditSink } from './metrics/audit-tee.ts';
import { MeteredAuthenticator } from './metrics/auth-meter.ts';
import { BrokerInspector, type ConnectionInfo } from './metrics/inspect.ts';
import { OpsMeters } from './metrics/meters.ts';
import { meterStore } from './metrics/store-meter.ts';

export { ReasonCode, reasonName } from './protocol/reason-codes.ts';
export { ConfigError, parseConfig } from './config/schema.ts';
export { MemoryStore } from './store/memory.ts';
// The LMDB store is chosen by configuration (store.type: lmdb, the default); its class is not part of
// the public API, so the published declarations do not depend on lmdb's own.
export { StoreError, StoreWriteError, type StoreErrorCode } from './store/errors.ts';
export { MemoryAuditSink, createAuditSink } from './audit/sinks.ts';
export { ChainedAuditSink } from './audit/chained-sink.ts';
export { FileAuditOutput, type AuditFileIO } from './audit/file-output.ts';
export { verifyAuditFiles } from './audit/verify.ts';
export type { Config, ConfigInput } from './config/schema.ts';
export type { Authenticator, ConnectRequest, Decision, Principal } from './auth/types.ts';
export type { AuthenticatorFactory } from './auth/module.ts';
export type { Authorizer, Action, AccessContext, ReloadReport } from './authz/types.ts';
export { CasbinAuthorizer, type CasbinAuthorizerOptions, type Explanation } from './authz/casbin/authorizer.ts';
export { PolicyError } from './authz/casbin/policy-file.ts';
export type { AuthorizerFactory } from './authz/module.ts';
export type { AuditEvent, AuditHealth, AuditSink } from './audit/types.ts';
export type { Store, StoredMessage, StoredSession, StoredSubscription, StoredInflight, StoreOpenReport, PurgeOptions, PurgeReport } from './store/types.ts';
export type { PeerInfo, Listener } from './transport/types.ts';
export type { BrokerInspector, BrokerCounts, ConnectionInfo, SessionInfo, SubscriptionInfo } from './metrics/inspect.ts';
export { VERSION };

export interface BrokerOptions {
  /** Where sessions and retained messages persist. Default: the configured `store` (durable, LMDB under data/store, unless `store.type: memory`). */
  store?: Store;
  /** Replaces the configured audit sink (for example a MemoryAuditSink in tests). */
  audit?: AuditSink;
  logger?: Logger;
  /** Extra authorizers, asked after the configured ones. */
  authorizers?: Authorizer[];
  /** Extra authentication providers per listener name, asked after the configured ones. */
  authenticators?: Record<string, Authenticator[]>;
  /** Writes what the command line spools (admin actions) into this broker's audit log; default true. With workers, one does. */
  adminSpool?: boolean;
  /**
   * In a cluster: the given `store` is one every node shares (as a Redis store is), so a session
   * moves between nodes through it. Default: only a Redis store counts as shared.
   */
  sharedStore?: boolean;
}

export interface RunningBroker {
  readonly config: Config;
  /** Starts every listener (and the operations HTTP listener when `http` is set); resolves with the bound addresses. */
  start(): Promise<{ listeners: ListenerAddress[]; http?: { host: string; port: number; protocol: 'http' | 'https' } }>;
  /** Graceful stop: v5 clients get DISCONNECT 0x8B, the audit log is flushed. */
  stop(): Promise<void>;
  readonly stats: BrokerStats;
  readonly connectedClients: number;
  /** Reloads every authorizer that can (the Casbin policy files); resolves after live subscriptions were re-checked. */
  reloadPolicy(trigger?: string): Promise<ReloadReport[]>;
  /** The audit sink's state: ok, pending, dropped and written records. */
  auditHealth(): AuditHealth;
  /** Re-reads every password file (SIGHUP, CLI); a malformed file keeps the last good one. Each outcome is audited. */
  reloadCredentials(trigger?: string): Promise<{ ok: boolean; file: string; detail: string }[]>;
  /** Re-reads the ban file (SIGHUP, API); a malformed file keeps the last good list. Audited, with each ban added or removed. */
  reloadBans(trigger?: string): BanReloadReport;
  /** Connections counted by admission control, refusals at accept time by cause, bans in force. */
  admissionStats(): AdmissionStats;
  /** Records a reload (policy, certificates, CRL, password file) in the audit log. */
  recordReload(what: string, report: { ok: boolean; version?: string; detail?: string; file?: string }): void;
  /** In a cluster: this node's view (Redis up or down, its lease, its partitions); null on a single node. Readiness reads it. */
  clusterStatus(): ClusterStatus | null;
  /**
   * Reloads the policy, password files, ban file, TLS certificates, CA bundles and CRLs (and in a
   * cluster the cluster key) here and, in a cluster, on every node; resolves with each node's
   * report. `what` limits what this node reloads (SIGHUP leaves TLS to the listeners' own handler).
   */
  reloadEverywhere(trigger?: string, what?: string[]): Promise<ClusterReloadReport>;
  /** A read-only view of connections, sessions, subscriptions and counts (plain snapshots, no secrets). */
  inspect(): BrokerInspector;
  /**
   * Disconnects the client with this connection id (from inspect()) as an administrative action:
   * v5 DISCONNECT 0x98, its will discarded, a `disconnect` audit record with the reason. Returns
   * what it was, or undefined when no such client is connected.
   */
  kick(connectionId: number, reason: string): ConnectionInfo | undefined;
  /** Reloads the certificates, keys, CAs, CRLs and PSK files of every TLS listener (and the operations listener's); each outcome is audited. */
  reloadCertificates(trigger?: string): Promise<{ listener: string; ok: boolean }[]>;
}

export type { ClusterReloadReport, ClusterStatus, NodeReloadReport } from './cluster/status.ts';

/** Builds a broker from a configuration object. Throws ConfigError (code ERR_PORTCULLIS_CONFIG) on a bad one. */
export function createBroker(input: ConfigInput | Config = {}, options: BrokerOptions = {}): RunningBroker {
  const config = parseConfig(input);
  // First, before anything that holds timers or files: a bad key file fails the build cleanly.
  const rawStore = options.store ?? makeStore(config);
  const log = options.logger ?? createLogger(config.log.level, undefined, config.log.format);
  // With the operations listener, the audit sink, the authentication chains and the store are
  // measured from outside (src/metrics): tees and meters, no hook in the broker.
  const meters = config.http !== undefined ? new OpsMeters(config) : undefined;
  const store = meters !== undefined ? meterStore(rawStore, meters.store) : rawStore;
  // TLS listeners record gate refusals through the broker, which is built below.
  const tlsAudit = (event: AuditEvent) => broker.gate.audit(null, event);
  // Admission control: caps, connect rate and IP bans at accept time; id bans and flapping at CONNECT.
  const admission = makeAdmission(config, (event) => broker.gate.audit(null, event), log);
  const listeners: Listener[] = config.listeners.map((l, i) => makeListener(l, config, i, log, tlsAudit, admission.admitter(l.name as string)));
  const chains = new Map<string, AuthenticatorChain>();
  // Failed-login protection is shared by every listener, and so is its cap on credential checks
  // (the thread pool is the process's): built even with authGuard.enabled false, which turns off
  // only the throttles and bans.
  const guard = new AuthGuard(config.authGuard, (event) => broker.gate.audit(null, event), log);
  const authProviders: Authenticator[] = [];
  config.listeners.forEach((l, li) => {
    const own = l.auth.map((p, pi) => makeProvider(p, config, `listeners[${li}].auth[${pi}]`));
    authProviders.push(...own);
    const providers = [...own, ...(options.authenticators?.[l.name as string] ?? [])];
    const args = [providers, config.authDeadlineMs, l.name as string, l.identity, guard, admission, config.admission.ipv6Prefix] as const;
    chains.set(l.name as string, meters !== undefined ? new MeteredAuthenticator(meters.auth, ...args) : new AdmittingAuthenticator(...args));
  });
  // The Casbin authorizer learns which listeners bind client ids to the identity, so that policy
  // lines keyed on the client id are refused (or limited to those listeners) at load.
  const bindings = listenerBindings(config, options.authenticators);
  const configured = config.authorizers.map((a, i) => makeAuthorizer(a, i, bindings));
  const authorizers = new AuthorizerChain([...configured, ...(options.authorizers ?? [])], config.authzDeadlineMs);
  let audit: AuditSink;
  try {
    audit = options.audit ?? makeAuditSink(config, log);
  } catch (err) {
    if (!(err instanceof AuditSetupError)) throw err;
    throw new ConfigError(`invalid configuration:\n  - ${err.key}: ${err.message}`, [{ key: err.key, message: err.message }]);
  }
  const cluster = config.cluster === undefined ? undefined : makeClusterNode(config, log, (event) => broker.gate.audit(null, event), options.sharedStore);
  const broker = new Broker(config, { log, store, audit: meters !== undefined ? teeAuditSink(audit, meters.audit) : audit, listeners, chains, authorizers, ...(cluster !== undefined ? { cluster, sys: cluster } : {}) });
  if (meters !== undefined) broker.stats.latency = new DeliveryLatency(config.http?.metrics.latencySampleEvery ?? 64, meters.deliveryLatency);
  const inspector = new BrokerInspector({ connections: broker.connections, sessions: broker.sessions, retainedCount: () => broker.delivery.retained.size });
  const opsSetup = config.http !== undefined ? prepareOps(config.http, (event) => broker.gate.audit(null, event), log) : undefined;
  let opsServer: OpsServer | undefined;
  let serving = false;
  // CLI actions that change state arrive as spool files beside the audit file (see admin-spool.ts).
  const adminSpool =
    options.audit === undefined && config.audit.sink !== 'none' && options.adminSpool !== false
      ? new AdminSpool(spoolDirFor(config.audit.path), (event) => broker.gate.audit(null, event), (message) => log.warn(message), {
          healthy: () => broker.gate.auditHealth().ok,
          flush: () => audit.flush(),
        })
      : undefined;
  // A ban added to the ban file also ends the live connections it covers.
  admission.onBansAdded((added) => {
    const covers = admission.coverer(added);
    for (const conn of [...broker.connections]) {
      const ban = covers({ clientId: conn.clientId, username: conn.principal?.username, remoteAddress: conn.peer.remoteAddress });
      if (ban !== undefined) broker.gate.disconnectForSecurity(conn, ReasonCode.AdministrativeAction, 'banned', `banned: ${describeBan(ban)}`);
    }
  });
  // A will that waited is not published for an identity banned or revoked in the meantime.
  broker.addWillCheck((conn) => admission.checkConnect(conn.clientId, conn.principal?.username, conn.peer.remoteAddress)?.detail);
  broker.addWillCheck((conn) => {
    const tlsInfo = conn.peer.tls;
    if (tlsInfo === undefined) return undefined;
    const listener = listeners.find((l) => l.name === conn.peer.listener);
    return listener instanceof TlsListener && listener.revokedNow(tlsInfo) ? 'its client certificate has been revoked (CRL)' : undefined;
  });
  // Policy reloads (file change, SIGHUP, CLI): re-check live subscriptions and audit, one at a time.
  let policyHandling: Promise<unknown> = Promise.resolve();
  for (const a of configured) {
    if (!(a instanceof CasbinAuthorizer)) continue;
    for (const w of a.warnings) log.warn(w);
    a.onReload((report) => {
      for (const w of report.warnings) log.warn(w);
      policyHandling = policyHandling.then(() => broker.policyReloaded(report)).catch((err: unknown) => log.error({ err: (err as Error).message }, 'policy re-check failed'));
    });
  }
  for (const p of authProviders) {
    if (p instanceof PasswordAuthenticator) {
      p.onReload((r) => {
        (r.ok ? log.info.bind(log) : log.error.bind(log))({ file: r.file, trigger: r.trigger }, `password file reload: ${r.detail}`);
        broker.gate.recordReload('password-file', { ok: r.ok, detail: `${r.trigger}: ${r.detail}`, file: r.file });
      });
    } else if (p instanceof JwtAuthenticator) {
      p.keys.onFetch((r) => {
        if (r.ok) return log.debug({ url: r.url, trigger: r.trigger }, `JWKS fetched: ${r.detail}`);
        log.warn({ url: r.url, trigger: r.trigger }, r.detail);
        broker.gate.recordReload('jwks', { ok: false, detail: `${r.trigger}: ${r.detail}`, file: r.url });
      });
    }
  }
  /** Reloads on this node what `what` names; each outcome is one line of the report. */
  const reloadHere = async (what: string[], trigger: string): Promise<NodeReloadReport> => {
    const items: NodeReloadReport['items'] = [];
    if (what.includes('policy')) {
      for (const a of configured) {
        if (a.reload === undefined) continue;
        const r = await (a instanceof CasbinAuthorizer ? a.reload(trigger) : a.reload());
        items.push({ what: a instanceof CasbinAuthorizer ? `policy (${a.id})` : 'authorizer module', ok: r.ok, detail: r.ok ? `version ${r.version ?? '?'}` : (r.detail ?? 'failed') });
      }
      await policyHandling;
    }
    if (what.includes('passwords')) {
      for (const p of authProviders) if (p instanceof PasswordAuthenticator) {
        const r = await p.reload(trigger);
        items.push({ what: `password file ${r.file}`, ok: r.ok, detail: r.detail });
      }
    }
    if (what.includes('bans') && config.admission.bans.file !== undefined) {
      const r = admission.reloadBans(trigger);
      items.push({ what: `ban file ${r.file}`, ok: r.ok, detail: r.detail });
    }
    if (what.includes('tls')) {
      for (const l of listeners) if (l instanceof TlsListener) items.push({ what: `tls ${l.name}`, ok: await l.reload(trigger), detail: 'certificate, key, CA bundle, CRLs' });
    }
    if (what.includes('cluster-key') && cluster !== undefined) {
      const r = cluster.reloadKeys();
      items.push({ what: 'cluster key', ok: r.ok, detail: r.detail });
    }
    return { node: config.cluster?.nodeId ?? 'local', ok: items.every((i) => i.ok), items };
  };
  const sync =
    cluster === undefined
      ? undefined
      : new ClusterSync({
          node: cluster,
          log,
          audit: (event) => broker.gate.audit(null, event),
          reload: reloadHere,
          applyBans: (bans, trigger) => admission.applyBans(bans, trigger),
          banList: () => admission.banList(),
          remoteFailure: (a) => guard.remoteFailure(a),
          drainUsage: () => broker.rateLimiter?.drainUsage() ?? null,
          debit: (identity, messages, bytes) => broker.rateLimiter?.debit(identity, messages, bytes),
        });
  if (cluster !== undefined && sync !== undefined) {
    cluster.extension = sync;
    guard.onFailure((a) => sync.failed(a));
    // A ban list reloaded here goes to every node (not one applied from another node).
    admission.onBansReloaded((bans, trigger) => {
      if (!trigger.startsWith('cluster:')) sync.bansReloaded(bans, trigger);
    });
    const perIdentity = config.rateLimits.perIdentity;
    if (perIdentity.messagesPerSecond > 0 || perIdentity.bytesPerSecond > 0) broker.rateLimiter?.shareUsage();
  }
  const api: RunningBroker = {
    config,
    async start() {
      for (const a of configured) {
        if (a instanceof CasbinAuthorizer || a instanceof ModuleAuthorizer) await a.init();
      }
      for (const p of authProviders) await p.init?.();
      admission.start();
      const bound = await broker.start().catch((err: unknown) => {
        admission.close();
        throw err;
      });
      adminSpool?.start();
      sync?.start();
      for (const l of config.listeners) {
        const addr = bound.find((b) => b.name === l.name);
        const names = l.auth.map((p) => p.provider);
        if (names.length === 0) {
          log.warn({ listener: l.name }, 'listener has no authentication provider: every client will be refused');
        } else if (names.includes('anonymous')) {
          const loopback = isLoopback(l.host);
          (loopback ? log.info.bind(log) : log.warn.bind(log))(
            { listener: l.name, host: addr?.host, port: addr?.port },
            loopback ? 'anonymous access is enabled for local clients on this listener' : 'anonymous access is enabled on a non-loopback listener',
          );
        }
      }
      if (config.authorizers.length === 0 && (options.authorizers ?? []).length === 0) {
        log.warn('authorizers is empty: every publish and subscribe is denied; add `authorizers: [allow-all]` or a casbin policy');
      }
      serving = true;
      if (opsSetup === undefined || meters === undefined || config.http === undefined) return { listeners: bound };
      try {
        const { startOpsServer } = await import('./http/server.ts');
        opsServer = await startOpsServer(opsContext(config.http, meters), opsSetup);
      } catch (err) {
        await api.stop();
        throw err;
      }
      const a = opsServer.address;
      log.info({ host: a.host, port: a.port, protocol: a.protocol }, `operations listener: ${a.protocol}://${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port} (/metrics, /healthz, /readyz${config.http.api.enabled ? ', /api/v1, /console/' : ''})`);
      return { listeners: bound, http: a };
    },
    async stop() {
      sync?.stop();
      serving = false;
      await opsServer?.close();
      opsServer = undefined;
      await adminSpool?.close();
      admission.close(); // first: its last refusal summaries go to the audit log before it is flushed
      await broker.stop();
      guard.close();
      for (const p of authProviders) await p.close?.();
    },
    async reloadCredentials(trigger = 'api') {
      const reports = [];
      for (const p of authProviders) if (p instanceof PasswordAuthenticator) reports.push(await p.reload(trigger));
      return reports;
    },
    async reloadPolicy(trigger = 'api') {
      const reports: ReloadReport[] = [];
      for (const a of configured) if (a.reload !== undefined) reports.push(await (a instanceof CasbinAuthorizer ? a.reload(trigger) : a.reload()));
      await policyHandling;
      return reports;
    },
    get stats() {
      return broker.stats;
    },
    get connectedClients() {
      return broker.connected;
    },
    auditHealth: () => broker.gate.auditHealth(),
    reloadBans: (trigger = 'api') => admission.reloadBans(trigger),
    admissionStats: () => admission.stats(),
    recordReload: (what, report) => broker.gate.recordReload(what, report),
    clusterStatus: () => cluster?.status() ?? null,
    async reloadEverywhere(trigger = 'api', what = RELOAD_ALL) {
      if (sync !== undefined) return sync.reloadEverywhere(trigger, what);
      const report = await reloadHere(what, trigger);
      return { ok: report.ok, nodes: [report], silent: [] };
    },
    inspect: () => inspector,
    kick,
    reloadCertificates,
  };
  return api;

  function kick(connectionId: number, reason: string): ConnectionInfo | undefined {
    for (const conn of broker.connections) {
      if (conn.state !== 'connected' || inspector.idOf(conn) !== connectionId) continue;
      const info = inspector.connection(connectionId);
      broker.gate.disconnectForSecurity(conn, ReasonCode.AdministrativeAction, 'kicked', reason);
      return info;
    }
    return undefined;
  }

  async function reloadCertificates(trigger = 'api'): Promise<{ listener: string; ok: boolean }[]> {
    const results: { listener: string; ok: boolean }[] = [];
    for (const l of listeners) if (l instanceof TlsListener) results.push({ listener: l.name, ok: await l.reload(trigger) });
    if (opsServer !== undefined && config.http?.tls !== undefined) {
      const r = opsServer.reloadTls();
      broker.gate.recordReload('http-tls', { ok: r.ok, detail: `${trigger}: ${r.detail}`, file: config.http.tls.cert });
      results.push({ listener: 'http', ok: r.ok });
    }
    return results;
  }

  /** What the operations listener reads and does, over this broker's parts. */
  function opsContext(http: NonNullable<Config['http']>, m: OpsMeters): OpsContext {
    return {
      config,
      http,
      log,
      version: VERSION,
      metrics: http.metrics.enabled
        ? {
            version: VERSION,
            stats: broker.stats,
            inspector,
            audit: m.audit,
            auditHealth: () => broker.gate.auditHealth(),
            admission: () => admission.stats(),
            auth: m.auth,
            store: m.store,
            tls: m.tls,
            deliveryLatency: m.deliveryLatency,
            http: m.http,
            cluster: () => cluster?.status() ?? null,
          }
        : undefined,
      httpMeter: m.http,
      auditCounters: m.audit,
      inspector,
      tlsDates: m.tls,
      kick,
      reloadPolicy: (trigger) => api.reloadPolicy(trigger),
      reloadPasswords: (trigger) => api.reloadCredentials(trigger),
      reloadCertificates,
      reloadBans: (trigger) => admission.reloadBans(trigger),
      banFile: config.admission.bans.file,
      activeBans: () => admission.bans.active(),
      explain: (req) => explainPolicy(configured, req),
      audit: (event) => broker.gate.audit(null, event),
      auditHealth: () => broker.gate.auditHealth(),
      flushAudit: () => flushWithin(audit, AUDIT_QUERY_FLUSH_MS),
      admissionStats: () => admission.stats(),
      ready: () => readiness(m),
    };
  }

  /** In a cluster: Redis answers and this node's lease is current (cross-node delivery works); a single node has no Redis to wait for. */
  function redisReadiness(): ReadyCheck {
    const st = cluster?.status();
    if (st === undefined) return { name: 'redis', ok: true, detail: 'not clustered' };
    const ok = st.redis === 'up' && st.leaseCurrent;
    const since = new Date(st.since).toISOString();
    return { name: 'redis', ok, detail: ok ? `cluster node ${st.nodeId}: Redis up since ${since}, ${st.liveNodes} live node(s)` : st.redis === 'down' ? `cluster node ${st.nodeId}: Redis does not answer since ${since}: cross-node delivery stopped` : `cluster node ${st.nodeId}: lease not renewed within cluster.leaseMs` };
  }

  function readiness(m: OpsMeters): ReadyCheck[] {
    const health = broker.gate.auditHealth();
    const storeReport = m.store.openReport;
    const storeError = m.store.lastError;
    return [
      { name: 'listeners', ok: serving, detail: serving ? `${listeners.length} MQTT listener(s) accepting` : 'not started or stopping' },
      {
        name: 'store',
        ok: m.store.healthy(),
        detail:
          storeReport === undefined ? 'not open' : m.store.healthy() ? `${storeReport.type} store open` : `${storeReport.type} store: ${m.store.closed ? 'closed' : `last ${storeError?.operation ?? 'operation'} failed: ${storeError?.message ?? ''}`}`,
      },
      { name: 'audit', ok: health.ok, detail: health.ok ? `sink healthy (${health.pending} pending)` : `sink failing: ${health.error ?? 'queue full'}` },
      redisReadiness(),
    ];
  }
}

/** How long an audit query waits for records already decided to reach the file before reading it. */
const AUDIT_QUERY_FLUSH_MS = 2000;

/** The sink's flush, or the deadline: a failing or busy sink never holds an admin call open. */
async function flushWithin(sink: AuditSink, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)));
  try {
    await Promise.race([sink.flush().catch(() => undefined), deadline]);
  } finally {
    clearTimeout(timer);
  }
}

function makeClusterNode(config: Config, log: Logger, audit: (event: AuditEvent) => void, sharedStore: boolean | undefined): ClusterNode {
  try {
    return new ClusterNode({ cluster: config.cluster as NonNullable<Config['cluster']>, limits: () => config.limits, log, audit, ...(sharedStore !== undefined ? { sharedStore } : {}) });
  } catch (err) {
    if (!(err instanceof ClusterError)) throw err;
    const key = err.code === 'ERR_CLUSTER_KEY' ? 'cluster.keyFile' : 'cluster.redis';
    throw new ConfigError(`invalid configuration:\n  - ${key}: ${err.message}`, [{ key, message: err.message }]);
  }
}

export function isLoopback(host: string): boolean {
  return isLoopbackHost(host);
}

function makeAdmission(config: Config, audit: (event: AuditEvent) => void, log: Logger): Admission {
  try {
    return new Admission(config, audit, log);
  } catch (err) {
    if (!(err instanceof BanFileError)) throw err;
    const key = 'admission.bans.file';
    throw new ConfigError(`invalid configuration:\n  - ${key}: ${err.message}`, [{ key, message: err.message }]);
  }
}

function makeListener(l: ListenerConfig, config: Config, index: number, log: Logger, audit: (event: AuditEvent) => void, admit: AdmitSocket): Listener {
  const name = l.name as string;
  switch (l.type) {
    case 'tls':
    case 'wss':
      try {
        return new TlsListener({
          ...l,
          name,
          kind: l.type,
          ...(l.type === 'wss' ? { path: l.path, maxPayload: config.limits.maxPacketSize } : {}),
          handshakeTimeoutMs: config.limits.connectTimeoutMs,
          admit,
          audit,
          log,
        });
      } catch (err) {
        if (!(err instanceof TlsFileError)) throw err;
        const key = `listeners[${index}].${err.option}`;
        throw new ConfigError(`invalid configuration:\n  - ${key}: ${err.message}`, [{ key, message: err.message }]);
      }
    case 'tcp':
      return new TcpListener({ name, host: l.host, port: l.port, admit });
    case 'ws':
      return new WebSocketListener({ name, host: l.host, port: l.port, path: l.path, maxPayload: config.limits.maxPacketSize, admit, upgradeTimeoutMs: config.limits.connectTimeoutMs });
  }
}

function makeAuthorizer(a: AuthorizerConfig, i: number, listeners: readonly ListenerBinding[]): Authorizer {
  switch (a.type) {
    case 'allow-all':
      return new AllowAllAuthorizer();
    case 'casbin':
      try {
        const { model, policy, watch, cacheSize, jwtTopics, subscribeDenyOverlap, clientIdRules } = a;
        return new CasbinAuthorizer({ model, policy, watch, cacheSize, jwtTopics, subscribeDenyOverlap, clientIdRules, listeners }, a.id);
      } catch (err) {
        if (!(err instanceof PolicyError)) throw err;
        const key = `authorizers[${i}].${err.file === a.model ? 'model' : 'policy'}`;
        throw new ConfigError(`invalid configuration:\n  - ${key}: ${err.message}`, [{ key, message: err.message }]);
      }
    case 'module':
      return new ModuleAuthorizer(a.path, a.options);
  }
}

function makeProvider(p: ProviderConfig, config: Config, key: string): Authenticator {
  switch (p.provider) {
    case 'password':
    case 'jwt':
    case 'module':
      try {
        return makeOwnProvider(p, config.credentialCache);
      } catch (err) {
        if (!(err instanceof ProviderSetupError)) throw err;
        throw new ConfigError(`invalid configuration:\n  - ${key}.${err.key}: ${err.message}`, [{ key: `${key}.${err.key}`, message: err.message }]);
      }
    case 'anonymous':
      return new AnonymousAuthenticator();
    case 'static-users':
      return new StaticUsersAuthenticator(p.users);
    case 'certificate':
      return new CertificateAuthenticator(p);
    case 'psk':
      return new PskAuthenticator(p);
  }
}

function makeStore(config: Config): Store {
  try {
    return createStore(config.store);
  } catch (err) {
    if (!(err instanceof StoreError)) throw err;
    const key = 'store.encryption.keyFile';
    throw new ConfigError(`invalid configuration:\n  - ${key}: ${err.message}`, [{ key, message: err.message }]);
  }
}

function makeAuditSink(config: Config, log: Logger): AuditSink {
  return createAuditSink(config.audit, log);
}

