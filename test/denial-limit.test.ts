/**
 * audit.denials.disconnectAfter: a client whose own requests keep being denied is disconnected
 * (v5 DISCONNECT 0x97), audited once, while other clients are served throughout.
 */
import test from 'ava';
import { connect, nextMessages, rawConnect, startBroker } from './helpers.ts';
import { connectFrom } from './auth-support.ts';
import { PacketType, encodeConnect, frame, ofType, packetsOf, waitForType } from './raw-mqtt.ts';
import type { Authorizer } from '../src/index.ts';
import { ReasonCode } from '../src/index.ts';

const denySecret: Authorizer = {
  id: 'deny-secret',
  authorize: (_who, _action, topic) => (topic.startsWith('secret') ? { kind: 'deny', reason: ReasonCode.NotAuthorized, detail: 'secret' } : { kind: 'allow', value: undefined }),
};

test('a client whose requests are denied 50 times within the window is disconnected with 0x97 and one denial-limit record; another client is served throughout', async (t) => {
  const b = await startBroker({ authorizers: [], audit: { denials: { disconnectAfter: 50, disconnectWindowSeconds: 10 } } }, { authorizers: [denySecret] });
  t.teardown(() => b.stop());
  const bystander = await connectFrom(b.port, '127.0.0.3', { clientId: 'bystander' });
  await bystander.subscribeAsync('open/#', { qos: 1 });
  const r = await rawConnect(b.port);
  r.write(encodeConnect({ clientId: 'prober', version: 5 }));
  await waitForType(r, PacketType.CONNACK);
  for (let i = 1; i <= 60; i++) {
    const topic = Buffer.from(`secret/${i}`);
    r.write(frame(PacketType.SUBSCRIBE, 0x02, Buffer.concat([Buffer.from([0, i, 0, 0, topic.length]), topic, Buffer.from([1])])));
  }
  t.true(await r.closed(3000), 'disconnected');
  const disconnect = ofType(packetsOf(r), PacketType.DISCONNECT)[0];
  t.is(disconnect?.body[0], ReasonCode.QuotaExceeded);
  const answered = ofType(packetsOf(r), PacketType.SUBACK).length;
  t.is(answered, 49, `answered ${answered}: the 50th denial ends the connection instead of its SUBACK`);
  t.is(b.audit.records.filter((x) => x.event === 'disconnect' && x.action === 'denial-limit').length, 1);
  const got = nextMessages(bystander, 1);
  const pub = await connect(b.port, { clientId: 'pub' });
  await pub.publishAsync('open/x', 'still served', { qos: 1 });
  t.is((await got)[0]?.payload, 'still served');
  bystander.end(true);
  pub.end(true);
});
