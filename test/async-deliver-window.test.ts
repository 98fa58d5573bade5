/**
 * With an authorizer that answers `deliver` asynchronously, the client's Receive Maximum still
 * holds [MQTT-3.3.4-9]: a pending decision counts against the in-flight window (one decision at a
 * time per session). The client here never acknowledges, so at most 2 may arrive.
 */
import net from 'node:net';
import test, { type ExecutionContext } from 'ava';
import mqttPacket from 'mqtt-packet';
import type { Authorizer } from '../src/authz/types.ts';
import type { Decision } from '../src/auth/types.ts';
import { connect, delay, startBroker } from './helpers.ts';

async function publishesSeen(t: ExecutionContext, asyncDeliver: boolean): Promise<number> {
  const remote: Authorizer = {
    id: 'remote',
    authorize: (_who, action): Decision | Promise<Decision> =>
      action === 'deliver' && asyncDeliver ? new Promise<Decision>((r) => setTimeout(() => r({ kind: 'allow', value: undefined }), 50)) : { kind: 'allow', value: undefined },
  };
  const tb = await startBroker({ authorizers: [] }, { authorizers: [remote] });
  t.teardown(() => tb.stop());

  // A raw MQTT 5 client: persistent session, Receive Maximum 2, never acknowledges.
  const socket = net.connect({ host: '127.0.0.1', port: tb.port, localAddress: '127.0.0.2' });
  t.teardown(() => socket.destroy());
  const parser = mqttPacket.parser({ protocolVersion: 5 });
  let publishes = 0;
  let connacked = false;
  let subacked = false;
  parser.on('packet', (p) => {
    if (p.cmd === 'connack') connacked = true;
    if (p.cmd === 'suback') subacked = true;
    if (p.cmd === 'publish') publishes++;
  });
  socket.on('data', (d) => parser.parse(d));
  const send = (p: object): boolean => socket.write(mqttPacket.generate(p as mqttPacket.Packet, { protocolVersion: 5 }));
  await new Promise<void>((r) => socket.once('connect', () => r()));
  send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clean: true, clientId: 'win-1', keepalive: 60, properties: { receiveMaximum: 2 } });
  while (!connacked) await delay(10);
  send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'w/#', qos: 1 }] });
  while (!subacked) await delay(10);

  const pub = await connect(tb.port, { protocolVersion: 5, clientId: 'pub-1' });
  for (let i = 0; i < 10; i++) await pub.publishAsync('w/x', `m${i}`, { qos: 1 });
  await pub.endAsync();
  await delay(600);
  return publishes;
}

test('control: with synchronous deliver decisions the broker respects Receive Maximum 2', async (t) => {
  t.true((await publishesSeen(t, false)) <= 2);
});

test('with asynchronous deliver decisions the broker still respects Receive Maximum 2 [MQTT-3.3.4-9]', async (t) => {
  const n = await publishesSeen(t, true);
  t.true(n <= 2, `${n} unacknowledged QoS 1 PUBLISH packets sent to a client with Receive Maximum 2`);
});
