/**
 * SIGHUP to a running `portcullis start` process: the policy and the password file are
 * reloaded (file watching is off, so only the signal can have done it), each reload is audited
 * with its trigger, and a malformed file on a later SIGHUP keeps the last good one.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import mqtt, { type MqttClient } from 'mqtt';
import { ARGON2_FLOOR } from '../src/config/auth-schema.ts';
import { hashPassword } from '../src/auth/password/hash.ts';
import { delay, freePort, subackCode } from './helpers.ts';

const root = fileURLToPath(new URL('..', import.meta.url));


async function until(pred: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await delay(25);
  }
}

/** Connects; resolves with the client, or with the CONNACK reason code of a refusal. */
function tryConnect(port: number, username: string, password: string): Promise<MqttClient | number> {
  return new Promise((resolve) => {
    const c = mqtt.connect({ host: '127.0.0.1', port, username, password, clientId: `${username}-${Math.random().toString(16).slice(2, 8)}`, protocolVersion: 5, reconnectPeriod: 0, connectTimeout: 8000 });
    c.once('connect', () => resolve(c));
    c.once('error', (err) => {
      c.end(true);
      resolve((err as Error & { code?: number }).code ?? -1);
    });
  });
}


test('SIGHUP reloads the policy and the password file of a running broker, audited; a bad file keeps the last good one', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-sighup-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const port = await freePort();
  const passwords = path.join(dir, 'passwords');
  const policy = path.join(dir, 'policy.csv');
  const auditFile = path.join(dir, 'audit.jsonl');
  fs.copyFileSync(path.join(root, 'policies', 'model.conf'), path.join(dir, 'model.conf'));
  const aliceHash = await hashPassword('alice-secret', ARGON2_FLOOR);
  const bobHash = await hashPassword('bob-secret', ARGON2_FLOOR);
  fs.writeFileSync(passwords, `alice:${aliceHash}\n`, { mode: 0o600 });
  fs.writeFileSync(policy, 'p, user:alice, a/#, read, allow\n');
  fs.writeFileSync(
    path.join(dir, 'config.yaml'),
    [
      'listeners:',
      '  - name: plain',
      '    type: tcp',
      '    host: 127.0.0.1',
      `    port: ${port}`,
      '    auth:',
      `      - { provider: password, file: ${JSON.stringify(passwords)}, watch: false }`,
      'authorizers:',
      `  - { type: casbin, model: ${JSON.stringify(path.join(dir, 'model.conf'))}, policy: ${JSON.stringify(policy)}, watch: false }`,
      'audit:',
      '  sink: file',
      `  path: ${JSON.stringify(auditFile)}`,
      '  fsyncIntervalMs: 0',
      'sys: { intervalSeconds: 0 }',
      // The durable store, in the test's folder: never the checkout's data/.
      `store: { path: ${JSON.stringify(path.join(dir, 'store'))} }`,
      'log: { level: info }',
      '',
    ].join('\n'),
  );
  const child = spawn(process.execPath, ['--import', 'tsx', path.join('src', 'cli', 'main.ts'), 'start', '--config', path.join(dir, 'config.yaml')], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  await until(() => out.includes('listening on tcp://'), 30_000, 'the broker to listen');
  const audit = () =>
    fs.existsSync(auditFile)
      ? fs
          .readFileSync(auditFile, 'utf8')
          .split('\n')
          .filter(Boolean)
          .map((l) => JSON.parse(l) as { event: string; decision: string; reason?: string })
      : [];
  const clients: MqttClient[] = [];
  t.teardown(() => {
    for (const c of clients) c.end(true);
  });

  // Before: bob is unknown, alice may not read b/#.
  const alice = await tryConnect(port, 'alice', 'alice-secret');
  if (typeof alice === 'number') return t.fail(`alice refused: ${alice}`);
  clients.push(alice);
  t.is(await subackCode(alice, 'b/#'), 0x87);
  t.is(await tryConnect(port, 'bob', 'bob-secret'), 0x86);

  // Change both files. Watching is off: nothing changes until the signal.
  fs.writeFileSync(passwords, `alice:${aliceHash}\nbob:${bobHash}\n`, { mode: 0o600 });
  fs.writeFileSync(policy, 'p, user:alice, a/#, read, allow\np, user:alice, b/#, read, allow\np, user:bob, b/#, publish, allow\n');
  await delay(300);
  t.is(await tryConnect(port, 'bob', 'bob-secret'), 0x86, 'no reload without the signal');

  child.kill('SIGHUP');
  await until(() => audit().filter((r) => r.event === 'reload' && r.decision === 'allow' && /SIGHUP/.test(r.reason ?? '')).length >= 2, 15_000, 'two SIGHUP reload records');
  const reloads = audit().filter((r) => r.event === 'reload' && /SIGHUP/.test(r.reason ?? ''));
  t.true(reloads.some((r) => /policy reloaded/.test(r.reason ?? '')), JSON.stringify(reloads));
  t.true(reloads.some((r) => /password/i.test(JSON.stringify(r))), JSON.stringify(reloads));

  const bob = await tryConnect(port, 'bob', 'bob-secret');
  if (typeof bob === 'number') return t.fail(`bob refused after SIGHUP: ${bob}`);
  clients.push(bob);
  t.is(await subackCode(alice, 'b/#'), 1, 'the new policy is in force');
  const got = new Promise<string>((resolve) => alice.once('message', (topic) => resolve(topic)));
  await bob.publishAsync('b/x', 'hello', { qos: 1 });
  t.is(await got, 'b/x');

  // A malformed password file and a broken policy on the next SIGHUP: both keep the last good one.
  fs.writeFileSync(passwords, `alice:${aliceHash}\nbob\n`, { mode: 0o600 });
  fs.writeFileSync(policy, 'p, user:alice, a/#, read, alow\n');
  const before = audit().length;
  child.kill('SIGHUP');
  await until(() => audit().slice(before).filter((r) => r.event === 'reload' && r.decision === 'deny').length >= 2, 15_000, 'two failed reload records');
  const failed = audit().slice(before).filter((r) => r.event === 'reload' && r.decision === 'deny');
  t.true(failed.some((r) => /passwords:2/.test(r.reason ?? '')), JSON.stringify(failed));
  t.true(failed.some((r) => /policy\.csv:1/.test(r.reason ?? '')), JSON.stringify(failed));
  const bob2 = await tryConnect(port, 'bob', 'bob-secret');
  t.not(typeof bob2, 'number', 'the last good password file is still in force');
  if (typeof bob2 !== 'number') clients.push(bob2);
  t.is(await subackCode(alice, 'b/y'), 1, 'the last good policy is still in force');
  t.false(out.includes('alice-secret') || out.includes('bob-secret'), 'no password in the log');

  for (const c of clients) c.end(true);
  child.kill('SIGTERM');
  await until(() => child.exitCode !== null || child.signalCode !== null, 15_000, 'the broker to exit');
  t.is(child.exitCode, 0);
});
