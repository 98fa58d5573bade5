/**
 * The router's trie holds this node's subscriptions and, in a cluster, the other partitions'
 * interest (src/broker/router.ts): one walk per publish finds both. Differential property test
 * (fast-check) against the independent matcher in test/authz-reference.ts: after any sequence of
 * subscribes, unsubscribes, remote adds and removes, partitions dropped (a node that left or
 * expired) and replaced (interest read again on join), every topic matches exactly the sessions
 * and partitions whose filters match it, each once; `$` topics are not matched by leading
 * wildcards; `$share` groups elsewhere are reported by their full name with their partitions;
 * and a match without `remote` (a message from another node) names no partition. Seeded; set
 * ROUTER_SEED to replay a failure.
 */
import test from 'ava';
import fc from 'fast-check';
import { Router } from '../src/broker/router.ts';
import { Session } from '../src/broker/session.ts';
import type { StoredSubscription } from '../src/store/types.ts';
import { refMatches } from './authz-reference.ts';

const SEED = Number(process.env.ROUTER_SEED ?? 20261207);

const level = fc.constantFrom('a', 'b', '', '$SYS', '+');
const plainFilter = fc
  .tuple(fc.array(level, { minLength: 1, maxLength: 3 }), fc.boolean())
  .map(([levels, hash]) => (hash ? [...levels, '#'] : levels).join('/'))
  .filter((f) => f !== '')
  .chain((f) => fc.constantFrom(f, '#', '+'));
/** A plain filter, or `$share/{g}/{filter}` (a malformed one, `$share/g`, travels as a plain filter). */
const anyFilter = fc.oneof(plainFilter, fc.tuple(fc.constantFrom('g1', 'g2'), plainFilter).map(([g, f]) => `$share/${g}/${f}`), fc.constant('$share/g1'));
const topic = fc
  .array(fc.constantFrom('a', 'b', '', '$SYS', 'zz'), { minLength: 1, maxLength: 4 })
  .map((l) => l.join('/'))
  .filter((t) => t !== '');

const PARTITIONS = ['p1', 'p2', 'p3'];
const SESSIONS = ['s1', 's2'];

type Op =
  | { op: 'sub' | 'unsub'; session: number; filter: string }
  | { op: 'add' | 'remove'; p: string; filter: string }
  | { op: 'drop'; p: string }
  | { op: 'replace'; p: string; filters: string[] };

const op: fc.Arbitrary<Op> = fc.oneof(
  { arbitrary: fc.record({ op: fc.constantFrom('sub' as const, 'unsub' as const), session: fc.nat(SESSIONS.length - 1), filter: plainFilter }), weight: 3 },
  { arbitrary: fc.record({ op: fc.constant('add' as const), p: fc.constantFrom(...PARTITIONS), filter: anyFilter }), weight: 5 },
  { arbitrary: fc.record({ op: fc.constant('remove' as const), p: fc.constantFrom(...PARTITIONS), filter: anyFilter }), weight: 3 },
  { arbitrary: fc.record({ op: fc.constant('drop' as const), p: fc.constantFrom(...PARTITIONS) }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('replace' as const), p: fc.constantFrom(...PARTITIONS), filters: fc.array(anyFilter, { maxLength: 4 }) }), weight: 1 },
);

function sub(filter: string): StoredSubscription {
  return { filter, qos: 1, noLocal: false, retainAsPublished: false, retainHandling: 0 };
}

/** The reference: `$share/g/f` → g and f, else null (as the cluster announces filters). */
function shareOf(filter: string): { group: string; inner: string } | null {
  const m = /^\$share\/([^/]+)\/(.+)$/.exec(filter);
  return m === null ? null : { group: m[1] as string, inner: m[2] as string };
}

test('one walk finds local subscribers and the partitions elsewhere exactly as a reference matcher does, after any sequence of interest changes', (t) => {
  fc.assert(
    fc.property(fc.array(op, { maxLength: 40 }), fc.array(topic, { minLength: 1, maxLength: 8 }), (ops, topics) => {
      const router = new Router();
      const sessions = SESSIONS.map((id) => new Session(id, 'u', 5, 0));
      const local = SESSIONS.map(() => new Set<string>());
      const remote = new Map<string, Set<string>>(PARTITIONS.map((p) => [p, new Set()]));
      for (const o of ops) {
        switch (o.op) {
          case 'sub':
            router.add(sessions[o.session] as Session, o.filter, sub(o.filter));
            local[o.session]?.add(o.filter);
            break;
          case 'unsub':
            router.remove(sessions[o.session] as Session, o.filter);
            local[o.session]?.delete(o.filter);
            break;
          case 'add':
            router.remoteInterest.add(o.p, o.filter);
            remote.get(o.p)?.add(o.filter);
            break;
          case 'remove':
            router.remoteInterest.remove(o.p, o.filter);
            remote.get(o.p)?.delete(o.filter);
            break;
          case 'drop':
            router.remoteInterest.dropPartition(o.p);
            remote.get(o.p)?.clear();
            break;
          case 'replace':
            router.remoteInterest.replacePartition(o.p, o.filters);
            remote.set(o.p, new Set(o.filters));
            break;
        }
      }
      for (const p of PARTITIONS) t.deepEqual(router.remoteInterest.filters(p).sort(), [...(remote.get(p) as Set<string>)].sort());
      for (const name of topics) {
        router.match(name, undefined, true);
        const gotSessions = router.matched.map((s) => s.clientId).sort();
        const wantSessions = SESSIONS.filter((_, i) => [...(local[i] as Set<string>)].some((f) => refMatches(f, name)));
        t.deepEqual(gotSessions, wantSessions, `sessions for ${name}`);
        const gotPlain = router.remoteMatched.map((p) => p.id).sort();
        const wantPlain = PARTITIONS.filter((p) => [...(remote.get(p) as Set<string>)].some((f) => shareOf(f) === null && refMatches(f, name)));
        t.deepEqual(gotPlain, wantPlain, `partitions for ${name}`);
        const gotGroups = router.remoteGroups.map((g) => `${g.key}=${[...g.partitions].map((p) => p.id).sort().join(',')}`).sort();
        const want = new Map<string, string[]>();
        for (const p of PARTITIONS) {
          for (const f of remote.get(p) as Set<string>) {
            const s = shareOf(f);
            if (s !== null && refMatches(s.inner, name)) want.set(f, [...(want.get(f) ?? []), p]);
          }
        }
        t.deepEqual(gotGroups, [...want].map(([k, ps]) => `${k}=${ps.sort().join(',')}`).sort(), `groups for ${name}`);
        // A message from another node is matched for local delivery only.
        router.match(name, undefined, false);
        t.deepEqual(router.matched.map((s) => s.clientId).sort(), wantSessions);
        t.is(router.remoteMatched.length + router.remoteGroups.length, 0);
      }
    }),
    { seed: SEED, numRuns: 300 },
  );
});

test('a partition dropped (its node left or expired) is matched by nothing; the other members of its groups still are; $ topics are not matched by leading wildcards elsewhere', (t) => {
  const router = new Router();
  const s = new Session('s', 'u', 5, 0);
  router.add(s, 'a/+', sub('a/+'));
  router.remoteInterest.add('p1', 'a/+');
  router.remoteInterest.add('p1', '#');
  router.remoteInterest.add('p1', '$share/g/a/b');
  router.remoteInterest.add('p2', '$share/g/a/b');
  router.match('a/b', undefined, true);
  t.deepEqual(router.remoteMatched.map((p) => p.id), ['p1']);
  t.deepEqual(router.remoteGroups.map((g) => [g.key, [...g.partitions].map((p) => p.id)]), [['$share/g/a/b', ['p1', 'p2']]]);
  router.remoteInterest.dropPartition('p1');
  router.match('a/b', undefined, true);
  t.deepEqual(router.remoteMatched, []);
  t.deepEqual(router.remoteGroups.map((g) => [g.key, [...g.partitions].map((p) => p.id)]), [['$share/g/a/b', ['p2']]]);
  t.deepEqual(router.matched, [s]);
  t.deepEqual(router.remoteInterest.filters('p1'), []);
  // `$` topics: a leading wildcard elsewhere does not match them either [MQTT-4.7.2-1].
  router.remoteInterest.add('p2', '#');
  router.remoteInterest.add('p2', '+/x');
  router.match('$SYS/x', undefined, true);
  t.deepEqual(router.remoteMatched, []);
  router.remoteInterest.add('p3', '$SYS/#');
  router.match('$SYS/x', undefined, true);
  t.deepEqual(router.remoteMatched.map((p) => p.id), ['p3']);
});
