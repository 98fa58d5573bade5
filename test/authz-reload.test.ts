/**
 * Policy reloads: atomic, a bad file keeps the last good policy (audited), a good reload clears
 * the cache, removes live subscriptions that lost access (a v5 client is told) and is audited
 * with the policy version and what it affected.
 */
import fs from 'node:fs';
import test from 'ava';
import { REVOKED_TOPIC } from '../src/broker/recheck.ts';
import { connect, delay, messagesWithin, nextMessages, startCasbinBroker } from './helpers.ts';

const BEFORE = 'p, *, news/#, read, allow\np, user:pub, news/#, publish, allow\n';
const AFTER = 'p, user:keep, news/#, read, allow\np, user:pub, news/#, publish, allow\n';
const USERS = [{ username: 'pub' }, { username: 'keep' }, { username: 'lose' }, { username: 'old' }];
const as = (user: string, version: 4 | 5 = 5) => ({ username: user, password: `${user}-pw`, clientId: `${user}-${Math.random().toString(16).slice(2, 8)}`, protocolVersion: version });

test('a good reload removes subscriptions that lost access, tells the v5 client, and is audited with version and counts', async (t) => {
  const b = await startCasbinBroker(BEFORE, USERS);
  t.teardown(() => b.stop());
  const keep = await connect(b.port, as('keep'));
  const lose = await connect(b.port, as('lose'));
  const old = await connect(b.port, as('old', 4));
  for (const c of [keep, lose, old]) await c.subscribeAsync('news/#');
  const pub = await connect(b.port, as('pub'));
  const notice = nextMessages(lose, 1);
  const v3Got = messagesWithin(old, 600);

  fs.writeFileSync(b.files.policy, AFTER);
  const reports = await b.broker.reloadPolicy('test');
  t.like(reports[0], { ok: true });
  const revoked = (await notice)[0];
  t.is(revoked?.topic, REVOKED_TOPIC);
  t.is(revoked?.payload, 'news/#');

  const keepGot = nextMessages(keep, 1);
  const loseGot = messagesWithin(lose, 400);
  await pub.publishAsync('news/today', 'hello', { qos: 1 });
  t.is((await keepGot)[0]?.payload, 'hello');
  t.deepEqual(await loseGot, []);
  t.deepEqual(await v3Got, []);

  const reload = b.audit.records.find((r) => r.event === 'reload');
  t.like(reload, { decision: 'allow', decidedBy: 'casbin' });
  t.is(reload?.policyVersion, reports[0]?.version);
  t.regex(reload?.reason ?? '', /2 of 4 sessions \(live and offline\) lost 2 subscriptions/);
  t.truthy(b.audit.records.find((r) => r.event === 'subscribe' && r.username === 'lose' && /removed after a policy reload/.test(r.reason ?? '')));
  for (const c of [keep, lose, old, pub]) c.end(true);
});

test('a bad reload keeps the last good policy and is audited with the error naming file and line', async (t) => {
  const b = await startCasbinBroker(BEFORE, USERS);
  t.teardown(() => b.stop());
  const lose = await connect(b.port, as('lose'));
  await lose.subscribeAsync('news/#');
  const versionBefore = (await b.broker.reloadPolicy())[0]?.version;
  // A reload that fails halfway: the editor has written only part of the new file.
  fs.writeFileSync(b.files.policy, 'p, user:keep, news/#, read, allow\np, user:pub, news/#, pub');
  const [report] = await b.broker.reloadPolicy('test');
  t.false(report?.ok);
  t.regex(report?.detail ?? '', /policy\.csv:2: missing field/);
  const failed = b.audit.records.find((r) => r.event === 'reload' && r.decision === 'deny');
  t.regex(failed?.reason ?? '', /last good policy kept: .*policy\.csv:2: missing field/);
  t.is(failed?.policyVersion, versionBefore);
  // The old policy still applies: lose keeps its subscription and pub may still publish.
  const pub = await connect(b.port, as('pub'));
  const got = nextMessages(lose, 1);
  await pub.publishAsync('news/x', 'still', { qos: 1 });
  t.is((await got)[0]?.payload, 'still');
  lose.end(true);
  pub.end(true);
});

test('a changed policy file is reloaded on its own, and the cache is cleared', async (t) => {
  const b = await startCasbinBroker(BEFORE, USERS, { watch: true });
  t.teardown(() => b.stop());
  const pub = await connect(b.port, as('pub'));
  const codes: number[] = [];
  pub.on('packetreceive', (p) => {
    if (p.cmd === 'puback') codes.push(p.reasonCode ?? 0);
  });
  await pub.publishAsync('news/a', '1', { qos: 1 }); // cached: allowed (no subscribers: 0x10)
  fs.writeFileSync(b.files.policy, 'p, user:keep, news/#, read, allow\n');
  for (let i = 0; i < 150 && !b.audit.records.some((r) => r.event === 'reload'); i++) await delay(20);
  t.like(b.audit.records.find((r) => r.event === 'reload'), { decision: 'allow' });
  await pub.publishAsync('news/a', '2', { qos: 1 }).catch(() => undefined);
  t.deepEqual(codes, [0x10, 0x87]);
  pub.end(true);
});

test('a good reload also removes a lost subscription from an offline persistent session, audited; the client finds it gone', async (t) => {
  const b = await startCasbinBroker(BEFORE, USERS);
  t.teardown(() => b.stop());
  const clientId = `lose-offline-${Math.random().toString(16).slice(2, 8)}`;
  const opts = { username: 'lose', password: 'lose-pw', clientId, protocolVersion: 5 as const, clean: false, properties: { sessionExpiryInterval: 600 } };
  const first = await connect(b.port, opts);
  await first.subscribeAsync('news/#', { qos: 1 });
  await first.endAsync();
  await delay(100);

  fs.writeFileSync(b.files.policy, AFTER);
  const [report] = await b.broker.reloadPolicy('test');
  t.true(report?.ok);
  const removed = b.audit.records.find((r) => r.event === 'subscribe' && r.decision === 'deny' && r.clientId === clientId);
  t.truthy(removed, 'the offline session lost its subscription and it was audited');
  t.regex(removed?.reason ?? '', /removed after a policy reload \(session offline\)/);
  t.is(removed?.username, 'lose');
  t.is(removed?.topic, 'news/#');

  // A QoS 1 message published while it is still offline is not queued for it...
  const pub = await connect(b.port, as('pub'));
  await pub.publishAsync('news/while-away', 'x', { qos: 1 });
  // ...and when it resumes its session, nothing arrives on the old filter.
  const back = await connect(b.port, opts);
  const got = messagesWithin(back, 500);
  await pub.publishAsync('news/after', 'y', { qos: 1 });
  t.deepEqual(await got, []);
  for (const c of [back, pub]) c.end(true);
});
