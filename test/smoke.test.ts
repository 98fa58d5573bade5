import test from 'ava';
import { connect, nextMessages, startBroker } from './helpers.ts';

test('a v5 subscriber receives a QoS 1 message from a v3.1.1 publisher', async (t) => {
  const b = await startBroker();
  const sub = await connect(b.port, { protocolVersion: 5, clientId: 'sub' });
  await sub.subscribeAsync('x/#', { qos: 1 });
  const pub = await connect(b.port, { clientId: 'pub' });
  const got = nextMessages(sub, 1);
  await pub.publishAsync('x/y', 'hi', { qos: 1 });
  const [m] = await got;
  t.is(m?.topic, 'x/y');
  t.is(m?.payload, 'hi');
  t.is(m?.packet.qos, 1);
  await sub.endAsync();
  await pub.endAsync();
  await b.stop();
});
