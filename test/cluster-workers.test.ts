/**
 * `workers: 2` (docs/multicore.md): one command, one port, two worker processes that are two
 * nodes of a cluster on one Redis. Clients land on both; they see one broker; each worker audits
 * to its own chained file and `portcullis audit verify` checks both; a worker killed with kill -9
 * is started again. And the cluster commands: `portcullis policy reload` reports every node,
 * `cluster status` lists them, `cluster keygen` writes the key file.
 */
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import type { MqttClient } from 'mqtt';
import { root, startBrokerProcess, type BrokerProcess } from './interop/broker-process.ts';
import { startRedis } from './redis-server.ts';
import { connect as client, eventually, tempDir, writeKeyFile } from './cluster-support.ts';
import { loadClusterKeys } from '../src/cluster/keys.ts';

function cli(cwd: string, ...args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), path.join(root, 'src', 'cli', 'main.ts'), ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.once('exit', (code) => resolve({ code: code ?? -1, out }));
  });
}

/** Which worker's audit file recorded the connect of `clientId`. */
function workerOf(dir: string, clientId: string): number | undefined {
  for (const w of [1, 2]) {
    let text = '';
    try {
      text = fs.readFileSync(path.join(dir, `audit-w${w}.jsonl`), 'utf8');
    } catch {
      continue;
    }
    if (text.split('\n').some((l) => l.includes('"event":"connect"') && l.includes(`"clientId":${JSON.stringify(clientId)}`))) return w;
  }
  return undefined;
}

test('workers: 2 share one port and behave as one broker: clients on both workers, publish/subscribe and takeover across them, one audit chain each (audit verify checks both), a killed worker comes back', async (t) => {
  t.timeout(120_000);
  const redis = await startRedis();
  const dir = tempDir();
  const keyFile = writeKeyFile(dir);
  const clients: MqttClient[] = [];
  let broker: BrokerProcess | undefined;
  t.teardown(async () => {
    for (const c of clients) c.end(true);
    await broker?.stop();
    await redis.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  broker = await startBrokerProcess({
    cwd: dir,
    config: {
      listeners: [{ name: 'tcp', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }],
      authorizers: ['allow-all'],
      store: { type: 'memory' },
      audit: { sink: 'file', path: 'audit.jsonl', fsyncIntervalMs: 0 },
      sys: { intervalSeconds: 0 },
      workers: 2,
      cluster: { redis: { url: redis.url }, keyFile, nodeId: 'box', name: 'workers', leaseMs: 1500 },
    },
  });
  const port = broker.port('tcp');
  // Both workers listening (on the same port), and both in the cluster.
  t.true(await eventually(() => (broker as BrokerProcess).logs().filter((l) => l.msg.startsWith('listening on') && l.port === port).length === 2, 20_000));
  // Connections are handed to the workers in turn: a handful lands on both.
  const got = new Map<string, string[]>();
  for (let i = 0; i < 6; i++) {
    const id = `c${i}`;
    got.set(id, []);
    const c = await client(port, { clientId: id }, (_t, p) => got.get(id)?.push(p.toString()));
    await c.subscribeAsync('all/#', { qos: 1 });
    clients.push(c);
  }
  t.true(await eventually(() => [...got.keys()].every((id) => workerOf(dir, id) !== undefined), 5000));
  const where = [...got.keys()].map((id) => workerOf(dir, id));
  t.true(where.includes(1) && where.includes(2), `clients on both workers: ${JSON.stringify(where)}`);
  // One publish reaches every subscriber, on either worker.
  await (clients[0] as MqttClient).publishAsync('all/x', 'hello', { qos: 1 });
  t.true(await eventually(() => [...got.values()].every((g) => g.includes('hello'))), JSON.stringify([...got]));
  // A client id taken over from whichever worker holds it (20 tries spread over both).
  let crossed = 0;
  for (let i = 0; i < 10; i++) {
    const first = await client(port, { clientId: `twin-${i}`, clean: false, properties: { sessionExpiryInterval: 60 } });
    const kicked = new Promise<number>((r) => first.once('disconnect', (p) => r(p.reasonCode ?? 0)));
    const second = await client(port, { clientId: `twin-${i}`, clean: false, properties: { sessionExpiryInterval: 60 } });
    t.is(await kicked, 0x8e);
    t.true((second as unknown as { connackPacket: { sessionPresent: boolean } }).connackPacket.sessionPresent);
    clients.push(first, second);
    await eventually(() => workerOf(dir, `twin-${i}`) !== undefined);
  }
  // The audit files are written a little after the connects: count once they have caught up.
  const countCrossed = () => {
    const text = [1, 2].map((w) => (fs.existsSync(path.join(dir, `audit-w${w}.jsonl`)) ? fs.readFileSync(path.join(dir, `audit-w${w}.jsonl`), 'utf8') : ''));
    crossed = Array.from({ length: 10 }, (_, i) => i).filter((i) => text.every((x) => x.includes(`"clientId":"twin-${i}"`))).length;
    return crossed > 0;
  };
  t.true(await eventually(countCrossed, 5000), 'some takeovers crossed workers');
  // Each worker its own chain: both verify.
  for (const c of clients) c.end(true);
  clients.length = 0;
  const verify = await cli(dir, 'audit', 'verify', 'audit-w1.jsonl', 'audit-w2.jsonl');
  t.is(verify.code, 0, verify.out);
  t.regex(verify.out, /2 of 2 chains intact/);
  // A worker killed with kill -9 is started again, and the broker serves on.
  const pids = execFileSync('ps', ['-o', 'pid=', '--ppid', String(broker.pid)]).toString().trim().split(/\s+/).map(Number);
  t.is(pids.length, 2);
  process.kill(pids[0] as number, 'SIGKILL');
  t.truthy(await broker.waitForLog((l) => /exited: starting it again/.test(l.msg), 5000));
  t.true(
    await eventually(() => {
      const now = execFileSync('ps', ['-o', 'pid=', '--ppid', String(broker?.pid)]).toString().trim().split(/\s+/).map(Number);
      return now.length === 2 && !now.includes(pids[0] as number);
    }, 15_000),
  );
  const after = await client(port, { clientId: 'after-kill' });
  clients.push(after);
  t.true(after.connected);
});

test('portcullis policy reload, for a cluster: every node reloads and the command prints each node\'s report', async (t) => {
  t.timeout(120_000);
  const redis = await startRedis();
  const dir = tempDir();
  const keyFile = writeKeyFile(dir);
  fs.copyFileSync(path.join(root, 'policies', 'model.conf'), path.join(dir, 'model.conf'));
  fs.writeFileSync(path.join(dir, 'policy.csv'), 'p, *, #, *, allow\n');
  const nodes: BrokerProcess[] = [];
  t.teardown(async () => {
    for (const n of nodes) await n.stop();
    await redis.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const config = (id: string) => ({
    listeners: [{ name: 'tcp', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }],
    authorizers: [{ type: 'casbin', model: path.join(dir, 'model.conf'), policy: path.join(dir, 'policy.csv'), watch: false }],
    store: { type: 'memory' },
    audit: { sink: 'file', path: `audit-${id}.jsonl`, fsyncIntervalMs: 0 },
    sys: { intervalSeconds: 0 },
    cluster: { redis: { url: redis.url }, keyFile, nodeId: id, name: 'cli', leaseMs: 1500 },
  });
  for (const id of ['n1', 'n2', 'n3']) {
    const d = path.join(dir, id);
    fs.mkdirSync(d);
    nodes.push(await startBrokerProcess({ cwd: d, config: config(id) }));
  }
  fs.writeFileSync(path.join(dir, 'cli.yaml'), JSON.stringify(config('cli')));
  fs.writeFileSync(path.join(dir, 'policy.csv'), 'p, *, #, *, allow\np, *, secret/#, *, deny\n');
  // cluster status: every node alive, each hosting its own partition.
  const status = await cli(dir, 'cluster', 'status', '--config', 'cli.yaml', '--json');
  t.is(status.code, 0, status.out);
  const view = JSON.parse(status.out) as { nodes: { node: string; alive: boolean }[]; partitions: { hostNode: string; alive: boolean }[] };
  t.deepEqual(view.nodes.map((n) => [n.node, n.alive]), [['n1', true], ['n2', true], ['n3', true]]);
  t.deepEqual(view.partitions.filter((p) => p.alive).map((p) => p.hostNode).sort(), ['n1', 'n2', 'n3']);
  const r = await cli(dir, 'policy', 'reload', '--config', 'cli.yaml');
  t.is(r.code, 0, r.out);
  t.regex(r.out, /3 node\(s\) reported/);
  for (const id of ['n1', 'n2', 'n3']) t.regex(r.out, new RegExp(`${id}: ok\\n  policy \\(casbin\\): ok \\(version`));
  // Each node audited its reload.
  for (const n of nodes) t.truthy(await n.waitForAudit((x) => x.event === 'reload' && x.decision === 'allow' && /portcullis policy reload/.test(String(x.reason)), 5000));
  // A broken file on the way: every node keeps its last good policy and says so.
  fs.writeFileSync(path.join(dir, 'policy.csv'), 'p, *, #, *, allow\np, oops\n');
  const bad = await cli(dir, 'policy', 'reload', '--config', 'cli.yaml');
  t.not(bad.code, 0);
});

test('portcullis cluster keygen writes a 0600 key file that loads as a node loads it, puts a new key first and keeps the old ones, and refuses a key id already there', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-keygen-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = writeKeyFile(dir, 'k1'); // a key in use: 0600, one line
  fs.chmodSync(file, 0o600);
  const added = await cli(dir, 'cluster', 'keygen', '--key-file', file, '--id', 'k2');
  t.is(added.code, 0, added.out);
  t.is(fs.statSync(file).mode & 0o777, 0o600);
  const keys = loadClusterKeys(file);
  t.deepEqual(keys.map((k) => k.id), ['k2', 'k1'], 'the new key signs, the old one still verifies');
  t.true(keys.every((k) => k.key.length === 32));
  const again = await cli(dir, 'cluster', 'keygen', '--key-file', file, '--id', 'k1');
  t.is(again.code, 2, again.out);
  t.regex(again.out, /already in/);
  t.deepEqual(loadClusterKeys(file).map((k) => k.id), ['k2', 'k1'], 'the file is unchanged');
});
