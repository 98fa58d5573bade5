/**
 * Subscriptions over real loopback sockets: wildcards, `$` topics, SUBACK codes, overlapping
 * subscriptions, UNSUBSCRIBE, shared subscriptions, no-local, the WebSocket listener and the
 * audit records of subscribe and publish decisions.
 */
import test, { type ExecutionContext } from 'ava';
import mqtt, { type IClientOptions, type ISubscriptionMap, type MqttClient } from 'mqtt';
import mqttPacket, { type Packet } from 'mqtt-packet';
import type { BrokerOptions, ConfigInput } from '../src/index.ts';
import { MemoryStore } from '../src/index.ts';
import { connect, delay, messagesWithin, nextMessages, rawConnect, startBroker, type RawClient, type TestBroker } from './helpers.ts';

// ── local helpers ────────────────────────────────────────────────────────────

interface Harness {
  b: TestBroker;
  /** An mqtt.js client over TCP, ended (forcefully) at teardown before the broker stops. */
  client(options?: IClientOptions): Promise<MqttClient>;
  /** A raw socket speaking hand-made packets (encoded and decoded with mqtt-packet). */
  raw(clientId: string, version: 4 | 5): Promise<RawMqtt>;
}

async function harness(t: ExecutionContext, config: Partial<ConfigInput> = {}, options: BrokerOptions & { ws?: boolean } = {}): Promise<Harness> {
  const b = await startBroker(config, options);
  // Teardowns run last-registered first: clients close before the broker stops.
  t.teardown(() => b.stop());
  return {
    b,
    client: async (opts = {}) => {
      const c = await connect(b.port, opts);
      t.teardown(() => c.endAsync(true));
      return c;
    },
    raw: async (clientId, version) => {
      const r = await rawMqtt(b.port, clientId, version);
      t.teardown(() => {
        r.raw.socket.destroy();
      });
      return r;
    },
  };
}

interface RawMqtt {
  raw: RawClient;
  packets: Packet[];
  send(packet: Packet): void;
  /** Waits for the first packet (received at any time) that satisfies `pred`. */
  waitFor<P extends Packet>(pred: (p: Packet) => p is P, ms?: number): Promise<P>;
}

async function rawMqtt(port: number, clientId: string, version: 4 | 5): Promise<RawMqtt> {
  const raw = await rawConnect(port);
  const packets: Packet[] = [];
  const parser = mqttPacket.parser({ protocolVersion: version });
  parser.on('packet', (p: Packet) => packets.push(p));
  raw.socket.on('data', (d: Buffer) => parser.parse(d));
  const r: RawMqtt = {
    raw,
    packets,
    send: (packet) => raw.write(mqttPacket.generate(packet, { protocolVersion: version })),
    waitFor: async <P extends Packet>(pred: (p: Packet) => p is P, ms = 2000): Promise<P> => {
      const end = Date.now() + ms;
      for (;;) {
        const found = packets.find(pred);
        if (found !== undefined) return found;
        if (Date.now() > end) throw new Error(`packet not received; got ${JSON.stringify(packets.map((p) => p.cmd))}`);
        await delay(10);
      }
    },
  };
  r.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: version, clean: true, clientId, keepalive: 60 });
  const connack = await r.waitFor((p): p is mqttPacket.IConnackPacket => p.cmd === 'connack');
  if ((connack.reasonCode ?? connack.returnCode ?? 0) !== 0) throw new Error('raw connect refused');
  return r;
}

const isSuback = (p: Packet): p is mqttPacket.ISubackPacket => p.cmd === 'suback';

interface Msg {
  topic: string;
  payload: string;
  packet: mqtt.IPublishPacket;
}

/**
 * Collects every message a client receives until one arrives on `sentinel` (included). The
 * broker handles one publisher's packets in order, so anything published before the sentinel
 * would have arrived before it.
 */
function collectUntil(client: MqttClient, sentinel: string, ms = 2000): Promise<Msg[]> {
  return new Promise((resolve, reject) => {
    const got: Msg[] = [];
    const timer = setTimeout(() => {
      client.off('message', onMessage);
      reject(new Error(`sentinel ${sentinel} not received; got ${JSON.stringify(got.map((m) => m.topic))}`));
    }, ms);
    const onMessage = (topic: string, payload: Buffer, packet: mqtt.IPublishPacket) => {
      got.push({ topic, payload: payload.toString(), packet });
      if (topic === sentinel) {
        clearTimeout(timer);
        client.off('message', onMessage);
        resolve(got);
      }
    };
    client.on('message', onMessage);
  });
}

/** The SUBACK reason codes of one SUBSCRIBE sent by mqtt.js, whether or not it was refused. */
function subackCodes(client: MqttClient, topics: string | ISubscriptionMap, opts: mqtt.IClientSubscribeOptions = { qos: 0 }): Promise<number[]> {
  return new Promise((resolve, reject) => {
    client.subscribe(topics, opts, (err, _granted, packet) => {
      if (packet !== undefined && Array.isArray(packet.granted)) resolve(packet.granted.map((g) => (typeof g === 'number' ? g : (g as { qos: number }).qos)));
      else reject(err ?? new Error('no SUBACK'));
    });
  });
}

const subscriptionIds = (packet: mqtt.IPublishPacket): number[] => {
  const ids = packet.properties?.subscriptionIdentifier;
  return ids === undefined ? [] : [ids].flat();
};

const versions = [4, 5] as const;
const vname = (v: 4 | 5) => (v === 5 ? 'v5' : 'v3.1.1');

// ── wildcards ────────────────────────────────────────────────────────────────

for (const version of versions) {
  test(`${vname(version)}: '+' delivers exactly the topics with one level in its place`, async (t) => {
    const h = await harness(t);
    const sub = await h.client({ protocolVersion: version, clientId: 'sub' });
    await sub.subscribeAsync(['a/+/c', 'done'], { qos: 0 });
    const pub = await h.client({ protocolVersion: version, clientId: 'pub' });
    const got = collectUntil(sub, 'done');
    for (const topic of ['a/b/c', 'a/b/d', 'a/b/c/d', 'a/c', 'a//c', 'x/b/c', 'a/xyz/c', 'done']) await pub.publishAsync(topic, topic);
    t.deepEqual(
      (await got).map((m) => m.topic),
      ['a/b/c', 'a//c', 'a/xyz/c', 'done'],
    );
  });

  test(`${vname(version)}: '#' delivers the parent topic and every topic below it`, async (t) => {
    const h = await harness(t);
    const sub = await h.client({ protocolVersion: version, clientId: 'sub' });
    await sub.subscribeAsync(['a/#', 'done'], { qos: 0 });
    const pub = await h.client({ protocolVersion: version, clientId: 'pub' });
    const got = collectUntil(sub, 'done');
    for (const topic of ['a', 'a/b', 'a/b/c/d', 'ab', 'b/a', '/a', 'a/', 'done']) await pub.publishAsync(topic, topic);
    t.deepEqual(
      (await got).map((m) => m.topic),
      ['a', 'a/b', 'a/b/c/d', 'a/', 'done'],
    );
  });
}

test("'$' topics are not matched by '#' or '+/...' filters but are by '$foo/#'", async (t) => {
  const h = await harness(t);
  const all = await h.client({ protocolVersion: 5, clientId: 'all' });
  await all.subscribeAsync(['#'], { qos: 0 });
  const plus = await h.client({ protocolVersion: 5, clientId: 'plus' });
  await plus.subscribeAsync(['+/bar', '+', 'done'], { qos: 0 });
  const dollar = await h.client({ protocolVersion: 5, clientId: 'dollar' });
  await dollar.subscribeAsync(['$foo/#'], { qos: 0 });
  const pub = await h.client({ protocolVersion: 5, clientId: 'pub' });

  const gotAll = collectUntil(all, 'done');
  const gotPlus = collectUntil(plus, 'done');
  const gotDollar = nextMessages(dollar, 2);
  await pub.publishAsync('$foo/bar', '1');
  await pub.publishAsync('$foo', '2');
  await pub.publishAsync('done', '3');
  // [MQTT-4.7.2-1] a filter starting with a wildcard does not match a topic starting with '$'
  t.deepEqual((await gotAll).map((m) => m.topic), ['done']);
  t.deepEqual((await gotPlus).map((m) => m.topic), ['done']);
  // '$foo/#' matches '$foo/bar' and, as '#' includes the parent level, '$foo'
  t.deepEqual((await gotDollar).map((m) => m.topic), ['$foo/bar', '$foo']);
});

test("the broker's $SYS topics reach '$SYS/#' subscribers but not '#' or '+/broker/#' subscribers", async (t) => {
  const h = await harness(t, { sys: { intervalSeconds: 1 } });
  const all = await h.client({ clientId: 'all' });
  await all.subscribeAsync(['#'], { qos: 0 });
  const plus = await h.client({ clientId: 'plus' });
  await plus.subscribeAsync(['+/broker/#', 'done'], { qos: 0 });
  const sys = await h.client({ clientId: 'sys' });
  const gotAll = collectUntil(all, 'done', 4000);
  const gotPlus = collectUntil(plus, 'done', 4000);
  // Wait for a live (not retained) $SYS publish: it is routed to every matching session at once.
  const live = new Promise<string>((resolve) => {
    sys.on('message', (topic, _p, packet) => {
      if (!packet.retain) resolve(topic);
    });
  });
  await sys.subscribeAsync('$SYS/#', { qos: 0 });
  t.regex(await live, /^\$SYS\/broker\//);
  const pub = await h.client({ clientId: 'pub' });
  await pub.publishAsync('done', 'x');
  t.deepEqual((await gotAll).map((m) => m.topic), ['done']); // [MQTT-4.7.2-1]
  t.deepEqual((await gotPlus).map((m) => m.topic), ['done']);
});

// ── SUBACK ───────────────────────────────────────────────────────────────────

for (const version of versions) {
  test(`${vname(version)}: SUBACK grants the requested QoS of each filter`, async (t) => {
    const h = await harness(t);
    const sub = await h.client({ protocolVersion: version, clientId: 'sub' });
    // [MQTT-3.8.4-5] one return code per topic filter, in order; [MQTT-3.9.3-1]
    const codes = await subackCodes(sub, { 'q/0': { qos: 0 }, 'q/1': { qos: 1 }, 'q/2': { qos: 2 }, 'q/+/x': { qos: 1 } });
    t.deepEqual(codes, [0, 1, 2, 1]);
    // ...and messages arrive at the granted QoS
    const pub = await h.client({ protocolVersion: version, clientId: 'pub' });
    const got = nextMessages(sub, 3);
    await pub.publishAsync('q/0', 'a', { qos: 2 });
    await pub.publishAsync('q/1', 'b', { qos: 2 });
    await pub.publishAsync('q/2', 'c', { qos: 2 });
    t.deepEqual(
      (await got).map((m) => [m.topic, m.packet.qos]),
      [
        ['q/0', 0],
        ['q/1', 1],
        ['q/2', 2],
      ],
    );
  });

  test(`${vname(version)}: an invalid filter gets SUBACK ${version === 5 ? '0x8F' : '0x80'} while the valid filters of the same SUBSCRIBE are granted`, async (t) => {
    const h = await harness(t);
    const r = await h.raw('raw-sub', version);
    r.send({
      cmd: 'subscribe',
      messageId: 7,
      subscriptions: [
        { topic: 'ok/1', qos: 1 },
        { topic: 'a/#/b', qos: 0 },
        { topic: 'a+', qos: 1 },
        { topic: '#a', qos: 0 },
        { topic: '$share/g/a/#/b', qos: 0 }, // a shared subscription with an invalid filter
        { topic: '$share/g+/x', qos: 0 }, // [MQTT-4.8.2-2] a wildcard in the share name
        { topic: 'ok/2', qos: 2 },
      ],
    });
    const suback = await r.waitFor(isSuback);
    t.is(suback.messageId, 7); // [MQTT-3.8.4-2]
    const bad = version === 5 ? 0x8f : 0x80;
    t.deepEqual(suback.granted, [1, bad, bad, bad, bad, bad, 2]); // [MQTT-3.8.4-5] [MQTT-3.9.3-2]
    // the granted filters are live subscriptions
    const pub = await h.client({ protocolVersion: version, clientId: 'pub' });
    await pub.publishAsync('ok/2', 'hello', { qos: 1 });
    const publish = await r.waitFor((p): p is mqttPacket.IPublishPacket => p.cmd === 'publish');
    t.is(publish.topic, 'ok/2');
    t.is(publish.payload.toString(), 'hello');
  });
}

// ── overlapping subscriptions ────────────────────────────────────────────────

test('overlapping subscriptions deliver one copy at the highest QoS carrying every subscription identifier', async (t) => {
  const h = await harness(t);
  const sub = await h.client({ protocolVersion: 5, clientId: 'sub' });
  await sub.subscribeAsync('a/#', { qos: 0, properties: { subscriptionIdentifier: 1 } });
  await sub.subscribeAsync('a/b', { qos: 1, properties: { subscriptionIdentifier: 2 } });
  await sub.subscribeAsync('done', { qos: 0 });
  const pub = await h.client({ protocolVersion: 5, clientId: 'pub' });
  const got = collectUntil(sub, 'done');
  await pub.publishAsync('a/b', 'both', { qos: 1 });
  await pub.publishAsync('a/c', 'only-hash', { qos: 1 });
  await pub.publishAsync('done', 'x', { qos: 1 });
  const msgs = (await got).filter((m) => m.topic !== 'done');
  t.deepEqual(
    msgs.map((m) => m.topic),
    ['a/b', 'a/c'],
    'one copy of a/b', // [MQTT-3.3.4-2] (v5) the server delivers respecting the maximum QoS of all matching subscriptions
  );
  const [both, onlyHash] = msgs;
  t.is(both?.packet.qos, 1);
  // [MQTT-3.3.4-3] [MQTT-3.3.4-4] a single copy carries the identifiers of all matching subscriptions
  t.deepEqual(subscriptionIds(both!.packet).sort(), [1, 2]);
  t.is(onlyHash?.packet.qos, 0);
  t.deepEqual(subscriptionIds(onlyHash!.packet), [1]);
});

test('v3.1.1: overlapping subscriptions deliver one copy at the highest QoS', async (t) => {
  const h = await harness(t);
  const sub = await h.client({ clientId: 'sub' });
  await sub.subscribeAsync({ 'a/#': { qos: 0 }, 'a/+': { qos: 2 }, 'a/b': { qos: 1 }, done: { qos: 0 } });
  const pub = await h.client({ clientId: 'pub' });
  const got = collectUntil(sub, 'done');
  await pub.publishAsync('a/b', 'x', { qos: 2 });
  await pub.publishAsync('done', 'x');
  const msgs = (await got).filter((m) => m.topic !== 'done');
  t.is(msgs.length, 1);
  t.is(msgs[0]?.packet.qos, 2); // [MQTT-3.3.5-1] the maximum QoS of all matching subscriptions
});

test('a SUBSCRIBE to an existing filter replaces the subscription: new QoS, new subscription identifier, one copy', async (t) => {
  const h = await harness(t);
  const sub = await h.client({ protocolVersion: 5, clientId: 'sub' });
  await sub.subscribeAsync('re/t', { qos: 0, properties: { subscriptionIdentifier: 5 } });
  await sub.subscribeAsync('re/t', { qos: 2, properties: { subscriptionIdentifier: 6 } });
  await sub.subscribeAsync('done', { qos: 0 });
  const pub = await h.client({ protocolVersion: 5, clientId: 'pub' });
  const got = collectUntil(sub, 'done');
  await pub.publishAsync('re/t', 'x', { qos: 2 });
  await pub.publishAsync('done', '');
  const msgs = (await got).filter((m) => m.topic !== 'done');
  // [MQTT-3.8.4-3] the existing subscription is replaced, not duplicated
  t.is(msgs.length, 1);
  t.is(msgs[0]?.packet.qos, 2);
  t.deepEqual(subscriptionIds(msgs[0]!.packet), [6]);
});

test('no-local on overlapping subscriptions: the publisher still gets one copy through the subscription without it', async (t) => {
  const h = await harness(t);
  const a = await h.client({ protocolVersion: 5, clientId: 'a' });
  await a.subscribeAsync('ov/#', { qos: 1, nl: true, properties: { subscriptionIdentifier: 1 } });
  await a.subscribeAsync('ov/t', { qos: 0, properties: { subscriptionIdentifier: 2 } });
  await a.subscribeAsync('done', { qos: 0 });
  const got = collectUntil(a, 'done');
  await a.publishAsync('ov/t', 'own', { qos: 1 });
  await a.publishAsync('ov/other', 'own-other', { qos: 1 });
  await a.publishAsync('done', '');
  const msgs = (await got).filter((m) => m.topic !== 'done');
  t.deepEqual(
    msgs.map((m) => m.payload),
    ['own'],
  );
  // only the subscription without no-local matched: its QoS and its identifier
  t.is(msgs[0]?.packet.qos, 0);
  t.deepEqual(subscriptionIds(msgs[0]!.packet), [2]);
});

test('v5: no-local on a shared subscription is a protocol error (DISCONNECT 0x82)', async (t) => {
  const h = await harness(t);
  const r = await h.raw('nl-shared', 5);
  r.send({ cmd: 'subscribe', messageId: 3, subscriptions: [{ topic: '$share/g/x', qos: 0, nl: true }] });
  const disconnect = await r.waitFor((p): p is mqttPacket.IDisconnectPacket => p.cmd === 'disconnect');
  t.is(disconnect.reasonCode, 0x82); // [MQTT-3.8.3-4]
  t.true(await r.raw.closed(2000));
});

// ── UNSUBSCRIBE ──────────────────────────────────────────────────────────────

for (const version of versions) {
  test(`${vname(version)}: UNSUBSCRIBE stops delivery on that filter only`, async (t) => {
    const h = await harness(t);
    const sub = await h.client({ protocolVersion: version, clientId: 'sub' });
    await sub.subscribeAsync(['u/#', 'keep'], { qos: 1 });
    const pub = await h.client({ protocolVersion: version, clientId: 'pub' });
    const before = collectUntil(sub, 'keep');
    await pub.publishAsync('u/x', 'before', { qos: 1 });
    await pub.publishAsync('keep', 'k1', { qos: 1 });
    t.deepEqual((await before).map((m) => m.payload), ['before', 'k1']);

    const unsuback = await sub.unsubscribeAsync('u/#');
    if (version === 5) t.deepEqual((unsuback as mqttPacket.IUnsubackPacket | undefined)?.granted, [0x00]); // [MQTT-3.11.3-1]
    const after = collectUntil(sub, 'keep');
    await pub.publishAsync('u/x', 'after', { qos: 1 });
    await pub.publishAsync('keep', 'k2', { qos: 1 });
    t.deepEqual((await after).map((m) => m.payload), ['k2']); // [MQTT-3.10.4-2] the server stops adding messages
  });
}

test('v5: UNSUBACK reports 0x11 for a filter that had no subscription and 0x00 for one that had', async (t) => {
  const h = await harness(t);
  const sub = await h.client({ protocolVersion: 5, clientId: 'sub' });
  await sub.subscribeAsync('exists', { qos: 0 });
  const unsuback = (await sub.unsubscribeAsync(['never', 'exists', 'exists/+'])) as mqttPacket.IUnsubackPacket | undefined;
  t.deepEqual(unsuback?.granted, [0x11, 0x00, 0x11]); // [MQTT-3.11.3-1] one reason code per filter, in order
  const again = (await sub.unsubscribeAsync('exists')) as mqttPacket.IUnsubackPacket | undefined;
  t.deepEqual(again?.granted, [0x11]);
});

// ── shared subscriptions ─────────────────────────────────────────────────────

test('shared subscriptions: each group gets every message once, split between its members; a normal subscriber gets all', async (t) => {
  const h = await harness(t);
  const members = {
    g1: await h.client({ protocolVersion: 5, clientId: 'g1' }),
    g2: await h.client({ protocolVersion: 5, clientId: 'g2' }),
    h1: await h.client({ protocolVersion: 5, clientId: 'h1' }),
    h2: await h.client({ protocolVersion: 5, clientId: 'h2' }),
  };
  await members.g1.subscribeAsync('$share/g/t/#', { qos: 1 });
  await members.g2.subscribeAsync('$share/g/t/#', { qos: 1 });
  await members.h1.subscribeAsync('$share/h/t/#', { qos: 1 });
  await members.h2.subscribeAsync('$share/h/t/#', { qos: 1 });
  const plain = await h.client({ protocolVersion: 5, clientId: 'plain' });
  await plain.subscribeAsync('t/#', { qos: 1 });

  const received: Record<string, string[]> = { g1: [], g2: [], h1: [], h2: [] };
  for (const [name, c] of Object.entries(members)) c.on('message', (_topic, payload) => received[name]!.push(payload.toString()));
  const gotPlain = nextMessages(plain, 10);

  const pub = await h.client({ protocolVersion: 5, clientId: 'pub' });
  const sent: string[] = [];
  for (let i = 0; i < 10; i++) {
    sent.push(`m${i}`);
    await pub.publishAsync(`t/${i % 3}`, `m${i}`, { qos: 1 });
  }
  t.deepEqual((await gotPlain).map((m) => m.payload), sent, 'the normal subscriber gets all 10');
  // let any stray duplicates arrive
  const deadline = Date.now() + 2000;
  while (Date.now() < deadline && received.g1!.length + received.g2!.length + received.h1!.length + received.h2!.length < 20) await delay(10);
  await delay(100);

  for (const [a, b] of [
    ['g1', 'g2'],
    ['h1', 'h2'],
  ] as const) {
    const x = received[a]!;
    const y = received[b]!;
    t.true(x.length > 0, `${a} got some messages`);
    t.true(y.length > 0, `${b} got some messages`);
    t.is(x.length + y.length, 10, `group of ${a}/${b} got exactly 10 in total`);
    t.deepEqual([...x, ...y].sort(), [...sent].sort(), `group of ${a}/${b}: every message once, none twice`);
  }
});

test('a session with a shared and a normal subscription matching a topic gets one copy for each', async (t) => {
  // A session with a shared and a non-shared subscription matching the same topic gets the message
  // once for each: shared subscriptions are independent of the session's other subscriptions.
  const h = await harness(t);
  const c = await h.client({ protocolVersion: 5, clientId: 'c' });
  await c.subscribeAsync('$share/g/s/x', { qos: 0 });
  await c.subscribeAsync('s/x', { qos: 0 });
  await c.subscribeAsync('done', { qos: 0 });
  const pub = await h.client({ protocolVersion: 5, clientId: 'pub' });
  const got = collectUntil(c, 'done');
  await pub.publishAsync('s/x', 'one');
  await pub.publishAsync('done', '');
  t.deepEqual((await got).map((m) => m.payload), ['one', 'one', '']);
});

test('shared subscriptions: when a member unsubscribes or disconnects, the remaining member gets every message', async (t) => {
  const h = await harness(t);
  const a = await h.client({ protocolVersion: 5, clientId: 'a' });
  const b = await h.client({ protocolVersion: 5, clientId: 'b' });
  const c = await h.client({ protocolVersion: 5, clientId: 'c' });
  for (const m of [a, b, c]) await m.subscribeAsync('$share/g/sh/t', { qos: 1 });
  const pub = await h.client({ protocolVersion: 5, clientId: 'pub' });

  await a.unsubscribeAsync('$share/g/sh/t');
  await b.endAsync();
  const gotA = messagesWithin(a, 400);
  const gotC = nextMessages(c, 6);
  for (let i = 0; i < 6; i++) await pub.publishAsync('sh/t', `m${i}`, { qos: 1 });
  t.deepEqual(
    (await gotC).map((m) => m.payload),
    ['m0', 'm1', 'm2', 'm3', 'm4', 'm5'],
  );
  t.deepEqual(await gotA, [], 'the member that unsubscribed gets nothing');
});

// ── no-local ─────────────────────────────────────────────────────────────────

test('no-local: the publisher does not get its own message on that subscription, other clients do', async (t) => {
  const h = await harness(t);
  const a = await h.client({ protocolVersion: 5, clientId: 'a' });
  await a.subscribeAsync('nl/t', { qos: 1, nl: true });
  await a.subscribeAsync('nl/sentinel', { qos: 1 });
  const b = await h.client({ protocolVersion: 5, clientId: 'b' });
  await b.subscribeAsync('nl/t', { qos: 1 });

  const gotA = collectUntil(a, 'nl/sentinel');
  const gotB = nextMessages(b, 1);
  await a.publishAsync('nl/t', 'from-a', { qos: 1 });
  await a.publishAsync('nl/sentinel', 'end', { qos: 1 });
  // [MQTT-3.8.3-3] not forwarded to a connection with a client id equal to the publisher's
  t.deepEqual((await gotA).map((m) => m.payload), ['end']);
  t.deepEqual((await gotB).map((m) => m.payload), ['from-a']);

  // a message from another client still reaches the no-local subscription
  const fromB = nextMessages(a, 1);
  await b.publishAsync('nl/t', 'from-b', { qos: 1 });
  const [m] = await fromB;
  t.is(m?.topic, 'nl/t');
  t.is(m?.payload, 'from-b');
});

// ── WebSocket ────────────────────────────────────────────────────────────────

test('the WebSocket listener carries publish and subscribe to and from a TCP client', async (t) => {
  const h = await harness(t, {}, { ws: true });
  t.truthy(h.b.wsPort);
  const ws = await new Promise<MqttClient>((resolve, reject) => {
    const c = mqtt.connect(`ws://127.0.0.1:${h.b.wsPort}/mqtt`, { clientId: 'ws-client', reconnectPeriod: 0, connectTimeout: 3000 });
    c.once('connect', () => resolve(c));
    c.once('error', (err) => {
      c.end(true);
      reject(err);
    });
    c.once('close', () => reject(new Error('closed before CONNACK')));
  });
  t.teardown(() => ws.endAsync(true));
  const tcp = await h.client({ clientId: 'tcp-client' });
  await ws.subscribeAsync('to-ws/#', { qos: 1 });
  await tcp.subscribeAsync('to-tcp/#', { qos: 1 });

  const gotWs = nextMessages(ws, 1);
  await tcp.publishAsync('to-ws/a', 'over tcp', { qos: 1 });
  const [m1] = await gotWs;
  t.is(m1?.topic, 'to-ws/a');
  t.is(m1?.payload, 'over tcp');
  t.is(m1?.packet.qos, 1);

  const gotTcp = nextMessages(tcp, 1);
  await ws.publishAsync('to-tcp/b', 'over ws', { qos: 1 });
  const [m2] = await gotTcp;
  t.is(m2?.topic, 'to-tcp/b');
  t.is(m2?.payload, 'over ws');
});

// ── audit ────────────────────────────────────────────────────────────────────

test('an allowed subscribe produces exactly one allow audit record with the filter and client id', async (t) => {
  const h = await harness(t);
  const sub = await h.client({ protocolVersion: 5, clientId: 'audited-sub' });
  await sub.subscribeAsync('audit/+/x', { qos: 1 });
  const records = h.b.audit.records.filter((r) => r.event === 'subscribe');
  t.is(records.length, 1);
  const [r] = records;
  t.is(r?.decision, 'allow');
  t.is(r?.topic, 'audit/+/x');
  t.is(r?.clientId, 'audited-sub');
  t.is(r?.qos, 1);
  t.is(r?.listener, 'test');
});

for (const version of versions) {
  test(`${vname(version)}: with no authorizer a subscribe is refused with ${version === 5 ? '0x87' : '0x80'} and audited as a denial`, async (t) => {
    const h = await harness(t, { authorizers: [] });
    const sub = await h.client({ protocolVersion: version, clientId: 'denied-sub' });
    const codes = await subackCodes(sub, 'secret/#', { qos: 1 });
    t.deepEqual(codes, [version === 5 ? 0x87 : 0x80]);
    const records = h.b.audit.records.filter((r) => r.event === 'subscribe');
    t.is(records.length, 1);
    t.is(records[0]?.decision, 'deny');
    t.is(records[0]?.topic, 'secret/#');
    t.is(records[0]?.clientId, 'denied-sub');
  });
}

test('with no authorizer a publish is not delivered, even to an existing subscription, and is audited as a denial', async (t) => {
  const store = new MemoryStore();
  // 1. A broker with allow-all: a persistent session subscribes and receives.
  const first = await startBroker({}, { store });
  const sub1 = await connect(first.port, { protocolVersion: 5, clientId: 'persistent-sub', clean: false, properties: { sessionExpiryInterval: 300 } });
  const pub1 = await connect(first.port, { protocolVersion: 5, clientId: 'pub' });
  try {
    await sub1.subscribeAsync('data/#', { qos: 1 });
    const got = nextMessages(sub1, 1);
    await pub1.publishAsync('data/x', 'allowed', { qos: 1 });
    t.is((await got)[0]?.payload, 'allowed');
  } finally {
    await sub1.endAsync();
    await pub1.endAsync();
    await first.stop();
  }

  // 2. The same session on a broker with no authorizer: the subscription exists, the publish is denied.
  const h = await harness(t, { authorizers: [] }, { store });
  const sub = await h.client({ protocolVersion: 5, clientId: 'persistent-sub', clean: false, properties: { sessionExpiryInterval: 300 } });
  const pub = await h.client({ protocolVersion: 5, clientId: 'pub' });
  const received = messagesWithin(sub, 300);
  const err = await t.throwsAsync(pub.publishAsync('data/x', 'denied', { qos: 1 }));
  t.is((err as Error & { code?: number }).code, 0x87, 'v5 PUBACK 0x87 not authorized');
  await pub.publishAsync('data/y', 'denied-qos0', { qos: 0 });
  t.deepEqual(await received, []);
  const denials = h.b.audit.records.filter((r) => r.event === 'publish');
  t.deepEqual(
    denials.map((r) => [r.decision, r.topic, r.clientId]),
    [
      ['deny', 'data/x', 'pub'],
      ['deny', 'data/y', 'pub'],
    ],
  );
});
