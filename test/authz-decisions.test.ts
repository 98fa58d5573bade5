/**
 * What a decision carries and what it is keyed on: decidedBy, the rule (file:line) and the policy
 * version on every Casbin decision (in the audit record of a live denial too); the shared
 * subscription group of a delivery; the one reserved-topic check for every publish path; the
 * model as casbin itself loaded it.
 */
import test from 'ava';
import type { Principal } from '../src/auth/types.ts';
import { AllowAllAuthorizer } from '../src/authz/allow-all.ts';
import { CasbinAuthorizer } from '../src/authz/casbin/authorizer.ts';
import { CasbinEngine } from '../src/authz/casbin/engine.ts';
import { loadPolicySet, PolicyError } from '../src/authz/casbin/policy-file.ts';
import { AuthorizerChain } from '../src/authz/chain.ts';
import { reservedRoot } from '../src/protocol/topic.ts';
import { connect, writePolicyDir } from './helpers.ts';
import { casbinBroker, pubackCode } from './authz-support.ts';

const alice: Principal = { clientId: 'c1', username: 'alice', method: 'test', provider: 'test', roles: [], attributes: {} };
const ctx = (over: Record<string, unknown> = {}) => ({ qos: 0 as const, retain: false, listener: 'l', ...over });

async function authorizer(t: { teardown(fn: () => void): void }, policy: string, extra = {}): Promise<{ a: CasbinAuthorizer; file: string }> {
  const dir = writePolicyDir(policy);
  t.teardown(dir.cleanup);
  const a = new CasbinAuthorizer({ model: dir.model, policy: dir.policy, ...extra });
  await a.init();
  return { a, file: dir.policy };
}

test('every Casbin decision, allow or deny, names the authorizer, the rule (file:line) and the policy version', async (t) => {
  const { a, file } = await authorizer(t, 'p, user:alice, a/#, publish, allow\np, *, a/secret, publish, deny\n');
  t.like(a.authorize(alice, 'publish', 'a/x', ctx()), { kind: 'allow', decidedBy: 'casbin', rule: `${file}:1`, policyVersion: a.version });
  t.like(a.authorize(alice, 'publish', 'a/secret', ctx()), { kind: 'deny', decidedBy: 'casbin', rule: `${file}:2`, policyVersion: a.version });
  const none = a.authorize(alice, 'publish', 'b', ctx());
  t.like(none, { kind: 'deny', decidedBy: 'casbin', policyVersion: a.version, detail: 'no policy rule allows it' });
  t.is(none.rule, undefined);
  // Through a chain of one, the decision reaches the broker as it is.
  t.like(new AuthorizerChain([a]).authorize(alice, 'publish', 'a/secret', ctx()), { decidedBy: 'casbin', rule: `${file}:2` });
});

test('the audit record of a live Casbin denial carries decidedBy, the rule and the policy version', async (t) => {
  const b = await casbinBroker(t, 'p, *, plant/#, publish, allow\np, *, plant/+/valve, publish, deny\n', { users: [{ username: 'alice' }] });
  const c = await connect(b.port, { username: 'alice', password: 'alice-pw', clientId: 'a1', protocolVersion: 5 });
  t.teardown(() => c.end(true));
  t.is(await pubackCode(c, 'plant/9/valve'), 0x87);
  const rec = b.audit.records.find((r) => r.event === 'publish' && r.decision === 'deny');
  const version = (await b.broker.reloadPolicy())[0]?.version;
  t.like(rec, { topic: 'plant/9/valve', decidedBy: 'casbin', rule: `${b.files.policy}:2`, policyVersion: version });
});

test('a delivery is decided with its shared subscription group, and the cache keeps groups apart', async (t) => {
  const { a } = await authorizer(t, 'p, *, $share/ingest/t/#, read, allow\np, *, $share/+/t/private, read, deny\np, *, news/#, read, allow\np, *, $share/g1/news/#, read, deny\n');
  const deliver = (topic: string, group?: string) => a.authorize(alice, 'deliver', topic, ctx(group === undefined ? {} : { shareGroup: group })).kind;
  for (let pass = 0; pass < 2; pass++) {
    t.is(deliver('t/x', 'ingest'), 'allow');
    t.is(deliver('t/x', 'other'), 'deny');
    t.is(deliver('t/x'), 'deny', 'a $share rule grants nothing to a plain subscription');
    t.is(deliver('t/private', 'ingest'), 'deny', '$share/+/ denies in every group');
    t.is(deliver('news/a'), 'allow');
    t.is(deliver('news/a', 'g2'), 'allow');
    t.is(deliver('news/a', 'g1'), 'deny');
  }
  // The group means nothing to other actions.
  t.is(a.authorize(alice, 'subscribe', '$share/g2/news/#', ctx({ shareGroup: 'g1' })).kind, 'allow');
});

test('one reserved-topic check in the chain: a publish into $SYS or $portcullis is denied whatever the authorizers say, reads are theirs', (t) => {
  const chain = new AuthorizerChain([new AllowAllAuthorizer()]);
  for (const topic of ['$SYS', '$SYS/broker/alert', '$portcullis/subscription-revoked']) {
    t.like(chain.authorize(alice, 'publish', topic, ctx({ will: true })), { kind: 'deny', decidedBy: 'reserved-topic' }, topic);
  }
  for (const topic of ['$SYSTEM/x', 'SYS/x', 'a/$SYS', '$sys/x']) t.like(chain.authorize(alice, 'publish', topic, ctx()), { kind: 'allow' }, topic);
  t.like(chain.authorize(alice, 'deliver', '$SYS/broker/uptime', ctx()), { kind: 'allow' });
  t.like(chain.authorize(alice, 'subscribe', '$SYS/#', ctx()), { kind: 'allow' });
  t.like(new AuthorizerChain([]).authorize(alice, 'publish', '$SYS/x', ctx()), { kind: 'deny' });
  t.is(reservedRoot('$SYS/a'), '$SYS');
  t.is(reservedRoot('$SYSx'), undefined);
});

test('casbin itself is asked what it loaded from the model: anything but the documented model is refused', async (t) => {
  const dir = writePolicyDir('p, *, #, *, allow\n');
  t.teardown(dir.cleanup);
  const good = loadPolicySet(dir.model, dir.policy);
  await t.notThrowsAsync(CasbinEngine.build(good, { overlapRefuses: false }, dir.model));
  // Past the validator (as if its reading and casbin's ever parted): the adapter still refuses.
  for (const modelText of [good.modelText.replace(/m = .*/, 'm = true'), good.modelText.replace(/m = (.*)/, 'm = $1\nm2 = true'), good.modelText.replace('[role_definition]\ng = _, _', '')]) {
    const err = await t.throwsAsync(CasbinEngine.build({ ...good, modelText }, { overlapRefuses: false }, dir.model), { instanceOf: PolicyError });
    t.regex(err?.message ?? '', /casbin reads/);
  }
});

test('explain names the rules a QoS or retain condition excluded (near misses)', async (t) => {
  const { a, file } = await authorizer(t, 'p, user:alice, t/#, publish, allow, 0-1, false\np, user:alice, s/#, publish, allow, *, true\np, user:bob, t/#, publish, allow\n');
  const e = a.explain(alice, 'publish', 't/x', 2, true);
  t.is(e.decision, 'deny');
  t.deepEqual(e.nearMisses?.map((m) => [m.rule.source, m.why]), [[`${file}:1`, 'its QoS condition 0-1 excludes QoS 2 and its retain condition false excludes a retained message']]);
  t.deepEqual(a.explain(alice, 'publish', 's/x', 0, false).nearMisses?.map((m) => m.why), ['its retain condition true excludes a message that is not retained']);
  t.is(a.explain(alice, 'publish', 't/x', 1, false).nearMisses, undefined);
});

test('a $share filter in a JWT topic claim grants the deliveries of its own group only', async (t) => {
  const { a } = await authorizer(t, 'p, *, other/#, read, allow\n', { jwtTopics: { mode: 'union' } });
  const svc: Principal = { clientId: 's1', username: 'svc', method: 'jwt', provider: 'jwt', roles: [], attributes: { jwt: { topics: { subscribe: ['$share/g/t/#'] } } } };
  t.is(a.authorize(svc, 'subscribe', '$share/g/t/#', ctx()).kind, 'allow');
  t.is(a.authorize(svc, 'deliver', 't/x', ctx({ shareGroup: 'g' })).kind, 'allow');
  t.is(a.authorize(svc, 'deliver', 't/x', ctx({ shareGroup: 'h' })).kind, 'deny');
  t.is(a.authorize(svc, 'deliver', 't/x', ctx()).kind, 'deny');
});
