/**
 * Every configuration in docs/examples/ keeps the login guard's promise (scenarios 1 and 4 of
 * guard-scenarios.test.ts), started as a real broker process with its own authGuard settings:
 *
 * 1. a guesser hammers wrong passwords from 127.0.0.2 while, from the same address, every kind of
 *    client the example accepts (password, certificate, PSK, JWT, anonymous) connects once a
 *    second: each of those connects succeeds;
 * 4. at the same time a misconfigured device on 127.0.0.4 reconnects with a wrong password, and
 *    its neighbours there (new client ids every time) still get in.
 *
 * Each example is adapted only where a test must: loopback hosts, free ports, the test PKI, a
 * password file, a local JWKS endpoint and keys. Its authentication, identity rules, admission
 * and authGuard settings are kept.
 */
import fs from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import path from 'node:path';
import anyTest, { type TestFn } from 'ava';
import { exportJWK, exportSPKI, generateKeyPair, SignJWT, type CryptoKey } from 'jose';
import YAML from 'yaml';
import { hashPassword } from '../src/auth/password/hash.ts';
import { ARGON2_FLOOR } from '../src/config/auth-schema.ts';
import { type Fleet, makeFleet } from './tls-fixtures.ts';
import { type ConnectOptions, everySecond, freePorts, loops, mqttConnect, root, startBrokerProcess, tempDir } from './guard-support.ts';

const test = anyTest as TestFn;
const FLOOD_MS = 5000;
const examples = path.join(root, 'docs', 'examples');

let fleet: Fleet;
let passwords: string;
let esPem: string;
let es: CryptoKey;
let rsa: CryptoKey;
let jwksUrl: string;
let jwks: http.Server;

test.before(async () => {
  fleet = await makeFleet('portcullis-guard-examples-');
  const dir = path.dirname(fleet.dir);
  passwords = path.join(dir, 'passwords');
  const users = { alice: 'alice-secret', bob: 'bob-secret' };
  fs.writeFileSync(passwords, (await Promise.all(Object.entries(users).map(async ([u, p]) => `${u}:${await hashPassword(p, ARGON2_FLOOR)}\n`))).join(''), { mode: 0o600 });
  const esPair = await generateKeyPair('ES256');
  es = esPair.privateKey;
  esPem = path.join(dir, 'idp-public.pem');
  fs.writeFileSync(esPem, await exportSPKI(esPair.publicKey));
  const rsaPair = await generateKeyPair('RS256');
  rsa = rsaPair.privateKey;
  const jwk = { ...(await exportJWK(rsaPair.publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' };
  jwks = http.createServer((_req, res) => res.setHeader('content-type', 'application/json').end(JSON.stringify({ keys: [jwk] })));
  await new Promise<void>((r) => jwks.listen(0, '127.0.0.1', r));
  jwksUrl = `http://127.0.0.1:${(jwks.address() as net.AddressInfo).port}/jwks.json`;
});

test.after.always(() => {
  jwks?.close();
  if (fleet !== undefined) fs.rmSync(path.dirname(fleet.dir), { recursive: true, force: true });
});

type Obj = Record<string, unknown>;
type Provider = Obj & { provider: string };

/** A listener's providers, with the string shorthands ('anonymous', 'certificate', 'psk') as objects. */
function providersOf(l: Obj): Provider[] {
  return ((l.auth ?? []) as (string | Provider)[]).map((p) => (typeof p === 'string' ? { provider: p } : p));
}

/** The example with hosts, ports and files pointed at this test's loopback, PKI and keys. */
function adapt(config: Obj, ports: number[]): Obj {
  const listeners = (config.listeners as Obj[]).map((l, i) => {
    const out: Obj = { ...l, host: '127.0.0.1', port: ports[i] };
    if (l.type === 'tls' || l.type === 'wss') {
      out.cert = fleet.serverCert;
      out.key = fleet.serverKey;
      if (l.ca !== undefined) out.ca = fleet.chain;
      if (l.crl !== undefined) out.crl = { ...(l.crl as Obj), files: [fleet.crl] };
      if (l.psk !== undefined) out.psk = { ...(l.psk as Obj), file: fleet.pskFile };
    }
    out.auth = providersOf(l).map((p) => {
      if (p.provider === 'password') return { ...p, file: passwords, watch: false };
      if (p.provider === 'jwt') return { ...p, ...(p.jwks !== undefined ? { jwks: { ...(p.jwks as Obj), url: jwksUrl } } : {}), ...(p.keyFiles !== undefined ? { keyFiles: [esPem] } : {}) };
      return p;
    });
    return out;
  });
  return { ...config, listeners };
}

/** A token the listener's jwt provider accepts: RS256 from the JWKS, or ES256 for the static key. */
function mint(p: Provider, clientId: string): Promise<string> {
  const jwksKey = p.jwks !== undefined && (p.algorithms as string[]).includes('RS256');
  const claims = (p.claims ?? {}) as { clientId?: string };
  const first = (v: unknown) => (Array.isArray(v) ? (v[0] as string) : (v as string));
  return new SignJWT(claims.clientId !== undefined ? { [claims.clientId]: clientId } : {})
    .setProtectedHeader(jwksKey ? { alg: 'RS256', kid: 'k1' } : { alg: 'ES256' })
    .setSubject('svc-1')
    .setIssuer(first(p.issuer))
    .setAudience(first(p.audience))
    .setExpirationTime('10m')
    .sign(jwksKey ? rsa : es);
}

/** One CONNECT of each kind of client the listener accepts, from `from`; `n` keeps client ids apart. */
async function goodClients(l: Obj, from: string, tag: string, n: number): Promise<{ kind: string; code: number }[]> {
  const base: ConnectOptions = { port: l.port as number, from, clientId: '' };
  if (l.type === 'ws') base.ws = (l.path as string | undefined) ?? '/mqtt';
  const ca = fs.readFileSync(fleet.chain);
  const tlsBase = l.type === 'tls' ? { ca } : undefined;
  const tries: Promise<{ kind: string; code: number }>[] = [];
  const run = (kind: string, o: Partial<ConnectOptions>) => tries.push(mqttConnect({ ...base, ...o } as ConnectOptions).then((r) => ({ kind, code: r.code })));
  for (const p of providersOf(l)) {
    switch (p.provider) {
      case 'anonymous':
        run('anonymous', { clientId: `anon-${tag}-${n}`, ...(tlsBase ? { tls: tlsBase } : {}) });
        break;
      case 'password': {
        // A new client id every time (nobody is known good), unless the listener binds it to the user name.
        const equals = (l.identity as { clientIdBinding?: string } | undefined)?.clientIdBinding === 'equals';
        run('password', { clientId: equals ? 'bob' : `bob-${tag}-${n}`, username: 'bob', password: 'bob-secret', ...(tlsBase ? { tls: tlsBase } : {}) });
        break;
      }
      case 'static-users': {
        const users = p.users as { username: string; password: string }[];
        const u = users[users.length - 1] as { username: string; password: string };
        run('static-users', { clientId: `${u.username}-${tag}-${n}`, username: u.username, password: u.password, ...(tlsBase ? { tls: tlsBase } : {}) });
        break;
      }
      case 'certificate': {
        if (tlsBase === undefined || l.ca === undefined) break;
        const device = tag === 't1' ? 'device-1' : 'device-2';
        const files = fleet.client(device);
        run('certificate', { clientId: device, tls: { ca, cert: fs.readFileSync(files.cert), key: fs.readFileSync(files.key) } });
        break;
      }
      case 'psk': {
        if (tlsBase === undefined || l.psk === undefined) break;
        const identity = tag === 't1' ? 'sensor-psk-1' : 'sensor-psk-2';
        run('psk', { clientId: identity, tls: { ca, psk: { identity, key: Buffer.from(fleet.psk[identity] as string, 'hex') } } });
        break;
      }
      case 'jwt': {
        const clientId = `svc-1-${tag}-${n}`;
        run('jwt', { clientId, username: 'svc-1', password: await mint(p, clientId), ...(tlsBase ? { tls: tlsBase } : {}) });
        break;
      }
    }
  }
  return Promise.all(tries);
}

/**
 * The listener a guesser aims at: one that checks passwords, else one that takes a token. An
 * example with neither (anonymous, certificates only) has nothing to guess: no guesser runs there.
 */
function target(listeners: Obj[]): Obj | undefined {
  const has = (l: Obj, names: string[]) => providersOf(l).some((p) => names.includes(p.provider));
  return listeners.find((l) => has(l, ['password', 'static-users', 'module'])) ?? listeners.find((l) => has(l, ['jwt']));
}

for (const file of fs.readdirSync(examples).filter((f) => f.endsWith('.yaml'))) {
  test.serial(`docs/examples/${file}: a guesser and a misconfigured device do not keep good clients out (scenarios 1 and 4)`, async (t) => {
    const raw = YAML.parse(fs.readFileSync(path.join(examples, file), 'utf8')) as Obj;
    const ports = await freePorts((raw.listeners as Obj[]).length);
    const config = adapt(raw, ports);
    const broker = await startBrokerProcess(tempDir(t), config, ports);
    t.teardown(() => broker.stop());
    const listeners = config.listeners as Obj[];
    const aim = target(listeners);
    const tls = aim?.type === 'tls' ? { ca: fs.readFileSync(fleet.chain) } : undefined;
    const wrong = (from: string, clientId: string, password: string) =>
      mqttConnect({ port: aim?.port as number, from, clientId, username: 'alice', password, ...(tls ? { tls } : {}), ...(aim?.type === 'ws' ? { ws: (aim.path as string | undefined) ?? '/mqtt' } : {}) });
    // 1. The guesser: 8 loops of wrong passwords for alice from 127.0.0.2.
    const guesser = aim === undefined ? Promise.resolve(0) : loops(8, FLOOD_MS, (w, i) => wrong('127.0.0.2', `g-${w}-${i}`, `guess-${w}-${i}`));
    // 4. The misconfigured device on 127.0.0.4: the same wrong password, 200 ms after each answer.
    // Where no listener takes a password, the misconfigured device holds a certificate from another CA.
    const mtls = listeners.find((l) => l.type === 'tls' && l.ca !== undefined);
    const other = { ca: fs.readFileSync(fleet.chain), cert: fs.readFileSync(fleet.other.cert), key: fs.readFileSync(fleet.other.key) };
    const misconfigured = aim !== undefined ? () => wrong('127.0.0.4', 'alice', 'old-password') : mtls !== undefined ? () => mqttConnect({ port: mtls.port as number, from: '127.0.0.4', clientId: 'device-1', tls: other }) : undefined;
    const device =
      misconfigured === undefined
        ? Promise.resolve(0)
        : loops(1, FLOOD_MS, async () => {
            await misconfigured();
            await new Promise((r) => setTimeout(r, 200));
          });
    const [near1, near4] = await Promise.all([
      everySecond(FLOOD_MS, (i) => Promise.all(listeners.map((l) => goodClients(l, '127.0.0.2', 't1', i))).then((r) => r.flat())),
      everySecond(FLOOD_MS, (i) => Promise.all(listeners.map((l) => goodClients(l, '127.0.0.4', 't4', i))).then((r) => r.flat())),
    ]);
    const [guesses, retries] = await Promise.all([guesser, device]);
    const all = [...near1.flat(), ...near4.flat()];
    t.true(all.length >= 10, `${all.length} good connects`);
    t.deepEqual(all.filter((r) => r.code !== 0), [], `refused good clients: ${JSON.stringify(all.filter((r) => r.code !== 0))}`);
    t.log(
      aim === undefined
        ? `${all.length} good connects, all accepted; no listener takes a password or token, so there is nothing to guess; device ${retries} attempts`
        : `${all.length} good connects (${[...new Set(all.map((r) => r.kind))].join(', ')}), all accepted; guesser ${guesses} attempts, device ${retries} attempts on listener ${String(aim.name)}`,
    );
  });
}
