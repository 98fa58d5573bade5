import test from 'ava';
import { setImmediate as tick } from 'node:timers/promises';
import { GcSampler } from '../src/metrics/gc-sampler.ts';
import { MetricsRegistry } from '../src/metrics/prom.ts';

/** Makes young garbage for `ms`, yielding to the event loop so the observer's callback runs. */
async function churn(ms: number): Promise<void> {
  const end = Date.now() + ms;
  let keep: unknown[] = [];
  while (Date.now() < end) {
    for (let i = 0; i < 20_000; i++) keep.push({ i, s: `x${i}` });
    keep = [];
    await tick();
  }
}

function minor(s: GcSampler): { count: number; sum: number; counts: readonly number[] } | undefined {
  const h = s.family().collect().find((x) => 'bounds' in x && x.labels.kind === 'minor');
  return h === undefined || !('bounds' in h) ? undefined : { count: h.count, sum: h.sum, counts: h.counts };
}

test('collections seen in a sampling window count everyMs / onMs times each; none are counted outside the windows', async (t) => {
  // Wide margins around the window's edges: timers run late on a loaded machine.
  const s = new GcSampler(200, 3000).start();
  const started = Date.now();
  t.teardown(() => s.stop());
  await churn(150);
  const inWindow = minor(s);
  t.truthy(inWindow, 'young collections seen while the observer is connected');
  t.true(inWindow!.count > 0 && inWindow!.count % 15 === 0, `count ${inWindow!.count} is a multiple of the weight 15`);
  t.true(inWindow!.sum > 0);
  t.is(inWindow!.counts.reduce((a, b) => a + b, 0), inWindow!.count, 'every observation is in one bucket');
  await new Promise((r) => setTimeout(r, 800 - (Date.now() - started))); // the window (200 ms) has closed
  const closed = minor(s)!.count;
  await churn(1000); // about 0.8 to 1.8 s: between windows
  t.is(minor(s)!.count, closed, 'nothing is counted while the observer is disconnected');
  await new Promise((r) => setTimeout(r, Math.max(0, 3050 - (Date.now() - started)))); // the next window opens at 3 s
  await churn(150);
  t.true(minor(s)!.count > closed, 'the next window counts again');
});

test('always on (onMs = everyMs): every collection counts once, and stop() ends it', async (t) => {
  const s = new GcSampler(500, 500).start();
  await churn(300);
  const seen = minor(s)?.count ?? 0;
  t.true(seen > 0);
  s.stop();
  await churn(200);
  t.is(minor(s)?.count ?? 0, seen);
  t.throws(() => new GcSampler(0, 10), { instanceOf: RangeError });
  t.throws(() => new GcSampler(20, 10), { instanceOf: RangeError });
});

test('the registry writes one nodejs_gc_duration_seconds family, the sampled one, with samples once collections ran', async (t) => {
  const r = new MetricsRegistry(true);
  await churn(300);
  const text = await r.text();
  t.is(text.match(/^# TYPE nodejs_gc_duration_seconds histogram$/gm)?.length, 1);
  t.regex(text, /^# HELP nodejs_gc_duration_seconds .*Sampled: collections are observed 1 s in every 10 s, each counting 10 times\.$/m);
  const count = Number(/^nodejs_gc_duration_seconds_count\{kind="minor"\} (\d+)$/m.exec(text)?.[1]);
  t.true(count > 0 && count % 10 === 0, `minor count ${count}`);
  t.regex(text, /^nodejs_gc_duration_seconds_bucket\{kind="minor",le="\+Inf"\} \d+$/m);
});
