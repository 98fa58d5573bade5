/**
 * The Casbin decision cache keyed by topic and a number (principal, action, QoS,
 * retain), with shared-subscription deliveries in a map of their own: attacked on a live broker
 * over real sockets. Every question is asked many times, so the second and later answers come
 * from the cache.
 */
import fs from 'node:fs';
import test from 'ava';
import type { MqttClient } from 'mqtt';
import { casbinBroker, pubackCode } from './authz-support.ts';
import { connect, delay } from './helpers.ts';

const login = (user: string, clientId = user) => ({ username: user, password: `${user}-pw`, clientId, protocolVersion: 5 as const });

function collect(c: MqttClient): { qos: number; retain: boolean; payload: string }[] {
  const got: { qos: number; retain: boolean; payload: string }[] = [];
  c.on('message', (_t, p, packet) => got.push({ qos: packet.qos, retain: packet.retain, payload: p.toString() }));
  return got;
}

test('one topic, three principals, QoS- and retain-conditioned deliver rules, a $share group and a plain subscription of one principal: every cached answer is its own', async (t) => {
  const b = await casbinBroker(
    t,
    [
      'p, user:pub, t/#, publish, allow',
      'p, user:alice, t/#, subscribe, allow',
      'p, user:alice, t/x, deliver, allow, 0, *',
      'p, user:bob, t/#, subscribe, allow',
      'p, user:bob, t/x, deliver, allow, *, false',
      'p, user:carol, t/#, subscribe, allow',
      'p, user:carol, $share/g1/t/#, subscribe, allow',
      'p, user:carol, $share/g1/t/#, deliver, allow',
    ].join('\n') + '\n',
    { users: ['pub', 'alice', 'bob', 'carol'].map((username) => ({ username })) },
  );
  const alice = await connect(b.port, login('alice'));
  const bob = await connect(b.port, login('bob'));
  const carol = await connect(b.port, login('carol'));
  const pub = await connect(b.port, login('pub'));
  t.teardown(() => [alice, bob, carol, pub].forEach((c) => c.end(true)));
  const [ga, gb, gc] = [collect(alice), collect(bob), collect(carol)];
  await alice.subscribeAsync('t/x', { qos: 2 });
  await bob.subscribeAsync('t/x', { qos: 2 });
  await carol.subscribeAsync('t/x', { qos: 2 }); // plain: no rule allows its deliveries
  await carol.subscribeAsync('$share/g1/t/x', { qos: 2 });
  const sent: { qos: 0 | 1 | 2; retain: boolean }[] = [];
  for (let round = 0; round < 20; round++) {
    for (const qos of [0, 1, 2] as const) {
      for (const retain of [false, true]) {
        sent.push({ qos, retain });
        await pub.publishAsync('t/x', `${round}-${qos}-${retain}`, { qos, retain });
      }
    }
  }
  await delay(500);
  // alice: only QoS 0 deliveries (a message at QoS 1 or 2 goes out at QoS 1 or 2 to her QoS 2 subscription).
  t.true(ga.length > 0 && ga.every((m) => m.qos === 0), `alice: ${JSON.stringify(ga.filter((m) => m.qos !== 0).slice(0, 3))}`);
  t.is(ga.length, sent.filter((s) => s.qos === 0).length);
  // bob: only deliveries without retain (a live message goes out with retain false to a subscription without retain-as-published).
  t.is(gb.length, sent.length, 'bob gets every live message (its retain flag goes out false)');
  // carol: once per message, through the group only.
  t.is(gc.length, sent.length, `carol: ${gc.length} (the plain subscription gets nothing, the group everything)`);
  // A new subscription with retain-as-published: retained copies now go out with retain true, and bob's rule denies them.
  const late = collect(bob);
  await bob.unsubscribeAsync('t/x');
  await bob.subscribeAsync('t/x', { qos: 2, rap: true, rh: 0 });
  await pub.publishAsync('t/x', 'retained-again', { qos: 1, retain: true });
  await pub.publishAsync('t/x', 'live', { qos: 1, retain: false });
  await delay(300);
  t.deepEqual(late.map((m) => m.payload), ['live'], 'retained copies denied for bob, live allowed');
});

test('a policy reload clears every cached decision at once, for plain and $share deliveries, under a running stream', async (t) => {
  const allow = [
    'p, user:pub, s/#, publish, allow',
    'p, user:alice, s/#, read, allow',
    'p, user:alice, $share/g/s/#, read, allow',
  ].join('\n');
  const b = await casbinBroker(t, `${allow}\n`, { users: ['pub', 'alice'].map((username) => ({ username })) });
  const plain = await connect(b.port, login('alice', 'alice-1'));
  const shared = await connect(b.port, login('alice', 'alice-2'));
  const pub = await connect(b.port, login('pub'));
  t.teardown(() => [plain, shared, pub].forEach((c) => c.end(true)));
  const [gp, gs] = [collect(plain), collect(shared)];
  await plain.subscribeAsync('s/x', { qos: 1 });
  await shared.subscribeAsync('$share/g/s/x', { qos: 1 });
  for (let i = 0; i < 50; i++) t.is(await pubackCode(pub, 's/x', `before-${i}`), 0);
  await delay(200);
  t.is(gp.length, 50);
  t.is(gs.length, 50);
  // Deliveries denied from now on; subscriptions stay (a read allow for subscribe keeps them).
  fs.writeFileSync(b.files.policy, `${allow}\np, user:alice, s/x, deliver, deny\np, user:alice, $share/g/s/x, deliver, deny\n`);
  const reports = await b.broker.reloadPolicy('test');
  t.true(reports.every((r) => r.ok), JSON.stringify(reports));
  const [np, ns] = [gp.length, gs.length];
  for (let i = 0; i < 50; i++) await pubackCode(pub, 's/x', `after-${i}`);
  await delay(300);
  t.deepEqual(gp.slice(np).map((m) => m.payload), [], 'plain: nothing after the reload');
  t.deepEqual(gs.slice(ns).map((m) => m.payload), [], 'shared: nothing after the reload');
});

test('two clients of one user name on one topic, one of them denied by a client-id line (deny-only on a listener that does not bind): their cached answers stay apart', async (t) => {
  // Two connections of the same user are two principals (two numbers): a decision cached for one
  // must not answer for the other, in either order.
  const b = await casbinBroker(t, ['p, user:pub, j/#, publish, allow', 'p, user:alice, j/#, read, allow', 'p, client:alice-banned, j/#, deliver, deny'].join('\n') + '\n', {
    users: ['pub', 'alice'].map((username) => ({ username })),
    casbin: { clientIdRules: 'bound-listeners' },
  });
  const ok = await connect(b.port, login('alice', 'alice-ok'));
  const banned = await connect(b.port, login('alice', 'alice-banned'));
  const pub = await connect(b.port, login('pub'));
  t.teardown(() => [ok, banned, pub].forEach((c) => c.end(true)));
  const [go, gb] = [collect(ok), collect(banned)];
  await ok.subscribeAsync('j/x', { qos: 1 });
  await banned.subscribeAsync('j/x', { qos: 1 });
  for (let i = 0; i < 30; i++) await pubackCode(pub, 'j/x', String(i));
  await delay(200);
  t.is(go.length, 30);
  t.is(gb.length, 0, 'the deny for the unbound client id still applies on a listener that does not bind (deny-only)');
});
