/**
 * Failed-login protection, identity rules and module providers over real sockets. Clients bind
 * their source address (127.0.0.2, 127.0.0.3, ...) so a guesser and its neighbours can be told
 * apart. The scenarios of the issue over real broker processes are in guard-scenarios.test.ts.
 */
import fs from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import path from 'node:path';
import anyTest, { type TestFn } from 'ava';
import { hashPassword } from '../src/auth/password/hash.ts';
import { ARGON2_FLOOR } from '../src/config/auth-schema.ts';
import { parseConfig } from '../src/config/schema.ts';
import { delay, startBroker, type TestBroker } from './helpers.ts';
import { connectFrom, refusalCode, root, tempDir } from './auth-support.ts';

// One at a time: these tests measure how the guard spaces attempts in time.
const test = anyTest as TestFn;
const serial = test.serial.bind(test);

/** One connect from `from`; resolves with the CONNACK code (0: accepted) and how long the answer took. */
async function attempt(port: number, from: string, username: string, password: string, clientId = `c-${Math.random().toString(16).slice(2, 10)}`, protocolVersion: 4 | 5 = 5) {
  const t0 = Date.now();
  const r = await refusalCode(port, { protocolVersion, clientId, username, password, localAddress: from });
  return { code: r.code, ms: Date.now() - t0 };
}

/** Connect records whose password check ran (argon2 was spent), for one user name. */
function checksRun(tb: TestBroker, username?: string) {
  return tb.audit.records.filter(
    (r) => r.event === 'connect' && (username === undefined || r.username === username) && r.verdicts?.some((v) => v.provider === 'password' && (v.kind === 'allow' || v.reason === 0x86)),
  );
}

async function passwordBroker(t: { teardown(fn: () => unknown): void }, authGuard: Record<string, unknown>, users: Record<string, string> = { alice: 'alice-secret', bob: 'bob-secret' }) {
  const file = path.join(tempDir(t), 'passwords');
  const lines = await Promise.all(Object.entries(users).map(async ([u, pw]) => `${u}:${await hashPassword(pw, ARGON2_FLOOR)}\n`));
  fs.writeFileSync(file, lines.join(''), { mode: 0o600 });
  const tb = await startBroker({ listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'password', file }] }], authGuard });
  t.teardown(() => tb.stop());
  return tb;
}

serial('wrong passwords for one user from one address: the pair is throttled, refusals are held then 0x9F and name the key and setting; neighbours are unaffected', async (t) => {
  const tb = await passwordBroker(t, { pair: { backoffAfter: 3, baseDelayMs: 200, maxDelayMs: 400 }, username: { enabled: false }, tarpit: { maxHoldMs: 250 } });
  const results: { code: number; ms: number }[] = [];
  const until = Date.now() + 2500;
  for (let i = 0; i < 3; i++) results.push(await attempt(tb.port, '127.0.0.2', 'alice', 'guess'));
  // Then two at a time: on a busy machine one attempt after another can each take longer than
  // the backoff, and none would come too soon.
  while (Date.now() < until) results.push(...(await Promise.all([attempt(tb.port, '127.0.0.2', 'alice', 'guess'), attempt(tb.port, '127.0.0.2', 'alice', 'guess')])));
  const codes = results.map((r) => r.code);
  t.deepEqual(codes.slice(0, 3), [0x86, 0x86, 0x86], 'the free failures are checked');
  t.true(codes.includes(0x9f), 'then attempts that come too soon are refused');
  t.true(codes.slice(3).includes(0x86), 'and a check still comes when its turn does (slowed, not locked)');
  // Guessing rate: 3 free, then at most one check per 200..400 ms.
  const checks = checksRun(tb, 'alice').length;
  t.true(checks <= 3 + Math.ceil(2500 / 200), `${checks} checks in 2.5 s`);
  t.true(checks >= 4, `${checks} checks: the pair is slowed, not shut`);
  // A refusal was held (tarpit), not answered at once.
  const refused = results.filter((r) => r.code === 0x9f);
  t.true(refused.every((r) => r.ms >= 200), `refusals answered after the hold: ${refused.map((r) => r.ms).join(',')}`);
  const rec = tb.audit.records.find((r) => r.event === 'connect' && r.reasonCode === 0x9f);
  t.is(rec?.decidedBy, 'guard');
  t.regex(rec?.reason ?? '', /^throttled by authGuard\.pair \(127\.0\.0\.2, 'alice'\): \d+ failed logins; next check possible in [\d.]+ s; refused attempts are not counted$/);
  // A delayed check is audited with the guard's note before the password verdict.
  t.true(tb.audit.records.some((r) => r.event === 'connect' && r.verdicts?.[0]?.provider === 'guard' && /^delayed \d+ ms: throttled by authGuard\.pair/.test(r.verdicts[0].detail ?? '') && r.verdicts[1]?.provider === 'password'));
  // Another user from the same address, and the same user from another address, get in at once.
  const bob = await attempt(tb.port, '127.0.0.2', 'bob', 'bob-secret');
  t.is(bob.code, 0);
  t.true(bob.ms < 1000);
  t.is((await attempt(tb.port, '127.0.0.3', 'alice', 'alice-secret')).code, 0);
});

serial('an attempt the guard refuses is not a failure: retrying during the backoff does not lengthen it', async (t) => {
  const tb = await passwordBroker(t, { pair: { backoffAfter: 2, baseDelayMs: 1500, maxDelayMs: 60_000 }, username: { enabled: false }, tarpit: { maxHoldMs: 100 } });
  t.is((await attempt(tb.port, '127.0.0.2', 'alice', 'x1')).code, 0x86);
  t.is((await attempt(tb.port, '127.0.0.2', 'alice', 'x2')).code, 0x86);
  const failedAt = Date.now();
  for (let i = 0; i < 5; i++) t.is((await attempt(tb.port, '127.0.0.2', 'alice', `x${i + 3}`)).code, 0x9f, 'a retry loop during the backoff is refused');
  t.is((await attempt(tb.port, '127.0.0.2', 'alice', 'x9', 'v3-client', 4)).code, 3, 'v3.1.1: return code 3 (server unavailable)');
  // The old guard counted each of those six and doubled the wait six times; the turn comes 1.5 s after the last real failure.
  await delay(Math.max(0, failedAt + 1500 - Date.now() + 50));
  t.is((await attempt(tb.port, '127.0.0.2', 'alice', 'alice-secret')).code, 0, 'the right password gets in once the backoff has passed');
  t.is(checksRun(tb, 'alice').length, 3);
});

serial('known good: a client that logged in recently is not held back by failures others cause on its user name and address', async (t) => {
  const tb = await passwordBroker(t, { pair: { backoffAfter: 2, baseDelayMs: 5000 }, username: { backoffAfter: 3, baseDelayMs: 5000 }, address: { checksPerSecond: 1, burst: 3 }, tarpit: { maxHoldMs: 50 } });
  // alice's device logs in from 127.0.0.2 with client id alice-dev.
  t.is((await attempt(tb.port, '127.0.0.2', 'alice', 'alice-secret', 'alice-dev')).code, 0);
  // Guessers on alice from the same address (other client ids) and from others exhaust the pair, the user name and the address.
  for (const from of ['127.0.0.2', '127.0.0.4', '127.0.0.5']) for (let i = 0; i < 3; i++) await attempt(tb.port, from, 'alice', `g${i}`);
  t.is((await attempt(tb.port, '127.0.0.2', 'alice', 'alice-secret', 'new-client')).code, 0x9f, 'a new client of alice on that address is throttled');
  t.is((await attempt(tb.port, '127.0.0.6', 'alice', 'alice-secret', 'alice-dev')).code, 0x9f, 'the same client id from an address it never logged in from is not known good');
  for (let i = 0; i < 5; i++) t.is((await attempt(tb.port, '127.0.0.2', 'alice', 'alice-secret', 'alice-dev')).code, 0, 'the known-good client gets in every time');
  // Its own failures (same address, user name and client id) do count against it, after the free ones.
  for (let i = 0; i < 2; i++) t.is((await attempt(tb.port, '127.0.0.2', 'alice', 'wrong', 'alice-dev')).code, 0x86);
  const own = await attempt(tb.port, '127.0.0.2', 'alice', 'wrong', 'alice-dev');
  t.is(own.code, 0x9f);
  const rec = tb.audit.records.filter((r) => r.event === 'connect' && r.clientId === 'alice-dev' && r.reasonCode === 0x9f).at(-1);
  t.regex(rec?.verdicts?.at(-1)?.detail ?? '', /known-good client 'alice-dev'/);
});

serial('spraying many user names from one address: credential checks are capped per second; a success gives its token back; other addresses are unaffected', async (t) => {
  const tb = await passwordBroker(t, { address: { checksPerSecond: 4, burst: 4 }, tarpit: { maxHoldMs: 200 } });
  const t0 = Date.now();
  const codes: number[] = [];
  // 8 parallel loops, one password each for user names that mostly do not exist.
  await Promise.all(
    Array.from({ length: 8 }, async (_, w) => {
      for (let i = 0; Date.now() - t0 < 2000; i++) codes.push((await attempt(tb.port, '127.0.0.2', `user-${w}-${i}`, 'Summer2024!')).code);
    }),
  );
  const secs = (Date.now() - t0) / 1000;
  const checks = checksRun(tb).length;
  t.true(checks <= 4 + Math.ceil(4 * secs) + 1, `${checks} checks in ${secs.toFixed(1)} s at 4/s with a burst of 4`);
  t.true(codes.filter((c) => c === 0x9f).length > 0);
  t.true(codes.every((c) => c === 0x86 || c === 0x9f));
  t.regex(tb.audit.records.find((r) => r.reasonCode === 0x9f)?.reason ?? '', /^throttled by authGuard\.address \(127\.0\.0\.2\): over 4 failed credential checks\/s \(burst 4\)/);
  // No user name was locked: a sprayed one with its right password from elsewhere gets in at once.
  t.is((await attempt(tb.port, '127.0.0.3', 'alice', 'alice-secret')).code, 0);
  // Logins that succeed do not use up the address: ten in a row from a fresh address.
  for (let i = 0; i < 10; i++) t.is((await attempt(tb.port, '127.0.0.4', 'bob', 'bob-secret')).code, 0);
});

serial('distributed guessing of one user name: the user-name throttle binds across addresses', async (t) => {
  const tb = await passwordBroker(t, { pair: { backoffAfter: 100 }, username: { backoffAfter: 4, baseDelayMs: 400, maxDelayMs: 400 }, tarpit: { maxHoldMs: 100 } });
  t.is((await attempt(tb.port, '127.0.0.3', 'alice', 'alice-secret', 'alice-1')).code, 0, 'alice is known good on 127.0.0.3');
  const t0 = Date.now();
  await Promise.all(
    Array.from({ length: 6 }, async (_, w) => {
      while (Date.now() - t0 < 2000) await attempt(tb.port, `127.0.1.${w + 1}`, 'alice', `g-${Math.random()}`);
    }),
  );
  const secs = (Date.now() - t0) / 1000;
  const guesses = checksRun(tb, 'alice').filter((r) => r.decision === 'deny').length;
  t.true(guesses <= 4 + Math.ceil((secs * 1000) / 400) + 1, `${guesses} checks in ${secs.toFixed(1)} s from 6 addresses`);
  t.regex(tb.audit.records.find((r) => r.reasonCode === 0x9f)?.reason ?? '', /^throttled by authGuard\.username \('alice', all addresses\)/);
  t.is((await attempt(tb.port, '127.0.0.3', 'alice', 'alice-secret', 'alice-1')).code, 0, 'the known-good client is not held back');
});

serial('automatic bans are off by default', (t) => {
  const c = parseConfig({}).authGuard;
  t.false(c.bans.address.enabled);
  t.false(c.bans.username.enabled);
});

serial('an opted-in address ban stops password checks from the address, audited; known-good clients, and other addresses, still get in; the ban expires', async (t) => {
  const tb = await passwordBroker(t, { pair: { backoffAfter: 100 }, username: { enabled: false }, address: { checksPerSecond: 0 }, bans: { address: { enabled: true, after: 4, banMs: 1200 } }, tarpit: { maxHoldMs: 0 } });
  t.is((await attempt(tb.port, '127.0.0.2', 'bob', 'bob-secret', 'bob-1')).code, 0, 'bob is known good on 127.0.0.2');
  for (let i = 0; i < 4; i++) t.is((await attempt(tb.port, '127.0.0.2', `u${i}`, 'x')).code, 0x86);
  t.is((await attempt(tb.port, '127.0.0.2', 'alice', 'alice-secret')).code, 0x8a, 'a new client from the banned address is refused, even with the right password');
  t.is((await attempt(tb.port, '127.0.0.2', 'alice', 'alice-secret', 'v3', 4)).code, 5, 'v3.1.1: return code 5');
  t.is((await attempt(tb.port, '127.0.0.2', 'bob', 'bob-secret', 'bob-1')).code, 0, 'the known-good client is not');
  t.is((await attempt(tb.port, '127.0.0.3', 'alice', 'alice-secret')).code, 0, 'nor is another address');
  const ban = tb.audit.records.find((r) => r.event === 'ban');
  t.is(ban?.remoteAddress, '127.0.0.2');
  t.is(ban?.detail?.setting, 'authGuard.bans.address');
  t.regex(tb.audit.records.find((r) => r.event === 'connect' && r.reasonCode === 0x8a)?.reason ?? '', /^banned by authGuard\.bans\.address \(127\.0\.0\.2\)/);
  const end = Date.now() + 3000;
  while (Date.now() < end && !tb.audit.records.some((r) => r.event === 'unban')) await delay(50);
  t.is(tb.audit.records.find((r) => r.event === 'unban')?.remoteAddress, '127.0.0.2');
  t.is((await attempt(tb.port, '127.0.0.2', 'alice', 'alice-secret')).code, 0);
});

serial('an opted-in user-name ban refuses attempts on that user name except from known-good clients', async (t) => {
  const tb = await passwordBroker(t, { pair: { backoffAfter: 100 }, username: { enabled: false }, address: { checksPerSecond: 0 }, bans: { username: { enabled: true, after: 3, banMs: 60_000 } }, tarpit: { maxHoldMs: 0 } });
  t.is((await attempt(tb.port, '127.0.0.3', 'alice', 'alice-secret', 'alice-phone')).code, 0);
  for (let i = 0; i < 3; i++) t.is((await attempt(tb.port, `127.0.1.${i + 1}`, 'alice', 'x')).code, 0x86);
  t.is((await attempt(tb.port, '127.0.1.9', 'alice', 'guess')).code, 0x8a, 'a guess is refused without a check');
  t.is((await attempt(tb.port, '127.0.0.3', 'alice', 'alice-secret', 'alice-phone')).code, 0, 'the known-good client with the right password gets in');
  t.is((await attempt(tb.port, '127.0.0.4', 'bob', 'bob-secret')).code, 0, 'other user names are unaffected');
  t.is(tb.audit.records.find((r) => r.event === 'ban')?.username, 'alice');
});

serial('the check queue: beyond its cap a connect is refused with 0x88 at once, and that is not a failed login', async (t) => {
  const users: Record<string, string> = {};
  for (let i = 0; i < 12; i++) users[`u${i}`] = `pw-${i}`;
  const tb = await passwordBroker(t, { checkQueue: { maxRunning: 1, maxWaiting: 2 }, address: { checksPerSecond: 0 }, pair: { backoffAfter: 1, baseDelayMs: 60_000 } }, users);
  // Twelve cold logins at once from twelve addresses: one runs, two wait, the rest are refused.
  const codes = await Promise.all(Array.from({ length: 12 }, (_, i) => attempt(tb.port, `127.0.2.${i + 1}`, `u${i}`, `pw-${i}`).then((r) => r.code)));
  t.true(codes.filter((c) => c === 0).length >= 3, `codes ${codes.join(',')}`);
  t.true(codes.filter((c) => c === 0x88).length >= 1, `codes ${codes.join(',')}`);
  t.true(codes.every((c) => c === 0 || c === 0x88));
  const rec = tb.audit.records.find((r) => r.reasonCode === 0x88);
  t.is(rec?.decidedBy, 'guard');
  t.regex(rec?.reason ?? '', /^refused by authGuard\.checkQueue: 1 credential checks running and 2 waiting/);
  // Refused is not failed: with backoffAfter 1 a counted failure would throttle that pair for a minute.
  const refusedUser = codes.findIndex((c) => c === 0x88);
  t.is((await attempt(tb.port, `127.0.2.${refusedUser + 1}`, `u${refusedUser}`, `pw-${refusedUser}`)).code, 0);
});

serial('the check queue applies with the guard off too; the old flat authGuard keys are refused with their replacement', async (t) => {
  t.throws(() => parseConfig({ authGuard: { banAfter: 20 } }), { message: /authGuard\.banAfter: replaced: use authGuard\.bans\.address\.after/ });
  t.throws(() => parseConfig({ authGuard: { byIp: false } }), { message: /authGuard\.byIp: replaced/ });
  const tb = await passwordBroker(t, { enabled: false, checkQueue: { maxRunning: 1, maxWaiting: 0 } });
  const codes = await Promise.all(Array.from({ length: 6 }, (_, i) => attempt(tb.port, `127.0.3.${i + 1}`, 'alice', 'alice-secret').then((r) => r.code)));
  t.true(codes.includes(0x88), `codes ${codes.join(',')}`);
  t.true(codes.includes(0));
});

serial('identity rules: + # U+0000 in user names and client ids are refused by default; client id binding equals / prefix', async (t) => {
  const users = [
    { username: 'dev+1', password: 'pw' },
    { username: 'dev1', password: 'pw' },
  ];
  const tb = await startBroker({
    listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users }] }],
    authGuard: { enabled: false },
  });
  t.teardown(() => tb.stop());
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'x', username: 'dev+1', password: 'pw' })).code, 0x86);
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'a/#', username: 'dev1', password: 'pw' })).code, 0x85);
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'anything', username: 'dev1', password: 'pw' })).code, 0, 'no binding by default');
  const rec = tb.audit.records.find((r) => r.event === 'connect' && r.clientId === 'a/#');
  t.is(rec?.decidedBy, 'identity');

  const bound = await startBroker({
    listeners: [{ name: 'eq', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users }], identity: { clientIdBinding: 'equals' } }],
    authGuard: { enabled: false },
  });
  t.teardown(() => bound.stop());
  t.is((await refusalCode(bound.port, { protocolVersion: 5, clientId: 'dev1', username: 'dev1', password: 'pw' })).code, 0);
  t.is((await refusalCode(bound.port, { protocolVersion: 5, clientId: 'dev2', username: 'dev1', password: 'pw' })).code, 0x85, 'cannot take another identity’s client id');
  t.is((await refusalCode(bound.port, { protocolVersion: 4, clientId: 'dev2', username: 'dev1', password: 'pw' })).code, 2, 'v3.1.1: identifier rejected');
  const prefix = await startBroker({
    listeners: [{ name: 'pre', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users }], identity: { clientIdBinding: 'prefix', refuseWildcards: false } }],
    authGuard: { enabled: false },
  });
  t.teardown(() => prefix.stop());
  t.is((await refusalCode(prefix.port, { protocolVersion: 5, clientId: 'dev1-sensor-7', username: 'dev1', password: 'pw' })).code, 0);
  t.is((await refusalCode(prefix.port, { protocolVersion: 5, clientId: 'dev2-x', username: 'dev1', password: 'pw' })).code, 0x85);
  t.is((await refusalCode(prefix.port, { protocolVersion: 5, clientId: 'dev+1', username: 'dev+1', password: 'pw' })).code, 0, 'wildcard refusal can be turned off');
});

serial('a provider module named in the configuration loads and decides over a real socket', async (t) => {
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
    authGuard: { pair: { backoffAfter: 2, baseDelayMs: 60_000 }, tarpit: { maxHoldMs: 0 } },
  });
  t.teardown(() => tb.stop());
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'm1', username: 'u', password: 'ok-pw' })).code, 0);
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'm2', username: 'u', password: 'bad' })).code, 0x86);
  const allow = tb.audit.records.find((r) => r.event === 'connect' && r.clientId === 'm1');
  t.is(allow?.decidedBy, 'http-check');
  // A module that does not say what it checks is guarded like a password provider.
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'm3', username: 'u', password: 'bad' })).code, 0x86);
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'm4', username: 'u', password: 'bad' })).code, 0x9f);
  const c = await connectFrom(tb.port, '127.0.0.2', { protocolVersion: 5, clientId: 'm5', username: 'u', password: 'ok-pw' });
  c.end(true);
});

serial('tokens: a valid JWT is never held back, while a client looping with a bad token gets its refusals held once its pair is throttled', async (t) => {
  const { exportSPKI, generateKeyPair, SignJWT } = await import('jose');
  const es = await generateKeyPair('ES256');
  const pem = path.join(tempDir(t), 'idp.pem');
  fs.writeFileSync(pem, await exportSPKI(es.publicKey));
  const sign = (exp: string) => new SignJWT({}).setProtectedHeader({ alg: 'ES256' }).setSubject('svc-1').setIssuer('https://idp.test/').setAudience('mqtt').setExpirationTime(exp).sign(es.privateKey);
  const tb = await startBroker({
    listeners: [{ name: 'jwt', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'jwt', algorithms: ['ES256'], issuer: 'https://idp.test/', audience: 'mqtt', keyFiles: [pem] }] }],
    authGuard: { pair: { backoffAfter: 3, baseDelayMs: 400, maxDelayMs: 400 }, tarpit: { maxHoldMs: 400 } },
  });
  t.teardown(() => tb.stop());
  const expired = await sign('-1m');
  const valid = await sign('10m');
  const bad = [];
  for (let i = 0; i < 6; i++) bad.push(await attempt(tb.port, '127.0.0.2', 'svc-1', expired, 'svc-1'));
  t.true(bad.every((r) => r.code === 0x86), 'a bad token is refused for what it is (0x86), never 0x9F');
  t.true(bad.slice(0, 3).every((r) => r.ms < 300), `the free failures are answered at once: ${bad.map((r) => r.ms).join(',')}`);
  t.true(bad.slice(4).every((r) => r.ms >= 300), `then the refusals are held: ${bad.map((r) => r.ms).join(',')}`);
  const good = await attempt(tb.port, '127.0.0.2', 'svc-1', valid, 'svc-1');
  t.is(good.code, 0);
  t.true(good.ms < 300, `the valid token is answered at once (${good.ms} ms)`);
});
