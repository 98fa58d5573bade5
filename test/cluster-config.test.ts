/**
 * The cluster's configuration: secure defaults that hold before any node starts.
 *
 * - Redis off loopback without TLS is refused unless allowPlainText says so (every message,
 *   session and the Redis password would cross the network readable).
 * - The default node id is the same at every start on one host: a node with its own store takes
 *   back its earlier runs' sessions only under the same id.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { ClusterError } from '../src/cluster/errors.ts';
import { loadClusterKeys } from '../src/cluster/keys.ts';
import { ConfigError, parseConfig } from '../src/config/schema.ts';

const cluster = (redis: Record<string, unknown>) => ({ cluster: { redis, keyFile: 'cluster.keys' } });

test('Redis that is not on loopback needs TLS, or allowPlainText by name', (t) => {
  const refused = [{ url: 'redis://redis.internal:6379' }, { url: 'redis://10.0.0.5:6379/0' }, { sentinel: { sentinels: ['127.0.0.1:26379', 'sentinel-2:26379'], name: 'mymaster' } }, { nodes: ['10.0.0.7:7000'] }];
  for (const redis of refused) {
    const err = t.throws(() => parseConfig(cluster(redis)), { instanceOf: ConfigError }, JSON.stringify(redis));
    t.regex(err?.message ?? '', /needs TLS/);
  }
  const accepted = [
    { url: 'rediss://redis.internal:6379' },
    { url: 'rediss://redis.internal:6379', tls: true },
    { url: 'redis://redis.internal:6379', allowPlainText: true },
    { url: 'redis://127.0.0.1:6379' },
    { url: 'redis://localhost:6379' },
    { url: 'redis://[::1]:6379' },
    { sentinel: { sentinels: ['sentinel-1:26379'], name: 'mymaster' }, tls: { caFile: 'ca.crt' } },
    { nodes: ['127.0.0.1:7000', '127.0.0.2:7001'] },
  ];
  for (const redis of accepted) t.notThrows(() => parseConfig(cluster(redis)), JSON.stringify(redis));
});

test('the default node id is the host name: the same in two processes, so a restarted node is the same node', (t) => {
  const code = "import { parseConfig } from './src/config/schema.ts'; process.stdout.write(parseConfig({ cluster: { redis: { url: 'redis://127.0.0.1:6379' }, keyFile: 'k' } }).cluster.nodeId);";
  const run = () => execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { encoding: 'utf8' });
  const first = run();
  t.is(run(), first);
  t.is(first, os.hostname().replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 60));
});

test('the cluster key file: one others can read, a short key, a repeated id, a bad line or no key at all is refused with ERR_CLUSTER_KEY naming the file and line', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-cluster-keys-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'cluster.keys');
  const good = `k1 ${Buffer.alloc(48, 7).toString('base64')}\n`;
  fs.writeFileSync(file, good, { mode: 0o600 });
  t.deepEqual(loadClusterKeys(file).map((k) => [k.id, k.key.length]), [['k1', 48]], 'an HMAC key may be longer than 32 bytes');
  fs.chmodSync(file, 0o640);
  t.throws(() => loadClusterKeys(file), { instanceOf: ClusterError, message: /can be read or written by other users.*chmod 600/ });
  fs.chmodSync(file, 0o600);
  const cases: [string, RegExp][] = [
    [`k1 ${Buffer.alloc(16, 1).toString('base64')}\n`, /cluster\.keys:1: the key must be at least 32 random bytes/],
    [`${good}# a comment\nk1 ${Buffer.alloc(32, 2).toString('base64')}\n`, /cluster\.keys:3: key id 'k1' appears twice/],
    ['just-one-word\n', /cluster\.keys:1: expected '<key id> <base64 key>'/],
    [`bad/id ${Buffer.alloc(32, 1).toString('base64')}\n`, /cluster\.keys:1: a key id is 1 to 64/],
    ['# nothing but a comment\n', /holds no key/],
  ];
  for (const [text, message] of cases) {
    fs.writeFileSync(file, text);
    const err = t.throws(() => loadClusterKeys(file), { instanceOf: ClusterError, message }, text);
    t.is((err as ClusterError | undefined)?.code, 'ERR_CLUSTER_KEY');
  }
  t.throws(() => loadClusterKeys(path.join(dir, 'missing')), { instanceOf: ClusterError, message: /cannot read the cluster key file .*ENOENT/ });
});
