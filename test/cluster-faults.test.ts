/**
 * Faults, on three real broker processes and one real redis-server (append-only, fsync always):
 *
 * - Redis stops, then comes back: every node keeps serving local traffic; a QoS 1 message that
 *   needs another node cannot be made durable and is not acknowledged (PUBACK 0x80); the outage
 *   is logged and audited; cross-node delivery resumes, and nothing acknowledged is lost.
 * - Redis hangs (CLIENT PAUSE): nodes time out cleanly, refuse what they cannot make durable,
 *   and their memory stays bounded; delivery resumes when it is back.
 * - A node is killed with kill -9: what was acknowledged for its sessions while it was down waits
 *   in its inbox; when it is back, its clients resume their sessions on any node, with every
 *   message (docs/cluster.md: with a store per node a dead node's sessions wait for it).
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import type { MqttClient } from 'mqtt';
import { startBrokerProcess, type BrokerProcess } from './interop/broker-process.ts';
import { clusterFixture, connect as client, delay, eventually } from './cluster-support.ts';

function nodeYaml(redisUrl: string, keyFile: string, nodeId: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    listeners: [{ name: 'tcp', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }],
    authorizers: ['allow-all'],
    store: { type: 'memory' },
    audit: { sink: 'file', path: 'audit.jsonl', fsyncIntervalMs: 0 },
    sys: { intervalSeconds: 0 },
    log: { level: 'info' },
    cluster: { redis: { url: redisUrl, commandTimeoutMs: 1000, connectTimeoutMs: 1000 }, keyFile, nodeId, name: 'faults', leaseMs: 1500, ackTimeoutMs: 1000, moveTimeoutMs: 8000, maxPendingBytes: 4 * 1024 * 1024 },
    ...extra,
  };
}

/** PUBACK's reason code of a QoS 1 publish (0 accepted; mqtt.js rejects on an error code). */
async function publishCode(c: MqttClient, topic: string, payload: string): Promise<number> {
  try {
    const p = (await c.publishAsync(topic, payload, { qos: 1 })) as { reasonCode?: number } | undefined;
    return p?.reasonCode ?? 0;
  } catch (err) {
    return (err as { code?: number }).code ?? 0x80;
  }
}

function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0) * 1024;
}

async function kill9(b: BrokerProcess): Promise<void> {
  process.kill(b.pid, 'SIGKILL');
  await eventually(() => {
    try {
      process.kill(b.pid, 0);
      return false;
    } catch {
      return true;
    }
  }, 5000);
}

test('Redis stops and comes back: local traffic goes on, QoS 1 for other nodes is refused (0x80) not acknowledged, the outage is audited, delivery resumes, nothing acknowledged is lost', async (t) => {
  t.timeout(120_000);
  const { redis, keyFile, nodes, clients } = await clusterFixture<BrokerProcess>(t, (n) => n.stop());
  for (const id of ['a', 'b', 'c']) nodes.push(await startBrokerProcess({ config: nodeYaml(redis.url, keyFile, id) }));
  const port = (i: number) => (nodes[i] as BrokerProcess).port('tcp');
  const remote = new Set<string>();
  const local = new Set<string>();
  clients.push(await client(port(1), { clientId: 'far', clean: false, properties: { sessionExpiryInterval: 600 } }, (_t, p) => remote.add(p.toString())));
  await (clients[0] as MqttClient).subscribeAsync('f/#', { qos: 1 });
  clients.push(await client(port(0), { clientId: 'near' }, (_t, p) => local.add(p.toString())));
  await (clients[1] as MqttClient).subscribeAsync('near/#', { qos: 1 });
  const pub = await client(port(0), { clientId: 'pub' });
  clients.push(pub);
  const acked: string[] = [];
  for (let i = 0; i < 20; i++) if ((await publishCode(pub, 'f/x', `before-${i}`)) === 0) acked.push(`before-${i}`);
  t.is(acked.length, 20);

  await redis.stop(true);
  // The node notices (its bus reader fails), logs and audits it.
  t.truthy(await nodes[0]?.waitForAudit((r) => r.event === 'cluster' && r.action === 'redis-down', 10_000), 'the outage is audited');
  const during: number[] = [];
  for (let i = 0; i < 10; i++) {
    const code = await publishCode(pub, 'f/x', `during-${i}`);
    during.push(code);
    if (code === 0) acked.push(`during-${i}`);
  }
  t.true(during.every((c) => c === 0x80), `QoS 1 for node b is refused while Redis is down: ${JSON.stringify(during)}`);
  // Local traffic is served as before.
  for (let i = 0; i < 10; i++) t.is(await publishCode(pub, 'near/x', `local-${i}`), 0);
  t.true(await eventually(() => local.size === 10), 'local subscribers get local messages');

  await redis.restart();
  t.truthy(await nodes[0]?.waitForAudit((r) => r.event === 'cluster' && r.action === 'redis-up', 15_000), 'the recovery is audited');
  // Cross-node delivery resumes: a publish is acknowledged once Redis holds it.
  t.true(await eventually(async () => (await publishCode(pub, 'f/x', 'probe')) === 0, 15_000, 200), 'publishes for node b are acknowledged again');
  for (let i = 0; i < 20; i++) if ((await publishCode(pub, 'f/x', `after-${i}`)) === 0) acked.push(`after-${i}`);
  t.true(await eventually(() => acked.every((m) => remote.has(m)), 15_000), `missing: ${acked.filter((m) => !remote.has(m)).join(', ')}`);
});

test('Redis hangs (CLIENT PAUSE): nodes time out cleanly, refuse what they cannot make durable, keep their memory bounded, and resume', async (t) => {
  t.timeout(120_000);
  const { redis, keyFile, nodes, clients } = await clusterFixture<BrokerProcess>(t, (n) => n.stop());
  for (const id of ['a', 'b', 'c']) nodes.push(await startBrokerProcess({ config: nodeYaml(redis.url, keyFile, id) }));
  const port = (i: number) => (nodes[i] as BrokerProcess).port('tcp');
  const got = new Set<string>();
  const sub = await client(port(2), { clientId: 'paused-sub', clean: false, properties: { sessionExpiryInterval: 600 } }, (_t, p) => got.add(p.toString().slice(0, 16)));
  clients.push(sub);
  await sub.subscribeAsync('p/#', { qos: 1 });
  const pub = await client(port(0), { clientId: 'paused-pub' });
  clients.push(pub);
  t.is(await publishCode(pub, 'p/x', 'warm-up'), 0);
  const before = rssBytes((nodes[0] as BrokerProcess).pid);

  await redis.command('CLIENT', 'PAUSE', '4000', 'ALL');
  // A flood of 64 KiB QoS 0 and QoS 1 messages for node c while Redis hangs: 20 MiB offered.
  const big = 'x'.repeat(64 * 1024);
  const codes: number[] = [];
  const started = Date.now();
  const flood: Promise<unknown>[] = [];
  for (let i = 0; i < 320; i++) flood.push(pub.publishAsync('p/x', `q0-${i}-${big}`, { qos: 0 }));
  for (let i = 0; i < 10; i++) flood.push(publishCode(pub, 'p/x', `q1-${i}`).then((c) => codes.push(c)));
  await Promise.all(flood);
  const waited = Date.now() - started;
  const peak = rssBytes((nodes[0] as BrokerProcess).pid);
  t.true(codes.every((c) => c === 0x80), `QoS 1 refused, not acknowledged: ${JSON.stringify(codes)}`);
  t.true(waited < 3900, `refused within the command deadline (1 s), not when Redis came back: ${waited} ms`);
  t.true(peak - before < 64 * 1024 * 1024, `memory stays bounded: +${((peak - before) / 1048576).toFixed(1)} MiB`);
  t.true((nodes[0] as BrokerProcess).logs().some((l) => /write to Redis failed/.test(l.msg)), 'the failed writes are logged');

  await delay(4500); // the pause ends
  t.true(await eventually(async () => (await publishCode(pub, 'p/x', 'after-pause')) === 0, 10_000, 200));
  t.true(await eventually(() => got.has('after-pause'), 10_000));
});

test('a node killed with kill -9: messages acknowledged for its sessions while it is down are kept, and its clients resume on any node once it is back', async (t) => {
  t.timeout(120_000);
  const { redis, dir, keyFile, nodes, clients } = await clusterFixture<BrokerProcess>(t, (n) => n.stop());
  const dirs = ['a', 'b', 'c'].map((id) => {
    const d = path.join(dir, id);
    fs.mkdirSync(d);
    return d;
  });
  // Each node its own durable store (its folder survives the kill).
  const config = (id: string) => nodeYaml(redis.url, keyFile, id, { store: { type: 'lmdb', path: 'store', durability: 'sync' } });
  for (const [i, id] of ['a', 'b', 'c'].entries()) nodes.push(await startBrokerProcess({ config: config(id), cwd: dirs[i] as string }));
  const port = (i: number) => (nodes[i] as BrokerProcess).port('tcp');
  const sub = await client(port(1), { clientId: 'survivor', clean: false, properties: { sessionExpiryInterval: 600 } });
  await sub.subscribeAsync('k/#', { qos: 1 });
  sub.end(true);
  await delay(200);
  const pub = await client(port(0), { clientId: 'k-pub' });
  clients.push(pub);
  const acked: string[] = [];
  for (let i = 0; i < 10; i++) if ((await publishCode(pub, 'k/x', `queued-${i}`)) === 0) acked.push(`queued-${i}`);

  await kill9(nodes[1] as BrokerProcess);
  nodes[1] = null;
  // Node b is gone; its partition's inbox keeps what is published for its sessions, durably.
  for (let i = 0; i < 10; i++) if ((await publishCode(pub, 'k/x', `while-dead-${i}`)) === 0) acked.push(`while-dead-${i}`);
  t.is(acked.length, 20, 'acknowledged while the node was dead: Redis holds them');

  // Node b comes back on its store and takes its partition back; the client resumes on node c.
  nodes[1] = await startBrokerProcess({ config: config('b'), cwd: dirs[1] as string });
  const got: string[] = [];
  let resumed: MqttClient | undefined;
  t.true(
    await eventually(async () => {
      try {
        resumed = await client(port(2), { clientId: 'survivor', clean: false, properties: { sessionExpiryInterval: 600 } }, (_t, p) => got.push(p.toString()));
        return true;
      } catch {
        return false;
      }
    }, 20_000, 300),
  );
  clients.push(resumed as MqttClient);
  t.true((resumed as unknown as { connackPacket: { sessionPresent: boolean } }).connackPacket.sessionPresent, 'session present');
  t.true(await eventually(() => acked.every((m) => got.includes(m)), 15_000), `missing: ${acked.filter((m) => !got.includes(m)).join(', ')}`);
  // QoS 1 is at least once: a message the dead node had stored but not yet marked applied in its
  // inbox (the moment before the kill) comes again. In the order of first arrival, all of them.
  t.deepEqual(
    [...new Set(got)].filter((m) => acked.includes(m)),
    acked,
    'in order',
  );
});
