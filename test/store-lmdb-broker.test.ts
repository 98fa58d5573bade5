/**
 * The durable store as the broker uses it: the default store keeps a persistent session and
 * retained messages across a restart (real sockets, real clients); a second broker on the same
 * store refuses to start; a full disk makes writes fail with ERR_STORE_WRITE and keeps nothing of
 * the failed batch.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import mqtt, { type IClientOptions, type IConnackPacket, type MqttClient } from 'mqtt';
import { createBroker, parseConfig, type ConfigInput } from '../src/index.ts';
import { silentLogger } from '../src/log.ts';
import { LmdbStore } from '../src/store/lmdb.ts';
import { delay, freePort } from './helpers.ts';
import { sessionKey } from '../src/store/types.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const main = path.join(root, 'src', 'cli', 'main.ts');

function tempDir(t: ExecutionContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-store-broker-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Connects; messages are collected from the first packet on (queued ones arrive right after CONNACK). */
function connectWithConnack(port: number, options: IClientOptions): Promise<{ client: MqttClient; connack: IConnackPacket; received: { topic: string; payload: string; retain: boolean }[] }> {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect({ host: '127.0.0.1', port, reconnectPeriod: 0, connectTimeout: 5000, ...options });
    const received: { topic: string; payload: string; retain: boolean }[] = [];
    client.on('message', (topic, payload, packet) => received.push({ topic, payload: payload.toString(), retain: packet.retain }));
    client.once('connect', (connack) => resolve({ client, connack, received }));
    client.once('error', reject);
  });
}

/** One anonymous TCP listener on the durable store under `dir`: restart a broker on it to test what survives. */
function durableConfig(dir: string): ConfigInput {
  return {
    listeners: [{ name: 't', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }],
    authorizers: ['allow-all'],
    sys: { intervalSeconds: 0 },
    audit: { sink: 'none' },
    store: { path: path.join(dir, 'store') },
  };
}

async function waitFor(predicate: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!predicate() && Date.now() < end) await delay(20);
}

test('without a store key the configuration uses the durable store under data/store', (t) => {
  t.deepEqual(parseConfig({}).store, { type: 'lmdb', path: 'data/store', durability: 'sync', commitDelayMs: 0, flushIntervalMs: 1000 });
  t.deepEqual(parseConfig({ store: { type: 'memory' } }).store, { type: 'memory' });
});

test('the configured durable store keeps a persistent session, its queued message and retained messages across a broker restart', async (t) => {
  const dir = tempDir(t);
  const config = durableConfig(dir);
  let broker = createBroker(config, { logger: silentLogger() });
  let port = (await broker.start()).listeners[0]?.port ?? 0;
  const device = { clientId: 'meter-7', clean: false, protocolVersion: 5 as const, properties: { sessionExpiryInterval: 3600 } };
  const first = await connectWithConnack(port, device);
  t.false(first.connack.sessionPresent);
  await first.client.subscribeAsync('cmd/meter-7', { qos: 1 });
  await first.client.endAsync();
  const ops = (await connectWithConnack(port, { clientId: 'ops', protocolVersion: 5 })).client;
  await ops.publishAsync('cmd/meter-7', 'reboot', { qos: 1 });
  await ops.publishAsync('status/meter-7', 'maintenance', { qos: 1, retain: true });
  await ops.endAsync();
  await broker.stop();

  broker = createBroker(config, { logger: silentLogger() });
  port = (await broker.start()).listeners[0]?.port ?? 0;
  t.teardown(() => broker.stop());
  const again = await connectWithConnack(port, device);
  t.true(again.connack.sessionPresent, 'the session survived the restart');
  await waitFor(() => again.received.length >= 1);
  t.deepEqual(again.received, [{ topic: 'cmd/meter-7', payload: 'reboot', retain: false }], 'the queued message is delivered');
  await again.client.subscribeAsync('status/#', { qos: 1 });
  await waitFor(() => again.received.length >= 2);
  t.deepEqual(again.received[1], { topic: 'status/meter-7', payload: 'maintenance', retain: true }, 'the retained message is there');
  await again.client.endAsync();
});

function startCli(config: string): { child: ChildProcess; output: () => string; exited: Promise<number | null> } {
  const child = spawn(process.execPath, ['--import', 'tsx', main, 'start', '--config', config], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return { child, output: () => out, exited };
}

test.serial('two brokers on one store: the second refuses to start with an error naming the store and the first broker', async (t) => {
  t.timeout(60_000);
  const dir = tempDir(t);
  const store = path.join(dir, 'store');
  const write = async (name: string) => {
    const file = path.join(dir, `${name}.json`);
    const port = await freePort();
    fs.writeFileSync(file, JSON.stringify({ listeners: [{ name, type: 'tcp', host: '127.0.0.1', port, auth: ['anonymous'] }], authorizers: ['allow-all'], audit: { sink: 'none' }, sys: { intervalSeconds: 0 }, store: { path: store } }));
    return file;
  };
  const first = startCli(await write('first'));
  t.teardown(() => void first.child.kill('SIGKILL'));
  const until = Date.now() + 30_000;
  while (!first.output().includes('listening on tcp://') && Date.now() < until && first.child.exitCode === null) await delay(50);
  t.regex(first.output(), /listening on tcp:\/\//);

  const second = startCli(await write('second'));
  t.teardown(() => void second.child.kill('SIGKILL'));
  t.is(await second.exited, 1);
  t.regex(second.output(), /cannot start: the store .* is in use by process \d+/);
  t.true(second.output().includes(store), second.output());
  t.true(second.output().includes(`process ${String(first.child.pid)}`));
  t.is(first.child.exitCode, null, 'the first broker keeps running');
  first.child.kill('SIGTERM');
  t.is(await first.exited, 0);
});

// ── a full disk ─────────────────────────────────────────────────────────────

const DISK_FULL = fileURLToPath(new URL('./fixtures/store-disk-full.ts', import.meta.url));

interface Outcome {
  acked?: number;
  failed?: number;
  code?: string;
  diskFull?: boolean;
  errno?: string;
}

function runDiskFull(dir: string, shellPrefix: string): Promise<Outcome[]> {
  return new Promise((resolve) => {
    const child = spawn('/bin/bash', ['-c', `${shellPrefix} exec "$0" --import tsx "$1" "$2"`, process.execPath, DISK_FULL, dir], { cwd: root, stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.once('close', () =>
      resolve(
        out
          .split('\n')
          .filter(Boolean)
          .map((l) => JSON.parse(l) as Outcome),
      ),
    );
  });
}

async function checkAfterDiskFull(t: ExecutionContext, store: string, outcomes: Outcome[]): Promise<void> {
  const acked = outcomes.filter((o) => o.acked !== undefined).map((o) => o.acked as number);
  const failed = outcomes.filter((o) => o.failed !== undefined);
  t.true(acked.length > 10, `writes succeeded before the limit (${acked.length})`);
  t.true(failed.length >= 3, `writes were refused (${failed.length})`);
  for (const f of failed) t.is(f.code, 'ERR_STORE_WRITE');
  // Reopened without the limit: every acknowledged write, none of the refused ones, and writable again.
  const s = new LmdbStore({ path: store });
  await s.open();
  const topics = (await s.getSession(sessionKey('user:dev', 'dev')))?.queue.map((m) => Number(m.topic.slice(2))) ?? [];
  t.deepEqual(topics, [...acked].sort((a, b) => a - b));
  await s.enqueue(sessionKey('user:dev', 'dev'), { topic: 't/after', payload: Buffer.from('x'), qos: 1, retain: false });
  t.is((await s.getSession(sessionKey('user:dev', 'dev')))?.queue.at(-1)?.topic, 't/after');
  await s.close();
}

test('a file size limit reached mid-run: writes are refused with ERR_STORE_WRITE, nothing of a refused batch is kept, every acknowledged one is', async (t) => {
  t.timeout(60_000);
  const store = path.join(tempDir(t), 'store');
  const outcomes = await runDiskFull(store, 'ulimit -f 1024;');
  await checkAfterDiskFull(t, store, outcomes);
  for (const f of outcomes.filter((o) => o.failed !== undefined)) t.true(['EIO', 'EFBIG', 'ENOSPC'].includes(f.errno ?? ''), `errno ${String(f.errno)}`);
});

test.serial('a full filesystem (a 1 MB tmpfs, when this machine lets root mount one): refused writes say diskFull', async (t) => {
  t.timeout(60_000);
  const dir = tempDir(t);
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt);
  const mounted = process.getuid?.() === 0 && (await new Promise<boolean>((r) => spawn('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt], { stdio: 'ignore' }).once('close', (c) => r(c === 0))));
  if (!mounted) {
    t.pass('cannot mount a tmpfs here; the file size limit test covers the refusal');
    return;
  }
  t.teardown(() => new Promise<void>((r) => spawn('umount', [mnt], { stdio: 'ignore' }).once('close', () => r())));
  const store = path.join(mnt, 'store');
  const outcomes = await runDiskFull(store, '');
  for (const f of outcomes.filter((o) => o.failed !== undefined)) t.true(f.diskFull, 'reported as a full disk');
  // Copy out of the full filesystem to reopen it with room to write.
  const copy = path.join(dir, 'copy');
  fs.cpSync(store, copy, { recursive: true });
  fs.chmodSync(copy, 0o700);
  await checkAfterDiskFull(t, copy, outcomes);
});

test('a message queued for an offline v5 session keeps its subscription identifiers across a restart [MQTT-3.3.4-3]', async (t) => {
  const dir = tempDir(t);
  const config = durableConfig(dir);
  let broker = createBroker(config, { logger: silentLogger() });
  let port = (await broker.start()).listeners[0]?.port ?? 0;
  const device = { clientId: 'meter-8', clean: false, protocolVersion: 5 as const, properties: { sessionExpiryInterval: 3600 } };
  const first = await connectWithConnack(port, device);
  await first.client.subscribeAsync('cmd/#', { qos: 1, properties: { subscriptionIdentifier: 7 } });
  await first.client.subscribeAsync('cmd/meter-8/+', { qos: 1, properties: { subscriptionIdentifier: 300_000 } });
  await first.client.subscribeAsync('cmd/plain', { qos: 1 });
  await first.client.endAsync();
  const ops = (await connectWithConnack(port, { clientId: 'ops', protocolVersion: 5 })).client;
  await ops.publishAsync('cmd/meter-8/reboot', 'now', { qos: 1 });
  await ops.publishAsync('cmd/plain', 'no id', { qos: 1 });
  await ops.endAsync();
  await broker.stop();

  broker = createBroker(config, { logger: silentLogger() });
  port = (await broker.start()).listeners[0]?.port ?? 0;
  t.teardown(() => broker.stop());
  const ids = new Map<string, unknown>();
  const again = await new Promise<MqttClient>((resolve, reject) => {
    const client = mqtt.connect({ host: '127.0.0.1', port, reconnectPeriod: 0, connectTimeout: 5000, ...device });
    client.on('message', (topic, _payload, packet) => ids.set(topic, packet.properties?.subscriptionIdentifier));
    client.once('connect', () => resolve(client));
    client.once('error', reject);
  });
  t.teardown(() => again.end(true));
  await waitFor(() => ids.size >= 2);
  const got = ids.get('cmd/meter-8/reboot');
  t.deepEqual(Array.isArray(got) ? [...got].sort((a, b) => a - b) : got, [7, 300_000], 'both matching subscriptions name their identifier');
  // cmd/# (id 7) matches cmd/plain too; the subscription without an identifier adds none.
  t.deepEqual(ids.get('cmd/plain'), 7);
});
