/**
 * PUBLISH rate limits (rateLimits) over real loopback sockets: v5 PUBACK/PUBREC 0x97 (Quota
 * exceeded: MQTT 5 allows 0x96 only in DISCONNECT) and DISCONNECT 0x96, v3.1.1 throttling by backpressure (nothing lost) and disconnect, buckets
 * shared by every connection of one user and kept after the last one until it has refilled, and the bound on the
 * number of identity buckets.
 */
import test, { type ExecutionContext } from 'ava';
import { parseConfig, type ConfigInput } from '../src/index.ts';
import { delay, startBroker, type RawClient, type TestBroker } from './helpers.ts';
import { openClient, rawSession, until } from './limits-support.ts';
import { PacketType, decodeAck, encodePublish, encodePubrel, ofType, packetsOf, waitForType, type Version } from './raw-mqtt.ts';

const USERS = ['alice', 'bob', 'carol'].map((username) => ({ username, password: `${username}-pw` }));

async function broker(t: ExecutionContext, rateLimits: NonNullable<ConfigInput['rateLimits']>, extra: Partial<ConfigInput> = {}): Promise<TestBroker> {
  const b = await startBroker({
    listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users: USERS }, 'anonymous'] }],
    rateLimits,
    ...extra,
  });
  t.teardown(() => b.stop());
  return b;
}

/** Sends `n` QoS 1 PUBLISHes in one write, ids from `firstId`; resolves with the PUBACK reason codes by packet id order. */
async function publishBurst(r: RawClient, version: Version, topic: string, n: number, firstId = 1, payload = 'x'): Promise<number[]> {
  const before = ofType(packetsOf(r), PacketType.PUBACK).length;
  const parts: Buffer[] = [];
  for (let i = 0; i < n; i++) parts.push(encodePublish({ topic, payload, qos: 1, packetId: firstId + i, version }));
  r.write(Buffer.concat(parts));
  const acks = await waitForType(r, PacketType.PUBACK, before + n, 5000);
  return acks.slice(before).map((p) => decodeAck(p).reasonCode);
}

/** Accepted: 0x00, or 0x10 No matching subscribers; refusals are 0x80 and above. */
const accepted = (codes: number[]) => codes.filter((c) => c < 0x80).length;

test.serial('v5 reject: 30 QoS 1 at 1/s with a burst of 10: 10 get PUBACK 0 and are delivered, the rest PUBACK 0x97; QoS 0 over the limit is dropped; audited once', async (t) => {
  const b = await broker(t, { perClient: { messagesPerSecond: 1, burstMessages: 10 } });
  const sub = await openClient(t, b.port, { clientId: 'rl-sub', protocolVersion: 5 });
  await sub.client.subscribeAsync('rl/#', { qos: 1 });
  const { r } = await rawSession(t, b.port, { clientId: 'rl-pub', version: 5 });
  const codes = await publishBurst(r, 5, 'rl/q1', 30);
  const ok = accepted(codes);
  t.true(ok >= 10 && ok <= 11, `accepted ${ok}`);
  t.true(codes.every((c) => c === 0 || c === 0x97), JSON.stringify(codes));
  t.is(codes.filter((c) => c === 0x97).length, 30 - ok);
  t.true(await until(() => sub.messages.length >= ok));

  // QoS 2 over the limit: PUBREC 0x97, and the id is not held awaiting PUBREL.
  r.write(encodePublish({ topic: 'rl/q2', payload: 'q2', qos: 2, packetId: 500, version: 5 }));
  const [rec] = await waitForType(r, PacketType.PUBREC, 1, 6000);
  t.is(rec === undefined ? -1 : decodeAck(rec).reasonCode, 0x97);
  r.write(encodePubrel(500));
  const [comp] = await waitForType(r, PacketType.PUBCOMP, 1, 6000);
  t.is(comp === undefined ? -1 : decodeAck(comp).reasonCode, 0x92, 'PUBREL for a refused QoS 2 id: Packet Identifier not found');

  // QoS 0 over the limit: silently dropped (it has no acknowledgement).
  for (let i = 0; i < 5; i++) r.write(encodePublish({ topic: 'rl/q0', payload: 'q0', qos: 0, version: 5 }));
  await delay(300);
  t.is(sub.messages.length, ok, 'nothing over the limit was delivered');
  t.false(r.socket.destroyed, 'reject mode keeps the connection');
  t.true(b.broker.stats.publishesRateLimited >= 30 - ok + 1 + 5);
  const records = b.audit.records.filter((x) => x.event === 'publish' && x.action === 'rate-limit');
  t.is(records.length, 1, 'one audit record per episode, not one per message');
  t.is(records[0]?.reasonCode, 0x96, 'the record names the cause: message rate too high');
  t.is(records[0]?.clientId, 'rl-pub');

  // The bucket refills: after a second, publishes are accepted again.
  await delay(1100);
  const later = await publishBurst(r, 5, 'rl/q1', 1, 1000);
  t.deepEqual(later, [0]);
});

test.serial('v5 reject by bytes: 4,096 bytes/s lets four 1,004-byte messages through, the rest get PUBACK 0x97', async (t) => {
  const b = await broker(t, { perClient: { bytesPerSecond: 4096 } });
  const { r } = await rawSession(t, b.port, { clientId: 'rl-bytes', version: 5 });
  const codes = await publishBurst(r, 5, 'rb/t', 10, 1, 'p'.repeat(1000));
  const ok = accepted(codes);
  t.true(ok >= 4 && ok <= 5, `accepted ${ok}`);
  t.is(codes.filter((c) => c === 0x97).length, 10 - ok);
});

test.serial('v5 disconnect: over the limit the client gets DISCONNECT 0x96; only the burst is delivered; the disconnect is audited', async (t) => {
  const b = await broker(t, { perClient: { messagesPerSecond: 5 }, v5Action: 'disconnect' });
  const sub = await openClient(t, b.port, { clientId: 'rld-sub', protocolVersion: 5 });
  await sub.client.subscribeAsync('rld/#', { qos: 0 });
  const { r } = await rawSession(t, b.port, { clientId: 'rld-pub', version: 5 });
  const parts: Buffer[] = [];
  for (let i = 0; i < 20; i++) parts.push(encodePublish({ topic: 'rld/t', payload: `${i}`, qos: 0, version: 5 }));
  r.write(Buffer.concat(parts));
  t.true(await r.closed(3000));
  t.is(ofType(packetsOf(r), PacketType.DISCONNECT)[0]?.body[0], 0x96, 'Message rate too high');
  await delay(200);
  t.true(sub.messages.length >= 5 && sub.messages.length <= 6, `delivered ${sub.messages.length}`);
  const record = b.audit.records.find((x) => x.event === 'disconnect' && x.action === 'rate-limit');
  t.is(record?.reasonCode, 0x96);
  t.is(record?.clientId, 'rld-pub');
  t.is(b.broker.connectedClients, 1, 'the subscriber is still connected');
});

test.serial('v3.1.1 throttle: 100 QoS 1 at 50/s (burst 10) take about 1.8 s, all are acknowledged and delivered, and the client stays connected', async (t) => {
  const b = await broker(t, { perClient: { messagesPerSecond: 50, burstMessages: 10 } });
  const sub = await openClient(t, b.port, { clientId: 'rlt-sub', protocolVersion: 4 });
  await sub.client.subscribeAsync('rlt/t', { qos: 1 });
  const pub = await openClient(t, b.port, { clientId: 'rlt-pub', protocolVersion: 4 });
  let closed = false;
  pub.client.on('close', () => (closed = true));
  const started = Date.now();
  await Promise.all(Array.from({ length: 100 }, (_, i) => pub.client.publishAsync('rlt/t', `${i}`, { qos: 1 })));
  const elapsed = Date.now() - started;
  t.true(elapsed >= 1500, `throughput is capped: 100 messages took ${elapsed} ms`);
  t.true(elapsed <= 4000, `and stays near the configured rate: ${elapsed} ms`);
  t.true(await until(() => sub.messages.length >= 100));
  t.deepEqual(
    sub.messages.map((m) => Number(m.payload.toString())),
    Array.from({ length: 100 }, (_, i) => i),
    'no QoS 1 message lost or reordered',
  );
  t.false(closed, 'throttling never disconnects');
  t.true(b.broker.stats.connectionsThrottled >= 1);
  t.is(b.broker.stats.publishesRateLimited, 0, 'nothing refused');
});

test.serial('v5 throttle: 30 QoS 1 at 20/s (burst 5) are all acknowledged with 0x00 and delivered, held to the rate, no 0x96', async (t) => {
  const b = await broker(t, { perClient: { messagesPerSecond: 20, burstMessages: 5 }, v5Action: 'throttle' });
  const sub = await openClient(t, b.port, { clientId: 'rl5t-sub', protocolVersion: 5 });
  await sub.client.subscribeAsync('rl5t/t', { qos: 1 });
  const { r } = await rawSession(t, b.port, { clientId: 'rl5t-pub', version: 5 });
  const started = Date.now();
  const codes = await publishBurst(r, 5, 'rl5t/t', 30);
  const elapsed = Date.now() - started;
  t.deepEqual(codes, Array(30).fill(0));
  t.true(elapsed >= 1000 && elapsed <= 3500, `30 messages at 20/s after a burst of 5 took ${elapsed} ms`);
  t.true(await until(() => sub.messages.length === 30));
  t.false(r.socket.destroyed);
});

test.serial('throttle: a pause longer than the keep-alive does not end the connection (the broker, not the client, stopped reading)', async (t) => {
  const b = await broker(t, { perClient: { bytesPerSecond: 1000 } });
  const { r } = await rawSession(t, b.port, { clientId: 'rl-ka', version: 4, keepAlive: 1 });
  r.write(encodePublish({ topic: 'ka/t', payload: Buffer.alloc(3000), qos: 1, packetId: 1, version: 4 })); // 3 s of debt
  r.write(encodePublish({ topic: 'ka/t', payload: 'next', qos: 1, packetId: 2, version: 4 }));
  const started = Date.now();
  const acks = await waitForType(r, PacketType.PUBACK, 2, 6000);
  t.is(acks.length, 2, 'both acknowledged');
  t.true(Date.now() - started >= 2000, 'the second waited for the bucket');
  t.false(r.socket.destroyed);
  t.is(b.broker.connectedClients, 1, 'not cut off by keep-alive (1.5 s) during the 3 s pause');
});

test.serial('v3.1.1 throttle does not hold up other clients: a second publisher is served at once', async (t) => {
  const b = await broker(t, { perClient: { messagesPerSecond: 20, burstMessages: 5 } });
  const sub = await openClient(t, b.port, { clientId: 'rlo-sub', protocolVersion: 4 });
  await sub.client.subscribeAsync('rlo/#', { qos: 1 });
  const slow = await openClient(t, b.port, { clientId: 'rlo-slow', protocolVersion: 4 });
  const flood = Promise.all(Array.from({ length: 60 }, (_, i) => slow.client.publishAsync('rlo/slow', `${i}`, { qos: 1 })));
  await delay(200);
  const other = await openClient(t, b.port, { clientId: 'rlo-other', protocolVersion: 4 });
  const started = Date.now();
  await other.client.publishAsync('rlo/other', 'hi', { qos: 1 });
  t.true(Date.now() - started < 1000, 'the other publisher is acknowledged at once');
  await flood;
  t.true(await until(() => sub.messages.length >= 61));
});

test.serial('v3.1.1 disconnect: over the limit the connection is closed (no DISCONNECT in v3.1.1) after the burst was acknowledged', async (t) => {
  const b = await broker(t, { perClient: { messagesPerSecond: 5 }, v3Action: 'disconnect' });
  const { r } = await rawSession(t, b.port, { clientId: 'rl3d', version: 4 });
  const parts: Buffer[] = [];
  for (let i = 0; i < 20; i++) parts.push(encodePublish({ topic: 'rl3d/t', payload: 'x', qos: 1, packetId: i + 1, version: 4 }));
  r.write(Buffer.concat(parts));
  t.true(await r.closed(3000));
  const acks = ofType(packetsOf(r), PacketType.PUBACK);
  t.true(acks.length >= 5 && acks.length <= 6, `acknowledged ${acks.length}`);
  t.is(ofType(packetsOf(r), PacketType.DISCONNECT).length, 0);
  t.is(b.audit.records.find((x) => x.event === 'disconnect' && x.action === 'rate-limit')?.clientId, 'rl3d');
});

test.serial('per identity: two connections of one user share one bucket, another user has its own, and reconnecting does not buy a fresh burst', async (t) => {
  const b = await broker(t, { perIdentity: { messagesPerSecond: 2, burstMessages: 20 } });
  const a1 = await rawSession(t, b.port, { clientId: 'alice-1', version: 5, username: 'alice', password: 'alice-pw' });
  const a2 = await rawSession(t, b.port, { clientId: 'alice-2', version: 5, username: 'alice', password: 'alice-pw' });
  const bob = await rawSession(t, b.port, { clientId: 'bob-1', version: 5, username: 'bob', password: 'bob-pw' });
  t.is(a1.connack?.code, 0);
  t.is(a2.connack?.code, 0);
  const first = await publishBurst(a1.r, 5, 'id/a', 15);
  const second = await publishBurst(a2.r, 5, 'id/a', 15);
  const total = accepted(first) + accepted(second);
  t.is(accepted(first), 15);
  t.true(total >= 20 && total <= 22, `alice's two connections together got ${total} of 30 through a 20-message bucket`);
  t.is(accepted(await publishBurst(bob.r, 5, 'id/b', 15)), 15, 'bob has his own bucket');

  // Anonymous clients have no identity bucket and no per-client one is configured.
  const anon = await rawSession(t, b.port, { clientId: 'anon-1', version: 5 });
  t.is(accepted(await publishBurst(anon.r, 5, 'id/anon', 40)), 40);

  a1.r.socket.destroy();
  a2.r.socket.destroy();
  t.true(await until(() => b.broker.connectedClients === 2));
  const a3 = await rawSession(t, b.port, { clientId: 'alice-3', version: 5, username: 'alice', password: 'alice-pw' });
  // The bucket outlives the connections until it has refilled: a reconnect finds it empty.
  t.true(accepted(await publishBurst(a3.r, 5, 'id/a', 20)) <= 4, 'no fresh burst after closing and reconnecting');
});

test.serial('rateLimits.maxIdentities 1: identities beyond the cap share one overflow bucket', async (t) => {
  const b = await broker(t, { perIdentity: { messagesPerSecond: 10 }, maxIdentities: 1 });
  const alice = await rawSession(t, b.port, { clientId: 'cap-alice', version: 5, username: 'alice', password: 'alice-pw' });
  const bob = await rawSession(t, b.port, { clientId: 'cap-bob', version: 5, username: 'bob', password: 'bob-pw' });
  const carol = await rawSession(t, b.port, { clientId: 'cap-carol', version: 5, username: 'carol', password: 'carol-pw' });
  t.is(accepted(await publishBurst(bob.r, 5, 'cap/b', 10)), 10);
  t.true(accepted(await publishBurst(carol.r, 5, 'cap/c', 5)) <= 1, 'carol shares the overflow bucket bob emptied');
  t.is(accepted(await publishBurst(alice.r, 5, 'cap/a', 10)), 10, 'alice holds her own bucket');
});

test.serial('bad rateLimits values are configuration errors naming the key', (t) => {
  for (const [rateLimits, key] of [
    [{ perClient: { burstMessages: 10 } }, 'rateLimits.perClient.burstMessages'],
    [{ perIdentity: { bytesPerSecond: -1 } }, 'rateLimits.perIdentity.bytesPerSecond'],
    [{ v3Action: 'reject' }, 'rateLimits.v3Action'],
    [{ perClient: { messagesPerSecond: 1.5 } }, 'rateLimits.perClient.messagesPerSecond'],
    [{ maxIdentities: 0 }, 'rateLimits.maxIdentities'],
  ] as const) {
    const error = t.throws(() => parseConfig({ rateLimits } as never));
    t.is((error as { code?: string }).code, 'ERR_PORTCULLIS_CONFIG');
    t.true((error as { issues?: { key: string }[] }).issues?.some((i) => i.key === key), `${key}: ${error?.message}`);
  }
});
