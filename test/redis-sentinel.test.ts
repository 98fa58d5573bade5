/**
 * Portcullis through Redis Sentinel (real redis-server processes: a master, a replica, sentinels),
 * with the same `sentinels` + `name` for the shared store and the bus: two nodes deliver across
 * nodes and resume a persistent session on the other node; after a failover (asked for, or a
 * master killed) the nodes follow the new master by themselves and cross-node delivery resumes.
 *
 * What a failover keeps (docs/cluster.md, "Redis high availability"): every message acknowledged
 * before the failover that had reached the replica when it was promoted, and every message
 * acknowledged once the nodes are on the new master. Replication is asynchronous, so a bus message
 * acknowledged in the moments around the switch can be lost; the tests log how many were (none on
 * this loopback bench, as a rule) but do not promise it.
 */
import fs from 'node:fs';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import type { MqttClient } from 'mqtt';
import { createBroker, MemoryAuditSink } from '../src/index.ts';
import { createLogger } from '../src/log.ts';
import { delay, eventually, nodeConfig, tempDir, writeKeyFile } from './cluster-support.ts';
import { haCluster, persistent, type HaCluster } from './redis-ha-support.ts';
import { startSentinelGroup, type RedisServer, type SentinelGroup } from './redis-server.ts';

/** Publishes QoS 1 and resolves with the PUBACK reason code (-1: no PUBACK, the connection failed). */
function puback(c: MqttClient, topic: string, payload: string): Promise<number> {
  return new Promise((resolve) => {
    if (!c.connected) return resolve(-1);
    c.publish(topic, payload, { qos: 1 }, (err, packet) => {
      if (err !== undefined && err !== null) return resolve((err as { code?: number }).code ?? -1);
      resolve((packet as { reasonCode?: number } | undefined)?.reasonCode ?? 0);
    });
  });
}

/** Until the replica holds everything the master has (what a failover can then promise to keep). */
async function replicaCaughtUp(master: RedisServer, replica: RedisServer): Promise<boolean> {
  return eventually(async () => {
    const offset = (info: string) => Number(/master_repl_offset:(\d+)/.exec(info)?.[1] ?? -1);
    const m = offset(await master.command('INFO', 'replication'));
    return m > 0 && offset(await replica.command('INFO', 'replication')) >= m;
  }, 5000, 20);
}

/** Connections of nodes a and b in a CLIENT LIST: the bus's (`portcullis:<run>`, `...:reader`) and the store's. */
function onNewMaster(clientList: string): number {
  return clientList.split('\n').filter((l) => /name=portcullis(?::[ab]~|-store)/.test(l)).length;
}

interface Traffic {
  /** Payloads in the order their PUBACK came: before the failover, around it, after delivery resumed. */
  acked: { payload: string; at: number }[];
  refused: string[];
  stop(): Promise<void>;
}

/** A publisher on node a that publishes QoS 1 to `topic` every 20 ms, noting what was acknowledged. */
function traffic(t: ExecutionContext, pub: MqttClient, topic: string): Traffic {
  const acked: Traffic['acked'] = [];
  const refused: string[] = [];
  let running = true;
  const loop = (async () => {
    for (let i = 0; running; i++) {
      const payload = `m-${i}`;
      const code = await puback(pub, topic, payload);
      if (code === 0) acked.push({ payload, at: Date.now() });
      else refused.push(payload);
      await delay(20);
    }
  })();
  const stop = async () => {
    running = false;
    await loop;
  };
  t.teardown(stop);
  return { acked, refused, stop };
}

/** Publishes probes until one reaches `received` on the other node; resolves with when it did (or null). */
async function deliveryResumes(pub: MqttClient, received: string[], ms: number): Promise<number | null> {
  const ok = await eventually(async () => {
    const probe = `probe-${Date.now()}`;
    if ((await puback(pub, 'ha/probe', probe)) !== 0) return false;
    return eventually(() => received.includes(probe), 1500);
  }, ms, 200);
  return ok ? Date.now() : null;
}

async function setUp(t: ExecutionContext, group: SentinelGroup, name: string): Promise<{ c: HaCluster; onB: string[]; pubA: MqttClient }> {
  const redis = { sentinels: group.sentinels.map((s) => ({ host: s.host, port: s.port })), name: group.name };
  const c = await haCluster(t, redis, name);
  const onB: string[] = [];
  const subB = await c.client(1, persistent('sub-b'), (_topic, p) => onB.push(p.toString()));
  await subB.subscribeAsync('ha/#', { qos: 1 });
  const pubA = await c.client(0, { clientId: 'pub-a' });
  return { c, onB, pubA };
}

test('Sentinel: cross-node delivery and a session resumed on the other node; after SENTINEL FAILOVER, delivery resumes and a session queued before it resumes on the other node', async (t) => {
  const group = await startSentinelGroup({ replicas: 1, sentinels: 1 });
  t.teardown(() => group.dispose());
  const { c, onB, pubA } = await setUp(t, group, 'sn-ask');
  const [master, replica] = group.servers as [RedisServer, RedisServer];

  for (let i = 0; i < 10; i++) await pubA.publishAsync('ha/x', `before-${i}`, { qos: 1 });
  t.true(await eventually(() => onB.length === 10, 5000), 'cross-node delivery through Sentinel');

  // A persistent session made on a, resumed on b with what was queued for it.
  const first = await c.client(0, persistent('dev-1'));
  await first.subscribeAsync('cmd/dev-1', { qos: 1 });
  await first.endAsync();
  await pubA.publishAsync('cmd/dev-1', 'queued-1', { qos: 1 });
  const got1: string[] = [];
  const resumed = await c.session(1, persistent('dev-1'), (_topic, p) => got1.push(p.toString()));
  t.true(resumed.present, 'session present on the other node');
  t.true(await eventually(() => got1.length === 1, 5000));
  t.deepEqual(got1, ['queued-1']);

  // Another session goes offline with messages queued for it, then the master is failed over.
  const second = await c.client(0, persistent('dev-2'));
  await second.subscribeAsync('cmd/dev-2', { qos: 1 });
  await second.endAsync();
  for (let i = 0; i < 3; i++) await pubA.publishAsync('cmd/dev-2', `queued-${i}`, { qos: 1 });
  const load = traffic(t, pubA, 'ha/x');
  await delay(200);
  // Every write acknowledged before this count was made is in the master's offset read next.
  const before = load.acked.length;
  t.true(await replicaCaughtUp(master, replica));
  const asked = Date.now();
  await group.failover();
  t.is(await group.masterPort(), replica.port, 'the replica is the master now');
  const resumedAt = await deliveryResumes(pubA, onB, 10_000);
  t.not(resumedAt, null, 'cross-node delivery resumes after the failover');
  // ...through the new master: every connection of both nodes (bus commands, bus reader, store) moved there.
  t.true(await eventually(async () => onNewMaster(await replica.command('CLIENT', 'LIST')) === 6, 5000), `on the new master: ${onNewMaster(await replica.command('CLIENT', 'LIST'))} of 6`);
  await delay(300);
  await load.stop();

  const received = new Set(onB);
  const lostBefore = load.acked.slice(0, before).filter((m) => !received.has(m.payload));
  t.deepEqual(lostBefore, [], 'acknowledged and replicated before the failover: delivered');
  const lostAfter = load.acked.filter((m) => m.at > (resumedAt ?? 0) && !received.has(m.payload));
  t.deepEqual(lostAfter, [], 'acknowledged once delivery resumed: delivered');
  const lostAround = load.acked.filter((m) => m.at >= asked && m.at <= (resumedAt ?? 0) && !received.has(m.payload));
  t.log(`delivery resumed ${(resumedAt ?? 0) - asked} ms after SENTINEL FAILOVER; ${load.acked.length} acknowledged, ${load.refused.length} refused, ${lostAround.length} acknowledged around the switch and lost`);

  // The session queued before the failover resumes on the other node, from the new master.
  const got2: string[] = [];
  const again = await c.session(1, persistent('dev-2'), (_topic, p) => got2.push(p.toString()));
  t.true(again.present, 'session present after the failover');
  t.true(await eventually(() => got2.length === 3, 5000), got2.join(', '));
  t.deepEqual(got2, ['queued-0', 'queued-1', 'queued-2']);
});

test('Sentinel, three sentinels: the master is killed; while there is none, QoS 1 for the other node is refused, not acknowledged; after the failover, delivery resumes with nothing acknowledged lost', async (t) => {
  const group = await startSentinelGroup({ replicas: 1, sentinels: 3 });
  t.teardown(() => group.dispose());
  const { onB, pubA } = await setUp(t, group, 'sn-kill');
  const [master, replica] = group.servers as [RedisServer, RedisServer];

  const before = traffic(t, pubA, 'ha/x');
  t.true(await eventually(() => onB.length >= 10, 5000), 'cross-node delivery through Sentinel');
  await before.stop();
  // What the master acknowledged is on the replica when it dies (a crash in the middle of writes
  // can lose the last ones: replication is asynchronous; docs/cluster.md).
  t.true(await replicaCaughtUp(master, replica));
  const during = traffic(t, pubA, 'ha/x');
  await delay(100);
  const killedAt = Date.now();
  await master.stop(true); // SIGKILL, by its PID
  const resumedAt = await deliveryResumes(pubA, onB, 20_000);
  t.not(resumedAt, null, 'cross-node delivery resumes after the failover');
  t.is(await group.masterPort(), replica.port, 'the sentinels promoted the replica');
  await delay(300);
  await during.stop();

  t.true(during.refused.length > 0, 'while no master was known, QoS 1 for the other node was refused (PUBACK 0x80), not acknowledged');
  const received = new Set(onB);
  const lost = [...before.acked, ...during.acked].filter((m) => !received.has(m.payload));
  t.deepEqual(lost, [], 'every acknowledged message is delivered');
  t.log(`delivery resumed ${(resumedAt ?? 0) - killedAt} ms after kill -9 of the master; ${before.acked.length + during.acked.length} acknowledged, ${during.refused.length} refused`);
});

test('Sentinel with passwords from files: the master password (passwordFile) and the sentinels\' own (sentinelPasswordFile); a wrong sentinel password stops the start without showing it', async (t) => {
  const group = await startSentinelGroup({ replicas: 1, sentinels: 1, password: 'master-secret-4', sentinelPassword: 'sentinel-secret-5' });
  t.teardown(() => group.dispose());
  const dir = tempDir('portcullis-sentinel-auth-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const secret = (name: string, text: string) => {
    const file = path.join(dir, name);
    fs.writeFileSync(file, `${text}\n`, { mode: 0o600 });
    return file;
  };
  const sentinels = group.sentinels.map((s) => ({ host: s.host, port: s.port }));
  const redis = { sentinels, name: group.name, passwordFile: secret('redis.password', 'master-secret-4'), sentinelPasswordFile: secret('sentinel.password', 'sentinel-secret-5') };
  const c = await haCluster(t, redis, 'sn-auth');
  const onB: string[] = [];
  const subB = await c.client(1, { clientId: 'sub-b' }, (_topic, p) => onB.push(p.toString()));
  await subB.subscribeAsync('auth/#', { qos: 1 });
  const pubA = await c.client(0, { clientId: 'pub-a' });
  await pubA.publishAsync('auth/x', 'through-sentinel', { qos: 1 });
  t.true(await eventually(() => onB.length === 1, 5000));

  const wrong = { ...redis, sentinelPasswordFile: secret('wrong.password', 'not-the-sentinel-secret-6'), connectTimeoutMs: 1500 };
  const keyFile = writeKeyFile(dir, 'k2');
  const broker = createBroker(nodeConfig({ redisUrl: 'unused', keyFile, nodeId: 'w', name: 'sn-auth', extra: { redis: wrong } }), { logger: createLogger('silent'), audit: new MemoryAuditSink() });
  const err = await t.throwsAsync(broker.start());
  await broker.stop().catch(() => undefined);
  t.false(err?.message.includes('not-the-sentinel-secret-6'), err?.message);
  t.regex(err?.message ?? '', /cannot reach Redis/);
});
