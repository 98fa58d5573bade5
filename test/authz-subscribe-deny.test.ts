/**
 * A subscribe deny rule refuses a filter only if it covers the whole filter. Where it only
 * overlaps, the subscription is granted and every delivery on a denied topic is withheld: live
 * messages, retained messages at subscribe time and shared subscriptions alike. The strict
 * setting (`subscribeDenyOverlap: refuse`) keeps the old "any overlap refuses". Over real
 * sockets with MQTT 3.1, 3.1.1 and 5.
 */
import test from 'ava';
import type { IClientOptions } from 'mqtt';
import { connect, messagesWithin, nextMessages } from './helpers.ts';
import { casbinBroker, subscribeCodes } from './authz-support.ts';

const POLICY = 'p, *, #, *, allow\np, *, test/nosubscribe, subscribe, deny\n';
const USERS = [{ username: 'u' }, { username: 'pub' }];
const VERSIONS: [string, IClientOptions, number][] = [
  ['MQTT 3.1', { protocolVersion: 3, protocolId: 'MQIsdp' }, 0x80],
  ['MQTT 3.1.1', { protocolVersion: 4 }, 0x80],
  ['MQTT 5', { protocolVersion: 5 }, 0x87],
];
const login = (user: string, id: string, opts: IClientOptions): IClientOptions => ({ username: user, password: `${user}-pw`, clientId: id, ...opts });

for (const [name, opts, refused] of VERSIONS) {
  test(`${name}: # and +/+ are granted beside a deny rule for one topic; that topic is withheld, live and retained, and can't be subscribed to`, async (t) => {
    const b = await casbinBroker(t, POLICY, { users: USERS });
    const pub = await connect(b.port, login('pub', 'pub', { protocolVersion: 5 }));
    t.teardown(() => pub.end(true));
    await pub.publishAsync('test/nosubscribe', 'retained-secret', { qos: 1, retain: true });
    await pub.publishAsync('test/other', 'retained-ok', { qos: 1, retain: true });

    const all = await connect(b.port, login('u', `all-${opts.protocolVersion}`, opts));
    const two = await connect(b.port, login('u', `two-${opts.protocolVersion}`, opts));
    const exact = await connect(b.port, login('u', `exact-${opts.protocolVersion}`, opts));
    t.teardown(() => [all, two, exact].forEach((c) => c.end(true)));
    const retained = messagesWithin(all, 500);
    t.deepEqual(await subscribeCodes(all, ['#'], 1), [1]);
    t.deepEqual((await retained).map((m) => `${m.topic}=${m.payload}`), ['test/other=retained-ok'], 'the retained message on the denied topic is withheld');
    t.deepEqual(await subscribeCodes(two, ['+/+'], 1), [1]);
    t.deepEqual(await subscribeCodes(exact, ['test/nosubscribe', 'test/+'], 1), [refused, 1]);

    const gotAll = nextMessages(all, 1);
    const gotTwo = nextMessages(two, 1);
    const gotExact = nextMessages(exact, 1);
    await pub.publishAsync('test/nosubscribe', 'live-secret', { qos: 1 });
    await pub.publishAsync('test/other', 'live-ok', { qos: 1 });
    for (const got of [gotAll, gotTwo, gotExact]) t.deepEqual((await got).map((m) => `${m.topic}=${m.payload}`), ['test/other=live-ok']);
    t.deepEqual(await messagesWithin(all, 200), [], 'and nothing after it');

    const denied = b.audit.records.filter((r) => r.event === 'deliver' && r.decision === 'deny' && r.topic === 'test/nosubscribe');
    t.true(denied.length >= 3, `deliveries withheld and audited: ${denied.length}`);
    t.like(denied[0], { decidedBy: 'casbin', rule: `${b.files.policy}:2` });
  });
}

test('MQTT 5: a shared subscription to # is granted and its group never gets the denied topic', async (t) => {
  const b = await casbinBroker(t, POLICY, { users: USERS });
  const a = await connect(b.port, login('u', 'sh-a', { protocolVersion: 5 }));
  const c = await connect(b.port, login('u', 'sh-c', { protocolVersion: 5 }));
  t.teardown(() => [a, c].forEach((x) => x.end(true)));
  t.deepEqual(await subscribeCodes(a, ['$share/g/#'], 1), [1]);
  t.deepEqual(await subscribeCodes(c, ['$share/g/#'], 1), [1]);
  t.deepEqual(await subscribeCodes(a, ['$share/g/test/nosubscribe'], 1), [0x87]);
  const pub = await connect(b.port, login('pub', 'pub-sh', { protocolVersion: 5 }));
  t.teardown(() => pub.end(true));
  const seen = Promise.all([messagesWithin(a, 700), messagesWithin(c, 700)]);
  for (let i = 0; i < 4; i++) {
    await pub.publishAsync('test/nosubscribe', `secret-${i}`, { qos: 1 });
    await pub.publishAsync('test/other', `ok-${i}`, { qos: 1 });
  }
  const got = (await seen).flat();
  t.deepEqual(got.map((m) => m.payload).sort(), ['ok-0', 'ok-1', 'ok-2', 'ok-3']);
});

test('strict setting (subscribeDenyOverlap: refuse): every filter that overlaps the deny rule is refused', async (t) => {
  const b = await casbinBroker(t, POLICY, { users: USERS, casbin: { subscribeDenyOverlap: 'refuse' } });
  for (const [name, opts, refused] of VERSIONS) {
    const c = await connect(b.port, login('u', `strict-${opts.protocolVersion}`, opts));
    t.teardown(() => c.end(true));
    t.deepEqual(await subscribeCodes(c, ['#', '+/+', 'test/#', 'test/nosubscribe', 'other/#', 'test/other'], 1), [refused, refused, refused, refused, 1, 1], name);
  }
  const v5 = await connect(b.port, login('u', 'strict-share', { protocolVersion: 5 }));
  t.teardown(() => v5.end(true));
  t.deepEqual(await subscribeCodes(v5, ['$share/g/#', '$share/g/other/#'], 1), [0x87, 1]);
});

test('an admin granted devices/# beside a deny on devices/+/secret/# gets telemetry, never a secret', async (t) => {
  const b = await casbinBroker(t, 'p, role:admin, devices/#, read, allow\np, *, devices/#, publish, allow\np, *, devices/+/secret/#, *, deny\n', {
    users: [{ username: 'ops', roles: ['admin'] }, { username: 'pub' }],
  });
  const ops = await connect(b.port, login('ops', 'ops', { protocolVersion: 5 }));
  t.teardown(() => ops.end(true));
  t.deepEqual(await subscribeCodes(ops, ['devices/#', 'devices/+/secret/#', 'devices/a/secret/key'], 1), [1, 0x87, 0x87]);
  const pub = await connect(b.port, login('pub', 'pub', { protocolVersion: 5 }));
  t.teardown(() => pub.end(true));
  const got = nextMessages(ops, 1);
  await pub.publishAsync('devices/a/secret/key', 'k', { qos: 1 }).catch(() => undefined); // refused: the deny covers publish too
  await pub.publishAsync('devices/a/telemetry/t', '21', { qos: 1 });
  t.deepEqual((await got).map((m) => m.topic), ['devices/a/telemetry/t']);
});
