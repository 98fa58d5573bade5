/**
 * Every series Portcullis exposes, in one table (docs/operations.md lists the same). Each family
 * reads, when scraped, what the broker and the tees already count: BrokerStats, the inspection
 * view, the audit tee, the authentication and store meters, the TLS files. Label values are
 * bounded: listeners, providers, reason codes and code-defined causes, never a client id, user
 * or topic.
 */
import type { AdmissionStats } from '../admission/admission.ts';
import type { AuditHealth } from '../audit/types.ts';
import type { BrokerStats } from '../broker/stats.ts';
import { ACCESS_EVENTS, type AuditCounters } from './audit-tee.ts';
import type { AuthMeter } from './auth-meter.ts';
import { type Buckets, LabeledCounts, type Sample } from './counts.ts';
import type { BrokerInspector } from './inspect.ts';
import type { Family, HistogramSample } from './prom.ts';
import type { StoreMeter } from './store-meter.ts';
import type { TlsFileDates } from './tls-files.ts';

/** What the families read. */
export interface MetricsSource {
  version: string;
  stats: BrokerStats;
  inspector: BrokerInspector;
  audit: AuditCounters;
  auditHealth(): AuditHealth;
  admission(): AdmissionStats;
  auth: AuthMeter;
  store: StoreMeter;
  tls: TlsFileDates;
  deliveryLatency: Buckets;
  http: HttpMeter;
  /** In a cluster: whether Redis answers; absent or null on a single node. */
  cluster?: () => { redis: 'up' | 'down' } | null;
}

/** Requests to the operations HTTP listener, by route pattern (never the URL), method and status. */
export class HttpMeter {
  readonly requests = new LabeledCounts(['route', 'method', 'status'], 64);
}

const QOS = ['0', '1', '2'] as const;

function one(value: number, labels: Record<string, string> = {}): Sample[] {
  return [{ labels, value }];
}

function byQos(values: readonly number[]): Sample[] {
  return QOS.map((qos, i) => ({ labels: { qos }, value: values[i] ?? 0 }));
}

function histogram(b: Buckets, labels: Record<string, string> = {}): HistogramSample {
  return { labels, bounds: b.bounds, counts: b.counts, sum: b.sum, count: b.count };
}

/**
 * The families. The Redis ones are declared on a single node too, with no samples, so a
 * dashboard may query them whether or not the broker runs in a cluster (docs/cluster.md).
 */
export function families(src: MetricsSource): Family[] {
  // One walk over connections and sessions per scrape, shared by the gauges that need it: the
  // registry asks every family in the same turn, and the walk is forgotten at the next one.
  let counts: ReturnType<BrokerInspector['counts']> | undefined;
  const current = () => {
    if (counts === undefined) {
      counts = src.inspector.counts();
      setImmediate(() => (counts = undefined));
    }
    return counts;
  };
  const s = src.stats;
  return [
    { name: 'portcullis_info', help: 'Always 1; the version label names the running Portcullis.', type: 'gauge', collect: () => one(1, { version: src.version }) },

    // ── connections ──
    {
      name: 'portcullis_connections',
      help: 'Connected MQTT clients, by listener and protocol version.',
      type: 'gauge',
      collect: () => current().byListener.map((r) => ({ labels: { listener: r.listener, protocol: r.protocol }, value: r.connections })),
    },
    {
      name: 'portcullis_connects_total',
      help: 'CONNECTs decided, by result (accepted, refused) and reason code; refused ones that wrote no connect record (a refused will) have reason_code "unaudited".',
      type: 'counter',
      collect: () => {
        const out: Sample[] = [{ labels: { result: 'accepted', reason_code: '0x00' }, value: s.connectsAccepted }];
        let audited = 0;
        for (const r of src.audit.connectsRefused.samples()) {
          audited += r.value;
          out.push({ labels: { result: 'refused', reason_code: r.labels.reason_code as string }, value: r.value });
        }
        if (s.connectsRefused > audited) out.push({ labels: { result: 'refused', reason_code: 'unaudited' }, value: s.connectsRefused - audited });
        return out;
      },
    },
    {
      name: 'portcullis_admission_refusals_total',
      help: 'Sockets refused at accept time, before TLS or MQTT, by cause (banned, total-cap, listener-cap, ip-cap, rate).',
      type: 'counter',
      collect: () => Object.entries(src.admission().refused).map(([reason, value]) => ({ labels: { reason }, value })),
    },
    {
      name: 'portcullis_authentication_decisions_total',
      help: "Authentication verdicts, by provider (or the admission check that answered: ban, flapping) and result (allow, deny, abstain).",
      type: 'counter',
      collect: () => src.auth.verdicts.samples(),
    },
    {
      name: 'portcullis_authentication_duration_seconds',
      help: "Time a listener's authentication chain took to decide a CONNECT or re-authentication, by result.",
      type: 'histogram',
      collect: () => [histogram(src.auth.durations.allow, { result: 'allow' }), histogram(src.auth.durations.deny, { result: 'deny' })],
    },
    {
      name: 'portcullis_authorization_decisions_total',
      help: 'Authorization decisions by action (publish, subscribe, unsubscribe, deliver, will) and result; allowed ones only for the actions audit.allowed records.',
      type: 'counter',
      collect: () =>
        ACCESS_EVENTS.flatMap((action) => {
          const c = src.audit.accessCounts(action);
          return [
            { labels: { action, result: 'allow' }, value: c.allow },
            { labels: { action, result: 'deny' }, value: c.deny },
          ];
        }),
    },
    {
      name: 'portcullis_disconnects_total',
      help: 'Clients disconnected by the broker for a security or protective reason (kicked, banned, credentials-expired, denial-limit, ...).',
      type: 'counter',
      collect: () => src.audit.disconnects.samples(),
    },

    // ── messages ──
    { name: 'portcullis_messages_received_total', help: 'PUBLISH packets received from clients (allowed or not), by QoS.', type: 'counter', collect: () => byQos(s.receivedByQos) },
    { name: 'portcullis_messages_sent_total', help: 'PUBLISH packets written to subscribers (re-sends included), by QoS.', type: 'counter', collect: () => byQos(s.sentByQos) },
    { name: 'portcullis_received_payload_bytes_total', help: 'Payload bytes of the PUBLISH packets received, by QoS.', type: 'counter', collect: () => byQos(s.receivedBytesByQos) },
    { name: 'portcullis_sent_payload_bytes_total', help: 'Payload bytes of the PUBLISH packets written to subscribers, by QoS.', type: 'counter', collect: () => byQos(s.sentBytesByQos) },
    {
      name: 'portcullis_messages_dropped_total',
      help: 'Messages or deliveries lost, by reason: queue_full (QoS 0 dropped), queue_refused (QoS 1/2 refused for a subscriber), rate_limited, expired, too_large.',
      type: 'counter',
      collect: () => [
        { labels: { reason: 'queue_full' }, value: s.queueDroppedQos0 },
        { labels: { reason: 'queue_refused' }, value: s.queueRefusedQos12 },
        { labels: { reason: 'rate_limited' }, value: s.publishesRateLimited },
        { labels: { reason: 'expired' }, value: s.messagesExpired },
        { labels: { reason: 'too_large' }, value: s.droppedTooLarge },
      ],
    },
    { name: 'portcullis_slow_consumer_disconnects_total', help: 'Clients disconnected because their queue stayed full (limits.slowConsumerTimeoutMs).', type: 'counter', collect: () => one(s.slowConsumersDisconnected) },
    { name: 'portcullis_connections_throttled_total', help: 'Times a connection was paused by a rate limit.', type: 'counter', collect: () => one(s.connectionsThrottled) },
    {
      name: 'portcullis_publish_to_deliver_seconds',
      help: 'Sampled time from the end of a PUBLISH handler to each write of the message to a subscriber (queued time included; retained copies and re-sends excluded).',
      type: 'histogram',
      collect: () => [histogram(src.deliveryLatency)],
    },

    // ── sessions and queues ──
    {
      name: 'portcullis_sessions',
      help: 'Sessions held, by state (connected, offline).',
      type: 'gauge',
      collect: () => {
        const c = current();
        return [
          { labels: { state: 'connected' }, value: c.sessionsConnected },
          { labels: { state: 'offline' }, value: c.sessions - c.sessionsConnected },
        ];
      },
    },
    { name: 'portcullis_subscriptions', help: 'Subscriptions across all sessions.', type: 'gauge', collect: () => one(current().subscriptions) },
    { name: 'portcullis_queued_messages', help: 'Deliveries waiting in session queues (offline sessions, full in-flight windows).', type: 'gauge', collect: () => one(current().queued) },
    { name: 'portcullis_inflight_messages', help: 'QoS 1/2 deliveries sent and not yet acknowledged.', type: 'gauge', collect: () => one(current().inflight) },
    { name: 'portcullis_retained_messages', help: 'Retained messages held.', type: 'gauge', collect: () => one(current().retained) },

    // ── audit ──
    { name: 'portcullis_audit_records_total', help: 'Audit records handed to the sink, by event and decision.', type: 'counter', collect: () => auditRecordSamples(src.audit) },
    { name: 'portcullis_audit_written_records_total', help: 'Audit records the sink wrote.', type: 'counter', collect: () => one(src.auditHealth().written) },
    { name: 'portcullis_audit_dropped_records_total', help: 'Audit records the sink dropped (only with a full queue; each drop is itself recorded).', type: 'counter', collect: () => one(src.auditHealth().dropped) },
    { name: 'portcullis_audit_backlog_records', help: 'Audit records waiting to be written.', type: 'gauge', collect: () => one(src.auditHealth().pending) },
    { name: 'portcullis_audit_sink_healthy', help: '1 while the audit sink can write, 0 while it fails (audit.failMode then applies).', type: 'gauge', collect: () => one(src.auditHealth().ok ? 1 : 0) },
    { name: 'portcullis_audit_holds_total', help: 'Times a connection stopped reading because the audit log was behind.', type: 'counter', collect: () => one(s.auditHolds) },

    // ── bans and reloads ──
    { name: 'portcullis_bans_active', help: 'Bans in force (the ban file).', type: 'gauge', collect: () => one(src.admission().bans) },
    { name: 'portcullis_ban_changes_total', help: 'Bans added, updated, removed or expired, and flapping bans, by event (ban, unban) and action.', type: 'counter', collect: () => src.audit.bans.samples() },
    { name: 'portcullis_reloads_total', help: 'Reloads of policies, password files, certificates, CRLs, PSK and ban files, by what and result (ok, failed).', type: 'counter', collect: () => src.audit.reloads.samples() },

    // ── TLS ──
    { name: 'portcullis_tls_handshake_failures_total', help: 'TLS connections refused by the TLS gate, by listener and reason (expired, unknown-ca, revoked, ...).', type: 'counter', collect: () => src.audit.tls.samples() },
    {
      name: 'portcullis_tls_certificate_expiry_timestamp_seconds',
      help: "When a listener's certificate expires (kind server) or the first certificate of its CA bundle does (kind ca), as a Unix time; days left: (value - time()) / 86400.",
      type: 'gauge',
      collect: () =>
        src.tls
          .read()
          .filter((d) => d.kind !== 'crl' && d.expiresAt !== null)
          .map((d) => ({ labels: { listener: d.listener, kind: d.kind }, value: (d.expiresAt as number) / 1000 })),
    },
    {
      name: 'portcullis_tls_crl_next_update_timestamp_seconds',
      help: "The earliest nextUpdate of a listener's CRLs, as a Unix time (the CRL is stale after it).",
      type: 'gauge',
      collect: () =>
        src.tls
          .read()
          .filter((d) => d.kind === 'crl' && d.expiresAt !== null)
          .map((d) => ({ labels: { listener: d.listener }, value: (d.expiresAt as number) / 1000 })),
    },

    // ── store ──
    { name: 'portcullis_store_up', help: '1 while the store is open and its last operation succeeded (or one did since the last failure).', type: 'gauge', collect: () => one(src.store.healthy() ? 1 : 0) },
    {
      name: 'portcullis_store_info',
      help: 'Always 1 once the store is open; labels name its type and durability.',
      type: 'gauge',
      collect: () => {
        const r = src.store.openReport;
        return r === undefined ? [] : one(1, { type: r.type, durable: String(r.durable), durability: r.durability ?? 'none' });
      },
    },
    {
      name: 'portcullis_store_operation_duration_seconds',
      help: 'Time store operations took, by operation (enqueue, putInflight, saveSession, ...).',
      type: 'histogram',
      collect: () => [...src.store.durations.entries()].sort(([a], [b]) => (a < b ? -1 : 1)).map(([operation, b]) => histogram(b, { operation })),
    },
    { name: 'portcullis_store_errors_total', help: 'Store operations that failed, by operation.', type: 'counter', collect: () => src.store.errors.samples() },
    {
      name: 'portcullis_redis_up',
      help: 'In a cluster (docs/cluster.md): 1 while Redis answers, 0 while it does not (cross-node delivery stopped). No samples on a single node.',
      type: 'gauge',
      collect: () => {
        const st = src.cluster?.() ?? null;
        return st === null ? [] : one(st.redis === 'up' ? 1 : 0);
      },
    },
    { name: 'portcullis_redis_command_duration_seconds', help: 'Reserved for the time cluster Redis commands take: not measured yet, no samples.', type: 'histogram', collect: () => [] },

    // ── the operations listener itself ──
    { name: 'portcullis_http_requests_total', help: 'Requests to the operations HTTP listener, by route pattern, method and status.', type: 'counter', collect: () => src.http.requests.samples() },
  ];
}

function auditRecordSamples(a: AuditCounters): Sample[] {
  const out = a.events.samples();
  for (const event of ACCESS_EVENTS) {
    const c = a.accessCounts(event);
    if (c.allow > 0) out.push({ labels: { event, decision: 'allow' }, value: c.allow });
    if (c.deny > 0) out.push({ labels: { event, decision: 'deny' }, value: c.deny });
  }
  return out;
}
