/**
 * Every resource one client can take is bounded (issue: TLS renegotiation, `$share` names,
 * retained messages, offline sessions, queued bytes with v5 properties), each flood bounded in
 * time, against a broker process whose memory is read from /proc, while a second identity is
 * served throughout.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import test, { type ExecutionContext } from 'ava';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { connect, delay, nextMessages, startBroker, subackCode } from './helpers.ts';
import { connectFrom } from './auth-support.ts';
import { makeFleet, startTlsBroker, type Fleet } from './tls-fixtures.ts';

const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');

interface BrokerProcess {
  port: number;
  pid: number;
  rssKb(): number;
}

/** A broker process on a loopback port, with the given configuration (YAML-compatible JSON). */
async function brokerProcess(t: ExecutionContext, config: Record<string, unknown>): Promise<BrokerProcess> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-bounds-'));
  const file = path.join(dir, 'config.json');
  fs.writeFileSync(file, JSON.stringify({ audit: { sink: 'none' }, sys: { intervalSeconds: 0 }, ...config }));
  const child: ChildProcess = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), path.join(ROOT, 'src/cli/main.ts'), 'start', '--config', file], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdout?.resume();
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  t.teardown(async () => {
    child.kill('SIGTERM');
    await exited;
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const end = Date.now() + 30_000;
  let m: RegExpExecArray | null = null;
  while ((m = /listening on tcp:\/\/127\.0\.0\.1:(\d+)/.exec(stderr)) === null) {
    if (Date.now() > end || child.exitCode !== null) throw new Error(`broker did not start: ${stderr}`);
    await delay(50);
  }
  const pid = child.pid as number;
  return {
    port: Number(m[1]),
    pid,
    rssKb: () => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0),
  };
}

const users = (names: string[]) => names.map((u) => ({ username: u, password: `${u}-pw` }));
const as = (user: string, extra: IClientOptions = {}): IClientOptions => ({ username: user, password: `${user}-pw`, clientId: `${user}-${Math.random().toString(16).slice(2, 8)}`, protocolVersion: 5, ...extra });

/** The reason code of the PUBACK for one QoS 1 publish (0 when none). */
async function pubackCode(client: MqttClient, topic: string, payload: Buffer | string, opts: { retain?: boolean; properties?: mqtt.IClientPublishOptions['properties'] } = {}): Promise<number> {
  let code = -1;
  const on = (p: mqtt.Packet) => {
    if (p.cmd === 'puback') code = (p as { reasonCode?: number }).reasonCode ?? 0;
  };
  client.on('packetreceive', on);
  await client.publishAsync(topic, payload, { qos: 1, retain: opts.retain ?? false, ...(opts.properties ? { properties: opts.properties } : {}) }).catch(() => undefined);
  client.off('packetreceive', on);
  return code;
}

// ── TLS renegotiation ────────────────────────────────────────────────────────

let fleet: Fleet;
test.before(async () => {
  fleet = await makeFleet('portcullis-bounds-');
});

function openFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

test('TLS 1.2 renegotiation is refused: 5 sockets that try it hold no slot past the CONNECT deadline, nothing lingers, and a real client connects', async (t) => {
  const b = await startTlsBroker(
    [{ name: 'tls', type: 'tls', host: '127.0.0.1', port: 0, cert: fleet.serverCert, key: fleet.serverKey, ca: fleet.chain, auth: ['certificate'], limits: { maxConnectionsPerIp: 5 } }],
    { limits: { connectTimeoutMs: 1000 } },
  );
  t.teardown(() => b.stop());
  const port = b.ports.tls as number;
  const fdsBefore = openFds();
  const sockets: tls.TLSSocket[] = [];
  const outcomes: string[] = [];
  for (let i = 0; i < 5; i++) {
    const s = tls.connect({ host: '127.0.0.1', port, ca: fs.readFileSync(fleet.chain), servername: 'localhost', maxVersion: 'TLSv1.2', cert: fs.readFileSync(fleet.client('device-1').cert), key: fs.readFileSync(fleet.client('device-1').key) });
    s.on('error', () => {});
    await new Promise<void>((r) => s.once('secureConnect', () => r()));
    sockets.push(s);
    for (let k = 0; k < 5; k++) {
      outcomes.push(
        await new Promise<string>((resolve) => {
          const started = s.renegotiate({}, (err) => resolve(err ? 'refused' : 'renegotiated'));
          if (!started) resolve('refused');
          setTimeout(() => resolve('no answer'), 1000);
        }),
      );
      if (s.destroyed) break;
    }
  }
  t.false(outcomes.includes('renegotiated'), `no renegotiation succeeded: ${outcomes.join(', ')}`);
  // None of them sent CONNECT: each is closed at the deadline at the latest.
  const closedAll = await Promise.all(sockets.map((s) => (s.destroyed ? true : new Promise<boolean>((r) => (s.once('close', () => r(true)), setTimeout(() => r(false), 4000))))));
  t.true(closedAll.every(Boolean), 'every renegotiating socket was closed');
  await delay(200);
  t.true(openFds() <= fdsBefore + 2, `descriptors back to where they were (${openFds()} vs ${fdsBefore})`);
  const device = await new Promise<MqttClient>((resolve, reject) => {
    const c = mqtt.connect({ protocol: 'mqtts', host: '127.0.0.1', port, ca: fs.readFileSync(fleet.chain), servername: 'localhost', cert: fs.readFileSync(fleet.client('device-2').cert), key: fs.readFileSync(fleet.client('device-2').key), clientId: 'device-2', reconnectPeriod: 0 });
    c.once('connect', () => resolve(c));
    c.once('error', reject);
  });
  t.true(device.connected, 'a real client gets a slot');
  device.end(true);
});

// ── $share names ─────────────────────────────────────────────────────────────

test('$share filters count whole against maxTopicLength, and share names have their own limit: SUBACK 0x8F, audited', async (t) => {
  const b = await startBroker({ limits: { maxTopicLength: 4096, maxShareNameLength: 128 } });
  t.teardown(() => b.stop());
  const c = await connect(b.port, { protocolVersion: 5, clientId: 'sharer' });
  t.is(await subackCode(c, `$share/${'g'.repeat(60_000)}/a`), 0x8f, 'a 60 KB group name');
  t.is(await subackCode(c, `$share/${'g'.repeat(129)}/a`), 0x8f, 'over maxShareNameLength');
  t.is(await subackCode(c, `$share/g/${'a/'.repeat(2046)}b`), 0x8f, 'the whole filter over maxTopicLength');
  t.is(await subackCode(c, `$share/${'g'.repeat(128)}/a`), 1, 'at the limit it is granted');
  t.true(b.audit.records.filter((r) => r.event === 'subscribe' && r.reasonCode === 0x8f).length >= 3);
  c.end(true);
});

// ── retained messages ────────────────────────────────────────────────────────

test('retained flood: one identity is refused with 0x97 past its quota, the broker keeps its memory, and another identity retains and is served', async (t) => {
  const b = await brokerProcess(t, {
    listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users: users(['flood', 'other']) }] }],
    authorizers: ['allow-all'],
    limits: { quotas: { retainedMessages: 200, retainedBytes: 2 * 1024 * 1024 } },
  });
  const flood = await connect(b.port, as('flood'));
  const rssBefore = b.rssKb();
  const codes: number[] = [];
  const payload = Buffer.alloc(64 * 1024, 1);
  // 2 MiB of quota, 64 KiB each: about 31 fit, the rest are refused.
  for (let i = 0; i < 300; i++) codes.push(await pubackCode(flood, `flood/${i}`, payload, { retain: true }));
  const accepted = codes.filter((c) => c === 0 || c === 0x10).length;
  t.true(accepted >= 25 && accepted <= 32, `${accepted} retained within 2 MiB`);
  t.true(codes.slice(40).every((c) => c === 0x97), 'then Quota exceeded');
  t.true(b.rssKb() - rssBefore < 60 * 1024, `RSS grew ${b.rssKb() - rssBefore} KiB for 300 × 64 KiB published`);
  // Replacing one of its own retained messages still works, and clearing frees quota.
  t.is(await pubackCode(flood, 'flood/0', Buffer.alloc(0), { retain: true }), 0x10);
  t.notDeepEqual(await pubackCode(flood, 'flood/again', payload, { retain: true }), 0x97);
  const other = await connect(b.port, as('other'));
  t.true([0, 0x10].includes(await pubackCode(other, 'other/state', 'ok', { retain: true })), "another identity's quota is its own");
  const late = await connect(b.port, as('other'));
  const got = nextMessages(late, 1);
  await late.subscribeAsync('other/state', { qos: 1 });
  t.is((await got)[0]?.payload, 'ok');
  for (const c of [flood, other, late]) c.end(true);
});

// ── offline sessions ─────────────────────────────────────────────────────────

test('offline-session flood: past limits.quotas.persistentSessions one identity gets CONNACK 0x97 (v3: return code 3); another identity keeps connecting', async (t) => {
  const b = await brokerProcess(t, {
    listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users: users(['squat', 'dev']) }] }],
    authorizers: ['allow-all'],
    limits: { quotas: { persistentSessions: 20 } },
  });
  const rssBefore = b.rssKb();
  for (let i = 0; i < 20; i++) {
    const c = await connect(b.port, as('squat', { clientId: `s-${i}`, clean: false, properties: { sessionExpiryInterval: 3600 } }));
    await c.subscribeAsync(`s/${i}/#`, { qos: 1 });
    await c.endAsync();
  }
  const refused = await t.throwsAsync(connect(b.port, as('squat', { clientId: 's-20', clean: false, properties: { sessionExpiryInterval: 3600 } })));
  t.is((refused as unknown as { code?: number }).code, 0x97);
  const v3 = await t.throwsAsync(connect(b.port, as('squat', { clientId: 's-21', clean: false, protocolVersion: 4 })));
  t.is((v3 as unknown as { code?: number }).code, 3);
  // Resuming one of its own, or a clean session, still works.
  const resumed = await connect(b.port, as('squat', { clientId: 's-3', clean: false, properties: { sessionExpiryInterval: 3600 } }));
  resumed.end(true);
  const clean = await connect(b.port, as('squat', { clientId: 's-99', clean: true }));
  clean.end(true);
  const dev = await connect(b.port, as('dev', { clean: false, properties: { sessionExpiryInterval: 3600 } }));
  t.true(dev.connected, 'another identity is not affected');
  dev.end(true);
  t.true(b.rssKb() - rssBefore < 50 * 1024);
});

// ── queued bytes ─────────────────────────────────────────────────────────────

test('queued bytes count v5 properties: 600 messages with 64 KiB of user properties each fill a 16 MiB queue at about 250, not 600 (RSS stays bounded)', async (t) => {
  const b = await brokerProcess(t, {
    listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users: users(['pub', 'offline']) }] }],
    authorizers: ['allow-all'],
    limits: { maxUserProperties: 64, flowControl: { enabled: false } },
  });
  const sub = await connect(b.port, as('offline', { clientId: 'offline-q', clean: false, properties: { sessionExpiryInterval: 3600 } }));
  await sub.subscribeAsync('q/#', { qos: 1 });
  await sub.endAsync();
  const pub = await connect(b.port, as('pub'));
  const rssBefore = b.rssKb();
  const userProperties: Record<string, string> = {};
  for (let k = 0; k < 32; k++) userProperties[`k${k}`] = 'v'.repeat(2000);
  for (let i = 0; i < 600; i++) await pubackCode(pub, `q/${i}`, 'x', { properties: { userProperties } });
  const grew = b.rssKb() - rssBefore;
  t.true(grew < 64 * 1024, `RSS grew ${grew} KiB (the queue holds at most 16 MiB)`);
  const back = mqtt.connect({ host: '127.0.0.1', port: b.port, ...as('offline', { clientId: 'offline-q', clean: false, properties: { sessionExpiryInterval: 3600 } }), reconnectPeriod: 0 });
  let n = 0;
  back.on('message', () => n++);
  await new Promise((r) => back.once('connect', r));
  await delay(1500);
  t.true(n > 200 && n < 300, `${n} queued messages delivered: 16 MiB / 64 KiB of properties each`);
  back.end(true);
  pub.end(true);
});

test('queued bytes per identity across its sessions: past limits.quotas.queuedBytes its offline sessions stop queueing (audited, 0x97 in the record); another identity gets every message', async (t) => {
  const b = await startBroker({
    listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users: users(['hoard', 'fine', 'pub']) }] }],
    limits: { quotas: { queuedBytes: 1024 * 1024 }, flowControl: { enabled: false } },
  });
  t.teardown(() => b.stop());
  const persistent = (user: string, id: string) => as(user, { clientId: id, clean: false, properties: { sessionExpiryInterval: 3600 } });
  const offline = [persistent('hoard', 'hoard-1'), persistent('hoard', 'hoard-2'), persistent('hoard', 'hoard-3'), persistent('fine', 'fine-1')];
  for (const o of offline) {
    const c = await connect(b.port, o);
    await c.subscribeAsync('q/#', { qos: 1 });
    await c.endAsync();
  }
  const pub = await connect(b.port, as('pub'));
  const payload = Buffer.alloc(16 * 1024, 1);
  for (let i = 0; i < 30; i++) t.is(await pubackCode(pub, `q/${i}`, payload), 0, 'the publisher is not refused: the subscriber side is full');
  pub.end(true);
  const counts: Record<string, number> = {};
  for (const o of offline) {
    const c = mqtt.connect({ host: '127.0.0.1', port: b.port, ...o, reconnectPeriod: 0 });
    let n = 0;
    c.on('message', () => n++);
    await new Promise((r) => c.once('connect', r));
    await delay(500);
    counts[o.clientId as string] = n;
    c.end(true);
  }
  const hoarded = (counts['hoard-1'] ?? 0) + (counts['hoard-2'] ?? 0) + (counts['hoard-3'] ?? 0);
  // 30 messages of 16 KiB are 480 KiB: one session (or the other identity) holds them all, but
  // three sessions of one identity would hold 1.4 MiB: 1 MiB across them is 63 messages.
  t.true(hoarded >= 60 && hoarded <= 64, `the identity's three sessions got ${hoarded} messages in all (${JSON.stringify(counts)})`);
  t.is(counts['fine-1'], 30, 'another identity is served in full');
  await delay(1100); // refusals are recorded at most once a second per session
  const records = b.audit.records.filter((r) => r.event === 'deliver' && r.action === 'queue-full' && r.username === 'hoard');
  t.true(records.length > 0, 'the refusals are audited');
  t.is(records[0]?.reasonCode, 0x97);
  t.true(records.every((r) => ((r.detail as { identityQueuedBytes?: number })?.identityQueuedBytes ?? 0) <= 1024 * 1024));
});

test('subscriptions per identity across sessions: past limits.quotas.subscriptions SUBACK 0x97 (audited); another identity subscribes', async (t) => {
  const b = await startBroker({
    listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users: users(['many', 'fine']) }] }],
    limits: { quotas: { subscriptions: 30 }, maxSubscriptionsPerClient: 20 },
  });
  t.teardown(() => b.stop());
  const one = await connect(b.port, as('many'));
  const two = await connect(b.port, as('many'));
  for (let i = 0; i < 20; i++) t.is(await subackCode(one, `a/${i}`), 1);
  const codes: number[] = [];
  for (let i = 0; i < 15; i++) codes.push(await subackCode(two, `b/${i}`));
  t.deepEqual(codes.slice(0, 10), Array(10).fill(1));
  t.deepEqual(codes.slice(10), Array(5).fill(0x97), 'the identity holds 30 across its two sessions');
  t.true(b.audit.records.some((r) => r.event === 'subscribe' && r.action === 'quota' && r.username === 'many'));
  // Unsubscribing frees quota.
  await one.unsubscribeAsync('a/0');
  t.is(await subackCode(two, 'b/late'), 1);
  const fine = await connectFrom(b.port, '127.0.0.2', as('fine'));
  t.is(await subackCode(fine, 'c/#'), 1);
  for (const c of [one, two, fine]) c.end(true);
});
