/** Validation of model and policy files (file and line in every error), empty/missing policies, config errors, explain. */
import fs from 'node:fs';
import v8 from 'node:v8';
import vm from 'node:vm';
import test from 'ava';
import { CasbinAuthorizer } from '../src/authz/casbin/authorizer.ts';
import { loadPolicySet, parsePolicy, PolicyError, validateModel } from '../src/authz/casbin/policy-file.ts';
import { ConfigError, createBroker } from '../src/index.ts';
import { silentLogger } from '../src/log.ts';
import { writePolicyDir } from './helpers.ts';

const policyError = (text: string) => {
  const err = (() => {
    try {
      parsePolicy(text, 'acl.csv');
      return null;
    } catch (e) {
      return e;
    }
  })();
  if (!(err instanceof PolicyError)) throw new Error(`expected a PolicyError for ${JSON.stringify(text)}`);
  return err;
};

test('every bad policy line is refused with the file and line', (t) => {
  const ok = 'p, user:alice, a/#, publish, allow\n';
  const cases: [string, RegExp][] = [
    ['p, user:alice, a/#, publish', /missing field/],
    ['p, user:alice, a/#, publish, allow, 1', /QoS condition needs a retain condition/],
    ['p, user:alice, a/#, publish, allow, 1, false, extra', /too many fields/],
    ['p, user:alice, a/#, publish, alow', /unknown effect 'alow'/],
    ['p, user:alice, a/#, write, allow', /unknown action 'write'/],
    ['p, user:alice, a/#/b, publish, allow', /invalid topic filter 'a\/#\/b'/],
    ['p, user:alice, a/b+, publish, allow', /invalid topic filter/],
    ['p, alice, a/#, publish, allow', /unknown subject 'alice'/],
    ['p, user:alice, a/%x/b, publish, allow', /unknown placeholder/],
    ['p, user:alice, a/%{cert.o}/b, publish, allow', /unknown placeholder %\{cert.o\}/],
    ['p, user:alice, a/#, publish, allow, 3, *', /invalid QoS condition '3'/],
    ['p, user:alice, a/#, publish, allow, *, yes', /invalid retain condition 'yes'/],
    ['p, user:alice, , publish, allow', /empty field/],
    ['p, "user:alice", a/#, publish, allow', /quoted fields/],
    ['x, user:alice, a/#, publish, allow', /unknown line type 'x'/],
    ['p user:alice a/# publish allow', /syntax error: fields must be separated by commas/],
    ['g, user:alice', /missing field/],
    ['g, user:alice, admin', /'admin' is not a role/],
    ['g, *, role:admin', /unknown member/],
    ['p, user:alice, $share//a, publish, allow', /invalid shared filter/],
  ];
  for (const [line, message] of cases) {
    const err = policyError(`# comment\n${ok}\n${line}\n${ok}`);
    t.is(err.code, 'ERR_PORTCULLIS_POLICY');
    t.is(err.file, 'acl.csv');
    t.is(err.line, 4, line);
    t.regex(err.message, /^acl\.csv:4: /);
    t.regex(err.problem, message, line);
  }
});

test('every bad model line is refused with the file and line', (t) => {
  const good = fs.readFileSync(new URL('../policies/model.conf', import.meta.url), 'utf8');
  t.notThrows(() => validateModel(good, 'model.conf'));
  const mutate = (from: string | RegExp, to: string) => good.replace(from, to);
  const cases: [string, RegExp][] = [
    [mutate('e = some(where (p.eft == allow)) && !some(where (p.eft == deny))', 'e = some(where (p.eft == allow))'), /\[policy_effect\] must be/],
    [mutate('p = sub, obj, act, eft, qos, retain', 'p = sub, obj, act'), /\[policy_definition\] must be/],
    [mutate('[matchers]', '[matcher]'), /unknown section \[matcher\]/],
    [mutate('m = subjectMatch', 'x = subjectMatch'), /unknown key 'x'/],
    [mutate('mqttMatch(r.sub', 'keyMatch(r.sub'), /the matcher must be exactly/],
    [mutate('p.retain)', 'p.color)'), /the matcher must be exactly/],
    [mutate('r = sub, obj, act, qos, retain', 'r sub obj'), /expected 'key = value'/],
    [mutate(/\[role_definition\]\ng = _, _\n/, ''), /missing \[role_definition\]/],
  ];
  for (const [text, message] of cases) {
    const err = t.throws(() => validateModel(text, 'model.conf'), { instanceOf: PolicyError });
    t.regex(err?.message ?? '', /^model\.conf(:\d+)?: /);
    t.regex(err?.problem ?? '', message);
  }
  const err = t.throws(() => validateModel(mutate('[matchers]', '[bogus]'), 'model.conf'), { instanceOf: PolicyError });
  t.is(err?.line, good.split('\n').findIndex((l) => l === '[matchers]') + 1);
});

test('an empty or missing policy denies everything, and says so', async (t) => {
  const dir = writePolicyDir('# nothing here\n');
  t.teardown(dir.cleanup);
  const who = { clientId: 'c', username: 'alice', method: 'password', provider: 'x', roles: ['admin'], attributes: {} };
  const ctx = { qos: 0 as const, retain: false, listener: 'l' };
  const empty = new CasbinAuthorizer({ model: dir.model, policy: dir.policy });
  await empty.init();
  t.regex(empty.warnings[0] ?? '', /no 'p' lines: every action is denied/);
  for (const action of ['publish', 'subscribe', 'deliver'] as const) t.like(empty.authorize(who, action, 'a', ctx), { kind: 'deny', reason: 0x87 });
  const missing = new CasbinAuthorizer({ model: dir.model, policy: `${dir.dir}/nope.csv` });
  await missing.init();
  t.regex(missing.warnings[0] ?? '', /no policy file: every action is denied/);
  t.like(missing.authorize(who, 'subscribe', '#', ctx), { kind: 'deny' });
  t.throws(() => loadPolicySet(dir.model, `${dir.dir}/nope.csv`, { requirePolicy: true }), { instanceOf: PolicyError, message: /cannot read the policy file \(ENOENT\)/ });
});

test('an authorizer that is not initialised yet denies', (t) => {
  const dir = writePolicyDir('p, *, #, *, allow\n');
  t.teardown(dir.cleanup);
  const a = new CasbinAuthorizer({ model: dir.model, policy: dir.policy });
  t.like(a.authorize({ clientId: 'c', method: 'x', provider: 'x', roles: [], attributes: {} }, 'publish', 'a', { qos: 0, retain: false, listener: 'l' }), { kind: 'deny' });
});

test('a bad policy file in the configuration is a ConfigError naming the key, the file and the line', (t) => {
  const dir = writePolicyDir('p, user:alice, a/#, publish, allow\np, user:bob, b/#, publish, permit\n');
  t.teardown(dir.cleanup);
  const err = t.throws(() => createBroker({ authorizers: [{ type: 'casbin', model: dir.model, policy: dir.policy }] }, { logger: silentLogger() }), { instanceOf: ConfigError });
  t.is(err?.issues[0]?.key, 'authorizers[0].policy');
  t.true(err?.message.includes(`${dir.policy}:2: unknown effect 'permit'`));
  const bad = t.throws(() => createBroker({ authorizers: [{ type: 'casbin', policy: dir.policy, cacheSize: -1 } as never] }, { logger: silentLogger() }), { instanceOf: ConfigError });
  t.is(bad?.issues[0]?.key, 'authorizers[0].cacheSize');
  const unknown = t.throws(() => createBroker({ authorizers: [{ type: 'casbn' } as never] }, { logger: silentLogger() }), { instanceOf: ConfigError });
  t.regex(unknown?.message ?? '', /authorizers\[0\]/);
});

test('explain names the deciding rule: deny beats allow, and the line is reported', async (t) => {
  const dir = writePolicyDir('p, role:dev, devices/%u/#, *, allow\np, *, devices/+/secret, *, deny\ng, user:alice, role:dev\n');
  t.teardown(dir.cleanup);
  const a = new CasbinAuthorizer({ model: dir.model, policy: dir.policy });
  await a.init();
  const alice = { clientId: 'c1', username: 'alice', method: 'password', provider: 'x', roles: [], attributes: {} };
  t.like(a.explain(alice, 'publish', 'devices/alice/x'), { decision: 'allow', rule: { source: `${dir.policy}:1` } });
  t.like(a.explain(alice, 'publish', 'devices/alice/secret'), { decision: 'deny', rule: { source: `${dir.policy}:2` } });
  t.like(a.explain(alice, 'publish', 'devices/bob/x'), { decision: 'deny', detail: 'no policy rule allows it' });
  t.is(a.explain(alice, 'publish', 'devices/bob/x').rule, undefined);
});

test('the decision cache answers repeated questions and keys cannot collide', async (t) => {
  const dir = writePolicyDir('p, user:a, x/y, publish, allow\np, user:a|x, y, publish, allow\n');
  t.teardown(dir.cleanup);
  const a = new CasbinAuthorizer({ model: dir.model, policy: dir.policy, cacheSize: 10 });
  await a.init();
  const ctx = { qos: 0 as const, retain: false, listener: 'l' };
  const userA = { clientId: 'c', username: 'a', method: 'x', provider: 'x', roles: [], attributes: {} };
  const userAx = { clientId: 'c', username: 'a|x', method: 'x', provider: 'x', roles: [], attributes: {} };
  t.like(a.authorize(userA, 'publish', 'x/y', ctx), { kind: 'allow' });
  t.like(a.authorize(userAx, 'publish', 'x/y', ctx), { kind: 'deny' });
  t.like(a.authorize(userA, 'publish', 'y', ctx), { kind: 'deny' });
  t.like(a.authorize(userAx, 'publish', 'y', ctx), { kind: 'allow' });
  t.is(a.cachedDecisions, 4);
  for (let i = 0; i < 50; i++) a.authorize(userA, 'publish', `t/${i}`, ctx);
  // Bounded: two generations of at most 5; the latest generation is kept.
  t.true(a.cachedDecisions <= 10 && a.cachedDecisions >= 5, `${a.cachedDecisions} cached`);
});

test('the decision cache keeps apart QoS, retain, action, principal and share group on one topic', async (t) => {
  const dir = writePolicyDir(
    [
      'p, user:a, t/x, publish, allow, 0-1, false',
      'p, user:a, t/x, deliver, allow, 0, *',
      'p, user:a, $share/g1/t/#, deliver, allow',
      'p, user:b, t/x, publish, allow, 2, true',
    ].join('\n') + '\n',
  );
  t.teardown(dir.cleanup);
  const a = new CasbinAuthorizer({ model: dir.model, policy: dir.policy, cacheSize: 100 });
  await a.init();
  const user = (name: string) => ({ clientId: `c-${name}`, username: name, method: 'x', provider: 'x', roles: [], attributes: {} });
  const [ua, ub] = [user('a'), user('b')];
  const ctx = (qos: 0 | 1 | 2, retain: boolean, shareGroup?: string) => ({ qos, retain, listener: 'l', ...(shareGroup !== undefined ? { shareGroup } : {}) });
  // Twice each: the second answer comes from the cache and must be the same.
  for (let round = 0; round < 2; round++) {
    t.like(a.authorize(ua, 'publish', 't/x', ctx(1, false)), { kind: 'allow' }, `round ${round}`);
    t.like(a.authorize(ua, 'publish', 't/x', ctx(2, false)), { kind: 'deny' });
    t.like(a.authorize(ua, 'publish', 't/x', ctx(1, true)), { kind: 'deny' });
    t.like(a.authorize(ua, 'deliver', 't/x', ctx(0, false)), { kind: 'allow' });
    t.like(a.authorize(ua, 'deliver', 't/x', ctx(1, false)), { kind: 'deny' });
    t.like(a.authorize(ua, 'deliver', 't/x', ctx(1, false, 'g1')), { kind: 'allow' });
    t.like(a.authorize(ua, 'deliver', 't/x', ctx(1, false, 'g2')), { kind: 'deny' });
    t.like(a.authorize(ua, 'subscribe', 't/x', ctx(0, false)), { kind: 'deny' });
    t.like(a.authorize(ub, 'publish', 't/x', ctx(2, true)), { kind: 'allow' });
    t.like(a.authorize(ub, 'publish', 't/x', ctx(1, false)), { kind: 'deny' });
  }
  t.is(a.cachedDecisions, 10);
});

test('a cache hit allocates nothing in the old generation, even once the cache lives there', async (t) => {
  // A Map reordered on every hit (delete + set) makes V8 copy its table every few dozen hits, in
  // the generation of the table it replaces: once promoted, a steady old-generation leak until the
  // next mark-compact (docs/performance.md, "Metrics on against off").
  const dir = writePolicyDir('p, user:a, t/#, publish, allow\n');
  t.teardown(dir.cleanup);
  const a = new CasbinAuthorizer({ model: dir.model, policy: dir.policy });
  await a.init();
  const ctx = { qos: 0 as const, retain: false, listener: 'l' };
  const userA = { clientId: 'c', username: 'a', method: 'x', provider: 'x', roles: [], attributes: {} };
  const topics = Array.from({ length: 100 }, (_, i) => `t/${i}`);
  for (let round = 0; round < 3; round++) for (const topic of topics) a.authorize(userA, 'publish', topic, ctx);
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  // Full collections move what is alive, the cache's tables with it, to the old generation.
  gc();
  gc();
  const oldSpace = (): number => v8.getHeapSpaceStatistics().find((s) => s.space_name === 'old_space')?.space_used_size ?? 0;
  const before = oldSpace();
  for (let i = 0; i < 300_000; i++) a.authorize(userA, 'publish', topics[i % 100] as string, ctx);
  const grown = oldSpace() - before;
  t.true(grown < 2 * 1024 * 1024, `the old generation grew ${(grown / 1048576).toFixed(1)} MB during 300,000 cache hits`);
});
