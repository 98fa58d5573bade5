/**
 * MQTT.js with its default options (reconnects, keep-alive 60, clean session, protocol 3.1.1
 * unless protocolVersion 5 is asked for) against a broker process, over mqtt://, mqtts:// (TLS
 * with a password), mTLS, ws:// and wss://. Only the URL, credentials, CA and client
 * certificate are given, plus the option that asks for the feature under test.
 */
import fs from 'node:fs';
import test, { type ExecutionContext } from 'ava';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { delay, USER } from './clients.ts';
import { type Matrix, startMatrix, type Transport } from './matrix.ts';

let m: (Matrix & { stop(): Promise<void> }) | undefined;
const open = new Set<MqttClient>();
test.before(async () => {
  m = await startMatrix();
});
test.after.always(async () => {
  await Promise.all([...open].map((c) => c.endAsync(true)));
  await m?.stop();
});

let unique = 0;
const prefix = (what: string) => `interop/mqttjs/${what}-${++unique}`;

/** URL and options of a transport, as a user would write them. */
function target(mx: Matrix, transport: Transport): { url: string; options: IClientOptions } {
  const { broker: b, pki } = mx;
  const ca = fs.readFileSync(pki.ca);
  const device = pki.client('device-1');
  switch (transport) {
    case 'tcp':
      return { url: `mqtt://127.0.0.1:${b.port('tcp')}`, options: {} };
    case 'tls':
      return { url: `mqtts://127.0.0.1:${b.port('tls')}`, options: { ca, ...USER } };
    case 'mtls':
      return { url: `mqtts://127.0.0.1:${b.port('mtls')}`, options: { ca, cert: fs.readFileSync(device.cert), key: fs.readFileSync(device.key) } };
    case 'ws':
      return { url: `ws://127.0.0.1:${b.port('ws')}/mqtt`, options: {} };
    case 'wss':
      return { url: `wss://127.0.0.1:${b.port('wss')}/mqtt`, options: { ca, ...USER } };
    default:
      throw new Error(`no ${transport} for MQTT.js here`);
  }
}

/** mqtt.connect with the defaults; resolves at CONNACK, rejects on the first error (then stops reconnecting). */
function client(t: ExecutionContext, transport: Transport, options: IClientOptions = {}): Promise<MqttClient> {
  const mx = m as Matrix;
  const { url, options: base } = target(mx, transport);
  const c = mqtt.connect(url, { ...base, ...options });
  open.add(c);
  t.teardown(async () => {
    open.delete(c);
    await c.endAsync(true);
  });
  return new Promise((resolve, reject) => {
    c.once('connect', () => resolve(c));
    c.once('error', (err) => {
      c.end(true);
      reject(err);
    });
  });
}

interface Got {
  topic: string;
  payload: string;
  packet: mqtt.IPublishPacket;
}

function collect(c: MqttClient): Got[] {
  const got: Got[] = [];
  c.on('message', (topic, payload, packet) => got.push({ topic, payload: payload.toString(), packet }));
  return got;
}

async function until(predicate: () => boolean, ms = 10_000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > end) return false;
    await delay(10);
  }
  return true;
}

const versions = [4, 5] as const;

// Serial, so it runs first and alone: MQTT.js cannot bind a source address, so the loop shares
// 127.0.0.1's connect-rate budget (limits.connectRate: 50/s, bursts of 100) with the other tests.
// It connects at 40/s, below that rate, as a loop that runs for a minute would.
test.serial('MQTT.js 3.1.1 and 5: 100 connects of one client id in a row are all accepted (no flapping ban by default)', async (t) => {
  for (const protocolVersion of versions) {
    const clientId = `${prefix('reconnect').replace(/\//g, '-')}`;
    let accepted = 0;
    const start = Date.now();
    for (let i = 0; i < 100; i++) {
      const next = delay(25);
      const c = await client(t, 'tcp', { clientId, protocolVersion });
      accepted++;
      await c.endAsync();
      await next;
    }
    t.is(accepted, 100);
    t.true(Date.now() - start < 60_000);
  }
});

for (const transport of ['tcp', 'tls', 'mtls', 'ws', 'wss'] as const) {
  for (const protocolVersion of versions) {
    test(`MQTT.js v${protocolVersion} over ${transport}: connect, QoS 0, 1 and 2 each delivered once at its QoS, disconnect`, async (t) => {
      const p = prefix(`${transport}-${protocolVersion}`);
      const sub = await client(t, transport, { protocolVersion });
      const pub = await client(t, transport, { protocolVersion });
      const got = collect(sub);
      const granted = await sub.subscribeAsync(`${p}/#`, { qos: 2 });
      t.is(granted[0]?.qos, 2);
      for (const qos of [0, 1, 2] as const) await pub.publishAsync(`${p}/q${qos}`, `at qos ${qos}`, { qos });
      t.true(await until(() => got.length >= 3));
      await delay(200);
      t.deepEqual(
        got.map((g) => [g.topic, g.packet.qos, g.payload]),
        [0, 1, 2].map((q) => [`${p}/q${q}`, q, `at qos ${q}`]),
      );
      await pub.endAsync();
      await sub.endAsync();
      t.false(sub.connected);
    });
  }
}

for (const protocolVersion of versions) {
  test(`MQTT.js v${protocolVersion}: retained messages, wills and a persistent session with an offline queue`, async (t) => {
    const p = prefix(`features-${protocolVersion}`);
    const pub = await client(t, 'tcp', { protocolVersion });

    // Retained: a later subscriber gets it with RETAIN set.
    await pub.publishAsync(`${p}/state`, 'on', { qos: 1, retain: true });
    const late = await client(t, 'tcp', { protocolVersion });
    const lateGot = collect(late);
    await late.subscribeAsync(`${p}/state`, { qos: 1 });
    t.true(await until(() => lateGot.length >= 1));
    t.like(lateGot[0], { payload: 'on', packet: { retain: true } });

    // Will: the socket is lost without DISCONNECT.
    const watcherGot = collect(late);
    await late.subscribeAsync(`${p}/will`, { qos: 1 });
    const dying = await client(t, 'tcp', { protocolVersion, will: { topic: `${p}/will`, payload: Buffer.from('gone'), qos: 1, retain: false }, reconnectPeriod: 0 });
    dying.stream.destroy();
    t.true(await until(() => watcherGot.some((g) => g.topic === `${p}/will`)), 'the will was published');

    // Persistent session: subscribe, go away, messages queue, come back.
    const clientId = `${p.replace(/\//g, '-')}-persistent`;
    const session = protocolVersion === 5 ? { clean: false, properties: { sessionExpiryInterval: 300 } } : { clean: false };
    const first = await client(t, 'tcp', { protocolVersion, clientId, ...session });
    await first.subscribeAsync(`${p}/queued`, { qos: 1 });
    await first.endAsync();
    for (let i = 0; i < 3; i++) await pub.publishAsync(`${p}/queued`, `queued ${i}`, { qos: 1 });
    const again = mqtt.connect(target(m as Matrix, 'tcp').url, { protocolVersion, clientId, ...session });
    open.add(again);
    t.teardown(() => again.endAsync(true));
    const againGot = collect(again);
    const connack = await new Promise<mqtt.IConnackPacket>((resolve) => again.once('connect', resolve));
    t.true(connack.sessionPresent, 'session present');
    t.true(await until(() => againGot.length >= 3));
    t.deepEqual(againGot.map((g) => g.payload), ['queued 0', 'queued 1', 'queued 2']);
  });
}

test('MQTT.js v5: request / response, topic aliases both ways, shared subscriptions, message expiry and the reason codes of denied actions', async (t) => {
  const p = prefix('v5');
  const protocolVersion = 5;

  // Request / response.
  const responder = await client(t, 'tcp', { protocolVersion });
  await responder.subscribeAsync(`${p}/requests`, { qos: 1 });
  responder.on('message', (_topic, payload, packet) => {
    const props = packet.properties ?? {};
    if (props.responseTopic !== undefined) void responder.publishAsync(props.responseTopic, `re: ${payload.toString()}`, { qos: 1, properties: { correlationData: props.correlationData } });
  });
  const requester = await client(t, 'tcp', { protocolVersion });
  const answers = collect(requester);
  await requester.subscribeAsync(`${p}/replies`, { qos: 1 });
  await requester.publishAsync(`${p}/requests`, 'ping', { qos: 1, properties: { responseTopic: `${p}/replies`, correlationData: Buffer.from('c-9') } });
  t.true(await until(() => answers.length >= 1));
  t.is(answers[0]?.payload, 're: ping');
  t.is(answers[0]?.packet.properties?.correlationData?.toString(), 'c-9');

  // Topic aliases: MQTT.js sends them when asked to, and accepts the broker's when it allows them.
  const aliasSub = await client(t, 'tcp', { protocolVersion, properties: { topicAliasMaximum: 8 } });
  const aliasGot: { topic: string; alias: number | undefined }[] = [];
  aliasSub.on('packetreceive', (packet) => {
    if (packet.cmd === 'publish') aliasGot.push({ topic: packet.topic, alias: packet.properties?.topicAlias });
  });
  const delivered = collect(aliasSub);
  await aliasSub.subscribeAsync(`${p}/aliased`, { qos: 1 });
  const aliasPub = await client(t, 'tcp', { protocolVersion, autoUseTopicAlias: true });
  for (let i = 0; i < 3; i++) await aliasPub.publishAsync(`${p}/aliased`, `m${i}`, { qos: 1, properties: i === 0 ? { topicAlias: 1 } : {} });
  t.true(await until(() => delivered.length >= 3));
  t.deepEqual(delivered.map((d) => d.topic), [`${p}/aliased`, `${p}/aliased`, `${p}/aliased`], 'MQTT.js resolved the broker\'s aliases');
  t.deepEqual(aliasGot.map((g) => g.alias), [1, 1, 1]);
  t.deepEqual(aliasGot.map((g) => g.topic), [`${p}/aliased`, '', ''], 'on the wire: the topic once, then the alias alone');

  // Shared subscriptions.
  const members = [await client(t, 'tcp', { protocolVersion }), await client(t, 'tcp', { protocolVersion })];
  const shares = members.map(collect);
  for (const member of members) await member.subscribeAsync(`$share/g/${p}/jobs/+`, { qos: 1 });
  for (let i = 0; i < 10; i++) await requester.publishAsync(`${p}/jobs/${i}`, String(i), { qos: 1 });
  t.true(await until(() => shares.flat().length >= 10));
  await delay(200);
  t.deepEqual(shares.flat().map((g) => Number(g.payload)).sort((a, b) => a - b), [...Array(10).keys()]);
  t.true(shares.every((s) => s.length > 0));

  // Message expiry: an offline session's queued message past its interval is dropped.
  const clientId = `${p.replace(/\//g, '-')}-expiry`;
  const session = { clientId, clean: false, properties: { sessionExpiryInterval: 300 } };
  const offline = await client(t, 'tcp', { protocolVersion, ...session });
  await offline.subscribeAsync(`${p}/expiring`, { qos: 1 });
  await offline.endAsync();
  await requester.publishAsync(`${p}/expiring`, 'short', { qos: 1, properties: { messageExpiryInterval: 1 } });
  await requester.publishAsync(`${p}/expiring`, 'long', { qos: 1, properties: { messageExpiryInterval: 60 } });
  await delay(2200);
  const back = mqtt.connect(target(m as Matrix, 'tcp').url, { protocolVersion, ...session });
  open.add(back);
  t.teardown(() => back.endAsync(true));
  const backGot = collect(back);
  await new Promise((resolve) => back.once('connect', resolve));
  t.true(await until(() => backGot.length >= 1));
  await delay(300);
  t.deepEqual(backGot.map((g) => g.payload), ['long']);
  t.true((backGot[0]?.packet.properties?.messageExpiryInterval ?? 0) <= 58);

  // Denied: PUBACK 0x87, SUBACK 0x87.
  const denied = await requester.publishAsync('interop/denied/x', 'x', { qos: 1 }).then(
    () => 0,
    (err: Error & { code?: number }) => err.code ?? -1,
  );
  t.is(denied, 0x87);
  const suback = await requester.subscribeAsync('interop/denied/x', { qos: 1 }).then(
    (g) => g[0]?.qos,
    (err: { packet?: { granted?: number[] } }) => err.packet?.granted?.[0],
  );
  t.is(suback, 0x87);
});
