/**
 * Retained messages over real loopback sockets: set, replace and clear; the RETAIN flag on
 * delivery (retain-as-published); retain handling 0/1/2; wildcard filters and `$` topics;
 * shared subscriptions; QoS downgrade.
 */
import test, { type ExecutionContext } from 'ava';
import type mqtt from 'mqtt';
import type { IClientOptions, IClientSubscribeOptions, MqttClient } from 'mqtt';
import type { ConfigInput } from '../src/index.ts';
import { connect, nextMessages, startBroker, type TestBroker } from './helpers.ts';

// ── local helpers ────────────────────────────────────────────────────────────

interface Harness {
  b: TestBroker;
  /** An mqtt.js client, ended (forcefully) at teardown before the broker stops. */
  client(options?: IClientOptions): Promise<MqttClient>;
}

async function harness(t: ExecutionContext, config: Partial<ConfigInput> = {}): Promise<Harness> {
  const b = await startBroker(config);
  // Teardowns run last-registered first: clients close before the broker stops.
  t.teardown(() => b.stop());
  return {
    b,
    client: async (opts = {}) => {
      const c = await connect(b.port, opts);
      t.teardown(() => c.endAsync(true));
      return c;
    },
  };
}

interface Msg {
  topic: string;
  payload: string;
  retain: boolean;
  qos: number;
}

/**
 * Collects the messages a client receives until `done` returns true for one of them (it is
 * included). A client's packets are handled in order, so retained messages sent for an earlier
 * SUBSCRIBE arrive before those of a later one: subscribing to a retained "sentinel" topic marks
 * the end of what the earlier subscriptions produced.
 */
function collectUntil(client: MqttClient, done: (m: Msg) => boolean, ms = 2000): Promise<Msg[]> {
  return new Promise((resolve, reject) => {
    const got: Msg[] = [];
    const timer = setTimeout(() => {
      client.off('message', onMessage);
      reject(new Error(`end marker not received; got ${JSON.stringify(got.map((m) => m.topic))}`));
    }, ms);
    const onMessage = (topic: string, payload: Buffer, packet: mqtt.IPublishPacket) => {
      const m = { topic, payload: payload.toString(), retain: packet.retain, qos: packet.qos };
      got.push(m);
      if (done(m)) {
        clearTimeout(timer);
        client.off('message', onMessage);
        resolve(got);
      }
    };
    client.on('message', onMessage);
  });
}

const SENTINEL = 'zz/sentinel';

/** Publishes the retained sentinel (once per broker). */
async function retainSentinel(pub: MqttClient): Promise<void> {
  await pub.publishAsync(SENTINEL, 'end', { qos: 1, retain: true });
}

/**
 * Subscribes to `filter` with `opts`, then to the retained sentinel, and returns the messages
 * the first subscription produced (the sentinel removed).
 */
async function retainedFor(client: MqttClient, filter: string, opts: IClientSubscribeOptions): Promise<Msg[]> {
  const got = collectUntil(client, (m) => m.topic === SENTINEL);
  await client.subscribeAsync(filter, opts);
  await client.subscribeAsync(SENTINEL, { qos: 0 }); // retain handling 0: sent on every subscribe
  return (await got).slice(0, -1);
}

const versions = [4, 5] as const;
const vname = (v: 4 | 5) => (v === 5 ? 'v5' : 'v3.1.1');

// ── set, replace, clear ──────────────────────────────────────────────────────

for (const version of versions) {
  test(`${vname(version)}: a retained message is set, replaced, kept by a non-retained publish and cleared by an empty payload`, async (t) => {
    const h = await harness(t);
    const pub = await h.client({ protocolVersion: version, clientId: 'pub' });
    await retainSentinel(pub);

    await pub.publishAsync('r/t', 'v1', { qos: 1, retain: true });
    const s1 = await h.client({ protocolVersion: version, clientId: 's1' });
    // [MQTT-3.3.1-5] stored; [MQTT-3.3.1-6] (3.1.1) sent on a new subscription; [MQTT-3.3.1-8] (3.1.1) with RETAIN set
    t.deepEqual(await retainedFor(s1, 'r/t', { qos: 1 }), [{ topic: 'r/t', payload: 'v1', retain: true, qos: 1 }]);

    await pub.publishAsync('r/t', 'v2', { qos: 1, retain: true });
    const s2 = await h.client({ protocolVersion: version, clientId: 's2' });
    // [MQTT-3.3.1-5] a new retained message replaces the old one
    t.deepEqual(
      (await retainedFor(s2, 'r/t', { qos: 1 })).map((m) => m.payload),
      ['v2'],
    );

    await pub.publishAsync('r/t', 'not-retained', { qos: 1, retain: false });
    const s3 = await h.client({ protocolVersion: version, clientId: 's3' });
    // [MQTT-3.3.1-8] (v5) / [MQTT-3.3.1-12] (3.1.1) RETAIN 0 does not store, remove or replace
    t.deepEqual(
      (await retainedFor(s3, 'r/t', { qos: 1 })).map((m) => m.payload),
      ['v2'],
    );

    // An empty retained payload is delivered to current subscribers as normal and clears the topic
    const live = nextMessages(s3, 1);
    await pub.publishAsync('r/t', '', { qos: 1, retain: true });
    const [cleared] = await live;
    t.is(cleared?.topic, 'r/t');
    t.is(cleared?.payload, '');
    t.false(cleared?.packet.retain); // an established subscription: RETAIN 0
    const s4 = await h.client({ protocolVersion: version, clientId: 's4' });
    // [MQTT-3.3.1-6] (v5) / [MQTT-3.3.1-10..11] (3.1.1) removed, and the empty message is not stored
    t.deepEqual(await retainedFor(s4, 'r/t', { qos: 1 }), []);
  });
}

test('a retained message published at QoS 0 is stored too', async (t) => {
  const h = await harness(t);
  const pub = await h.client({ protocolVersion: 5, clientId: 'pub' });
  await retainSentinel(pub);
  await pub.publishAsync('r/q0', 'zero', { qos: 0, retain: true });
  const sub = await h.client({ protocolVersion: 5, clientId: 'sub' });
  t.deepEqual(await retainedFor(sub, 'r/q0', { qos: 2 }), [{ topic: 'r/q0', payload: 'zero', retain: true, qos: 0 }]);
});

// ── RETAIN flag on delivery ──────────────────────────────────────────────────

test('a retained publish reaches existing subscribers with RETAIN 0, unless their subscription has retain-as-published', async (t) => {
  const h = await harness(t);
  const plain5 = await h.client({ protocolVersion: 5, clientId: 'plain5' });
  await plain5.subscribeAsync('n/t', { qos: 1 });
  const rap = await h.client({ protocolVersion: 5, clientId: 'rap' });
  await rap.subscribeAsync('n/t', { qos: 1, rap: true });
  const plain3 = await h.client({ clientId: 'plain3' });
  await plain3.subscribeAsync('n/t', { qos: 1 });
  const pub = await h.client({ protocolVersion: 5, clientId: 'pub' });

  const got = [nextMessages(plain5, 2), nextMessages(rap, 2), nextMessages(plain3, 2)];
  await pub.publishAsync('n/t', 'retained', { qos: 1, retain: true });
  await pub.publishAsync('n/t', 'plain', { qos: 1, retain: false });
  const [p5, r5, p3] = await Promise.all(got);
  // [MQTT-3.3.1-12] (v5) RAP 0: RETAIN set to 0 when forwarding
  t.deepEqual(p5!.map((m) => [m.payload, m.packet.retain]), [['retained', false], ['plain', false]]);
  // [MQTT-3.3.1-13] (v5) RAP 1: RETAIN as received
  t.deepEqual(r5!.map((m) => [m.payload, m.packet.retain]), [['retained', true], ['plain', false]]);
  // [MQTT-3.3.1-9] (3.1.1) RETAIN 0 on an established subscription
  t.deepEqual(p3!.map((m) => [m.payload, m.packet.retain]), [['retained', false], ['plain', false]]);
});

test('retained messages sent on subscribe have RETAIN 1 with or without retain-as-published', async (t) => {
  const h = await harness(t);
  const pub = await h.client({ protocolVersion: 5, clientId: 'pub' });
  await retainSentinel(pub);
  await pub.publishAsync('f/t', 'kept', { qos: 1, retain: true });
  const a = await h.client({ protocolVersion: 5, clientId: 'a' });
  const b = await h.client({ protocolVersion: 5, clientId: 'b' });
  t.deepEqual((await retainedFor(a, 'f/t', { qos: 1, rap: false })).map((m) => m.retain), [true]);
  t.deepEqual((await retainedFor(b, 'f/t', { qos: 1, rap: true })).map((m) => m.retain), [true]);
});

test('a retained message sent on subscribe carries the subscription identifier of that SUBSCRIBE', async (t) => {
  const h = await harness(t);
  const pub = await h.client({ protocolVersion: 5, clientId: 'pub' });
  await retainSentinel(pub);
  await pub.publishAsync('id/t', 'kept', { qos: 1, retain: true });
  const sub = await h.client({ protocolVersion: 5, clientId: 'sub' });
  const got = collectUntil(sub, (m) => m.topic === 'id/t');
  const ids = new Promise<unknown>((resolve) => sub.once('message', (_topic, _payload, packet) => resolve(packet.properties?.subscriptionIdentifier)));
  await sub.subscribeAsync('id/#', { qos: 1, properties: { subscriptionIdentifier: 77 } });
  t.deepEqual((await got).map((m) => [m.topic, m.retain]), [['id/t', true]]);
  t.deepEqual([await ids].flat(), [77]); // [MQTT-3.3.4-3] (v5)
});

// ── retain handling ──────────────────────────────────────────────────────────

test('retain handling 0 sends the retained message on every subscribe', async (t) => {
  const h = await harness(t);
  const pub = await h.client({ protocolVersion: 5, clientId: 'pub' });
  await retainSentinel(pub);
  await pub.publishAsync('rh/t', 'kept', { qos: 1, retain: true });
  const sub = await h.client({ protocolVersion: 5, clientId: 'sub' });
  // [MQTT-3.3.1-9] (v5)
  t.deepEqual((await retainedFor(sub, 'rh/t', { qos: 1, rh: 0 })).map((m) => m.payload), ['kept']);
  t.deepEqual((await retainedFor(sub, 'rh/t', { qos: 1, rh: 0 })).map((m) => m.payload), ['kept']);
});

test('retain handling 1 sends the retained message only when the subscription is new', async (t) => {
  const h = await harness(t);
  const pub = await h.client({ protocolVersion: 5, clientId: 'pub' });
  await retainSentinel(pub);
  await pub.publishAsync('rh/t', 'kept', { qos: 1, retain: true });
  const sub = await h.client({ protocolVersion: 5, clientId: 'sub' });
  // [MQTT-3.3.1-10] (v5) new subscription: sent; existing subscription: not sent
  t.deepEqual((await retainedFor(sub, 'rh/t', { qos: 1, rh: 1 })).map((m) => m.payload), ['kept']);
  t.deepEqual(await retainedFor(sub, 'rh/t', { qos: 1, rh: 1 }), []);
  // after UNSUBSCRIBE the subscription is new again
  await sub.unsubscribeAsync('rh/t');
  t.deepEqual((await retainedFor(sub, 'rh/t', { qos: 1, rh: 1 })).map((m) => m.payload), ['kept']);
});

test('retain handling 2 never sends the retained message, but live messages still arrive', async (t) => {
  const h = await harness(t);
  const pub = await h.client({ protocolVersion: 5, clientId: 'pub' });
  await retainSentinel(pub);
  await pub.publishAsync('rh/t', 'kept', { qos: 1, retain: true });
  const sub = await h.client({ protocolVersion: 5, clientId: 'sub' });
  // [MQTT-3.3.1-11] (v5)
  t.deepEqual(await retainedFor(sub, 'rh/t', { qos: 1, rh: 2 }), []);
  t.deepEqual(await retainedFor(sub, 'rh/t', { qos: 1, rh: 2 }), []);
  const live = nextMessages(sub, 1);
  await pub.publishAsync('rh/t', 'live', { qos: 1 });
  t.is((await live)[0]?.payload, 'live');
});

// ── wildcards and $ topics ───────────────────────────────────────────────────

test('retained messages are returned for wildcard filters, and $ topics are not returned for leading wildcards', async (t) => {
  const h = await harness(t);
  const pub = await h.client({ protocolVersion: 5, clientId: 'pub' });
  await retainSentinel(pub);
  for (const topic of ['w', 'w/a', 'w/b/c', 'x/a', 'w//a', '$foo/bar', '$bar/fake/stat']) {
    await pub.publishAsync(topic, topic, { qos: 1, retain: true });
  }
  const cases: [string, string[]][] = [
    ['w/+', ['w/a']],
    ['w/#', ['w', 'w//a', 'w/a', 'w/b/c']],
    ['+/a', ['w/a', 'x/a']],
    ['w/+/a', ['w//a']],
    ['+', ['w']],
    ['+/+/+', ['w//a', 'w/b/c']],
    ['$foo/#', ['$foo/bar']],
    ['$bar/#', ['$bar/fake/stat']],
    ['$bar/+/stat', ['$bar/fake/stat']],
    ['+/bar', []], // [MQTT-4.7.2-1]
    ['+/fake/stat', []],
  ];
  let n = 0;
  for (const [filter, expected] of cases) {
    const sub = await h.client({ protocolVersion: 5, clientId: `sub-${n++}` });
    const got = await retainedFor(sub, filter, { qos: 1 });
    t.deepEqual(got.map((m) => m.topic).sort(), expected, filter);
    t.true(got.every((m) => m.retain), `${filter}: RETAIN set`);
  }
  // '#': everything but the $ topics (the sentinel matches too, so it arrives twice)
  const all = await h.client({ protocolVersion: 5, clientId: 'all' });
  let sentinels = 0;
  const got = collectUntil(all, (m) => m.topic === SENTINEL && ++sentinels === 2);
  await all.subscribeAsync('#', { qos: 1 });
  await all.subscribeAsync(SENTINEL, { qos: 0 });
  t.deepEqual(
    (await got).map((m) => m.topic).filter((topic) => topic !== SENTINEL).sort(),
    ['w', 'w//a', 'w/a', 'w/b/c', 'x/a'],
  );
});

test("the broker's retained $SYS topics are returned for '$SYS/#' but not for '#'", async (t) => {
  const h = await harness(t, { sys: { intervalSeconds: 60 } });
  const pub = await h.client({ protocolVersion: 5, clientId: 'pub' });
  await retainSentinel(pub);
  const sys = await h.client({ protocolVersion: 5, clientId: 'sys' });
  const sysRetained = await retainedFor(sys, '$SYS/#', { qos: 0 });
  t.true(sysRetained.length > 0, 'the broker retains $SYS statistics');
  t.true(sysRetained.every((m) => m.topic.startsWith('$SYS/broker/') && m.retain));

  const all = await h.client({ protocolVersion: 5, clientId: 'all' });
  let sentinels = 0;
  const got = collectUntil(all, (m) => m.topic === SENTINEL && ++sentinels === 2);
  await all.subscribeAsync('#', { qos: 0 });
  await all.subscribeAsync(SENTINEL, { qos: 0 });
  t.deepEqual(
    (await got).map((m) => m.topic),
    [SENTINEL, SENTINEL],
  ); // [MQTT-4.7.2-1]
});

// ── shared subscriptions ─────────────────────────────────────────────────────

test('retained messages are not sent for a shared subscription', async (t) => {
  const h = await harness(t);
  const pub = await h.client({ protocolVersion: 5, clientId: 'pub' });
  await retainSentinel(pub);
  await pub.publishAsync('s/t', 'kept', { qos: 1, retain: true });
  const member = await h.client({ protocolVersion: 5, clientId: 'member' });
  // MQTT 5 section 4.8.2: retained messages are not sent when a session subscribes to a shared subscription
  t.deepEqual(await retainedFor(member, '$share/g/s/t', { qos: 1 }), []);
  t.deepEqual(await retainedFor(member, '$share/g/s/#', { qos: 1 }), []);
  // the shared subscription itself works
  const live = nextMessages(member, 2);
  await pub.publishAsync('s/t', 'live', { qos: 1 });
  t.deepEqual(
    (await live).map((m) => m.payload),
    ['live', 'live'],
  );
});

// ── QoS ──────────────────────────────────────────────────────────────────────

for (const version of versions) {
  test(`${vname(version)}: a retained message is sent at the lower of its QoS and the subscription QoS`, async (t) => {
    const h = await harness(t);
    const pub = await h.client({ protocolVersion: version, clientId: 'pub' });
    await retainSentinel(pub);
    await pub.publishAsync('q/2', 'two', { qos: 2, retain: true });
    await pub.publishAsync('q/1', 'one', { qos: 1, retain: true });
    const expectations: [string, 0 | 1 | 2, number][] = [
      ['q/2', 0, 0],
      ['q/2', 1, 1],
      ['q/2', 2, 2],
      ['q/1', 0, 0],
      ['q/1', 2, 1], // never upgraded
    ];
    let n = 0;
    for (const [topic, subQos, expected] of expectations) {
      const sub = await h.client({ protocolVersion: version, clientId: `sub-${n++}` });
      const got = await retainedFor(sub, topic, { qos: subQos });
      // [MQTT-3.8.4-8] (v5) / [MQTT-3.8.4-6] (3.1.1) QoS is the minimum of the published and granted QoS
      t.deepEqual(got, [{ topic, payload: topic === 'q/2' ? 'two' : 'one', retain: true, qos: expected }], `${topic} at subscription QoS ${subQos}`);
    }
  });
}
