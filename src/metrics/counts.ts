/**
 * Counters kept by label values, with a bound on how many distinct values each label may take.
 * Label values come from the code (event names, refusal causes), the configuration (listener and
 * provider names) or the reason-code table, never from clients (client ids, users, topics); the
 * bound is the second line of defence: past it, a new value is counted under `other`, so a bug
 * or a hostile peer cannot grow a series set without limit.
 */

/** The value a label gets once its family has seen this many distinct values. */
export const OVERFLOW_LABEL = 'other';

export interface Sample {
  labels: Record<string, string>;
  value: number;
}

export class LabeledCounts {
  private readonly values = new Map<string, Sample>();
  private readonly seen: Set<string>[];

  constructor(
    readonly labelNames: readonly string[],
    private readonly maxValuesPerLabel = 64,
  ) {
    this.seen = labelNames.map(() => new Set<string>());
  }

  /** Adds `by` to the series of these label values (in labelNames order). */
  add(values: readonly string[], by = 1): void {
    const bounded = values.map((v, i) => this.bound(i, v));
    // JSON of the array: no separator a value could contain makes two series collide.
    const key = JSON.stringify(bounded);
    const hit = this.values.get(key);
    if (hit !== undefined) {
      hit.value += by;
      return;
    }
    const labels: Record<string, string> = {};
    this.labelNames.forEach((name, i) => (labels[name] = bounded[i] as string));
    this.values.set(key, { labels, value: by });
  }

  private bound(i: number, v: string): string {
    const seen = this.seen[i] as Set<string>;
    if (seen.has(v)) return v;
    if (seen.size >= this.maxValuesPerLabel) return OVERFLOW_LABEL;
    seen.add(v);
    return v;
  }

  /** The value of one series (0 when it was never counted). */
  get(values: readonly string[]): number {
    return this.values.get(JSON.stringify(values))?.value ?? 0;
  }

  samples(): Sample[] {
    return [...this.values.values()].map((s) => ({ labels: { ...s.labels }, value: s.value }));
  }

  get size(): number {
    return this.values.size;
  }
}

/**
 * A histogram with fixed buckets (upper bounds in seconds). Counts are kept per bucket and made
 * cumulative when read, as Prometheus wants them.
 */
export class Buckets {
  readonly counts: number[];
  sum = 0;
  count = 0;

  constructor(readonly bounds: readonly number[]) {
    this.counts = new Array<number>(bounds.length + 1).fill(0);
  }

  /** Counts one observation, or `weight` when it stands for that many (a sample of one in `weight`). */
  observe(seconds: number, weight = 1): void {
    let i = 0;
    while (i < this.bounds.length && seconds > (this.bounds[i] as number)) i++;
    this.counts[i]! += weight;
    this.sum += seconds * weight;
    this.count += weight;
  }
}

/** Latency buckets from 100 µs to a minute: a delivery from the same event-loop turn up to a long queue. */
export const LATENCY_BUCKETS: readonly number[] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** Authentication: a cached or certificate decision (microseconds) up to an argon2 hash or a JWKS fetch near the deadline. */
export const AUTH_BUCKETS: readonly number[] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** Store operations: an in-memory write up to a slow disk flush. */
export const STORE_BUCKETS: readonly number[] = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5];

/** `0x87` for a reason code: the label a reason code gets (the table is closed: at most 256 values). */
export function reasonLabel(code: number | undefined): string {
  if (code === undefined || !Number.isInteger(code) || code < 0 || code > 255) return 'none';
  return `0x${code.toString(16).padStart(2, '0')}`;
}
