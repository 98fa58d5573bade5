/**
 * Every configuration in docs/examples/ starts as written with `portcullis start --config`, in a
 * directory laid out as the docs say (pki/ from `portcullis pki`, data/passwords from
 * `portcullis passwd add`, policies/ from the repository), and the client commands of
 * docs/quickstart.md connect to it. The only edits to the copy: ports become 0 (ephemeral), and
 * the JWKS URL points at a local server. Every example binds loopback as written.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { exportJWK, exportSPKI, generateKeyPair, SignJWT } from 'jose';
import mqtt from 'mqtt';
import { pki } from '../tls-fixtures.ts';
import { type BrokerProcess, root, startBrokerProcess, tempDir } from './broker-process.ts';
import { delay, haveMosquittoClients, killClients, launch, MOSQUITTO_PUB, MOSQUITTO_SUB, run, type Running } from './clients.ts';
import { requireTool, slots } from './matrix.ts';

const examples = path.join(root, 'docs', 'examples');
const main = path.join(root, 'src', 'cli', 'main.ts');
const tsx = import.meta.resolve('tsx');

test.after.always(() => killClients());

/** Three examples at once: each starts a broker, and some run `portcullis passwd` (argon2) too. */
const slot = slots(3);

/** A working directory as the docs lay it out: policies/ copied from the repository. */
function workdir(t: ExecutionContext): string {
  const dir = tempDir('portcullis-example-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.cpSync(path.join(root, 'policies'), path.join(dir, 'policies'), { recursive: true });
  return dir;
}

/** The example's text with the only edits a test needs: ephemeral ports, a local JWKS URL. */
function asWritten(file: string, jwksUrl?: string): string {
  let text = fs.readFileSync(path.join(examples, file), 'utf8');
  text = text.replace(/^(\s*port:\s*)\d+/gm, '$10');
  if (jwksUrl !== undefined) text = text.replace(/https:\/\/idp\.example\.com\/\.well-known\/jwks\.json/g, jwksUrl);
  return text;
}

async function start(t: ExecutionContext, dir: string, text: string): Promise<BrokerProcess> {
  const b = await startBrokerProcess({ cwd: dir, config: text });
  t.teardown(() => b.stop());
  return b;
}

/** `portcullis passwd add FILE USER [--roles R]` run in `dir`, the password on standard input. */
function passwdAdd(dir: string, user: string, password: string, roles?: string): Promise<string> {
  return new Promise((resolve) => {
    const args = ['--import', tsx, main, 'passwd', 'add', 'data/passwords', user, ...(roles ? ['--roles', roles] : [])];
    const child = spawn(process.execPath, args, { cwd: dir, stdio: ['pipe', 'ignore', 'pipe'], env: { ...process.env, PORTCULLIS_AUDIT_SPOOL: path.join(dir, 'spool') } });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdin.end(`${password}\n`);
    child.once('close', (code) => resolve(code === 0 ? 'ok' : `exit ${code}: ${stderr}`));
  });
}

/** A JWKS endpoint on loopback serving one RS256 key; returns the URL and a token minter. */
async function jwks(t: ExecutionContext, issuer = 'https://idp.example.com/', audience = 'mqtt-broker') {
  const { publicKey, privateKey } = await generateKeyPair('RS256');
  const jwk = { ...(await exportJWK(publicKey)), kid: 'idp-1', alg: 'RS256', use: 'sig' };
  const server = http.createServer((_req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ keys: [jwk] }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => server.close());
  const url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/.well-known/jwks.json`;
  const mint = (sub: string, claims: Record<string, unknown> = {}) =>
    new SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: 'idp-1' }).setSubject(sub).setIssuer(issuer).setAudience(audience).setExpirationTime('5m').sign(privateKey);
  return { url, mint };
}

/** mosquitto_sub -v that has its SUBACK. */
async function subscriber(args: string[]): Promise<Running> {
  const s = launch(MOSQUITTO_SUB, [...args, '-v', '-d'], 20_000);
  if (!(await s.waitFor(/received SUBACK/))) throw new Error(`mosquitto_sub did not subscribe: ${s.stdout()}${s.stderr()}`);
  return s;
}
const printed = (s: Running) => s.stdout().split('\n').filter((l) => l !== '' && !l.startsWith('Client ') && !l.startsWith('Subscribed '));

async function until(predicate: () => boolean, ms = 10_000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > end) return false;
    await delay(20);
  }
  return true;
}

test('docs/examples/dev-anonymous.yaml: the quick start commands (mosquitto_sub / mosquitto_pub 3.1.1 and 5, MQTT.js over WebSocket)', async (t) => {
  if (!requireTool(t, haveMosquittoClients, 'mosquitto-clients')) return;
  await slot(t);
  const dir = workdir(t);
  const b = await start(t, dir, asWritten('dev-anonymous.yaml'));
  const h = ['-h', '127.0.0.1', '-p', String(b.port('local-tcp'))];
  const sub = await subscriber([...h, '-t', 'demo/#']);
  t.is((await run(MOSQUITTO_PUB, [...h, '-t', 'demo/hello', '-m', 'hi'])).code, 0);
  t.is((await run(MOSQUITTO_PUB, [...h, '-t', 'demo/hello', '-m', 'hi', '-V', 'mqttv5'])).code, 0);
  const ws = mqtt.connect(`ws://127.0.0.1:${b.port('local-ws')}/mqtt`, { protocolVersion: 5 });
  t.teardown(() => ws.endAsync(true));
  await new Promise((resolve, reject) => (ws.once('connect', resolve), ws.once('error', reject)));
  await ws.publishAsync('demo/hello', 'from websocket', { qos: 1 });
  t.true(await until(() => printed(sub).length >= 3), printed(sub).join('\n'));
  t.deepEqual(printed(sub), ['demo/hello hi', 'demo/hello hi', 'demo/hello from websocket']);
  t.truthy(await b.waitForAudit((r) => r.event === 'connect' && r.decision === 'allow'), 'audit records in data/audit.jsonl');
  t.true(fs.existsSync(path.join(dir, 'data', 'audit.jsonl')));
});

test('docs/examples/dev-static-users.yaml: alice and bob from the file; a wrong password gets return code 4', async (t) => {
  if (!requireTool(t, haveMosquittoClients, 'mosquitto-clients')) return;
  await slot(t);
  const dir = workdir(t);
  const b = await start(t, dir, asWritten('dev-static-users.yaml'));
  const h = ['-h', '127.0.0.1', '-p', String(b.port('local-tcp'))];
  const sub = await subscriber([...h, '-t', 'demo/#', '-u', 'alice', '-P', 'change-me-alice']);
  t.is((await run(MOSQUITTO_PUB, [...h, '-t', 'demo/hello', '-m', 'hi', '-u', 'bob', '-P', 'change-me-bob'])).code, 0);
  t.true(await until(() => printed(sub).includes('demo/hello hi')));
  t.is((await run(MOSQUITTO_PUB, [...h, '-t', 'demo/hello', '-m', 'hi', '-u', 'bob', '-P', 'wrong'])).code, 4);
});

test('docs/examples/passwords.yaml: pki init + pki server --cn localhost, passwd add, then mosquitto_pub over TLS with a password (fleet policy: a device publishes its telemetry, a reader reads it)', async (t) => {
  if (!requireTool(t, haveMosquittoClients, 'mosquitto-clients')) return;
  await slot(t);
  const dir = workdir(t);
  await pki(path.join(dir, 'pki'), 'init');
  await pki(path.join(dir, 'pki'), 'server', '--cn', 'localhost');
  t.is(await passwdAdd(dir, 'alice', 'alice-pw-1', 'device'), 'ok');
  t.is(await passwdAdd(dir, 'reader', 'reader-pw-1'), 'ok');
  const b = await start(t, dir, asWritten('passwords.yaml'));
  const h = ['--cafile', path.join(dir, 'pki', 'ca-chain.crt'), '-h', 'localhost', '-p', String(b.port('tls-passwords'))];
  const sub = await subscriber([...h, '-u', 'reader', '-P', 'reader-pw-1', '-i', 'reader', '-t', 'devices/+/telemetry/#', '-q', '1']);
  const ok = await run(MOSQUITTO_PUB, [...h, '-u', 'alice', '-P', 'alice-pw-1', '-i', 'alice', '-t', 'devices/alice/telemetry/t', '-m', '21', '-q', '1', '-V', 'mqttv5']);
  t.is(ok.code, 0, ok.stderr);
  t.notRegex(ok.stderr, /failed/);
  t.true(await until(() => printed(sub).includes('devices/alice/telemetry/t 21')));
  // clientIdBinding: equals — a client id other than the user name is refused (v3.1.1 return code 2).
  t.is((await run(MOSQUITTO_PUB, [...h, '-u', 'alice', '-P', 'alice-pw-1', '-i', 'not-alice', '-t', 'devices/alice/telemetry/t', '-m', '21'])).code, 2);
});

test('docs/examples/jwt-backend.yaml: a token from the JWKS URL, and one signed with the static key (client id = cid claim)', async (t) => {
  if (!requireTool(t, haveMosquittoClients, 'mosquitto-clients')) return;
  await slot(t);
  const dir = workdir(t);
  await pki(path.join(dir, 'pki'), 'init');
  await pki(path.join(dir, 'pki'), 'server', '--dns', 'localhost', '--ip', '127.0.0.1');
  const idp = await jwks(t);
  const es = await generateKeyPair('ES256');
  fs.writeFileSync(path.join(dir, 'pki', 'idp-public.pem'), await exportSPKI(es.publicKey));
  const b = await start(t, dir, asWritten('jwt-backend.yaml', idp.url));
  const ca = ['--cafile', path.join(dir, 'pki', 'ca-chain.crt'), '-h', 'localhost'];
  // The token's roles claim makes svc-billing a device in policies/fleet.csv; it publishes its telemetry.
  const token = await idp.mint('svc-billing', { roles: ['device'] });
  const viaJwks = await run(MOSQUITTO_PUB, [...ca, '-p', String(b.port('jwt-jwks')), '-u', 'svc-billing', '-P', token, '-i', 'svc-billing-1', '-t', 'devices/svc-billing/telemetry/x', '-m', 'hi', '-q', '1', '-V', 'mqttv5']);
  t.is(viaJwks.code, 0, viaJwks.stderr);
  t.notRegex(viaJwks.stderr, /failed/);
  const staticToken = await new SignJWT({ cid: 'svc-billing-2', roles: ['device'] })
    .setProtectedHeader({ alg: 'ES256' })
    .setSubject('svc-billing')
    .setIssuer('https://idp.example.com/')
    .setAudience('mqtt-broker')
    .setExpirationTime('5m')
    .sign(es.privateKey);
  const viaStatic = await run(MOSQUITTO_PUB, [...ca, '-p', String(b.port('jwt-static')), '-u', 'svc-billing', '-P', staticToken, '-i', 'svc-billing-2', '-t', 'devices/svc-billing/telemetry/x', '-m', 'hi', '-q', '1', '-V', 'mqttv5']);
  t.is(viaStatic.code, 0, viaStatic.stderr);
  t.is((await run(MOSQUITTO_PUB, [...ca, '-p', String(b.port('jwt-static')), '-u', 'svc-billing', '-P', staticToken, '-i', 'other-id', '-t', 'x', '-m', 'hi', '-V', 'mqttv5'])).code, 0x85, 'client id bound to the cid claim');
  t.is((await run(MOSQUITTO_PUB, [...ca, '-p', String(b.port('jwt-jwks')), '-u', 'svc-billing', '-P', 'not-a-jwt', '-i', 'x-1', '-t', 'x', '-m', 'hi', '-V', 'mqttv5'])).code, 0x86);
});

test('docs/examples/mixed-chain.yaml: a client certificate, a JWT and a password on one listener', async (t) => {
  if (!requireTool(t, haveMosquittoClients, 'mosquitto-clients')) return;
  await slot(t);
  const dir = workdir(t);
  await pki(path.join(dir, 'pki'), 'init');
  await pki(path.join(dir, 'pki'), 'server', '--dns', 'localhost', '--ip', '127.0.0.1');
  await pki(path.join(dir, 'pki'), 'client', '--cn', 'alice');
  t.is(await passwdAdd(dir, 'reader', 'reader-pw-1'), 'ok');
  // The JWT provider checks tokens against the static key pki/idp-public.pem (offline).
  const es = await generateKeyPair('ES256');
  fs.writeFileSync(path.join(dir, 'pki', 'idp-public.pem'), await exportSPKI(es.publicKey));
  const b = await start(t, dir, asWritten('mixed-chain.yaml'));
  const h = ['--cafile', path.join(dir, 'pki', 'ca-chain.crt'), '-h', 'localhost', '-p', String(b.port('mixed')), '-V', 'mqttv5', '-q', '1'];
  const reader = await subscriber([...h, '-u', 'reader', '-P', 'reader-pw-1', '-i', 'reader-1', '-t', 'devices/+/telemetry/#']);
  const byCert = await run(MOSQUITTO_PUB, [...h, '--cert', path.join(dir, 'pki', 'clients', 'alice.crt'), '--key', path.join(dir, 'pki', 'clients', 'alice.key'), '-i', 'alice-1', '-t', 'devices/alice/telemetry/t', '-m', 'by certificate']);
  t.is(byCert.code, 0, byCert.stderr);
  const bobToken = await new SignJWT({}).setProtectedHeader({ alg: 'ES256' }).setSubject('bob').setIssuer('https://idp.example.com/').setAudience('mqtt-broker').setExpirationTime('5m').sign(es.privateKey);
  const byJwt = await run(MOSQUITTO_PUB, [...h, '-u', 'bob', '-P', bobToken, '-i', 'bob-1', '-t', 'devices/bob/telemetry/t', '-m', 'by jwt']);
  t.is(byJwt.code, 0, byJwt.stderr);
  t.true(await until(() => printed(reader).length >= 2), printed(reader).join('\n'));
  t.deepEqual(printed(reader).sort(), ['devices/alice/telemetry/t by certificate', 'devices/bob/telemetry/t by jwt']);
  t.is((await run(MOSQUITTO_PUB, [...h, '-u', 'reader', '-P', 'wrong', '-i', 'reader-2', '-t', 'x', '-m', 'x'])).code, 0x86);
});

test('docs/examples/mtls-fleet.yaml: pki init --intermediate, pki server, pki client, pki crl; a device publishes over mTLS, local tooling reads over TCP', async (t) => {
  if (!requireTool(t, haveMosquittoClients, 'mosquitto-clients')) return;
  await slot(t);
  const dir = workdir(t);
  const p = path.join(dir, 'pki');
  await pki(p, 'init', '--intermediate');
  await pki(p, 'server', '--dns', 'localhost', '--ip', '127.0.0.1');
  await pki(p, 'client', '--cn', 'device-42');
  await pki(p, 'crl');
  const b = await start(t, dir, asWritten('mtls-fleet.yaml'));
  const local = await subscriber(['-h', '127.0.0.1', '-p', String(b.port('local')), '-t', 'devices/#']);
  const device = ['--cafile', path.join(p, 'ca-chain.crt'), '--cert', path.join(p, 'clients', 'device-42.crt'), '--key', path.join(p, 'clients', 'device-42.key'), '-h', 'localhost', '-p', String(b.port('fleet'))];
  const r = await run(MOSQUITTO_PUB, [...device, '-i', 'device-42', '-t', 'devices/device-42/telemetry', '-m', '21']);
  t.is(r.code, 0, r.stderr);
  t.true(await until(() => printed(local).includes('devices/device-42/telemetry 21')));
  t.is((await run(MOSQUITTO_PUB, [...device, '-i', 'device-43', '-t', 'x', '-m', 'x'])).code, 2, 'the client id must be the CN (v3.1.1 return code 2)');
});
