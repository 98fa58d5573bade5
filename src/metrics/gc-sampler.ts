/**
 * `nodejs_gc_duration_seconds`, sampled: a performance observer is connected for `onMs` out of
 * every `everyMs`, and each collection it sees counts `everyMs / onMs` times (count, sum and
 * bucket alike), so rates over a scrape interval longer than `everyMs` estimate the true ones.
 *
 * Why not prom-client's observer, connected all the time: for every collection Node 20 builds a
 * performance entry in JavaScript (with a detail object and deprecated getters), queues an
 * immediate, and prom-client then hashes a label object per observation. A broker under load
 * runs tens to hundreds of young collections a second, and profiles put the observer at 0.4 to
 * 0.8 % of its CPU (docs/performance.md, "Metrics on against off"). Sampled one second in ten, a
 * tenth of that. Also,
 * prom-client counts only the first entry of each batch the observer is handed, so it under-counts
 * when two collections fall between two turns of the event loop; every entry counts here.
 */
import { constants, PerformanceObserver, type PerformanceEntry } from 'node:perf_hooks';
import { Buckets } from './counts.ts';
import type { Family } from './prom.ts';

/** prom-client's buckets for this series, so that dashboards built for it read it alike. */
export const GC_BUCKETS: readonly number[] = [0.001, 0.01, 0.1, 1, 2, 5];

const KINDS: readonly [number, string][] = [
  [constants.NODE_PERFORMANCE_GC_MINOR, 'minor'],
  [constants.NODE_PERFORMANCE_GC_MAJOR, 'major'],
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL, 'incremental'],
  [constants.NODE_PERFORMANCE_GC_WEAKCB, 'weakcb'],
];

export class GcSampler {
  private readonly byKind = new Map<number, { kind: string; buckets: Buckets }>();
  private readonly observer: PerformanceObserver;
  private readonly weight: number;
  private timer: NodeJS.Timeout | null = null;
  private offTimer: NodeJS.Timeout | null = null;

  constructor(
    readonly onMs = 1_000,
    readonly everyMs = 10_000,
  ) {
    if (!(onMs > 0) || !(everyMs >= onMs)) throw new RangeError('GcSampler: need 0 < onMs <= everyMs');
    this.weight = everyMs / onMs;
    for (const [code, kind] of KINDS) this.byKind.set(code, { kind, buckets: new Buckets(GC_BUCKETS) });
    this.observer = new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) this.observe(entry);
    });
  }

  private observe(entry: PerformanceEntry): void {
    const kind = (entry as { detail?: { kind?: number } }).detail?.kind;
    const slot = kind === undefined ? undefined : this.byKind.get(kind);
    if (slot !== undefined) slot.buckets.observe(entry.duration / 1000, this.weight);
  }

  /** Starts sampling at once (first window now), then every `everyMs`. Timers do not keep the process alive. */
  start(): this {
    if (this.timer !== null) return this;
    this.window();
    this.timer = setInterval(() => this.window(), this.everyMs);
    this.timer.unref();
    return this;
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    if (this.offTimer !== null) clearTimeout(this.offTimer);
    this.timer = this.offTimer = null;
    this.observer.disconnect();
  }

  private window(): void {
    if (this.everyMs === this.onMs) {
      this.observer.observe({ entryTypes: ['gc'] });
      return;
    }
    this.observer.observe({ entryTypes: ['gc'] });
    this.offTimer = setTimeout(() => {
      this.offTimer = null;
      // Entries queued for the callback belong to this window: disconnect() would drop them.
      for (const entry of this.observer.takeRecords()) this.observe(entry);
      this.observer.disconnect();
    }, this.onMs);
    this.offTimer.unref();
  }

  /** The series, for the registry's text. */
  family(): Family {
    const seconds = (ms: number) => `${ms / 1000} s`;
    return {
      name: 'nodejs_gc_duration_seconds',
      help: `Garbage collection duration by kind, one of major, minor, incremental or weakcb. Sampled: collections are observed ${seconds(this.onMs)} in every ${seconds(this.everyMs)}, each counting ${this.weight} times.`,
      type: 'histogram',
      collect: () => [...this.byKind.values()].filter((s) => s.buckets.count > 0).map((s) => ({ labels: { kind: s.kind }, bounds: s.buckets.bounds, counts: s.buckets.counts, sum: s.buckets.sum, count: s.buckets.count })),
    };
  }
}
