/**
 * The example configurations the docs point to must keep working.
 */
import fs from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { exportJWK, exportSPKI, generateKeyPair, SignJWT } from 'jose';
import mqtt from 'mqtt';
import { hashPassword } from '../src/auth/password/hash.ts';
import { ARGON2_FLOOR } from '../src/config/auth-schema.ts';
import { loadConfigFile } from '../src/config/load.ts';
import { createBroker, MemoryAuditSink, MemoryStore } from '../src/index.ts';
import { silentLogger } from '../src/log.ts';
import { connect, nextMessages } from './helpers.ts';
import { pki } from './tls-fixtures.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const examples = path.join(root, 'docs', 'examples');

for (const file of fs.readdirSync(examples).filter((f) => f.endsWith('.yaml'))) {
  test(`docs/examples/${file} is a valid configuration`, (t) => {
    t.notThrows(() => loadConfigFile(path.join(examples, file)));
  });
}

test('docs/examples/dev-anonymous.yaml serves anonymous clients over TCP and WebSocket on loopback', async (t) => {
  const config = loadConfigFile(path.join(examples, 'dev-anonymous.yaml'));
  for (const l of config.listeners) {
    t.is(l.host, '127.0.0.1', `${l.name} stays on loopback`);
    l.port = 0; // the shipped ports may be in use on a test machine
  }
  const audit = new MemoryAuditSink();
  const broker = createBroker(config, { logger: silentLogger(), audit, store: new MemoryStore() });
  const { listeners } = await broker.start();
  t.teardown(() => broker.stop());
  const tcp = listeners.find((l) => l.type === 'tcp');
  const ws = listeners.find((l) => l.type === 'ws');
  t.truthy(tcp);
  t.truthy(ws);

  const sub = await connect(tcp?.port ?? 0, { protocolVersion: 5, clientId: 'example-sub' });
  t.teardown(() => sub.end(true));
  await sub.subscribeAsync('demo/#', { qos: 1 });
  const wsClient = await new Promise<mqtt.MqttClient>((resolve, reject) => {
    const c = mqtt.connect(`ws://127.0.0.1:${ws?.port}/mqtt`, { reconnectPeriod: 0, clientId: 'example-ws' });
    c.once('connect', () => resolve(c));
    c.once('error', reject);
  });
  t.teardown(() => wsClient.end(true));
  const got = nextMessages(sub, 1);
  await wsClient.publishAsync('demo/hello', 'from websocket', { qos: 1 });
  const [m] = await got;
  t.is(m?.topic, 'demo/hello');
  t.is(m?.payload, 'from websocket');
  t.true(audit.records.some((r) => r.event === 'connect' && r.decision === 'allow' && r.clientId === 'example-ws'));
});

// ── the TLS examples, started against a PKI made by `portcullis pki` ─────────

/** A fresh PKI (root CA, server certificate for localhost/127.0.0.1, one device) and a password file. */
async function examplePki(t: { teardown(fn: () => void): void }, users: Record<string, string>) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-examples-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pkiDir = path.join(dir, 'pki');
  await pki(pkiDir, 'init', '--cn', 'Example CA');
  await pki(pkiDir, 'server', '--dns', 'localhost', '--ip', '127.0.0.1');
  await pki(pkiDir, 'client', '--cn', 'alice');
  const passwords = path.join(dir, 'passwords');
  let text = '';
  for (const [user, pw] of Object.entries(users)) text += `${user}:${await hashPassword(pw, ARGON2_FLOOR)}\n`;
  fs.writeFileSync(passwords, text, { mode: 0o600 });
  return {
    dir,
    passwords,
    chain: path.join(pkiDir, 'ca-chain.crt'),
    cert: path.join(pkiDir, 'server.crt'),
    key: path.join(pkiDir, 'private', 'server.key'),
    alice: { cert: fs.readFileSync(path.join(pkiDir, 'clients', 'alice.crt')), key: fs.readFileSync(path.join(pkiDir, 'clients', 'alice.key')) },
  };
}

/** Loads an example, keeps its meaning, and points it at the test PKI, files and loopback. */
function adapt(file: string, p: Awaited<ReturnType<typeof examplePki>>, jwksUrl?: string) {
  const config = loadConfigFile(path.join(examples, file));
  for (const l of config.listeners) {
    l.host = '127.0.0.1'; // tests use loopback only; the example binds every interface
    l.port = 0;
    if (l.type === 'tls') {
      l.cert = p.cert;
      l.key = p.key;
      if (l.ca !== undefined) l.ca = p.chain;
    }
    for (const a of l.auth) {
      if (a.provider === 'password') a.file = p.passwords;
      if (a.provider === 'jwt' && a.jwks !== undefined && jwksUrl !== undefined) a.jwks.url = jwksUrl;
    }
  }
  config.audit.sink = 'none';
  return config;
}

function tlsConnect(port: number, chain: string, options: mqtt.IClientOptions): Promise<mqtt.MqttClient | number> {
  return new Promise((resolve) => {
    const c = mqtt.connect({ protocol: 'mqtts', host: '127.0.0.1', port, ca: fs.readFileSync(chain), servername: 'localhost', reconnectPeriod: 0, connectTimeout: 8000, protocolVersion: 5, ...options });
    c.once('connect', () => resolve(c));
    c.once('error', (err) => {
      c.end(true);
      resolve((err as Error & { code?: number }).code ?? -1);
    });
    // Refused during the TLS handshake: the socket closes without an MQTT answer.
    c.once('close', () => resolve(-1));
  });
}

async function pubackCode(c: mqtt.MqttClient, topic: string): Promise<number> {
  try {
    const packet = await c.publishAsync(topic, '21', { qos: 1 });
    return (packet as { reasonCode?: number } | undefined)?.reasonCode ?? 0;
  } catch (err) {
    return (err as Error & { code?: number }).code ?? -1;
  }
}

test('docs/examples/passwords.yaml: a TLS listener with argon2id passwords, client id binding and the fleet policy', async (t) => {
  const p = await examplePki(t, { alice: 'alice-pw-1', bob: 'bob-pw-1' });
  const config = adapt('passwords.yaml', p);
  const audit = new MemoryAuditSink();
  const broker = createBroker(config, { logger: silentLogger(), audit, store: new MemoryStore() });
  const { listeners } = await broker.start();
  t.teardown(() => broker.stop());
  const port = listeners[0]?.port ?? 0;

  const alice = await tlsConnect(port, p.chain, { username: 'alice', password: 'alice-pw-1', clientId: 'alice' });
  if (typeof alice === 'number') return t.fail(`alice refused with ${alice}`);
  t.teardown(() => alice.end(true));
  t.is(await pubackCode(alice, 'devices/alice/telemetry/t'), 0, 'a device publishes its own telemetry');
  t.is(await pubackCode(alice, 'devices/bob/telemetry/t'), 0x87, 'and not another device\'s');
  t.is(await tlsConnect(port, p.chain, { username: 'bob', password: 'wrong', clientId: 'bob' }), 0x86, 'a wrong password is refused');
  t.is(await tlsConnect(port, p.chain, { username: 'bob', password: 'bob-pw-1', clientId: 'alice' }), 0x85, 'binding: bob may not use alice\'s client id');
  t.true(audit.records.some((r) => r.event === 'connect' && r.decision === 'allow' && r.username === 'alice' && r.authMethod === 'password'));
});

test('docs/examples/mixed-chain.yaml: certificate, then JWT, then password on one TLS listener', async (t) => {
  const p = await examplePki(t, { reader: 'reader-pw-1' });
  // The example checks tokens against a static key (pki/idp-public.pem): works offline.
  const { publicKey, privateKey } = await generateKeyPair('ES256');
  const config = adapt('mixed-chain.yaml', p);
  const jwt = config.listeners[0]?.auth.find((a) => a.provider === 'jwt');
  if (jwt?.provider !== 'jwt') return t.fail('the example has a jwt provider');
  t.deepEqual(jwt.keyFiles, ['pki/idp-public.pem']);
  const pem = path.join(p.dir, 'idp-public.pem');
  fs.writeFileSync(pem, await exportSPKI(publicKey));
  jwt.keyFiles = [pem];
  const audit = new MemoryAuditSink();
  const broker = createBroker(config, { logger: silentLogger(), audit, store: new MemoryStore() });
  const { listeners } = await broker.start();
  t.teardown(() => broker.stop());
  const port = listeners[0]?.port ?? 0;
  const clients: mqtt.MqttClient[] = [];
  t.teardown(() => clients.forEach((c) => c.end(true)));
  const decided = (clientId: string) => audit.records.find((r) => r.event === 'connect' && r.clientId === clientId)?.decidedBy;

  // 1. A client certificate: the CN is the user name; the client id starts with it.
  const byCert = await tlsConnect(port, p.chain, { clientId: 'alice-1', ...p.alice });
  if (typeof byCert === 'number') return t.fail(`certificate refused with ${byCert}`);
  clients.push(byCert);
  t.is(decided('alice-1'), 'certificate');
  t.is(await pubackCode(byCert, 'devices/alice/telemetry/t'), 0);

  // 2. No certificate, a JWT in the password field, signed with the static key.
  const token = await new SignJWT({})
    .setProtectedHeader({ alg: 'ES256' })
    .setSubject('bob')
    .setIssuer(jwt.issuer as string)
    .setAudience(jwt.audience as string)
    .setExpirationTime('5m')
    .sign(privateKey);
  const byJwt = await tlsConnect(port, p.chain, { clientId: 'bob-1', username: 'bob', password: token });
  if (typeof byJwt === 'number') return t.fail(`JWT refused with ${byJwt}`);
  clients.push(byJwt);
  t.is(decided('bob-1'), 'jwt');
  t.is(await pubackCode(byJwt, 'devices/bob/telemetry/t'), 0);
  t.is(await pubackCode(byJwt, 'devices/alice/telemetry/t'), 0x87);

  // 3. Neither: a password from the password file.
  const byPassword = await tlsConnect(port, p.chain, { clientId: 'reader-1', username: 'reader', password: 'reader-pw-1' });
  if (typeof byPassword === 'number') return t.fail(`password refused with ${byPassword}`);
  clients.push(byPassword);
  t.is(decided('reader-1'), 'password');

  // A wrong password after two abstentions is refused; a forged JWT is refused by the JWT provider.
  t.is(await tlsConnect(port, p.chain, { clientId: 'reader-2', username: 'reader', password: 'nope' }), 0x86);
  const forged = token.slice(0, token.lastIndexOf('.') + 1) + 'AAAA';
  t.is(await tlsConnect(port, p.chain, { clientId: 'bob-2', username: 'bob', password: forged }), 0x86);
  t.true(audit.records.some((r) => r.event === 'connect' && r.decision === 'deny' && r.clientId === 'bob-2' && r.decidedBy === 'jwt'));
});

test('docs/examples/jwt-backend.yaml: JWTs from a JWKS URL on one listener and a static ES256 key on the other, with topic claims that narrow the policy', async (t) => {
  const p = await examplePki(t, {});
  const rsa = await generateKeyPair('RS256');
  const jwk = { ...(await exportJWK(rsa.publicKey)), kid: 'idp-1', alg: 'RS256', use: 'sig' };
  const server = http.createServer((_req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ keys: [jwk] }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => server.close());
  const config = adapt('jwt-backend.yaml', p, `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/.well-known/jwks.json`);
  const es = await generateKeyPair('ES256');
  const pem = path.join(p.dir, 'idp-public.pem');
  fs.writeFileSync(pem, await exportSPKI(es.publicKey));
  const staticJwt = config.listeners[1]?.auth[0];
  if (staticJwt?.provider !== 'jwt') return t.fail('the second listener has a jwt provider');
  staticJwt.keyFiles = [pem];
  const audit = new MemoryAuditSink();
  const broker = createBroker(config, { logger: silentLogger(), audit, store: new MemoryStore() });
  const { listeners } = await broker.start();
  t.teardown(() => broker.stop());
  const port = (name: string) => listeners.find((l) => l.name === name)?.port ?? 0;
  const clients: mqtt.MqttClient[] = [];
  t.teardown(() => clients.forEach((c) => c.end(true)));
  const mint = (claims: Record<string, unknown>, alg: 'RS256' | 'ES256', key: Parameters<SignJWT['sign']>[0], kid?: string) =>
    new SignJWT(claims)
      .setProtectedHeader({ alg, ...(kid !== undefined ? { kid } : {}) })
      .setSubject('alice')
      .setIssuer('https://idp.example.com/')
      .setAudience('mqtt-broker')
      .setExpirationTime('5m')
      .sign(key);

  // JWKS listener: a token without topic claims gets the file policy (alice is a device).
  const viaJwks = await tlsConnect(port('jwt-jwks'), p.chain, { clientId: 'alice-jwks', username: 'alice', password: await mint({}, 'RS256', rsa.privateKey, 'idp-1') });
  if (typeof viaJwks === 'number') return t.fail(`JWKS token refused with ${viaJwks}`);
  clients.push(viaJwks);
  t.is(await pubackCode(viaJwks, 'devices/alice/telemetry/t'), 0);
  t.is(await pubackCode(viaJwks, 'devices/bob/telemetry/t'), 0x87);

  // Static-key listener: the client id must equal the cid claim; a topic claim narrows the policy.
  const narrow = await mint({ cid: 'alice-7', topics: { publish: ['devices/alice/telemetry/temp'] } }, 'ES256', es.privateKey);
  const viaStatic = await tlsConnect(port('jwt-static'), p.chain, { clientId: 'alice-7', username: 'alice', password: narrow });
  if (typeof viaStatic === 'number') return t.fail(`static-key token refused with ${viaStatic}`);
  clients.push(viaStatic);
  t.is(await pubackCode(viaStatic, 'devices/alice/telemetry/temp'), 0);
  t.is(await pubackCode(viaStatic, 'devices/alice/telemetry/humidity'), 0x87, 'the token narrows what the policy allows');
  t.is(await tlsConnect(port('jwt-static'), p.chain, { clientId: 'alice-8', username: 'alice', password: narrow }), 0x85, 'client id bound to the cid claim');
  // An RS256 token from the JWKS is not accepted where only the static ES256 key is configured.
  t.is(await tlsConnect(port('jwt-static'), p.chain, { clientId: 'alice-7', username: 'alice', password: await mint({ cid: 'alice-7' }, 'RS256', rsa.privateKey, 'idp-1') }), 0x86);
});

test('docs/examples/mtls-fleet.yaml: devices with certificates from portcullis pki (root + intermediate), CN bound to the client id, a revoked device refused', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-examples-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pkiDir = path.join(dir, 'pki');
  await pki(pkiDir, 'init', '--intermediate');
  await pki(pkiDir, 'server', '--dns', 'localhost', '--ip', '127.0.0.1');
  await pki(pkiDir, 'client', '--cn', 'device-1');
  await pki(pkiDir, 'client', '--cn', 'device-2');
  await pki(pkiDir, 'revoke', path.join(pkiDir, 'clients', 'device-2.crt'));
  await pki(pkiDir, 'crl');
  const config = loadConfigFile(path.join(examples, 'mtls-fleet.yaml'));
  for (const l of config.listeners) {
    l.host = '127.0.0.1';
    l.port = 0;
    if (l.type === 'tls') {
      l.cert = path.join(pkiDir, 'server.crt');
      l.key = path.join(pkiDir, 'private', 'server.key');
      l.ca = path.join(pkiDir, 'ca-chain.crt');
      if (l.crl !== undefined) l.crl.files = [path.join(pkiDir, 'crl.pem')];
    }
  }
  config.audit.sink = 'none';
  const audit = new MemoryAuditSink();
  const broker = createBroker(config, { logger: silentLogger(), audit, store: new MemoryStore() });
  const { listeners } = await broker.start();
  t.teardown(() => broker.stop());
  const port = listeners.find((l) => l.name === 'fleet')?.port ?? 0;
  const chain = path.join(pkiDir, 'ca-chain.crt');
  const device = (name: string) => ({ cert: fs.readFileSync(path.join(pkiDir, 'clients', `${name}.crt`)), key: fs.readFileSync(path.join(pkiDir, 'clients', `${name}.key`)) });

  const ok = await tlsConnect(port, chain, { clientId: 'device-1', ...device('device-1') });
  if (typeof ok === 'number') return t.fail(`device-1 refused with ${ok}`);
  t.teardown(() => ok.end(true));
  t.is(await pubackCode(ok, 'devices/device-1/telemetry'), 0);
  t.true(audit.records.some((r) => r.event === 'connect' && r.decision === 'allow' && r.username === 'device-1' && r.authMethod === 'certificate'));
  t.is(await tlsConnect(port, chain, { clientId: 'device-9', ...device('device-1') }), 0x85, 'binding: the client id must be the CN');
  const revoked = await tlsConnect(port, chain, { clientId: 'device-2', ...device('device-2') });
  t.is(typeof revoked, 'number', 'the revoked device never gets a session');
  if (typeof revoked !== 'number') revoked.end(true);
  t.true(audit.records.some((r) => r.event === 'tls' && r.decision === 'deny' && /revoked/i.test(r.reason ?? '')));
  t.is(await tlsConnect(port, chain, { clientId: 'device-1' }), -1, 'no certificate: refused at the handshake');
});
