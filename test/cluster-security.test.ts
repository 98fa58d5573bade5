/**
 * Redis is a trust boundary (SECURITY.md, docs/cluster.md). Whoever can write to it cannot make
 * a node deliver a message: every bus frame is signed with the cluster key, names the stream it
 * was written to, and is numbered; a forged, copied or replayed frame is refused, logged and
 * audited. And authorization stays where the subscriber is: every delivery is checked on the
 * subscriber's node, with its principal and that node's policy.
 */
import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import test from 'ava';
import type { MqttClient } from 'mqtt';
import { Redis } from 'ioredis';
import { startRedis, type RedisServer } from './redis-server.ts';
import { writePolicyDir } from './helpers.ts';
import { connect, delay, eventually, nodeConfig, startNode, tempDir, writeKeyFile, type InProcessNode } from './cluster-support.ts';
import { encodeFrame } from '../src/cluster/frame.ts';
import { encodePublish } from '../src/cluster/wire.ts';

interface Cluster {
  redis: RedisServer;
  nodes: InProcessNode[];
  clients: MqttClient[];
  keyFile: string;
  dir: string;
}

async function cluster(t: { teardown(fn: () => Promise<void> | void): void }, name: string, perNode: (i: number) => Record<string, unknown> = () => ({})): Promise<Cluster> {
  const redis = await startRedis();
  const dir = tempDir();
  const keyFile = writeKeyFile(dir);
  const c: Cluster = { redis, nodes: [], clients: [], keyFile, dir };
  t.teardown(async () => {
    for (const cl of c.clients) cl.end(true);
    for (const n of c.nodes) await n.broker.stop();
    await redis.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  for (const [i, id] of ['a', 'b', 'c'].entries()) c.nodes.push(await startNode(nodeConfig({ redisUrl: redis.url, keyFile, nodeId: id, name }, perNode(i))));
  return c;
}

async function client(c: Cluster, node: number, options: Parameters<typeof connect>[1] = {}, onMessage?: (topic: string, payload: Buffer) => void): Promise<MqttClient> {
  const cl = await connect((c.nodes[node] as InProcessNode).port, options, onMessage);
  c.clients.push(cl);
  return cl;
}

function inboxOf(c: Cluster, name: string, node: number): string {
  return `{pc:${name}}:in:${c.nodes[node]?.broker.clusterStatus()?.partitions[0]}`;
}

function refusals(n: InProcessNode): { problem: unknown }[] {
  return n.audit.records.filter((r) => r.event === 'cluster' && r.action === 'frame-refused').map((r) => ({ problem: r.detail?.problem }));
}

test('a publish written into a node\'s inbox without the cluster key is refused, logged and audited, and delivers nothing', async (t) => {
  const c = await cluster(t, 'forge');
  const got: string[] = [];
  const s = await client(c, 1, { clientId: 'victim' }, (_t, p) => got.push(p.toString()));
  await s.subscribeAsync('door/#', { qos: 1 });
  const body = encodePublish({ topic: 'door/open', payload: Buffer.from('forged'), qos: 1, retain: false }, true, null);
  const stream = inboxOf(c, 'forge', 1);
  const attacker = new Redis(c.redis.port, c.redis.host);
  t.teardown(() => attacker.disconnect());
  // 1. Signed with a key of the attacker's own, under the real key id.
  const forged = encodeFrame({ id: 'k1', key: randomBytes(32) }, { sender: 'a~x', target: stream, ts: Date.now(), seq: 1 }, [body]);
  await attacker.xadd(stream, '*', 'f', forged);
  // 2. No signature at all (garbage).
  await attacker.xadd(stream, '*', 'f', Buffer.from('PCB1 not a frame'));
  t.true(await eventually(() => refusals(c.nodes[1] as InProcessNode).length >= 1, 3000));
  await delay(300);
  t.deepEqual(got, [], 'nothing was delivered');
  const problems = refusals(c.nodes[1] as InProcessNode).map((r) => r.problem);
  t.true(problems.includes('bad-signature'), JSON.stringify(problems));
  // The node goes on: a real publish still arrives.
  const pub = await client(c, 0, { clientId: 'real' });
  await pub.publishAsync('door/open', 'real', { qos: 1 });
  t.true(await eventually(() => got.length === 1));
  t.deepEqual(got, ['real']);
});

test('a real frame copied again into the same inbox (a replay) or into another node\'s inbox is refused: each message is delivered once', async (t) => {
  const c = await cluster(t, 'replay');
  const gotB: string[] = [];
  const gotC: string[] = [];
  const sb = await client(c, 1, { clientId: 'sb' }, (_t, p) => gotB.push(p.toString()));
  await sb.subscribeAsync('pay/#', { qos: 1 });
  const sc = await client(c, 2, { clientId: 'sc' }, (_t, p) => gotC.push(p.toString()));
  await sc.subscribeAsync('other/#', { qos: 1 });
  const streamB = inboxOf(c, 'replay', 1);
  const streamC = inboxOf(c, 'replay', 2);
  // The attacker reads node b's inbox as it is written (it is trimmed once applied).
  const spy = new Redis(c.redis.port, c.redis.host);
  const attacker = new Redis(c.redis.port, c.redis.host);
  t.teardown(() => {
    spy.disconnect();
    attacker.disconnect();
  });
  const seen = spy.xreadBuffer('BLOCK', 5000, 'STREAMS', streamB, '$');
  const pub = await client(c, 0, { clientId: 'payer' });
  await pub.publishAsync('pay/1', 'pay 100', { qos: 1 });
  const reply = (await seen) as [Buffer, [Buffer, Buffer[]][]][];
  const frame = reply[0]?.[1][0]?.[1][1] as Buffer;
  t.true(Buffer.isBuffer(frame));
  t.true(await eventually(() => gotB.length === 1));
  await attacker.xadd(streamB, '*', 'f', frame); // the same frame again
  await attacker.xadd(streamC, '*', 'f', frame); // into another inbox
  t.true(await eventually(() => refusals(c.nodes[1] as InProcessNode).length >= 1 && refusals(c.nodes[2] as InProcessNode).length >= 1, 3000));
  await delay(300);
  t.deepEqual(gotB, ['pay 100'], 'delivered once');
  t.deepEqual(gotC, []);
  t.deepEqual(refusals(c.nodes[1] as InProcessNode).map((r) => r.problem), ['replay']);
  t.deepEqual(refusals(c.nodes[2] as InProcessNode).map((r) => r.problem), ['wrong-target']);
});

test('a frame signed with the key but written into Redis long after it was made is refused (clock check bounds replays)', async (t) => {
  const c = await cluster(t, 'stale');
  const got: string[] = [];
  const s = await client(c, 1, { clientId: 'stale-sub' }, (_t, p) => got.push(p.toString()));
  await s.subscribeAsync('st/#', { qos: 1 });
  const key = fs.readFileSync(c.keyFile, 'utf8').trim().split(/\s+/);
  const stream = inboxOf(c, 'stale', 1);
  // Made 10 minutes ago by a (real) node, written now: as a copy kept by an attacker would be.
  const old = encodeFrame({ id: key[0] as string, key: Buffer.from(key[1] as string, 'base64') }, { sender: 'a~old', target: stream, ts: Date.now() - 600_000, seq: 1 }, [encodePublish({ topic: 'st/x', payload: Buffer.from('old'), qos: 1, retain: false }, true, null)]);
  const attacker = new Redis(c.redis.port, c.redis.host);
  t.teardown(() => attacker.disconnect());
  await attacker.xadd(stream, '*', 'f', old);
  t.true(await eventually(() => refusals(c.nodes[1] as InProcessNode).length === 1, 3000));
  t.deepEqual(refusals(c.nodes[1] as InProcessNode).map((r) => r.problem), ['clock']);
  t.deepEqual(got, []);
});

test('every delivery is authorized on the subscriber\'s node, with its principal and that node\'s policy', async (t) => {
  // Node b's policy withholds `data/secret` from readers; nodes a and c allow everything.
  const open = writePolicyDir('p, *, #, *, allow\n');
  const strict = writePolicyDir('p, *, #, *, allow\np, *, data/secret, subscribe, deny\n');
  t.teardown(() => {
    open.cleanup();
    strict.cleanup();
  });
  const users = { provider: 'static-users', users: [{ username: 'reader', password: 'reader-pw' }, { username: 'writer', password: 'writer-pw' }] };
  const c = await cluster(t, 'authz', (i) => ({
    listeners: [{ name: 'tcp', type: 'tcp', host: '127.0.0.1', port: 0, auth: [users] }],
    authorizers: [{ type: 'casbin', model: (i === 1 ? strict : open).model, policy: (i === 1 ? strict : open).policy, watch: false }],
  }));
  const onB: string[] = [];
  const onC: string[] = [];
  const rb = await client(c, 1, { clientId: 'rb', username: 'reader', password: 'reader-pw' }, (topic) => onB.push(topic));
  await rb.subscribeAsync('data/#', { qos: 1 });
  const rc = await client(c, 2, { clientId: 'rc', username: 'reader', password: 'reader-pw' }, (topic) => onC.push(topic));
  await rc.subscribeAsync('data/#', { qos: 1 });
  const w = await client(c, 0, { clientId: 'w', username: 'writer', password: 'writer-pw' });
  await w.publishAsync('data/secret', 's', { qos: 1 });
  await w.publishAsync('data/public', 'p', { qos: 1 });
  t.true(await eventually(() => onB.length === 1 && onC.length === 2));
  await delay(200);
  t.deepEqual(onB, ['data/public'], "node b's policy withheld data/secret from its reader");
  t.deepEqual(onC.sort(), ['data/public', 'data/secret']);
  const denied = (c.nodes[1] as InProcessNode).audit.records.filter((r) => r.event === 'deliver' && r.decision === 'deny' && r.topic === 'data/secret');
  t.is(denied.length, 1, 'the withheld delivery is audited on the subscriber\'s node');
  t.is(denied[0]?.username, 'reader');
});

test('a node with another cluster key cannot talk to the cluster: its messages are refused as unsigned', async (t) => {
  const c = await cluster(t, 'keys');
  const got: string[] = [];
  const s = await client(c, 1, { clientId: 'k-sub' }, (_t, p) => got.push(p.toString()));
  await s.subscribeAsync('k/#', { qos: 1 });
  const otherDir = tempDir();
  t.teardown(() => fs.rmSync(otherDir, { recursive: true, force: true }));
  const rogue = await startNode(nodeConfig({ redisUrl: c.redis.url, keyFile: writeKeyFile(otherDir), nodeId: 'rogue', name: 'keys' }));
  t.teardown(() => rogue.broker.stop());
  const p = await connect(rogue.port, { clientId: 'rogue-pub' });
  c.clients.push(p);
  // The rogue may know node b's interest from Redis and write to its inbox: b refuses what it writes.
  await p.publishAsync('k/1', 'from rogue', { qos: 0 });
  await delay(500);
  t.deepEqual(got, []);
  t.true(refusals(c.nodes[1] as InProcessNode).length >= 1 || refusals(c.nodes[0] as InProcessNode).length >= 1);
});
