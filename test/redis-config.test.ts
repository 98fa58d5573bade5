/**
 * One Redis connection shape for `store` (type redis) and `cluster.redis`, checked by one function:
 * the same bad combination is refused in both places naming the key; the same good one gives the
 * same connection in both; the older `cluster.redis` spellings still mean what they meant; a file
 * the bus cannot use stops the start naming its `cluster.redis.` key.
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { ConfigError, createBroker, MemoryAuditSink, parseConfig } from '../src/index.ts';
import { createLogger } from '../src/log.ts';
import { nodeConfig, tempDir, writeKeyFile } from './cluster-support.ts';

const inStore = (redis: Record<string, unknown>) => parseConfig({ store: { type: 'redis', ...redis } });
const inCluster = (redis: Record<string, unknown>) => parseConfig({ cluster: { redis, keyFile: 'cluster.keys' } });
const places = [
  { at: 'store', parse: inStore },
  { at: 'cluster.redis', parse: inCluster },
];

const s1 = { host: '127.0.0.1', port: 26379 };
const n1 = { host: '127.0.0.1', port: 7000 };

const refusals: [string, Record<string, unknown>, string, RegExp][] = [
  ['sentinels and nodes', { sentinels: [s1], name: 'm', nodes: [n1] }, 'nodes', /one way to reach Redis.*sentinels and nodes/],
  ['a url and a host', { url: 'redis://127.0.0.1:6379', host: '127.0.0.1' }, 'host', /one way to reach Redis/],
  ['sentinels without a master name', { sentinels: [s1] }, 'name', /master group name/],
  ['a master name without sentinels', { url: 'redis://127.0.0.1', name: 'mymaster' }, 'name', /only with sentinels/],
  ['a password in the url', { url: 'redis://:hunter2@127.0.0.1:6379' }, 'url', /must not hold a password.*passwordFile/],
  ['a sentinel password without sentinels', { url: 'redis://127.0.0.1', sentinelPasswordFile: '/etc/p' }, 'sentinelPasswordFile', /only with sentinels/],
  ['a sentinel user without a sentinel password', { sentinels: [s1], name: 'm', sentinelUsernameFile: '/etc/u' }, 'sentinelPasswordFile', /required with sentinelUsernameFile/],
  ['a user without a password', { url: 'redis://127.0.0.1', usernameFile: '/etc/u' }, 'passwordFile', /required with usernameFile/],
  ['a port without a host', { url: 'redis://127.0.0.1', port: 6380 }, 'port', /written in it/],
  ['TLS settings with a plain redis:// url', { url: 'redis://127.0.0.1', tls: true }, 'tls', /use rediss:\/\//],
  ['tls: false with rediss://', { url: 'rediss://127.0.0.1', tls: false }, 'tls', /use redis:\/\/ for plain text/],
  ['a client certificate without its key', { host: '127.0.0.1', tls: { cert: '/etc/c.pem' } }, 'tls.key', /together/],
  ['an old and a new spelling of one TLS file', { host: '127.0.0.1', tls: { ca: '/a.pem', caFile: '/b.pem' } }, 'tls.caFile', /keep tls\.ca only/],
  ['the older sentinel block with sentinels', { sentinel: { sentinels: ['127.0.0.1:26379'], name: 'm' }, sentinels: [s1], name: 'm' }, 'sentinel', /give only sentinels, name and sentinelPasswordFile/],
  ['an endpoint that is not host:port', { nodes: ['127.0.0.1'] }, 'nodes[0]', /host:port/],
  ['plain text to remote sentinels', { sentinels: [{ host: 'sentinel-1.internal', port: 26379 }], name: 'm' }, 'sentinels', /plain text to sentinel-1\.internal.*needs TLS.*allowPlainText/],
  ['plain text to a remote host', { host: '10.0.0.5' }, 'host', /plain text to 10\.0\.0\.5/],
];

for (const [what, redis, key, message] of refusals) {
  for (const { at, parse } of places) {
    test(`refused in ${at}: ${what} (${at}.${key})`, (t) => {
      const err = t.throws(() => parse(redis), { instanceOf: ConfigError });
      const issue = (err as ConfigError).issues.find((i) => i.key === `${at}.${key}`);
      t.truthy(issue, `an issue names ${at}.${key}: ${err?.message}`);
      t.regex(issue?.message ?? '', message);
      t.false(err?.message.includes('hunter2') ?? false, 'the message never repeats a password');
    });
  }
}

test('cluster.redis needs a way to reach Redis; the store without one is redis://127.0.0.1:6379', (t) => {
  const err = t.throws(() => inCluster({}), { instanceOf: ConfigError });
  t.regex((err as ConfigError).issues.find((i) => i.key === 'cluster.redis')?.message ?? '', /give one way to reach Redis/);
  t.notThrows(() => inStore({}));
});

test('one connection gives the same settings in both places', (t) => {
  const connections = [
    { url: 'rediss://redis.internal:6380/2', usernameFile: '/etc/u', passwordFile: '/etc/p', tls: { ca: '/etc/ca.pem' } },
    { host: '::1', port: 6390, db: 3 },
    { sentinels: [{ host: 's1.internal', port: 26379 }, 's2.internal:26380'], name: 'mymaster', sentinelUsernameFile: '/etc/su', sentinelPasswordFile: '/etc/sp', passwordFile: '/etc/p', tls: true },
    { nodes: ['10.0.0.7:7000', { host: '10.0.0.8', port: 7001 }], tls: { servername: 'redis.internal', minVersion: 'TLSv1.3' } },
  ];
  const keys = ['url', 'host', 'port', 'db', 'sentinels', 'name', 'sentinelUsernameFile', 'sentinelPasswordFile', 'nodes', 'usernameFile', 'passwordFile', 'tls', 'allowPlainText', 'connectTimeoutMs'];
  const pick = (o: object) => Object.fromEntries(Object.entries(o).filter(([k]) => keys.includes(k)));
  for (const redis of connections) {
    const store = pick(inStore({ ...redis }).store);
    const bus = pick((inCluster({ ...redis }).cluster as object as { redis: object }).redis);
    t.deepEqual(store, bus, JSON.stringify(redis));
  }
  const sentinel = (inCluster(connections[2] as Record<string, unknown>).cluster as { redis: { sentinels?: unknown; tls?: unknown } }).redis;
  t.deepEqual(sentinel.sentinels, [
    { host: 's1.internal', port: 26379 },
    { host: 's2.internal', port: 26380 },
  ]);
  t.deepEqual(sentinel.tls, { minVersion: 'TLSv1.2', verifyServer: true }, 'tls: true is TLS with the defaults');
});

test('the older cluster.redis spellings mean what they meant: the sentinel block, host:port strings, tls.caFile/certFile/keyFile', (t) => {
  const old = (inCluster({ sentinel: { sentinels: ['sentinel-1:26379', '[::1]:26380'], name: 'mymaster', passwordFile: '/etc/sp' }, tls: { caFile: '/etc/ca.pem', certFile: '/etc/c.pem', keyFile: '/etc/k.pem' } }).cluster as { redis: object }).redis;
  const now = (inCluster({ sentinels: [{ host: 'sentinel-1', port: 26379 }, { host: '::1', port: 26380 }], name: 'mymaster', sentinelPasswordFile: '/etc/sp', tls: { ca: '/etc/ca.pem', cert: '/etc/c.pem', key: '/etc/k.pem' } }).cluster as { redis: object }).redis;
  t.deepEqual(old, now);
});

test('a cluster.redis passwordFile other users can read, or a TLS CA that cannot be read, stops createBroker naming its key', (t) => {
  const dir = tempDir('portcullis-redis-config-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const keyFile = writeKeyFile(dir);
  const open = path.join(dir, 'redis.password');
  fs.writeFileSync(open, 'secret-8\n', { mode: 0o644 });
  fs.chmodSync(open, 0o644);
  const build = (redis: Record<string, unknown>) => () => createBroker(nodeConfig({ redisUrl: 'unused', keyFile, nodeId: 'a', extra: { redis } }), { logger: createLogger('silent'), audit: new MemoryAuditSink() });
  const err = t.throws(build({ url: 'redis://127.0.0.1:6379', passwordFile: open }), { instanceOf: ConfigError });
  t.deepEqual((err as ConfigError).issues.map((i) => i.key), ['cluster.redis.passwordFile']);
  t.regex(err?.message ?? '', /mode 644.*chmod 600/);
  t.false(err?.message.includes('secret-8'));
  const noCa = t.throws(build({ url: 'rediss://127.0.0.1:6379', tls: { ca: path.join(dir, 'missing-ca.pem') } }), { instanceOf: ConfigError });
  t.deepEqual((noCa as ConfigError).issues.map((i) => i.key), ['cluster.redis.tls.ca']);
});
