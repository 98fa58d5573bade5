/**
 * Store faults on real broker processes (docs/persistence.md): a second broker on the same store,
 * a truncated data file, and authorization after a restart (restored subscriptions are checked
 * against the policy in force when the broker comes back, before anything is delivered).
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { delay, startBrokerProcess, tempDir } from './interop/broker-process.ts';

const root = fileURLToPath(new URL('..', import.meta.url));

const config = (extra: Record<string, unknown> = {}) => ({
  listeners: [{ name: 'tcp', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }],
  authorizers: ['allow-all'],
  store: { type: 'lmdb', path: 'store' },
  audit: { sink: 'file', path: 'audit.jsonl', fsyncIntervalMs: 0 },
  sys: { intervalSeconds: 0 },
  ...extra,
});

function client(port: number, options: IClientOptions, onMessage?: (topic: string, payload: Buffer) => void): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect({ host: '127.0.0.1', port, reconnectPeriod: 0, connectTimeout: 5000, protocolVersion: 5, ...options });
    if (onMessage) c.on('message', onMessage);
    c.once('connect', () => resolve(c));
    c.once('error', (err) => {
      c.end(true);
      reject(err);
    });
  });
}

test('a second broker on the same store refuses to start, naming the process that holds it; the first keeps serving', async (t) => {
  const dir = tempDir('portcullis-faults-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const first = await startBrokerProcess({ config: config(), cwd: dir });
  t.teardown(() => first.stop());
  const error = await t.throwsAsync(startBrokerProcess({ config: config(), cwd: dir, readyMs: 20_000 }));
  t.regex(error?.message ?? '', new RegExp(`store .*store is in use by process ${first.pid}`));
  t.regex(error?.message ?? '', /two brokers cannot share a store/);
  const c = await client(first.port('tcp'), { clientId: 'still-served' });
  t.true(c.connected, 'the first broker still serves');
  c.end(true);
});

test('a truncated data file stops the start with an error naming data.mdb; the file is left as it was (no silent fresh store)', async (t) => {
  const dir = tempDir('portcullis-faults-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const b = await startBrokerProcess({ config: config(), cwd: dir });
  const sub = await client(b.port('tcp'), { clientId: 'kept', clean: false, properties: { sessionExpiryInterval: 600 } });
  await sub.subscribeAsync('t/#', { qos: 1 });
  sub.end(true);
  await b.stop();
  const data = path.join(dir, 'store', 'data.mdb');
  const size = fs.statSync(data).size;
  fs.truncateSync(data, Math.floor(size / 3));
  const error = await t.throwsAsync(startBrokerProcess({ config: config(), cwd: dir, readyMs: 20_000 }));
  t.regex(error?.message ?? '', /data\.mdb/);
  t.regex(error?.message ?? '', /truncated/);
  t.is(fs.statSync(data).size, Math.floor(size / 3), 'the damaged file is kept for recovery, not replaced');
});

test('after a crash, a restored subscription the current policy no longer allows is removed (audited) before anything is delivered, queued messages included', async (t) => {
  const dir = tempDir('portcullis-faults-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.copyFileSync(path.join(root, 'policies', 'model.conf'), path.join(dir, 'model.conf'));
  const policy = path.join(dir, 'site.csv');
  fs.writeFileSync(policy, 'p, *, ops/#, read, allow\np, *, ops/#, publish, allow\np, *, other/#, read, allow\np, *, other/#, publish, allow\n');
  const cfg = config({
    listeners: [{ name: 'tcp', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users: [{ username: 'watcher', password: 'w-pw' }, { username: 'pub', password: 'p-pw' }] }] }],
    authorizers: [{ type: 'casbin', model: 'model.conf', policy: 'site.csv', watch: false }],
  });
  let b = await startBrokerProcess({ config: cfg, cwd: dir });
  const watcher = { clientId: 'watcher-1', username: 'watcher', password: 'w-pw', clean: false, properties: { sessionExpiryInterval: 600 } };
  const sub = await client(b.port('tcp'), watcher);
  await sub.subscribeAsync('ops/#', { qos: 1 });
  await sub.subscribeAsync('other/#', { qos: 1 });
  await sub.endAsync();
  const pub = await client(b.port('tcp'), { clientId: 'pub', username: 'pub', password: 'p-pw' });
  await pub.publishAsync('ops/queued', 'queued before the crash', { qos: 1 });
  pub.end(true);
  process.kill(b.pid, 'SIGKILL');
  await delay(300);
  // While the broker is down, the policy takes the watcher's read access to ops/ away.
  fs.writeFileSync(policy, 'p, *, ops/#, publish, allow\np, *, other/#, read, allow\np, *, other/#, publish, allow\n');
  b = await startBrokerProcess({ config: cfg, cwd: dir });
  t.teardown(() => b.stop());
  const got: string[] = [];
  const back = await client(b.port('tcp'), watcher, (topic, payload) => got.push(`${topic}=${payload.toString()}`));
  const pub2 = await client(b.port('tcp'), { clientId: 'pub2', username: 'pub', password: 'p-pw' });
  await pub2.publishAsync('ops/after', 'after the restart', { qos: 1 });
  await pub2.publishAsync('other/after', 'still allowed', { qos: 1 });
  await delay(800);
  t.deepEqual(
    got.filter((m) => !m.startsWith('$')),
    ['other/after=still allowed'],
    'neither the queued message nor a new one on ops/ reaches it; other/ still does',
  );
  const audit = b.audit();
  t.true(
    audit.some((r) => r.event === 'subscribe' && r.decision === 'deny' && r.topic === 'ops/#' && String(r.reason).includes('subscription removed')),
    'the removal is audited',
  );
  back.end(true);
  pub2.end(true);
});
