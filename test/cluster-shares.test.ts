/**
 * `$share` group copies that reach a node whose last member of the group left (docs/cluster.md,
 * "Shared subscriptions across nodes"): passed on to a node that still has members, as a frame
 * the passing node signs, a bounded number of times. The streams in test/cluster-streams.test.ts
 * show that nothing is lost; these show the bounds, with frames written into a node's inbox the
 * way a node (or someone with the cluster key) writes them.
 */
import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import test from 'ava';
import { Redis } from 'ioredis';
import type { MqttClient } from 'mqtt';
import { decodeFrame, encodeFrame } from '../src/cluster/frame.ts';
import { decodeBody, encodePublish, type PublishBody } from '../src/cluster/wire.ts';
import { MemoryStore } from '../src/index.ts';
import { clusterFixture, connect, delay, eventually, nodeConfig, startNode, threeNodes, type InProcessNode, type ThreeNodes } from './cluster-support.ts';

function inboxOf(c: ThreeNodes, name: string, node: number): string {
  return `{pc:${name}}:in:${c.nodes[node]?.broker.clusterStatus()?.partitions[0]}`;
}

function shares(c: { nodes: (InProcessNode | null)[] }, node: number): { passed: number; dropped: number } {
  return c.nodes[node]?.broker.clusterStatus()?.shares ?? { passed: -1, dropped: -1 };
}

function refusals(n: InProcessNode): unknown[] {
  return n.audit.records.filter((r) => r.event === 'cluster' && r.action === 'frame-refused').map((r) => r.detail?.problem);
}

test('a group copy for a group the node has no member of any more goes, signed by that node and counted as one more pass, to a node with members; one passed the most times, or for a group no node has, is dropped; a forged one is refused and passes nothing on', async (t) => {
  const name = 'sh-pass';
  const c = await threeNodes(t, name);
  const got: string[] = [];
  const member: MqttClient = await connect((c.nodes[2] as InProcessNode).port, { clientId: 'sh-member' }, (_topic, payload) => got.push(payload.toString()));
  c.clients.push(member);
  await member.subscribeAsync('$share/g/sp/t', { qos: 1 }); // SUBACK: every node knows node c has a member
  const [keyId, keyB64] = fs.readFileSync(c.keyFile, 'utf8').trim().split(/\s+/) as [string, string];
  const key = { id: keyId, key: Buffer.from(keyB64, 'base64') };
  const toB = inboxOf(c, name, 1);
  const toC = inboxOf(c, name, 2);
  const writer = new Redis(c.redis.port, c.redis.host);
  const spy = new Redis(c.redis.port, c.redis.host);
  t.teardown(() => {
    writer.disconnect();
    spy.disconnect();
  });
  const SENDER = 'x~shares';
  const send = (seq: number, passes: number, group: string, payload: string, signWith = key) => {
    const body = encodePublish({ topic: 'sp/t', payload: Buffer.from(payload), qos: 1, retain: false }, false, [group], SENDER, passes);
    return writer.xadd(toB, '*', 'f', encodeFrame(signWith, { sender: SENDER, target: toB, ts: Date.now(), seq }, [body]));
  };

  // 1. Passed on once already, to node b, which has no member: node b passes it to node c.
  const seen = spy.xreadBuffer('BLOCK', 5000, 'STREAMS', toC, '$');
  await send(1, 1, '$share/g/sp/t', 'one');
  t.true(await eventually(() => got.length === 1), 'the member on node c got it');
  const reply = (await seen) as [Buffer, [Buffer, Buffer[]][]][];
  const raw = reply[0]?.[1][0]?.[1][1] as Buffer;
  const frame = decodeFrame(raw, new Map([[key.id, key.key]]), toC);
  t.false('problem' in frame, 'signed with the cluster key, for node c\'s inbox');
  if ('problem' in frame) return;
  const bRun = (c.nodes[1] as InProcessNode).broker.clusterStatus()?.run ?? 'node b';
  t.is(frame.sender, bRun, 'written and signed by node b');
  const body = decodeBody(frame.bodies[0] as Buffer, frame.sender) as PublishBody;
  t.deepEqual({ plain: body.plain, groups: body.groups, passes: body.passes, payload: body.message.payload.toString() }, { plain: false, groups: ['$share/g/sp/t'], passes: 2, payload: 'one' });
  t.is(body.message.stamp?.node, bRun, 'ordered as node b\'s own message in node c\'s inbox');
  t.deepEqual(shares(c, 1), { passed: 1, dropped: 0 });

  // 2. Passed on three times already (the most): node b drops it.
  await send(2, 3, '$share/g/sp/t', 'three');
  t.true(await eventually(() => shares(c, 1).dropped === 1));
  // 3. A group no node has members of: dropped, as on one node, and sent nowhere.
  await send(3, 0, '$share/nobody/sp/t', 'nobody');
  t.true(await eventually(() => shares(c, 1).dropped === 2));
  // 4. Not signed with the cluster key: refused before anything is read from it.
  await send(4, 0, '$share/g/sp/t', 'forged', { id: key.id, key: randomBytes(32) });
  t.true(await eventually(() => refusals(c.nodes[1] as InProcessNode).length === 1));
  await delay(300);
  t.deepEqual(got, ['one']);
  t.deepEqual(shares(c, 1), { passed: 1, dropped: 2 });
  t.deepEqual(shares(c, 2), { passed: 0, dropped: 0 }, 'node c, which has the member, passed nothing on');
  t.deepEqual(refusals(c.nodes[1] as InProcessNode), ['bad-signature']);
});

test('a group copy for a partition adopted from a node that stopped, whose member moved on (its client came back on another node), goes to a node with members', async (t) => {
  t.timeout(30_000);
  const name = 'sh-adopt';
  const { redis, keyFile, nodes, clients } = await clusterFixture<InProcessNode>(t, (n) => n.broker.stop());
  const store = new MemoryStore();
  for (const id of ['a', 'b', 'c']) nodes.push(await startNode(nodeConfig({ redisUrl: redis.url, keyFile, nodeId: id, name }), { store, sharedStore: true }));
  const node = (i: number) => nodes[i] as InProcessNode;
  const persistent = (clientId: string) => ({ clientId, clean: false, properties: { sessionExpiryInterval: 600 } });
  const got: string[] = [];
  // Two offline sessions on node b: a member of the group, and one that keeps the partition alive.
  for (const [id, filter] of [['sh-ad-member', '$share/g/ad/t'], ['sh-ad-keep', 'other/t']] as const) {
    const cl = await connect(node(1).port, persistent(id));
    await cl.subscribeAsync(filter, { qos: 1 });
    await cl.endAsync();
  }
  const m = await connect(node(2).port, { clientId: 'sh-ad-c' }, (_t, p) => got.push(`c:${p.toString()}`));
  clients.push(m);
  await m.subscribeAsync('$share/g/ad/t', { qos: 1 });
  const partition = node(1).broker.clusterStatus()?.partitions[0] as string;
  await node(1).broker.stop(); // its partition is adopted at once by node a or c
  nodes[1] = null;
  const adopter = () => [0, 2].find((i) => node(i).broker.clusterStatus()?.partitions.includes(partition));
  t.true(await eventually(() => adopter() !== undefined, 10_000), 'adopted');
  const at = adopter() as number;
  // The member comes back on node a: its session leaves the adopted partition.
  const back = await connect(node(0).port, persistent('sh-ad-member'), (_t, p) => got.push(`a:${p.toString()}`));
  clients.push(back);
  const [keyId, keyB64] = fs.readFileSync(keyFile, 'utf8').trim().split(/\s+/) as [string, string];
  const stream = `{pc:${name}}:in:${partition}`;
  const writer = new Redis(redis.port, redis.host);
  t.teardown(() => writer.disconnect());
  // As a node that had not heard yet writes it: the group's copy for the adopted partition.
  const body = encodePublish({ topic: 'ad/t', payload: Buffer.from('late'), qos: 1, retain: false }, false, ['$share/g/ad/t'], 'x~adopt');
  await writer.xadd(stream, '*', 'f', encodeFrame({ id: keyId, key: Buffer.from(keyB64, 'base64') }, { sender: 'x~adopt', target: stream, ts: Date.now(), seq: 1 }, [body]));
  t.true(await eventually(() => got.length === 1), 'a member on a live node got it');
  await delay(300);
  t.is(got.length, 1, `once: ${JSON.stringify(got)}`);
  t.is(shares({ nodes }, at).passed, 1, 'passed on by the node that adopted the partition');
});
