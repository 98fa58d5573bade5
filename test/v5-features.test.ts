/**
 * MQTT 5 features over real loopback sockets: PUBLISH properties, message expiry, topic aliases
 * in both directions, the client's maximum packet size, CONNACK properties, reason strings,
 * $SYS statistics and the DISCONNECT sent on shutdown.
 */
import test, { type ExecutionContext } from 'ava';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import mqttPacket, { type Packet } from 'mqtt-packet';
import { VERSION, type ConfigInput } from '../src/index.ts';
import { connect, delay, nextMessages, rawConnect, startBroker, type RawClient, type TestBroker } from './helpers.ts';

// ── local helpers ────────────────────────────────────────────────────────────

interface Harness {
  b: TestBroker;
  /** A v5 mqtt.js client (unless told otherwise), ended forcefully at teardown before the broker stops. */
  client(options?: IClientOptions): Promise<MqttClient>;
  /** A raw socket that sends a CONNECT and decodes what comes back with mqtt-packet. */
  raw(connectPacket: Partial<mqttPacket.IConnectPacket>): Promise<RawMqtt>;
}

async function harness(t: ExecutionContext, config: Partial<ConfigInput> = {}): Promise<Harness> {
  const b = await startBroker(config);
  // Teardowns run last-registered first: clients close before the broker stops.
  t.teardown(() => b.stop());
  return {
    b,
    client: async (opts = {}) => {
      const c = await connect(b.port, { protocolVersion: 5, ...opts });
      t.teardown(() => c.endAsync(true));
      return c;
    },
    raw: async (packet) => {
      const r = await rawMqtt(b.port, packet);
      t.teardown(() => {
        r.raw.socket.destroy();
      });
      return r;
    },
  };
}

interface RawMqtt {
  raw: RawClient;
  connack: mqttPacket.IConnackPacket;
  packets: Packet[];
  send(packet: Packet): void;
  /** Waits for the first packet (received at any time) that satisfies `pred`. */
  waitFor<P extends Packet>(pred: (p: Packet) => p is P, ms?: number): Promise<P>;
}

async function rawMqtt(port: number, connectPacket: Partial<mqttPacket.IConnectPacket>): Promise<RawMqtt> {
  const version = connectPacket.protocolVersion ?? 5;
  const raw = await rawConnect(port);
  const packets: Packet[] = [];
  const parser = mqttPacket.parser({ protocolVersion: version });
  parser.on('packet', (p: Packet) => packets.push(p));
  raw.socket.on('data', (d: Buffer) => parser.parse(d));
  const send = (packet: Packet) => raw.write(mqttPacket.generate(packet, { protocolVersion: version }));
  const waitFor = async <P extends Packet>(pred: (p: Packet) => p is P, ms = 2000): Promise<P> => {
    const end = Date.now() + ms;
    for (;;) {
      const found = packets.find(pred);
      if (found !== undefined) return found;
      if (Date.now() > end) throw new Error(`packet not received; got ${JSON.stringify(packets.map((p) => p.cmd))}`);
      await delay(10);
    }
  };
  send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: version, clean: true, clientId: 'raw', keepalive: 60, ...connectPacket });
  const connack = await waitFor(isConnack);
  return { raw, connack, packets, send, waitFor };
}

const isConnack = (p: Packet): p is mqttPacket.IConnackPacket => p.cmd === 'connack';
const isSuback = (p: Packet): p is mqttPacket.ISubackPacket => p.cmd === 'suback';
const isDisconnect = (p: Packet): p is mqttPacket.IDisconnectPacket => p.cmd === 'disconnect';
const publishes = (r: RawMqtt) => r.packets.filter((p): p is mqttPacket.IPublishPacket => p.cmd === 'publish');

/** Waits until `n` PUBLISH packets have arrived on a raw client. */
async function rawPublishes(r: RawMqtt, n: number, ms = 2000): Promise<mqttPacket.IPublishPacket[]> {
  const end = Date.now() + ms;
  while (publishes(r).length < n && Date.now() < end) await delay(10);
  const got = publishes(r);
  if (got.length < n) throw new Error(`expected ${n} PUBLISH packets, got ${got.length}`);
  return got;
}

interface Msg {
  topic: string;
  payload: string;
  packet: mqtt.IPublishPacket;
}

/** Collects messages until one arrives on `sentinel` (included); one connection's packets are handled in order. */
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

// ── PUBLISH properties ───────────────────────────────────────────────────────

test('user properties, payload format, content type, response topic and correlation data reach a v5 subscriber unchanged', async (t) => {
  const h = await harness(t);
  const sub = await h.client({ clientId: 'sub' });
  await sub.subscribeAsync('props/#', { qos: 1 });
  const pub = await h.client({ clientId: 'pub' });
  const properties = {
    userProperties: { region: 'eu-west', trace: ['a', 'b'], 'ünï': 'cödé' },
    payloadFormatIndicator: true,
    contentType: 'application/json; charset=utf-8',
    responseTopic: 'reply/to/me',
    correlationData: Buffer.from([0x00, 0x01, 0xfe, 0xff]),
  };
  for (const qos of [0, 1, 2] as const) {
    const got = nextMessages(sub, 1);
    await pub.publishAsync(`props/${qos}`, '{"n":1}', { qos, properties });
    const [m] = await got;
    const p = m!.packet.properties ?? {};
    // [MQTT-3.3.2-4] payload format indicator, [MQTT-3.3.2-15] response topic, [MQTT-3.3.2-16] correlation data,
    // [MQTT-3.3.2-17] user properties, [MQTT-3.3.2-20] content type: forwarded unaltered
    t.deepEqual({ ...p.userProperties }, properties.userProperties, `qos ${qos}: user properties`);
    t.deepEqual(Object.keys(p.userProperties ?? {}), ['region', 'trace', 'ünï'], 'user properties keep their order'); // [MQTT-3.3.2-18]
    t.is(p.payloadFormatIndicator, true);
    t.is(p.contentType, properties.contentType);
    t.is(p.responseTopic, properties.responseTopic);
    t.deepEqual(p.correlationData, properties.correlationData);
    t.is(p.topicAlias, undefined, 'the publisher-side topic alias is not forwarded');
    t.is(m!.payload, '{"n":1}');
  }
});

test('PUBLISH properties also pass through to a subscriber with a subscription identifier and a topic alias maximum', async (t) => {
  // These subscribers take the per-connection encoding path (not the shared cached encoding).
  const h = await harness(t);
  const sub = await h.client({ clientId: 'sub', properties: { topicAliasMaximum: 3 } });
  await sub.subscribeAsync('props/#', { qos: 1, properties: { subscriptionIdentifier: 42 } });
  const pub = await h.client({ clientId: 'pub' });
  const got = nextMessages(sub, 1);
  await pub.publishAsync('props/x', 'p', {
    qos: 1,
    properties: { userProperties: { k: 'v' }, contentType: 'text/plain', responseTopic: 'r', correlationData: Buffer.from('c') },
  });
  const p = (await got)[0]!.packet.properties ?? {};
  t.deepEqual({ ...p.userProperties }, { k: 'v' });
  t.is(p.contentType, 'text/plain');
  t.is(p.responseTopic, 'r');
  t.deepEqual(p.correlationData, Buffer.from('c'));
  t.deepEqual([p.subscriptionIdentifier].flat(), [42]);
});

// ── message expiry ───────────────────────────────────────────────────────────

test('an expired retained message is not delivered; one still waiting has its expiry interval counted down', async (t) => {
  const h = await harness(t);
  const pub = await h.client({ clientId: 'pub' });
  await pub.publishAsync('ex/short', 'short', { qos: 1, retain: true, properties: { messageExpiryInterval: 1 } });
  await pub.publishAsync('ex/long', 'long', { qos: 1, retain: true, properties: { messageExpiryInterval: 100 } });
  await pub.publishAsync('ex/none', 'none', { qos: 1, retain: true });
  await pub.publishAsync('ex/zz', 'end', { qos: 1, retain: true });
  await delay(1500);
  const sub = await h.client({ clientId: 'sub' });
  const got = collectUntil(sub, 'ex/zz');
  await sub.subscribeAsync('ex/+', { qos: 1 });
  const byTopic = new Map((await got).map((m) => [m.topic, m]));
  // [MQTT-3.3.2-5] once the interval has passed the server MUST delete the copy for any subscriber
  t.false(byTopic.has('ex/short'), 'the message that expired after 1 s is not delivered');
  t.deepEqual([...byTopic.keys()].sort(), ['ex/long', 'ex/none', 'ex/zz']);
  // [MQTT-3.3.2-6] the interval sent is the received value minus the time the message waited
  const remaining = byTopic.get('ex/long')!.packet.properties?.messageExpiryInterval;
  t.truthy(remaining);
  t.true(remaining! <= 99 && remaining! >= 90, `remaining expiry ${remaining} after waiting 1.5 s`);
  t.is(byTopic.get('ex/none')!.packet.properties?.messageExpiryInterval, undefined);
});

test('an expired message queued for an offline persistent session is not delivered on reconnect', async (t) => {
  const h = await harness(t);
  const options: IClientOptions = { clientId: 'offline-sub', clean: false, properties: { sessionExpiryInterval: 300 } };
  const first = await connect(h.b.port, { protocolVersion: 5, ...options });
  t.teardown(() => first.endAsync(true));
  await first.subscribeAsync('q/#', { qos: 1 });
  await first.endAsync();
  const pub = await h.client({ clientId: 'pub' });
  await pub.publishAsync('q/short', 'short', { qos: 1, properties: { messageExpiryInterval: 1 } });
  await pub.publishAsync('q/long', 'long', { qos: 1, properties: { messageExpiryInterval: 100 } });
  await pub.publishAsync('q/end', 'end', { qos: 1 });
  await delay(1500);

  // Queued messages follow the CONNACK in the same write: listen before the CONNACK arrives.
  const got: Msg[] = [];
  const sub = mqtt.connect({ host: '127.0.0.1', port: h.b.port, protocolVersion: 5, reconnectPeriod: 0, ...options });
  t.teardown(() => sub.endAsync(true));
  sub.on('message', (topic, payload, packet) => got.push({ topic, payload: payload.toString(), packet }));
  const connack = await new Promise<mqttPacket.IConnackPacket>((resolve, reject) => {
    sub.once('connect', resolve);
    sub.once('error', reject);
  });
  t.true(connack.sessionPresent, 'the session was kept');
  const deadline = Date.now() + 2000;
  while (!got.some((m) => m.topic === 'q/end') && Date.now() < deadline) await delay(10);
  t.deepEqual(
    got.map((m) => m.topic),
    ['q/long', 'q/end'],
  ); // [MQTT-3.3.2-5]
  const remaining = got.find((m) => m.topic === 'q/long')?.packet.properties?.messageExpiryInterval;
  t.true(remaining !== undefined && remaining <= 99 && remaining >= 90, `remaining expiry ${remaining}`); // [MQTT-3.3.2-6]
});

// ── topic aliases, client to broker ──────────────────────────────────────────

test('an inbound topic alias is set by a PUBLISH with a topic and resolved by one with an empty topic', async (t) => {
  const h = await harness(t);
  const sub = await h.client({ clientId: 'sub' });
  await sub.subscribeAsync('alias/#', { qos: 1 });
  const pub = await h.client({ clientId: 'pub' });
  const got = nextMessages(sub, 4);
  await pub.publishAsync('alias/one', 'first', { qos: 1, properties: { topicAlias: 1 } });
  await pub.publishAsync('', 'second', { qos: 1, properties: { topicAlias: 1 } });
  // the mapping can be changed by a PUBLISH with the same alias and another topic
  await pub.publishAsync('alias/two', 'third', { qos: 0, properties: { topicAlias: 1 } });
  await pub.publishAsync('', 'fourth', { qos: 0, properties: { topicAlias: 1 } });
  t.deepEqual(
    (await got).map((m) => [m.topic, m.payload]),
    [
      ['alias/one', 'first'],
      ['alias/one', 'second'],
      ['alias/two', 'third'],
      ['alias/two', 'fourth'],
    ],
  );
});

for (const [name, alias] of [
  ['0', 0],
  ['above the topic alias maximum of the CONNACK', 33],
] as const) {
  test(`a PUBLISH with topic alias ${name} gets DISCONNECT 0x94`, async (t) => {
    const h = await harness(t);
    const r = await h.raw({ clientId: 'bad-alias' });
    t.is(r.connack.properties?.topicAliasMaximum, 32);
    const value = alias === 33 ? (r.connack.properties?.topicAliasMaximum ?? 0) + 1 : alias;
    r.send({ cmd: 'publish', topic: 'a/b', payload: Buffer.from('x'), qos: 0, retain: false, dup: false, properties: { topicAlias: value } });
    const disconnect = await r.waitFor(isDisconnect);
    // [MQTT-3.3.2-8] alias 0 / [MQTT-3.3.2-9] above the maximum: Topic Alias invalid
    t.is(disconnect.reasonCode, 0x94);
    t.true(await r.raw.closed(2000), 'the broker closes the connection');
  });
}

test('the highest topic alias the CONNACK allows is accepted', async (t) => {
  const h = await harness(t, { limits: { topicAliasMaximum: 4 } });
  const sub = await h.client({ clientId: 'sub' });
  await sub.subscribeAsync('max/#', { qos: 0 });
  const r = await h.raw({ clientId: 'max-alias' });
  t.is(r.connack.properties?.topicAliasMaximum, 4);
  const got = nextMessages(sub, 2);
  // [MQTT-3.3.2-12] the server accepts every alias from 1 to its Topic Alias Maximum
  r.send({ cmd: 'publish', topic: 'max/a', payload: Buffer.from('1'), qos: 0, retain: false, dup: false, properties: { topicAlias: 4 } });
  r.send({ cmd: 'publish', topic: '', payload: Buffer.from('2'), qos: 0, retain: false, dup: false, properties: { topicAlias: 4 } });
  t.deepEqual(
    (await got).map((m) => [m.topic, m.payload]),
    [
      ['max/a', '1'],
      ['max/a', '2'],
    ],
  );
});

test('an inbound topic alias mapping does not carry over to a new connection', async (t) => {
  const h = await harness(t);
  const first = await h.raw({ clientId: 'carry' });
  first.send({ cmd: 'publish', topic: 'c/a', payload: Buffer.from('1'), qos: 0, retain: false, dup: false, properties: { topicAlias: 1 } });
  first.send({ cmd: 'disconnect', reasonCode: 0 });
  t.true(await first.raw.closed(2000));
  const second = await h.raw({ clientId: 'carry' });
  second.send({ cmd: 'publish', topic: '', payload: Buffer.from('2'), qos: 0, retain: false, dup: false, properties: { topicAlias: 1 } });
  // [MQTT-3.3.2-7] mappings are per network connection: an unknown alias with an empty topic is a protocol error
  const disconnect = await second.waitFor(isDisconnect);
  t.is(disconnect.reasonCode, 0x82);
});

// ── topic aliases, broker to client ──────────────────────────────────────────

test('a subscriber with a topic alias maximum receives every message with the right topic and payload', async (t) => {
  const h = await harness(t);
  const sub = await h.client({ clientId: 'sub', properties: { topicAliasMaximum: 5 } });
  await sub.subscribeAsync('out/#', { qos: 1 });
  const pub = await h.client({ clientId: 'pub' });
  const sent: [string, string][] = [];
  for (let i = 0; i < 12; i++) sent.push([`out/${i % 7}`, `m${i}`]); // 7 topics: more than 5 aliases
  const got = nextMessages(sub, sent.length);
  for (const [i, [topic, payload]] of sent.entries()) await pub.publishAsync(topic, payload, { qos: (i % 2) as 0 | 1 });
  t.deepEqual(
    (await got).map((m) => [m.topic, m.payload]),
    sent,
  );
});

test('the second PUBLISH to a client for the same topic uses an empty topic and the topic alias', async (t) => {
  const h = await harness(t);
  const r = await h.raw({ clientId: 'alias-sub', properties: { topicAliasMaximum: 5 } });
  r.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'oa/#', qos: 0 }] });
  await r.waitFor(isSuback);
  const pub = await h.client({ clientId: 'pub' });
  await pub.publishAsync('oa/t', 'one');
  await pub.publishAsync('oa/t', 'two');
  await pub.publishAsync('oa/u', 'three');
  const [first, second, third] = await rawPublishes(r, 3);
  t.is(first!.topic, 'oa/t');
  const alias = first!.properties?.topicAlias;
  t.true(alias !== undefined && alias >= 1 && alias <= 5, 'an alias within the client maximum'); // [MQTT-3.3.2-11]
  t.is(second!.topic, '');
  t.is(second!.properties?.topicAlias, alias);
  t.is(second!.payload.toString(), 'two');
  t.is(third!.topic, 'oa/u');
  t.not(third!.properties?.topicAlias, alias);
});

test('a client that sets no topic alias maximum never receives a topic alias', async (t) => {
  const h = await harness(t);
  const r = await h.raw({ clientId: 'no-alias' });
  r.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'na/#', qos: 1 }] });
  await r.waitFor(isSuback);
  const pub = await h.client({ clientId: 'pub' });
  for (let i = 0; i < 3; i++) await pub.publishAsync('na/t', `m${i}`, { properties: { messageExpiryInterval: 60 } });
  const got = await rawPublishes(r, 3);
  // [MQTT-3.3.2-11] with no Topic Alias Maximum in CONNECT (0) the server sends no alias
  t.deepEqual(
    got.map((p) => [p.topic, p.properties?.topicAlias]),
    [
      ['na/t', undefined],
      ['na/t', undefined],
      ['na/t', undefined],
    ],
  );
});

test('a PUBLISH dropped for the client maximum packet size does not establish a topic alias', async (t) => {
  const h = await harness(t);
  const r = await h.raw({ clientId: 'alias-small', properties: { topicAliasMaximum: 5, maximumPacketSize: 100 } });
  r.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'big/#', qos: 0 }] });
  await r.waitFor(isSuback);
  const pub = await h.client({ clientId: 'pub' });
  await pub.publishAsync('big/t', 'x'.repeat(500)); // too large for the client: never sent
  await pub.publishAsync('big/t', 'small');
  const [p] = await rawPublishes(r, 1);
  t.is(p!.payload.toString(), 'small');
  // The client never saw a PUBLISH mapping an alias to big/t, so this one must carry the topic name:
  // an empty topic with an alias the client does not know is a protocol error on the client side.
  t.is(p!.topic, 'big/t');
});

// ── maximum packet size towards the client ───────────────────────────────────

test('a subscriber with maximum packet size 100 does not get a 500-byte message but does get a 10-byte one', async (t) => {
  const h = await harness(t);
  const sub = await h.client({ clientId: 'sub', properties: { maximumPacketSize: 100 } });
  await sub.subscribeAsync('mps/#', { qos: 1 });
  const pub = await h.client({ clientId: 'pub' });
  const got = collectUntil(sub, 'mps/end');
  // [MQTT-3.1.2-24] the server MUST NOT send packets exceeding the client's Maximum Packet Size
  await pub.publishAsync('mps/big', 'x'.repeat(500), { qos: 0 });
  await pub.publishAsync('mps/big1', 'y'.repeat(500), { qos: 1 });
  await pub.publishAsync('mps/small', '0123456789', { qos: 1 });
  await pub.publishAsync('mps/end', 'e', { qos: 1 });
  t.deepEqual(
    (await got).map((m) => [m.topic, m.payload]),
    [
      ['mps/small', '0123456789'],
      ['mps/end', 'e'],
    ],
  );
});

// ── CONNACK ──────────────────────────────────────────────────────────────────

test('CONNACK advertises the receive maximum, maximum packet size, topic alias maximum and feature availability', async (t) => {
  const h = await harness(t, { limits: { receiveMaximum: 20, maxPacketSize: 5000, topicAliasMaximum: 7 } });
  const r = await h.raw({ clientId: 'props' });
  t.is(r.connack.reasonCode, 0);
  const p = r.connack.properties ?? {};
  // section 3.2.2.3: the server's limits, from the configuration
  t.is(p.receiveMaximum, 20);
  t.is(p.maximumPacketSize, 5000);
  t.is(p.topicAliasMaximum, 7);
  // absent means available, but the broker states each explicitly as true
  t.not(p.retainAvailable, false);
  t.not(p.wildcardSubscriptionAvailable, false);
  t.not(p.subscriptionIdentifiersAvailable, false);
  t.not(p.sharedSubscriptionAvailable, false);
  t.is(p.retainAvailable, true);
  t.is(p.wildcardSubscriptionAvailable, true);
  t.is(p.subscriptionIdentifiersAvailable, true);
  t.is(p.sharedSubscriptionAvailable, true);
});

test('a packet larger than the advertised maximum packet size gets DISCONNECT 0x95', async (t) => {
  const h = await harness(t, { limits: { maxPacketSize: 200 } });
  const r = await h.raw({ clientId: 'too-big' });
  t.is(r.connack.properties?.maximumPacketSize, 200);
  r.send({ cmd: 'publish', topic: 'big', payload: Buffer.alloc(300), qos: 0, retain: false, dup: false });
  const disconnect = await r.waitFor(isDisconnect);
  t.is(disconnect.reasonCode, 0x95); // section 3.2.2.3.6: a packet above the maximum gets 0x95 Packet too large
});

// ── reason strings ───────────────────────────────────────────────────────────

test('a CONNECT refused for lack of an authentication provider gets CONNACK 0x87 with a reason string', async (t) => {
  const h = await harness(t, { listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [] }] });
  const r = await h.raw({ clientId: 'refused' });
  t.is(r.connack.reasonCode, 0x87);
  t.is(r.connack.sessionPresent, false); // [MQTT-3.2.2-6]
  const reason = r.connack.properties?.reasonString;
  t.is(typeof reason, 'string');
  t.true((reason ?? '').length > 0);
  t.true(await r.raw.closed(2000), 'the broker closes the connection after a refusing CONNACK'); // [MQTT-3.2.2-7]
  const denial = h.b.audit.records.find((rec) => rec.event === 'connect');
  t.is(denial?.decision, 'deny');
  t.is(denial?.reasonCode, 0x87);
});

test('the same refusal gives a v3.1.1 client CONNACK return code 5', async (t) => {
  const h = await harness(t, { listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [] }] });
  const r = await h.raw({ clientId: 'refused3', protocolVersion: 4 });
  t.is(r.connack.returnCode, 5);
  t.true(await r.raw.closed(2000));
});

test('a DISCONNECT sent by the broker carries a reason string', async (t) => {
  const h = await harness(t);
  const r = await h.raw({ clientId: 'reason' });
  r.send({ cmd: 'publish', topic: 'x', payload: Buffer.from('x'), qos: 0, retain: false, dup: false, properties: { topicAlias: 0 } });
  const disconnect = await r.waitFor(isDisconnect);
  t.is(disconnect.reasonCode, 0x94);
  t.regex(disconnect.properties?.reasonString ?? '', /alias/i);
});

// ── $SYS ─────────────────────────────────────────────────────────────────────

test('$SYS/broker/# reports version, uptime, clients, messages received and sent; messages/received grows', async (t) => {
  const h = await harness(t, { sys: { intervalSeconds: 1 } });
  const sys = await h.client({ clientId: 'sys' });
  const latest = new Map<string, string>();
  const history: [string, string][] = [];
  sys.on('message', (topic, payload) => {
    latest.set(topic, payload.toString());
    history.push([topic, payload.toString()]);
  });
  await sys.subscribeAsync('$SYS/broker/#', { qos: 0 });
  const waitUntil = async (cond: () => boolean, ms: number) => {
    const end = Date.now() + ms;
    while (!cond() && Date.now() < end) await delay(20);
    return cond();
  };
  const wanted = ['version', 'uptime', 'clients/connected', 'messages/received', 'messages/sent'].map((n) => `$SYS/broker/${n}`);
  t.true(await waitUntil(() => wanted.every((w) => latest.has(w)), 2000), `got ${[...latest.keys()].join(', ')}`);
  t.true(latest.get('$SYS/broker/version')!.includes(VERSION));
  t.regex(latest.get('$SYS/broker/uptime')!, /^\d+/);
  t.regex(latest.get('$SYS/broker/messages/sent')!, /^\d+$/);
  // this client is connected: the next report counts it
  t.true(await waitUntil(() => Number(latest.get('$SYS/broker/clients/connected')) >= 1, 2500), 'clients/connected counts this client');

  const before = Number(latest.get('$SYS/broker/messages/received'));
  t.false(Number.isNaN(before));
  const pub = await h.client({ clientId: 'pub' });
  await pub.publishAsync('some/topic', 'x', { qos: 1 });
  await pub.publishAsync('some/topic', 'y', { qos: 1 });
  t.true(
    await waitUntil(() => Number(latest.get('$SYS/broker/messages/received')) >= before + 2, 2500),
    `messages/received went from ${before} to ${latest.get('$SYS/broker/messages/received')}`,
  );
});

// ── shutdown ─────────────────────────────────────────────────────────────────

test('a connected v5 client receives DISCONNECT 0x8B when the broker stops', async (t) => {
  const b = await startBroker();
  const client = await connect(b.port, { protocolVersion: 5, clientId: 'stay' });
  const v3 = await connect(b.port, { protocolVersion: 4, clientId: 'stay3' });
  let stopping: Promise<void> | undefined;
  t.teardown(async () => {
    client.end(true);
    v3.end(true);
    await Promise.race([stopping ?? b.stop(), delay(3000)]);
  });
  const disconnect = new Promise<mqttPacket.IDisconnectPacket>((resolve) => client.once('disconnect', resolve));
  const v3Closed = new Promise<void>((resolve) => v3.once('close', () => resolve()));
  stopping = b.stop();
  const packet = await Promise.race([disconnect, delay(1500).then(() => undefined)]);
  // MQTT 5 section 3.14.2.1: the server tells the client why it closes, 0x8B Server shutting down
  t.truthy(packet, 'DISCONNECT received within 1.5 s of stop()');
  t.is(packet?.reasonCode, 0x8b, 'Server shutting down');
  t.is(await Promise.race([v3Closed.then(() => 'closed'), delay(1000).then(() => 'open')]), 'closed', 'a v3.1.1 client is disconnected too');
  t.is(await Promise.race([stopping.then(() => 'stopped'), delay(1000).then(() => 'pending')]), 'stopped', 'stop() completes');
});
