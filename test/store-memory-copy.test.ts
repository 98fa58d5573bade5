/**
 * The memory store's field-by-field message copy (store/memory.ts cloneMessage): a
 * message queued for an offline persistent session, or in flight to it, must come back exactly
 * as published (payload, v5 properties, user properties, subscription identifiers), whatever
 * happens to the objects and buffers the broker had when it stored it: other subscribers'
 * deliveries of the same message, later reads on the publisher's socket, a restart on the same
 * store.
 */
import net from 'node:net';
import test from 'ava';
import mqttPacket from 'mqtt-packet';
import mqtt, { type IPublishPacket, type MqttClient } from 'mqtt';
import { MemoryStore } from '../src/index.ts';
import { connect, delay, startBroker } from './helpers.ts';

interface Seen {
  payload: string;
  qos: number;
  ids: number[] | undefined;
  user: unknown;
  corr: string | undefined;
  ct: string | undefined;
  rt: string | undefined;
  alias: number | undefined;
}

function seen(p: IPublishPacket): Seen {
  const id = p.properties?.subscriptionIdentifier;
  return {
    payload: p.payload.toString(),
    qos: p.qos,
    ids: id === undefined ? undefined : Array.isArray(id) ? id : [id],
    user: p.properties?.userProperties,
    corr: p.properties?.correlationData?.toString('hex'),
    ct: p.properties?.contentType,
    rt: p.properties?.responseTopic,
    alias: p.properties?.topicAlias,
  };
}

/** Raw v5 PUBLISH packets, all written in one TCP write so that they share one socket read. */
function rawPublishes(n: number, round: string): Buffer {
  const parts: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const fill = String.fromCharCode(65 + ((i + (round === 'b' ? 13 : 0)) % 26));
    parts.push(
      mqttPacket.generate(
        {
          cmd: 'publish',
          topic: 'ms/x',
          payload: Buffer.from(`${round}${i}:${fill.repeat(64)}`),
          qos: (i % 2) + 1 as 1 | 2,
          messageId: i + 1 + (round === 'b' ? 1000 : round === 'c' ? 2000 : 0), // QoS 2 ids are never released here: each round its own
          retain: false,
          dup: false,
          properties: {
            userProperties: { k: [`${round}-${i}`, 'second'], other: `${fill}` },
            correlationData: Buffer.from(`corr-${round}-${i}`),
            contentType: `text/${round}${i}`,
            responseTopic: `reply/${round}/${i}`,
          },
        },
        { protocolVersion: 5 },
      ),
    );
  }
  return Buffer.concat(parts);
}

function expected(round: string, i: number, id: number): Seen {
  const fill = String.fromCharCode(65 + ((i + (round === 'b' ? 13 : 0)) % 26));
  return {
    payload: `${round}${i}:${fill.repeat(64)}`,
    qos: (i % 2) + 1,
    ids: [id],
    user: { k: [`${round}-${i}`, 'second'], other: fill },
    corr: Buffer.from(`corr-${round}-${i}`).toString('hex'),
    ct: `text/${round}${i}`,
    rt: `reply/${round}/${i}`,
    alias: undefined,
  };
}

const sorted = (xs: Seen[]) => [...xs].sort((x, y) => (x.payload < y.payload ? -1 : 1));

/** Resumes the persistent session, recording from before CONNACK (queued messages follow it in the same read). */
function resume(port: number, into: Seen[]): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect({ host: '127.0.0.1', port, reconnectPeriod: 0, clientId: 'ms-sub', clean: false, protocolVersion: 5, properties: { sessionExpiryInterval: 600 } });
    c.on('message', (_t, _p, packet) => into.push(seen(packet)));
    c.once('connect', () => resolve(c));
    c.once('error', reject);
  });
}

test('messages queued for an offline v5 session in the memory store come back exactly as published, after other subscribers got them, more socket reads, and a restart on the same store', async (t) => {
  const store = new MemoryStore();
  let b = await startBroker({ store: { type: 'memory' } } as never, { store });
  t.teardown(() => b.stop());
  // The persistent subscriber, offline.
  const sub = await connect(b.port, { clientId: 'ms-sub', clean: false, protocolVersion: 5, properties: { sessionExpiryInterval: 600 } });
  await sub.subscribeAsync('ms/#', { qos: 2, properties: { subscriptionIdentifier: 11 } });
  sub.end(true);
  await delay(100);
  // An online subscriber with another subscription id and topic aliases: its deliveries of the same messages must not leak into the stored ones.
  const live: Seen[] = [];
  const other = await connect(b.port, { clientId: 'ms-live', protocolVersion: 5, properties: { topicAliasMaximum: 10 } });
  t.teardown(() => other.end(true));
  other.on('message', (_t, _p, packet) => live.push(seen(packet)));
  await other.subscribeAsync('ms/#', { qos: 2, properties: { subscriptionIdentifier: 22 } });
  // The publisher: raw socket, two rounds of packets in one write each.
  const sock = net.connect({ host: '127.0.0.1', port: b.port });
  t.teardown(() => sock.destroy());
  await new Promise<void>((r) => sock.once('connect', () => r()));
  sock.write(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clientId: 'ms-pub', clean: true, keepalive: 60 } as never, { protocolVersion: 5 }));
  await delay(100);
  const N = 20;
  sock.write(rawPublishes(N, 'a'));
  await delay(100);
  sock.write(rawPublishes(N, 'b'));
  await delay(300);
  t.is(live.length, 2 * N, 'the online subscriber got every message');

  const want = [...Array.from({ length: N }, (_, i) => expected('a', i, 11)), ...Array.from({ length: N }, (_, i) => expected('b', i, 11))];
  // Once from the running broker...
  const back1: Seen[] = [];
  const s1 = await resume(b.port, back1);
  await delay(500);
  t.deepEqual(sorted(back1), sorted(want)); // mqtt.js emits a QoS 2 message only after PUBREL: compare without order
  s1.end(true);
  await delay(100);
  // ...and, with more queued while offline, from a new broker on the same store (embedding).
  sock.write(rawPublishes(N, 'c'));
  await delay(300);
  sock.destroy();
  await b.stop();
  b = await startBroker({ store: { type: 'memory' } } as never, { store });
  const back2: Seen[] = [];
  const s2 = await resume(b.port, back2);
  t.teardown(() => s2.end(true));
  await delay(500);
  t.deepEqual(sorted(back2), sorted(Array.from({ length: N }, (_, i) => expected('c', i, 11))));
});
