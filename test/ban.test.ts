/**
 * The ban list over real sockets: bans by client id and user name (CONNACK 0x8A / return code
 * 5, before any provider runs), by IP and CIDR (closed at accept, before TLS), IPv6, expiry,
 * reload of the ban file (good, malformed, at start), live connections closed by a new ban,
 * and the `portcullis ban` command round trip. Every decision is checked in the audit records.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import test from 'ava';
import { exportSPKI, generateKeyPair, SignJWT } from 'jose';
import type { IDisconnectPacket } from 'mqtt';
import { formatAddress, parseAddress, parseCidr, inRange } from '../src/util/address.ts';
import { parseBanText } from '../src/admission/ban-file.ts';
import { registerBanCommand } from '../src/cli/ban.ts';
import { cliInProcess, connect, delay } from './helpers.ts';
import { connectFrom, refusalCode, root } from './auth-support.ts';
import { admissionRecords, rawOpen, startAdmissionBroker, tempDir, waitFor } from './admission-support.ts';

const line = (o: Record<string, string>) => `${JSON.stringify(o)}\n`;

function banFile(dir: string, text: string): string {
  const file = path.join(dir, 'bans.jsonl');
  fs.writeFileSync(file, text);
  return file;
}

/**
 * Runs `portcullis ban ...` in this process through the real command definitions (fast, for
 * the bad-input cases); output and exit code are captured and restored.
 */
async function banInProcess(args: string[]): Promise<{ code: number; out: string; err: string }> {
  return cliInProcess(registerBanCommand, ['ban', ...args]);
}

/** Runs `portcullis ban ...` as a child process. */
function banCli(args: string[], spool: string): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', path.join(root, 'src', 'cli', 'main.ts'), 'ban', ...args], {
    cwd: root,
    encoding: 'utf8',
    env: { ...process.env, PORTCULLIS_AUDIT_SPOOL: spool },
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

test('addresses and ranges: IPv4, IPv6, IPv4-mapped IPv6, host bits refused', (t) => {
  t.is(formatAddress(parseAddress('::ffff:192.0.2.7')!), '192.0.2.7');
  t.is(formatAddress(parseAddress('2001:DB8:0:0:0:0:0:1')!), '2001:db8::1');
  t.is(parseAddress('300.1.1.1'), undefined);
  const v6 = parseCidr('2001:db8:bad::/48');
  t.true(v6.ok && inRange(parseAddress('2001:db8:bad:1::9')!, v6.value));
  t.true(v6.ok && !inRange(parseAddress('2001:db8:bae::1')!, v6.value));
  const v4 = parseCidr('10.1.0.0/16');
  t.true(v4.ok && inRange(parseAddress('::ffff:10.1.200.3')!, v4.value), 'an IPv4-mapped address matches an IPv4 range');
  t.true(v4.ok && !inRange(parseAddress('10.2.0.1')!, v4.value));
  const odd = parseCidr('10.0.0.0/9');
  t.true(odd.ok && inRange(parseAddress('10.127.255.255')!, odd.value) && !inRange(parseAddress('10.128.0.0')!, odd.value));
  const bad = parseCidr('10.0.0.5/8');
  t.false(bad.ok);
  t.regex(bad.ok ? '' : bad.error, /host bits set; did you mean 10\.0\.0\.0\/8/);
  t.false(parseCidr('10.0.0.0/33').ok);
  t.false(parseCidr('::/129').ok);
});

test('the ban file parser refuses each bad line, naming file and line', (t) => {
  const cases: [string, RegExp][] = [
    ['{"kind":"ip","value":"1.2.3.4"', /f:2: not valid JSON/],
    ['["ip","1.2.3.4"]', /f:2: expected a JSON object/],
    ['{"kind":"host","value":"x"}', /f:2: unknown kind 'host'/],
    ['{"kind":"ip","value":"1.2.3.4","why":"x"}', /f:2: unknown key 'why'/],
    ['{"kind":"ip","value":"1.2.3.0/24"}', /f:2: .*use kind cidr/],
    ['{"kind":"cidr","value":"1.2.3.4/24"}', /f:2: .*host bits set/],
    ['{"kind":"username","value":""}', /f:2: the value must not be empty/],
    ['{"kind":"ip","value":"1.2.3.4","until":"tomorrow"}', /f:2: "until" must be an ISO 8601/],
    ['{"kind":"ip","value":"::ffff:9.9.9.9"}', /f:2: ip 9\.9\.9\.9 is already banned on line 1/],
  ];
  for (const [bad, re] of cases) {
    const err = t.throws(() => parseBanText(`{"kind":"ip","value":"9.9.9.9"}\n${bad}\n`, 'f'));
    t.regex(err?.message ?? '', re, bad);
    t.is((err as { code?: string }).code, 'ERR_PORTCULLIS_BAN_FILE');
  }
  t.is(parseBanText('# comment\n\n{"kind":"client-id","value":"a"}\n', 'f').length, 1);
});

test('client id and user name bans: CONNACK 0x8A in v5, return code 5 in v3.1.1, before any provider runs; audited', async (t) => {
  const dir = tempDir(t);
  const file = banFile(dir, line({ kind: 'client-id', value: 'stolen-7', reason: 'cloned device' }) + line({ kind: 'username', value: 'mallory' }));
  const tb = await startAdmissionBroker({
    listeners: [
      {
        name: 'test',
        type: 'tcp',
        host: '127.0.0.1',
        port: 0,
        auth: [{ provider: 'static-users', users: [{ username: 'mallory', password: 'm-pw' }, { username: 'alice', password: 'a-pw' }] }],
      },
    ],
    admission: { bans: { file } },
  });
  t.teardown(() => tb.stop());
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'stolen-7', username: 'alice', password: 'a-pw' })).code, 0x8a);
  t.is((await refusalCode(tb.port, { protocolVersion: 4, clientId: 'stolen-7', username: 'alice', password: 'a-pw' })).code, 5);
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'm-1', username: 'mallory', password: 'm-pw' })).code, 0x8a);
  t.is((await refusalCode(tb.port, { protocolVersion: 4, clientId: 'm-2', username: 'mallory', password: 'wrong' })).code, 5, 'even a wrong password gets the ban, not a password check');
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'a-1', username: 'alice', password: 'a-pw' })).code, 0, 'others connect');
  const denials = tb.audit.records.filter((r) => r.event === 'connect' && r.decision === 'deny');
  t.is(denials.length, 4);
  t.true(denials.every((r) => r.decidedBy === 'ban' && r.reasonCode === 0x8a && r.verdicts?.length === 1 && r.verdicts[0]?.provider === 'ban'), 'no provider ran');
  t.regex(denials[0]?.reason ?? '', /client id banned: cloned device/);
  t.is(denials[2]?.username, 'mallory');
  t.true(tb.audit.records.some((r) => r.event === 'reload' && r.action === 'ban-file' && r.decision === 'allow' && /2 bans in force/.test(r.reason ?? '')));
});

test('IP and CIDR bans close the socket at accept, before any byte; other addresses are served; audited once per address per interval', async (t) => {
  const dir = tempDir(t);
  const file = banFile(dir, line({ kind: 'ip', value: '127.0.0.2', reason: 'scanner' }) + line({ kind: 'cidr', value: '127.0.1.0/24' }));
  const tb = await startAdmissionBroker({ admission: { bans: { file }, refusalAudit: { intervalMs: 200 } } });
  t.teardown(() => tb.stop());
  for (const from of ['127.0.0.2', '127.0.0.2', '127.0.1.77']) {
    const s = rawOpen(tb.port, from, 1000);
    t.is(await s.outcome, 'closed', from);
    t.is(s.bytes(), 0);
  }
  const ok = await connectFrom(tb.port, '127.0.0.3', { clientId: 'fine' });
  ok.end(true);
  t.is(tb.broker.admissionStats().refused.banned, 3);
  t.true(await waitFor(() => admissionRecords(tb.audit).length === 3, 2000));
  const recs = admissionRecords(tb.audit);
  const first = recs.find((r) => r.remoteAddress === '127.0.0.2' && r.detail?.count === 1);
  t.is(first?.detail?.refusal, 'banned');
  t.is(first?.detail?.ban, 'ip 127.0.0.2');
  t.regex(first?.reason ?? '', /source address banned: ip 127\.0\.0\.2 \(scanner\)/);
  t.true(recs.some((r) => r.remoteAddress === '127.0.0.2' && r.detail?.count === 1 && r.detail?.banned === 1), 'the second refusal is in the summary');
  t.true(recs.some((r) => r.remoteAddress === '127.0.1.77' && r.detail?.ban === 'cidr 127.0.1.0/24'));
});

test('an IPv6 CIDR ban holds on an IPv6 listener; an exempt address is still banned', async (t) => {
  const dir = tempDir(t);
  const file = banFile(dir, line({ kind: 'cidr', value: '::/64' }));
  const tb = await startAdmissionBroker({
    listeners: [{ name: 'v6', type: 'tcp', host: '::1', port: 0, auth: ['anonymous'] }],
    admission: { bans: { file }, exempt: ['::1'] },
  });
  t.teardown(() => tb.stop());
  const s = rawOpen(tb.port, '::1', 1000, '::1');
  t.is(await s.outcome, 'closed');
  t.true(await waitFor(() => admissionRecords(tb.audit).some((r) => r.remoteAddress === '::1' && r.detail?.ban === 'cidr ::/64')));
});

test('an IP ban on a TLS listener refuses before the handshake: no TLS bytes, no handshake record; another address completes TLS', async (t) => {
  const dir = tempDir(t);
  const cert = path.join(dir, 'server.crt');
  const key = path.join(dir, 'server.key');
  const r = spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost'], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  const file = banFile(dir, line({ kind: 'ip', value: '127.0.0.2' }));
  const tb = await startAdmissionBroker({
    listeners: [{ name: 'tls', type: 'tls', host: '127.0.0.1', port: 0, cert, key, auth: ['anonymous'] }],
    admission: { bans: { file } },
  });
  t.teardown(() => tb.stop());
  const banned = await new Promise<{ secure: boolean; error?: string }>((resolve) => {
    const s = tls.connect({ socket: net.connect({ port: tb.port, host: '127.0.0.1', localAddress: '127.0.0.2' }), rejectUnauthorized: false });
    s.once('secureConnect', () => {
      s.destroy();
      resolve({ secure: true });
    });
    s.once('error', (err: Error & { code?: string }) => resolve({ secure: false, error: err.code ?? err.message }));
  });
  t.false(banned.secure);
  t.regex(banned.error ?? '', /ECONNRESET|socket disconnected|EPIPE/);
  const ok = await new Promise<boolean>((resolve) => {
    const s = tls.connect({ socket: net.connect({ port: tb.port, host: '127.0.0.1', localAddress: '127.0.0.3' }), rejectUnauthorized: false });
    s.once('secureConnect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
  t.true(ok, 'another address completes the handshake');
  t.true(await waitFor(() => admissionRecords(tb.audit).some((x) => x.remoteAddress === '127.0.0.2' && x.listener === 'tls')));
  t.false(tb.audit.records.some((x) => x.event === 'tls' && x.remoteAddress === '127.0.0.2'), 'no TLS handshake was attempted for the banned address');
});

test('a ban expires: refused before, served after, the expiry is audited once', async (t) => {
  const dir = tempDir(t);
  const until = new Date(Date.now() + 4000).toISOString();
  const file = banFile(dir, line({ kind: 'client-id', value: 'temp', until }) + line({ kind: 'ip', value: '127.0.0.4', until }));
  const tb = await startAdmissionBroker({ admission: { bans: { file }, refusalAudit: { intervalMs: 100 } } });
  t.teardown(() => tb.stop());
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'temp' })).code, 0x8a);
  t.is(await rawOpen(tb.port, '127.0.0.4', 1000).outcome, 'closed');
  t.true(await waitFor(() => tb.audit.records.filter((r) => r.event === 'unban' && r.action === 'ban-file').length === 2, 8000));
  const unbans = tb.audit.records.filter((r) => r.event === 'unban');
  t.true(unbans.some((r) => r.clientId === 'temp' && /ban expired/.test(r.reason ?? '')));
  t.true(unbans.some((r) => r.remoteAddress === '127.0.0.4'));
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'temp' })).code, 0);
  (await connectFrom(tb.port, '127.0.0.4', { clientId: 'back' })).end(true);
  await delay(300);
  t.is(tb.audit.records.filter((r) => r.event === 'unban').length, 2, 'each expiry is recorded once');
});

test('ban file reload: a change is picked up by the watch (ban added, live client disconnected with 0x98), a malformed file keeps the last good list and is audited', async (t) => {
  const dir = tempDir(t);
  const file = banFile(dir, line({ kind: 'client-id', value: 'old-ban' }));
  const tb = await startAdmissionBroker({ admission: { bans: { file } } });
  t.teardown(() => tb.stop());
  const victim = await connect(tb.port, { clientId: 'soon-banned', protocolVersion: 5 });
  const disconnected = new Promise<number | undefined>((resolve) => victim.once('disconnect', (p: IDisconnectPacket) => resolve(p.reasonCode)));
  // Replace the file the way the CLI does: write beside it and rename.
  const write = (text: string) => {
    fs.writeFileSync(`${file}.tmp`, text);
    fs.renameSync(`${file}.tmp`, file);
  };
  write(line({ kind: 'client-id', value: 'soon-banned', reason: 'abuse' }));
  t.is(await Promise.race([disconnected, delay(3000).then(() => -1)]), 0x98, 'the live client gets DISCONNECT 0x98 (administrative action)');
  victim.end(true);
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'soon-banned' })).code, 0x8a);
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'old-ban' })).code, 0, 'the ban removed from the file no longer applies');
  const added = tb.audit.records.find((r) => r.event === 'ban' && r.action === 'ban-file' && r.clientId === 'soon-banned');
  t.regex(added?.reason ?? '', /ban added: client-id soon-banned \(abuse\)/);
  t.is(added?.detail?.trigger, 'file change');
  t.true(tb.audit.records.some((r) => r.event === 'unban' && r.action === 'ban-file' && r.clientId === 'old-ban' && /removed from the ban file/.test(r.reason ?? '')));
  t.true(tb.audit.records.some((r) => r.event === 'disconnect' && r.action === 'banned' && r.clientId === 'soon-banned' && r.reasonCode === 0x98));
  // A malformed file: the last good list stays in force; the failure is logged and audited with the line.
  write(`${line({ kind: 'client-id', value: 'soon-banned' })}{"kind":"ip","value":"not-an-ip"}\n`);
  t.true(await waitFor(() => tb.audit.records.some((r) => r.event === 'reload' && r.action === 'ban-file' && r.decision === 'deny'), 3000));
  const failed = tb.audit.records.find((r) => r.event === 'reload' && r.decision === 'deny');
  t.regex(failed?.reason ?? '', /file change: .*bans\.jsonl:2: 'not-an-ip' is not an IPv4 or IPv6 address; keeping the last good ban list/);
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'soon-banned' })).code, 0x8a, 'the last good list still applies');
  // SIGHUP and the API reload the same way.
  write(line({ kind: 'username', value: 'eve' }));
  await delay(300); // let the watch fire first, so the API reload below sees no change
  const report = tb.broker.reloadBans('SIGHUP');
  t.true(report.ok);
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'soon-banned' })).code, 0);
  t.true(tb.audit.records.some((r) => r.event === 'reload' && r.action === 'ban-file' && r.decision === 'allow' && /^SIGHUP: 1 bans in force/.test(r.reason ?? '')));
});

test('a malformed ban file stops the start, naming the key, file and line', async (t) => {
  const dir = tempDir(t);
  const file = banFile(dir, `# bans\n${line({ kind: 'ip', value: '192.0.2.1' })}{"kind":"cidr","value":"192.0.2.1/24"}\n`);
  const err = await t.throwsAsync(startAdmissionBroker({ admission: { bans: { file } } }));
  t.is((err as { code?: string }).code, 'ERR_PORTCULLIS_CONFIG');
  t.regex(err?.message ?? '', /admission\.bans\.file: .*bans\.jsonl:3: '192\.0\.2\.1\/24' has host bits set/);
});

// Serial: it starts the CLI (tsx) twice and captures this process's output for the rest.
test.serial('portcullis ban add / list / remove: atomic edits that a running broker picks up; bad input is refused with a clear error', async (t) => {
  t.timeout(60_000);
  const dir = tempDir(t);
  const spool = path.join(dir, 'spool');
  const file = path.join(dir, 'bans.jsonl');
  const tb = await startAdmissionBroker({ admission: { bans: { file } } });
  t.teardown(() => tb.stop());
  (await connectFrom(tb.port, '127.0.0.2', { clientId: 'before' })).end(true);
  const add = banCli(['add', 'ip', '127.0.0.2', '--for', '1h', '--reason', 'port scan', '--file', file], spool);
  t.is(add.code, 0, add.err);
  t.regex(add.err, /added: ip 127\.0\.0\.2 banned until \d{4}-/);
  t.true(await waitFor(() => tb.audit.records.some((r) => r.event === 'ban' && r.action === 'ban-file' && r.remoteAddress === '127.0.0.2'), 4000));
  t.is(await rawOpen(tb.port, '127.0.0.2', 1000).outcome, 'closed');
  t.is((await banInProcess(['add', 'username', 'eve', '--until', '2099-01-01T00:00:00Z', '--file', file])).code, 0);
  const list = await banInProcess(['list', '--file', file]);
  t.is(list.code, 0);
  const rows = list.out.trim().split('\n').map((l) => l.split('\t'));
  t.is(rows.length, 2);
  t.deepEqual(rows[0]?.slice(0, 2), ['ip', '127.0.0.2']);
  t.deepEqual(rows[0]?.slice(3), ['active', 'port scan']);
  t.deepEqual(rows[1], ['username', 'eve', '2099-01-01T00:00:00.000Z', 'active']);
  t.false(fs.readdirSync(dir).some((f) => f.endsWith('.tmp')), 'no temporary file left behind');
  const remove = banCli(['remove', 'ip', '127.0.0.2', '--file', file], spool);
  t.is(remove.code, 0, remove.err);
  t.true(await waitFor(() => tb.audit.records.some((r) => r.event === 'unban' && r.action === 'ban-file' && r.remoteAddress === '127.0.0.2'), 4000));
  (await connectFrom(tb.port, '127.0.0.2', { clientId: 'after' })).end(true);
  // Bad input: each refused with exit code 2 (1 for a ban that is not there) and the file left alone.
  const before = fs.readFileSync(file, 'utf8');
  const bad: [string[], number, RegExp][] = [
    [['add', 'ip', '999.1.1.1'], 2, /'999\.1\.1\.1' is not an IPv4 or IPv6 address/],
    [['add', 'cidr', '10.0.0.5/8'], 2, /did you mean 10\.0\.0\.0\/8/],
    [['add', 'host', 'x'], 2, /unknown kind 'host'/],
    [['add', 'client-id', 'x', '--for', '5x'], 2, /--for '5x': expected a duration/],
    [['add', 'client-id', 'x', '--until', '2001-01-01T00:00:00Z'], 2, /is in the past/],
    [['add', 'client-id', 'x', '--for', '1h', '--until', '2099-01-01T00:00:00Z'], 2, /not both/],
    [['remove', 'username', 'nobody'], 1, /no ban on username nobody/],
  ];
  for (const [args, code, re] of bad) {
    const r = await banInProcess([...args, '--file', file]);
    t.is(r.code, code, args.join(' '));
    t.regex(r.err, re);
  }
  t.is(fs.readFileSync(file, 'utf8'), before);
  // A malformed file is never edited by the CLI.
  fs.appendFileSync(file, 'garbage\n');
  const refused = await banInProcess(['add', 'ip', '192.0.2.9', '--file', file]);
  t.is(refused.code, 2);
  t.regex(refused.err, /bans\.jsonl:3: not valid JSON/);
});

// Serial: it starts the broker through the CLI (tsx), which is slow beside other tests.
test.serial('portcullis start: SIGHUP reloads the ban file (watch off), audited with the trigger', async (t) => {
  t.timeout(60_000);
  const dir = tempDir(t);
  const bans = path.join(dir, 'bans.jsonl');
  fs.writeFileSync(bans, '# no bans yet\n');
  const port = await new Promise<number>((resolve) => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (probe.address() as net.AddressInfo).port;
      probe.close(() => resolve(p));
    });
  });
  const config = path.join(dir, 'broker.json');
  fs.writeFileSync(
    config,
    JSON.stringify({
      listeners: [{ name: 'cli', type: 'tcp', host: '127.0.0.1', port, auth: ['anonymous'] }],
      authorizers: ['allow-all'],
      audit: { path: path.join(dir, 'audit.jsonl'), fsyncIntervalMs: 0 },
      admission: { bans: { file: bans, watch: false } },
      sys: { intervalSeconds: 0 },
      store: { path: path.join(dir, 'store') },
    }),
  );
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(root, 'src', 'cli', 'main.ts'), 'start', '--config', config], {
    cwd: root,
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, PORTCULLIS_AUDIT_SPOOL: path.join(dir, 'spool') },
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('close', resolve));
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  t.true(await waitFor(() => stderr.includes('listening on') || child.exitCode !== null, 20_000), stderr);
  const first = await refusalCode(port, { protocolVersion: 5, clientId: 'sig-target' });
  t.is(first.code, 0, `${first.message}\n${stderr}`);
  fs.writeFileSync(bans, line({ kind: 'client-id', value: 'sig-target', reason: 'via SIGHUP' }));
  await delay(300);
  t.is((await refusalCode(port, { protocolVersion: 5, clientId: 'sig-target' })).code, 0, 'no watch: nothing changes before SIGHUP');
  child.kill('SIGHUP');
  t.true(await waitFor(() => stderr.includes('ban file reload'), 5000), stderr);
  t.is((await refusalCode(port, { protocolVersion: 5, clientId: 'sig-target' })).code, 0x8a);
  child.kill('SIGTERM');
  t.is(await exited, 0);
  const records = fs.readFileSync(path.join(dir, 'audit.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  t.true(records.some((r) => r.event === 'reload' && r.action === 'ban-file' && r.decision === 'allow' && String(r.reason).startsWith('SIGHUP: 1 bans in force')));
  t.true(records.some((r) => r.event === 'ban' && r.action === 'ban-file' && r.clientId === 'sig-target'));
  t.true(records.some((r) => r.event === 'connect' && r.decision === 'deny' && r.clientId === 'sig-target' && r.decidedBy === 'ban'));
});

test('a user name ban also holds against the user name a provider maps (a JWT subject), not only the one in CONNECT', async (t) => {
  const dir = tempDir(t);
  const { publicKey, privateKey } = await generateKeyPair('RS256');
  const pem = path.join(dir, 'idp.pem');
  fs.writeFileSync(pem, await exportSPKI(publicKey));
  const file = banFile(dir, line({ kind: 'username', value: 'mallory' }));
  const tb = await startAdmissionBroker({
    listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'jwt', algorithms: ['RS256'], issuer: 'iss', audience: 'aud', keyFiles: [pem], requireUsernameMatch: false }] }],
    admission: { bans: { file } },
  });
  t.teardown(() => tb.stop());
  const token = (sub: string) => new SignJWT({}).setProtectedHeader({ alg: 'RS256' }).setSubject(sub).setIssuer('iss').setAudience('aud').setExpirationTime('5m').sign(privateKey);
  // CONNECT says 'someone'; the ban is found on the principal the JWT provider built from the subject.
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'm-jwt', username: 'someone', password: await token('mallory') })).code, 0x8a);
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'a-jwt', username: 'someone', password: await token('alice') })).code, 0);
  const denied = tb.audit.records.find((r) => r.event === 'connect' && r.decision === 'deny' && r.clientId === 'm-jwt');
  t.is(denied?.decidedBy, 'ban');
  t.is(denied?.reasonCode, 0x8a);
});

test('a ban file that goes missing keeps the last good list (fail closed): refused and audited', async (t) => {
  const dir = tempDir(t);
  const file = banFile(dir, line({ kind: 'client-id', value: 'stolen-9' }));
  const tb = await startAdmissionBroker({ admission: { bans: { file, watch: false } } });
  t.teardown(() => tb.stop());
  fs.rmSync(file);
  const report = tb.broker.reloadBans('test');
  t.false(report.ok);
  t.regex(report.detail, /keeping the last good ban list/);
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'stolen-9' })).code, 0x8a, 'the ban still holds');
  t.true(tb.audit.records.some((r) => r.event === 'reload' && r.action === 'ban-file' && r.decision === 'deny'));
  t.false(tb.audit.records.some((r) => r.event === 'unban'));
});
