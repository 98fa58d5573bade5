/**
 * Failed-login protection, identity rules and module providers over real sockets.
 */
import http from 'node:http';
import type net from 'node:net';
import path from 'node:path';
import test from 'ava';
import { startBroker } from './helpers.ts';
import { connectFrom, passwd, refusalCode, root, tempDir } from './auth-support.ts';

test('100 wrong passwords from one IP: backoff engages, then a ban (audited, refused before argon2); another IP is unaffected; the ban expires (audited)', async (t) => {
  const file = path.join(tempDir(t), 'passwords');
  t.is(passwd(['add', file, 'alice'], 'alice-secret\n').code, 0);
  t.is(passwd(['add', file, 'bob'], 'bob-secret\n').code, 0);
  const tb = await startBroker({
    listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'password', file }] }],
    authGuard: { backoffAfter: 3, baseDelayMs: 20, maxDelayMs: 100, banAfter: 8, banMs: 1500, byUsername: false },
  });
  t.teardown(() => tb.stop());
  const codes: number[] = [];
  const started = Date.now();
  for (let i = 0; i < 100; i++) {
    codes.push((await refusalCode(tb.port, { protocolVersion: 5, clientId: `atk-${i}`, username: 'alice', password: `guess-${i}` })).code);
  }
  const elapsed = Date.now() - started;
  t.true(codes.slice(0, 3).every((c) => c === 0x86), 'the first failures reach the provider');
  t.true(codes.includes(0x9f), 'backoff refuses attempts that come too soon (0x9F)');
  t.true(codes.includes(0x8a), 'then the IP is banned (0x8A)');
  const argon2Runs = tb.audit.records.filter((r) => r.event === 'connect' && r.decidedBy === 'password').length;
  t.true(argon2Runs <= 10, `only ${argon2Runs} of 100 attempts ran argon2`);
  const bans = tb.audit.records.filter((r) => r.event === 'ban');
  t.is(bans.length, 1);
  t.is(bans[0]?.remoteAddress, '127.0.0.1');
  const guardDenials = tb.audit.records.filter((r) => r.event === 'connect' && r.decidedBy === 'guard');
  t.true(guardDenials.length >= 85);
  t.true(guardDenials.every((r) => r.verdicts?.[0]?.provider === 'guard' && r.verdicts[0].detail !== undefined));
  // Even the right password is refused from the banned address…
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'alice-ok', username: 'alice', password: 'alice-secret' })).code, 0x8a);
  // …while another source address is unaffected.
  const other = await connectFrom(tb.port, '127.0.0.2', { protocolVersion: 5, clientId: 'bob-1', username: 'bob', password: 'bob-secret' });
  other.end(true);
  t.is((await refusalCode(tb.port, { protocolVersion: 4, clientId: 'bob-2', username: 'bob', password: 'x', localAddress: '127.0.0.2' })).code, 4, 'and gets normal refusals');
  t.is((await refusalCode(tb.port, { protocolVersion: 4, clientId: 'v3-banned', username: 'alice', password: 'x' })).code, 5, 'v3.1.1 sees return code 5 while banned');
  // The ban expires: unban is audited and the right password works again.
  const until = Date.now() + 4000;
  while (Date.now() < until && !tb.audit.records.some((r) => r.event === 'unban')) await new Promise((r) => setTimeout(r, 50));
  t.is(tb.audit.records.filter((r) => r.event === 'unban')[0]?.remoteAddress, '127.0.0.1');
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'alice-ok2', username: 'alice', password: 'alice-secret' })).code, 0);
  t.log(`100 attempts took ${elapsed} ms`);
});

test('backoff by user name: failures for one user name slow that user name from any address', async (t) => {
  const tb = await startBroker({
    listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users: [{ username: 'carol', password: 'carol-pw' }, { username: 'dave', password: 'dave-pw' }] }] }],
    authGuard: { backoffAfter: 2, baseDelayMs: 5000, banAfter: 50, byIp: false },
  });
  t.teardown(() => tb.stop());
  for (let i = 0; i < 2; i++) t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: `c${i}`, username: 'carol', password: 'bad' })).code, 0x86);
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'c-other-ip', username: 'carol', password: 'carol-pw', localAddress: '127.0.0.2' })).code, 0x9f);
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'd1', username: 'dave', password: 'dave-pw' })).code, 0, 'another user name is unaffected');
});

test('identity rules: + # U+0000 in user names and client ids are refused by default; client id binding equals / prefix', async (t) => {
  const users = [
    { username: 'dev+1', password: 'pw' },
    { username: 'dev1', password: 'pw' },
  ];
  const tb = await startBroker({
    listeners: [
      { name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users }] },
    ],
    authGuard: { enabled: false },
  });
  t.teardown(() => tb.stop());
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'x', username: 'dev+1', password: 'pw' })).code, 0x86);
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'a/#', username: 'dev1', password: 'pw' })).code, 0x85);
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'anything', username: 'dev1', password: 'pw' })).code, 0, 'no binding by default');
  const rec = tb.audit.records.find((r) => r.event === 'connect' && r.clientId === 'a/#');
  t.is(rec?.decidedBy, 'identity');

  const bound = await startBroker({
    listeners: [
      { name: 'eq', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users }], identity: { clientIdBinding: 'equals' } },
    ],
    authGuard: { enabled: false },
  });
  t.teardown(() => bound.stop());
  t.is((await refusalCode(bound.port, { protocolVersion: 5, clientId: 'dev1', username: 'dev1', password: 'pw' })).code, 0);
  t.is((await refusalCode(bound.port, { protocolVersion: 5, clientId: 'dev2', username: 'dev1', password: 'pw' })).code, 0x85, 'cannot take another identity’s client id');
  t.is((await refusalCode(bound.port, { protocolVersion: 4, clientId: 'dev2', username: 'dev1', password: 'pw' })).code, 2, 'v3.1.1: identifier rejected');
  const prefix = await startBroker({
    listeners: [
      { name: 'pre', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users }], identity: { clientIdBinding: 'prefix', refuseWildcards: false } },
    ],
    authGuard: { enabled: false },
  });
  t.teardown(() => prefix.stop());
  t.is((await refusalCode(prefix.port, { protocolVersion: 5, clientId: 'dev1-sensor-7', username: 'dev1', password: 'pw' })).code, 0);
  t.is((await refusalCode(prefix.port, { protocolVersion: 5, clientId: 'dev2-x', username: 'dev1', password: 'pw' })).code, 0x85);
  t.is((await refusalCode(prefix.port, { protocolVersion: 5, clientId: 'dev+1', username: 'dev+1', password: 'pw' })).code, 0, 'wildcard refusal can be turned off');
});

test('a provider module named in the configuration loads and decides over a real socket', async (t) => {
  const server = http.createServer((r, res) => {
    let body = '';
    r.on('data', (d: Buffer) => (body += d.toString()));
    r.on('end', () => res.writeHead(200).end(JSON.stringify({ ok: (JSON.parse(body) as { password: string }).password === 'ok-pw' })));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => server.close());
  const url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/`;
  const tb = await startBroker({
    listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'module', path: path.join(root, 'docs/examples/http-auth-provider.mjs'), options: { url } }] }],
    authGuard: { enabled: false },
  });
  t.teardown(() => tb.stop());
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'm1', username: 'u', password: 'ok-pw' })).code, 0);
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'm2', username: 'u', password: 'bad' })).code, 0x86);
  const allow = tb.audit.records.find((r) => r.event === 'connect' && r.clientId === 'm1');
  t.is(allow?.decidedBy, 'http-check');
});
