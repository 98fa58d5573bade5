/**
 * The store, timed from outside: the broker's Store is wrapped when metrics are on, so every call
 * is timed and every failed write counted, and the report of `open()` is kept for /readyz and the
 * store gauges. The wrapper inherits from the store it wraps (Object.create), so anything the
 * broker reads from the store other than these methods is the store's own.
 */
import type { Store, StoreOpenReport } from '../store/types.ts';
import { Buckets, LabeledCounts, STORE_BUCKETS } from './counts.ts';

/** Every method of the Store interface: a method added to the interface must be added here (the type checks it). */
const STORE_METHODS = [
  'open',
  'close',
  'purgeExpired',
  'loadSessions',
  'getSession',
  'saveSession',
  'deleteSession',
  'setSessionExpiry',
  'putSubscription',
  'deleteSubscription',
  'putInflight',
  'deleteInflight',
  'enqueue',
  'dequeue',
  'putAwaitingRelease',
  'deleteAwaitingRelease',
  'putWill',
  'deleteWill',
  'loadRetained',
  'putRetained',
  'deleteRetained',
] as const satisfies readonly (keyof Store)[];
type Missing = Exclude<keyof Store, (typeof STORE_METHODS)[number]>;
const everyMethod: [Missing] extends [never] ? true : Missing = true;
void everyMethod;

export class StoreMeter {
  readonly durations = new Map<string, Buckets>();
  readonly errors = new LabeledCounts(['operation'], 32);
  openReport: StoreOpenReport | undefined;
  /** When open() resolved, and when it was closed: ready in between. */
  openedAt = 0;
  closed = false;
  lastError: { at: number; operation: string; message: string } | undefined;
  lastSuccessAt = 0;

  /** True while the store is open and its last operation did not fail (or one succeeded since). */
  healthy(): boolean {
    if (this.openReport === undefined || this.closed) return false;
    return this.lastError === undefined || this.lastSuccessAt > this.lastError.at;
  }

  private buckets(op: string): Buckets {
    let b = this.durations.get(op);
    if (b === undefined) this.durations.set(op, (b = new Buckets(STORE_BUCKETS)));
    return b;
  }

  settle(op: string, startedAt: number, error: unknown): void {
    const now = performance.now();
    this.buckets(op).observe((now - startedAt) / 1000);
    if (error === undefined) {
      this.lastSuccessAt = now;
      return;
    }
    this.errors.add([op]);
    this.lastError = { at: now, operation: op, message: (error as Error)?.message ?? String(error) };
  }
}

/** The store with every call timed into `meter`; the promises returned are the store's own. */
export function meterStore(store: Store, meter: StoreMeter): Store {
  const wrapped = Object.create(store) as Store;
  for (const op of STORE_METHODS) {
    const fn = store[op] as (...args: unknown[]) => Promise<unknown>;
    (wrapped as unknown as Record<string, unknown>)[op] = (...args: unknown[]): Promise<unknown> => {
      const startedAt = performance.now();
      let p: Promise<unknown>;
      try {
        p = fn.apply(store, args);
      } catch (err) {
        meter.settle(op, startedAt, err);
        throw err;
      }
      // Observed beside the caller: the caller's own handling of the promise is unchanged.
      p.then(
        (value) => {
          meter.settle(op, startedAt, undefined);
          if (op === 'open') {
            meter.openReport = value as StoreOpenReport;
            meter.openedAt = Date.now();
            meter.closed = false;
          } else if (op === 'close') meter.closed = true;
        },
        (err: unknown) => meter.settle(op, startedAt, err ?? new Error('rejected')),
      );
      return p;
    };
  }
  return wrapped;
}
