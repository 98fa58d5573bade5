/**
 * The login guard's promise, over a real broker process with its default `authGuard`: guessing
 * is slow, and nobody can keep a client with valid credentials out. Clients bind their source
 * address (127.0.0.2, 127.0.0.3, ...) so attacker and victims can be told apart on one machine.
 * The floods last 30 s; these last 6 s, which is enough for every allowance and several
 * doublings of the backoff (docs/authentication.md has the arithmetic for longer floods).
 */
import fs from 'node:fs';
import path from 'node:path';
import anyTest, { type TestFn } from 'ava';
import { exportSPKI, generateKeyPair, SignJWT } from 'jose';
import { hashPassword } from '../src/auth/password/hash.ts';
import { ARGON2_FLOOR } from '../src/config/auth-schema.ts';
import { type Fleet, makeFleet } from './tls-fixtures.ts';
import { type BrokerProcess, checksRun, everySecond, freePorts, loops, mqttConnect, startBrokerProcess, tempDir } from './guard-support.ts';

// One at a time: each test floods a broker process, and the machine has few cores.
const test = anyTest as TestFn;
const FLOOD_MS = 6000;

let fleet: Fleet;
let passwords: string;
let jwtKey: string;
let token: string;

test.before(async () => {
  fleet = await makeFleet('portcullis-guard-');
  const dir = path.dirname(fleet.dir);
  passwords = path.join(dir, 'passwords');
  const users = { alice: 'alice-secret', bob: 'bob-secret' };
  fs.writeFileSync(passwords, (await Promise.all(Object.entries(users).map(async ([u, p]) => `${u}:${await hashPassword(p, ARGON2_FLOOR)}\n`))).join(''), { mode: 0o600 });
  const es = await generateKeyPair('ES256');
  jwtKey = path.join(dir, 'idp.pem');
  fs.writeFileSync(jwtKey, await exportSPKI(es.publicKey));
  token = await new SignJWT({}).setProtectedHeader({ alg: 'ES256' }).setSubject('svc-1').setIssuer('https://idp.test/').setAudience('mqtt').setExpirationTime('10m').sign(es.privateKey);
});

test.after.always(() => {
  if (fleet !== undefined) fs.rmSync(path.dirname(fleet.dir), { recursive: true, force: true });
});

interface Setup {
  broker: BrokerProcess;
  port: { pw: number; mtls: number; psk: number; jwt: number };
}

/** A password listener, an mTLS listener, a PSK listener and a JWT listener; `extra` is merged into the configuration. */
async function setup(t: { teardown(fn: () => unknown): void }, extra: Record<string, unknown> = {}): Promise<Setup> {
  const [pw, mtls, psk, jwt] = (await freePorts(4)) as [number, number, number, number];
  const host = '127.0.0.1';
  const server = { cert: fleet.serverCert, key: fleet.serverKey };
  const broker = await startBrokerProcess(
    tempDir(t),
    {
      listeners: [
        { name: 'pw', type: 'tcp', host, port: pw, auth: [{ provider: 'password', file: passwords, watch: false }] },
        { name: 'mtls', type: 'tls', host, port: mtls, ...server, ca: fleet.chain, requireClientCert: true, auth: [{ provider: 'certificate', username: 'cn' }] },
        { name: 'psk', type: 'tls', host, port: psk, ...server, psk: { file: fleet.pskFile }, auth: ['psk'] },
        { name: 'jwt', type: 'tcp', host, port: jwt, auth: [{ provider: 'jwt', algorithms: ['ES256'], issuer: 'https://idp.test/', audience: 'mqtt', keyFiles: [jwtKey] }] },
      ],
      authorizers: ['allow-all'],
      ...extra,
    },
    [pw, mtls, psk, jwt],
  );
  t.teardown(() => broker.stop());
  return { broker, port: { pw, mtls, psk, jwt } };
}

/** bob's password, a certificate, a PSK and a JWT client, all from `from`; resolves with the four CONNACK codes. */
function goodClients(s: Setup, from: string, bobClientId: string): Promise<number[]> {
  const ca = fs.readFileSync(fleet.chain);
  const device = fleet.client('device-1');
  return Promise.all([
    mqttConnect({ port: s.port.pw, from, clientId: bobClientId, username: 'bob', password: 'bob-secret' }),
    mqttConnect({ port: s.port.mtls, from, clientId: 'device-1', tls: { ca, cert: fs.readFileSync(device.cert), key: fs.readFileSync(device.key) } }),
    mqttConnect({ port: s.port.psk, from, clientId: 'sensor-psk-1', tls: { ca, psk: { identity: 'sensor-psk-1', key: Buffer.from(fleet.psk['sensor-psk-1'] as string, 'hex') } } }),
    mqttConnect({ port: s.port.jwt, from, clientId: 'svc-1', username: 'svc-1', password: token }),
  ]).then((r) => r.map((x) => x.code));
}

test.serial('1. a guesser and good clients on one address: every good connect succeeds, and the refusal log names the key and setting', async (t) => {
  const s = await setup(t);
  // The guesser: 8 loops, each sending its next wrong password for alice as soon as it has an answer.
  const codes: number[] = [];
  const flood = loops(8, FLOOD_MS, (w, i) => mqttConnect({ port: s.port.pw, from: '127.0.0.2', clientId: `g-${w}-${i}`, username: 'alice', password: `guess-${w}-${i}` }).then((r) => codes.push(r.code)));
  const good = await everySecond(FLOOD_MS, () => goodClients(s, '127.0.0.2', 'bob-1'));
  await flood;
  t.deepEqual(good.flat().filter((c) => c !== 0), [], `good clients' codes: ${JSON.stringify(good)}`);
  t.true(good.length >= 5);
  const checks = checksRun(s.broker.audit(), 'password', 'alice').length;
  t.log(`guesser: ${codes.length} attempts in ${FLOOD_MS / 1000} s, ${checks} reached a password check, ${codes.filter((c) => c === 0x9f).length} refused (0x9F)`);
  t.true(checks <= 5 + 3, `${checks} guesses were checked`);
  t.true(codes.includes(0x9f));
  const refusal = s.broker
    .output()
    .split('\n')
    .find((l) => l.includes('"connect refused"') && l.includes('throttled by authGuard.pair'));
  t.truthy(refusal, 'a log line for a refused guess');
  t.regex(refusal ?? '', /"remote":"127\.0\.0\.2".*throttled by authGuard\.pair \(127\.0\.0\.2, 'alice'\): \d+ failed logins/);
});

test.serial('2. distributed guessing of one user from 20 addresses: the known-good user gets in every second; few guesses reach a check', async (t) => {
  const s = await setup(t);
  t.is((await mqttConnect({ port: s.port.pw, from: '127.0.0.3', clientId: 'alice-1', username: 'alice', password: 'alice-secret' })).code, 0, 'alice is known good');
  const flood = loops(20, FLOOD_MS, (w, i) => mqttConnect({ port: s.port.pw, from: `127.0.1.${w + 1}`, clientId: `g-${w}-${i}`, username: 'alice', password: `guess-${w}-${i}` }));
  const t0 = Date.now();
  const alice = await everySecond(FLOOD_MS, () => mqttConnect({ port: s.port.pw, from: '127.0.0.3', clientId: 'alice-1', username: 'alice', password: 'alice-secret' }).then((r) => r.code));
  const attempts = await flood;
  const secs = (Date.now() - t0) / 1000;
  t.deepEqual(alice.filter((c) => c !== 0), [], `alice's codes: ${alice.join(',')}`);
  const guesses = checksRun(s.broker.audit(), 'password', 'alice').filter((r) => r.decision === 'deny').length;
  t.log(`20 addresses: ${attempts} attempts, ${guesses} guesses checked in ${secs.toFixed(1)} s (${(guesses / secs).toFixed(1)}/s, of which 20 are the user name's free allowance)`);
  // 20 free failures on the user name, then 1 s, 2 s, 4 s ... apart: at most 20 + 3 in 6 s.
  t.true(guesses <= 20 + 4, `${guesses} guesses checked`);
});

test.serial('3. spraying 10,000 user names from one address: no user name is locked, known-good clients pass, and the argon2 CPU is capped', async (t) => {
  // No connect-rate limit and no tarpit here, so 10,000 attempts fit in seconds; both only slow the sprayer more.
  const s = await setup(t, { limits: { connectRate: { perSecond: 0, burst: 1 }, maxConnectionsPerIp: 100_000 }, authGuard: { tarpit: { maxHoldMs: 0 } } });
  t.is((await mqttConnect({ port: s.port.pw, from: '127.0.0.5', clientId: 'bob-1', username: 'bob', password: 'bob-secret' })).code, 0, 'bob is known good on the sprayer\'s address');
  const names = Array.from({ length: 10_000 }, (_, i) => (i === 5000 ? 'alice' : i === 7000 ? 'bob' : `user-${i}`));
  let next = 0;
  const codes = new Map<number, number>();
  const cpu0 = s.broker.cpuSeconds();
  const t0 = Date.now();
  const bobDuring: number[] = [];
  const spray = Promise.all(
    Array.from({ length: 32 }, async () => {
      while (next < names.length) {
        const name = names[next++] as string;
        const r = await mqttConnect({ port: s.port.pw, from: '127.0.0.5', clientId: `s-${name}`, username: name, password: 'Winter2025!' });
        codes.set(r.code, (codes.get(r.code) ?? 0) + 1);
      }
    }),
  );
  while (next < names.length / 2) await new Promise((r) => setTimeout(r, 200));
  bobDuring.push((await mqttConnect({ port: s.port.pw, from: '127.0.0.5', clientId: 'bob-1', username: 'bob', password: 'bob-secret' })).code);
  await spray;
  const secs = (Date.now() - t0) / 1000;
  const cpu = s.broker.cpuSeconds() - cpu0;
  const checks = checksRun(s.broker.audit(), 'password').filter((r) => r.decision === 'deny').length;
  t.log(`10,000 user names in ${secs.toFixed(1)} s: ${checks} password checks (${(checks / secs).toFixed(1)}/s), broker CPU ${cpu.toFixed(2)} s; answers ${JSON.stringify(Object.fromEntries(codes))}`);
  t.deepEqual(bobDuring, [0], 'the known-good client on the sprayer\'s address gets in during the spray');
  // The address cap: a burst of 20, then 5 failed checks per second.
  t.true(checks <= 20 + Math.ceil(5 * secs) + 2, `${checks} checks in ${secs.toFixed(1)} s`);
  t.is((codes.get(0x9f) ?? 0) + (codes.get(0x86) ?? 0), names.length);
  // No user name is locked: the right passwords work from another address at once.
  t.is((await mqttConnect({ port: s.port.pw, from: '127.0.0.6', clientId: 'alice-9', username: 'alice', password: 'alice-secret' })).code, 0);
  t.is((await mqttConnect({ port: s.port.pw, from: '127.0.0.6', clientId: 'bob-9', username: 'bob', password: 'bob-secret' })).code, 0);
});

test.serial('4. a device in a reconnect loop with a wrong password is slowed, and its neighbours on the address still get in', async (t) => {
  const s = await setup(t);
  // The misconfigured device: reconnects 200 ms after each answer, with the same client id and wrong password.
  const device = loops(1, FLOOD_MS, async () => {
    await mqttConnect({ port: s.port.pw, from: '127.0.0.4', clientId: 'meter-7', username: 'meter-7', password: 'old-password' });
    await new Promise((r) => setTimeout(r, 200));
  });
  // Neighbours behind the same address: a new client id every time (nobody is known good), a certificate, a PSK, a JWT.
  const good = await everySecond(FLOOD_MS, (i) => goodClients(s, '127.0.0.4', `bob-${i}`));
  const attempts = await device;
  t.deepEqual(good.flat().filter((c) => c !== 0), [], `neighbours' codes: ${JSON.stringify(good)}`);
  const checks = checksRun(s.broker.audit(), 'password', 'meter-7').length;
  t.log(`the device: ${attempts} attempts in ${FLOOD_MS / 1000} s, ${checks} password checks`);
  // 5 free failures, then checks 1 s, 2 s, 4 s apart.
  t.true(checks <= 5 + 3, `${checks} checks`);
  t.true(attempts > checks, 'the loop kept trying');
});
