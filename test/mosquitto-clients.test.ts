/**
 * Interoperability with Eclipse Mosquitto's command-line clients (Debian's mosquitto-clients):
 * mosquitto_sub and mosquitto_pub are spawned against the test broker's port.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import test, { type ExecutionContext } from 'ava';
import type { ConfigInput } from '../src/index.ts';
import { delay, startBroker, type TestBroker } from './helpers.ts';

const SUB = '/usr/bin/mosquitto_sub';
const PUB = '/usr/bin/mosquitto_pub';
const haveClients = fs.existsSync(SUB) && fs.existsSync(PUB);

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Spawns a mosquitto client; it is killed (by its pid) if it outlives `ms` or the test. */
function run(t: ExecutionContext, cmd: string, args: string[], ms = 4000): Promise<Exit> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), ms);
  t.teardown(() => {
    clearTimeout(timer);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

async function waitFor(predicate: () => boolean, ms = 3000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > end) return false;
    await delay(10);
  }
  return true;
}

/** Resolves once the broker has granted `clientId` a subscription (seen in the audit log). */
function subscribed(b: TestBroker, clientId: string): Promise<boolean> {
  return waitFor(() => b.audit.records.some((r) => r.event === 'subscribe' && r.decision === 'allow' && r.clientId === clientId));
}

async function setup(t: ExecutionContext, config: Partial<ConfigInput> = {}): Promise<TestBroker | null> {
  if (!haveClients) {
    t.log(`${SUB} or ${PUB} is missing: install mosquitto-clients to run this test`);
    t.pass();
    return null;
  }
  const b = await startBroker(config);
  t.teardown(() => b.stop());
  return b;
}

const common = (b: TestBroker) => ['-h', '127.0.0.1', '-p', String(b.port)];

let unique = 0;

for (const version of ['mqttv311', 'mqttv5'] as const) {
  for (const qos of [0, 1, 2] as const) {
    test(`mosquitto_sub receives a QoS ${qos} message from mosquitto_pub (${version})`, async (t) => {
      const b = await setup(t);
      if (b === null) return;
      const id = `msub-${version}-${qos}-${++unique}`;
      const topic = `interop/${version}/q${qos}`;
      const payload = `hello at qos ${qos}`;
      const sub = run(t, SUB, [...common(b), '-V', version, '-i', id, '-t', topic, '-q', String(qos), '-C', '1', '-W', '4', '-F', '%t|%q|%p']);
      t.true(await subscribed(b, id), 'mosquitto_sub subscribed');
      const pub = await run(t, PUB, [...common(b), '-V', version, '-i', `mpub-${id}`, '-t', topic, '-q', String(qos), '-m', payload]);
      t.is(pub.code, 0, `mosquitto_pub failed: ${pub.stderr}`);
      const got = await sub;
      t.is(got.code, 0, `mosquitto_sub failed: ${got.stderr}`);
      // The delivered QoS is the minimum of the published and the granted QoS [MQTT-3.8.4-6].
      t.is(got.stdout.trim(), `${topic}|${qos}|${payload}`);
    });
  }
}

test('a retained message set with mosquitto_pub -r reaches a later mosquitto_sub', async (t) => {
  const b = await setup(t);
  if (b === null) return;
  const pub = await run(t, PUB, [...common(b), '-i', 'retain-pub', '-t', 'interop/retained', '-q', '1', '-r', '-m', 'kept']);
  t.is(pub.code, 0, `mosquitto_pub failed: ${pub.stderr}`);
  // A subscriber that connects afterwards gets it, with the retain flag set [MQTT-3.3.1-9].
  const sub = await run(t, SUB, [...common(b), '-i', 'retain-sub', '-t', 'interop/#', '-q', '1', '-C', '1', '-W', '4', '-F', '%t|%r|%p']);
  t.is(sub.code, 0, `mosquitto_sub failed: ${sub.stderr}`);
  t.is(sub.stdout.trim(), 'interop/retained|1|kept');
});

test("mosquitto_sub -t '#' does not receive $SYS topics [MQTT-4.7.2-1]", async (t) => {
  const b = await setup(t, { sys: { intervalSeconds: 1 } });
  if (b === null) return;
  const id = 'hash-sub';
  const sub = run(t, SUB, [...common(b), '-i', id, '-t', '#', '-C', '1', '-W', '4', '-F', '%t']);
  t.true(await subscribed(b, id));
  // Retained $SYS messages existed at subscribe time, and another $SYS round goes out within 1 s.
  await delay(1200);
  const pub = await run(t, PUB, [...common(b), '-i', 'hash-pub', '-t', 'plain/topic', '-m', 'x']);
  t.is(pub.code, 0);
  const got = await sub;
  t.is(got.code, 0, got.stderr);
  t.is(got.stdout.trim(), 'plain/topic', 'the first message a # subscriber sees is the ordinary one, not a $SYS topic');
});

test("mosquitto_sub -t '$SYS/#' receives $SYS topics when the sys interval is 1 s", async (t) => {
  const b = await setup(t, { sys: { intervalSeconds: 1 } });
  if (b === null) return;
  const sub = await run(t, SUB, [...common(b), '-i', 'sys-sub', '-t', '$SYS/#', '-C', '3', '-W', '4', '-F', '%t|%p']);
  t.is(sub.code, 0, sub.stderr);
  const lines = sub.stdout.trim().split('\n');
  t.is(lines.length, 3);
  for (const line of lines) t.regex(line, /^\$SYS\/broker\/[^|]+\|./);
});

const staticUsers: Partial<ConfigInput> = {
  listeners: [
    {
      name: 'users',
      type: 'tcp',
      host: '127.0.0.1',
      port: 0,
      auth: [{ provider: 'static-users', users: [{ username: 'alice', password: 'alice-secret' }] }],
    },
  ],
};

for (const version of ['mqttv311', 'mqttv5'] as const) {
  test(`with static-users, mosquitto_pub with a wrong password fails and is audited as denied by static-users (${version})`, async (t) => {
    const b = await setup(t, staticUsers);
    if (b === null) return;
    const id = `wrong-${version}`;
    const pub = await run(t, PUB, [...common(b), '-V', version, '-i', id, '-u', 'alice', '-P', 'not-the-password', '-t', 'x', '-m', 'y']);
    t.not(pub.code, 0, 'mosquitto_pub must exit non-zero');
    t.true(await waitFor(() => b.audit.records.some((r) => r.event === 'connect' && r.clientId === id)));
    const deny = b.audit.records.find((r) => r.event === 'connect' && r.clientId === id);
    t.like(deny, { decision: 'deny', decidedBy: 'static-users', username: 'alice', reasonCode: 0x86 });
    t.false(JSON.stringify(b.audit.records).includes('not-the-password'), 'the password never reaches the audit log');
  });

  test(`with static-users, mosquitto_pub with the right password succeeds (${version})`, async (t) => {
    const b = await setup(t, staticUsers);
    if (b === null) return;
    const id = `right-${version}`;
    const pub = await run(t, PUB, [...common(b), '-V', version, '-i', id, '-u', 'alice', '-P', 'alice-secret', '-t', 'x', '-q', '1', '-m', 'y']);
    t.is(pub.code, 0, `mosquitto_pub failed: ${pub.stderr}`);
    const allow = b.audit.records.find((r) => r.event === 'connect' && r.clientId === id);
    t.like(allow, { decision: 'allow', decidedBy: 'static-users', username: 'alice' });
  });
}
