/**
 * The example configurations the docs point to must keep working.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import mqtt from 'mqtt';
import { loadConfigFile } from '../src/config/load.ts';
import { createBroker, MemoryAuditSink } from '../src/index.ts';
import { silentLogger } from '../src/log.ts';
import { connect, nextMessages } from './helpers.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const examples = path.join(root, 'docs', 'examples');

for (const file of fs.readdirSync(examples).filter((f) => f.endsWith('.yaml'))) {
  test(`docs/examples/${file} is a valid configuration`, (t) => {
    t.notThrows(() => loadConfigFile(path.join(examples, file)));
  });
}

test('docs/examples/dev-anonymous.yaml serves anonymous clients over TCP and WebSocket on loopback', async (t) => {
  const config = loadConfigFile(path.join(examples, 'dev-anonymous.yaml'));
  for (const l of config.listeners) {
    t.is(l.host, '127.0.0.1', `${l.name} stays on loopback`);
    l.port = 0; // the shipped ports may be in use on a test machine
  }
  const audit = new MemoryAuditSink();
  const broker = createBroker(config, { logger: silentLogger(), audit });
  const { listeners } = await broker.start();
  t.teardown(() => broker.stop());
  const tcp = listeners.find((l) => l.type === 'tcp');
  const ws = listeners.find((l) => l.type === 'ws');
  t.truthy(tcp);
  t.truthy(ws);

  const sub = await connect(tcp?.port ?? 0, { protocolVersion: 5, clientId: 'example-sub' });
  t.teardown(() => sub.end(true));
  await sub.subscribeAsync('demo/#', { qos: 1 });
  const wsClient = await new Promise<mqtt.MqttClient>((resolve, reject) => {
    const c = mqtt.connect(`ws://127.0.0.1:${ws?.port}/mqtt`, { reconnectPeriod: 0, clientId: 'example-ws' });
    c.once('connect', () => resolve(c));
    c.once('error', reject);
  });
  t.teardown(() => wsClient.end(true));
  const got = nextMessages(sub, 1);
  await wsClient.publishAsync('demo/hello', 'from websocket', { qos: 1 });
  const [m] = await got;
  t.is(m?.topic, 'demo/hello');
  t.is(m?.payload, 'from websocket');
  t.true(audit.records.some((r) => r.event === 'connect' && r.decision === 'allow' && r.clientId === 'example-ws'));
});
