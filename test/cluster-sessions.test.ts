/**
 * Sessions in a cluster of three nodes on one Redis (docs/cluster.md): a session (an identity and
 * a client id) is one in the whole cluster. A second CONNECT on another node takes it over as a
 * second CONNECT on one node would (0x8E there), and the session moves with its subscriptions,
 * its queue and its in-flight messages; a client that reconnects to any node resumes it; the
 * same client id under another identity is another session, as on one node.
 */
import fs from 'node:fs';
import test from 'ava';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { startRedis, type RedisServer } from './redis-server.ts';
import { rawConnect } from './helpers.ts';
import { encodeConnect, encodeSubscribe, PacketType, waitForType } from './raw-mqtt.ts';
import { connect, delay, eventually, nodeConfig, startNode, tempDir, writeKeyFile, type InProcessNode } from './cluster-support.ts';

interface Cluster {
  redis: RedisServer;
  nodes: InProcessNode[];
  clients: MqttClient[];
}

const users = {
  provider: 'static-users',
  users: [
    { username: 'alice', password: 'alice-pw' },
    { username: 'bob', password: 'bob-pw' },
  ],
};

async function cluster(t: { teardown(fn: () => Promise<void> | void): void }, name: string): Promise<Cluster> {
  const redis = await startRedis();
  const dir = tempDir();
  const keyFile = writeKeyFile(dir);
  const c: Cluster = { redis, nodes: [], clients: [] };
  t.teardown(async () => {
    for (const cl of c.clients) cl.end(true);
    for (const n of c.nodes) await n.broker.stop();
    await redis.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  for (const id of ['a', 'b', 'c']) {
    c.nodes.push(
      await startNode(
        nodeConfig({ redisUrl: redis.url, keyFile, nodeId: id, name }, { listeners: [{ name: 'tcp', type: 'tcp', host: '127.0.0.1', port: 0, auth: [users, 'anonymous'] }] } as never),
      ),
    );
  }
  return c;
}

async function client(c: Cluster, node: number, options: IClientOptions = {}, onMessage?: (topic: string, payload: Buffer) => void): Promise<MqttClient> {
  const cl = await connect((c.nodes[node] as InProcessNode).port, options, onMessage);
  c.clients.push(cl);
  return cl;
}

/** Resolves with the reason code of the DISCONNECT the client gets (or 'closed' when the socket just closes). */
function disconnectCode(cl: MqttClient): Promise<number | 'closed'> {
  return new Promise((resolve) => {
    cl.once('disconnect', (p) => resolve(p.reasonCode ?? 0));
    cl.once('close', () => setTimeout(() => resolve('closed'), 50));
  });
}

const persistent = (clientId: string, extra: IClientOptions = {}): IClientOptions => ({ clientId, clean: false, properties: { sessionExpiryInterval: 300 }, ...extra });

test('a second CONNECT on another node takes the session over: DISCONNECT 0x8E on the first node, session present on the second, its subscription goes on', async (t) => {
  const c = await cluster(t, 'takeover');
  const first = await client(c, 0, persistent('dev-1'));
  await first.subscribeAsync('cmd/dev-1', { qos: 1 });
  const kicked = disconnectCode(first);
  const got: string[] = [];
  const second = await client(c, 1, persistent('dev-1'), (_t, p) => got.push(p.toString()));
  t.true(second.connected);
  t.is(await kicked, 0x8e);
  const pub = await client(c, 2, { clientId: 'ctl' });
  await pub.publishAsync('cmd/dev-1', 'reboot', { qos: 1 });
  t.true(await eventually(() => got.length === 1));
  t.deepEqual(got, ['reboot']);
});

test('the session moves with its queue: messages queued on one node while the client was away reach it, in order, on another', async (t) => {
  const c = await cluster(t, 'queue');
  const s = await client(c, 0, persistent('sensor-q'));
  await s.subscribeAsync('q/#', { qos: 1 });
  s.end(true);
  await delay(100);
  const pub = await client(c, 2, { clientId: 'q-pub' });
  for (let i = 0; i < 20; i++) await pub.publishAsync(`q/${i}`, String(i), { qos: 1 });
  const got: number[] = [];
  let present: boolean | undefined;
  const back = await client(c, 1, persistent('sensor-q'), (_t, p) => got.push(Number(p)));
  present = (back as unknown as { connackPacket?: { sessionPresent?: boolean } }).connackPacket?.sessionPresent;
  t.true(present, 'session present');
  t.true(await eventually(() => got.length === 20), `${got.length}`);
  t.deepEqual(got, Array.from({ length: 20 }, (_, i) => i));
});

test('the session moves with its in-flight messages: unacknowledged QoS 1 deliveries are sent again (DUP) on the new node', async (t) => {
  const c = await cluster(t, 'inflight');
  // A raw v3.1.1 client that never acknowledges: its deliveries stay in flight.
  const raw = await rawConnect((c.nodes[0] as InProcessNode).port);
  t.teardown(() => raw.socket.destroy());
  raw.write(encodeConnect({ clientId: 'slow-1', clean: false, version: 4 }));
  await waitForType(raw, PacketType.CONNACK);
  raw.write(encodeSubscribe({ packetId: 1, filters: [{ topic: 'inf/#', qos: 1 }] }));
  await waitForType(raw, PacketType.SUBACK);
  const pub = await client(c, 1, { clientId: 'inf-pub' });
  for (let i = 0; i < 3; i++) await pub.publishAsync('inf/x', `m${i}`, { qos: 1 });
  const held = await waitForType(raw, PacketType.PUBLISH, 3);
  t.is(held.length, 3);
  const again: { payload: string; dup: boolean }[] = [];
  // Listening before CONNACK: the re-sends follow it at once.
  const moved = mqtt.connect({ host: '127.0.0.1', port: (c.nodes[2] as InProcessNode).port, clientId: 'slow-1', clean: false, protocolVersion: 4, reconnectPeriod: 0 });
  c.clients.push(moved);
  moved.on('packetreceive', (p) => {
    if (p.cmd === 'publish') again.push({ payload: p.payload.toString(), dup: p.dup === true });
  });
  t.true(await raw.closed(), 'the first connection was taken over');
  t.true(await eventually(() => again.length >= 3), JSON.stringify(again));
  t.deepEqual(
    again.map((m) => m.payload),
    ['m0', 'm1', 'm2'],
  );
  t.true(again.every((m) => m.dup));
});

test('a client that reconnects to any node resumes its persistent session (session present = 1) and its subscriptions', async (t) => {
  const c = await cluster(t, 'resume');
  const s = await client(c, 0, persistent('roamer'));
  await s.subscribeAsync('roam/+', { qos: 1 });
  s.end();
  await delay(100);
  for (const node of [2, 1, 0, 2]) {
    const got: string[] = [];
    const back = await client(c, node, persistent('roamer'), (_t, p) => got.push(p.toString()));
    t.true((back as unknown as { connackPacket: { sessionPresent: boolean } }).connackPacket.sessionPresent, `present on node ${node}`);
    const pub = await client(c, (node + 1) % 3, { clientId: `roam-pub-${node}` });
    await pub.publishAsync('roam/x', `at-${node}`, { qos: 1 });
    t.true(await eventually(() => got.length === 1), `delivered on node ${node}`);
    back.end();
    pub.end();
    await delay(50);
  }
});

test('the same client id under another identity is another session: no takeover across nodes, as on one node', async (t) => {
  const c = await cluster(t, 'identity');
  const alice = await client(c, 0, persistent('shared-id', { username: 'alice', password: 'alice-pw' }));
  let aliceKicked = false;
  alice.on('disconnect', () => (aliceKicked = true));
  const bob = await client(c, 1, persistent('shared-id', { username: 'bob', password: 'bob-pw' }));
  t.false((bob as unknown as { connackPacket: { sessionPresent: boolean } }).connackPacket.sessionPresent, "bob does not get alice's session");
  await delay(300);
  t.false(aliceKicked);
  t.true(alice.connected && bob.connected);
  // And alice's own second connection, on a third node, does take hers over.
  const kicked = disconnectCode(alice);
  const alice2 = await client(c, 2, persistent('shared-id', { username: 'alice', password: 'alice-pw' }));
  t.true((alice2 as unknown as { connackPacket: { sessionPresent: boolean } }).connackPacket.sessionPresent);
  t.is(await kicked, 0x8e);
  t.true(bob.connected);
});

test('clean start on another node ends the session held elsewhere: session present = 0, its queue is gone, and its pending will is published', async (t) => {
  const c = await cluster(t, 'clean');
  const wills: string[] = [];
  const watcher = await client(c, 2, { clientId: 'will-watch' }, (_t, p) => wills.push(p.toString()));
  await watcher.subscribeAsync('wills/#', { qos: 1 });
  const s = await client(c, 0, persistent('cleaner', { will: { topic: 'wills/cleaner', payload: Buffer.from('gone'), qos: 1, retain: false, properties: { willDelayInterval: 60 } } }));
  await s.subscribeAsync('clean/#', { qos: 1 });
  s.stream.destroy(); // no DISCONNECT: the will waits its delay
  await delay(100);
  const pub = await client(c, 1, { clientId: 'clean-pub' });
  await pub.publishAsync('clean/1', 'old', { qos: 1 });
  const got: string[] = [];
  const fresh = await client(c, 1, { clientId: 'cleaner', clean: true }, (_t, p) => got.push(p.toString()));
  t.false((fresh as unknown as { connackPacket: { sessionPresent: boolean } }).connackPacket.sessionPresent);
  t.true(await eventually(() => wills.length === 1), 'the pending will went when the session ended');
  await delay(200);
  t.deepEqual(got, [], 'the old queue went with the old session');
});

test('a reconnect before the will delay cancels the will, whichever node it reconnects to', async (t) => {
  const c = await cluster(t, 'willcancel');
  const wills: string[] = [];
  const watcher = await client(c, 2, { clientId: 'wc-watch' }, (_t, p) => wills.push(p.toString()));
  await watcher.subscribeAsync('wills/#', { qos: 1 });
  const s = await client(c, 0, persistent('flaky', { will: { topic: 'wills/flaky', payload: Buffer.from('gone'), qos: 1, retain: false, properties: { willDelayInterval: 2 } } }));
  s.stream.destroy();
  await delay(100);
  await client(c, 1, persistent('flaky'));
  await delay(2500);
  t.deepEqual(wills, []);
});

test('a will with a delay is published by the node that held the session, to subscribers on every node', async (t) => {
  const c = await cluster(t, 'willdelay');
  const wills: { at: number; node: number }[] = [];
  for (const n of [1, 2]) {
    const w = await client(c, n, { clientId: `wd-${n}` }, () => wills.push({ at: Date.now(), node: n }));
    await w.subscribeAsync('wills/#', { qos: 1 });
  }
  const s = await client(c, 0, persistent('dying', { will: { topic: 'wills/dying', payload: Buffer.from('bye'), qos: 1, retain: false, properties: { willDelayInterval: 1 } } }));
  const dropped = Date.now();
  s.stream.destroy();
  t.true(await eventually(() => wills.length === 2, 4000));
  t.true((wills[0] as { at: number }).at - dropped >= 900, 'after its delay');
});

test('the same client id connecting to two nodes at once: exactly one session wins and the other connection is taken over (20 rounds)', async (t) => {
  const c = await cluster(t, 'race');
  for (let round = 0; round < 20; round++) {
    const id = `racer-${round}`;
    const a = (round % 3) as 0 | 1 | 2;
    const b = ((round + 1) % 3) as 0 | 1 | 2;
    const results = await Promise.allSettled([client(c, a, persistent(id)), client(c, b, persistent(id))]);
    const connected = results.filter((r) => r.status === 'fulfilled').map((r) => (r as PromiseFulfilledResult<MqttClient>).value);
    t.true(connected.length >= 1, `round ${round}: at least one CONNACK`);
    // Whatever the order, the cluster ends with exactly one live connection for the id.
    t.true(await eventually(() => connected.filter((x) => x.connected).length === 1, 3000), `round ${round}: exactly one connected`);
    const winner = connected.find((x) => x.connected) as MqttClient;
    // The session that won is the one in use: a subscription made now works, from any node.
    const got: string[] = [];
    winner.on('message', (_t, p) => got.push(p.toString()));
    await winner.subscribeAsync(`race/${round}`, { qos: 1 });
    const pub = await client(c, 2 - a, { clientId: `race-pub-${round}` });
    await pub.publishAsync(`race/${round}`, 'x', { qos: 1 });
    t.true(await eventually(() => got.length === 1), `round ${round}: delivered`);
    for (const x of connected) x.end(true);
    pub.end(true);
  }
});
