/**
 * Client ids belong to the identity that uses them (SECURITY.md, docs/authentication.md "Sessions
 * belong to identities"): a squatter cannot lock a device out of its client id or hand it a
 * session it filled; a security disconnect drops the will; an in-flight message is checked
 * again when a session resumes. Real sockets, mosquitto_sub and MQTT.js.
 */
import { spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import fc from 'fast-check';
import { SignJWT } from 'jose';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { connect, delay, messagesWithin, startBroker, startCasbinBroker, type TestBroker } from './helpers.ts';
import { PacketType, encodeConnect, frame, ofType, packetsOf, waitForPackets, waitForType } from './raw-mqtt.ts';
import { rawConnect } from './helpers.ts';
import { type Fleet, connectTls, makeFleet, pki, startTlsBroker, waitForAudit } from './tls-fixtures.ts';

const SUB = '/usr/bin/mosquitto_sub';

const USERS = [
  { username: 'alice', password: 'alice-pw' },
  { username: 'device-1', password: 'device-pw' },
  { username: 'ops', password: 'ops-pw' },
];

async function usersBroker(t: ExecutionContext, extra: Parameters<typeof startBroker>[0] = {}): Promise<TestBroker> {
  const b = await startBroker({ listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users: USERS }] }], ...extra });
  t.teardown(() => b.stop());
  return b;
}

/** An mqtt.js client that collects messages from the first byte (queued messages follow the CONNACK at once). */
function open(port: number, options: IClientOptions): Promise<{ client: MqttClient; sessionPresent: boolean; messages: string[] }> {
  return new Promise((resolve, reject) => {
    const messages: string[] = [];
    const client = mqtt.connect({ host: '127.0.0.1', port, reconnectPeriod: 0, connectTimeout: 4000, ...options });
    client.on('message', (topic, payload) => messages.push(`${topic}|${payload.toString()}`));
    client.once('connect', (ack) => resolve({ client, sessionPresent: ack.sessionPresent, messages }));
    client.once('error', reject);
  });
}

function mosquittoSub(args: string[], ms: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(SUB, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), ms);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

async function until(cond: () => boolean, ms = 3000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await delay(10);
  }
  return true;
}

// ── squatting ────────────────────────────────────────────────────────────────

for (const version of [4, 5] as const) {
  for (const deviceClean of [true, false]) {
    test(`squatting (${version === 5 ? 'v5' : 'v3.1.1'}, device clean ${deviceClean ? 'on' : 'off'}): alice's offline session on client id device-1 neither locks the real device out nor hands it alice's queue`, async (t) => {
      if (!fs.existsSync(SUB)) {
        t.log('mosquitto_sub is missing: install mosquitto-clients');
        t.pass();
        return;
      }
      const b = await usersBroker(t);
      const persistent = version === 5 ? { properties: { sessionExpiryInterval: 600 } } : {};
      // alice squats the device's client id with a persistent session and leaves.
      const alice = await open(b.port, { clientId: 'device-1', username: 'alice', password: 'alice-pw', protocolVersion: version, clean: false, ...persistent });
      await alice.client.subscribeAsync('cmd/#', { qos: 1 });
      await alice.client.endAsync();
      const ops = await connect(b.port, { clientId: 'ops', username: 'ops', password: 'ops-pw' });
      await ops.publishAsync('cmd/open', 'queued for alice', { qos: 1 });
      // The real device, with its own credentials and mosquitto_sub's defaults.
      const args = ['-h', '127.0.0.1', '-p', String(b.port), '-V', version === 5 ? 'mqttv5' : 'mqttv311', '-i', 'device-1', '-u', 'device-1', '-P', 'device-pw', '-q', '1', '-t', 'device-1/ping', '-t', 'cmd/#', '-C', '1', '-W', '5', '-F', '%t|%p'];
      if (!deviceClean) args.push('-c', ...(version === 5 ? ['-x', '600'] : []));
      const device = mosquittoSub(args, 8000);
      t.true(await until(() => b.audit.records.some((r) => r.event === 'connect' && r.decision === 'allow' && r.username === 'device-1')), 'the device got in');
      await until(() => b.broker.stats.connectsAccepted >= 3);
      await delay(200); // its SUBSCRIBE
      await ops.publishAsync('device-1/ping', 'ping', { qos: 1 });
      const out = await device;
      t.is(out.stdout.trim(), 'device-1/ping|ping', `the first message the device sees is its own, not alice's queue (stderr: ${out.stderr})`);
      // alice's session, with what was queued for it, is still alice's.
      const back = await open(b.port, { clientId: 'device-1', username: 'alice', password: 'alice-pw', protocolVersion: version, clean: false, ...persistent });
      t.true(back.sessionPresent);
      t.true(await until(() => back.messages.length === 1));
      t.deepEqual(back.messages, ['cmd/open|queued for alice']);
      t.false(b.audit.records.some((r) => r.decision === 'deny' && (r.event === 'connect' || r.event === 'session')), 'nobody was refused');
      await Promise.all([back.client.endAsync(), ops.endAsync()]);
    });
  }
}

test('property: connects of 3 identities sharing 2 client ids, in any order, clean or not, always succeed and never deliver one identity another identity\'s private messages', async (t) => {
  const b = await usersBroker(t);
  const ids = ['shared-a', 'shared-b'];
  const users = ['alice', 'device-1', 'ops'];
  const ops = await connect(b.port, { clientId: 'publisher', username: 'ops', password: 'ops-pw' });
  t.teardown(() => ops.end(true));
  let run = 0;
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.record({ user: fc.constantFrom(...users), id: fc.constantFrom(...ids), clean: fc.boolean(), v5: fc.boolean(), stay: fc.boolean() }), { minLength: 3, maxLength: 8 }),
      async (steps) => {
        run++;
        const live: { user: string; client: MqttClient; messages: string[] }[] = [];
        for (const [i, step] of steps.entries()) {
          const user = USERS.find((u) => u.username === step.user) as (typeof USERS)[number];
          const c = await open(b.port, {
            clientId: step.id,
            username: user.username,
            password: user.password,
            clean: step.clean,
            protocolVersion: step.v5 ? 5 : 4,
            ...(step.v5 && !step.clean ? { properties: { sessionExpiryInterval: 60 } } : {}),
          });
          await c.client.subscribeAsync(`private/${step.user}/#`, { qos: 1 });
          live.push({ user: step.user, ...c });
          // Every identity gets a message on its own private tree, queued or live.
          for (const u of users) await ops.publishAsync(`private/${u}/${run}-${i}`, u, { qos: 1 });
          if (!step.stay) await c.client.endAsync();
        }
        await delay(100);
        for (const l of live) {
          for (const m of l.messages) if (!m.startsWith(`private/${l.user}/`)) return false;
          l.client.end(true);
        }
        return true;
      },
    ),
    { numRuns: 15, seed: 20261207 },
  );
  t.false(b.audit.records.some((r) => r.event === 'connect' && r.decision === 'deny'), 'every connect succeeded');
});

// ── security disconnects drop the will ───────────────────────────────────────

/** A watcher subscribed to `topic`; resolves with what arrives on it within `ms`. */
/** A broker whose one listener takes ES256 JWTs (issuer https://idp.test, audience mqtt) with this clock skew; `mint` signs one. */
async function jwtBroker(t: ExecutionContext, clockSkewSeconds: number): Promise<{ b: TestBroker; mint: (sub: string, exp: number) => Promise<string> }> {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-identity-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const keyFile = path.join(dir, 'jwt.pem');
  fs.writeFileSync(keyFile, publicKey.export({ type: 'spki', format: 'pem' }));
  const b = await startBroker({
    listeners: [{ name: 'jwt', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'jwt', algorithms: ['ES256'], issuer: 'https://idp.test', audience: 'mqtt', keyFiles: [keyFile], clockSkewSeconds }] }],
    authGuard: { enabled: false },
  });
  t.teardown(() => b.stop());
  const mint = (sub: string, exp: number) => new SignJWT({ sub }).setProtectedHeader({ alg: 'ES256' }).setIssuer('https://idp.test').setAudience('mqtt').setIssuedAt().setExpirationTime(exp).sign(privateKey);
  return { b, mint };
}

async function watch(port: number, topic: string, options: IClientOptions = {}): Promise<MqttClient> {
  const w = await connect(port, { clientId: `watch-${Math.random().toString(16).slice(2)}`, ...options });
  await w.subscribeAsync(topic, { qos: 1 });
  return w;
}

test('a JWT whose exp passes: DISCONNECT 0xA0, the will is not published, audited willDiscarded; the same token is refused at reconnect', async (t) => {
  const { b, mint } = await jwtBroker(t, 2);
  const watcher = await watch(b.port, 'wills/jwt', { username: 'watcher', password: await mint('watcher', Math.floor(Date.now() / 1000) + 600) });
  const got = messagesWithin(watcher, 4000);
  const exp = Math.floor(Date.now() / 1000) + 1;
  const token = await mint('svc-a', exp);
  const svc = await connect(b.port, { clientId: 'svc-a', username: 'svc-a', password: token, protocolVersion: 5, will: { topic: 'wills/jwt', payload: Buffer.from('svc-a gone'), qos: 1, retain: false } });
  const reason = await new Promise<number | undefined>((r) => svc.once('disconnect', (p) => r(p.reasonCode)));
  t.is(reason, 0xa0);
  t.true(Date.now() >= (exp + 2) * 1000 - 100, 'cut off at exp + clockSkewSeconds, when connect would refuse it too');
  // At once, while a skew window after exp would still be open: the token the broker cut off is refused.
  const again = await t.throwsAsync(connect(b.port, { clientId: 'svc-a', username: 'svc-a', password: token, protocolVersion: 5 }));
  t.is((again as unknown as { code?: number }).code, 0x86);
  t.deepEqual(await got, [], 'no will published in the name of an identity the broker cut off');
  const rec = await waitForAudit(b.audit, (r) => r.event === 'disconnect' && r.action === 'credentials-expired');
  t.is(rec.detail?.willDiscarded, true);
  watcher.end(true);
});

let fleet: Fleet;
test.before(async () => {
  fleet = await makeFleet('portcullis-identity-');
});

test('a certificate revoked by a reloaded CRL: the live client gets DISCONNECT 0x87, its will is not published, audited willDiscarded', async (t) => {
  const crl = path.join(path.dirname(fleet.dir), 'identity-crl.pem');
  fs.copyFileSync(fleet.crl, crl);
  const b = await startTlsBroker([
    { name: 'mtls', type: 'tls', host: '127.0.0.1', port: 0, cert: fleet.serverCert, key: fleet.serverKey, ca: fleet.chain, requireClientCert: true, crl: { files: [crl] }, reload: { intervalMs: 100 }, auth: ['certificate'] },
  ]);
  t.teardown(() => b.stop());
  const port = b.ports.mtls as number;
  await pki(fleet.dir, 'client', '--cn', 'will-victim');
  const watcher = await connectTls(port, fleet, { device: 'device-1' });
  await watcher.subscribeAsync('wills/cert', { qos: 1 });
  const got = messagesWithin(watcher, 3000);
  const victim = await connectTls(port, fleet, { device: 'will-victim', protocolVersion: 5, will: { topic: 'wills/cert', payload: Buffer.from('revoked device gone'), qos: 1, retain: false } });
  const reason = new Promise<number | undefined>((r) => victim.once('disconnect', (p) => r(p.reasonCode)));
  await pki(fleet.dir, 'revoke', fleet.client('will-victim').cert);
  await pki(fleet.dir, 'crl', '--out', crl);
  t.is(await reason, 0x87);
  const rec = await waitForAudit(b.audit, (r) => r.event === 'disconnect' && r.action === 'revoked');
  t.is(rec.detail?.willDiscarded, true);
  t.is(rec.certSubject, 'CN=will-victim');
  t.deepEqual(await got, []);
  watcher.end(true);
});

test('a client id banned while connected: DISCONNECT 0x98, the will is not published, audited willDiscarded', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-identity-ban-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const banFile = path.join(dir, 'bans.jsonl');
  fs.writeFileSync(banFile, '');
  const b = await startBroker({ admission: { bans: { file: banFile, watch: false } } });
  t.teardown(() => b.stop());
  const watcher = await watch(b.port, 'wills/ban');
  const got = messagesWithin(watcher, 2000);
  const victim = await connect(b.port, { clientId: 'to-ban', protocolVersion: 5, will: { topic: 'wills/ban', payload: Buffer.from('banned gone'), qos: 1, retain: false } });
  const reason = new Promise<number | undefined>((r) => victim.once('disconnect', (p) => r(p.reasonCode)));
  fs.writeFileSync(banFile, `${JSON.stringify({ kind: 'client-id', value: 'to-ban', reason: 'test' })}\n`);
  b.broker.reloadBans('test');
  t.is(await reason, 0x98);
  const rec = await waitForAudit(b.audit, (r) => r.event === 'disconnect' && r.action === 'banned');
  t.is(rec.detail?.willDiscarded, true);
  t.deepEqual(await got, []);
  watcher.end(true);
});

test('a plain lost connection still publishes the will (the control for the three cases above)', async (t) => {
  const b = await startBroker();
  t.teardown(() => b.stop());
  const watcher = await watch(b.port, 'wills/lost');
  const got = messagesWithin(watcher, 1000);
  const c = await connect(b.port, { clientId: 'lost', will: { topic: 'wills/lost', payload: Buffer.from('lost'), qos: 1, retain: false } });
  c.stream.destroy();
  t.deepEqual((await got).map((m) => m.payload), ['lost']);
  watcher.end(true);
});

// ── a will that waited: the identity must still stand when it is published ────

/** A v5 client with a delayed will that drops its connection at once: the will waits `delay` seconds. */
async function leaveDelayedWill(port: number, topic: string, payload: string, delay: number, options: IClientOptions): Promise<void> {
  const c = await connect(port, { protocolVersion: 5, properties: { sessionExpiryInterval: 60 }, will: { topic, payload: Buffer.from(payload), qos: 1, retain: false, properties: { willDelayInterval: delay } }, ...options });
  c.stream.destroy();
}

test('a delayed will of a connection already gone is not published once its client id is banned; an unbanned one is (audited willDiscarded)', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-identity-ban-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const banFile = path.join(dir, 'bans.jsonl');
  fs.writeFileSync(banFile, '');
  const b = await startBroker({ admission: { bans: { file: banFile, watch: false } } });
  t.teardown(() => b.stop());
  const watcher = await watch(b.port, 'wills/late');
  const got = messagesWithin(watcher, 4000);
  await leaveDelayedWill(b.port, 'wills/late', 'banned-late', 2, { clientId: 'late-ban' });
  await leaveDelayedWill(b.port, 'wills/late', 'still-fine', 2, { clientId: 'late-ok' });
  await delay(300);
  fs.writeFileSync(banFile, `${JSON.stringify({ kind: 'client-id', value: 'late-ban', reason: 'test' })}\n`);
  b.broker.reloadBans('test');
  t.deepEqual((await got).map((m) => m.payload), ['still-fine'], 'only the will of the identity that still stands');
  const rec = await waitForAudit(b.audit, (r) => r.event === 'publish' && r.action === 'will' && r.clientId === 'late-ban');
  t.is(rec.decision, 'deny');
  t.is(rec.detail?.willDiscarded, true);
  t.regex(rec.reason ?? '', /client id banned/);
  watcher.end(true);
});

test('a delayed will of a connection already gone is not published once its certificate is revoked by a reloaded CRL; another device\'s is', async (t) => {
  const crl = path.join(path.dirname(fleet.dir), 'identity-late-crl.pem');
  fs.copyFileSync(fleet.crl, crl);
  const b = await startTlsBroker([
    { name: 'mtls', type: 'tls', host: '127.0.0.1', port: 0, cert: fleet.serverCert, key: fleet.serverKey, ca: fleet.chain, requireClientCert: true, crl: { files: [crl] }, reload: { intervalMs: 100 }, auth: ['certificate'] },
  ]);
  t.teardown(() => b.stop());
  const port = b.ports.mtls as number;
  await pki(fleet.dir, 'client', '--cn', 'late-victim');
  await pki(fleet.dir, 'client', '--cn', 'late-fine');
  const watcher = await connectTls(port, fleet, { device: 'device-1' });
  await watcher.subscribeAsync('wills/late-cert', { qos: 1 });
  const got = messagesWithin(watcher, 5000);
  for (const device of ['late-victim', 'late-fine']) {
    const c = await connectTls(port, fleet, { device, protocolVersion: 5, properties: { sessionExpiryInterval: 60 }, will: { topic: 'wills/late-cert', payload: Buffer.from(device), qos: 1, retain: false, properties: { willDelayInterval: 3 } } });
    c.stream.destroy();
  }
  await pki(fleet.dir, 'revoke', fleet.client('late-victim').cert);
  await pki(fleet.dir, 'crl', '--out', crl);
  t.deepEqual((await got).map((m) => m.payload), ['late-fine']);
  const rec = await waitForAudit(b.audit, (r) => r.event === 'publish' && r.action === 'will');
  t.is(rec.clientId, 'late-victim');
  t.regex(rec.reason ?? '', /revoked/);
  watcher.end(true);
});

test('a delayed will is not published after the JWT of the connection that left it has expired', async (t) => {
  const { b, mint } = await jwtBroker(t, 1);
  const long = Math.floor(Date.now() / 1000) + 600;
  const watcher = await watch(b.port, 'wills/jwt-late', { username: 'watcher', password: await mint('watcher', long) });
  const got = messagesWithin(watcher, 5000);
  // Both leave a will delayed 3 s; one token expires (with the skew) before then, the other not.
  await leaveDelayedWill(b.port, 'wills/jwt-late', 'expired-by-then', 3, { clientId: 'svc-short', username: 'svc-short', password: await mint('svc-short', Math.floor(Date.now() / 1000) + 1) });
  await leaveDelayedWill(b.port, 'wills/jwt-late', 'valid', 3, { clientId: 'svc-long', username: 'svc-long', password: await mint('svc-long', long) });
  t.deepEqual((await got).map((m) => m.payload), ['valid']);
  const rec = await waitForAudit(b.audit, (r) => r.event === 'publish' && r.action === 'will');
  t.is(rec.clientId, 'svc-short');
  t.regex(rec.reason ?? '', /expired/);
  watcher.end(true);
});

// ── re-check on resume ───────────────────────────────────────────────────────

test('a message in flight when a policy reload removes read access is not re-sent on resume: withdrawn, and the denial audited', async (t) => {
  const BEFORE = 'p, user:sub, feed/#, read, allow\np, user:pub, feed/#, publish, allow\n';
  const AFTER = 'p, user:pub, feed/#, publish, allow\n';
  const b = await startCasbinBroker(BEFORE, [{ username: 'sub' }, { username: 'pub' }]);
  t.teardown(() => b.stop());
  const connectSub = () => encodeConnect({ clientId: 'sub-1', clean: false, version: 4, username: 'sub', password: 'sub-pw' });
  const raw1 = await rawConnect(b.port);
  raw1.write(connectSub());
  await waitForType(raw1, PacketType.CONNACK);
  raw1.write(frame(PacketType.SUBSCRIBE, 0x02, Buffer.from([0, 1, 0, 6, ...Buffer.from('feed/x'), 1])));
  await waitForType(raw1, PacketType.SUBACK);
  const pub = await connect(b.port, { clientId: 'pub-1', username: 'pub', password: 'pub-pw' });
  await pub.publishAsync('feed/x', 'secret-ish', { qos: 1 });
  const [first] = await waitForType(raw1, PacketType.PUBLISH); // in flight: never acknowledged
  t.truthy(first);
  raw1.socket.destroy();
  await delay(100);
  fs.writeFileSync(b.files.policy, AFTER);
  t.like((await b.broker.reloadPolicy('test'))[0], { ok: true });
  const raw2 = await rawConnect(b.port);
  raw2.write(connectSub());
  const packets = await waitForPackets(raw2, (ps) => ofType(ps, PacketType.PUBLISH).length > 0, 800);
  t.is(ofType(packets, PacketType.CONNACK).length, 1);
  t.is(ofType(packetsOf(raw2), PacketType.PUBLISH).length, 0, 'the in-flight message was not re-sent');
  t.truthy(b.audit.records.find((r) => r.event === 'deliver' && r.decision === 'deny' && r.topic === 'feed/x' && r.clientId === 'sub-1'));
  raw2.socket.destroy();
  pub.end(true);
});

// ── prefix binding ───────────────────────────────────────────────────────────

test("clientIdBinding prefix needs its separator: user dev gets in as dev and dev-2, never as device-2 (and so never gets device-2's %c rules)", async (t) => {
  const users = [{ username: 'dev', password: 'dev-pw' }];
  const listener = (identity: Record<string, unknown>) => ({ listeners: [{ name: 'pre', type: 'tcp' as const, host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users' as const, users }], identity }], authGuard: { enabled: false } });
  const b = await startBroker(listener({ clientIdBinding: 'prefix' }));
  t.teardown(() => b.stop());
  const code = async (port: number, clientId: string, version: 4 | 5 = 5) => {
    try {
      (await connect(port, { clientId, username: 'dev', password: 'dev-pw', protocolVersion: version })).end(true);
      return 0;
    } catch (err) {
      return (err as { code?: number }).code;
    }
  };
  t.is(await code(b.port, 'dev'), 0);
  t.is(await code(b.port, 'dev-2'), 0);
  t.is(await code(b.port, 'device-2'), 0x85, 'v5: client identifier not valid');
  t.is(await code(b.port, 'device-2', 4), 2, 'v3.1.1: identifier rejected');
  t.is(await code(b.port, 'dev2'), 0x85);
  t.is(await code(b.port, 'dev-'), 0x85, 'the separator needs something after it');
  const dotted = await startBroker(listener({ clientIdBinding: 'prefix', clientIdSeparator: '.' }));
  t.teardown(() => dotted.stop());
  t.is(await code(dotted.port, 'dev.sensor-7'), 0);
  t.is(await code(dotted.port, 'dev-2'), 0x85, 'the configured separator, not a hyphen');
  const refusal = b.audit.records.find((r) => r.event === 'connect' && r.decision === 'deny' && r.clientId === 'device-2');
  t.regex(refusal?.reason ?? '', /start with 'dev-'/);
});
