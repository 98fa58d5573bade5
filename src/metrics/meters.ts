/**
 * Everything metrics count, made together when the operations listener is configured: the tees
 * and meters createBroker puts in front of the audit sink, the authentication chains and the
 * store, the sampled delivery latency, the HTTP request counters and the TLS file dates.
 */
import type { Config } from '../config/schema.ts';
import { AuditCounters } from './audit-tee.ts';
import { AuthMeter } from './auth-meter.ts';
import { HttpMeter } from './collectors.ts';
import { Buckets, LATENCY_BUCKETS } from './counts.ts';
import { StoreMeter } from './store-meter.ts';
import { TlsFileDates, type TlsFileRef } from './tls-files.ts';

export class OpsMeters {
  readonly audit = new AuditCounters();
  readonly auth = new AuthMeter();
  readonly store = new StoreMeter();
  readonly deliveryLatency = new Buckets(LATENCY_BUCKETS);
  readonly http = new HttpMeter();
  readonly tls: TlsFileDates;

  constructor(config: Config) {
    this.tls = new TlsFileDates(tlsFileRefs(config));
  }
}

/** The certificate, CA and CRL files of every TLS listener and of the operations listener. */
export function tlsFileRefs(config: Config): TlsFileRef[] {
  const refs: TlsFileRef[] = [];
  for (const l of config.listeners) {
    if (l.type !== 'tls' && l.type !== 'wss') continue;
    const listener = l.name as string;
    refs.push({ listener, kind: 'server', file: l.cert });
    if (l.ca !== undefined) refs.push({ listener, kind: 'ca', file: l.ca });
    for (const file of l.crl?.files ?? []) refs.push({ listener, kind: 'crl', file });
  }
  const t = config.http?.tls;
  if (t !== undefined) {
    refs.push({ listener: 'http', kind: 'server', file: t.cert });
    if (t.ca !== undefined) refs.push({ listener: 'http', kind: 'ca', file: t.ca });
    if (t.crl !== undefined) refs.push({ listener: 'http', kind: 'crl', file: t.crl });
  }
  return refs;
}
