/**
 * Delivery guarantees: an acknowledged QoS 1/2 message reaches every live subscriber that keeps
 * acking (flow control back to publishers), a stuck subscriber holds nobody up for long, shared
 * groups hand a departed member's messages to another member, and expiry is never forwarded
 * higher than it was set.
 */
import test from 'ava';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { connect, delay, startBroker } from './helpers.ts';

function collector(port: number, options: IClientOptions): Promise<{ client: MqttClient; got: mqtt.IPublishPacket[] }> {
  return new Promise((resolve, reject) => {
    const got: mqtt.IPublishPacket[] = [];
    const client = mqtt.connect({ host: '127.0.0.1', port, reconnectPeriod: 0, ...options });
    client.on('message', (_t, _p, packet) => got.push(packet));
    client.once('connect', () => resolve({ client, got }));
    client.once('error', reject);
  });
}

async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await delay(20);
  }
  return true;
}

test('a will with Message Expiry Interval 100 is forwarded with 100 or less, 10 times out of 10 [MQTT-3.3.2-6]', async (t) => {
  const b = await startBroker();
  t.teardown(() => b.stop());
  const sub = await collector(b.port, { clientId: 'will-watch', protocolVersion: 5 });
  await sub.client.subscribeAsync('wills/expiry', { qos: 1 });
  for (let i = 0; i < 10; i++) {
    const c = await connect(b.port, { clientId: `will-exp-${i}`, protocolVersion: 5, will: { topic: 'wills/expiry', payload: Buffer.from(`w${i}`), qos: 1, retain: false, properties: { messageExpiryInterval: 100 } } });
    c.stream.destroy();
    t.true(await until(() => sub.got.length === i + 1, 3000));
  }
  const intervals = sub.got.map((p) => p.properties?.messageExpiryInterval);
  t.true(intervals.every((x) => x !== undefined && x <= 100 && x >= 99), `forwarded intervals: ${intervals.join(', ')}`);
  sub.client.end(true);
});
