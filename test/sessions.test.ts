/**
 * Sessions, CONNACK, keep-alive, wills and offline queues, over real loopback sockets, for
 * MQTT 3.1.1 and 5.0 (and one MQTT 3.1 CONNECT).
 */
import test, { type ExecutionContext } from 'ava';
import mqtt, { type IClientOptions, type IConnackPacket, type MqttClient } from 'mqtt';
import type { ConfigInput } from '../src/index.ts';
import { MemoryStore } from '../src/index.ts';
import { delay, rawConnect, startBroker, type RawClient, type TestBroker } from './helpers.ts';
import { PacketType, decodeConnack, encodeConnect, encodePingreq, encodePublish, waitForType } from './raw-mqtt.ts';

// ── local helpers ────────────────────────────────────────────────────────────

interface Received {
  topic: string;
  payload: string;
  qos: number;
  retain: boolean;
  dup: boolean;
}

interface Opened {
  client: MqttClient;
  connack: IConnackPacket;
  /** Every message received since the socket opened (collected before CONNACK, so none is missed). */
  messages: Received[];
}

async function broker(t: ExecutionContext, config: Partial<ConfigInput> = {}, options: Parameters<typeof startBroker>[1] = {}): Promise<TestBroker> {
  const b = await startBroker(config, options);
  t.teardown(() => b.stop());
  return b;
}

/** Connects an mqtt.js client, collecting messages from the first byte; resolves with the CONNACK. */
function open(t: ExecutionContext, port: number, options: IClientOptions = {}): Promise<Opened> {
  return new Promise((resolve, reject) => {
    const messages: Received[] = [];
    const client = mqtt.connect({ host: '127.0.0.1', port, reconnectPeriod: 0, connectTimeout: 3000, ...options });
    t.teardown(() => {
      client.end(true);
    });
    client.on('message', (topic, payload, packet) => {
      messages.push({ topic, payload: payload.toString(), qos: packet.qos, retain: packet.retain, dup: packet.dup });
    });
    client.once('connect', (connack) => resolve({ client, connack, messages }));
    client.once('error', reject);
    client.once('close', () => reject(new Error('closed before CONNACK')));
  });
}

/** Connects and expects a refusal; resolves with the CONNACK return / reason code. */
async function refusedWith(t: ExecutionContext, port: number, options: IClientOptions): Promise<number> {
  try {
    const { client } = await open(t, port, options);
    client.end(true);
    return 0;
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (typeof code !== 'number') throw err;
    return code;
  }
}

/** Polls until `cond` holds or `ms` passes; returns whether it held. */
async function until(cond: () => boolean, ms = 2000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() >= end) return false;
    await delay(10);
  }
  return true;
}

function closed(client: MqttClient, ms = 2000): Promise<boolean> {
  return new Promise((resolve) => {
    if (!client.connected && client.disconnected) return resolve(true);
    const timer = setTimeout(() => resolve(false), ms);
    client.once('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

async function raw(t: ExecutionContext, port: number): Promise<RawClient> {
  const r = await rawConnect(port);
  t.teardown(() => {
    r.socket.destroy();
  });
  return r;
}

const payloads = (messages: Received[]) => messages.map((m) => m.payload);

type V = 4 | 5;
const VERSIONS: V[] = [4, 5];
const vname = (v: V) => (v === 5 ? 'v5' : 'v3.1.1');
/** Options for a session that outlives its connection, in each protocol's terms. */
const persistent = (v: V, expiry = 300): IClientOptions =>
  v === 5 ? { protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: expiry } } : { protocolVersion: 4, clean: false };

// ── CONNACK ──────────────────────────────────────────────────────────────────

test('v3.1.1 CONNACK for a new session: return code 0, sessionPresent false', async (t) => {
  const b = await broker(t);
  const { connack } = await open(t, b.port, { protocolVersion: 4, clientId: 'new-v4', clean: false });
  t.is(connack.returnCode, 0);
  t.false(connack.sessionPresent); // [MQTT-3.2.2-3]
});

test('v5 CONNACK for a new session: reason code 0, sessionPresent false', async (t) => {
  const b = await broker(t);
  const { connack } = await open(t, b.port, { protocolVersion: 5, clientId: 'new-v5', clean: false, properties: { sessionExpiryInterval: 60 } });
  t.is(connack.reasonCode, 0);
  t.false(connack.sessionPresent); // [MQTT-3.2.2-3]
});

test('MQTT 3.1 (MQIsdp, level 3) CONNECT is accepted with return code 0', async (t) => {
  const b = await broker(t);
  const { client, connack, messages } = await open(t, b.port, { protocolVersion: 3, protocolId: 'MQIsdp', clientId: 'old-v3' });
  t.is(connack.returnCode, 0);
  t.false(connack.sessionPresent);
  // The connection is usable: a round trip through the broker.
  await client.subscribeAsync('v31/t', { qos: 1 });
  await client.publishAsync('v31/t', 'hello 3.1', { qos: 1 });
  t.true(await until(() => messages.length === 1));
  t.deepEqual(payloads(messages), ['hello 3.1']);
});

for (const v of VERSIONS) {
  test(`${vname(v)}: resuming a persistent session gives sessionPresent true and keeps its subscriptions`, async (t) => {
    const b = await broker(t);
    const first = await open(t, b.port, { clientId: `resume-${v}`, ...persistent(v) });
    t.false(first.connack.sessionPresent);
    await first.client.subscribeAsync('resume/t', { qos: 1 });
    await first.client.endAsync();

    const again = await open(t, b.port, { clientId: `resume-${v}`, ...persistent(v) });
    t.true(again.connack.sessionPresent); // [MQTT-3.2.2-2]
    const pub = await open(t, b.port, { clientId: `resume-pub-${v}` });
    await pub.client.publishAsync('resume/t', 'still subscribed', { qos: 1 });
    t.true(await until(() => again.messages.length === 1));
    t.deepEqual(payloads(again.messages), ['still subscribed']);
  });

  test(`${vname(v)}: clean start discards the old session and its subscriptions`, async (t) => {
    const b = await broker(t);
    const first = await open(t, b.port, { clientId: `clean-${v}`, ...persistent(v) });
    await first.client.subscribeAsync('clean/t', { qos: 1 });
    await first.client.endAsync();

    const fresh = await open(t, b.port, {
      clientId: `clean-${v}`,
      protocolVersion: v,
      clean: true,
      ...(v === 5 ? { properties: { sessionExpiryInterval: 300 } } : {}),
    });
    t.false(fresh.connack.sessionPresent); // [MQTT-3.2.2-1] / [MQTT-3.1.2-6]
    const pub = await open(t, b.port, { clientId: `clean-pub-${v}` });
    await pub.client.publishAsync('clean/t', 'nobody should get this', { qos: 1 });
    await delay(300);
    t.deepEqual(payloads(fresh.messages), []);
  });
}

// ── v5 session expiry ────────────────────────────────────────────────────────

test('v5: a session with expiry 1 s is gone after 1.5 s offline', async (t) => {
  const b = await broker(t);
  const first = await open(t, b.port, { clientId: 'exp-1', protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 1 } });
  await first.client.subscribeAsync('exp/t', { qos: 1 });
  await first.client.endAsync();
  await delay(1500);
  const again = await open(t, b.port, { clientId: 'exp-1', protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 60 } });
  t.false(again.connack.sessionPresent); // [MQTT-3.1.2-23]
  const pub = await open(t, b.port, { clientId: 'exp-1-pub' });
  await pub.client.publishAsync('exp/t', 'expired subscription', { qos: 1 });
  await delay(300);
  t.deepEqual(payloads(again.messages), []);
});

test('v5: a session with expiry 0 ends at disconnect', async (t) => {
  const b = await broker(t);
  const first = await open(t, b.port, { clientId: 'exp-0', protocolVersion: 5, clean: false });
  await first.client.subscribeAsync('exp0/t', { qos: 1 });
  await first.client.endAsync();
  await delay(100);
  const again = await open(t, b.port, { clientId: 'exp-0', protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 60 } });
  t.false(again.connack.sessionPresent);
  const pub = await open(t, b.port, { clientId: 'exp-0-pub' });
  await pub.client.publishAsync('exp0/t', 'session ended', { qos: 1 });
  await delay(300);
  t.deepEqual(payloads(again.messages), []);
});

test('v5: the broker caps the session expiry at limits.maxSessionExpiry and says so in CONNACK', async (t) => {
  const b = await broker(t, { limits: { maxSessionExpiry: 1 } });
  const first = await open(t, b.port, { clientId: 'cap', protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 3600 } });
  t.is(first.connack.properties?.sessionExpiryInterval, 1); // v5 3.2.2.3.2: the server's value is returned in CONNACK
  await first.client.subscribeAsync('cap/t', { qos: 1 });
  await first.client.endAsync();
  // The cap is really applied: after 1.5 s offline the session is gone although 3600 s were asked.
  await delay(1500);
  const again = await open(t, b.port, { clientId: 'cap', protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 1 } });
  t.false(again.connack.sessionPresent);
  // A request within the cap is not echoed back.
  t.is(again.connack.properties?.sessionExpiryInterval, undefined);
});

// ── session takeover ─────────────────────────────────────────────────────────

test('v5: a second connection with the same client id takes the session over; the first gets DISCONNECT 0x8E', async (t) => {
  const b = await broker(t);
  const first = await open(t, b.port, { clientId: 'takeover-5', protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 300 } });
  await first.client.subscribeAsync('take/t', { qos: 1 });
  const disconnectCode = new Promise<number | undefined>((resolve) => first.client.once('disconnect', (p) => resolve(p.reasonCode)));
  const firstClosed = closed(first.client);

  const second = await open(t, b.port, { clientId: 'takeover-5', protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 300 } });
  t.is(await disconnectCode, 0x8e); // [MQTT-3.1.4-3]
  t.true(await firstClosed);
  t.true(second.connack.sessionPresent);

  const pub = await open(t, b.port, { clientId: 'takeover-5-pub' });
  await pub.client.publishAsync('take/t', 'to the new connection', { qos: 1 });
  t.true(await until(() => second.messages.length === 1));
  t.deepEqual(payloads(second.messages), ['to the new connection']);
  t.deepEqual(payloads(first.messages), []);
});

test('v3.1.1: a second connection with the same client id closes the first and continues the session', async (t) => {
  const b = await broker(t);
  const first = await open(t, b.port, { clientId: 'takeover-4', protocolVersion: 4, clean: false });
  await first.client.subscribeAsync('take4/t', { qos: 1 });
  const firstClosed = closed(first.client);

  const second = await open(t, b.port, { clientId: 'takeover-4', protocolVersion: 4, clean: false });
  t.true(await firstClosed); // [MQTT-3.1.4-2]
  t.true(second.connack.sessionPresent);

  const pub = await open(t, b.port, { clientId: 'takeover-4-pub' });
  await pub.client.publishAsync('take4/t', 'continued', { qos: 1 });
  t.true(await until(() => second.messages.length === 1));
  t.deepEqual(payloads(second.messages), ['continued']);
});

// ── client id binding ────────────────────────────────────────────────────────

const usersListener = {
  listeners: [
    {
      name: 'test',
      type: 'tcp' as const,
      host: '127.0.0.1',
      port: 0,
      auth: [{ provider: 'static-users' as const, users: [{ username: 'alice', password: 'a' }, { username: 'bob', password: 'b' }] }],
    },
  ],
};

test("v5: bob using alice's connected client id gets a session of his own: alice stays connected and nothing crosses", async (t) => {
  const b = await broker(t, usersListener);
  const alice = await open(t, b.port, { clientId: 'alice-dev', username: 'alice', password: 'a', protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 300 } });
  await alice.client.subscribeAsync('alice/inbox', { qos: 1 });
  const aliceClosed = closed(alice.client, 500);
  const bob = await open(t, b.port, { clientId: 'alice-dev', username: 'bob', password: 'b', protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 300 } });
  t.is(bob.connack.reasonCode, 0);
  t.false(bob.connack.sessionPresent, "bob does not get alice's session");
  t.false(await aliceClosed, "alice's connection survives bob's connect");
  const pub = await open(t, b.port, { clientId: 'pub', username: 'bob', password: 'b' });
  await pub.client.publishAsync('alice/inbox', 'for alice', { qos: 1 });
  t.true(await until(() => alice.messages.length === 1));
  await delay(200);
  t.deepEqual(payloads(bob.messages), [], "alice's subscription does not deliver to bob");
  t.false(b.audit.records.some((r) => r.event === 'session' && r.decision === 'deny'), 'nothing was refused');
});

test("v3.1.1: bob using alice's offline client id does not resume her session; alice still finds it with its queue", async (t) => {
  const b = await broker(t, usersListener);
  const alice = await open(t, b.port, { clientId: 'alice-dev', username: 'alice', password: 'a', protocolVersion: 4, clean: false });
  await alice.client.subscribeAsync('alice/inbox', { qos: 1 });
  await alice.client.endAsync();
  const pub = await open(t, b.port, { clientId: 'pub', username: 'bob', password: 'b' });
  await pub.client.publishAsync('alice/inbox', 'queued for alice', { qos: 1 });
  const bob = await open(t, b.port, { clientId: 'alice-dev', username: 'bob', password: 'b', protocolVersion: 4, clean: false });
  t.is(bob.connack.returnCode, 0);
  t.false(bob.connack.sessionPresent, "bob does not get alice's session");
  await delay(300);
  t.deepEqual(payloads(bob.messages), [], "alice's queued message does not reach bob");
  await bob.client.endAsync();
  // The session, and what was queued for it, is still alice's.
  const back = await open(t, b.port, { clientId: 'alice-dev', username: 'alice', password: 'a', protocolVersion: 4, clean: false });
  t.true(back.connack.sessionPresent);
  t.true(await until(() => back.messages.length === 1));
  t.deepEqual(payloads(back.messages), ['queued for alice']);
});

// ── client identifiers ───────────────────────────────────────────────────────

test('v5: an empty client id gets an assigned client identifier in CONNACK', async (t) => {
  const b = await broker(t);
  const one = await open(t, b.port, { clientId: '', protocolVersion: 5 });
  const two = await open(t, b.port, { clientId: '', protocolVersion: 5 });
  t.is(one.connack.reasonCode, 0);
  const id1 = one.connack.properties?.assignedClientIdentifier;
  const id2 = two.connack.properties?.assignedClientIdentifier;
  t.is(typeof id1, 'string'); // [MQTT-3.2.2-16]
  t.true((id1 ?? '').length > 0);
  t.not(id1, id2, 'each connection gets its own identifier');
});

test('v3.1.1: an empty client id with clean session 0 is refused with return code 2', async (t) => {
  const b = await broker(t);
  const r = await raw(t, b.port);
  r.write(encodeConnect({ clientId: '', clean: false, version: 4 }));
  const [ack] = await waitForType(r, PacketType.CONNACK);
  t.truthy(ack);
  if (ack === undefined) return;
  t.deepEqual(decodeConnack(ack), { sessionPresent: false, code: 2 }); // [MQTT-3.1.3-8]
  t.true(await r.closed(2000));
});

test('v3.1.1: an empty client id with clean session 1 is accepted', async (t) => {
  const b = await broker(t);
  const { client, connack, messages } = await open(t, b.port, { clientId: '', protocolVersion: 4, clean: true });
  t.is(connack.returnCode, 0); // [MQTT-3.1.3-6]
  await client.subscribeAsync('anon-id/t', { qos: 0 });
  await client.publishAsync('anon-id/t', 'works', { qos: 0 });
  t.true(await until(() => messages.length === 1));
});

// ── keep-alive ───────────────────────────────────────────────────────────────

test('a silent client with keep-alive 1 s is disconnected after about 1.5 s and its will is published', async (t) => {
  const b = await broker(t);
  const sub = await open(t, b.port, { clientId: 'ka-watcher' });
  await sub.client.subscribeAsync('ka/will', { qos: 1 });
  const r = await raw(t, b.port);
  // The keep-alive runs from the last packet the broker received: the CONNECT.
  const start = Date.now();
  r.write(encodeConnect({ clientId: 'ka-silent', keepAlive: 1, version: 4, will: { topic: 'ka/will', payload: 'silent client gone', qos: 1 } }));
  const [ack] = await waitForType(r, PacketType.CONNACK);
  t.is(ack === undefined ? undefined : decodeConnack(ack).code, 0);
  t.false(await r.closed(Math.max(0, start + 1300 - Date.now())), 'not (much) before one and a half times the keep-alive');
  t.true(await r.closed(2000), 'closed by the broker'); // [MQTT-3.1.2-24]
  const elapsed = Date.now() - start;
  t.true(elapsed >= 1300 && elapsed <= 3000, `closed ${elapsed} ms after the CONNECT`);
  t.true(await until(() => sub.messages.length === 1, 1000));
  t.deepEqual(payloads(sub.messages), ['silent client gone']);
});

test('a client that sends PINGREQ within its keep-alive stays connected', async (t) => {
  const b = await broker(t);
  const r = await raw(t, b.port);
  r.write(encodeConnect({ clientId: 'ka-pinger', keepAlive: 1, version: 4 }));
  await waitForType(r, PacketType.CONNACK);
  const timer = setInterval(() => r.write(encodePingreq()), 300);
  t.teardown(() => clearInterval(timer));
  t.false(await r.closed(2200), 'still connected well past 1.5 x the keep-alive');
  clearInterval(timer);
  const pingresps = await waitForType(r, PacketType.PINGRESP, 3);
  t.true(pingresps.length >= 3); // [MQTT-3.12.4-1]
});

test('a client that trickles one packet byte by byte is not kept alive by the bytes: closed at 1.5 x its keep-alive', async (t) => {
  const b = await broker(t);
  const r = await raw(t, b.port);
  const start = Date.now();
  r.write(encodeConnect({ clientId: 'ka-trickle', keepAlive: 1, version: 4 }));
  await waitForType(r, PacketType.CONNACK);
  // A PUBLISH that claims 1,000 bytes, sent one byte every 200 ms: never a whole control packet.
  const packet = encodePublish({ topic: 'ka/trickle', payload: Buffer.alloc(1000 - 12), qos: 0 });
  let i = 0;
  const timer = setInterval(() => {
    if (i < packet.length) r.write(packet.subarray(i, ++i));
  }, 200);
  t.teardown(() => clearInterval(timer));
  t.true(await r.closed(4000), 'closed by the broker'); // [MQTT-3.1.2-24]
  clearInterval(timer);
  const elapsed = Date.now() - start;
  t.true(elapsed >= 1300 && elapsed <= 4000, `closed ${elapsed} ms after the CONNECT, with ${i} bytes trickled`);
});

for (const v of [3, 4, 5] as const) {
  test(`${v === 3 ? 'v3.1' : v === 4 ? 'v3.1.1' : 'v5'}: keep-alive 0 (keep-alive off) is accepted on the defaults and the idle client is not cut off`, async (t) => {
    const b = await broker(t);
    const c = await open(t, b.port, { clientId: `ka-zero-${v}`, protocolVersion: v, ...(v === 3 ? { protocolId: 'MQIsdp' as const } : {}), keepalive: 0 });
    t.is(v === 5 ? c.connack.reasonCode : c.connack.returnCode, 0); // [MQTT-3.1.2-10]
    t.is(c.connack.properties?.serverKeepAlive, undefined, 'no Server Keep Alive forced on the client');
    t.false(await closed(c.client, 2500), 'an idle client with keep-alive 0 stays connected');
    // Still fully usable after being idle.
    await c.client.subscribeAsync('ka/zero', { qos: 1 });
    await c.client.publishAsync('ka/zero', 'still here', { qos: 1 });
    t.true(await until(() => c.messages.length === 1));
  });
}

test('limits.keepAliveZeroMaxIdle (opt-in): v5 keep-alive 0 gets it as Server Keep Alive; an idle v3.1.1 keep-alive 0 client is ended', async (t) => {
  const b = await broker(t, { limits: { keepAliveZeroMaxIdle: 1 } });
  const v5 = await open(t, b.port, { clientId: 'ka-zero-idle-5', protocolVersion: 5, keepalive: 0 });
  t.is(v5.connack.properties?.serverKeepAlive, 1); // [MQTT-3.2.2-21]
  const r = await raw(t, b.port);
  const start = Date.now();
  r.write(encodeConnect({ clientId: 'ka-zero-idle-4', keepAlive: 0, version: 4 }));
  const [ack] = await waitForType(r, PacketType.CONNACK);
  t.is(ack === undefined ? undefined : decodeConnack(ack).code, 0, 'accepted');
  t.true(await r.closed(4000), 'ended once idle past the bound');
  t.true(Date.now() - start >= 1300);
});

test('v5: a keep-alive above limits.maxKeepAlive is lowered with Server Keep Alive in CONNACK', async (t) => {
  const b = await broker(t, { limits: { maxKeepAlive: 10 } });
  const { connack } = await open(t, b.port, { clientId: 'ka-big-5', protocolVersion: 5, keepalive: 60 });
  t.is(connack.reasonCode, 0);
  t.is(connack.properties?.serverKeepAlive, 10); // [MQTT-3.2.2-21]
  const within = await open(t, b.port, { clientId: 'ka-ok-5', protocolVersion: 5, keepalive: 5 });
  t.is(within.connack.properties?.serverKeepAlive, undefined);
});

test('v3.1.1: a keep-alive above limits.maxKeepAlive is refused with return code 2', async (t) => {
  const b = await broker(t, { limits: { maxKeepAlive: 10 } });
  t.is(await refusedWith(t, b.port, { clientId: 'ka-big-4', protocolVersion: 4, keepalive: 60 }), 2);
  const within = await open(t, b.port, { clientId: 'ka-ok-4', protocolVersion: 4, keepalive: 10 });
  t.is(within.connack.returnCode, 0);
});

// ── wills ────────────────────────────────────────────────────────────────────

async function watcher(t: ExecutionContext, port: number, topic: string): Promise<Opened> {
  const w = await open(t, port, { clientId: `watch-${topic.replace(/\W/g, '-')}` });
  await w.client.subscribeAsync(topic, { qos: 1 });
  return w;
}

for (const v of VERSIONS) {
  test(`${vname(v)}: the will is published when the connection drops without DISCONNECT`, async (t) => {
    const b = await broker(t);
    const w = await watcher(t, b.port, `will/drop${v}`);
    const c = await open(t, b.port, { clientId: `will-drop-${v}`, protocolVersion: v, will: { topic: `will/drop${v}`, payload: Buffer.from('dropped'), qos: 1, retain: false } });
    c.client.stream.destroy();
    t.true(await until(() => w.messages.length === 1)); // [MQTT-3.1.2-8]
    t.deepEqual(payloads(w.messages), ['dropped']);
  });

  test(`${vname(v)}: the will is not published after a normal DISCONNECT`, async (t) => {
    const b = await broker(t);
    const w = await watcher(t, b.port, `will/clean${v}`);
    const c = await open(t, b.port, { clientId: `will-clean-${v}`, protocolVersion: v, will: { topic: `will/clean${v}`, payload: Buffer.from('should not appear'), qos: 1, retain: false } });
    await c.client.endAsync();
    await delay(500);
    t.deepEqual(payloads(w.messages), []); // [MQTT-3.1.2-10] / [MQTT-3.14.4-3]
  });
}

test('v5: DISCONNECT with reason 0x04 publishes the will', async (t) => {
  const b = await broker(t);
  const w = await watcher(t, b.port, 'will/x04');
  const c = await open(t, b.port, { clientId: 'will-x04', protocolVersion: 5, will: { topic: 'will/x04', payload: Buffer.from('asked for it'), qos: 1, retain: false } });
  await new Promise<void>((resolve) => c.client.end(false, { reasonCode: 0x04 }, () => resolve()));
  t.true(await until(() => w.messages.length === 1));
  t.deepEqual(payloads(w.messages), ['asked for it']);
});

test('v5: a will with delay 1 s is not published at once but after about 1 s', async (t) => {
  const b = await broker(t);
  const w = await watcher(t, b.port, 'will/delay');
  const c = await open(t, b.port, {
    clientId: 'will-delay',
    protocolVersion: 5,
    properties: { sessionExpiryInterval: 10 },
    will: { topic: 'will/delay', payload: Buffer.from('late'), qos: 1, retain: false, properties: { willDelayInterval: 1 } },
  });
  const start = Date.now();
  c.client.stream.destroy();
  await delay(600);
  t.deepEqual(payloads(w.messages), [], 'not published before the delay'); // [MQTT-3.1.3-9]
  t.true(await until(() => w.messages.length === 1, 2000));
  const elapsed = Date.now() - start;
  t.true(elapsed >= 900, `published after ${elapsed} ms`);
  t.deepEqual(payloads(w.messages), ['late']);
});

test('v5: reconnecting within the will delay cancels the will', async (t) => {
  const b = await broker(t);
  const w = await watcher(t, b.port, 'will/cancel');
  const c = await open(t, b.port, {
    clientId: 'will-cancel',
    protocolVersion: 5,
    clean: false,
    properties: { sessionExpiryInterval: 10 },
    will: { topic: 'will/cancel', payload: Buffer.from('should be cancelled'), qos: 1, retain: false, properties: { willDelayInterval: 1 } },
  });
  c.client.stream.destroy();
  await delay(300);
  const back = await open(t, b.port, { clientId: 'will-cancel', protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 10 } });
  t.true(back.connack.sessionPresent);
  await delay(1300);
  t.deepEqual(payloads(w.messages), []); // [MQTT-3.1.3-9]
});

test('v5: the will delay is capped by the session expiry', async (t) => {
  const b = await broker(t);
  const w = await watcher(t, b.port, 'will/capped');
  const c = await open(t, b.port, {
    clientId: 'will-capped',
    protocolVersion: 5,
    properties: { sessionExpiryInterval: 1 },
    will: { topic: 'will/capped', payload: Buffer.from('session ended first'), qos: 1, retain: false, properties: { willDelayInterval: 10 } },
  });
  const start = Date.now();
  c.client.stream.destroy();
  t.true(await until(() => w.messages.length === 1, 2500), 'published when the session ends, not after 10 s');
  const elapsed = Date.now() - start;
  t.true(elapsed >= 800, `published after ${elapsed} ms`);
  t.deepEqual(payloads(w.messages), ['session ended first']);
});

test('a retained will is stored as a retained message', async (t) => {
  const b = await broker(t);
  const c = await open(t, b.port, { clientId: 'will-retained', protocolVersion: 4, will: { topic: 'will/state', payload: Buffer.from('offline'), qos: 1, retain: true } });
  c.client.stream.destroy();
  let stored = false;
  const deadline = Date.now() + 2000;
  while (!stored && Date.now() < deadline) {
    stored = (await b.store.loadRetained()).some((m) => m.topic === 'will/state' && m.payload.toString() === 'offline' && m.retain);
    if (!stored) await delay(20);
  }
  t.true(stored, 'the will is in the retained store');
  const late = await open(t, b.port, { clientId: 'will-late-sub' });
  await late.client.subscribeAsync('will/state', { qos: 1 });
  t.true(await until(() => late.messages.length === 1));
  t.is(late.messages[0]?.payload, 'offline');
  t.true(late.messages[0]?.retain); // [MQTT-3.1.2-17]
});

// ── offline queue ────────────────────────────────────────────────────────────

for (const v of VERSIONS) {
  test(`${vname(v)}: QoS 1 messages for an offline persistent session are delivered on reconnect`, async (t) => {
    const b = await broker(t);
    const s = await open(t, b.port, { clientId: `queue1-${v}`, ...persistent(v) });
    await s.client.subscribeAsync('queue/q1', { qos: 1 });
    await s.client.endAsync();
    const pub = await open(t, b.port, { clientId: `queue1-pub-${v}` });
    for (const p of ['one', 'two', 'three']) await pub.client.publishAsync('queue/q1', p, { qos: 1 });

    const back = await open(t, b.port, { clientId: `queue1-${v}`, ...persistent(v) });
    t.true(back.connack.sessionPresent);
    t.true(await until(() => back.messages.length >= 3)); // [MQTT-3.1.2-5]
    await delay(100);
    t.deepEqual(payloads(back.messages), ['one', 'two', 'three']);
    t.true(back.messages.every((m) => m.qos === 1));
  });

  test(`${vname(v)}: QoS 0 messages for an offline session are not queued by default`, async (t) => {
    const b = await broker(t);
    const s = await open(t, b.port, { clientId: `queue0-${v}`, ...persistent(v) });
    await s.client.subscribeAsync('queue/q0', { qos: 1 });
    await s.client.endAsync();
    const pub = await open(t, b.port, { clientId: `queue0-pub-${v}` });
    await pub.client.publishAsync('queue/q0', 'qos0 while away', { qos: 0 });
    await pub.client.publishAsync('queue/q0', 'qos1 while away', { qos: 1 });

    const back = await open(t, b.port, { clientId: `queue0-${v}`, ...persistent(v) });
    t.true(await until(() => back.messages.length >= 1));
    await delay(300);
    t.deepEqual(payloads(back.messages), ['qos1 while away']);
  });
}

test('limits.maxQueuedMessages 3: only the first 3 of 5 offline QoS 1 messages are delivered', async (t) => {
  const b = await broker(t, { limits: { maxQueuedMessages: 3 } });
  const s = await open(t, b.port, { clientId: 'queue-cap', protocolVersion: 4, clean: false });
  await s.client.subscribeAsync('queue/cap', { qos: 1 });
  await s.client.endAsync();
  const pub = await open(t, b.port, { clientId: 'queue-cap-pub' });
  for (let i = 1; i <= 5; i++) await pub.client.publishAsync('queue/cap', `m${i}`, { qos: 1 });

  const back = await open(t, b.port, { clientId: 'queue-cap', protocolVersion: 4, clean: false });
  t.true(await until(() => back.messages.length >= 3));
  await delay(300);
  t.deepEqual(payloads(back.messages), ['m1', 'm2', 'm3']);
});

// ── restart with a shared store ──────────────────────────────────────────────

for (const v of VERSIONS) {
  test(`${vname(v)}: a persistent session, its subscription and retained messages survive a broker restart with the same store`, async (t) => {
    const store = new MemoryStore();
    const b1 = await broker(t, {}, { store });
    const s = await open(t, b1.port, { clientId: `restart-${v}`, ...persistent(v) });
    await s.client.subscribeAsync('restart/t', { qos: 1 });
    await s.client.publishAsync('restart/retained', 'kept', { qos: 1, retain: true });
    await s.client.endAsync();
    await b1.stop();

    const b2 = await broker(t, {}, { store });
    const back = await open(t, b2.port, { clientId: `restart-${v}`, ...persistent(v) });
    t.true(back.connack.sessionPresent);
    const pub = await open(t, b2.port, { clientId: `restart-pub-${v}` });
    await pub.client.publishAsync('restart/t', 'after restart', { qos: 1 });
    t.true(await until(() => back.messages.length === 1));
    t.deepEqual(payloads(back.messages), ['after restart']);

    const late = await open(t, b2.port, { clientId: `restart-late-${v}` });
    await late.client.subscribeAsync('restart/retained', { qos: 1 });
    t.true(await until(() => late.messages.length === 1));
    t.is(late.messages[0]?.payload, 'kept');
    t.true(late.messages[0]?.retain);
  });
}

test('v5: DISCONNECT with session expiry 0 ends a persistent session, also in the store', async (t) => {
  const store = new MemoryStore();
  const b1 = await broker(t, {}, { store });
  const s = await open(t, b1.port, { clientId: 'end-now', protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 300 } });
  await s.client.subscribeAsync('endnow/t', { qos: 1 });
  await new Promise<void>((resolve) => s.client.end(false, { reasonCode: 0, properties: { sessionExpiryInterval: 0 } }, () => resolve()));
  await delay(100);
  await b1.stop();

  // [MQTT-3.1.2-23] with expiry 0 the session ends with the connection: nothing may come back after a restart.
  const b2 = await broker(t, {}, { store });
  const back = await open(t, b2.port, { clientId: 'end-now', protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 300 } });
  t.false(back.connack.sessionPresent);
  const pub = await open(t, b2.port, { clientId: 'end-now-pub' });
  await pub.client.publishAsync('endnow/t', 'from a dead session', { qos: 1 });
  await delay(300);
  t.deepEqual(payloads(back.messages), []);
});

test('v5: DISCONNECT can shorten the session expiry', async (t) => {
  const b = await broker(t);
  const s = await open(t, b.port, { clientId: 'shorten', protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 300 } });
  await s.client.subscribeAsync('shorten/t', { qos: 1 });
  await new Promise<void>((resolve) => s.client.end(false, { reasonCode: 0, properties: { sessionExpiryInterval: 1 } }, () => resolve()));
  await delay(1500);
  const back = await open(t, b.port, { clientId: 'shorten', protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 300 } });
  t.false(back.connack.sessionPresent);
});

test('v5: DISCONNECT raising the session expiry from 0 is a protocol error and the will is published', async (t) => {
  const b = await broker(t);
  const w = await watcher(t, b.port, 'will/bad-disconnect');
  const c = await open(t, b.port, { clientId: 'bad-disconnect', protocolVersion: 5, will: { topic: 'will/bad-disconnect', payload: Buffer.from('not a valid DISCONNECT'), qos: 1, retain: false } });
  const code = new Promise<number | undefined>((resolve) => {
    c.client.once('disconnect', (p) => resolve(p.reasonCode));
    setTimeout(() => resolve(undefined), 1000);
  });
  // Send the DISCONNECT ourselves, keeping the socket open to read the broker's answer.
  c.client.stream.write(
    Buffer.from([0xe0, 0x07, 0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x3c]), // DISCONNECT 0x00, Session Expiry Interval 60
  );
  t.is(await code, 0x82); // [MQTT-3.14.2-2]
  t.true(await until(() => w.messages.length === 1));
  t.deepEqual(payloads(w.messages), ['not a valid DISCONNECT']);
});

test('a session that became persistent by taking over a clean one is stored and survives a restart', async (t) => {
  const store = new MemoryStore();
  const b1 = await broker(t, {}, { store });
  const first = await open(t, b1.port, { clientId: 'promote', protocolVersion: 5, clean: false }); // expiry 0: not persistent
  await first.client.subscribeAsync('promote/t', { qos: 1 });
  const second = await open(t, b1.port, { clientId: 'promote', protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 300 } });
  t.true(second.connack.sessionPresent, 'the live session is taken over');
  await second.client.endAsync();
  await b1.stop();

  const b2 = await broker(t, {}, { store });
  const back = await open(t, b2.port, { clientId: 'promote', protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 300 } });
  t.true(back.connack.sessionPresent, 'the session now has expiry 300 s and must outlive the broker restart');
  const pub = await open(t, b2.port, { clientId: 'promote-pub' });
  await pub.client.publishAsync('promote/t', 'kept', { qos: 1 });
  t.true(await until(() => back.messages.length === 1, 1000));
});

test('QoS 1 messages queued for an offline session survive a broker restart with the same store', async (t) => {
  const store = new MemoryStore();
  const b1 = await broker(t, {}, { store });
  const s = await open(t, b1.port, { clientId: 'restart-queue', protocolVersion: 4, clean: false });
  await s.client.subscribeAsync('restartq/t', { qos: 1 });
  await s.client.endAsync();
  const pub = await open(t, b1.port, { clientId: 'restart-queue-pub' });
  await pub.client.publishAsync('restartq/t', 'q1', { qos: 1 });
  await pub.client.publishAsync('restartq/t', 'q2', { qos: 1 });
  await pub.client.endAsync();
  await b1.stop();

  const b2 = await broker(t, {}, { store });
  const back = await open(t, b2.port, { clientId: 'restart-queue', protocolVersion: 4, clean: false });
  t.true(back.connack.sessionPresent);
  t.true(await until(() => back.messages.length >= 2));
  await delay(100);
  t.deepEqual(payloads(back.messages), ['q1', 'q2']);
});

test('MQTT 3.1: the CONNACK reserved byte stays 0 even when a session is resumed', async (t) => {
  const b = await broker(t);
  const r1 = await raw(t, b.port);
  r1.write(encodeConnect({ clientId: 'v31-resume', clean: false, version: 3 }));
  const [a1] = await waitForType(r1, PacketType.CONNACK);
  t.is(a1?.body[1], 0);
  r1.socket.destroy();
  await delay(100);
  const r2 = await raw(t, b.port);
  r2.write(encodeConnect({ clientId: 'v31-resume', clean: false, version: 3 }));
  const [a2] = await waitForType(r2, PacketType.CONNACK);
  t.is(a2?.body[1], 0, 'accepted');
  // MQTT 3.1 §3.2: the first byte of the CONNACK variable header is reserved ("not used"); Session Present exists only from 3.1.1.
  t.is(a2?.body[0], 0);
});
