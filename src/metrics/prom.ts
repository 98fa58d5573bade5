/**
 * The prom-client adapter: the only file that knows prom-client. The broker's series are read
 * when Prometheus scrapes (each family is a callback over counters the broker and the tees keep
 * as plain numbers), so nothing on the message path calls into prom-client. The Node.js process
 * series (event-loop lag, GC, memory, CPU) are prom-client's defaults, collected once per process
 * however many brokers it runs.
 */
import client from 'prom-client';
import type { Sample } from './counts.ts';

export interface HistogramSample {
  labels: Record<string, string>;
  /** Upper bounds in seconds, ascending. */
  bounds: readonly number[];
  /** Per bucket, not cumulative; one more than `bounds` (+Inf). */
  counts: readonly number[];
  sum: number;
  count: number;
}

export type Family =
  | { name: string; help: string; type: 'counter' | 'gauge'; collect(): Sample[] }
  | { name: string; help: string; type: 'histogram'; collect(): HistogramSample[] };

interface PromValue {
  value: number;
  labels: Record<string, string>;
  metricName?: string;
}

/** A family whose samples come from a callback, in the shape prom-client's registry reads. */
class CallbackMetric {
  readonly aggregator = 'sum';
  constructor(private readonly family: Family) {}
  get name(): string {
    return this.family.name;
  }
  get help(): string {
    return this.family.help;
  }
  get type(): string {
    return this.family.type;
  }
  async get(): Promise<{ name: string; help: string; type: string; aggregator: string; values: PromValue[] }> {
    const f = this.family;
    const values: PromValue[] = [];
    if (f.type === 'histogram') {
      for (const h of f.collect()) {
        let cumulative = 0;
        h.bounds.forEach((le, i) => {
          cumulative += h.counts[i] ?? 0;
          values.push({ metricName: `${f.name}_bucket`, labels: { ...h.labels, le: String(le) }, value: cumulative });
        });
        values.push({ metricName: `${f.name}_bucket`, labels: { ...h.labels, le: '+Inf' }, value: h.count });
        values.push({ metricName: `${f.name}_sum`, labels: h.labels, value: h.sum });
        values.push({ metricName: `${f.name}_count`, labels: h.labels, value: h.count });
      }
    } else {
      for (const s of f.collect()) values.push({ labels: s.labels, value: s.value });
    }
    return { name: f.name, help: f.help, type: f.type, aggregator: this.aggregator, values };
  }
}

let processRegistry: client.Registry | undefined;

/** The process's own series (prom-client's defaults): made once, shared by every broker in the process. */
function processMetrics(): client.Registry {
  if (processRegistry === undefined) {
    processRegistry = new client.Registry();
    // The event-loop delay is sampled every 50 ms (20 samples a second): at prom-client's 10 ms
    // the sampling timer alone cost an idle broker about 5 ms of CPU a second.
    client.collectDefaultMetrics({ register: processRegistry, eventLoopMonitoringPrecision: 50 });
  }
  return processRegistry;
}

export class MetricsRegistry {
  private readonly registry = new client.Registry();
  private readonly names = new Set<string>();

  constructor(private readonly withProcess = true) {
    if (withProcess) processMetrics();
  }

  add(family: Family): void {
    if (this.names.has(family.name)) throw new Error(`metric ${family.name} registered twice`);
    this.names.add(family.name);
    // The registry reads get(), name, help, type and aggregator: the shape CallbackMetric has.
    this.registry.registerMetric(new CallbackMetric(family) as unknown as client.Metric);
  }

  /** The families this registry serves (the broker's own, without the process defaults). */
  get familyNames(): string[] {
    return [...this.names];
  }

  /** Prometheus text exposition format 0.0.4. */
  readonly contentType = client.Registry.PROMETHEUS_CONTENT_TYPE;

  async text(): Promise<string> {
    const own = await this.registry.metrics();
    return this.withProcess ? `${own}\n${await processMetrics().metrics()}` : own;
  }
}
