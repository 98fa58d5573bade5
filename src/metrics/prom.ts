/**
 * The prom-client adapter: the only file that knows prom-client. The broker's series are read
 * when Prometheus scrapes (each family is a callback over counters the broker and the tees keep
 * as plain numbers), so nothing on the message path calls into prom-client. The Node.js process
 * series (event-loop lag, GC, memory, CPU) are prom-client's defaults, collected once per process
 * however many brokers it runs.
 *
 * The text is written here, in one synchronous pass, rather than by prom-client's registry: a
 * scrape runs once a second or so, too rarely for V8 to optimise the registry's code, and the
 * registry builds several objects per sample and keys a module-wide WeakMap with a fresh one each
 * time, garbage that a broker under load pays for in its young collections (docs/performance.md,
 * "Metrics"). The output is the same text format 0.0.4, byte for byte.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import client from 'prom-client';
import { GcSampler } from './gc-sampler.ts';
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

/** A sample as prom-client's own metrics give them (label values may be numbers, e.g. `le`). */
interface PromValue {
  value: number;
  labels?: Record<string, string | number>;
  metricName?: string;
}

function escapeText(s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

function escapeLabel(v: string | number): string {
  return typeof v === 'string' ? escapeText(v).replace(/"/g, '\\"') : String(v);
}

function valueText(v: number): string {
  if (Number.isNaN(v)) return 'Nan';
  if (!Number.isFinite(v)) return v < 0 ? '-Inf' : '+Inf';
  return `${v}`;
}

/** `{a="x",b="y"}`, `{...,le="0.5"}` with an extra label, or nothing when there is no label. */
function labelText(labels: Record<string, string | number> | undefined, le?: string): string {
  let out = '';
  if (labels !== undefined) {
    for (const name in labels) {
      const v = labels[name];
      if (v === undefined) continue;
      out += `${out === '' ? '' : ','}${name}="${escapeLabel(v)}"`;
    }
  }
  if (le !== undefined) out += `${out === '' ? '' : ','}le="${le}"`;
  return out === '' ? '' : `{${out}}`;
}

/** A family's header lines, then one line per sample; families are separated by a blank line. */
function header(name: string, help: string, type: string): string {
  const n = escapeText(name);
  return `# HELP ${n} ${escapeText(help)}\n# TYPE ${n} ${type}`;
}

function familyText(f: Family, head: string): string {
  let out = head;
  if (f.type === 'histogram') {
    for (const h of f.collect()) {
      let cumulative = 0;
      for (let i = 0; i < h.bounds.length; i++) {
        cumulative += h.counts[i] ?? 0;
        out += `\n${f.name}_bucket${labelText(h.labels, String(h.bounds[i]))} ${valueText(cumulative)}`;
      }
      const labels = labelText(h.labels);
      out += `\n${f.name}_bucket${labelText(h.labels, '+Inf')} ${valueText(h.count)}`;
      out += `\n${f.name}_sum${labels} ${valueText(h.sum)}`;
      out += `\n${f.name}_count${labels} ${valueText(h.count)}`;
    }
  } else {
    for (const s of f.collect()) out += `\n${f.name}${labelText(s.labels)} ${valueText(s.value)}`;
  }
  return out;
}

let processRegistry: client.Registry | undefined;

/** prom-client defaults left out: each scrape builds an array of every handle, request or resource (every socket among them), about 5 ms a scrape at 3,000 connections; portcullis_connections counts the clients. */
export const O_N_PROCESS_FAMILIES: readonly string[] = [
  'nodejs_active_handles',
  'nodejs_active_handles_total',
  'nodejs_active_requests',
  'nodejs_active_requests_total',
  'nodejs_active_resources',
  'nodejs_active_resources_total',
];

/**
 * prom-client's default process series, one module each, without those left out: the O(N) ones
 * above, `process_open_fds` (counted below instead) and `gc` (GcSampler instead). prom-client's
 * `collectDefaultMetrics` takes no list, and its GC observer, once connected, cannot be reached to
 * disconnect it; so the modules are loaded one by one (prom-client 15 has no `exports` map).
 */
const PROCESS_MODULES: readonly string[] = ['processCpuTotal', 'processStartTime', 'osMemoryHeap', 'processMaxFileDescriptors', 'eventLoopLag', 'heapSizeAndUsed', 'heapSpacesSizeAndUsed', 'version'];

let gcSampler: GcSampler | undefined;

/** The process's own series (prom-client's defaults and the sampled GC histogram): made once, shared by every broker in the process. */
function processMetrics(): client.Registry {
  if (processRegistry === undefined) {
    processRegistry = new client.Registry();
    const load = createRequire(import.meta.url);
    // The event-loop delay is sampled every 50 ms (20 samples a second): at prom-client's 10 ms
    // the sampling timer alone cost an idle broker about 5 ms of CPU a second.
    const config = { register: processRegistry, eventLoopMonitoringPrecision: 50 };
    for (const name of PROCESS_MODULES) (load(`prom-client/lib/metrics/${name}`) as (registry: client.Registry, config: object) => void)(processRegistry, config);
    // prom-client lists /proc/self/fd on every scrape (3.5 ms with 3,000 descriptors): counted
    // here from the directory's size instead (Linux 6.2 and later report the count there, O(1)),
    // or, on older kernels, listed at most once every OPEN_FDS_REFRESH_MS.
    new client.Gauge({
      name: 'process_open_fds',
      help: 'Number of open file descriptors.',
      registers: [processRegistry],
      collect() {
        const n = openFds(Date.now());
        if (n !== null) this.set(n);
      },
    });
    gcSampler = new GcSampler().start();
  }
  return processRegistry;
}

/** At most this often the descriptor directory is listed where its size does not give the count (kernels before 6.2). */
export const OPEN_FDS_REFRESH_MS = 10_000;
let listedFds: { at: number; count: number } | null = null;

/** The process's open file descriptors, or null when /proc cannot tell. */
export function openFds(now: number): number | null {
  try {
    const size = fs.statSync('/proc/self/fd').size;
    if (size > 0) return size;
    if (listedFds === null || now - listedFds.at >= OPEN_FDS_REFRESH_MS) {
      // Minus the descriptor the listing itself used.
      listedFds = { at: now, count: fs.readdirSync('/proc/self/fd').length - 1 };
    }
    return listedFds.count;
  } catch {
    return null;
  }
}

/** prom-client's process series, collected by prom-client and written here. */
async function processText(registry: client.Registry): Promise<string> {
  const parts: string[] = [];
  for (const metric of registry.getMetricsAsArray()) {
    const m = (await (metric as unknown as { get(): Promise<unknown> }).get()) as { name: string; help: string; type: string; values?: PromValue[] };
    let out = header(m.name, m.help, m.type);
    for (const v of m.values ?? []) out += `\n${v.metricName ?? m.name}${labelText(v.labels)} ${valueText(v.value)}`;
    parts.push(out);
  }
  if (gcSampler !== undefined) {
    const gc = gcSampler.family();
    parts.push(familyText(gc, header(gc.name, gc.help, gc.type)));
  }
  return parts.join('\n\n');
}

export class MetricsRegistry {
  private readonly families: { family: Family; head: string }[] = [];
  private readonly names = new Set<string>();

  constructor(private readonly withProcess = true) {
    if (withProcess) processMetrics();
  }

  add(family: Family): void {
    if (this.names.has(family.name)) throw new Error(`metric ${family.name} registered twice`);
    this.names.add(family.name);
    this.families.push({ family, head: header(family.name, family.help, family.type) });
  }

  /** The families this registry serves (the broker's own, without the process defaults). */
  get familyNames(): string[] {
    return [...this.names];
  }

  /** Prometheus text exposition format 0.0.4. */
  readonly contentType = client.Registry.PROMETHEUS_CONTENT_TYPE;

  /** The broker's families, read in one synchronous pass, so that they describe one moment. */
  ownText(): string {
    let out = '';
    for (const { family, head } of this.families) out += `${out === '' ? '' : '\n\n'}${familyText(family, head)}`;
    return `${out}\n`;
  }

  async text(): Promise<string> {
    const own = this.ownText();
    return this.withProcess ? `${own}\n${await processText(processMetrics())}\n` : own;
  }
}
