/**
 * Slow consumers, over real loopback sockets against a broker in its own process (so its RSS is
 * measured alone): subscribers that never read while a publisher sends 100 MiB. The broker stops
 * writing into their sockets past limits.maxSocketBufferBytes, queues within limits.maxQueuedBytes
 * (QoS 0 dropped, QoS 1 refused and counted), disconnects them with 0x97 after
 * limits.slowConsumerTimeoutMs, keeps a persistent session's QoS 1 messages for its return,
 * and serves a reading subscriber every message meanwhile.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import type { ConfigInput } from '../src/index.ts';
import { delay, startBroker, type RawClient } from './helpers.ts';
import { openClient, rawSession, until } from './limits-support.ts';
import { PacketType, decodePublish, encodePublish, encodeSubscribe, ofType, packetsOf, waitForType } from './raw-mqtt.ts';

interface Sample {
  rss: number;
  stats: Record<string, number>;
  connected: number;
  audit: { action: string; clientId: string; reasonCode: number }[];
}

interface Child {
  port: number;
  sample(gc?: boolean): Promise<Sample>;
}

const FIXTURE = fileURLToPath(new URL('./fixtures/limits-broker.ts', import.meta.url));

async function spawnBroker(t: ExecutionContext, config: Partial<ConfigInput>): Promise<Child> {
  const child: ChildProcess = fork(FIXTURE, [], {
    execArgv: ['--import', 'tsx', '--expose-gc'],
    env: { ...process.env, PORTCULLIS_TEST_CONFIG: JSON.stringify(config) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  t.teardown(() => {
    if (child.exitCode === null) child.kill();
  });
  const port = await new Promise<number>((resolve, reject) => {
    child.once('message', (m: { type: string; port: number }) => (m.type === 'ready' ? resolve(m.port) : reject(new Error('unexpected message'))));
    child.once('exit', (code) => reject(new Error(`broker process exited with ${code}`)));
  });
  return {
    port,
    sample: (gc = false) =>
      new Promise<Sample>((resolve) => {
        const on = (m: Sample & { type: string }) => {
          if (m.type !== 'sample') return;
          child.off('message', on);
          resolve(m);
        };
        child.on('message', on);
        child.send({ type: 'sample', gc });
      }),
  };
}

/** A raw v5 subscriber that subscribes, then stops reading its socket for good. */
async function stalledSubscriber(t: ExecutionContext, port: number, clientId: string, qos: 0 | 1, persistent: boolean): Promise<RawClient> {
  const { r, connack } = await rawSession(t, port, { clientId, version: 5, clean: !persistent, ...(persistent ? { properties: { sessionExpiryInterval: 300 } } : {}) });
  if (connack?.code !== 0) throw new Error(`CONNACK ${connack?.code}`);
  r.write(encodeSubscribe({ packetId: 1, filters: [{ topic: 'flood/#', qos }], version: 5 }));
  await waitForType(r, PacketType.SUBACK, 1, 6000);
  r.socket.pause();
  return r;
}

const MESSAGES = 1600;
const SIZE = 64 * 1024;
const MiB = 1024 * 1024;

test.serial('subscribers that never read while 100 MiB is published: RSS stays bounded, a reading subscriber gets every message, the stalled ones are disconnected with drops counted', async (t) => {
  t.timeout(120_000);
  const broker = await spawnBroker(t, {
    limits: { maxPacketSize: 128 * 1024, maxQueuedBytes: 4 * MiB, maxSocketBufferBytes: 256 * 1024, slowConsumerTimeoutMs: 1500 },
  });
  const baseline = await broker.sample(true);

  const slow0 = await stalledSubscriber(t, broker.port, 'stalled-qos0', 0, false);
  const slow1 = await stalledSubscriber(t, broker.port, 'stalled-qos1', 1, true);
  const fast = await openClient(t, broker.port, { clientId: 'reader', protocolVersion: 5 });
  await fast.client.subscribeAsync('flood/#', { qos: 1 });
  const pub = await openClient(t, broker.port, { clientId: 'flooder', protocolVersion: 5 });

  let peak = baseline.rss;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const s = await broker.sample();
      if (s.rss > peak) peak = s.rss;
      await delay(50);
    }
  })();

  const payload = Buffer.alloc(SIZE, 0x61);
  const window = 32;
  for (let i = 0; i < MESSAGES; i += window) {
    const batch: Promise<unknown>[] = [];
    for (let j = i; j < Math.min(MESSAGES, i + window); j++) {
      const body = Buffer.from(payload);
      body.writeUInt32BE(j, 0);
      batch.push(pub.client.publishAsync('flood/data', body, { qos: 1 }));
    }
    await Promise.all(batch);
  }
  t.true(await until(() => fast.messages.length >= MESSAGES, 30_000), `the reading subscriber got ${fast.messages.length} of ${MESSAGES}`);
  t.deepEqual(
    fast.messages.map((m) => m.payload.readUInt32BE(0)).filter((n, i) => n !== i),
    [],
    'every message, in order',
  );

  // A client that does not read never sees the close either, so ask the broker.
  let after = await broker.sample();
  for (let i = 0; i < 100 && after.stats['slowConsumersDisconnected'] !== 2; i++) {
    await delay(100);
    after = await broker.sample();
  }
  sampling = false;
  await sampler;
  t.is(after.stats['slowConsumersDisconnected'], 2, 'both stalled subscribers are disconnected');
  t.is(after.connected, 2, 'the reader and the publisher stay connected');
  t.true((after.stats['queueDroppedQos0'] ?? 0) > 0, 'QoS 0 drops are counted');
  t.true((after.stats['queueRefusedQos12'] ?? 0) > 0, 'QoS 1 refusals are counted');
  t.true(after.audit.some((a) => a.action === 'slow-consumer' && a.clientId === 'stalled-qos0' && a.reasonCode === 0x97));
  t.true(after.audit.some((a) => a.action === 'slow-consumer' && a.clientId === 'stalled-qos1' && a.reasonCode === 0x97));
  t.true(after.audit.some((a) => a.action === 'queue-full' && a.clientId === 'stalled-qos1'));

  // Without these limits each stalled subscriber holds its own copy of the 100 MiB in its socket
  // (QoS 1 copies carry their own packet ids): measured at about +500 MiB. With them the live data
  // is a few queues, socket marks and in-flight windows (~20 MiB); the rest of the growth is
  // garbage from the 100 MiB read, not yet collected (measured at about +120 MiB).
  const growth = (peak - baseline.rss) / MiB;
  t.log(`broker RSS: baseline ${(baseline.rss / MiB).toFixed(0)} MiB, peak ${(peak / MiB).toFixed(0)} MiB (+${growth.toFixed(0)} MiB) for ${(MESSAGES * SIZE) / MiB} MiB published`);
  t.true(growth < 250, `RSS grew by ${growth.toFixed(0)} MiB`);

  // The persistent session kept its QoS 1 messages (in flight and queued, bounded) for its return.
  const back = await openClient(t, broker.port, { clientId: 'stalled-qos1', protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 300 } });
  t.true(await until(() => back.messages.length >= 64, 10_000), `got ${back.messages.length} back`);
  await delay(500);
  const ids = back.messages.map((m) => m.payload.readUInt32BE(0));
  t.is(ids[0], 0, 'starting with the first message it never acknowledged');
  t.true(ids.length <= 64 + (4 * MiB) / SIZE + 1, `at most the in-flight window plus the byte-bounded queue: ${ids.length}`);
  t.deepEqual([...new Set(ids)].length, ids.length, 'no duplicates');

  const check = await openClient(t, broker.port, { clientId: 'after', protocolVersion: 5 });
  await check.client.subscribeAsync('after/t', { qos: 1 });
  await check.client.publishAsync('after/t', 'up', { qos: 1 });
  t.true(await until(() => check.messages.length === 1), 'the broker still serves clients');
});

test.serial('limits.maxSocketBufferBytes: a subscriber that stops reading has the rest queued, and once it reads again the socket drains and the queue follows, in order', async (t) => {
  const b = await startBroker({ limits: { maxSocketBufferBytes: 64 * 1024, maxQueuedMessages: 100_000, maxQueuedBytes: 64 * MiB, slowConsumerTimeoutMs: 0 } });
  t.teardown(() => b.stop());
  const { r } = await rawSession(t, b.port, { clientId: 'pausing', version: 5 });
  r.write(encodeSubscribe({ packetId: 1, filters: [{ topic: 'bp/#', qos: 0 }], version: 5 }));
  await waitForType(r, PacketType.SUBACK, 1, 6000);
  r.socket.pause();
  const pub = await openClient(t, b.port, { clientId: 'bp-pub', protocolVersion: 5 });
  const n = 600;
  const body = Buffer.alloc(32 * 1024, 0x62);
  for (let i = 0; i < n; i += 50) {
    await Promise.all(
      Array.from({ length: 50 }, (_, j) => {
        const p = Buffer.from(body);
        p.writeUInt32BE(i + j, 0);
        return pub.client.publishAsync('bp/t', p, { qos: 1 });
      }),
    );
  }
  t.is(b.broker.stats.queueDroppedQos0, 0, 'within the queue limits nothing is dropped');
  t.is(b.broker.stats.slowConsumersDisconnected, 0, 'slowConsumerTimeoutMs 0 never disconnects');
  r.socket.resume();
  const packets = await waitForType(r, PacketType.PUBLISH, n, 20_000);
  t.true(packets.every((p) => decodePublish(p, 5).topic === 'bp/t'));
  const ids = packets.map((p) => p.body.readUInt32BE(p.body.length - body.length)); // the payload ends the packet
  t.is(packets.length, n, 'every QoS 0 message arrives once the subscriber reads again');
  t.deepEqual(ids, Array.from({ length: n }, (_, i) => i), 'in order');
  t.is(ofType(packetsOf(r), PacketType.DISCONNECT).length, 0);
});

test.serial('a client that floods QoS 1 PUBLISHes and never reads its PUBACKs is not read either once its socket is over maxSocketBufferBytes, and is read again when it drains', async (t) => {
  t.timeout(150_000);
  const b = await startBroker({ limits: { maxSocketBufferBytes: 64 * 1024 } });
  t.teardown(() => b.stop());
  const { r, connack } = await rawSession(t, b.port, { clientId: 'ack-flood', version: 4 });
  t.is(connack?.code, 0);
  r.socket.pause();
  const n = 1_500_000;
  const flood = Buffer.alloc(n * 7); // QoS 1 PUBLISH to 'a' with no payload: 7 bytes, answered by a 4-byte PUBACK
  for (let i = 0, off = 0; i < n; i++, off += 7) {
    const id = (i % 65535) + 1;
    flood[off] = 0x32;
    flood[off + 1] = 5;
    flood[off + 3] = 1;
    flood[off + 4] = 0x61;
    flood[off + 5] = id >> 8;
    flood[off + 6] = id & 0xff;
  }
  r.socket.write(flood);
  const stats = b.broker.stats;
  let last = -1;
  for (let i = 0; i < 200 && stats.messagesReceived !== last; i++) {
    last = stats.messagesReceived;
    await delay(300);
  }
  t.log(`handled ${stats.messagesReceived} of ${n} while the client read nothing`);
  t.true(stats.messagesReceived < n * 0.8, `the broker stopped reading: ${stats.messagesReceived} of ${n} handled`);
  t.is(b.broker.connectedClients, 1, 'backpressure, not a disconnect');
  r.socket.resume();
  t.true(await until(() => stats.messagesReceived === n, 80_000), `all handled once the client reads: ${stats.messagesReceived}`);
});

test.serial('a subscriber that keeps acknowledging is not a slow consumer, even when a full window makes its queue refuse messages', async (t) => {
  const b = await startBroker({ limits: { maxQueuedMessages: 0, maxInflight: 1, slowConsumerTimeoutMs: 1000 } });
  t.teardown(() => b.stop());
  const sub = await openClient(t, b.port, { clientId: 'acker', protocolVersion: 5 });
  await sub.client.subscribeAsync('ack/t', { qos: 1 });
  let closed = false;
  sub.client.on('close', () => (closed = true));
  const { r } = await rawSession(t, b.port, { clientId: 'ack-pub', version: 5 });
  for (let round = 0; round < 20; round++) {
    const parts: Buffer[] = [];
    for (let i = 0; i < 10; i++) parts.push(encodePublish({ topic: 'ack/t', payload: `${round}-${i}`, qos: 1, packetId: round * 10 + i + 1, version: 5 }));
    r.write(Buffer.concat(parts));
    await delay(150);
  }
  t.true(b.broker.stats.queueRefusedQos12 > 0, 'the window was full and nothing may queue');
  t.true(sub.messages.length >= 20, `it kept receiving: ${sub.messages.length}`);
  t.is(b.broker.stats.slowConsumersDisconnected, 0);
  t.false(closed);
});
