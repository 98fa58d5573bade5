/** Every authentication provider runs the shared conformance suite. */
import fs from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { exportSPKI, generateKeyPair, SignJWT } from 'jose';
import { AnonymousAuthenticator } from '../src/auth/anonymous.ts';
import { JwtAuthenticator } from '../src/auth/jwt/provider.ts';
import { ModuleAuthenticator } from '../src/auth/module.ts';
import { PasswordAuthenticator } from '../src/auth/password/provider.ts';
import { StaticUsersAuthenticator } from '../src/auth/static-users.ts';
import { parseConfig } from '../src/config/schema.ts';
import { authenticatorConformance, peer } from './authenticator-conformance.ts';
import { passwd, root } from './auth-support.ts';

const req = (username: string | undefined, password: string | undefined) => ({
  clientId: 'conf-1',
  ...(username !== undefined ? { username } : {}),
  ...(password !== undefined ? { password: Buffer.from(password) } : {}),
  protocolVersion: 5 as const,
  peer,
});

const providerConfig = (p: unknown) => parseConfig({ listeners: [{ type: 'tcp', auth: [p as never] }] }).listeners[0]!.auth[0] as never;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-conf-'));
const once = <T>(fn: () => Promise<T>) => {
  let p: Promise<T> | undefined;
  return () => (p ??= fn());
};

authenticatorConformance(test, 'anonymous', { setup: async () => ({ auth: new AnonymousAuthenticator(), good: req(undefined, undefined), bad: req('x', 'y') }), allowsEveryone: true });

authenticatorConformance(test, 'static-users', {
  setup: async () => ({ auth: new StaticUsersAuthenticator([{ username: 'alice', password: 'alice-pw' }]), good: req('alice', 'alice-pw'), bad: req('alice', 'wrong') }),
  secret: 'alice-pw',
});

const pwFile = once(async () => {
  const file = path.join(dir, 'passwords');
  const r = passwd(['add', file, 'alice'], 'alice-secret\n');
  if (r.code !== 0) throw new Error(r.err);
  return file;
});
authenticatorConformance(test, 'password', {
  setup: async () => {
    const p = new PasswordAuthenticator(providerConfig({ provider: 'password', file: await pwFile(), watch: false }));
    await p.init();
    return { auth: p, good: req('alice', 'alice-secret'), bad: req('alice', 'wrong') };
  },
  secret: 'alice-secret',
});

const jwtMaterial = once(async () => {
  const { publicKey, privateKey } = await generateKeyPair('ES256', { extractable: true });
  const pem = path.join(dir, 'es.pem');
  fs.writeFileSync(pem, await exportSPKI(publicKey));
  const token = await new SignJWT({ sub: 'svc' }).setProtectedHeader({ alg: 'ES256' }).setIssuer('iss').setAudience('aud').setExpirationTime('1h').sign(privateKey);
  return { pem, token };
});
authenticatorConformance(test, 'jwt', {
  setup: async () => {
    const { pem, token } = await jwtMaterial();
    const j = new JwtAuthenticator(providerConfig({ provider: 'jwt', algorithms: ['ES256'], issuer: 'iss', audience: 'aud', keyFiles: [pem] }));
    await j.init();
    return { auth: j, good: req('svc', token), bad: req('svc', `${token.slice(0, -6)}AAAAAA`) };
  },
});

const service = once(async () => {
  const server = http.createServer((r, res) => {
    let body = '';
    r.on('data', (d: Buffer) => (body += d.toString()));
    r.on('end', () => {
      const { username, password } = JSON.parse(body) as { username: string; password: string };
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ ok: username === 'alice' && password === 'svc-pw', roles: ['r1'] }));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/check` };
});
authenticatorConformance(test, 'module (docs/examples/http-auth-provider.mjs)', {
  setup: async () => {
    const m = new ModuleAuthenticator(path.join(root, 'docs/examples/http-auth-provider.mjs'), { url: (await service()).url });
    await m.init();
    return { auth: m, good: req('alice', 'svc-pw'), bad: req('alice', 'nope') };
  },
  secret: 'svc-pw',
});

test('a module that exports no factory, or does not exist, is refused naming the module', async (t) => {
  const bad = path.join(dir, 'bad.mjs');
  fs.writeFileSync(bad, 'export const x = 1;\n');
  await t.throwsAsync(new ModuleAuthenticator(bad).init(), { message: /must export a factory function/ });
  await t.throwsAsync(new ModuleAuthenticator(path.join(dir, 'nope.mjs')).init(), { message: /cannot load authentication module/ });
  const m = new ModuleAuthenticator(bad);
  const d = await m.authenticate(req('a', 'b'), new AbortController().signal);
  t.is(d.kind, 'deny', 'not loaded: deny');
});

test.after.always(async () => {
  (await service()).server.close();
  fs.rmSync(dir, { recursive: true, force: true });
});
