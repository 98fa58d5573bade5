/**
 * Malformed-length attacks over real loopback sockets: remaining lengths of five bytes, claims
 * of 256 MB that then trickle in, CONNECTs that crawl towards maxConnectSize. Each test asserts
 * that the attacker is refused (and how), that the broker keeps serving other clients during
 * and after the attack, and that its memory does not follow the claimed sizes.
 *
 * bad-input.test.ts has the single-shot versions (one header, sent at once); these send the
 * headers split and slowly, from many connections at once, before and after CONNECT.
 */
import test, { type ExecutionContext } from 'ava';
import type { ConfigInput } from '../src/index.ts';
import { delay, startTestEnv, type TestEnv as Env, nextMessages, rawConnectPacket, type RawClient } from './helpers.ts';
import { encodeVarint, parsePackets, PacketType, type RawPacket } from './raw-mqtt.ts';

const MAX_REMAINING_LENGTH = 268_435_455; // 0xFF 0xFF 0xFF 0x7F: the largest the protocol can express
/** Memory the broker may gain during an attack; buffering what the attackers claim would take gigabytes. */
const RSS_BOUND = 96 * 1024 * 1024;
/** The many-connection tests all come from 127.0.0.1: exempt it from the per-address connect rate, which is not under test here. */
const FLOOD: Partial<ConfigInput> = { admission: { exempt: ['127.0.0.1/32'] } };



let unique = 0;

/** A raw client that completed CONNECT; `after()` lists the packets that arrived after the CONNACK. */
async function session(env: Env, version: 4 | 5): Promise<RawClient & { after(): RawPacket[] }> {
  const c = await env.raw();
  c.write(rawConnectPacket(`attacker-${version}-${++unique}`, version));
  const bytes = await c.waitForBytes(4, 2000);
  const connack = parsePackets(bytes).find((p) => p.type === PacketType.CONNACK);
  if (connack === undefined || (connack.body[1] as number) !== 0) throw new Error('the attacker could not even connect');
  const offset = c.received().length;
  return Object.assign(c, { after: () => parsePackets(c.received().subarray(offset)) });
}

/** A fresh mqtt.js client connects, subscribes and receives its own QoS 1 message. */
async function assertServing(t: ExecutionContext, env: Env, when: string): Promise<void> {
  const id = `bystander-${++unique}`;
  const c = await env.client({ clientId: id, protocolVersion: 5 });
  await c.subscribeAsync(`alive/${id}`, { qos: 1 });
  const got = nextMessages(c, 1, 3000);
  await c.publishAsync(`alive/${id}`, when, { qos: 1 });
  const [m] = await got;
  t.is(m?.payload, when, `a well-behaved client is served ${when}`);
  await c.endAsync();
}

/** Samples this process's RSS (the broker runs in it) every 20 ms until stopped; returns the peak growth. */
function watchRss(): { stop(): number } {
  const base = process.memoryUsage().rss;
  let peak = base;
  const timer = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().rss);
  }, 20);
  return {
    stop() {
      clearInterval(timer);
      peak = Math.max(peak, process.memoryUsage().rss);
      return peak - base;
    },
  };
}

const mb = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MB`;

/** Writes `bytes` one at a time, `gapMs` apart, until done or the socket closes; resolves with how many were written. */
async function trickle(c: RawClient, bytes: Buffer, gapMs: number): Promise<number> {
  let i = 0;
  while (i < bytes.length && !c.socket.destroyed) {
    c.write(bytes.subarray(i, i + 1));
    i++;
    await delay(gapMs);
  }
  return i;
}

const disconnectReason = (p: RawPacket | undefined) => (p === undefined ? -1 : p.body.length === 0 ? 0 : (p.body[0] as number));

// ── a remaining length of five bytes ─────────────────────────────────────────

test('a five-byte remaining length trickled one byte at a time is refused as malformed: v5 DISCONNECT 0x81, v3.1.1 closed, no CONNACK before CONNECT', async (t) => {
  const env = await startTestEnv(t);
  const header = Buffer.from([0xff, 0xff, 0xff, 0xff, 0x7f]); // [MQTT-1.5.5-1]: a fifth length byte is malformed
  const pre = await env.raw();
  const v4 = await session(env, 4);
  const v5 = await session(env, 5);
  const started = Date.now();
  // Each header arrives over 150 ms in separate segments; the broker must not decide before the fifth byte, and not wait after it.
  const sent = await Promise.all([
    trickle(pre, Buffer.concat([Buffer.from([0x10]), header]), 25),
    trickle(v4, Buffer.concat([Buffer.from([0x30]), header]), 25),
    trickle(v5, Buffer.concat([Buffer.from([0x30]), header]), 25),
  ]);
  // Four length bytes that all continue are already malformed: the refusal comes with the fourth, never before it.
  for (const n of sent) t.true(n >= 5 && n <= 6, `refused after ${n} bytes`);
  for (const c of [pre, v4, v5]) t.true(await c.closed(1000), 'the connection is closed');
  t.true(Date.now() - started < 1500);
  t.is(pre.received().length, 0, 'no CONNACK for a CONNECT that is malformed');
  t.deepEqual(v4.after(), [], 'nothing is sent to a v3.1.1 client');
  const after = v5.after();
  t.deepEqual(after.map((p) => p.type), [PacketType.DISCONNECT]);
  t.is(disconnectReason(after[0]), 0x81, 'DISCONNECT Malformed Packet');
  await assertServing(t, env, 'after five-byte lengths');
});

test.serial('200 connections sending five-byte remaining lengths at once are all refused, and memory stays flat', async (t) => {
  const env = await startTestEnv(t, FLOOD);
  const rss = watchRss();
  const attackers = await Promise.all(Array.from({ length: 200 }, (_, i) => (i % 2 === 0 ? env.raw() : session(env, 5))));
  for (const [i, c] of attackers.entries()) c.write(Buffer.from([i % 2 === 0 ? 0x10 : 0x30, 0xff, 0xff, 0xff, 0xff, 0x7f]));
  const closed = await Promise.all(attackers.map((c) => c.closed(3000)));
  t.is(closed.filter(Boolean).length, 200, 'every attacker was closed');
  await assertServing(t, env, 'after 200 malformed headers');
  const growth = rss.stop();
  t.true(growth < RSS_BOUND, `RSS grew by ${mb(growth)}`);
  t.is(env.b.broker.connectedClients, 0, 'no attacker is still counted as connected');
});

// ── 256 MB claimed, then trickled ────────────────────────────────────────────

test('a CONNECT claiming 256 MB that then trickles its body is closed from the header, before any authentication', async (t) => {
  const env = await startTestEnv(t);
  const c = await env.raw();
  const started = Date.now();
  c.write(Buffer.concat([Buffer.from([0x10]), encodeVarint(MAX_REMAINING_LENGTH)]));
  // The body follows slowly: a slow attacker must not be waited for.
  const sent = await trickle(c, rawConnectPacket('trickler').subarray(2), 50);
  t.true(await c.closed(1000));
  const elapsed = Date.now() - started;
  t.true(elapsed < 1000, `closed after ${elapsed} ms`);
  t.true(sent < 15, `closed after ${sent} body bytes, not after the whole CONNECT`);
  t.is(c.received().length, 0, 'no CONNACK');
  t.is(env.b.audit.records.filter((r) => r.event === 'connect').length, 0, 'never reached authentication');
  await assertServing(t, env, 'after a 256 MB CONNECT claim');
});

for (const version of [4, 5] as const) {
  test(`after CONNECT (v${version === 5 ? '5' : '3.1.1'}), a PUBLISH claiming 256 MB that trickles its body is refused from the header${version === 5 ? ' with DISCONNECT 0x95' : ''}`, async (t) => {
    const env = await startTestEnv(t);
    const c = await session(env, version);
    const started = Date.now();
    c.write(Buffer.concat([Buffer.from([0x30]), encodeVarint(MAX_REMAINING_LENGTH)]));
    const sent = await trickle(c, Buffer.concat([Buffer.from([0x00, 0x03]), Buffer.from('a/b'), Buffer.alloc(64, 0x61)]), 50);
    t.true(await c.closed(1000));
    const elapsed = Date.now() - started;
    t.true(elapsed < 1000, `closed after ${elapsed} ms`);
    t.true(sent < 15, `closed after ${sent} body bytes`);
    const after = c.after();
    if (version === 5) {
      t.deepEqual(after.map((p) => p.type), [PacketType.DISCONNECT]);
      t.is(disconnectReason(after[0]), 0x95, 'DISCONNECT Packet too large'); // the server's maximum packet size [MQTT-3.2.2-15]
    } else {
      t.deepEqual(after, [], 'nothing is sent to a v3.1.1 client');
    }
    await assertServing(t, env, 'after a 256 MB PUBLISH claim');
  });
}

test.serial('100 clients claiming 256 MB each and pouring their bodies in, before and after CONNECT: all refused, memory stays flat, a subscriber keeps receiving', async (t) => {
  const env = await startTestEnv(t, FLOOD);
  const sub = await env.client({ clientId: 'steady-subscriber', protocolVersion: 5 });
  await sub.subscribeAsync('steady/#', { qos: 1 });
  const pub = await env.client({ clientId: 'steady-publisher' });
  const rss = watchRss();
  const attackers = await Promise.all(Array.from({ length: 100 }, (_, i) => (i % 2 === 0 ? env.raw() : session(env, i % 4 === 1 ? 5 : 4))));
  const chunk = Buffer.alloc(64 * 1024, 0x61);
  for (const [i, c] of attackers.entries()) {
    c.write(Buffer.concat([Buffer.from([i % 2 === 0 ? 0x10 : 0x30]), encodeVarint(MAX_REMAINING_LENGTH - (i % 3))]));
    for (let k = 0; k < 32 && !c.socket.destroyed; k++) c.write(chunk); // 2 MB each, 200 MB in all: buffering it would break the RSS bound
  }
  // While the attack is on, messages keep flowing.
  const got = nextMessages(sub, 5, 5000);
  for (let k = 0; k < 5; k++) await pub.publishAsync(`steady/${k}`, `m${k}`, { qos: 1 });
  t.deepEqual((await got).map((m) => m.payload), ['m0', 'm1', 'm2', 'm3', 'm4']);
  const closed = await Promise.all(attackers.map((c) => c.closed(5000)));
  t.is(closed.filter(Boolean).length, 100, 'every attacker was closed');
  const v5 = attackers.filter((_, i) => i % 4 === 1) as (RawClient & { after(): RawPacket[] })[];
  for (const c of v5) t.is(disconnectReason(c.after().find((p) => p.type === PacketType.DISCONNECT)), 0x95);
  const growth = rss.stop();
  t.true(growth < RSS_BOUND, `RSS grew by ${mb(growth)} while 100 clients claimed 25 GB`);
  await assertServing(t, env, 'after 100 oversized claims');
});

// ── a CONNECT that crawls towards maxConnectSize ─────────────────────────────

test('a CONNECT claiming just under maxConnectSize that trickles its body is dropped at the CONNECT deadline', async (t) => {
  const connectTimeoutMs = 500;
  const env = await startTestEnv(t, { limits: { connectTimeoutMs } });
  const maxConnectSize = env.b.broker.config.limits.maxConnectSize;
  const c = await env.raw();
  // The whole frame (1 + 3 length bytes + body) is exactly maxConnectSize - 1: allowed from the header.
  const remaining = maxConnectSize - 1 - 4;
  const id = 'crawler'.padEnd(remaining - 12, 'x');
  const body = Buffer.concat([Buffer.from([0x00, 0x04]), Buffer.from('MQTT'), Buffer.from([0x04, 0x02, 0x00, 0x3c]), Buffer.from([id.length >> 8, id.length & 0xff]), Buffer.from(id)]);
  t.is(body.length, remaining);
  const started = Date.now();
  c.write(Buffer.concat([Buffer.from([0x10]), encodeVarint(remaining)]));
  let sent = 0;
  const pump = (async () => {
    while (!c.socket.destroyed && sent < body.length) {
      c.write(body.subarray(sent, sent + 256)); // 256 bytes every 25 ms: the CONNECT would take about 6 s
      sent += 256;
      await delay(25);
    }
  })();
  // Before the deadline the connection is still open, and others are served meanwhile.
  await assertServing(t, env, 'while a CONNECT crawls in');
  t.true(await c.closed(connectTimeoutMs + 1000), 'closed by the CONNECT deadline');
  await pump;
  const elapsed = Date.now() - started;
  t.true(elapsed >= connectTimeoutMs - 50 && elapsed < connectTimeoutMs + 1000, `closed after ${elapsed} ms`);
  t.true(sent < body.length, `closed after ${sent} of ${body.length} bytes`);
  t.is(c.received().length, 0, 'no CONNACK');
  const connects = env.b.audit.records.filter((r) => r.event === 'connect' && !String(r.clientId).startsWith('bystander-'));
  t.deepEqual(connects, [], 'the crawler never reached authentication');
});

test.serial('50 CONNECTs crawling towards maxConnectSize at once are all dropped at the deadline, memory stays flat, others connect meanwhile', async (t) => {
  const connectTimeoutMs = 600;
  const env = await startTestEnv(t, { ...FLOOD, limits: { connectTimeoutMs } });
  const maxConnectSize = env.b.broker.config.limits.maxConnectSize;
  const rss = watchRss();
  const attackers = await Promise.all(Array.from({ length: 50 }, () => env.raw()));
  const started = Date.now();
  let stop = false;
  for (const c of attackers) c.write(Buffer.concat([Buffer.from([0x10]), encodeVarint(maxConnectSize - 5)]));
  const pumps = attackers.map(async (c) => {
    while (!stop && !c.socket.destroyed) {
      c.write(Buffer.alloc(512, 0x61));
      await delay(20);
    }
  });
  await assertServing(t, env, 'during a crawl of 50 CONNECTs');
  const closed = await Promise.all(attackers.map((c) => c.closed(connectTimeoutMs + 1500)));
  stop = true;
  await Promise.all(pumps);
  t.is(closed.filter(Boolean).length, 50, 'every crawling CONNECT was dropped');
  t.true(Date.now() - started < connectTimeoutMs + 1500);
  t.true(attackers.every((c) => c.received().length === 0), 'no CONNACK to any of them');
  const growth = rss.stop();
  t.true(growth < RSS_BOUND, `RSS grew by ${mb(growth)}`);
  await assertServing(t, env, 'after the crawl');
});

// ── repeated properties (found by the fuzz test) ─────────────────────────────

test('a v5 PUBLISH with a property repeated gets DISCONNECT 0x82 and is not delivered', async (t) => {
  const env = await startTestEnv(t);
  const watcher = await env.client({ clientId: 'repeat-watch', protocolVersion: 5 });
  await watcher.subscribeAsync('rep/#', { qos: 1 });
  const seen: string[] = [];
  watcher.on('message', (topic) => seen.push(topic));
  const cases: [string, Buffer][] = [
    ['content type', Buffer.concat([Buffer.from([0x03, 0x00, 0x01, 0x61]), Buffer.from([0x03, 0x00, 0x01, 0x62])])],
    ['message expiry interval', Buffer.from([0x02, 0, 0, 0, 60, 0x02, 0, 0, 0, 61])],
    ['payload format indicator', Buffer.from([0x01, 0x00, 0x01, 0x00])],
  ];
  for (const [name, properties] of cases) {
    const c = await session(env, 5);
    const body = Buffer.concat([Buffer.from([0x00, 0x05]), Buffer.from('rep/a'), Buffer.from([0x00, 0x07]), encodeVarint(properties.length), properties, Buffer.from('payload')]);
    c.write(Buffer.concat([Buffer.from([0x32]), encodeVarint(body.length), body]));
    t.true(await c.closed(1500), `${name}: closed`);
    const after = c.after();
    t.deepEqual(after.map((p) => p.type), [PacketType.DISCONNECT], `${name}: a DISCONNECT and no PUBACK`);
    t.is(disconnectReason(after[0]), 0x82, `${name}: DISCONNECT Protocol Error`);
  }
  const marker = nextMessages(watcher, 1, 2000);
  const p = await env.client({ clientId: 'repeat-marker' });
  await p.publishAsync('rep/marker', 'm', { qos: 1 });
  await marker;
  t.deepEqual(seen, ['rep/marker'], 'no PUBLISH with a repeated property was delivered');
});

test('a v5 CONNECT with a repeated property is refused without a successful CONNACK; a repeated will property too', async (t) => {
  const env = await startTestEnv(t);
  const build = (properties: Buffer, will?: Buffer) => {
    const id = Buffer.from(`rep-${++unique}`);
    const parts = [Buffer.from([0x00, 0x04]), Buffer.from('MQTT'), Buffer.from([0x05, will ? 0x06 : 0x02, 0x00, 0x3c]), encodeVarint(properties.length), properties, Buffer.from([0, id.length]), id];
    if (will) parts.push(encodeVarint(will.length), will, Buffer.from([0, 3]), Buffer.from('w/t'), Buffer.from([0, 1, 0x78]));
    const body = Buffer.concat(parts);
    return Buffer.concat([Buffer.from([0x10]), encodeVarint(body.length), body]);
  };
  const sessionExpiryTwice = Buffer.from([0x11, 0, 0, 0, 10, 0x11, 0, 0, 0, 20]);
  const willDelayTwice = Buffer.from([0x18, 0, 0, 0, 1, 0x18, 0, 0, 0, 2]);
  for (const bytes of [build(sessionExpiryTwice), build(Buffer.alloc(0), willDelayTwice)]) {
    const c = await env.raw();
    c.write(bytes);
    t.true(await c.closed(1500));
    const connack = parsePackets(c.received()).find((p) => p.type === PacketType.CONNACK);
    t.true(connack === undefined || (connack.body[1] as number) >= 0x80, 'no successful CONNACK');
  }
  t.is(env.b.broker.connectedClients, 0);
  await assertServing(t, env, 'after repeated CONNECT properties');
});

// ── CONNECT flags mqtt-packet lets through (found by the fuzz test) ──────────

/** A CONNECT with raw flags; `tail` follows the client id (will, user name, password). */
function connectWithFlags(version: 3 | 4 | 5, flags: number, tail: Buffer[]): Buffer {
  const id = Buffer.from(`flags-${++unique}`);
  const name = version === 3 ? 'MQIsdp' : 'MQTT';
  const body = Buffer.concat([Buffer.from([0x00, name.length]), Buffer.from(name), Buffer.from([version, flags, 0x00, 0x3c]), version === 5 ? Buffer.from([0]) : Buffer.alloc(0), Buffer.from([0, id.length]), id, ...tail]);
  return Buffer.concat([Buffer.from([0x10]), encodeVarint(body.length), body]);
}

const field = (s: string) => Buffer.concat([Buffer.from([0, Buffer.byteLength(s)]), Buffer.from(s)]);

test('a CONNECT with will QoS 3 is refused as malformed, v3.1.1 and v5, without a successful CONNACK [MQTT-3.1.2-14]', async (t) => {
  const env = await startTestEnv(t);
  const watcher = await env.client({ clientId: 'will-watch', protocolVersion: 5 });
  await watcher.subscribeAsync('w/#', { qos: 2 });
  const seen: string[] = [];
  watcher.on('message', (topic) => seen.push(topic));
  for (const version of [4, 5] as const) {
    const c = await env.raw();
    const will = [...(version === 5 ? [Buffer.from([0])] : []), field('w/qos3'), field('bye')];
    c.write(connectWithFlags(version, 0x02 | 0x04 | 0x18, will)); // clean, will, will QoS bits 11
    t.true(await c.closed(1500), `v${version}: closed`);
    t.deepEqual(parsePackets(c.received()), [], `v${version}: no CONNACK`);
  }
  await delay(200);
  t.deepEqual(seen, [], 'no will with QoS 3 was ever published');
  t.is(env.b.broker.connectedClients, 1, 'only the watcher is connected');
  await assertServing(t, env, 'after will QoS 3');
});

test('a v3.1.1 or v3.1 CONNECT with a password but no user name is refused as malformed; v5 allows it [MQTT-3.1.2-22]', async (t) => {
  const env = await startTestEnv(t);
  for (const version of [3, 4] as const) {
    const c = await env.raw();
    c.write(connectWithFlags(version, 0x02 | 0x40, [field('secret')]));
    t.true(await c.closed(1500), `level ${version}: closed`);
    t.deepEqual(parsePackets(c.received()), [], `level ${version}: no CONNACK`);
  }
  const v5 = await env.raw();
  v5.write(connectWithFlags(5, 0x02 | 0x40, [field('secret')]));
  const connack = parsePackets(await v5.waitForBytes(3, 2000)).find((p) => p.type === PacketType.CONNACK);
  t.is(connack?.body[1], 0, 'MQTT 5 allows a password without a user name');
  t.false(await v5.closed(200));
});
