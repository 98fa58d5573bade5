/**
 * What the operations listener needs from the broker: a narrow, typed surface that createBroker
 * fills in (src/index.ts). The HTTP code never sees the broker's classes.
 */
import type { AdmissionStats, BanReloadReport } from '../admission/admission.ts';
import type { BanEntry } from '../admission/ban-file.ts';
import type { AuditEvent, AuditHealth } from '../audit/types.ts';
import type { ReloadReport } from '../authz/types.ts';
import type { Action } from '../authz/types.ts';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import type { AuditCounters } from '../metrics/audit-tee.ts';
import type { HttpMeter } from '../metrics/collectors.ts';
import type { BrokerInspector, ConnectionInfo } from '../metrics/inspect.ts';
import type { MetricsSource } from '../metrics/collectors.ts';
import type { TlsFileDates } from '../metrics/tls-files.ts';

export type HttpConfig = NonNullable<Config['http']>;

/** One check of /readyz. */
export interface ReadyCheck {
  name: 'listeners' | 'store' | 'audit' | 'policy' | 'redis';
  ok: boolean;
  detail: string;
}

export interface ExplainRequest {
  action: Action;
  topic: string;
  user?: string;
  client?: string;
  roles: string[];
  qos: 0 | 1 | 2;
  retain: boolean;
  listener?: string;
  shareGroup?: string;
}

export interface ExplainAnswer {
  authorizer: string;
  decision: 'allow' | 'deny';
  rule: string | null;
  detail: string;
  nearMisses: { rule: string; why: string }[];
  policyVersion: string;
}

export interface OpsContext {
  config: Config;
  http: HttpConfig;
  log: Logger;
  version: string;
  /** What the /metrics families read; undefined when http.metrics.enabled is false. */
  metrics: MetricsSource | undefined;
  httpMeter: HttpMeter;
  auditCounters: AuditCounters;
  inspector: BrokerInspector;
  tlsDates: TlsFileDates;
  /** Ends a connection as an administrative action (v5 DISCONNECT 0x98, will discarded, audited). */
  kick(id: number, reason: string): ConnectionInfo | undefined;
  reloadPolicy(trigger: string): Promise<ReloadReport[]>;
  reloadPasswords(trigger: string): Promise<{ ok: boolean; file: string; detail: string }[]>;
  reloadCertificates(trigger: string): Promise<{ listener: string; ok: boolean }[]>;
  reloadBans(trigger: string): BanReloadReport;
  /** The ban file (admission.bans.file), when one is configured. */
  banFile: string | undefined;
  activeBans(): BanEntry[];
  /** The decision of every Casbin authorizer of the broker, with the rule behind it. */
  explain(req: ExplainRequest): ExplainAnswer[];
  /** Writes one audit record (the admin API's own). */
  audit(event: AuditEvent): void;
  auditHealth(): AuditHealth;
  /** Writes out the audit records already decided, so that a query sees them; bounded by a deadline. */
  flushAudit(): Promise<void>;
  admissionStats(): AdmissionStats;
  ready(): ReadyCheck[];
}
