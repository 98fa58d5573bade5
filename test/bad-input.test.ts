/**
 * Hostile and broken input over raw loopback sockets. Every case checks the broker's answer
 * (v5: DISCONNECT with a reason code, or CONNACK with a reason; v3.1.1: the connection is
 * closed) and that the broker keeps serving other clients afterwards.
 */
import test, { type ExecutionContext } from 'ava';
import { delay, startTestEnv, type TestEnv as Env, nextMessages, rawConnectPacket, type RawClient } from './helpers.ts';
import { encodeString as str, encodeVarint as varint } from './raw-mqtt.ts';

// ── small encoders ────────────────────────────────────────────────────────────

const DISCONNECT = 14;
const CONNACK = 2;

function u16(n: number): Buffer {
  return Buffer.from([n >> 8, n & 0xff]);
}

/** A whole packet: first byte, remaining length, body. */
function frame(first: number, ...body: Buffer[]): Buffer {
  const b = Buffer.concat(body);
  return Buffer.concat([Buffer.from([first]), varint(b.length), b]);
}

/** A v5 property block (length prefix + properties). */
function props(...entries: Buffer[]): Buffer {
  const b = Buffer.concat(entries);
  return Buffer.concat([varint(b.length), b]);
}

const topicAliasProp = (alias: number) => Buffer.concat([Buffer.from([0x23]), u16(alias)]);

interface PublishSpec {
  topic: string | Buffer;
  payload?: string | Buffer;
  qos?: 0 | 1 | 2;
  packetId?: number;
  version: 4 | 5;
  properties?: Buffer;
  /** Overrides the first byte (to set bad flags). */
  first?: number;
}

function publish(p: PublishSpec): Buffer {
  const qos = p.qos ?? 0;
  return frame(
    p.first ?? 0x30 | (qos << 1),
    str(p.topic),
    qos > 0 ? u16(p.packetId ?? 1) : Buffer.alloc(0),
    p.version === 5 ? (p.properties ?? props()) : Buffer.alloc(0),
    typeof p.payload === 'string' ? Buffer.from(p.payload) : (p.payload ?? Buffer.from('x')),
  );
}

function subscribe(packetId: number, filters: { topic: string | Buffer; qos: number }[], version: 4 | 5, first = 0x82): Buffer {
  return frame(
    first,
    u16(packetId),
    version === 5 ? props() : Buffer.alloc(0),
    ...filters.map((f) => Buffer.concat([str(f.topic), Buffer.from([f.qos])])),
  );
}

/** A CONNECT with any protocol level (to send an unsupported one). */
function connectWithLevel(clientId: string, level: number): Buffer {
  return frame(0x10, str('MQTT'), Buffer.from([level, 0x02]), u16(60), str(clientId));
}

// ── reading what the broker sent ─────────────────────────────────────────────

interface RawPacket {
  type: number;
  flags: number;
  body: Buffer;
}

/** Splits the bytes the broker sent into packets (a trailing partial packet is ignored). */
function parsePackets(buf: Buffer): RawPacket[] {
  const out: RawPacket[] = [];
  let off = 0;
  while (off < buf.length) {
    const first = buf[off] as number;
    let length = 0;
    let multiplier = 1;
    let i = off + 1;
    let digit: number;
    do {
      if (i >= buf.length) return out;
      digit = buf[i++] as number;
      length += (digit & 0x7f) * multiplier;
      multiplier *= 128;
    } while (digit & 0x80);
    if (i + length > buf.length) return out;
    out.push({ type: first >> 4, flags: first & 0x0f, body: buf.subarray(i, i + length) });
    off = i + length;
  }
  return out;
}

/** The reason code of a v5 DISCONNECT (an empty body means 0x00). */
const disconnectReason = (p: RawPacket) => (p.body.length === 0 ? 0 : (p.body[0] as number));

async function waitForPacket(c: RawClient, type: number, ms = 2000): Promise<RawPacket | undefined> {
  const end = Date.now() + ms;
  for (;;) {
    const found = parsePackets(c.received()).find((p) => p.type === type);
    if (found !== undefined || Date.now() > end) return found;
    await delay(5);
  }
}

// ── per-test setup ───────────────────────────────────────────────────────────



let unique = 0;

/** A raw client that completed CONNECT/CONNACK; `after()` is what arrived after the CONNACK. */
async function rawSession(env: Env, version: 4 | 5): Promise<RawClient & { after(): RawPacket[] }> {
  const c = await env.raw();
  c.write(rawConnectPacket(`raw-${version}-${++unique}`, version));
  const connack = await waitForPacket(c, CONNACK);
  if (connack === undefined) throw new Error('no CONNACK for a valid CONNECT');
  if ((connack.body[1] as number) !== 0) throw new Error(`CONNECT refused with 0x${(connack.body[1] as number).toString(16)}`);
  const offset = c.received().length;
  return Object.assign(c, { after: () => parsePackets(c.received().subarray(offset)) });
}

/** A fresh mqtt.js client can still connect, subscribe and receive a message. */
async function assertServing(t: ExecutionContext, env: Env): Promise<void> {
  const id = `alive-${++unique}`;
  const c = await env.client({ clientId: id });
  await c.subscribeAsync(`alive/${id}`, { qos: 1 });
  const got = nextMessages(c, 1, 2000);
  await c.publishAsync(`alive/${id}`, 'still serving', { qos: 1 });
  const [m] = await got;
  t.is(m?.payload, 'still serving', 'the broker keeps serving after a bad client');
  await c.endAsync();
}

/**
 * A `#` subscriber. `check()` publishes a marker from another client and waits for it, then
 * asserts the marker is the only message the subscriber saw: nothing the bad clients sent
 * was delivered.
 */
async function hashWatcher(t: ExecutionContext, env: Env): Promise<{ check(): Promise<void> }> {
  const w = await env.client({ clientId: `watch-${++unique}` });
  await w.subscribeAsync('#', { qos: 0 });
  const seen: string[] = [];
  w.on('message', (topic) => seen.push(topic));
  return {
    async check() {
      const marker = `marker/${++unique}`;
      const got = nextMessages(w, 1, 2000);
      const p = await env.client({ clientId: `marker-${unique}` });
      await p.publishAsync(marker, 'm', { qos: 1 });
      await got;
      t.deepEqual(seen, [marker], 'a refused PUBLISH must never be delivered to a # subscriber');
    },
  };
}

/** Sends bad bytes on an established v5 session; asserts DISCONNECT with one of `reasons`, then close. */
async function expectV5Disconnect(t: ExecutionContext, env: Env, bytes: Buffer, reasons: number[], what: string): Promise<void> {
  const c = await rawSession(env, 5);
  c.write(bytes);
  t.true(await c.closed(1500), `${what}: the broker must close the connection`);
  const after = c.after();
  t.deepEqual(after.map((p) => p.type), [DISCONNECT], `${what}: a DISCONNECT and nothing else (no PUBACK/SUBACK/PINGRESP) before the close`);
  const disconnects = after.filter((p) => p.type === DISCONNECT);
  const code = disconnects[0] === undefined ? -1 : disconnectReason(disconnects[0]);
  t.true(reasons.includes(code), `${what}: DISCONNECT reason 0x${code.toString(16)}, expected ${reasons.map((r) => `0x${r.toString(16)}`).join(' or ')}`);
}

/** Sends bad bytes on an established v3.1.1 session; asserts the connection is closed with nothing sent back. */
async function expectV3Close(t: ExecutionContext, env: Env, bytes: Buffer, what: string): Promise<void> {
  const c = await rawSession(env, 4);
  c.write(bytes);
  t.true(await c.closed(1500), `${what}: the broker must close the connection`);
  t.deepEqual(
    c.after().map((p) => p.type),
    [],
    `${what}: nothing is sent back to a v3.1.1 client (no PUBACK/SUBACK for a refused packet)`,
  );
}

// ── the first packet ─────────────────────────────────────────────────────────

test('a PINGREQ as the first packet closes the connection without CONNACK', async (t) => {
  const env = await startTestEnv(t);
  const c = await env.raw();
  c.write([0xc0, 0x00]); // [MQTT-3.1.0-1]
  t.true(await c.closed(2000));
  t.is(c.received().length, 0, 'no CONNACK and no PINGRESP');
  await assertServing(t, env);
});

test('a PUBLISH as the first packet closes the connection without CONNACK and is not delivered', async (t) => {
  const env = await startTestEnv(t);
  const watch = await hashWatcher(t, env);
  const c = await env.raw();
  c.write(publish({ topic: 'sneaky/first', payload: 'no connect', version: 4 })); // [MQTT-3.1.0-1]
  t.true(await c.closed(2000));
  t.is(c.received().length, 0);
  await watch.check();
  await assertServing(t, env);
});

test('a SUBSCRIBE as the first packet closes the connection without CONNACK or SUBACK', async (t) => {
  const env = await startTestEnv(t);
  const c = await env.raw();
  c.write(subscribe(1, [{ topic: '#', qos: 0 }], 4)); // [MQTT-3.1.0-1]
  t.true(await c.closed(2000));
  t.is(c.received().length, 0);
  await assertServing(t, env);
});

// ── a second CONNECT ─────────────────────────────────────────────────────────

test('a second CONNECT gets DISCONNECT 0x82 (v5) and closes the connection', async (t) => {
  const env = await startTestEnv(t);
  await expectV5Disconnect(t, env, rawConnectPacket('again', 5), [0x82], 'second CONNECT'); // [MQTT-3.1.0-2]
  await assertServing(t, env);
});

test('a second CONNECT sent right behind the first, before the CONNACK, gets DISCONNECT 0x82 (v5)', async (t) => {
  const env = await startTestEnv(t);
  const c = await env.raw();
  c.write(Buffer.concat([rawConnectPacket('pipelined', 5), rawConnectPacket('pipelined', 5)])); // [MQTT-3.1.0-2]
  t.true(await c.closed(1500));
  const packets = parsePackets(c.received());
  t.deepEqual(packets.map((p) => p.type), [CONNACK, DISCONNECT], 'the first CONNECT is answered, the second refused');
  t.is(packets[1] && disconnectReason(packets[1]), 0x82);
  await assertServing(t, env);
});

test('a second CONNECT closes a v3.1.1 connection', async (t) => {
  const env = await startTestEnv(t);
  await expectV3Close(t, env, rawConnectPacket('again', 4), 'second CONNECT'); // [MQTT-3.1.0-2]
  await assertServing(t, env);
});

// ── malformed remaining length ───────────────────────────────────────────────

test('a remaining length of five bytes gets DISCONNECT 0x81 (v5)', async (t) => {
  const env = await startTestEnv(t);
  // [MQTT-1.5.5-1]: at most four bytes; a fifth continuation byte is a Malformed Packet.
  await expectV5Disconnect(t, env, Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x7f]), [0x81], 'five-byte remaining length');
  await assertServing(t, env);
});

test('a remaining length of five bytes closes a v3.1.1 connection', async (t) => {
  const env = await startTestEnv(t);
  await expectV3Close(t, env, Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x7f]), 'five-byte remaining length'); // [MQTT-2.2.3]
  await assertServing(t, env);
});

test('a CONNECT with a five-byte remaining length is closed without CONNACK', async (t) => {
  const env = await startTestEnv(t);
  const c = await env.raw();
  c.write([0x10, 0xff, 0xff, 0xff, 0xff, 0x7f]);
  t.true(await c.closed(2000));
  t.is(c.received().length, 0);
  await assertServing(t, env);
});

// ── maximum packet size, refused from the fixed header ───────────────────────

test('a PUBLISH header claiming 10 MB over maxPacketSize gets DISCONNECT 0x95 at once, without its body (v5)', async (t) => {
  const env = await startTestEnv(t, { limits: { maxPacketSize: 1024 } });
  const c = await rawSession(env, 5);
  const started = Date.now();
  c.write(Buffer.concat([Buffer.from([0x30]), varint(10 * 1024 * 1024)])); // the fixed header only, no body
  t.true(await c.closed(1000), 'closed without waiting for the body');
  t.true(Date.now() - started < 1000);
  const d = c.after().find((p) => p.type === DISCONNECT);
  t.is(d && disconnectReason(d), 0x95, 'DISCONNECT Packet too large'); // [MQTT-3.2.2-15] server maximum packet size
  await assertServing(t, env);
});

test('a PUBLISH header claiming 10 MB over maxPacketSize closes a v3.1.1 connection at once', async (t) => {
  const env = await startTestEnv(t, { limits: { maxPacketSize: 1024 } });
  const c = await rawSession(env, 4);
  c.write(Buffer.concat([Buffer.from([0x30]), varint(10 * 1024 * 1024)]));
  t.true(await c.closed(1000));
  t.deepEqual(c.after(), []);
  await assertServing(t, env);
});

test('a PUBLISH of exactly maxPacketSize bytes is delivered, one byte more gets DISCONNECT 0x95 (v5)', async (t) => {
  const env = await startTestEnv(t, { limits: { maxPacketSize: 1024 } });
  const sub = await env.client({ clientId: 'size-sub' });
  await sub.subscribeAsync('size/#', { qos: 0 });
  const build = (total: number) => {
    // fixed header 1 + 2 length bytes (remaining > 127), topic 2+6, properties 1, payload rest
    const payloadLength = total - 3 - (2 + 6) - 1;
    const p = publish({ topic: 'size/x', payload: Buffer.alloc(payloadLength, 0x61), version: 5 });
    if (p.length !== total) throw new Error(`built ${p.length} bytes, wanted ${total}`);
    return p;
  };
  const got = nextMessages(sub, 1, 2000);
  const ok = await rawSession(env, 5);
  ok.write(build(1024));
  const [m] = await got;
  t.is(m?.payload.length, 1024 - 12, 'a packet of exactly the maximum size is accepted');
  t.false(await ok.closed(200));
  await expectV5Disconnect(t, env, build(1025), [0x95], 'maxPacketSize + 1');
  await assertServing(t, env);
});

test('a CONNECT header claiming 256 MB is closed at once, before authentication', async (t) => {
  const env = await startTestEnv(t);
  const c = await env.raw();
  const started = Date.now();
  c.write([0x10, 0xff, 0xff, 0xff, 0x7f]); // 268,435,455 bytes claimed, none sent
  t.true(await c.closed(1000));
  t.true(Date.now() - started < 1000);
  t.is(c.received().length, 0, 'no CONNACK');
  t.is(env.b.audit.records.filter((r) => r.event === 'connect').length, 0, 'never reached authentication');
  await assertServing(t, env);
});

test('a CONNECT over maxConnectSize but under maxPacketSize is closed at once', async (t) => {
  const env = await startTestEnv(t, { limits: { maxConnectSize: 1024, maxPacketSize: 1024 * 1024 } });
  const c = await env.raw();
  c.write(Buffer.concat([Buffer.from([0x10]), varint(100_000)])); // within maxPacketSize, over maxConnectSize
  t.true(await c.closed(1000));
  t.is(c.received().length, 0);
  await assertServing(t, env);
});

// ── invalid topic names in PUBLISH ───────────────────────────────────────────

const badTopics: { name: string; topic: string | Buffer; v5: number[]; clause: string }[] = [
  { name: "a '+' wildcard", topic: 'a/+', v5: [0x90], clause: 'MQTT-3.3.2-2' },
  { name: "a '#' wildcard", topic: 'a/#', v5: [0x90], clause: 'MQTT-3.3.2-2' },
  // v5 3.3.2.3.4: a zero-length topic without a topic alias is a Protocol Error; 0x90 is the more specific code.
  { name: 'an empty topic', topic: '', v5: [0x82, 0x90], clause: 'MQTT-4.7.3-1' },
  { name: 'U+0000', topic: Buffer.from([0x61, 0x00, 0x62]), v5: [0x81], clause: 'MQTT-1.5.4-2' },
  { name: 'invalid UTF-8 (0xC3 0x28)', topic: Buffer.from([0x61, 0x2f, 0xc3, 0x28]), v5: [0x81], clause: 'MQTT-1.5.4-1' },
  { name: 'a UTF-16 surrogate encoded in UTF-8', topic: Buffer.from([0x61, 0x2f, 0xed, 0xa0, 0x80]), v5: [0x81], clause: 'MQTT-1.5.4-1' },
  { name: 'an overlong encoding of U+0000', topic: Buffer.from([0x61, 0xc0, 0x80]), v5: [0x81], clause: 'MQTT-1.5.4-1' },
];

for (const bad of badTopics) {
  test(`a PUBLISH topic with ${bad.name} gets DISCONNECT ${bad.v5.map((r) => `0x${r.toString(16)}`).join('/')} (v5) and is not delivered [${bad.clause}]`, async (t) => {
    const env = await startTestEnv(t);
    const watch = await hashWatcher(t, env);
    await expectV5Disconnect(t, env, publish({ topic: bad.topic, payload: 'bad', version: 5 }), bad.v5, bad.name);
    await expectV5Disconnect(t, env, publish({ topic: bad.topic, payload: 'bad', qos: 1, version: 5 }), bad.v5, `${bad.name} at QoS 1`);
    await watch.check();
    await assertServing(t, env);
  });

  test(`a PUBLISH topic with ${bad.name} closes a v3.1.1 connection and is not delivered [${bad.clause}]`, async (t) => {
    const env = await startTestEnv(t);
    const watch = await hashWatcher(t, env);
    await expectV3Close(t, env, publish({ topic: bad.topic, payload: 'bad', version: 4 }), bad.name);
    await expectV3Close(t, env, publish({ topic: bad.topic, payload: 'bad', qos: 1, version: 4 }), `${bad.name} at QoS 1`);
    await watch.check();
    await assertServing(t, env);
  });
}

test('a SUBSCRIBE filter with invalid UTF-8 gets DISCONNECT 0x81 (v5), not a SUBACK', async (t) => {
  const env = await startTestEnv(t);
  await expectV5Disconnect(t, env, subscribe(1, [{ topic: Buffer.from([0x61, 0x2f, 0xc3, 0x28]), qos: 0 }], 5), [0x81], 'invalid UTF-8 filter'); // [MQTT-1.5.4-1]
  await assertServing(t, env);
});

test('a client id with invalid UTF-8 is closed without a successful CONNACK', async (t) => {
  const env = await startTestEnv(t);
  const c = await env.raw();
  c.write(frame(0x10, str('MQTT'), Buffer.from([4, 0x02]), u16(60), str(Buffer.from([0x63, 0xc3, 0x28])))); // [MQTT-1.5.3-1]
  t.true(await c.closed(2000));
  t.is(c.received().length, 0, 'v3.1.1 has no CONNACK code for a malformed CONNECT: just close');
  await assertServing(t, env);
});

// ── bad header flags and empty SUBSCRIBE ─────────────────────────────────────

test('a PUBLISH with QoS 3 gets DISCONNECT 0x81 (v5) and closes a v3.1.1 connection', async (t) => {
  const env = await startTestEnv(t);
  const watch = await hashWatcher(t, env);
  // [MQTT-3.3.1-4]: both QoS bits set is a Malformed Packet.
  const qos3 = (version: 4 | 5) => publish({ topic: 'q/3', payload: 'bad', qos: 1, version, first: 0x36 });
  await expectV5Disconnect(t, env, qos3(5), [0x81], 'QoS 3');
  await expectV3Close(t, env, qos3(4), 'QoS 3');
  await watch.check();
  await assertServing(t, env);
});

test('a SUBSCRIBE with reserved flags 0000 gets DISCONNECT 0x81 (v5) and closes a v3.1.1 connection', async (t) => {
  const env = await startTestEnv(t);
  // [MQTT-3.8.1-1], [MQTT-2.2.2-2]: SUBSCRIBE flags must be 0010.
  await expectV5Disconnect(t, env, subscribe(1, [{ topic: 'a', qos: 0 }], 5, 0x80), [0x81], 'SUBSCRIBE flags 0');
  await expectV3Close(t, env, subscribe(1, [{ topic: 'a', qos: 0 }], 4, 0x80), 'SUBSCRIBE flags 0');
  await assertServing(t, env);
});

test('a PUBREL with reserved flags 0000 gets DISCONNECT 0x81 (v5) and closes a v3.1.1 connection', async (t) => {
  const env = await startTestEnv(t);
  // [MQTT-3.6.1-1]: PUBREL flags must be 0010.
  await expectV5Disconnect(t, env, frame(0x60, u16(1)), [0x81], 'PUBREL flags 0');
  await expectV3Close(t, env, frame(0x60, u16(1)), 'PUBREL flags 0');
  await assertServing(t, env);
});

test('an UNSUBSCRIBE with reserved flags 0000 gets DISCONNECT 0x81 (v5)', async (t) => {
  const env = await startTestEnv(t);
  // [MQTT-3.10.1-1]
  await expectV5Disconnect(t, env, frame(0xa0, u16(1), props(), str('a')), [0x81], 'UNSUBSCRIBE flags 0');
  await assertServing(t, env);
});

test('a SUBSCRIBE with no topic filters gets DISCONNECT 0x82 (v5) and closes a v3.1.1 connection', async (t) => {
  const env = await startTestEnv(t);
  // [MQTT-3.8.3-2] (v5: Protocol Error), [MQTT-3.8.3-3] (v3.1.1: protocol violation).
  await expectV5Disconnect(t, env, subscribe(1, [], 5), [0x81, 0x82], 'empty SUBSCRIBE');
  await expectV3Close(t, env, subscribe(1, [], 4), 'empty SUBSCRIBE');
  await assertServing(t, env);
});

// [MQTT-2.2.1-3] (v5), [MQTT-2.3.1-1] (v3.1.1): a QoS > 0 PUBLISH and a SUBSCRIBE MUST carry a
// non-zero packet identifier; one with 0 is not a valid packet and must not be processed.
test('a QoS 1 PUBLISH with packet identifier 0 gets DISCONNECT (v5) and is neither acknowledged nor delivered', async (t) => {
  const env = await startTestEnv(t);
  const watch = await hashWatcher(t, env);
  await expectV5Disconnect(t, env, publish({ topic: 'id/zero', payload: 'bad', qos: 1, packetId: 0, version: 5 }), [0x81, 0x82], 'PUBLISH id 0');
  await watch.check();
  await assertServing(t, env);
});

test('a QoS 1 PUBLISH with packet identifier 0 closes a v3.1.1 connection and is neither acknowledged nor delivered', async (t) => {
  const env = await startTestEnv(t);
  const watch = await hashWatcher(t, env);
  await expectV3Close(t, env, publish({ topic: 'id/zero', payload: 'bad', qos: 1, packetId: 0, version: 4 }), 'PUBLISH id 0');
  await watch.check();
  await assertServing(t, env);
});

test('a SUBSCRIBE with packet identifier 0 gets DISCONNECT (v5), not a SUBACK', async (t) => {
  const env = await startTestEnv(t);
  await expectV5Disconnect(t, env, subscribe(0, [{ topic: 'a', qos: 0 }], 5), [0x81, 0x82], 'SUBSCRIBE id 0');
  await assertServing(t, env);
});

// ── topic aliases ────────────────────────────────────────────────────────────

test('a PUBLISH with topic alias 0 gets DISCONNECT 0x94', async (t) => {
  const env = await startTestEnv(t);
  const watch = await hashWatcher(t, env);
  // [MQTT-3.3.2-8]
  await expectV5Disconnect(t, env, publish({ topic: 'alias/zero', version: 5, properties: props(topicAliasProp(0)) }), [0x94], 'alias 0');
  await watch.check();
  await assertServing(t, env);
});

test('a PUBLISH with a topic alias above the maximum gets DISCONNECT 0x94', async (t) => {
  const env = await startTestEnv(t, { limits: { topicAliasMaximum: 5 } });
  const watch = await hashWatcher(t, env);
  // [MQTT-3.3.2-9]
  await expectV5Disconnect(t, env, publish({ topic: 'alias/high', version: 5, properties: props(topicAliasProp(6)) }), [0x94], 'alias 6 > 5');
  await watch.check();
  await assertServing(t, env);
});

test('a PUBLISH whose Response Topic holds a wildcard gets DISCONNECT 0x82 and is not delivered', async (t) => {
  const env = await startTestEnv(t);
  const watch = await hashWatcher(t, env);
  // [MQTT-3.3.2-14]: the Response Topic is a topic name, without wildcards
  await expectV5Disconnect(t, env, publish({ topic: 'rr/request', version: 5, properties: props(Buffer.from([0x08]), str('rr/#')) }), [0x82], 'Response Topic rr/#');
  await watch.check();
  await assertServing(t, env);
});

// ── packets only a server sends ──────────────────────────────────────────────

test('a CONNACK sent by a client gets DISCONNECT 0x82 (v5) and closes a v3.1.1 connection', async (t) => {
  const env = await startTestEnv(t);
  // CONNACK is sent only by the Server (v5 3.2); receiving it is a Protocol Error (v5 4.13.1), v3.1.1 closes.
  await expectV5Disconnect(t, env, Buffer.from([0x20, 0x03, 0x00, 0x00, 0x00]), [0x82], 'CONNACK from client');
  await expectV5Disconnect(t, env, Buffer.from([0x20, 0x02, 0x00, 0x00]), [0x81, 0x82], 'short CONNACK from client');
  await expectV3Close(t, env, Buffer.from([0x20, 0x02, 0x00, 0x00]), 'CONNACK from client');
  await assertServing(t, env);
});

test('a SUBACK, UNSUBACK or PINGRESP sent by a client gets DISCONNECT 0x82 (v5) and closes a v3.1.1 connection', async (t) => {
  const env = await startTestEnv(t);
  await expectV5Disconnect(t, env, Buffer.from([0x90, 0x04, 0x00, 0x01, 0x00, 0x00]), [0x82], 'SUBACK from client');
  await expectV5Disconnect(t, env, Buffer.from([0xb0, 0x04, 0x00, 0x01, 0x00, 0x00]), [0x82], 'UNSUBACK from client');
  await expectV5Disconnect(t, env, Buffer.from([0xd0, 0x00]), [0x82], 'PINGRESP from client');
  await expectV3Close(t, env, Buffer.from([0x90, 0x03, 0x00, 0x01, 0x00]), 'SUBACK from client');
  await expectV3Close(t, env, Buffer.from([0xd0, 0x00]), 'PINGRESP from client');
  await assertServing(t, env);
});

// ── protocol level ───────────────────────────────────────────────────────────

test('an unsupported protocol level 6 gets CONNACK return code 1 and the connection is closed', async (t) => {
  const env = await startTestEnv(t);
  const c = await env.raw();
  c.write(connectWithLevel('level6', 6)); // [MQTT-3.1.2-2]
  t.true(await c.closed(2000));
  t.deepEqual([...c.received()], [0x20, 0x02, 0x00, 0x01], 'CONNACK 0x01 unacceptable protocol version, in the v3.1.1 form');
  await assertServing(t, env);
});

// ── the CONNECT deadline ─────────────────────────────────────────────────────

test('an idle socket that sends no CONNECT is closed shortly after connectTimeoutMs', async (t) => {
  const env = await startTestEnv(t, { limits: { connectTimeoutMs: 300 } });
  const c = await env.raw();
  const started = Date.now();
  // The deadline is checked by a sweep timer (every connectTimeoutMs / 4 here), so allow one tick either way.
  t.false(await c.closed(100), 'not closed well before the deadline');
  t.true(await c.closed(1000), 'closed within about a second');
  const elapsed = Date.now() - started;
  t.true(elapsed >= 100 && elapsed < 1200, `closed after ${elapsed} ms`);
  t.is(c.received().length, 0);
  await assertServing(t, env);
});

test('a client that sends half a CONNECT and stops is closed after connectTimeoutMs', async (t) => {
  const env = await startTestEnv(t, { limits: { connectTimeoutMs: 300 } });
  const c = await env.raw();
  const whole = rawConnectPacket('slowpoke', 4);
  const started = Date.now();
  c.write(whole.subarray(0, Math.floor(whole.length / 2)));
  t.true(await c.closed(1200), 'a partial CONNECT does not hold the connection open');
  t.true(Date.now() - started < 1200);
  t.is(c.received().length, 0, 'no CONNACK');
  t.is(env.b.broker.connectedClients, 0);
  await assertServing(t, env);
});

test('a client that trickles a CONNECT byte by byte is still closed at the deadline', async (t) => {
  const env = await startTestEnv(t, { limits: { connectTimeoutMs: 300 } });
  const c = await env.raw();
  // About 90 bytes at one byte per 40 ms: the CONNECT would take over 3 s to arrive.
  const whole = rawConnectPacket(`trickle-${'x'.repeat(64)}`, 4);
  let i = 0;
  const started = Date.now();
  const timer = setInterval(() => {
    if (i < whole.length - 1 && !c.socket.destroyed) c.write(whole.subarray(i, ++i));
  }, 40);
  t.teardown(() => clearInterval(timer));
  t.true(await c.closed(1000), 'sending bytes does not extend the CONNECT deadline');
  clearInterval(timer);
  t.true(Date.now() - started < 1000);
  t.true(i < whole.length - 1, 'closed while the CONNECT was still arriving');
  t.is(c.received().length, 0);
  await assertServing(t, env);
});

// ── isolation ────────────────────────────────────────────────────────────────

test('garbage from one client does not disturb another subscribed client', async (t) => {
  const env = await startTestEnv(t);
  const good = await env.client({ clientId: 'good', protocolVersion: 5 });
  await good.subscribeAsync('news/#', { qos: 1 });
  let goodClosed = false;
  good.on('close', () => {
    goodClosed = true;
  });

  // Garbage before CONNECT, right behind a CONNECT, after a v3.1.1 CONNECT, after a v5 CONNECT.
  // It starts with a complete frame of the reserved packet type 0 (so the broker has a whole
  // packet to refuse rather than a header to wait on), then noise.
  const noise = Buffer.from(Array.from({ length: 512 }, (_, i) => (i * 151 + 7) & 0xff));
  const garbage = Buffer.concat([Buffer.from([0x0f, 0x04, 0xde, 0xad, 0xbe, 0xef]), noise]);
  const pre = await env.raw();
  pre.write(garbage);
  const mid = await env.raw();
  mid.write(Buffer.concat([rawConnectPacket('bad-mid', 4), garbage]));
  const v3 = await rawSession(env, 4);
  v3.write(garbage);
  const v5 = await rawSession(env, 5);
  v5.write(Buffer.concat([Buffer.from([0xf7, 0x05]), garbage]));
  for (const bad of [pre, mid, v3, v5]) t.true(await bad.closed(2000), 'each bad client is closed');

  const pub = await env.client({ clientId: 'pub' });
  const got = nextMessages(good, 2, 2000);
  await pub.publishAsync('news/1', 'one', { qos: 1 });
  await pub.publishAsync('news/2', 'two', { qos: 0 });
  const msgs = await got;
  t.deepEqual(
    msgs.map((m) => [m.topic, m.payload]),
    [
      ['news/1', 'one'],
      ['news/2', 'two'],
    ],
  );
  t.false(goodClosed, 'the good client was never disconnected');
  t.true(good.connected);
  await assertServing(t, env);
});
