/**
 * The cluster's configuration: secure defaults that hold before any node starts.
 *
 * - Redis off loopback without TLS is refused unless allowPlainText says so (every message,
 *   session and the Redis password would cross the network readable).
 * - The default node id is the same at every start on one host: a node with its own store takes
 *   back its earlier runs' sessions only under the same id.
 */
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import test from 'ava';
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
