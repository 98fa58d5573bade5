/**
 * Review finding: a queued QoS 1 message of a persistent MQTT 5 session loses its Subscription
 * Identifiers across a restart. The queue record (src/store/lmdb-records.ts, and the broker's
 * `queued` write in src/broker/sessions.ts) keeps no subscription ids, and the restore
 * (src/broker/session.ts) sets them to undefined, so the message goes out without the
 * identifiers the subscription asked for [MQTT-3.3.4-3]. The same message delivered without a
 * restart carries them (the control below). In-flight records do keep them.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import mqtt, { type IClientOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import { createBroker, type ConfigInput } from '../src/index.ts';
import { silentLogger } from '../src/log.ts';
import { delay } from './helpers.ts';

function connectCollecting(port: number, options: IClientOptions): Promise<{ client: MqttClient; received: IPublishPacket[] }> {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect({ host: '127.0.0.1', port, reconnectPeriod: 0, connectTimeout: 5000, protocolVersion: 5, ...options });
    const received: IPublishPacket[] = [];
    // Attached before CONNACK: queued messages arrive right after it.
    client.on('message', (_topic, _payload, packet) => received.push(packet));
    client.once('connect', () => resolve({ client, received }));
    client.once('error', reject);
  });
}

async function run(t: ExecutionContext, restart: boolean): Promise<IPublishPacket[]> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-review3-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const config: ConfigInput = {
    listeners: [{ name: 't', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }],
    authorizers: ['allow-all'],
    sys: { intervalSeconds: 0 },
    audit: { sink: 'none' },
    store: { path: path.join(dir, 'store') },
  };
  let broker = createBroker(config, { logger: silentLogger() });
  let port = (await broker.start()).listeners[0]?.port ?? 0;
  const device = { clientId: 'dev-1', clean: false, properties: { sessionExpiryInterval: 3600 } };
  const first = await connectCollecting(port, device);
  await first.client.subscribeAsync('cmd/#', { qos: 1, properties: { subscriptionIdentifier: 7 } });
  await first.client.endAsync();
  const ops = (await connectCollecting(port, { clientId: 'ops' })).client;
  await ops.publishAsync('cmd/dev-1', 'reboot', { qos: 1 });
  await ops.endAsync();
  if (restart) {
    await broker.stop();
    broker = createBroker(config, { logger: silentLogger() });
    port = (await broker.start()).listeners[0]?.port ?? 0;
  }
  const b = broker;
  t.teardown(() => b.stop());
  const again = await connectCollecting(port, device);
  const end = Date.now() + 5000;
  while (again.received.length < 1 && Date.now() < end) await delay(20);
  await again.client.endAsync();
  return again.received;
}

test('control: a queued message delivered without a restart carries the subscription identifier', async (t) => {
  const received = await run(t, false);
  t.is(received.length, 1);
  t.deepEqual(received[0]?.properties?.subscriptionIdentifier, 7);
});

test('a queued message delivered after a restart still carries the subscription identifier [MQTT-3.3.4-3]', async (t) => {
  const received = await run(t, true);
  t.is(received.length, 1, 'the queued message survived the restart');
  t.deepEqual(received[0]?.properties?.subscriptionIdentifier, 7, 'the Subscription Identifier was lost with the restart');
});
