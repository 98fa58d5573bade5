/**
 * The JWT provider over real sockets: tokens minted with jose, a JWKS served by a test HTTP
 * server on loopback, static PEM keys, expiry disconnects and MQTT 5 re-authentication.
 */
import { createHmac } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import test from 'ava';
import { exportJWK, exportSPKI, generateKeyPair, SignJWT, type JWTPayload } from 'jose';
import mqttPacket from 'mqtt-packet';
import { connect, delay, startBroker } from './helpers.ts';
import { mosquittoPub, refusalCode, tempDir } from './auth-support.ts';

const ISS = 'https://idp.test';
const AUD = 'mqtt';
const rsa = await generateKeyPair('RS256', { extractable: true });
const other = await generateKeyPair('RS256', { extractable: true });
const publicPem = await exportSPKI(rsa.publicKey);
const jwk = { ...(await exportJWK(rsa.publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' };

function mint(claims: JWTPayload = {}, opts: { kid?: string; key?: Parameters<SignJWT['sign']>[0]; exp?: number | string; nbf?: number | string; iss?: string; aud?: string } = {}): Promise<string> {
  const jwt = new SignJWT({ sub: 'svc-a', roles: ['backend'], topics: { publish: ['svc/a/#'], subscribe: ['svc/#'] }, ...claims })
    .setProtectedHeader({ alg: 'RS256', ...(opts.kid !== undefined ? { kid: opts.kid } : {}) })
    .setIssuedAt()
    .setIssuer(opts.iss ?? ISS)
    .setAudience(opts.aud ?? AUD)
    .setExpirationTime(opts.exp ?? '10m');
  if (opts.nbf !== undefined) jwt.setNotBefore(opts.nbf);
  return jwt.sign(opts.key ?? rsa.privateKey);
}

const b64url = (b: Buffer | string) => Buffer.from(b).toString('base64url');

/** A JWKS endpoint whose behaviour a test switches: serve, down (500), slow, garbage. */
async function jwksServer(t: { teardown(fn: () => void): void }) {
  const state = { mode: 'serve' as 'serve' | 'down' | 'slow' | 'garbage', keys: [jwk] as object[], hits: 0 };
  const server = http.createServer((_req, res): void => {
    state.hits++;
    if (state.mode === 'down') return void res.writeHead(500).end('oops');
    if (state.mode === 'garbage') return void res.writeHead(200, { 'content-type': 'application/json' }).end('{"keys": nope');
    if (state.mode === 'slow') return void setTimeout(() => res.writeHead(200).end(JSON.stringify({ keys: state.keys })), 3000);
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: state.keys }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => {
    server.closeAllConnections();
    server.close();
  });
  return { state, url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/jwks.json` };
}

async function jwtBroker(t: { teardown(fn: () => void): void }, provider: Record<string, unknown>) {
  const tb = await startBroker({
    listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'jwt', algorithms: ['RS256'], issuer: ISS, audience: AUD, clockSkewSeconds: 5, ...provider }] }],
    authGuard: { enabled: false },
  });
  t.teardown(() => tb.stop());
  return tb;
}

function staticKeyFile(t: { teardown(fn: () => void): void }): string {
  const file = path.join(tempDir(t), 'idp.pem');
  fs.writeFileSync(file, publicPem);
  return file;
}

const causeOf = (tb: Awaited<ReturnType<typeof jwtBroker>>, clientId: string) =>
  tb.audit.records.find((r) => r.event === 'connect' && r.clientId === clientId)?.verdicts?.find((v) => v.provider === 'jwt')?.detail ?? '';

test('a valid token (static PEM key) connects with claims mapped; bad tokens are refused 0x86 with the cause audited', async (t) => {
  const tb = await jwtBroker(t, { keyFiles: [staticKeyFile(t)] });
  const good = await connect(tb.port, { protocolVersion: 5, clientId: 'svc-a-1', username: 'svc-a', password: await mint() });
  good.end(true);
  const allow = tb.audit.records.find((r) => r.event === 'connect' && r.clientId === 'svc-a-1');
  t.is(allow?.decision, 'allow');
  t.is(allow?.username, 'svc-a');
  t.is(allow?.authMethod, 'jwt');

  const header = (h: object) => b64url(JSON.stringify(h));
  const body = b64url(JSON.stringify({ sub: 'svc-a', iss: ISS, aud: AUD, exp: Math.floor(Date.now() / 1000) + 600 }));
  const hsWithPublicKey = `${header({ alg: 'HS256' })}.${body}`;
  const cases: [string, string | Buffer, RegExp][] = [
    ['alg-none', `${header({ alg: 'none' })}.${body}.`, /ERR_JOSE_ALG_NOT_ALLOWED|ERR_JWS_INVALID/],
    ['hs-confusion', `${hsWithPublicKey}.${createHmac('sha256', publicPem).update(hsWithPublicKey).digest('base64url')}`, /ERR_JOSE_ALG_NOT_ALLOWED/],
    ['wrong-key', await mint({}, { key: other.privateKey }), /ERR_JWS_SIGNATURE_VERIFICATION_FAILED/],
    ['expired', await mint({}, { exp: Math.floor(Date.now() / 1000) - 120 }), /ERR_JWT_EXPIRED/],
    ['not-yet', await mint({}, { nbf: Math.floor(Date.now() / 1000) + 120 }), /ERR_JWT_CLAIM_VALIDATION_FAILED: claim 'nbf'/],
    ['wrong-iss', await mint({}, { iss: 'https://evil.test' }), /claim 'iss'/],
    ['wrong-aud', await mint({}, { aud: 'other' }), /claim 'aud'/],
    ['not-a-jwt', 'hunter2', /not a JWT/],
    ['user-mismatch', await mint({ sub: 'svc-b' }), /does not match claim 'sub'/],
  ];
  for (const [id, token, cause] of cases) {
    const r = await refusalCode(tb.port, { protocolVersion: 5, clientId: id, username: 'svc-a', password: Buffer.from(token) });
    t.is(r.code, 0x86, id);
    t.regex(causeOf(tb, id), cause, id);
  }
  // v3.1.1 and mosquitto_pub see return code 4 / a failed connect.
  t.is((await refusalCode(tb.port, { protocolVersion: 4, clientId: 'v3', username: 'svc-a', password: 'not.a.jwt' })).code, 4);
  const pub = await mosquittoPub(['-h', '127.0.0.1', '-p', String(tb.port), '-u', 'svc-a', '-P', await mint(), '-i', 'mp-1', '-t', 'svc/a/x', '-m', 'hi']);
  t.is(pub.code, 0, pub.stderr);
  t.false(JSON.stringify(tb.audit.records).includes('eyJ'), 'no token in the audit log');
});

test('JWKS: keys fetched from the URL; unknown kid refetches (rate-limited); down, slow and garbage endpoints keep the last good set', async (t) => {
  const idp = await jwksServer(t);
  const tb = await jwtBroker(t, { jwks: { url: idp.url, timeoutMs: 300, cooldownMs: 0 } });
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'k1', username: 'svc-a', password: await mint({}, { kid: 'k1' }) })).code, 0);
  // Unknown kid: one refetch, still unknown → refused 0x86.
  const before = idp.state.hits;
  const r = await refusalCode(tb.port, { protocolVersion: 5, clientId: 'k9', username: 'svc-a', password: await mint({}, { kid: 'k9', key: other.privateKey }) });
  t.is(r.code, 0x86);
  t.regex(causeOf(tb, 'k9'), /ERR_JWKS_NO_MATCHING_KEY/);
  t.is(idp.state.hits, before + 1);
  // Key rotation: the new kid appears at the endpoint and is picked up on first use.
  idp.state.keys = [jwk, { ...(await exportJWK(other.publicKey)), kid: 'k2', alg: 'RS256' }];
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'k2', username: 'svc-a', password: await mint({}, { kid: 'k2', key: other.privateKey }) })).code, 0);
  for (const mode of ['down', 'slow', 'garbage'] as const) {
    idp.state.mode = mode;
    const started = Date.now();
    const unknown = await refusalCode(tb.port, { protocolVersion: 5, clientId: `u-${mode}`, username: 'svc-a', password: await mint({}, { kid: `new-${mode}` }) });
    t.is(unknown.code, 0x86, mode);
    t.true(Date.now() - started < 2500, `${mode}: bounded by the fetch deadline`);
    // The last good key set still verifies known keys.
    t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: `g-${mode}`, username: 'svc-a', password: await mint({}, { kid: 'k1' }) })).code, 0, mode);
  }
  const failures = tb.audit.records.filter((x) => x.event === 'reload' && x.action === 'jwks' && x.decision === 'deny').map((x) => x.reason);
  t.true(failures.some((f) => f?.includes('HTTP 500')));
  t.true(failures.some((f) => f?.includes('no answer within 300 ms')));
  t.true(failures.some((f) => f?.includes('not JSON')));
});

test('JWKS never reachable and no static key: refused 0x88 server unavailable, within the deadline', async (t) => {
  const idp = await jwksServer(t);
  idp.state.mode = 'down';
  const tb = await jwtBroker(t, { jwks: { url: idp.url, timeoutMs: 300 } });
  const r = await refusalCode(tb.port, { protocolVersion: 5, clientId: 'x', username: 'svc-a', password: await mint({}, { kid: 'k1' }) });
  t.is(r.code, 0x88);
  t.regex(causeOf(tb, 'x'), /ERR_PORTCULLIS_JWKS_UNAVAILABLE/);
});

test('exp passes: v5 clients get DISCONNECT 0xA0, v3.1.1 clients a plain close', async (t) => {
  const tb = await jwtBroker(t, { keyFiles: [staticKeyFile(t)], clockSkewSeconds: 0 });
  const exp = Math.floor(Date.now() / 1000) + 2;
  const v5 = await connect(tb.port, { protocolVersion: 5, clientId: 'e5', username: 'svc-a', password: await mint({}, { exp }) });
  const v3 = await connect(tb.port, { protocolVersion: 4, clientId: 'e3', username: 'svc-a', password: await mint({}, { exp }) });
  const gotDisconnect = new Promise<number | undefined>((r) => v5.once('disconnect', (p) => r(p.reasonCode)));
  const v3closed = new Promise<boolean>((r) => v3.once('close', () => r(true)));
  t.is(await gotDisconnect, 0xa0);
  t.true(await v3closed);
  t.true(Date.now() >= exp * 1000 - 50);
  t.is(tb.audit.records.filter((r) => r.event === 'disconnect' && r.action === 'credentials-expired').length, 2);
});

/** A raw v5 client speaking enhanced authentication (mqtt.js cannot send AUTH itself). */
async function rawV5(port: number) {
  const socket = net.connect(port, '127.0.0.1');
  await new Promise((r) => socket.once('connect', r));
  const parser = mqttPacket.parser({ protocolVersion: 5 });
  const packets: mqttPacket.Packet[] = [];
  parser.on('packet', (p) => packets.push(p));
  socket.on('data', (d) => parser.parse(d));
  let closed = false;
  socket.on('close', () => (closed = true));
  socket.on('error', () => {});
  const next = async (cmd: string, ms = 3000) => {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      const i = packets.findIndex((p) => p.cmd === cmd);
      if (i >= 0) return packets.splice(i, 1)[0];
      if (closed) break;
      await delay(10);
    }
    return undefined;
  };
  return { socket, next, send: (p: mqttPacket.Packet) => socket.write(mqttPacket.generate(p, { protocolVersion: 5 })), closed: () => closed };
}

test('MQTT 5 enhanced authentication: CONNECT with method JWT, AUTH 0x19 re-authentication extends the session; a bad token disconnects', async (t) => {
  const tb = await jwtBroker(t, { keyFiles: [staticKeyFile(t)], clockSkewSeconds: 0 });
  const c = await rawV5(tb.port);
  t.teardown(() => c.socket.destroy());
  const exp1 = Math.floor(Date.now() / 1000) + 2;
  c.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clientId: 'ea-1', clean: true, keepalive: 60, properties: { authenticationMethod: 'JWT', authenticationData: Buffer.from(await mint({}, { exp: exp1 })) } } as mqttPacket.IConnectPacket);
  const connack = (await c.next('connack')) as mqttPacket.IConnackPacket;
  t.is(connack.reasonCode, 0);
  t.is(connack.properties?.authenticationMethod, 'JWT');
  c.send({ cmd: 'auth', reasonCode: 0x19, properties: { authenticationMethod: 'JWT', authenticationData: Buffer.from(await mint({}, { exp: '1h' })) } } as mqttPacket.IAuthPacket);
  const ok = (await c.next('auth')) as mqttPacket.IAuthPacket;
  t.is(ok.reasonCode, 0);
  await delay(Math.max(0, exp1 * 1000 - Date.now()) + 700);
  t.false(c.closed(), 'the fresh token moved the expiry: still connected after the first exp');
  t.truthy(tb.audit.records.find((r) => r.event === 'connect' && r.action === 'reauthenticate' && r.decision === 'allow'));
  // A bad token on re-authentication disconnects with 0x87.
  c.send({ cmd: 'auth', reasonCode: 0x19, properties: { authenticationMethod: 'JWT', authenticationData: Buffer.from(await mint({}, { key: other.privateKey })) } } as mqttPacket.IAuthPacket);
  const d = (await c.next('disconnect')) as mqttPacket.IDisconnectPacket;
  t.is(d?.reasonCode, 0x87);
  const rec = tb.audit.records.find((r) => r.event === 'disconnect' && r.action === 'reauthenticate');
  t.is(rec?.decidedBy, 'jwt');
  t.regex(rec?.reason ?? '', /ERR_JWS_SIGNATURE_VERIFICATION_FAILED/);

  // Another identity's token is refused too; an unknown method is refused 0x8C at CONNECT.
  const c2 = await rawV5(tb.port);
  t.teardown(() => c2.socket.destroy());
  c2.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clientId: 'ea-2', clean: true, keepalive: 60, properties: { authenticationMethod: 'SCRAM-SHA-1', authenticationData: Buffer.from('x') } } as mqttPacket.IConnectPacket);
  t.is(((await c2.next('connack')) as mqttPacket.IConnackPacket).reasonCode, 0x8c);
  const c3 = await rawV5(tb.port);
  t.teardown(() => c3.socket.destroy());
  c3.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clientId: 'ea-3', clean: true, keepalive: 60, properties: { authenticationMethod: 'JWT', authenticationData: Buffer.from(await mint()) } } as mqttPacket.IConnectPacket);
  t.is(((await c3.next('connack')) as mqttPacket.IConnackPacket).reasonCode, 0);
  c3.send({ cmd: 'auth', reasonCode: 0x19, properties: { authenticationMethod: 'JWT', authenticationData: Buffer.from(await mint({ sub: 'svc-b' })) } } as mqttPacket.IAuthPacket);
  t.is(((await c3.next('disconnect')) as mqttPacket.IDisconnectPacket)?.reasonCode, 0x87);
});

test('jwt configuration errors name the key: http JWKS to a non-loopback host, alg none, missing audience, unreadable key file', async (t) => {
  const { createBroker, ConfigError } = await import('../src/index.ts');
  const base = { provider: 'jwt', algorithms: ['RS256'], issuer: ISS, audience: AUD };
  const bad: [Record<string, unknown>, string][] = [
    [{ ...base, jwks: { url: 'http://idp.example/jwks' } }, 'listeners[0].auth[0].jwks.url'],
    [{ ...base, algorithms: ['none'], keyFiles: ['x'] }, 'listeners[0].auth[0].algorithms[0]'],
    [{ provider: 'jwt', algorithms: ['RS256'], issuer: ISS, keyFiles: ['x'] }, 'listeners[0].auth[0].audience'],
    [{ ...base, keyFiles: ['/nonexistent/key.pem'] }, 'listeners[0].auth[0].keyFiles[0]'],
  ];
  for (const [p, key] of bad) {
    const err = t.throws(() => createBroker({ listeners: [{ type: 'tcp', port: 0, auth: [p as never] }] }), { instanceOf: ConfigError });
    t.true(err.message.includes(key), err.message);
  }
});

test('JWKS refetch on unknown kid is rate-limited by cooldownMs', async (t) => {
  const idp = await jwksServer(t);
  const tb = await jwtBroker(t, { jwks: { url: idp.url, timeoutMs: 5000, cooldownMs: 60_000 } });
  const afterStart = idp.state.hits;
  for (const kid of ['n1', 'n2', 'n3']) {
    t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: kid, username: 'svc-a', password: await mint({}, { kid }) })).code, 0x86);
  }
  t.is(idp.state.hits, afterStart, 'the start fetch was under a minute ago: unknown kids cause no fetch storm');
});

test('verified-token cache over sockets: repeat connects with a cached token pass, yet exp, client id binding and key rotation still apply', async (t) => {
  const idp = await jwksServer(t);
  const tb = await jwtBroker(t, { jwks: { url: idp.url, cooldownMs: 0 }, clockSkewSeconds: 0, claims: { clientId: 'cid' }, cache: { enabled: true } });
  const exp = Math.floor(Date.now() / 1000) + 3;
  const token = await mint({ cid: 'cache-1' }, { kid: 'k1', exp });
  for (let i = 0; i < 3; i++) {
    const c = await connect(tb.port, { protocolVersion: 5, clientId: 'cache-1', username: 'svc-a', password: token });
    c.end(true);
  }
  t.is(tb.audit.records.filter((r) => r.event === 'connect' && r.decision === 'allow' && r.clientId === 'cache-1').length, 3);
  // The cached token is not a pass for another client id: the claim check runs on every connect.
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'cache-2', username: 'svc-a', password: token })).code, 0x85);
  // Nor for a different MQTT user name.
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'cache-1', username: 'svc-b', password: token })).code, 0x86);

  // Key rotation: the IdP drops k1. A token with an unknown kid makes the broker fetch the new set,
  // and the cached k1 token is verified again, and refused.
  const k2 = await generateKeyPair('RS256', { extractable: true });
  idp.state.keys = [{ ...(await exportJWK(k2.publicKey)), kid: 'k2', alg: 'RS256', use: 'sig' }];
  const fresh = await mint({ cid: 'rotated' }, { kid: 'k2', key: k2.privateKey });
  const c2 = await connect(tb.port, { protocolVersion: 5, clientId: 'rotated', username: 'svc-a', password: fresh });
  c2.end(true);
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'cache-1', username: 'svc-a', password: token })).code, 0x86, 'a cached token whose key left the set is refused');
  t.regex(causeOf(tb, 'cache-1') + JSON.stringify(tb.audit.records.filter((r) => r.clientId === 'cache-1' && r.decision === 'deny').map((r) => r.verdicts)), /ERR_JWKS_NO_MATCHING_KEY/);

  // Expiry: the fresh token is cached; once its exp passes it is refused although it is cached.
  const short = await mint({ cid: 'short' }, { kid: 'k2', key: k2.privateKey, exp: Math.floor(Date.now() / 1000) + 2 });
  const c3 = await connect(tb.port, { protocolVersion: 5, clientId: 'short', username: 'svc-a', password: short });
  c3.end(true);
  await delay(2600);
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'short', username: 'svc-a', password: short })).code, 0x86);
  const denied = tb.audit.records.filter((r) => r.event === 'connect' && r.clientId === 'short' && r.decision === 'deny');
  t.regex(JSON.stringify(denied.map((r) => r.verdicts)), /ERR_JWT_EXPIRED/);
});

test('verified-token cache: hits are counted and the bound holds; off by default: every connect is verified', async (t) => {
  const { JwtAuthenticator } = await import('../src/auth/jwt/provider.ts');
  const { parseConfig } = await import('../src/config/schema.ts');
  const dir = tempDir(t);
  fs.writeFileSync(path.join(dir, 'k.pem'), publicPem);
  const make = (cache: object) =>
    new JwtAuthenticator(
      parseConfig({ listeners: [{ type: 'tcp', auth: [{ provider: 'jwt', algorithms: ['RS256'], issuer: ISS, audience: AUD, keyFiles: [path.join(dir, 'k.pem')], cache }] }] }).listeners[0]!.auth[0] as never,
    );
  const req = (token: string) => ({ clientId: 'c', username: 'svc-a', password: Buffer.from(token), protocolVersion: 5 as const, peer: { listener: 'l', transport: 'tcp' as const, remoteAddress: '127.0.0.1', remotePort: 1 } });
  const on = make({ enabled: true, maxEntries: 2 });
  const tokens = [await mint({ n: 1 }), await mint({ n: 2 }), await mint({ n: 3 })];
  t.is((await on.authenticate(req(tokens[0]!))).kind, 'allow');
  t.is((await on.authenticate(req(tokens[0]!))).kind, 'allow');
  t.is(on.cacheHits, 1);
  await on.authenticate(req(tokens[1]!));
  await on.authenticate(req(tokens[2]!)); // evicts tokens[0]
  await on.authenticate(req(tokens[0]!));
  t.is(on.cacheHits, 1, 'the oldest entry was evicted at maxEntries');
  await on.authenticate(req(tokens[2]!));
  t.is(on.cacheHits, 2);
  const off = make({});
  await off.authenticate(req(tokens[0]!));
  await off.authenticate(req(tokens[0]!));
  t.is(off.cacheHits, 0);
});
