/**
 * FlappingDetector's bound on tracked client ids: beyond maxTracked the least recently active
 * entries that are not banned are dropped, bans are kept, and eviction keeps working through
 * long streams of new client ids (it goes on from where the previous one stopped).
 */
import test from 'ava';
import { EXPIRED_NOW, FlappingDetector } from '../src/admission/flapping.ts';

const settings = { maxConnects: 3, windowMs: 60_000, banMs: 300_000, maxTracked: 100 };

test('beyond maxTracked the least recently active ids go first; a touched id stays', (t) => {
  let now = 1_000;
  const f = new FlappingDetector(settings, () => now);
  for (let i = 0; i < 100; i++) f.connected(`old-${i}`);
  now += 10;
  f.connected('old-0'); // touched: now the most recent
  for (let i = 0; i < 50; i++) f.connected(`new-${i}`);
  t.is(f.tracked, 100);
  // old-1 .. old-50 were the 50 least recent; old-0 was touched, so it stays.
  f.connected('old-0');
  f.connected('old-0'); // third connect within the window: a ban, so old-0 was still counted
  t.true(f.check('old-0') > 0);
  f.connected('old-1');
  f.connected('old-1');
  t.is(f.check('old-1'), 0, 'old-1 was evicted, so its count started again');
});

test('bans are never evicted, however many new ids come', (t) => {
  let now = 1_000;
  const f = new FlappingDetector(settings, () => now);
  for (let k = 0; k < 3; k++) for (const id of ['a', 'b', 'c']) f.connected(id);
  for (const id of ['a', 'b', 'c']) t.true(f.check(id) > 0);
  for (let i = 0; i < 50_000; i++) {
    if (i % 1000 === 0) now += 1;
    f.connected(`stream-${i}`);
  }
  t.is(f.tracked, 100);
  for (const id of ['a', 'b', 'c']) t.true(f.check(id) > 0, `${id} lost its ban`);
  // The most recent ids are the ones tracked.
  f.connected('stream-49999');
  t.truthy(f.connected('stream-49999'), 'the latest id kept its count (third connect bans it)');
});

test('a table full of bans stops evicting instead of looping: the bans stay, a new id is not kept', (t) => {
  const now = 1_000;
  const f = new FlappingDetector({ ...settings, maxTracked: 10 }, () => now);
  for (let i = 0; i < 10; i++) for (let k = 0; k < 3; k++) f.connected(`ban-${i}`);
  t.is(f.tracked, 10);
  // The bound wins over counting: with every slot a ban, a new id is dropped as soon as it is set.
  for (let k = 0; k < 5; k++) t.is(f.connected('fresh'), undefined);
  t.is(f.tracked, 10);
  for (let i = 0; i < 10; i++) t.true(f.check(`ban-${i}`) > 0, `ban-${i} lost its ban`);
});

test('the sweep drops ids idle for a window, keeps active ones and bans, and reports each expired ban once', (t) => {
  let now = 1_000;
  const f = new FlappingDetector({ ...settings, windowMs: 1_000, banMs: 5_000 }, () => now);
  for (let i = 0; i < 20; i++) f.connected(`idle-${i}`);
  for (let k = 0; k < 3; k++) f.connected('flappy'); // banned until 6,000
  now = 1_500;
  for (let i = 0; i < 5; i++) f.connected(`active-${i}`);
  now = 2_100; // idle-* and flappy's connects are older than the window; active-* are not
  t.deepEqual(f.sweep(), []);
  t.is(f.tracked, 6, 'the 20 idle ids are gone; flappy (banned) and the 5 active ids stay');
  t.true(f.check('flappy') > 0);
  now = 6_000;
  t.deepEqual(f.sweep(), ['flappy'], 'the expired ban is reported by the sweep');
  t.deepEqual(f.sweep(), [], 'and only once');
  t.is(f.tracked, 0);
});

test('check() reports an expired ban once; the sweep then does not report it again', (t) => {
  let now = 1_000;
  const f = new FlappingDetector({ ...settings, banMs: 5_000 }, () => now);
  for (let k = 0; k < 3; k++) f.connected('flappy');
  t.true(f.check('flappy') > now);
  t.is(f.check('other'), 0);
  now = 7_000;
  t.is(f.check('flappy'), EXPIRED_NOW);
  t.is(f.check('flappy'), 0);
  t.deepEqual(f.sweep(), []);
});

test('a ban that expired and was then evicted is still reported by the sweep', (t) => {
  let now = 1_000;
  const f = new FlappingDetector({ ...settings, maxTracked: 100, banMs: 5_000 }, () => now);
  for (let k = 0; k < 3; k++) f.connected('flappy');
  now = 7_000; // expired, not yet reported
  for (let i = 0; i < 200; i++) f.connected(`new-${i}`); // evicts flappy among the oldest
  t.is(f.check('flappy'), 0);
  t.deepEqual(f.sweep(), ['flappy']);
});
