/**
 * Sessions outlive the node that held them, with a store every node shares (docs/cluster.md):
 * when a node is cut off from Redis (or dies) longer than its lease, another node adopts its
 * partition, carries on with what its inbox holds, and its clients resume their sessions on any
 * node, with every acknowledged message. The node that was cut off learns it lost its sessions
 * and ends their connections (0x8E) rather than serve them twice. A node that stops hands its
 * sessions over at once.
 *
 * In one process, over a real Redis: nodes share one store object (as they share a Redis store),
 * and a node is cut off by disabling its Redis user (ACL) and killing its connections.
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import type { IClientOptions, MqttClient } from 'mqtt';
import { MemoryStore } from '../src/index.ts';
import type { RedisServer } from './redis-server.ts';
import { clusterFixture, connect, delay, eventually, nodeConfig, startNode, type InProcessNode } from './cluster-support.ts';

interface Cluster {
  redis: RedisServer;
  nodes: (InProcessNode | null)[];
  clients: MqttClient[];
}

const LEASE = 1500;

async function cluster(t: { teardown(fn: () => Promise<void> | void): void }, name: string): Promise<Cluster> {
  const { redis, dir, keyFile, nodes, clients } = await clusterFixture<InProcessNode>(t, (n) => n.broker.stop());
  const store = new MemoryStore();
  const c: Cluster = { redis, nodes, clients };
  for (const id of ['a', 'b', 'c']) {
    // Each node logs in as its own Redis user, so one can be cut off alone.
    await redis.command('ACL', 'SETUSER', `node-${id}`, 'on', `>${id}-secret`, '~*', '&*', '+@all');
    const user = path.join(dir, `${id}.user`);
    const pass = path.join(dir, `${id}.pass`);
    fs.writeFileSync(user, `node-${id}\n`, { mode: 0o600 });
    fs.writeFileSync(pass, `${id}-secret\n`, { mode: 0o600 });
    const config = nodeConfig({ redisUrl: redis.url, keyFile, nodeId: id, name, leaseMs: LEASE });
    (config.cluster as { redis: Record<string, unknown> }).redis = { ...(config.cluster as { redis: Record<string, unknown> }).redis, usernameFile: user, passwordFile: pass };
    c.nodes.push(await startNode(config, { store, sharedStore: true }));
  }
  return c;
}

async function client(c: Cluster, node: number, options: IClientOptions = {}, onMessage?: (topic: string, payload: Buffer) => void): Promise<MqttClient> {
  const cl = await connect((c.nodes[node] as InProcessNode).port, options, onMessage);
  c.clients.push(cl);
  return cl;
}

const persistent = (clientId: string): IClientOptions => ({ clientId, clean: false, properties: { sessionExpiryInterval: 600 } });

async function cutOff(c: Cluster, id: string): Promise<void> {
  await c.redis.command('ACL', 'SETUSER', `node-${id}`, 'off');
  await c.redis.command('CLIENT', 'KILL', 'USER', `node-${id}`);
}

test('a node cut off from Redis longer than its lease: another node adopts its sessions; its clients resume elsewhere with every acknowledged message; the cut-off node ends its own connections (0x8E)', async (t) => {
  t.timeout(60_000);
  const c = await cluster(t, 'adopt');
  // Two persistent sessions on node b: one offline (queue building), one connected.
  const s = await client(c, 1, persistent('offline-one'));
  await s.subscribeAsync('ad/#', { qos: 1 });
  s.end();
  const liveGot: string[] = [];
  const live = await client(c, 1, persistent('live-one'), (_t, p) => liveGot.push(p.toString()));
  await live.subscribeAsync('ad/#', { qos: 1 });
  const pub = await client(c, 0, { clientId: 'ad-pub' });
  const acked: string[] = [];
  for (let i = 0; i < 10; i++) {
    await pub.publishAsync('ad/x', `m${i}`, { qos: 1 });
    acked.push(`m${i}`);
  }
  t.true(await eventually(() => liveGot.length === 10));

  const kicked = new Promise<number>((resolve) => live.once('disconnect', (p) => resolve(p.reasonCode ?? 0)));
  const cut = Date.now();
  await cutOff(c, 'b');
  // Acknowledged while node b cannot read its inbox: Redis holds them for whoever carries on.
  for (let i = 10; i < 20; i++) {
    await pub.publishAsync('ad/x', `m${i}`, { qos: 1 });
    acked.push(`m${i}`);
  }
  // The offline client comes back on node c: its session is free within a lease time.
  const got: string[] = [];
  let back: MqttClient | undefined;
  t.true(
    await eventually(async () => {
      back = await client(c, 2, persistent('offline-one'), (_t, p) => got.push(p.toString())).catch(() => undefined);
      return back !== undefined;
    }, 10_000, 100),
  );
  const freedAfter = Date.now() - cut;
  t.true(freedAfter < LEASE * 3, `session free after ${freedAfter} ms (lease ${LEASE} ms)`);
  t.true((back as unknown as { connackPacket: { sessionPresent: boolean } }).connackPacket.sessionPresent);
  t.true(await eventually(() => acked.every((m) => got.includes(m)), 10_000), `missing ${acked.filter((m) => !got.includes(m))}`);
  t.deepEqual([...new Set(got)], acked, 'each acknowledged message, in order');
  // The live client reconnects to node a and resumes too, with what it missed.
  const liveBack: string[] = [];
  const live2 = await client(c, 0, persistent('live-one'), (_t, p) => liveBack.push(p.toString()));
  t.true((live2 as unknown as { connackPacket: { sessionPresent: boolean } }).connackPacket.sessionPresent);
  t.true(await eventually(() => acked.slice(10).every((m) => liveBack.includes(m) || liveGot.includes(m)), 10_000));
  // Node b gets Redis back, learns its sessions went elsewhere, and ends its old connection.
  await c.redis.command('ACL', 'SETUSER', 'node-b', 'on');
  t.is(await Promise.race([kicked, delay(10_000).then(() => -1)]), 0x8e);
  const lost = (c.nodes[1] as InProcessNode).audit.records.find((r) => r.event === 'cluster' && r.action === 'partition-lost');
  t.truthy(lost, 'audited on the node that lost them');
  const adopted = [c.nodes[0], c.nodes[2]].some((n) => n?.audit.records.some((r) => r.event === 'cluster' && r.action === 'adopt'));
  t.true(adopted, 'audited on the node that adopted them');
});

test('a node that stops hands its sessions over at once: its clients resume elsewhere without waiting for the lease', async (t) => {
  t.timeout(60_000);
  const c = await cluster(t, 'handover');
  const s = await client(c, 1, persistent('mover'));
  await s.subscribeAsync('ho/#', { qos: 1 });
  s.end();
  const pub = await client(c, 0, { clientId: 'ho-pub' });
  for (let i = 0; i < 5; i++) await pub.publishAsync('ho/x', `h${i}`, { qos: 1 });
  await (c.nodes[1] as InProcessNode).broker.stop();
  c.nodes[1] = null;
  const stopped = Date.now();
  const got: string[] = [];
  let back: MqttClient | undefined;
  t.true(
    await eventually(async () => {
      back = await client(c, 2, persistent('mover'), (_t, p) => got.push(p.toString())).catch(() => undefined);
      return back !== undefined;
    }, 10_000, 50),
  );
  t.true(Date.now() - stopped < LEASE, `resumed ${Date.now() - stopped} ms after the stop (lease ${LEASE} ms)`);
  t.true((back as unknown as { connackPacket: { sessionPresent: boolean } }).connackPacket.sessionPresent);
  t.true(await eventually(() => got.length >= 5));
  t.deepEqual(got, ['h0', 'h1', 'h2', 'h3', 'h4']);
});

test('a delayed will of a session whose node was cut off is published by the node that adopts it', async (t) => {
  t.timeout(60_000);
  const c = await cluster(t, 'willadopt');
  const wills: string[] = [];
  const w = await client(c, 0, { clientId: 'will-watch' }, (_t, p) => wills.push(p.toString()));
  await w.subscribeAsync('wills/#', { qos: 1 });
  await client(c, 1, { ...persistent('doomed'), will: { topic: 'wills/doomed', payload: Buffer.from('lost'), qos: 1, retain: false, properties: { willDelayInterval: 1 } } });
  await cutOff(c, 'b');
  // Node b's connection to the client is still up, but node b is gone as far as the cluster knows.
  t.true(await eventually(() => wills.length === 1, 10_000), 'the adopting node publishes the will after its delay');
  t.deepEqual(wills, ['lost']);
});

test('with the Redis store (store.type: redis) shared by the nodes, a stopped node\'s persistent session resumes on another node with the messages queued for it', async (t) => {
  const { redis, keyFile, nodes, clients } = await clusterFixture<InProcessNode>(t, (n) => n.broker.stop());
  // The store and the bus on one Redis; each node its own store instance.
  const cfg = (id: string) => ({ ...nodeConfig({ redisUrl: redis.url, keyFile, nodeId: id, name: 'redis-store', leaseMs: LEASE }), store: { type: 'redis', url: redis.url, instance: id } }) as Parameters<typeof startNode>[0];
  const a = await startNode(cfg('a'));
  const b = await startNode(cfg('b'));
  nodes.push(a, b);
  const device: IClientOptions = { clientId: 'rs-device', clean: false, properties: { sessionExpiryInterval: 600 } };
  const first = await connect(a.port, device);
  await first.subscribeAsync('rs/#', { qos: 1 });
  first.end(true);
  const pub = await connect(b.port, { clientId: 'rs-pub' });
  clients.push(pub);
  for (let i = 0; i < 5; i++) await pub.publishAsync('rs/x', `m${i}`, { qos: 1 });
  await a.broker.stop();
  nodes.shift();
  const got: string[] = [];
  const back = await connect(b.port, device, (_topic, p) => got.push(p.toString()));
  clients.push(back);
  t.true((back as unknown as { connackPacket: { sessionPresent: boolean } }).connackPacket.sessionPresent);
  t.true(await eventually(() => got.length >= 5, 5000), JSON.stringify(got));
  t.deepEqual(got, ['m0', 'm1', 'm2', 'm3', 'm4']);
  t.truthy(b.audit.records.find((r) => r.event === 'cluster' && r.action === 'adopt'));
});
