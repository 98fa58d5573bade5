/**
 * The Casbin authorizer at every boundary, over real sockets with mqtt.js and mosquitto clients
 * and the static-users provider: publish, subscribe, will, retained and delivery.
 */
import { spawn } from 'node:child_process';
import test from 'ava';
import type { MqttClient } from 'mqtt';
import { connect, delay, messagesWithin, nextMessages, startBroker, startCasbinBroker, writePolicyDir } from './helpers.ts';

const POLICY = `
# alice and bob each own devices/<user>/#; a reader role sees telemetry of all devices.
p, role:device, devices/%u/#, publish, allow, 0-1, *
p, role:device, devices/%u/#, read, allow
p, role:reader, devices/+/telemetry, read, allow
p, *, devices/+/secret, publish, deny
p, *, devices/+/secret, deliver, deny
g, user:alice, role:device
g, user:bob, role:device
g, user:rita, role:reader
`;
const USERS = [{ username: 'alice' }, { username: 'bob' }, { username: 'rita' }, { username: 'admin', roles: ['device'] }];
/** SUBACK codes for each filter, whether mqtt.js calls it a failure or not. */
async function subscribeCodes(client: MqttClient, filters: string[] | Record<string, { qos: 0 | 1 | 2 }>): Promise<number[]> {
  const map = Array.isArray(filters) ? Object.fromEntries(filters.map((f) => [f, { qos: 0 as const }])) : filters;
  try {
    return (await client.subscribeAsync(map)).map((g) => g.qos);
  } catch (err) {
    const granted = (err as { packet?: { granted?: number[] } }).packet?.granted;
    if (granted === undefined) throw err;
    return granted;
  }
}
const as = (user: string, version: 4 | 5 = 5, extra = {}) => ({ username: user, password: `${user}-pw`, clientId: `${user}-${Math.random().toString(16).slice(2, 8)}`, protocolVersion: version, ...extra });

test('a denied v5 QoS 1 publish gets PUBACK 0x87 and QoS 2 gets PUBREC 0x87; an allowed one is routed', async (t) => {
  const b = await startCasbinBroker(POLICY, USERS);
  t.teardown(() => b.stop());
  const bob = await connect(b.port, as('bob'));
  await bob.subscribeAsync('devices/bob/#');
  const alice = await connect(b.port, as('alice'));
  const codes: number[] = [];
  alice.on('packetreceive', (p) => {
    if (p.cmd === 'puback' || p.cmd === 'pubrec') codes.push(p.reasonCode ?? 0);
  });
  await alice.publishAsync('devices/bob/cmd', 'x', { qos: 1 }).catch(() => undefined);
  await alice.publishAsync('devices/bob/cmd', 'x', { qos: 2 }).catch(() => undefined);
  const got = messagesWithin(bob, 400);
  await alice.publishAsync('devices/alice/ok', 'fine', { qos: 1 });
  t.deepEqual(codes.slice(0, 2), [0x87, 0x87]);
  t.deepEqual(await got, []);
  const denied = b.audit.records.filter((r) => r.event === 'publish' && r.decision === 'deny');
  t.is(denied.length, 2);
  t.regex(denied[0]?.reason ?? '', /no policy rule allows it/);
  t.is(denied[0]?.decidedBy, 'casbin');
  alice.end(true);
  bob.end(true);
});

test('QoS condition: QoS 2 on an own topic allowed only up to QoS 1 is refused with PUBREC 0x87', async (t) => {
  const b = await startCasbinBroker(POLICY, USERS);
  t.teardown(() => b.stop());
  const alice = await connect(b.port, as('alice'));
  let code = -1;
  alice.on('packetreceive', (p) => {
    if (p.cmd === 'pubrec') code = p.reasonCode ?? 0;
  });
  await alice.publishAsync('devices/alice/x', 'x', { qos: 2 }).catch(() => undefined);
  await delay(100);
  t.is(code, 0x87);
  alice.end(true);
});

test('a denied v3.1.1 publish is dropped, acknowledged as usual, and audited', async (t) => {
  const b = await startCasbinBroker(POLICY, USERS);
  t.teardown(() => b.stop());
  const bob = await connect(b.port, as('bob', 4));
  await bob.subscribeAsync('devices/bob/#');
  const alice = await connect(b.port, as('alice', 4));
  const got = messagesWithin(bob, 400);
  await alice.publishAsync('devices/bob/cmd', 'forged', { qos: 1 }); // PUBACK without a reason code in v3
  t.deepEqual(await got, []);
  const rec = b.audit.records.find((r) => r.event === 'publish' && r.decision === 'deny');
  t.like(rec, { username: 'alice', topic: 'devices/bob/cmd', reasonCode: 0x87 });
  alice.end(true);
  bob.end(true);
});

test('SUBACK carries 0x87 in v5 and 0x80 in v3.1.1 for refused filters, granted QoS for allowed ones', async (t) => {
  const b = await startCasbinBroker(POLICY, USERS);
  t.teardown(() => b.stop());
  const v5 = await connect(b.port, as('alice'));
  t.deepEqual(await subscribeCodes(v5, { 'devices/alice/#': { qos: 1 }, 'devices/bob/#': { qos: 1 } }), [1, 0x87]);
  const v3 = await connect(b.port, as('alice', 4));
  t.deepEqual(await subscribeCodes(v3, { 'devices/alice/#': { qos: 1 }, 'devices/bob/#': { qos: 1 } }), [1, 0x80]);
  v5.end(true);
  v3.end(true);
});

test('a user allowed only devices/alice/# is refused #, +/#, $SYS/#, $share/g/# and devices/+/secret, and never gets another user\'s message', async (t) => {
  const b = await startCasbinBroker(POLICY, USERS);
  t.teardown(() => b.stop());
  const alice = await connect(b.port, as('alice'));
  const filters = ['#', '+/#', '$SYS/#', '$share/g/#', 'devices/+/secret', 'devices/+/#', 'devices/#', '$share/g/devices/bob/#'];
  t.deepEqual(await subscribeCodes(alice, filters), filters.map(() => 0x87));
  // Her own subtree through a shared subscription is fine.
  const own = await alice.subscribeAsync('$share/g/devices/alice/#');
  t.is(own[0]?.qos, 0);
  const bob = await connect(b.port, as('bob'));
  const received = messagesWithin(alice, 500);
  for (const topic of ['devices/bob/a', 'devices/bob/secret', 'devices/bob/telemetry']) await bob.publishAsync(topic, 'bob', { qos: 1 }).catch(() => undefined);
  t.deepEqual(await received, []);
  alice.end(true);
  bob.end(true);
});

test('the deliver check stops a message even on a subscription the subscribe check granted', async (t) => {
  // rita may subscribe to devices/+/telemetry but a deny on deliver from bob's device wins.
  const b = await startCasbinBroker(`${POLICY}\np, role:reader, devices/bob/telemetry, deliver, deny\n`, USERS);
  t.teardown(() => b.stop());
  const rita = await connect(b.port, as('rita'));
  t.is((await rita.subscribeAsync('devices/+/telemetry'))[0]?.qos, 0);
  const alice = await connect(b.port, as('alice'));
  const bob = await connect(b.port, as('bob'));
  const got = nextMessages(rita, 1);
  await bob.publishAsync('devices/bob/telemetry', 'bob', { qos: 1 });
  await alice.publishAsync('devices/alice/telemetry', 'alice', { qos: 1 });
  t.deepEqual((await got).map((m) => m.payload), ['alice']);
  t.deepEqual(await messagesWithin(rita, 200), []);
  t.truthy(b.audit.records.find((r) => r.event === 'deliver' && r.decision === 'deny' && r.topic === 'devices/bob/telemetry' && r.username === 'rita'));
  for (const c of [rita, alice, bob]) c.end(true);
});

test('a retained message under someone else\'s topic is not delivered through a wildcard subscription', async (t) => {
  const policy = `${POLICY}\np, role:device, shared/#, read, allow\np, user:bob, shared/bob/#, publish, allow\np, *, shared/bob/private, deliver, deny\n`;
  const b = await startCasbinBroker(policy, USERS);
  t.teardown(() => b.stop());
  const bob = await connect(b.port, as('bob'));
  await bob.publishAsync('shared/bob/private', 'secret', { qos: 1, retain: true });
  await bob.publishAsync('shared/bob/public', 'hello', { qos: 1, retain: true });
  await bob.publishAsync('devices/bob/state', 'bob-state', { qos: 1, retain: true });
  const alice = await connect(b.port, as('alice'));
  const got = messagesWithin(alice, 500);
  await alice.subscribeAsync({ 'shared/#': { qos: 1 } });
  t.deepEqual((await got).map((m) => m.topic), ['shared/bob/public']);
  t.truthy(b.audit.records.find((r) => r.event === 'deliver' && r.decision === 'deny' && r.topic === 'shared/bob/private'));
  alice.end(true);
  bob.end(true);
});

test('a will aimed at a forbidden topic refuses the CONNECT with 0x87 (v5) and 5 (v3.1.1)', async (t) => {
  const b = await startCasbinBroker(POLICY, USERS);
  t.teardown(() => b.stop());
  const will = { topic: 'devices/bob/status', payload: Buffer.from('gone'), qos: 1 as const, retain: false };
  const v5 = await connect(b.port, as('alice', 5, { will })).then(
    () => null,
    (err: { code?: number }) => err.code,
  );
  t.is(v5, 0x87);
  const v3 = await connect(b.port, as('alice', 4, { will })).then(
    () => null,
    (err: { code?: number }) => err.code,
  );
  t.is(v3, 5);
  const rec = b.audit.records.filter((r) => r.event === 'will' && r.decision === 'deny');
  t.is(rec.length, 2);
  t.is(rec[0]?.topic, 'devices/bob/status');
});

test('an allowed will is published when the client drops, and passes the deliver check', async (t) => {
  const b = await startCasbinBroker(POLICY, USERS);
  t.teardown(() => b.stop());
  const rita = await connect(b.port, as('rita'));
  await rita.subscribeAsync('devices/+/telemetry');
  const alice = await connect(b.port, as('alice', 5, { will: { topic: 'devices/alice/telemetry', payload: Buffer.from('offline'), qos: 0, retain: false } }));
  const got = nextMessages(rita, 1);
  alice.stream.destroy();
  t.is((await got)[0]?.payload, 'offline');
  rita.end(true);
});

test('placeholders: %u is not substituted with a user name holding / or +, so the rule does not apply', async (t) => {
  // The connect-time refusal of + # U+0000 (listeners[].identity.refuseWildcards, on by default) is turned
  // off here, so this test proves the matcher's own defence.
  const files = writePolicyDir('p, *, users/%u/#, read, allow\np, *, users/%u/#, publish, allow\n');
  const users = ['a/b', 'x+', 'eve'].map((u) => ({ username: u, password: `${u}-pw` }));
  const b = await startBroker({
    listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users }], identity: { refuseWildcards: false } }],
    authorizers: [{ type: 'casbin', model: files.model, policy: files.policy, watch: false }],
  });
  t.teardown(async () => {
    await b.stop();
    files.cleanup();
  });
  const slash = await connect(b.port, as('a/b'));
  t.deepEqual(await subscribeCodes(slash, ['users/a/b/#', 'users/a/#', 'users/+/#']), [0x87, 0x87, 0x87]);
  const codes: number[] = [];
  slash.on('packetreceive', (p) => {
    if (p.cmd === 'puback') codes.push(p.reasonCode ?? 0);
  });
  await slash.publishAsync('users/a/b/x', 'x', { qos: 1 }).catch(() => undefined);
  t.deepEqual(codes, [0x87]);
  const plus = await connect(b.port, as('x+'));
  t.deepEqual(await subscribeCodes(plus, ['users/+/#', 'users/#']), [0x87, 0x87]);
  const eve = await connect(b.port, as('eve'));
  t.deepEqual(await subscribeCodes(eve, ['users/eve/#', 'users/+/#']), [0, 0x87]);
  for (const c of [slash, plus, eve]) c.end(true);
});

test('mosquitto_sub as a user allowed only its subtree gets nothing from another user\'s topic (SUBACK 0x80 seen as refused)', async (t) => {
  const b = await startCasbinBroker(POLICY, USERS);
  t.teardown(() => b.stop());
  const sub = spawn('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(b.port), '-u', 'alice', '-P', 'alice-pw', '-V', 'mqttv311', '-t', 'devices/alice/#', '-t', '#', '-v'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  sub.stdout.on('data', (d: Buffer) => (out += d.toString()));
  t.teardown(() => {
    sub.kill('SIGKILL');
  });
  // Wait for the subscription to be in place (audited), then publish.
  for (let i = 0; i < 100 && !b.audit.records.some((r) => r.event === 'subscribe' && r.username === 'alice' && r.topic === '#'); i++) await delay(20);
  const bob = await connect(b.port, as('bob'));
  const alice = await connect(b.port, as('alice'));
  await bob.publishAsync('devices/bob/x', 'from-bob', { qos: 1 });
  await alice.publishAsync('devices/alice/x', 'from-alice', { qos: 1 });
  for (let i = 0; i < 100 && !out.includes('from-alice'); i++) await delay(20);
  t.true(out.includes('devices/alice/x from-alice'));
  t.false(out.includes('from-bob'));
  t.truthy(b.audit.records.find((r) => r.event === 'subscribe' && r.decision === 'deny' && r.topic === '#' && r.username === 'alice'));
  bob.end(true);
  alice.end(true);
});

test('JWT topic claim (principal.attributes.jwt.topics) narrows the file policy by intersection', async (t) => {
  const jwtProvider = {
    id: 'fake-jwt',
    async authenticate(req: { clientId: string; username?: string }) {
      if (req.username !== 'svc') return { kind: 'abstain' as const };
      return {
        kind: 'allow' as const,
        value: { clientId: req.clientId, username: 'svc', method: 'jwt', provider: 'fake-jwt', roles: ['device'], attributes: { jwt: { sub: 'svc', topics: { publish: ['devices/svc/a'], subscribe: [] } } } },
      };
    },
  };
  const b = await startCasbinBroker(POLICY, USERS, {}, { authenticators: { test: [jwtProvider] } });
  t.teardown(() => b.stop());
  const svc = await connect(b.port, { username: 'svc', clientId: 'svc-1', protocolVersion: 5 });
  const codes: number[] = [];
  svc.on('packetreceive', (p) => {
    if (p.cmd === 'puback') codes.push(p.reasonCode ?? 0);
  });
  await svc.publishAsync('devices/svc/a', 'ok', { qos: 1 }).catch(() => undefined); // policy and claim allow: 0x10 no subscribers
  await svc.publishAsync('devices/svc/b', 'no', { qos: 1 }).catch(() => undefined); // policy allows, claim does not
  await svc.publishAsync('devices/bob/a', 'no', { qos: 1 }).catch(() => undefined); // neither
  t.deepEqual(codes, [0x10, 0x87, 0x87]);
  t.deepEqual(await subscribeCodes(svc, ['devices/svc/#']), [0x87]); // empty subscribe claim
  t.regex(b.audit.records.find((r) => r.topic === 'devices/svc/b')?.reason ?? '', /JWT claim 'topics'/);
  svc.end(true);
});

test('unsubscribe is allowed (it only removes access) and reports 0x00', async (t) => {
  const b = await startCasbinBroker(POLICY, USERS);
  t.teardown(() => b.stop());
  const alice = await connect(b.port, as('alice'));
  await alice.subscribeAsync('devices/alice/#');
  const ack = (await alice.unsubscribeAsync('devices/alice/#')) as unknown as { reasonCode?: number; reasonCodes?: number[] } | undefined;
  t.not(ack, null);
  const got = messagesWithin(alice, 300);
  await alice.publishAsync('devices/alice/x', 'x', { qos: 1 });
  t.deepEqual(await got, []);
  t.truthy(b.audit.records.find((r) => r.event === 'unsubscribe' && r.decision === 'allow'));
  alice.end(true);
});

