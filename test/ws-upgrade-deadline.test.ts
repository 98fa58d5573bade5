/**
 * WebSocket listeners: the HTTP upgrade request has the CONNECT deadline (limits.connectTimeoutMs),
 * so a client that trickles its request headers is closed; a WebSocket connection that completed
 * its upgrade is not affected by that deadline.
 */
import net from 'node:net';
import test from 'ava';
import mqtt from 'mqtt';
import { delay, startBroker } from './helpers.ts';

test('ws: a client that trickles its upgrade request is closed at connectTimeoutMs; an upgraded client outlives it', async (t) => {
  const b = await startBroker({ limits: { connectTimeoutMs: 1000 }, admission: { exempt: ['127.0.0.1/32'] } }, { ws: true });
  t.teardown(() => b.stop());
  const port = b.wsPort as number;

  // A finished upgrade first, so it is older than the deadline by the end.
  const client = await new Promise<mqtt.MqttClient>((resolve, reject) => {
    const c = mqtt.connect(`ws://127.0.0.1:${port}/mqtt`, { reconnectPeriod: 0, clientId: 'ws-long', keepalive: 60 });
    c.once('connect', () => resolve(c));
    c.once('error', reject);
  });
  t.teardown(() => client.end(true));
  await client.subscribeAsync('ws/deadline', { qos: 1 });

  // The slow one: request line and one header, then a header byte every 300 ms, never the blank line.
  const slow = net.connect(port, '127.0.0.1');
  slow.on('error', () => undefined); // EPIPE once the broker has closed it
  await new Promise<void>((resolve) => slow.once('connect', () => resolve()));
  const opened = Date.now();
  slow.write('GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\n');
  const drip = setInterval(() => slow.write('X'), 300);
  t.teardown(() => {
    clearInterval(drip);
    slow.destroy();
  });
  const closedAfter = await new Promise<number>((resolve) => {
    slow.once('close', () => resolve(Date.now() - opened));
    setTimeout(() => resolve(-1), 8000);
  });
  clearInterval(drip);
  t.true(closedAfter > 0, 'the trickled upgrade was closed by the broker');
  t.true(closedAfter < 4000, `closed after ${closedAfter} ms`);

  // The upgraded client, now well past the deadline, still works.
  await delay(500);
  t.true(client.connected);
  const got = new Promise<string>((resolve) => client.once('message', (_topic, payload) => resolve(payload.toString())));
  await client.publishAsync('ws/deadline', 'still here', { qos: 1 });
  t.is(await got, 'still here');
});
