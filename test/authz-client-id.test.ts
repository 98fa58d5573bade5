/**
 * Policy lines keyed on the client id (`client:` subjects, `g, client:...`, `%c`) are only as
 * trustworthy as the listener's binding of client ids to the identity. On a listener that does
 * not bind them they are refused at load with the file, the line and the reason; with
 * `clientIdRules: bound-listeners` they allow only on listeners that bind, over real sockets.
 */
import fs from 'node:fs';
import test from 'ava';
import type { MqttClient } from 'mqtt';
import { listenerBindings } from '../src/authz/casbin/client-id.ts';
import { ConfigError, createBroker, MemoryAuditSink, parseConfig, type ConfigInput } from '../src/index.ts';
import { silentLogger } from '../src/log.ts';
import { connect, delay, messagesWithin, nextMessages, writePolicyDir } from './helpers.ts';
import { casbinBroker, connectCode, pubackCode } from './authz-support.ts';

const USERS = ['alice', 'plc-controller', 'watch'].map((u) => ({ username: u, password: `${u}-pw`, roles: [] }));
const login = (user: string, clientId: string) => ({ username: user, password: `${user}-pw`, clientId, protocolVersion: 5 as const });

function brokerWith(policy: string, listeners: ConfigInput['listeners'], casbin: Record<string, unknown> = {}) {
  const dir = writePolicyDir(policy);
  try {
    return { dir, broker: createBroker({ listeners, authorizers: [{ type: 'casbin', model: dir.model, policy: dir.policy, watch: false, ...casbin } as never], sys: { intervalSeconds: 0 }, store: { type: 'memory' } }, { logger: silentLogger(), audit: new MemoryAuditSink() }) };
  } catch (err) {
    dir.cleanup();
    throw err;
  }
}

const OPEN: ConfigInput['listeners'] = [{ name: 'office', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users: USERS }] }];

test('a client: subject, a g, client: line or %c on a listener that does not bind client ids stops the start with file, line and reason', (t) => {
  for (const [policy, line, what] of [
    ['p, *, plant/status, read, allow\np, client:plc-controller, plant/valves/#, *, allow\n', 2, "the subject 'client:plc-controller'"],
    ['p, role:valves, plant/valves/#, *, allow\n# the controller\ng, client:plc-controller, role:valves\n', 3, "the member 'client:plc-controller'"],
    ['p, *, devices/%c/#, *, allow\n', 1, "%c in 'devices/%c/#'"],
  ] as const) {
    const dir = writePolicyDir(policy);
    t.teardown(dir.cleanup);
    const err = t.throws(() => createBroker({ listeners: OPEN, authorizers: [{ type: 'casbin', model: dir.model, policy: dir.policy }] }, { logger: silentLogger(), audit: new MemoryAuditSink() }), { instanceOf: ConfigError });
    t.is(err?.issues[0]?.key, 'authorizers[0].policy');
    t.true(err?.message.includes(`${dir.policy}:${line}: ${what} depends on the client id, but listener 'office' does not bind client ids to the identity (identity.clientIdBinding: none)`), err?.message);
  }
});

test('the same policy loads where every listener binds client ids, and only the bound identity gets the client id and the rule', async (t) => {
  const b = await casbinBroker(t, 'p, client:plc-controller, plant/valves/#, *, allow\np, user:watch, plant/#, read, allow\n', {
    users: [{ username: 'alice' }, { username: 'plc-controller' }, { username: 'watch' }],
    identity: { clientIdBinding: 'equals' },
  });
  t.is(await connectCode(() => connect(b.port, login('alice', 'plc-controller'))), 0x85, 'alice cannot claim the client id');
  const watch = await connect(b.port, login('watch', 'watch'));
  const plc = await connect(b.port, login('plc-controller', 'plc-controller'));
  t.teardown(() => [watch, plc].forEach((c) => c.end(true)));
  await watch.subscribeAsync('plant/#');
  const got = nextMessages(watch, 1);
  t.is(await pubackCode(plc, 'plant/valves/7', 'open'), 0);
  t.is((await got)[0]?.payload, 'open');
});

test('a reload that adds a client: line on a listener that does not bind client ids fails and keeps the last good policy', async (t) => {
  const b = await casbinBroker(t, 'p, user:alice, a/#, publish, allow\n', { users: [{ username: 'alice' }] });
  fs.writeFileSync(b.files.policy, 'p, user:alice, a/#, publish, allow\np, client:alice-1, b/#, publish, allow\n');
  const [report] = await b.broker.reloadPolicy('test');
  t.false(report?.ok);
  t.regex(report?.detail ?? '', /policy\.csv:2: the subject 'client:alice-1' depends on the client id, but listener 'test' does not bind/);
  const alice = await connect(b.port, login('alice', 'alice-1'));
  t.teardown(() => alice.end(true));
  t.is(await pubackCode(alice, 'b/x'), 0x87);
  t.true([0, 0x10].includes(await pubackCode(alice, 'a/x')));
});

test('clientIdRules: bound-listeners: a client: rule allows on the listener that binds client ids, never on the one that does not, and its deny rules apply on both', async (t) => {
  const policy = [
    'p, client:plc-controller, plant/valves/#, publish, allow',
    'g, client:plc-controller, role:valves',
    'p, role:valves, plant/pumps/#, publish, allow',
    'p, *, devices/%c/#, publish, allow',
    'p, user:watch, #, read, allow',
    'p, *, open/#, publish, allow',
    'p, client:intruder, open/#, publish, deny',
    '',
  ].join('\n');
  const { dir, broker } = brokerWith(
    policy,
    [
      { name: 'plant', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users: USERS }], identity: { clientIdBinding: 'equals' } },
      { name: 'office', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users: USERS }] },
    ],
    { clientIdRules: 'bound-listeners' },
  );
  t.teardown(dir.cleanup);
  const { listeners } = await broker.start();
  t.teardown(() => broker.stop());
  const port = (name: string) => listeners.find((l) => l.name === name)?.port as number;
  const clients: MqttClient[] = [];
  t.teardown(() => clients.forEach((c) => c.end(true)));
  const open = async (listener: string, user: string, clientId: string) => {
    const c = await connect(port(listener), login(user, clientId));
    clients.push(c);
    return c;
  };
  const watch = await open('plant', 'watch', 'watch');
  await watch.subscribeAsync('#');
  const seen = messagesWithin(watch, 900);

  // The issue: alice connects as plc-controller where client ids are not bound.
  const squatter = await open('office', 'alice', 'plc-controller');
  t.is(await pubackCode(squatter, 'plant/valves/7', 'FORGED'), 0x87);
  t.is(await pubackCode(squatter, 'plant/pumps/1', 'FORGED'), 0x87, 'nor the role linked to the client id');
  t.is(await pubackCode(squatter, 'devices/plc-controller/x', 'FORGED'), 0x87, 'nor %c');
  // (While it holds the client id, the real controller could not connect: that is the session's business.)
  await squatter.endAsync();
  await delay(100);
  // The real controller, on the listener that binds client ids.
  const plc = await open('plant', 'plc-controller', 'plc-controller');
  t.is(await pubackCode(plc, 'plant/valves/7', 'real'), 0);
  t.is(await pubackCode(plc, 'plant/pumps/1', 'real'), 0);
  t.is(await pubackCode(plc, 'devices/plc-controller/x', 'real'), 0);
  // A deny keyed on a client id still denies where client ids are not bound.
  const intruder = await open('office', 'alice', 'intruder');
  t.is(await pubackCode(intruder, 'open/x', 'no'), 0x87);
  const other = await open('office', 'alice', 'alice-2');
  t.true([0, 0x10].includes(await pubackCode(other, 'open/x', 'ok')));

  const payloads = (await seen).map((m) => m.payload);
  t.false(payloads.includes('FORGED'));
  t.is(payloads.filter((p) => p === 'real').length, 3);
});

test('which listeners bind client ids: identity rules, or every provider checking the client id itself', (t) => {
  const config = parseConfig({
    listeners: [
      { name: 'none', type: 'tcp', port: 0, auth: ['anonymous'] },
      { name: 'equals', type: 'tcp', port: 0, auth: ['anonymous'], identity: { clientIdBinding: 'equals' } },
      { name: 'prefix', type: 'tcp', port: 0, auth: ['anonymous'], identity: { clientIdBinding: 'prefix' } },
      { name: 'psk', type: 'tcp', port: 0, auth: [{ provider: 'psk', bindClientId: true }] },
      { name: 'psk-open', type: 'tcp', port: 0, auth: [{ provider: 'psk' }] },
      { name: 'jwt', type: 'tcp', port: 0, auth: [{ provider: 'jwt', keyFiles: ['k.pem'], algorithms: ['ES256'], issuer: 'i', audience: 'a', claims: { clientId: 'cid' } }] },
      { name: 'mixed', type: 'tcp', port: 0, auth: [{ provider: 'psk', bindClientId: true }, 'anonymous'] },
      { name: 'empty', type: 'tcp', port: 0, auth: [] },
    ],
  });
  const bound = (extra = {}) => Object.fromEntries(listenerBindings(config, extra).map((l) => [l.name, l.clientIdBound]));
  t.deepEqual(bound(), { none: false, equals: true, prefix: true, psk: true, 'psk-open': false, jwt: true, mixed: false, empty: false });
  t.false(bound({ psk: [{}] }).psk, 'a provider added in code is not known to bind');
});
