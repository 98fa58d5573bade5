/**
 * What holds cluster-wide besides messages and sessions (docs/cluster.md): a reload asked of one
 * node reaches every node and is reported per node; a ban added on one node holds on every node;
 * failed logins on one node count on every node; per-identity rate limits hold across nodes
 * (approximately: one sync interval late); $SYS shows each node's numbers and the totals.
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { Redis } from 'ioredis';
import type { IClientOptions, MqttClient } from 'mqtt';
import { upsertBan } from '../src/admission/ban-file.ts';
import { startRedis, type RedisServer } from './redis-server.ts';
import { rawConnect, writePolicyDir } from './helpers.ts';
import { decodeAck, encodeConnect, encodePublish as encodeRawPublish, PacketType, waitForType } from './raw-mqtt.ts';
import { connect, delay, eventually, nodeConfig, startNode, tempDir, writeKeyFile, type InProcessNode } from './cluster-support.ts';

interface Cluster {
  redis: RedisServer;
  nodes: InProcessNode[];
  clients: MqttClient[];
  dir: string;
}

async function cluster(t: { teardown(fn: () => Promise<void> | void): void }, name: string, perNode: (i: number, dir: string) => Record<string, unknown>): Promise<Cluster> {
  const redis = await startRedis();
  const dir = tempDir();
  const keyFile = writeKeyFile(dir);
  const c: Cluster = { redis, nodes: [], clients: [], dir };
  t.teardown(async () => {
    for (const cl of c.clients) cl.end(true);
    for (const n of c.nodes) await n.broker.stop();
    await redis.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  for (const [i, id] of ['a', 'b', 'c'].entries()) {
    const own = path.join(dir, id);
    fs.mkdirSync(own);
    c.nodes.push(await startNode(nodeConfig({ redisUrl: redis.url, keyFile, nodeId: id, name, extra: { syncIntervalMs: 100 } }, perNode(i, own))));
  }
  return c;
}

async function client(c: Cluster, node: number, options: IClientOptions = {}, onMessage?: (topic: string, payload: Buffer) => void): Promise<MqttClient> {
  const cl = await connect((c.nodes[node] as InProcessNode).port, options, onMessage);
  c.clients.push(cl);
  return cl;
}

/** CONNACK's reason code for a connect that may be refused. */
function connackCode(port: number, options: IClientOptions): Promise<number> {
  return new Promise((resolve) => {
    connect(port, options).then(
      (cl) => {
        cl.end(true);
        resolve(0);
      },
      (err: { code?: number }) => resolve(typeof err.code === 'number' ? err.code : -1),
    );
  });
}

const USERS = { provider: 'static-users', users: [{ username: 'reader', password: 'reader-pw' }, { username: 'writer', password: 'writer-pw' }, { username: 'victim', password: 'right' }] };

test('a policy reload asked of one node reaches every node: each reloads its own policy file, re-checks its subscriptions, and the reload is reported per node', async (t) => {
  const dirs: ReturnType<typeof writePolicyDir>[] = [];
  t.teardown(() => dirs.forEach((d) => d.cleanup()));
  const c = await cluster(t, 'reload', (i) => {
    const d = writePolicyDir('p, *, #, *, allow\n');
    dirs[i] = d;
    return { listeners: [{ name: 'tcp', type: 'tcp', host: '127.0.0.1', port: 0, auth: [USERS] }], authorizers: [{ type: 'casbin', model: d.model, policy: d.policy, watch: false }] };
  });
  const got: string[] = [];
  const reader = await client(c, 2, { clientId: 'rd', username: 'reader', password: 'reader-pw' }, (topic) => got.push(topic));
  await reader.subscribeAsync('plant/#', { qos: 1 });
  const writer = await client(c, 0, { clientId: 'wr', username: 'writer', password: 'writer-pw' });
  await writer.publishAsync('plant/a', '1', { qos: 1 });
  t.true(await eventually(() => got.length === 1));
  // The operators ship a new policy to every machine: the reader loses plant/#. Node b gets a broken file.
  for (const [i, d] of dirs.entries()) fs.writeFileSync(d.policy, i === 1 ? 'p, *, #, *, allow\np, broken\n' : 'p, user:writer, #, *, allow\np, user:reader, other/#, *, allow\n');
  const report = await c.nodes[0]?.broker.reloadEverywhere('test');
  t.deepEqual(
    report?.nodes.map((n) => [n.node, n.ok]),
    [
      ['a', true],
      ['b', false],
      ['c', true],
    ],
  );
  t.deepEqual(report?.silent, []);
  t.false(report?.ok);
  t.regex(report?.nodes[1]?.items.find((i) => i.what.startsWith('policy'))?.detail ?? '', /policy\.csv:2: /);
  // Node c re-checked its live subscription under the new policy: the reader gets nothing more.
  await writer.publishAsync('plant/b', '2', { qos: 1 });
  await delay(300);
  t.deepEqual(got.filter((x) => x.startsWith('plant/')), ['plant/a']);
  t.true(got.includes('$portcullis/subscription-revoked'), 'the reader was told its subscription was revoked');
  const audit = (c.nodes[0] as InProcessNode).audit.records.find((r) => r.event === 'cluster' && r.action === 'reload');
  t.regex(audit?.reason ?? '', /a: ok; b: FAILED; c: ok/);
});

test('a ban added to one node\'s ban file holds on every node: live connections it covers are closed and new ones refused', async (t) => {
  const files: string[] = [];
  const c = await cluster(t, 'bans', (i, dir) => {
    files[i] = path.join(dir, 'bans.jsonl');
    return { admission: { bans: { file: files[i], watch: false } } };
  });
  const victim = await client(c, 2, { clientId: 'rogue-device' });
  const closed = new Promise<number>((resolve) => victim.once('disconnect', (p) => resolve(p.reasonCode ?? 0)));
  upsertBan(files[0] as string, { kind: 'client-id', value: 'rogue-device', reason: 'test' });
  (c.nodes[0] as InProcessNode).broker.reloadBans('portcullis ban');
  t.is(await closed, 0x98, 'the live connection on node c is ended (administrative action)');
  for (const node of [0, 1, 2]) {
    const code = await connackCode((c.nodes[node] as InProcessNode).port, { clientId: 'rogue-device' });
    t.is(code, 0x8a, `refused on node ${node}: ${code}`);
  }
});

test('failed logins on one node count on every node: the backoff engaged there holds here', async (t) => {
  const guard = { pair: { backoffAfter: 2, baseDelayMs: 5000, maxDelayMs: 5000 }, username: { enabled: false }, address: { checksPerSecond: 0 }, tarpit: { maxHoldMs: 100 } };
  const c = await cluster(t, 'guard', () => ({ listeners: [{ name: 'tcp', type: 'tcp', host: '127.0.0.1', port: 0, auth: [USERS] }], authGuard: guard }));
  const wrong = { clientId: 'guesser', username: 'victim', password: 'guess' };
  t.is(await connackCode((c.nodes[0] as InProcessNode).port, wrong), 0x86);
  t.is(await connackCode((c.nodes[0] as InProcessNode).port, wrong), 0x86);
  // Node c has the failures once it has read the broadcast stream past them: wait until they are
  // in the stream, then for a retained QoS 1 PUBACK written after them (it waits until every node
  // applied that entry), and see the retained message on c.
  const reader = new Redis(c.redis.url, { lazyConnect: true });
  t.teardown(() => reader.disconnect());
  await reader.connect();
  const inStream = async () => ((await reader.xrangeBuffer('{pc:guard}:ctl', '-', '+')) as [Buffer, Buffer[]][]).some(([, fields]) => fields.some((f) => f.includes('auth-failures')));
  t.true(await eventually(inStream, 5000), 'the failures reach the broadcast stream');
  const marker = await connect((c.nodes[0] as InProcessNode).port, { clientId: 'marker', username: 'writer', password: 'writer-pw' });
  c.clients.push(marker);
  await marker.publishAsync('guard/marker', 'after the failures', { qos: 1, retain: true });
  t.true(await eventually(async () => {
    let got = false;
    const probe = await connect((c.nodes[2] as InProcessNode).port, { clientId: 'probe', username: 'writer', password: 'writer-pw' }, () => (got = true));
    await probe.subscribeAsync('guard/marker', { qos: 1 });
    await delay(50);
    probe.end(true);
    return got;
  }, 5000), 'node c read the broadcast stream past the failures');
  // On node c, which saw no failure itself, the pair is throttled now: the attempt is refused without a check.
  t.is(await connackCode((c.nodes[2] as InProcessNode).port, wrong), 0x9f);
  const throttled = (c.nodes[2] as InProcessNode).audit.records.find((r) => r.event === 'connect' && r.reasonCode === 0x9f);
  t.truthy(throttled);
});

test('a per-identity rate limit holds across nodes: an identity publishing on two nodes at once gets its limit, not twice it', async (t) => {
  const rateLimits = { perIdentity: { messagesPerSecond: 10, burstMessages: 10 }, v5Action: 'reject' };
  const c = await cluster(t, 'rate', () => ({ listeners: [{ name: 'tcp', type: 'tcp', host: '127.0.0.1', port: 0, auth: [USERS] }], rateLimits }));
  // Raw v5 clients: each PUBACK's reason code is read as it is (0x00 or 0x10 accepted, 0x97 Quota exceeded: the rate-limit reject).
  const raws = await Promise.all([0, 1].map(async (node) => {
    const raw = await rawConnect((c.nodes[node] as InProcessNode).port);
    t.teardown(() => raw.socket.destroy());
    raw.write(encodeConnect({ clientId: `w${node}`, version: 5, username: 'writer', password: 'writer-pw' }));
    await waitForType(raw, PacketType.CONNACK);
    return raw;
  }));
  const started = Date.now();
  for (let i = 1; i <= 40; i++) {
    for (const raw of raws) raw.write(encodeRawPublish({ topic: 'rate/x', payload: 'x', qos: 1, packetId: i, version: 5 }));
    await delay(50);
  }
  const acks = await Promise.all(raws.map((raw) => waitForType(raw, PacketType.PUBACK, 40, 5000)));
  const seconds = (Date.now() - started) / 1000;
  const codes = acks.flat().map((p) => decodeAck(p).reasonCode);
  t.is(codes.length, 80);
  t.true(codes.every((x) => x === 0 || x === 0x10 || x === 0x97), JSON.stringify(codes));
  const accepted = codes.filter((x) => x !== 0x97).length;
  // One identity, 10/s with a burst of 10, over about 2 s: about 30 accepted in all. Two nodes
  // that did not share would accept about twice that (each its own burst and rate).
  const limit = 10 + 10 * seconds;
  t.true(accepted <= limit * 1.35, `accepted ${accepted} in ${seconds.toFixed(1)} s (limit about ${limit.toFixed(0)})`);
  t.true(accepted >= limit * 0.6, `accepted ${accepted} in ${seconds.toFixed(1)} s`);
});

test('$SYS shows each node\'s numbers under $SYS/broker/nodes/<id>/ and the cluster totals under $SYS/broker/', async (t) => {
  const c = await cluster(t, 'sys', () => ({ sys: { intervalSeconds: 1 } }));
  await client(c, 0, { clientId: 'x1' });
  await client(c, 1, { clientId: 'x2' });
  await client(c, 1, { clientId: 'x3' });
  const values = new Map<string, string>();
  const watcher = await client(c, 2, { clientId: 'sys-watch' }, (topic, p) => values.set(topic, p.toString()));
  await watcher.subscribeAsync('$SYS/broker/#', { qos: 0 });
  t.true(await eventually(() => values.get('$SYS/broker/clients/connected') === '4' && values.get('$SYS/broker/nodes/count') === '3', 5000), JSON.stringify([...values].filter(([k]) => k.includes('connected') || k.includes('count'))));
  t.is(values.get('$SYS/broker/nodes/a/clients/connected'), '1');
  t.is(values.get('$SYS/broker/nodes/b/clients/connected'), '2');
  t.is(values.get('$SYS/broker/nodes/c/clients/connected'), '1');
});
