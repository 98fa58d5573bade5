/**
 * The password provider over real sockets: a password file written by `portcullis passwd`,
 * mqtt.js (v5 and v3.1.1) and mosquitto_pub clients, strict parsing, hot reload, timing.
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { ConfigError, createBroker, MemoryAuditSink } from '../src/index.ts';
import { PasswordAuthenticator } from '../src/auth/password/provider.ts';
import { parseConfig } from '../src/config/schema.ts';
import { connect, delay, nextMessages, startBroker } from './helpers.ts';
import { mosquittoPub, passwd, refusalCode, tempDir } from './auth-support.ts';

function usersFile(t: Parameters<typeof tempDir>[0]): string {
  const file = path.join(tempDir(t), 'passwords');
  const a = passwd(['add', file, 'alice', '--roles', 'sensor,ops'], 'alice-secret\n');
  if (a.code !== 0) throw new Error(a.err);
  const b = passwd(['add', file, 'bob'], 'bob-secret\n');
  if (b.code !== 0) throw new Error(b.err);
  return file;
}

async function passwordBroker(file: string, extra: Record<string, unknown> = {}) {
  return startBroker({
    listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'password', file, ...extra }] }],
    limits: { maxConnectSize: 256 * 1024 },
    // Failed-login backoff has its own tests (auth-guard.test.ts); here every attempt reaches the provider.
    authGuard: { enabled: false },
  });
}

test('portcullis passwd writes argon2id hashes (mode 0600), lists without hashes, verifies, removes', (t) => {
  const file = usersFile(t);
  const text = fs.readFileSync(file, 'utf8');
  t.regex(text, /^alice:\$argon2id\$v=19\$m=19456,t=2,p=1\$[^:]+:sensor,ops$/m);
  t.false(text.includes('alice-secret'));
  t.is(fs.statSync(file).mode & 0o777, 0o600);
  const list = passwd(['list', file]);
  t.is(list.code, 0);
  t.regex(list.out, /^alice\troles=sensor,ops\targon2id m=19456,t=2,p=1$/m);
  t.false(list.out.includes('$argon2id$'));
  t.is(passwd(['verify', file, 'alice'], 'alice-secret\n').code, 0);
  t.is(passwd(['verify', file, 'alice'], 'wrong\n').code, 1);
  t.is(passwd(['verify', file, 'nobody'], 'x\n').code, 1);
  t.is(passwd(['add', file, 'carol', '--memory', '1024'], 'pw\n').code, 1, 'parameters below the floor are refused');
  t.is(passwd(['add', file, 'ca+rol'], 'pw\n').code, 1, 'wildcards in user names are refused');
  t.is(passwd(['add', file, 'carol'], '\n').code, 1, 'an empty password is refused');
  t.is(passwd(['remove', file, 'bob']).code, 0);
  t.false(fs.readFileSync(file, 'utf8').includes('bob:'));
});

test('the right password connects (v5 and v3.1.1, mosquitto_pub); wrong, empty and unknown are refused 0x86 and audited with the cause', async (t) => {
  const file = usersFile(t);
  const tb = await passwordBroker(file);
  t.teardown(() => tb.stop());
  const ok = await connect(tb.port, { protocolVersion: 5, clientId: 'alice-1', username: 'alice', password: 'alice-secret' });
  await new Promise<void>((r) => ok.subscribe('x/#', () => r()));
  const v3 = await connect(tb.port, { protocolVersion: 4, clientId: 'bob-1', username: 'bob', password: 'bob-secret' });
  v3.end(true);

  const wrong = await refusalCode(tb.port, { protocolVersion: 5, clientId: 'w', username: 'alice', password: 'nope' });
  t.is(wrong.code, 0x86);
  const unknown = await refusalCode(tb.port, { protocolVersion: 5, clientId: 'u', username: 'mallory', password: 'nope' });
  t.is(unknown.code, 0x86);
  t.is(unknown.message, wrong.message, 'the client cannot tell an unknown user from a wrong password');
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'e', username: 'alice', password: '' })).code, 0x86);
  t.is((await refusalCode(tb.port, { protocolVersion: 4, clientId: 'w3', username: 'alice', password: 'nope' })).code, 4, 'v3.1.1 return code 4');
  const big = 'x'.repeat(65_535); // 64 KiB: the largest a 2-byte MQTT length allows
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'bu', username: big, password: 'p' })).code, 0x86);
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'bp', username: 'alice', password: big })).code, 0x86);
  const denied = tb.audit.records.filter((r) => r.event === 'connect' && r.decision === 'deny');
  const causes = denied.map((r) => r.verdicts?.find((v) => v.provider === 'password')?.detail);
  t.deepEqual(causes, ['wrong password', 'unknown user', 'empty password', 'wrong password', 'user name longer than 256 bytes', 'password longer than 1024 bytes']);
  t.true(denied.every((r) => r.decidedBy === 'password' && r.reasonCode === 0x86));
  t.false(JSON.stringify(tb.audit.records).includes('nope'), 'no password in the audit log');

  const pubOk = await mosquittoPub(['-h', '127.0.0.1', '-p', String(tb.port), '-u', 'bob', '-P', 'bob-secret', '-i', 'bob-2', '-t', 'x/y', '-m', 'hi']);
  t.is(pubOk.code, 0, pubOk.stderr);
  const pubBad = await mosquittoPub(['-h', '127.0.0.1', '-p', String(tb.port), '-u', 'bob', '-P', 'bad', '-i', 'bob-3', '-t', 'x/y', '-m', 'hi', '-V', '5']);
  t.not(pubBad.code, 0);
  // The broker kept serving the client that was connected all along.
  const got = nextMessages(ok, 1);
  const pub = await connect(tb.port, { protocolVersion: 5, clientId: 'bob-4', username: 'bob', password: 'bob-secret' });
  pub.publish('x/after', 'still here');
  t.is((await got)[0]?.payload, 'still here');
  pub.end(true);
  ok.end(true);
});

test('a malformed password file stops the start naming the file and line; blank lines and lines without a hash are never users', (t) => {
  const dir = tempDir(t);
  const good = usersFile(t);
  const hashLine = fs.readFileSync(good, 'utf8').split('\n').find((l) => l.startsWith('bob:')) as string;
  const cases: [string, number, RegExp][] = [
    [`${hashLine}\n\ncarol\n`, 3, /user name|no password hash/],
    [`${hashLine}\ncarol:\n`, 2, /no password hash/],
    [`carol:plaintext\n`, 1, /not an argon2id/],
    [`${hashLine}\n${hashLine}\n`, 2, /appears twice/],
    [hashLine.replace('m=19456', 'm=1024') + '\n', 1, /below the floor/],
  ];
  for (const [text, line, why] of cases) {
    const file = path.join(dir, `bad-${line}`);
    fs.writeFileSync(file, text);
    const err = t.throws(() => passwordConfig(file), { instanceOf: ConfigError });
    t.true(err.message.includes(`listeners[0].auth[0].file: ${file}:${line}:`), err.message);
    t.regex(err.message, why);
  }
  const missing = t.throws(() => passwordConfig(path.join(dir, 'missing')), { instanceOf: ConfigError });
  t.regex(missing.message, /cannot read: ENOENT/);
});

function passwordConfig(file: string) {
  return createBroker({ listeners: [{ type: 'tcp', port: 0, auth: [{ provider: 'password', file }] }], store: { type: 'memory' } }, { audit: new MemoryAuditSink() });
}

test('hot reload: a changed file applies without restart; a malformed one keeps the last good file and is audited', async (t) => {
  const file = usersFile(t);
  const tb = await passwordBroker(file);
  t.teardown(() => tb.stop());
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'b1', username: 'bob', password: 'bob-secret' })).code, 0);
  t.is(passwd(['remove', file, 'bob']).code, 0);
  const until = Date.now() + 5000;
  while (Date.now() < until && !tb.audit.records.some((r) => r.event === 'reload' && r.action === 'password-file' && r.decision === 'allow')) await delay(50);
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'b2', username: 'bob', password: 'bob-secret' })).code, 0x86, 'removed user refused after the file changed');
  // A malformed file on SIGHUP-style reload: alice keeps working.
  fs.appendFileSync(file, 'eve\n');
  const [report] = await tb.broker.reloadCredentials('SIGHUP');
  t.false(report?.ok);
  t.regex(report?.detail ?? '', /:\d+: user 'eve' has no password hash|:\d+: .*eve/);
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'a1', username: 'alice', password: 'alice-secret' })).code, 0);
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'e1', username: 'eve', password: '' })).code, 0x86);
  const bad = tb.audit.records.find((r) => r.event === 'reload' && r.action === 'password-file' && r.decision === 'deny');
  t.truthy(bad);
  t.regex(bad?.reason ?? '', /keeping the last good file/);
});

test('unknown users take about as long to refuse as known users with a wrong password', async (t) => {
  const file = usersFile(t);
  const tb = await passwordBroker(file);
  t.teardown(() => tb.stop());
  const time = async (username: string) => {
    const s = performance.now();
    await refusalCode(tb.port, { protocolVersion: 5, clientId: `t-${username}`, username, password: 'wrong-pw' });
    return performance.now() - s;
  };
  const known: number[] = [];
  const unknown: number[] = [];
  for (let i = 0; i < 5; i++) {
    known.push(await time('alice'));
    unknown.push(await time(`ghost${i}`));
  }
  // The fastest of each: load on a shared machine only ever adds time, so minimums compare the work done.
  const min = (a: number[]) => Math.min(...a);
  const ratio = min(unknown) / min(known);
  t.true(ratio > 0.25 && ratio < 4, `unknown ${min(unknown).toFixed(1)} ms vs known ${min(known).toFixed(1)} ms`);
  t.true(min(unknown) > 10, 'an unknown user costs an argon2 verification too');
});

test('the verified-credential cache (opt-in) skips argon2 on a repeat and is cleared by a reload', async (t) => {
  const file = usersFile(t);
  const config = parseConfig({ listeners: [{ type: 'tcp', auth: [{ provider: 'password', file, watch: false }] }], credentialCache: { enabled: true, ttlMs: 60_000 } });
  const p = new PasswordAuthenticator(config.listeners[0]!.auth[0] as never, config.credentialCache);
  await p.init();
  const req = { clientId: 'c', username: 'alice', password: Buffer.from('alice-secret'), protocolVersion: 5 as const, peer: { listener: 'l', transport: 'tcp' as const, remoteAddress: '127.0.0.1', remotePort: 1 } };
  t.is((await p.authenticate(req)).kind, 'allow');
  const s = performance.now();
  t.is((await p.authenticate(req)).kind, 'allow');
  t.true(performance.now() - s < 5, 'a cache hit takes no argon2 time');
  t.is(p.cacheStats?.hits, 1);
  t.is((await p.authenticate({ ...req, password: Buffer.from('alice-secreT') })).kind, 'deny', 'a different password is not a hit');
  await p.reload('test');
  t.is(p.cacheStats?.size, 0);
  const off = new PasswordAuthenticator(config.listeners[0]!.auth[0] as never);
  t.is(off.cacheStats, undefined, 'off by default');
  await p.close();
});
