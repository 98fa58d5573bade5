/**
 * Limits an authenticated client meets, over real loopback sockets: the QoS 2 awaiting-PUBREL
 * set (CVE-2023-28366 class), subscriptions per client, the client id length, user properties
 * (CVE-2021-41039 class) and the per-session queue in messages and bytes. Each test also checks
 * that the broker keeps serving other clients.
 */
import test, { type ExecutionContext } from 'ava';
import { MemoryStore, type ConfigInput } from '../src/index.ts';
import { connect, delay, nextMessages, startBroker, type TestBroker } from './helpers.ts';
import {
  connectWithUserProperties,
  openClient,
  publishWithUserProperties,
  rawSession,
  subackCodes,
  subscribeWithUserProperties,
  unsubscribeWithUserProperties,
  until,
} from './limits-support.ts';
import { PacketType, decodeAck, encodeConnect, encodePublish, encodePubrel, encodeSubscribe, ofType, packetsOf, waitForPackets, waitForType, type Version } from './raw-mqtt.ts';

const rssAtStart = new Map<number, number>();
const MiB = 1024 * 1024;

async function broker(t: ExecutionContext, config: Partial<ConfigInput> = {}, store?: MemoryStore): Promise<TestBroker> {
  const b = await startBroker(config, store === undefined ? {} : { store });
  t.teardown(() => b.stop());
  rssAtStart.set(b.port, process.memoryUsage().rss);
  return b;
}

/**
 * Another client can still subscribe, publish and receive: the broker is up and serving. Also a
 * generous bound on this process's RSS growth since the broker started (the tests of this file
 * run side by side in one process, so it is a guard against runaway growth, not a measurement;
 * test/slow-consumer.test.ts measures a broker alone).
 */
async function assertServing(t: ExecutionContext, port: number, tag: string): Promise<void> {
  const grown = (process.memoryUsage().rss - (rssAtStart.get(port) ?? 0)) / MiB;
  t.true(grown < 256, `RSS grew by ${grown.toFixed(0)} MiB`);
  const c = await connect(port, { clientId: `alive-${tag}` });
  try {
    await c.subscribeAsync(`alive/${tag}`, { qos: 1 });
    const got = nextMessages(c, 1);
    await c.publishAsync(`alive/${tag}`, 'still here', { qos: 1 });
    const [m] = await got;
    t.is(m?.payload, 'still here', 'another client is still served');
  } finally {
    c.end(true);
  }
}

const vname = (v: Version) => (v === 5 ? 'v5' : 'v3.1.1');

// ── QoS 2: the awaiting-PUBREL set ───────────────────────────────────────────

for (const v of [4, 5] as const) {
  test.serial(`${vname(v)}: 5,000 QoS 2 PUBLISHes reusing one packet id without PUBREL are delivered once, each answered with PUBREC, and the connection stays up`, async (t) => {
    const b = await broker(t);
    const sub = await openClient(t, b.port, { clientId: `reuse-sub-${v}`, protocolVersion: v });
    await sub.client.subscribeAsync('reuse/t', { qos: 2 });
    const { r, connack } = await rawSession(t, b.port, { clientId: `reuse-pub-${v}`, version: v });
    t.is(connack?.code, 0);
    const burst: Buffer[] = [];
    for (let i = 0; i < 5000; i++) burst.push(encodePublish({ topic: 'reuse/t', payload: `copy ${i}`, qos: 2, packetId: 7, dup: i > 0, version: v }));
    r.write(Buffer.concat(burst));
    const recs = await waitForType(r, PacketType.PUBREC, 5000, 10_000);
    t.is(recs.length, 5000, 'every re-send is acknowledged again with PUBREC');
    t.true(recs.every((p) => decodeAck(p).packetId === 7 && decodeAck(p).reasonCode === 0));
    t.true(await until(() => sub.messages.length >= 1));
    await delay(300);
    t.deepEqual(
      sub.messages.map((m) => m.payload.toString()),
      ['copy 0'],
      'routed once: re-sends while awaiting PUBREL are not delivered again [MQTT-4.3.3-10]',
    );
    // Releasing the id ends the flow; the id can then carry a new message.
    r.write(encodePubrel(7));
    const [comp] = await waitForType(r, PacketType.PUBCOMP, 1, 6000);
    t.is(comp === undefined ? -1 : decodeAck(comp).reasonCode, 0);
    r.write(encodePublish({ topic: 'reuse/t', payload: 'next', qos: 2, packetId: 7, version: v }));
    t.true(await until(() => sub.messages.length === 2));
    t.is(sub.messages[1]?.payload.toString(), 'next');
    t.false(r.socket.destroyed);
    await assertServing(t, b.port, `reuse-${v}`);
  });
}

test.serial('v5: 3,000 QoS 2 packet ids without PUBREL: the first 64 (receiveMaximum) are delivered, the 65th gets DISCONNECT 0x93', async (t) => {
  const b = await broker(t);
  const sub = await openClient(t, b.port, { clientId: 'noprel-sub-5', protocolVersion: 5 });
  await sub.client.subscribeAsync('noprel/t', { qos: 2 });
  const { r } = await rawSession(t, b.port, { clientId: 'noprel-pub-5', version: 5 });
  const burst: Buffer[] = [];
  for (let id = 1; id <= 3000; id++) burst.push(encodePublish({ topic: 'noprel/t', payload: `m${id}`, qos: 2, packetId: id, version: 5 }));
  r.write(Buffer.concat(burst));
  t.true(await r.closed(5000), 'the broker closes the connection');
  const packets = packetsOf(r);
  t.is(ofType(packets, PacketType.PUBREC).length, 64);
  const disconnect = ofType(packets, PacketType.DISCONNECT)[0];
  t.is(disconnect?.body[0], 0x93, 'Receive Maximum exceeded [MQTT-3.3.4-9]');
  t.true(await until(() => sub.messages.length >= 64));
  await delay(200);
  t.is(sub.messages.length, 64, 'nothing past the limit is delivered');
  await assertServing(t, b.port, 'noprel-5');
});

test.serial('v3.1.1: 3,000 QoS 2 packet ids without PUBREL: the first 64 are delivered, then the connection is closed (no DISCONNECT in v3.1.1)', async (t) => {
  const b = await broker(t);
  const sub = await openClient(t, b.port, { clientId: 'noprel-sub-4', protocolVersion: 4 });
  await sub.client.subscribeAsync('noprel/t', { qos: 2 });
  const { r } = await rawSession(t, b.port, { clientId: 'noprel-pub-4', version: 4 });
  const burst: Buffer[] = [];
  for (let id = 1; id <= 3000; id++) burst.push(encodePublish({ topic: 'noprel/t', payload: `m${id}`, qos: 2, packetId: id, version: 4 }));
  r.write(Buffer.concat(burst));
  t.true(await r.closed(5000));
  const packets = packetsOf(r);
  t.is(ofType(packets, PacketType.PUBREC).length, 64);
  t.is(ofType(packets, PacketType.DISCONNECT).length, 0);
  await delay(200);
  t.is(sub.messages.length, 64);
  const refusal = b.audit.records.filter((x) => x.clientId === 'noprel-pub-4' && x.event === 'connect' && x.decision === 'allow');
  t.is(refusal.length, 1, 'the client had been admitted: this is a post-authentication limit');
  await assertServing(t, b.port, 'noprel-4');
});

test.serial('limits.receiveMaximum 8 caps unreleased QoS 2 for v3.1.1 too: the 9th is refused by closing the connection', async (t) => {
  const b = await broker(t, { limits: { receiveMaximum: 8 } });
  const { r } = await rawSession(t, b.port, { clientId: 'noprel-cap-4', version: 4 });
  for (let id = 1; id <= 9; id++) r.write(encodePublish({ topic: 'noprel/cap', payload: 'x', qos: 2, packetId: id, version: 4 }));
  t.true(await r.closed(6000));
  t.is(ofType(packetsOf(r), PacketType.PUBREC).length, 8);
});

// ── subscriptions per client ─────────────────────────────────────────────────

for (const v of [4, 5] as const) {
  test.serial(`${vname(v)}: one SUBSCRIBE with 10,000 filters: the first 1,000 (maxSubscriptionsPerClient) are granted, the rest get ${v === 5 ? '0x97' : '0x80'}`, async (t) => {
    const b = await broker(t);
    const { r } = await rawSession(t, b.port, { clientId: `subs-${v}`, version: v });
    const filters = Array.from({ length: 10_000 }, (_, i) => ({ topic: `many/${i}`, qos: 1 as const }));
    r.write(encodeSubscribe({ packetId: 1, filters, version: v }));
    const [suback] = await waitForType(r, PacketType.SUBACK, 1, 15_000);
    t.truthy(suback);
    const codes = subackCodes(suback?.body ?? Buffer.alloc(2), v === 5);
    t.is(codes.length, 10_000, 'one code per filter');
    t.true(codes.slice(0, 1000).every((c) => c === 1));
    t.true(codes.slice(1000).every((c) => c === (v === 5 ? 0x97 : 0x80)), 'Quota exceeded (v5) / Failure (v3.1.1)');
    const denials = b.audit.records.filter((x) => x.clientId === `subs-${v}` && x.event === 'subscribe' && x.decision === 'deny');
    t.is(denials.length, 9000);
    t.is(denials[0]?.reasonCode, 0x97);
    // A granted subscription works; one past the limit does not.
    const pub = await connect(b.port, { clientId: `subs-pub-${v}` });
    t.teardown(() => pub.end(true));
    await pub.publishAsync('many/999', 'in', { qos: 1 });
    await pub.publishAsync('many/1000', 'out', { qos: 1 });
    const got = await waitForPackets(r, (ps) => ofType(ps, PacketType.PUBLISH).length >= 1, 6000);
    await delay(200);
    t.is(ofType(packetsOf(r), PacketType.PUBLISH).length, 1);
    t.true(ofType(got, PacketType.PUBLISH)[0]?.body.includes(Buffer.from('many/999')));
    t.false(r.socket.destroyed);
    await assertServing(t, b.port, `subs-${v}`);
  });
}

test.serial('v5: 20 SUBSCRIBEs of 500 filters each: once 1,000 are held every further filter gets 0x97, re-subscribing a held filter still succeeds', async (t) => {
  const b = await broker(t);
  const { r } = await rawSession(t, b.port, { clientId: 'subs-many', version: 5 });
  for (let p = 0; p < 20; p++) {
    const filters = Array.from({ length: 500 }, (_, i) => ({ topic: `batch/${p}/${i}`, qos: 0 as const }));
    r.write(encodeSubscribe({ packetId: p + 1, filters, version: 5 }));
  }
  const subacks = await waitForType(r, PacketType.SUBACK, 20, 15_000);
  t.is(subacks.length, 20);
  const codes = subacks.flatMap((s) => subackCodes(s.body, true));
  t.is(codes.filter((c) => c === 0).length, 1000);
  t.is(codes.filter((c) => c === 0x97).length, 9000);
  r.write(encodeSubscribe({ packetId: 21, filters: [{ topic: 'batch/0/0', qos: 1 }], version: 5 }));
  const again = await waitForType(r, PacketType.SUBACK, 21, 6000);
  t.deepEqual(subackCodes(again[20]?.body ?? Buffer.alloc(3), true), [1], 'replacing an existing subscription does not count as a new one');
  await assertServing(t, b.port, 'subs-many');
});

// ── client id length ─────────────────────────────────────────────────────────

for (const v of [4, 5] as const) {
  test.serial(`${vname(v)}: a 65,535-byte client id is refused with ${v === 5 ? 'CONNACK 0x85' : 'CONNACK return code 2'} (maxConnectSize raised so the CONNECT is read)`, async (t) => {
    const b = await broker(t, { limits: { maxConnectSize: 128 * 1024 } });
    const { r, connack } = await rawSession(t, b.port, { clientId: 'x'.repeat(65_535), version: v });
    t.is(connack?.code, v === 5 ? 0x85 : 2);
    t.true(await r.closed(6000));
    const denial = b.audit.records.find((x) => x.event === 'connect' && x.decision === 'deny');
    t.is(denial?.reasonCode, 0x85);
    await assertServing(t, b.port, `cid-${v}`);
  });
}

test.serial('v5: with the default limits a 65,535-byte client id is over maxConnectSize: closed before any CONNACK or authentication', async (t) => {
  const b = await broker(t);
  const { r, connack } = await rawSession(t, b.port, { clientId: 'y'.repeat(65_535), version: 5 });
  t.is(connack, undefined);
  t.true(await r.closed(6000));
  t.is(b.audit.records.filter((x) => x.event === 'connect').length, 0, 'never reached authentication');
  await assertServing(t, b.port, 'cid-default');
});

test.serial('a client id of exactly maxClientIdLength bytes is accepted, one byte more gets CONNACK 0x85', async (t) => {
  const b = await broker(t, { limits: { maxClientIdLength: 64 } });
  const ok = await rawSession(t, b.port, { clientId: 'a'.repeat(64), version: 5 });
  t.is(ok.connack?.code, 0);
  const bad = await rawSession(t, b.port, { clientId: 'a'.repeat(65), version: 5 });
  t.is(bad.connack?.code, 0x85);
});

// ── topic length and depth ───────────────────────────────────────────────────

const longTopic = 'a'.repeat(65);
const deepTopic = Array(9).fill('l').join('/');

for (const [what, topic] of [
  ['longer than maxTopicLength (64)', longTopic],
  ['deeper than maxTopicLevels (8)', deepTopic],
] as const) {
  test.serial(`v5: a PUBLISH topic ${what} gets DISCONNECT 0x90 and is not delivered; v3.1.1 is closed`, async (t) => {
    const b = await broker(t, { limits: { maxTopicLength: 64, maxTopicLevels: 8 } });
    const sub = await openClient(t, b.port, { clientId: `tl-sub-${topic.length}`, protocolVersion: 5 });
    await sub.client.subscribeAsync('#', { qos: 1 });
    const v5 = await rawSession(t, b.port, { clientId: `tl5-${topic.length}`, version: 5 });
    v5.r.write(encodePublish({ topic, payload: 'x', qos: 1, packetId: 1, version: 5 }));
    t.true(await v5.r.closed(6000));
    t.is(ofType(packetsOf(v5.r), PacketType.DISCONNECT)[0]?.body[0], 0x90);
    const v3 = await rawSession(t, b.port, { clientId: `tl4-${topic.length}`, version: 4 });
    v3.r.write(encodePublish({ topic, payload: 'x', qos: 1, packetId: 1, version: 4 }));
    t.true(await v3.r.closed(6000));
    t.is(ofType(packetsOf(v3.r), PacketType.PUBACK).length, 0);
    await delay(200);
    t.is(sub.messages.length, 0);
  });

  test.serial(`a SUBSCRIBE filter ${what} gets SUBACK 0x8F for that filter (v3.1.1: 0x80), the other filters are granted`, async (t) => {
    const b = await broker(t, { limits: { maxTopicLength: 64, maxTopicLevels: 8 } });
    for (const v of [4, 5] as const) {
      const { r } = await rawSession(t, b.port, { clientId: `tf${v}-${topic.length}`, version: v });
      r.write(encodeSubscribe({ packetId: 1, filters: [{ topic: 'ok/t', qos: 1 }, { topic, qos: 1 }], version: v }));
      const [suback] = await waitForType(r, PacketType.SUBACK, 1, 6000);
      t.deepEqual(subackCodes(suback?.body ?? Buffer.alloc(3), v === 5), [1, v === 5 ? 0x8f : 0x80]);
    }
  });

  test.serial(`a will topic ${what} gets CONNACK 0x90 (v5); v3.1.1 is closed without CONNACK`, async (t) => {
    const b = await broker(t, { limits: { maxTopicLength: 64, maxTopicLevels: 8 } });
    const v5 = await rawSession(t, b.port, { clientId: `tw5-${topic.length}`, version: 5, will: { topic, payload: 'bye' } });
    t.is(v5.connack?.code, 0x90);
    const v3 = await rawSession(t, b.port, { clientId: `tw4-${topic.length}`, version: 4, will: { topic, payload: 'bye' } });
    t.is(v3.connack, undefined);
    t.true(await v3.r.closed(6000));
  });
}

// ── user properties ──────────────────────────────────────────────────────────

test.serial('v5: a PUBLISH with 10,000 user properties gets DISCONNECT 0x83 and is not delivered', async (t) => {
  const b = await broker(t);
  const sub = await openClient(t, b.port, { clientId: 'up-sub', protocolVersion: 5 });
  await sub.client.subscribeAsync('up/t', { qos: 1 });
  const { r } = await rawSession(t, b.port, { clientId: 'up-pub', version: 5 });
  r.write(publishWithUserProperties('up/t', 1, 10_000));
  t.true(await r.closed(6000));
  const packets = packetsOf(r);
  t.is(ofType(packets, PacketType.DISCONNECT)[0]?.body[0], 0x83);
  t.is(ofType(packets, PacketType.PUBACK).length, 0);
  await delay(200);
  t.is(sub.messages.length, 0);
  await assertServing(t, b.port, 'up-pub');
});

test.serial('v5: a PUBLISH with exactly maxUserProperties (32) user properties is delivered', async (t) => {
  const b = await broker(t);
  const sub = await openClient(t, b.port, { clientId: 'up-sub-ok', protocolVersion: 5 });
  await sub.client.subscribeAsync('up/ok', { qos: 1 });
  const { r } = await rawSession(t, b.port, { clientId: 'up-pub-ok', version: 5 });
  r.write(publishWithUserProperties('up/ok', 1, 32));
  const [ack] = await waitForType(r, PacketType.PUBACK, 1, 6000);
  t.is(ack === undefined ? -1 : decodeAck(ack).reasonCode, 0);
  t.true(await until(() => sub.messages.length === 1));
});

for (const where of ['connect', 'will'] as const) {
  test.serial(`v5: a CONNECT with 5,000 user properties in its ${where === 'connect' ? 'own properties' : 'will properties'} gets CONNACK 0x83 and is audited`, async (t) => {
    const b = await broker(t);
    const { r, connack } = await rawSession(t, b.port, connectWithUserProperties(`up-${where}`, 5000, where));
    t.is(connack?.code, 0x83);
    t.true(await r.closed(6000));
    const denial = b.audit.records.find((x) => x.event === 'connect' && x.clientId === `up-${where}`);
    t.is(denial?.decision, 'deny');
    t.is(denial?.reasonCode, 0x83);
    await assertServing(t, b.port, `up-${where}`);
  });
}

test.serial('v5: a SUBSCRIBE with 5,000 user properties gets DISCONNECT 0x83, no SUBACK, and no subscription', async (t) => {
  const b = await broker(t);
  const { r } = await rawSession(t, b.port, { clientId: 'up-subscribe', version: 5, clean: false, properties: { sessionExpiryInterval: 60 } });
  r.write(subscribeWithUserProperties('up/sub', 1, 5000));
  t.true(await r.closed(6000));
  t.is(ofType(packetsOf(r), PacketType.DISCONNECT)[0]?.body[0], 0x83);
  t.is(ofType(packetsOf(r), PacketType.SUBACK).length, 0);
  // The session survives (expiry 60 s): it must hold no subscription.
  const back = await rawSession(t, b.port, { clientId: 'up-subscribe', version: 5, clean: false, properties: { sessionExpiryInterval: 60 } });
  const pub = await connect(b.port, { clientId: 'up-subscribe-pub' });
  t.teardown(() => pub.end(true));
  await pub.publishAsync('up/sub', 'x', { qos: 1 });
  await delay(300);
  t.is(ofType(packetsOf(back.r), PacketType.PUBLISH).length, 0);
});

test.serial('v5: an UNSUBSCRIBE with 5,000 user properties gets DISCONNECT 0x83', async (t) => {
  const b = await broker(t);
  const { r } = await rawSession(t, b.port, { clientId: 'up-unsub', version: 5 });
  r.write(unsubscribeWithUserProperties('up/x', 1, 5000));
  t.true(await r.closed(6000));
  t.is(ofType(packetsOf(r), PacketType.DISCONNECT)[0]?.body[0], 0x83);
  t.is(ofType(packetsOf(r), PacketType.UNSUBACK).length, 0);
});

// ── the per-session queue ────────────────────────────────────────────────────

const persistent5 = (clientId: string) => ({ clientId, protocolVersion: 5 as const, clean: false, properties: { sessionExpiryInterval: 300 } });

test.serial('limits.maxQueuedMessages 5: QoS 0 is dropped first, QoS 1 is never dropped once queued, and refused QoS 1 is counted, audited and in $SYS', async (t) => {
  const b = await broker(t, { limits: { maxQueuedMessages: 5, queueQos0: true }, sys: { intervalSeconds: 1 } });
  const s = await openClient(t, b.port, persistent5('q-count'));
  await s.client.subscribeAsync('q/count', { qos: 1 });
  await s.client.endAsync();
  const pub = await openClient(t, b.port, { clientId: 'q-count-pub', protocolVersion: 5 });
  const sent = ['q0-a', 'q0-b', 'q0-c', 'q1-a', 'q1-b', 'q1-c', 'q1-d', 'q1-e', 'q1-f', 'q1-g', 'q0-late'];
  for (const payload of sent) await pub.client.publishAsync('q/count', payload, { qos: payload.startsWith('q0') ? 0 : 1 });
  await delay(100);

  const stats = b.broker.stats;
  t.is(stats.queueDroppedQos0, 4, 'q0-a..c evicted by QoS 1, q0-late dropped on arrival');
  t.is(stats.queueRefusedQos12, 2, 'q1-f and q1-g refused: the queue held only acknowledged QoS 1');
  const refusal = b.audit.records.find((x) => x.event === 'deliver' && x.action === 'queue-full');
  t.is(refusal?.decision, 'deny');
  t.is(refusal?.reasonCode, 0x97);
  t.is(refusal?.clientId, 'q-count');
  // The second refusal came within the same second: the sweep records it shortly after, so every refusal is audited.
  const refusedInRecords = () =>
    b.audit.records.filter((x) => x.action === 'queue-full' && x.clientId === 'q-count').reduce((n, x) => n + Number(x.detail?.refusedSinceLastRecord ?? 0), 0);
  t.true(await until(() => refusedInRecords() === 2, 3000), `refusals in audit records: ${refusedInRecords()}`);

  const back = await openClient(t, b.port, persistent5('q-count'));
  t.true(await until(() => back.messages.length >= 5));
  await delay(300);
  t.deepEqual(
    back.messages.map((m) => m.payload.toString()),
    ['q1-a', 'q1-b', 'q1-c', 'q1-d', 'q1-e'],
  );

  const watcher = await openClient(t, b.port, { clientId: 'q-count-sys', protocolVersion: 5 });
  await watcher.client.subscribeAsync('$SYS/broker/messages/dropped/#', { qos: 0 });
  const values = new Map<string, string>();
  t.true(
    await until(() => {
      for (const m of watcher.messages) values.set(m.topic, m.payload.toString());
      return values.get('$SYS/broker/messages/dropped/queue-qos0') === '4' && values.get('$SYS/broker/messages/dropped/queue-refused-qos12') === '2';
    }, 4000),
    `drop counters visible in $SYS: ${JSON.stringify([...values])}`,
  );
});

test.serial('limits.maxQueuedBytes 1024: only the QoS 1 messages that fit in the byte budget are queued; the rest are refused and counted', async (t) => {
  const b = await broker(t, { limits: { maxQueuedBytes: 1024 } });
  const s = await openClient(t, b.port, persistent5('q-bytes'));
  await s.client.subscribeAsync('q/bytes', { qos: 1 });
  await s.client.endAsync();
  const pub = await openClient(t, b.port, { clientId: 'q-bytes-pub', protocolVersion: 5 });
  for (let i = 1; i <= 5; i++) await pub.client.publishAsync('q/bytes', `${i}`.padEnd(300, '.'), { qos: 1 }); // 307 bytes each with the topic
  t.is(b.broker.stats.queueRefusedQos12, 2, '3 × 307 fit in 1024, the 4th and 5th do not');

  const back = await openClient(t, b.port, persistent5('q-bytes'));
  t.true(await until(() => back.messages.length >= 3));
  await delay(300);
  t.deepEqual(
    back.messages.map((m) => m.payload.toString()[0]),
    ['1', '2', '3'],
  );
});

test.serial('limits.maxQueuedBytes: a queued QoS 1 message evicts queued QoS 0 messages to make room in bytes', async (t) => {
  const b = await broker(t, { limits: { maxQueuedBytes: 1024, queueQos0: true } });
  const s = await openClient(t, b.port, persistent5('q-bytes0'));
  await s.client.subscribeAsync('q/b0', { qos: 1 });
  await s.client.endAsync();
  const pub = await openClient(t, b.port, { clientId: 'q-bytes0-pub', protocolVersion: 5 });
  for (const p of ['a', 'b', 'c']) await pub.client.publishAsync('q/b0', p.padEnd(300, '0'), { qos: 0 });
  await pub.client.publishAsync('q/b0', 'Q'.padEnd(600, '1'), { qos: 1 });
  await delay(100);
  t.is(b.broker.stats.queueDroppedQos0, 2, 'two 304-byte QoS 0 messages made room for the 604-byte QoS 1 one');
  t.is(b.broker.stats.queueRefusedQos12, 0);
  const back = await openClient(t, b.port, persistent5('q-bytes0'));
  t.true(await until(() => back.messages.length >= 2));
  await delay(300);
  t.deepEqual(
    back.messages.map((m) => m.payload.toString()[0]),
    ['c', 'Q'],
  );
});

test.serial('a message larger than maxQueuedBytes is still queued when the queue is empty, so no size is undeliverable', async (t) => {
  const b = await broker(t, { limits: { maxQueuedBytes: 1024 } });
  const s = await openClient(t, b.port, persistent5('q-big'));
  await s.client.subscribeAsync('q/big', { qos: 1 });
  await s.client.endAsync();
  const pub = await openClient(t, b.port, { clientId: 'q-big-pub', protocolVersion: 5 });
  await pub.client.publishAsync('q/big', Buffer.alloc(4096, 7), { qos: 1 });
  await pub.client.publishAsync('q/big', 'second', { qos: 1 });
  t.is(b.broker.stats.queueRefusedQos12, 1, 'the second does not fit behind it');
  const back = await openClient(t, b.port, persistent5('q-big'));
  t.true(await until(() => back.messages.length >= 1));
  await delay(300);
  t.deepEqual(back.messages.map((m) => m.payload.length), [4096]);
});

test.serial('after a restart with the same store, the queue holds what it held before: an evicted QoS 0 message does not come back, QoS 1 is kept', async (t) => {
  const store = new MemoryStore();
  const config: Partial<ConfigInput> = { limits: { maxQueuedMessages: 2, queueQos0: true } };
  const b1 = await startBroker(config, { store });
  t.teardown(() => b1.stop());
  const s = await openClient(t, b1.port, persistent5('q-restart'));
  await s.client.subscribeAsync('q/restart', { qos: 1 });
  await s.client.endAsync();
  const pub = await openClient(t, b1.port, { clientId: 'q-restart-pub', protocolVersion: 5 });
  await pub.client.publishAsync('q/restart', 'q0', { qos: 0 });
  await pub.client.publishAsync('q/restart', 'q1-a', { qos: 1 });
  await pub.client.publishAsync('q/restart', 'q1-b', { qos: 1 }); // evicts q0
  await pub.client.endAsync();
  t.is(b1.broker.stats.queueDroppedQos0, 1);
  await b1.stop();

  const b2 = await broker(t, config, store);
  const back = await openClient(t, b2.port, persistent5('q-restart'));
  t.true(await until(() => back.messages.length >= 2));
  await delay(300);
  t.deepEqual(
    back.messages.map((m) => m.payload.toString()),
    ['q1-a', 'q1-b'],
  );
});

test.serial('invalid limit values are configuration errors naming the key', async (t) => {
  const { parseConfig } = await import('../src/index.ts');
  for (const [limits, key] of [
    [{ maxQueuedBytes: 10 }, 'limits.maxQueuedBytes'],
    [{ maxSocketBufferBytes: 100 }, 'limits.maxSocketBufferBytes'],
    [{ slowConsumerTimeoutMs: -1 }, 'limits.slowConsumerTimeoutMs'],
  ] as const) {
    const error = t.throws(() => parseConfig({ limits }));
    t.is((error as { code?: string }).code, 'ERR_PORTCULLIS_CONFIG');
    t.regex(error?.message ?? '', new RegExp(key.replace('.', '\\.')));
  }
});

// Ensure raw encoders stay in use for version 3.1 as well (MQIsdp): the queue limits do not depend on the protocol.
test.serial('v3.1 (MQIsdp) clients meet the same subscription limit: SUBACK 0x80 past maxSubscriptionsPerClient', async (t) => {
  const b = await broker(t, { limits: { maxSubscriptionsPerClient: 2 } });
  const { r, connack } = await rawSession(t, b.port, encodeConnect({ clientId: 'v31-subs', version: 3 }));
  t.is(connack?.code, 0);
  r.write(encodeSubscribe({ packetId: 1, filters: [{ topic: 'a', qos: 0 }, { topic: 'b', qos: 1 }, { topic: 'c', qos: 1 }], version: 3 }));
  const [suback] = await waitForType(r, PacketType.SUBACK, 1, 6000);
  t.deepEqual(subackCodes(suback?.body ?? Buffer.alloc(2), false), [0, 1, 0x80]);
});
