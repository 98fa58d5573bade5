/**
 * Issue: authorization fails closed on every input. Each case reproduced the way it was found,
 * on a live broker over real sockets: placeholder values that reach `$SYS` or `$share`, a will
 * into `$SYS`, a deny rule hidden by a lone CR (and its cousins), a model that reads as
 * `m = true`, placeholder expansion past its limit, `$share` deny rules that hit every group, and
 * the parent of `#`.
 */
import fs from 'node:fs';
import test from 'ava';
import { ConfigError, createBroker, MemoryAuditSink } from '../src/index.ts';
import { silentLogger } from '../src/log.ts';
import { connect, messagesWithin, nextMessages, startBroker, writePolicyDir } from './helpers.ts';
import { casbinBroker, connectCode, fakeProvider, pubackCode, subscribeCodes } from './authz-support.ts';

const login = (user: string, clientId = user, version: 4 | 5 = 5, extra = {}) => ({ username: user, password: `${user}-pw`, clientId, protocolVersion: version, ...extra });

test('a client id or user name of $SYS does not open $SYS through %c or %u; an ordinary one still gets its own tree', async (t) => {
  // Client ids are bound to user names here, so %c is accepted in the policy.
  const b = await casbinBroker(t, 'p, *, %c/#, read, allow\np, *, home/%u/#, read, allow\n', { users: [{ username: '$SYS' }, { username: 'alice' }], identity: { clientIdBinding: 'equals' }, sysInterval: 1 });
  const sys = await connect(b.port, login('$SYS'));
  t.teardown(() => sys.end(true));
  t.deepEqual(await subscribeCodes(sys, ['$SYS/#', '$SYS/broker/+', 'home/$SYS/#']), [0x87, 0x87, 0x87]);
  t.deepEqual(await messagesWithin(sys, 1300), [], 'no $SYS statistics reach it');
  const alice = await connect(b.port, login('alice'));
  t.teardown(() => alice.end(true));
  t.deepEqual(await subscribeCodes(alice, ['alice/#', 'home/alice/#']), [0, 0]);
  t.truthy(b.audit.records.find((r) => r.event === 'subscribe' && r.decision === 'deny' && r.topic === '$SYS/#' && r.username === '$SYS'));
});

test('a user named $share with a group claim of g gets no shared subscription to everything', async (t) => {
  const who = fakeProvider('$share', () => ({ username: '$share', roles: [], attributes: { jwt: { group: 'g' } } }));
  const b = await casbinBroker(t, 'p, *, %u/%{jwt.group}/#, read, allow\np, user:pub, #, publish, allow\n', { users: [{ username: 'pub' }], authenticators: [who] });
  const c = await connect(b.port, { username: '$share', clientId: 'sh-1', protocolVersion: 5 });
  t.teardown(() => c.end(true));
  t.deepEqual(await subscribeCodes(c, ['$share/g/#', '$share/g/a/#']), [0x87, 0x87]);
  const pub = await connect(b.port, login('pub'));
  t.teardown(() => pub.end(true));
  const got = messagesWithin(c, 400);
  await pub.publishAsync('a/b', 'x', { qos: 1 });
  t.deepEqual(await got, []);
});

test('a will into $SYS refuses the CONNECT (0x87 / 5) even with allow-all, a retained one is never stored, and a $SYS subscriber never sees it', async (t) => {
  const b = await startBroker({ sys: { intervalSeconds: 0 } }); // anonymous, allow-all
  t.teardown(() => b.stop());
  const watcher = await connect(b.port, { clientId: 'watcher', protocolVersion: 5 });
  t.teardown(() => watcher.end(true));
  await watcher.subscribeAsync('$SYS/#');
  const seen = messagesWithin(watcher, 800);
  const will = { topic: '$SYS/broker/alert', payload: Buffer.from('FORGED'), qos: 1 as const, retain: true };
  t.is(await connectCode(() => connect(b.port, { clientId: 'forger-5', protocolVersion: 5, will })), 0x87);
  t.is(await connectCode(() => connect(b.port, { clientId: 'forger-4', protocolVersion: 4, will })), 5);
  // A publish there is refused as before, through the same check.
  const direct = await connect(b.port, { clientId: 'direct', protocolVersion: 5 });
  t.teardown(() => direct.end(true));
  t.is(await pubackCode(direct, '$SYS/broker/alert', 'FORGED', { retain: true }), 0x87);
  t.deepEqual(await seen, []);
  const late = await connect(b.port, { clientId: 'late', protocolVersion: 5 });
  t.teardown(() => late.end(true));
  const retained = messagesWithin(late, 400);
  await late.subscribeAsync('$SYS/broker/alert');
  t.deepEqual(await retained, [], 'nothing was retained');
  const wills = b.audit.records.filter((r) => r.event === 'will' && r.decision === 'deny');
  t.is(wills.length, 2);
  t.like(wills[0], { topic: '$SYS/broker/alert', decidedBy: 'reserved-topic', reason: '$SYS topics are reserved for the broker' });
});

test('a will into $SYS is refused by a Casbin policy that allows $SYS/# too', async (t) => {
  const b = await casbinBroker(t, 'p, *, $SYS/#, *, allow\np, *, #, *, allow\n', { users: [{ username: 'alice' }] });
  const will = { topic: '$SYS/broker/alert', payload: Buffer.from('FORGED'), qos: 0 as const, retain: true };
  t.is(await connectCode(() => connect(b.port, login('alice', 'alice-w', 5, { will }))), 0x87);
  const alice = await connect(b.port, login('alice', 'alice-ok', 5, { will: { ...will, topic: 'status/alice' } }));
  t.teardown(() => alice.end(true));
  t.is(alice.connected, true, 'a will elsewhere is fine');
});

/** A policy whose deny rule sits on the line after `comment`, joined by `join`. */
const hidden = (join: string) => `p, *, devices/#, *, allow\n# secrets are off limits${join}p, *, devices/+/secret/#, *, deny\n`;

test('a deny rule hidden behind a lone CR, U+2028, U+2029 or NEL is refused at start and at reload, naming the line; the deny stays in force', async (t) => {
  const b = await casbinBroker(t, hidden('\n'), { users: [{ username: 'alice' }] });
  const alice = await connect(b.port, login('alice'));
  t.teardown(() => alice.end(true));
  t.is(await pubackCode(alice, 'devices/x/secret/key'), 0x87);
  for (const [join, name] of [['\r', 'U+000D CARRIAGE RETURN'], ['\u2028', 'U+2028 LINE SEPARATOR'], ['\u2029', 'U+2029 PARAGRAPH SEPARATOR'], ['\u0085', 'U+0085 NEXT LINE']] as const) {
    fs.writeFileSync(b.files.policy, hidden(join));
    const [report] = await b.broker.reloadPolicy('test');
    t.false(report?.ok, name);
    t.true(report?.detail?.includes(`${b.files.policy}:2: ${name}`), report?.detail);
    t.is(await pubackCode(alice, 'devices/x/secret/key'), 0x87, `the deny rule is still in force after ${name}`);
    const dir = writePolicyDir(hidden(join));
    t.teardown(dir.cleanup);
    const err = t.throws(() => createBroker({ authorizers: [{ type: 'casbin', model: dir.model, policy: dir.policy }] }, { logger: silentLogger(), audit: new MemoryAuditSink() }), { instanceOf: ConfigError });
    t.is(err?.issues[0]?.key, 'authorizers[0].policy');
    t.true(err?.message.includes(`${dir.policy}:2: ${name}`), err?.message);
  }
});

test('a zero-width space or a bidi override inside a subject is refused with the line and column', async (t) => {
  const b = await casbinBroker(t, 'p, *, devices/#, *, allow\np, user:alice, devices/+/secret/#, *, deny\n', { users: [{ username: 'alice' }] });
  const alice = await connect(b.port, login('alice'));
  t.teardown(() => alice.end(true));
  for (const [text, problem] of [
    ['p, *, devices/#, *, allow\np, user:al\u200Bice, devices/+/secret/#, *, deny\n', ':2: U+200B ZERO WIDTH SPACE at column 11: an invisible character'],
    ['p, *, devices/#, *, allow\np, user:\u202Eecila, devices/+/secret/#, *, deny\n', ':2: U+202E RIGHT-TO-LEFT OVERRIDE at column 9: a bidirectional control'],
  ] as const) {
    fs.writeFileSync(b.files.policy, text);
    const [report] = await b.broker.reloadPolicy('test');
    t.false(report?.ok);
    t.true(report?.detail?.includes(problem), report?.detail);
    t.is(await pubackCode(alice, 'devices/x/secret/key'), 0x87, 'the deny rule for alice still applies');
  }
});

test('a model that Casbin reads as m = true, or with || for &&, stops the start with the model line', (t) => {
  const good = fs.readFileSync(new URL('../policies/model.conf', import.meta.url), 'utf8');
  const line = good.split('\n').findIndex((l) => l.startsWith('m = ')) + 1;
  for (const [model, problem] of [
    [good.replace('m = subjectMatch', 'm = true # && subjectMatch'), /Casbin cuts a line at the first '#' or ';': it reads .* as 'm = true'/],
    [good.replace('m = subjectMatch', 'm = true ; && subjectMatch'), /it reads .* as 'm = true'/],
    [good.replace(') && mqttMatch', ') || mqttMatch'), /the matcher must be exactly/],
    [good.replace(' && conditionMatch(r.qos, r.retain, p.qos, p.retain)', ''), /the matcher must be exactly/],
  ] as const) {
    const dir = writePolicyDir('p, *, #, *, deny\n');
    t.teardown(dir.cleanup);
    fs.writeFileSync(dir.model, model);
    const err = t.throws(() => createBroker({ authorizers: [{ type: 'casbin', model: dir.model, policy: dir.policy }] }, { logger: silentLogger(), audit: new MemoryAuditSink() }), { instanceOf: ConfigError });
    t.is(err?.issues[0]?.key, 'authorizers[0].model');
    t.true(err?.message.includes(`${dir.model}:${line}:`), err?.message);
    t.regex(err?.message ?? '', problem);
  }
});

/** PUBACK of an allowed publish: success, or no matching subscribers. */
const ALLOWED = [0x00, 0x10];
const URIS = (n: number) => Array.from({ length: n }, (_, i) => `urn:dev:${i}`);
const certProvider = (user: string, uris: string[], roles: string[] = []) => fakeProvider(user, () => ({ username: user, roles, attributes: { cert: { cn: user, san: { uri: uris } } } }));

test('a deny rule whose placeholders expand past the limit denies (70 SAN URIs, 8 roles x 9 URIs), audited with the rule and the count', async (t) => {
  const policy = 'p, *, t/#, *, allow\np, *, t/%{cert.san.uri}/#, publish, deny\np, *, r/#, *, allow\np, *, r/%r/%{cert.san.uri}/#, publish, deny\n';
  const roles = Array.from({ length: 8 }, (_, i) => `role${i}`);
  const b = await casbinBroker(t, policy, { authenticators: [certProvider('many', URIS(70)), certProvider('roles', URIS(9), roles), certProvider('few', URIS(3))] });
  const many = await connect(b.port, { username: 'many', clientId: 'many-1', protocolVersion: 5 });
  t.teardown(() => many.end(true));
  t.is(await pubackCode(many, 't/urn:dev:65/x'), 0x87, 'the 66th URI is denied');
  t.is(await pubackCode(many, 't/urn:dev:1/x'), 0x87);
  t.is(await pubackCode(many, 't/elsewhere'), 0x87, 'past the limit the deny rule applies to every topic');
  const rec = b.audit.records.find((r) => r.event === 'publish' && r.topic === 't/urn:dev:65/x');
  t.like(rec, { decision: 'deny', decidedBy: 'casbin', rule: `${b.files.policy}:2` });
  t.regex(rec?.reason ?? '', /expand to 70 filters, over the limit of 64/);
  t.truthy(rec?.policyVersion);

  const r = await connect(b.port, { username: 'roles', clientId: 'roles-1', protocolVersion: 5 });
  t.teardown(() => r.end(true));
  t.is(await pubackCode(r, 'r/role7/urn:dev:8/x'), 0x87, '8 roles x 9 URIs = 72 also passes the limit');
  t.regex(b.audit.records.find((x) => x.topic === 'r/role7/urn:dev:8/x')?.reason ?? '', /expand to 72 filters/);

  // Under the limit the deny rule is exact: a device with 3 URIs is denied only its own trees.
  const few = await connect(b.port, { username: 'few', clientId: 'few-1', protocolVersion: 5 });
  t.teardown(() => few.end(true));
  t.is(await pubackCode(few, 't/urn:dev:2/x'), 0x87);
  t.true(ALLOWED.includes(await pubackCode(few, 't/urn:dev:3/x')), 'allowed');
});

test('a deny rule fails closed on a value it cannot use (a number, a/b, $SYS): the level becomes +, so the rule still denies; an allow rule with such a value allows nothing', async (t) => {
  const policy = 'p, *, t/#, publish, allow\np, *, t/%{jwt.tags}/#, publish, deny\np, *, own/%{jwt.tags}/#, publish, allow\n';
  const jwtProvider = (user: string, tags: unknown) => fakeProvider(user, () => ({ username: user, roles: [], attributes: { jwt: { tags } } }));
  const b = await casbinBroker(t, policy, { authenticators: [jwtProvider('num', 12345), jwtProvider('slash', 'a/b'), jwtProvider('sys', '$SYS'), jwtProvider('plain', 'x1'), jwtProvider('none', undefined), jwtProvider('nul', null), jwtProvider('nuls', [null])] });
  const cases: [string, string, number[]][] = [
    ['num', 't/12345/a', [0x87]],
    ['num', 't/other/a', [0x87]],
    ['slash', 't/a/b/c', [0x87]],
    ['sys', 't/$SYS/a', [0x87]],
    ['plain', 't/x1/a', [0x87]],
    ['plain', 't/x2/a', ALLOWED],
    ['none', 't/anything/a', ALLOWED],
    ['nul', 't/z/x', [0x87]],
    ['nuls', 't/z/x', [0x87]],
    ['num', 'own/12345/a', [0x87]],
    ['slash', 'own/a/b/c', [0x87]],
  ];
  for (const [user, topic, codes] of cases) {
    const c = await connect(b.port, { username: user, clientId: `${user}-${topic.length}`, protocolVersion: 5 });
    t.true(codes.includes(await pubackCode(c, topic)), `${user} publishing to ${topic}`);
    c.end(true);
  }
});

test('an allow rule whose placeholders expand past the limit allows nothing, and the denial names it with the count', async (t) => {
  const b = await casbinBroker(t, 'p, *, own/%{cert.san.uri}/#, publish, allow\n', { authenticators: [certProvider('many', URIS(70)), certProvider('few', URIS(2))] });
  const many = await connect(b.port, { username: 'many', clientId: 'many-1', protocolVersion: 5 });
  t.teardown(() => many.end(true));
  t.is(await pubackCode(many, 'own/urn:dev:0/x'), 0x87);
  const rec = b.audit.records.find((r) => r.event === 'publish' && r.topic === 'own/urn:dev:0/x');
  t.like(rec, { decision: 'deny', rule: `${b.files.policy}:1` });
  t.regex(rec?.reason ?? '', /no policy rule allows it \(.*policy\.csv:1 was not applied: its placeholders expand to 70 filters, over the limit of 64\)/);
  const few = await connect(b.port, { username: 'few', clientId: 'few-1', protocolVersion: 5 });
  t.teardown(() => few.end(true));
  t.true(ALLOWED.includes(await pubackCode(few, 'own/urn:dev:1/x')));
});

test('a deny rule on $share/g1/... refuses group g1 only: plain subscribers and other groups still get the messages', async (t) => {
  const b = await casbinBroker(t, 'p, *, shared/#, *, allow\np, *, $share/g1/shared/#, read, deny\n', { users: [{ username: 'a' }, { username: 'pub' }] });
  const plain = await connect(b.port, login('a', 'plain'));
  const g2 = await connect(b.port, login('a', 'g2'));
  const g1 = await connect(b.port, login('a', 'g1'));
  t.teardown(() => [plain, g2, g1].forEach((c) => c.end(true)));
  t.deepEqual(await subscribeCodes(plain, ['shared/#']), [0]);
  t.deepEqual(await subscribeCodes(g2, ['$share/g2/shared/#']), [0]);
  t.deepEqual(await subscribeCodes(g1, ['$share/g1/shared/#', '$share/g1/shared/x']), [0x87, 0x87]);
  const pub = await connect(b.port, login('pub'));
  t.teardown(() => pub.end(true));
  const gotPlain = nextMessages(plain, 1);
  const gotG2 = nextMessages(g2, 1);
  await pub.publishAsync('shared/x', 'hello', { qos: 1 });
  t.is((await gotPlain)[0]?.payload, 'hello');
  t.is((await gotG2)[0]?.payload, 'hello');
  t.falsy(b.audit.records.find((r) => r.event === 'deliver' && r.decision === 'deny'));
});

test('the parent of #: allow +/# grants a subscription to #, and in the strict mode deny /# does not refuse +', async (t) => {
  const b = await casbinBroker(t, 'p, user:a, +/#, read, allow\np, user:pub, #, publish, allow\n', { users: [{ username: 'a' }, { username: 'pub' }] });
  const a = await connect(b.port, login('a'));
  t.teardown(() => a.end(true));
  t.deepEqual(await subscribeCodes(a, ['#', '$SYS/#']), [0, 0x87]);
  const pub = await connect(b.port, login('pub'));
  t.teardown(() => pub.end(true));
  const got = nextMessages(a, 1);
  await pub.publishAsync('top', 'x', { qos: 1 });
  t.is((await got)[0]?.topic, 'top');

  const strict = await casbinBroker(t, 'p, *, #, *, allow\np, *, /#, subscribe, deny\n', { users: [{ username: 'a' }], casbin: { subscribeDenyOverlap: 'refuse' } });
  const s = await connect(strict.port, login('a'));
  t.teardown(() => s.end(true));
  t.deepEqual(await subscribeCodes(s, ['+', '/#', '/x', '#']), [0, 0x87, 0x87, 0x87]);
});
