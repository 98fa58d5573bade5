/**
 * The two-generation bounded map behind the guard's tables and the decision, credential and
 * token caches: the bound holds under churn, touched entries survive the swaps, and the oldest
 * untouched entries go first.
 */
import test from 'ava';
import { Generations } from '../src/util/generations.ts';

test('never holds more than the bound, however many keys come', (t) => {
  for (const max of [1, 2, 3, 10, 1000]) {
    const g = new Generations<number>(max);
    for (let i = 0; i < max * 7 + 3; i++) {
      g.set(`k${i}`, i);
      t.true(g.size <= max, `max ${max}: ${g.size} entries after ${i + 1} inserts`);
    }
    t.true(g.size >= Math.min(max, Math.floor(max / 2)), `max ${max}: keeps at least the young half`);
    t.is(g.get(`k${max * 7 + 2}`), max * 7 + 2, 'the newest entry is there');
  }
});

test('an entry that is used survives churn; get() alone does not keep it', (t) => {
  const used = new Generations<string>(100);
  const peeked = new Generations<string>(100);
  used.set('hot', 'h');
  peeked.set('hot', 'h');
  for (let i = 0; i < 10_000; i++) {
    used.set(`k${i}`, 'x');
    peeked.set(`k${i}`, 'x');
    t.is(used.use('hot'), 'h', `lost after ${i + 1} inserts`);
    peeked.get('hot');
  }
  t.is(peeked.get('hot'), undefined, 'untouched entries age out');
});

test('the oldest untouched entries go first; set() moves a key to the young generation', (t) => {
  const g = new Generations<number>(4);
  g.set('a', 1);
  g.set('b', 2);
  g.set('c', 3); // young {a, b} becomes old
  g.set('a', 10); // a back into the young generation: {c, a}; old {b}
  g.set('d', 4); // young full: old {c, a}, young {d}; b dropped
  t.is(g.get('b'), undefined);
  t.is(g.get('a'), 10);
  t.is(g.get('c'), 3);
  t.is(g.size, 3);
  g.delete('a');
  t.is(g.get('a'), undefined);
  t.is(g.size, 2);
  g.clear();
  t.is(g.size, 0);
});

test('a bound of 1 keeps exactly the latest key', (t) => {
  const g = new Generations<number>(1);
  g.set('a', 1);
  t.is(g.use('a'), 1);
  g.set('b', 2);
  t.is(g.get('a'), undefined);
  t.is(g.get('b'), 2);
  t.is(g.size, 1);
});
