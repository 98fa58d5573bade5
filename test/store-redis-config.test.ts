/**
 * `store: { type: redis }`: each refusal of the configuration names its setting; secrets come
 * from files that other users cannot read and never appear in messages; TLS verifies the server;
 * ACL users log in; Redis settings that do not keep acknowledged writes are reported.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { ConfigError, createBroker, parseConfig } from '../src/index.ts';
import { createStore } from '../src/store/factory.ts';
import type { StoreConfig } from '../src/config/store-schema.ts';
import { startRedis } from './redis-server.ts';
import { freshPrefix, redisStore } from './store-redis-support.ts';
import { pki } from './tls-fixtures.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-redis-config-'));
test.after.always(() => fs.rmSync(dir, { recursive: true, force: true }));

function secretFile(name: string, text: string, mode = 0o600): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, text, { mode });
  fs.chmodSync(file, mode);
  return file;
}

const refusals: [string, Record<string, unknown>, string, RegExp][] = [
  ['a url that is not redis:// or rediss://', { url: 'http://127.0.0.1:6379' }, 'store.url', /redis:\/\/ or rediss:\/\//],
  ['a url and sentinels', { url: 'redis://127.0.0.1', sentinels: [{ host: '127.0.0.1', port: 26379 }], name: 'm' }, 'store.sentinels', /one way to reach Redis/],
  ['sentinels without a master name', { sentinels: [{ host: '127.0.0.1', port: 26379 }] }, 'store.name', /master group name/],
  ['a master name without sentinels', { name: 'mymaster' }, 'store.name', /only with sentinels/],
  ['waitReplicas with a cluster', { nodes: [{ host: '127.0.0.1', port: 7000 }], waitReplicas: 1 }, 'store.waitReplicas', /not supported with a Redis Cluster/],
  ['a WAIT timeout not below the command timeout', { waitReplicas: 1, waitTimeoutMs: 3000, commandTimeoutMs: 3000 }, 'store.waitTimeoutMs', /below commandTimeoutMs/],
  ['usernameFile without passwordFile', { usernameFile: '/etc/u' }, 'store.passwordFile', /required with usernameFile/],
  ['a client certificate without its key', { url: 'rediss://127.0.0.1', tls: { cert: '/etc/c.pem' } }, 'store.tls.key', /together/],
  ['TLS settings with a plain redis:// url', { url: 'redis://127.0.0.1', tls: { ca: '/etc/ca.pem' } }, 'store.tls', /use rediss:\/\//],
  ['plain text to a Redis that is not on loopback', { url: 'redis://10.1.2.3:6379' }, 'store.url', /plain text to 10\.1\.2\.3.*allowPlainText/],
  ['plain text to remote cluster nodes', { nodes: [{ host: 'redis-1.internal', port: 6379 }] }, 'store.nodes', /plain text to redis-1\.internal/],
  ['a prefix with braces (it would change every hash slot)', { prefix: 'a{b}:' }, 'store.prefix', /no braces/],
  ['a bad instance name', { instance: 'has space' }, 'store.instance', /A-Z a-z 0-9/],
  ['a password in the url and a passwordFile', { url: 'redis://:pw@127.0.0.1', passwordFile: '/etc/p' }, 'store.url', /passwordFile only/],
  ['a url path that is not a database number', { url: 'redis://127.0.0.1/cache' }, 'store.url', /database number/],
  ['options in the url', { url: 'redis://127.0.0.1/0?tls=true' }, 'store.url', /options in the url are not read/],
  ['a command timeout out of range', { commandTimeoutMs: 10 }, 'store.commandTimeoutMs', /50/],
  ['an unknown setting', { pasword: 'x' }, 'store', /Unrecognized key/],
];

for (const [what, store, key, message] of refusals) {
  test(`refused: ${what} (${key})`, (t) => {
    const err = t.throws(() => parseConfig({ store: { type: 'redis', ...store } }), { instanceOf: ConfigError });
    const issue = (err as ConfigError).issues.find((i) => i.key === key);
    t.truthy(issue, `an issue names ${key}: ${err?.message}`);
    t.regex(issue?.message ?? '', message);
  });
}

test('accepted: plain text to a remote Redis when allowPlainText is set by name; TLS to a remote Redis', (t) => {
  t.notThrows(() => parseConfig({ store: { type: 'redis', url: 'redis://10.1.2.3:6379', allowPlainText: true } }));
  t.notThrows(() => parseConfig({ store: { type: 'redis', url: 'rediss://redis.internal:6380/2' } }));
  t.notThrows(() => parseConfig({ store: { type: 'redis', sentinels: [{ host: 's1', port: 26379 }], name: 'mymaster', tls: {} } }));
});

const build = (store: Record<string, unknown>) => createStore(parseConfig({ store: { type: 'redis', ...store } }).store as StoreConfig);

test('a passwordFile that cannot be read stops the start naming store.passwordFile (createBroker too)', (t) => {
  const err = t.throws(() => build({ passwordFile: path.join(dir, 'missing') }), { instanceOf: ConfigError });
  t.deepEqual(
    (err as ConfigError).issues.map((i) => i.key),
    ['store.passwordFile'],
  );
  const viaBroker = t.throws(() => createBroker({ listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }], store: { type: 'redis', passwordFile: path.join(dir, 'missing') } }), { instanceOf: ConfigError });
  t.is((viaBroker as ConfigError).issues[0]?.key, 'store.passwordFile');
});

test('a passwordFile other users can read is refused, naming its mode', (t) => {
  const file = secretFile('open-password', 'secret\n', 0o644);
  t.throws(() => build({ passwordFile: file }), { instanceOf: ConfigError, message: /store\.passwordFile: .*mode 644.*chmod 600/ });
});

test('a TLS CA file that cannot be read is refused, naming store.tls.ca', (t) => {
  t.throws(() => build({ url: 'rediss://127.0.0.1:6380', tls: { ca: path.join(dir, 'no-ca.pem') } }), { instanceOf: ConfigError, message: /store\.tls\.ca: cannot read/ });
});

test('a password in the url is refused at configuration time, naming store.url and never showing the password', (t) => {
  const err = t.throws(() => parseConfig({ store: { type: 'redis', url: 'redis://:url-secret-7@127.0.0.1:6379' } }), { instanceOf: ConfigError });
  t.regex(err?.message ?? '', /store\.url/);
  t.regex(err?.message ?? '', /must not hold a password/);
  t.false(err?.message.includes('url-secret-7'), err?.message);
});

test('an ACL user from usernameFile and passwordFile; a user that may not run CONFIG still opens, with a warning; wrong password: refused without the secret in the message', async (t) => {
  const server = await startRedis();
  t.teardown(() => server.dispose());
  await server.command('ACL', 'SETUSER', 'broker', 'on', '>acl-secret-1', '~*', '&*', '+@all', '-config');
  const store = redisStore(server, { usernameFile: secretFile('user', 'broker\n'), passwordFile: secretFile('pass', 'acl-secret-1\n') });
  const report = await store.open();
  t.teardown(() => store.close());
  t.true(report.warnings.some((w) => /cannot read the persistence settings/.test(w)), report.warnings.join('\n'));
  t.is(report.durability, 'unknown');
  await t.notThrowsAsync(store.saveSession({ clientId: 'c', owner: 'user:c', protocolVersion: 5, expiryInterval: 60, subscriptions: [], inflight: [], queue: [], awaitingRelease: [] }));
  const wrong = redisStore(server, { usernameFile: secretFile('user2', 'broker\n'), passwordFile: secretFile('pass2', 'not-the-secret-2\n'), connectTimeoutMs: 1000 });
  const err = await t.throwsAsync(wrong.open(), { code: 'ERR_STORE_UNAVAILABLE' });
  t.false(err?.message.includes('not-the-secret-2'));
});

test('the ACL user SECURITY.md recommends is enough for the store and its tools, and keeps KEYS and FLUSHALL refused', async (t) => {
  const server = await startRedis();
  t.teardown(() => server.dispose());
  const security = fs.readFileSync(new URL('../SECURITY.md', import.meta.url), 'utf8');
  const line = /^ACL SETUSER portcullis .*$/m.exec(security)?.[0];
  if (line === undefined) return t.fail('SECURITY.md has no ACL SETUSER line');
  await server.command(...line.replace('>PASSWORD', '>acl-secret-3').split(' '));
  const files = { usernameFile: secretFile('rec-user', 'portcullis\n'), passwordFile: secretFile('rec-pass', 'acl-secret-3\n') };
  const store = redisStore(server, { ...files, prefix: 'portcullis:' });
  const report = await store.open();
  t.deepEqual(report.warnings, [], 'CONFIG GET is allowed: the persistence settings are read');
  await store.saveSession({ clientId: 'c', owner: 'user:c', protocolVersion: 5, expiryInterval: 60, subscriptions: [], inflight: [], queue: [], awaitingRelease: [] });
  await store.putRetained({ topic: 'r', payload: Buffer.from('x'), qos: 0, retain: true });
  await store.close();
  const { checkRedisStore, redisStoreStats } = await import('../src/store/redis-tools.ts');
  const { redisConnection } = await import('../src/store/redis-config.ts');
  const { redisConfig } = await import('./store-redis-support.ts');
  const target = { connection: redisConnection(redisConfig(server, { ...files, prefix: 'portcullis:' })).connection, prefix: 'portcullis:' };
  t.true((await checkRedisStore(target)).ok);
  t.is((await redisStoreStats(target)).counts.sessions, 1);
  const { Redis } = await import('ioredis');
  const user = new Redis({ host: server.host, port: server.port, username: 'portcullis', password: 'acl-secret-3', lazyConnect: true });
  await user.connect();
  t.teardown(() => user.disconnect());
  await t.throwsAsync(user.keys('*'), { message: /NOPERM/ });
  await t.throwsAsync(user.flushall(), { message: /NOPERM/ });
  await t.throwsAsync(user.set('other-app:key', 'x'), { message: /NOPERM/ }, 'keys outside the prefix are out of reach');
});

test('a Redis without appendonly, with appendfsync no, or with an eviction policy: the open report warns that acknowledged writes could be lost', async (t) => {
  const server = await startRedis({ appendOnly: false });
  t.teardown(() => server.dispose());
  const store = redisStore(server);
  const report = await store.open();
  await store.close();
  t.regex(report.durability ?? '', /appendonly no/);
  t.true(report.warnings.some((w) => /appendonly no/.test(w) && /appendfsync always/.test(w)));
  await server.command('CONFIG', 'SET', 'appendonly', 'yes');
  await server.command('CONFIG', 'SET', 'appendfsync', 'no');
  const again = redisStore(server);
  const second = await again.open();
  await again.close();
  t.true(second.warnings.some((w) => /appendfsync no/.test(w)));
  await server.command('CONFIG', 'SET', 'maxmemory-policy', 'allkeys-lru');
  const third = redisStore(server);
  const evicting = await third.open();
  await third.close();
  t.true(evicting.warnings.some((w) => /maxmemory-policy allkeys-lru/.test(w) && /noeviction/.test(w)), 'an eviction policy would delete stored sessions');
});

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

test('rediss://: the server certificate is verified against store.tls.ca; an unknown CA or a wrong name is refused; a client certificate when Redis asks for one', async (t) => {
  const pkiDir = path.join(dir, 'pki');
  await pki(pkiDir, 'init', '--cn', 'Redis Test CA');
  await pki(pkiDir, 'server', '--dns', 'localhost', '--ip', '127.0.0.1');
  const tlsPort = await freePort();
  const server = await startRedis({
    args: ['--tls-port', String(tlsPort), '--tls-cert-file', path.join(pkiDir, 'server.crt'), '--tls-key-file', path.join(pkiDir, 'private', 'server.key'), '--tls-ca-cert-file', path.join(pkiDir, 'ca.crt'), '--tls-auth-clients', 'no'],
  });
  t.teardown(() => server.dispose());
  const ca = path.join(pkiDir, 'ca.crt');
  const good = redisStore(server, { url: `rediss://127.0.0.1:${tlsPort}`, tls: { ca } });
  const report = await good.open();
  t.regex(report.path ?? '', /^rediss:/);
  await good.saveSession({ clientId: 'tls', owner: 'user:tls', protocolVersion: 5, expiryInterval: 60, subscriptions: [], inflight: [], queue: [], awaitingRelease: [] });
  await good.close();

  const unknownCa = redisStore(server, { url: `rediss://127.0.0.1:${tlsPort}`, connectTimeoutMs: 2000 });
  await t.throwsAsync(unknownCa.open(), { code: 'ERR_STORE_UNAVAILABLE', message: /certificate/i });
  const wrongName = redisStore(server, { url: `rediss://127.0.0.1:${tlsPort}`, tls: { ca, servername: 'redis.example.org' }, connectTimeoutMs: 2000 });
  await t.throwsAsync(wrongName.open(), { code: 'ERR_STORE_UNAVAILABLE', message: /redis\.example\.org|altnames|hostname/i });
  // A Redis that asks for client certificates: the broker's from tls.cert and tls.key.
  await pki(pkiDir, 'client', '--cn', 'portcullis-broker');
  await server.command('CONFIG', 'SET', 'tls-auth-clients', 'yes');
  const noCert = redisStore(server, { url: `rediss://127.0.0.1:${tlsPort}`, tls: { ca }, connectTimeoutMs: 2000 });
  await t.throwsAsync(noCert.open(), { code: 'ERR_STORE_UNAVAILABLE' });
  const withCert = redisStore(server, { url: `rediss://127.0.0.1:${tlsPort}`, tls: { ca, cert: path.join(pkiDir, 'clients', 'portcullis-broker.crt'), key: path.join(pkiDir, 'clients', 'portcullis-broker.key') } });
  await withCert.open();
  await withCert.close();
  await server.command('CONFIG', 'SET', 'tls-auth-clients', 'no');
  const unchecked = redisStore(server, { url: `rediss://127.0.0.1:${tlsPort}`, tls: { verifyServer: false }, prefix: freshPrefix() });
  const loose = await unchecked.open();
  await unchecked.close();
  t.true(loose.warnings.some((w) => /verifyServer is false/.test(w)));
});
