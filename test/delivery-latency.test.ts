/**
 * The publish-to-deliver sampler (src/broker/stats.ts): the deliveries of a timed message made in
 * one synchronous run share one clock reading and one weighted observation; later deliveries of
 * it get their own; untimed messages count nothing.
 */
import test from 'ava';
import { setTimeout as delay } from 'node:timers/promises';
import { DeliveryLatency } from '../src/broker/stats.ts';

function recorder() {
  const seen: { seconds: number; weight: number }[] = [];
  return { seen, histogram: { observe: (seconds: number, weight: number) => void seen.push({ seconds, weight }) } };
}

test('a fan-out run of one timed message is one observation weighted by its deliveries', async (t) => {
  const r = recorder();
  const l = new DeliveryLatency(1, r.histogram);
  const m = {};
  l.start(m);
  for (let i = 0; i < 50; i++) l.end(m);
  t.is(r.seen.length, 0, 'observed when the run ends, not per delivery');
  await Promise.resolve();
  t.is(r.seen.length, 1);
  t.is(r.seen[0]!.weight, 50);
  t.true(r.seen[0]!.seconds >= 0 && r.seen[0]!.seconds < 0.05);
});

test('a delivery of the timed message in a later turn is timed again, with the time it waited', async (t) => {
  const r = recorder();
  const l = new DeliveryLatency(1, r.histogram);
  const m = {};
  l.start(m);
  l.end(m);
  await delay(60);
  l.end(m);
  l.end(m);
  await Promise.resolve();
  t.deepEqual(r.seen.map((o) => o.weight), [1, 2]);
  t.true(r.seen[1]!.seconds >= 0.05, `the later run waited (${r.seen[1]!.seconds} s)`);
  t.true(r.seen[0]!.seconds < 0.05);
});

test('timing the next message closes the previous run first, each with its own weight', async (t) => {
  const r = recorder();
  const l = new DeliveryLatency(1, r.histogram);
  const a = {};
  const b = {};
  l.start(a);
  l.end(a);
  l.end(a);
  l.start(b); // same synchronous run: a's deliveries are observed now
  l.end(b);
  t.deepEqual(r.seen.map((o) => o.weight), [2]);
  await Promise.resolve();
  t.deepEqual(r.seen.map((o) => o.weight), [2, 1]);
});

test('one message in `every` is timed; a later delivery of an earlier timed message counts `every` times', async (t) => {
  const r = recorder();
  const l = new DeliveryLatency(4, r.histogram);
  const msgs = Array.from({ length: 8 }, () => ({}));
  for (const m of msgs) l.start(m); // the 4th and 8th are timed
  l.end(msgs[0]!); // untimed: counted towards a look-up, not observed
  l.end(msgs[1]!);
  l.end(msgs[2]!);
  await Promise.resolve();
  t.is(r.seen.length, 0);
  l.end(msgs[3]!); // 4th delivery since the last look-up: looks msgs[3] up, timed earlier
  t.deepEqual(r.seen.map((o) => o.weight), [4]);
  l.end(msgs[7]!); // the current timed message
  await Promise.resolve();
  t.deepEqual(r.seen.map((o) => o.weight), [4, 1]);
});
