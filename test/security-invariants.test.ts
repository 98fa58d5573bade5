/**
 * The security invariants that SECURITY.md promises ("What Portcullis does today" and the
 * limits tables), one named test each, over real sockets. Other test files go deeper; this one
 * is the checklist that a change to the broker core must keep green.
 */
import test from 'ava';
import mqtt, { type MqttClient, type Packet } from 'mqtt';
import { ReasonCode, type Authorizer } from '../src/index.ts';
import { connect, delay, messagesWithin, nextMessages, rawConnect, startBroker, subackCode } from './helpers.ts';
import { PacketType, decodeConnack, encodeConnect, encodePublish, frame, ofType, packetsOf, waitForPackets, waitForType } from './raw-mqtt.ts';

/** The reason code of the PUBACK for one QoS 1 publish (0 when the PUBACK carried none). */
async function pubackCode(client: MqttClient, topic: string, payload: string, retain = false): Promise<number> {
  let code = -1;
  const onPacket = (p: Packet) => {
    if (p.cmd === 'puback') code = (p as { reasonCode?: number }).reasonCode ?? 0;
  };
  client.on('packetreceive', onPacket);
  await client.publishAsync(topic, payload, { qos: 1, retain }).catch(() => undefined);
  client.off('packetreceive', onPacket);
  return code;
}

test('SECURITY 1: memory before authentication is bounded: a first packet that is not CONNECT, or a CONNECT over maxConnectSize, is closed unread', async (t) => {
  const b = await startBroker({ limits: { maxConnectSize: 1024 } });
  t.teardown(() => b.stop());
  const notConnect = await rawConnect(b.port);
  notConnect.write(encodePublish({ topic: 'x', payload: 'y' }));
  t.true(await notConnect.closed(2000), 'a first packet that is not CONNECT closes the connection');
  const huge = await rawConnect(b.port);
  // A fixed header announcing a 10 MB CONNECT: refused from the header, before any body arrives.
  huge.write(Buffer.from([0x10, 0x80, 0x80, 0x80, 0x05]));
  t.true(await huge.closed(2000), 'an oversized CONNECT is refused from its header');
  t.is(ofType(packetsOf(huge), PacketType.CONNACK).length, 0, 'no CONNACK for it');
});

test('SECURITY 2: CONNECT deadline: a socket that sends nothing is closed at limits.connectTimeoutMs', async (t) => {
  const b = await startBroker({ limits: { connectTimeoutMs: 300 } });
  t.teardown(() => b.stop());
  const idle = await rawConnect(b.port);
  const start = Date.now();
  t.true(await idle.closed(3000));
  t.true(Date.now() - start >= 250, 'not before the deadline');
});

test('SECURITY 3: strict input checks: a wildcard in a PUBLISH topic, a second CONNECT and packet id 0 each end a v5 connection with the right reason code', async (t) => {
  const b = await startBroker();
  t.teardown(() => b.stop());
  const cases: [string, Buffer, number][] = [
    ['wildcard topic', encodePublish({ topic: 'a/+', payload: 'x', version: 5 }), ReasonCode.TopicNameInvalid],
    ['second CONNECT', encodeConnect({ clientId: 'again', version: 5 }), ReasonCode.ProtocolError],
    ['packet id 0', encodePublish({ topic: 'a/b', payload: 'x', qos: 1, packetId: 0, version: 5 }), ReasonCode.ProtocolError],
  ];
  for (const [name, bytes, code] of cases) {
    const r = await rawConnect(b.port);
    r.write(encodeConnect({ clientId: `strict-${name.replace(/\W/g, '-')}`, version: 5 }));
    await waitForType(r, PacketType.CONNACK);
    r.write(bytes);
    const packets = await waitForPackets(r, (ps) => ofType(ps, PacketType.DISCONNECT).length > 0);
    const disconnect = ofType(packets, PacketType.DISCONNECT)[0];
    t.is(disconnect?.body[0], code, name);
    t.true(await r.closed(2000), `${name}: closed`);
  }
});

test('SECURITY 4: a session belongs to the identity that made it: another identity with the same client id gets its own session and never takes over, reads or locks out the first', async (t) => {
  const users = [
    { username: 'alice', password: 'alice-pw' },
    { username: 'bob', password: 'bob-pw' },
  ];
  const b = await startBroker({ listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users }] }] });
  t.teardown(() => b.stop());
  const v5 = { clean: false, protocolVersion: 5 as const, properties: { sessionExpiryInterval: 60 } };
  const alice = await connect(b.port, { clientId: 'shared-id', username: 'alice', password: 'alice-pw', ...v5 });
  await alice.subscribeAsync('private/alice', { qos: 1 });
  const bob = await connect(b.port, { clientId: 'shared-id', username: 'bob', password: 'bob-pw', ...v5 });
  const bobGot = messagesWithin(bob, 500);
  const aliceGot = nextMessages(alice, 1);
  const pub = await connect(b.port, { clientId: 'p', username: 'bob', password: 'bob-pw' });
  await pub.publishAsync('private/alice', 'for alice', { qos: 1 });
  t.is((await aliceGot)[0]?.payload, 'for alice');
  t.deepEqual(await bobGot, [], 'nothing of alice reaches bob');
  t.true(alice.connected, 'alice was not taken over');
  // Bob leaving persistent and coming back never blocks alice from her own client id, and vice versa.
  await bob.endAsync();
  await alice.endAsync();
  const aliceAgain = await connect(b.port, { clientId: 'shared-id', username: 'alice', password: 'alice-pw', ...v5 });
  t.true(aliceAgain.connected);
  await Promise.all([aliceAgain.endAsync(), pub.endAsync()]);
});

test('SECURITY 5: every chain fails closed: no provider refuses every client; no authorizer denies publish, subscribe, delivery and will', async (t) => {
  const noProvider = await startBroker({ listeners: [{ name: 'none', type: 'tcp', host: '127.0.0.1', port: 0, auth: [] }] });
  t.teardown(() => noProvider.stop());
  const refused = await t.throwsAsync(connect(noProvider.port, { protocolVersion: 5 }));
  t.is((refused as { code?: number }).code, ReasonCode.NotAuthorized);

  const noAuthorizer = await startBroker({ authorizers: [] });
  t.teardown(() => noAuthorizer.stop());
  const c = await connect(noAuthorizer.port, { protocolVersion: 5, clientId: 'fc' });
  t.is(await subackCode(c, 'a/#'), ReasonCode.NotAuthorized, 'subscribe denied');
  t.is(await pubackCode(c, 'a/b', 'x'), ReasonCode.NotAuthorized, 'publish denied');
  const withWill = await t.throwsAsync(connect(noAuthorizer.port, { protocolVersion: 5, clientId: 'fc-will', will: { topic: 'w', payload: Buffer.from('x'), qos: 0, retain: false } }));
  t.is((withWill as { code?: number }).code, ReasonCode.NotAuthorized, 'a will that no authorizer allows refuses the CONNECT');
  await c.endAsync();
});

test('SECURITY 5: every delivery is authorized: live, retained and queued messages on a topic the deliver check denies are withheld', async (t) => {
  const denyDeliverSecret: Authorizer = {
    id: 'deny-deliver-secret',
    authorize: (_who, action, topic) =>
      action === 'deliver' && topic.startsWith('secret/') ? { kind: 'deny', reason: ReasonCode.NotAuthorized, detail: 'secret' } : { kind: 'allow', value: undefined },
  };
  const b = await startBroker({ authorizers: [] }, { authorizers: [denyDeliverSecret] });
  t.teardown(() => b.stop());
  const pub = await connect(b.port, { clientId: 'pub' });
  await pub.publishAsync('secret/retained', 'r', { qos: 1, retain: true });
  await pub.publishAsync('open/retained', 'r', { qos: 1, retain: true });
  const sub = await connect(b.port, { clientId: 'sub', clean: false });
  const retained = messagesWithin(sub, 500);
  await sub.subscribeAsync('#', { qos: 1 });
  t.deepEqual((await retained).map((m) => m.topic), ['open/retained'], 'retained: only the allowed one');
  const live = messagesWithin(sub, 500);
  await pub.publishAsync('secret/live', 'x', { qos: 1 });
  await pub.publishAsync('open/live', 'x', { qos: 1 });
  t.deepEqual((await live).map((m) => m.topic), ['open/live'], 'live: only the allowed one');
  await sub.endAsync();
  await pub.publishAsync('secret/queued', 'q', { qos: 1 });
  await pub.publishAsync('open/queued', 'q', { qos: 1 });
  // Listen from the first byte: queued messages follow the CONNACK at once.
  const back = mqtt.connect({ host: '127.0.0.1', port: b.port, clientId: 'sub', clean: false, reconnectPeriod: 0 });
  const queued = messagesWithin(back, 800);
  t.deepEqual((await queued).map((m) => m.topic), ['open/queued'], 'queued: only the allowed one');
  t.true(b.audit.records.filter((r) => r.event === 'deliver' && r.decision === 'deny').length >= 3, 'each withheld delivery is audited');
  await back.endAsync();
  await pub.endAsync();
});

test('SECURITY 6: every decision is audited, naming who and what, and no password or payload is written', async (t) => {
  const users = [{ username: 'carol', password: 'correct horse battery' }];
  const b = await startBroker({ listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users }] }], authorizers: [] });
  t.teardown(() => b.stop());
  await t.throwsAsync(connect(b.port, { clientId: 'wrong', username: 'carol', password: 'not the password' }));
  const c = await connect(b.port, { clientId: 'carol-1', username: 'carol', password: 'correct horse battery', protocolVersion: 5 });
  await pubackCode(c, 'denied/topic', 'payload-that-must-not-appear');
  await c.endAsync();
  await delay(50);
  const records = b.audit.records;
  t.true(records.some((r) => r.event === 'connect' && r.decision === 'deny' && r.username === 'carol' && r.clientId === 'wrong'));
  t.true(records.some((r) => r.event === 'connect' && r.decision === 'allow' && r.username === 'carol' && r.listener === 'test' && r.remoteAddress !== undefined));
  t.true(records.some((r) => r.event === 'publish' && r.decision === 'deny' && r.topic === 'denied/topic' && r.qos === 1 && r.reasonCode === ReasonCode.NotAuthorized));
  const text = JSON.stringify(records);
  t.false(text.includes('correct horse battery'), 'no password');
  t.false(text.includes('not the password'), 'no wrong password either');
  t.false(text.includes('payload-that-must-not-appear'), 'no payload');
});

test('SECURITY 7: secrets: static-users refuses an empty password and a password that differs only in length', async (t) => {
  const users = [{ username: 'dave', password: 'secret' }];
  const b = await startBroker({ listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users }] }] });
  t.teardown(() => b.stop());
  for (const password of ['', 'secret ', 'secre', 'secretsecret']) {
    const err = await t.throwsAsync(connect(b.port, { username: 'dave', password, protocolVersion: 5 }), undefined, JSON.stringify(password));
    const code = (err as unknown as { code?: number }).code;
    t.true(code !== undefined && code >= 0x80, JSON.stringify(password));
  }
  const ok = await connect(b.port, { username: 'dave', password: 'secret' });
  await ok.endAsync();
});

test('$SYS is reserved for the broker: a client cannot publish there by PUBLISH or by will, even with allow-all', async (t) => {
  const b = await startBroker({ sys: { intervalSeconds: 0 } });
  t.teardown(() => b.stop());
  const watcher = await connect(b.port, { clientId: 'sys-watch', protocolVersion: 5 });
  await watcher.subscribeAsync('$SYS/#', { qos: 1 });
  const forged = messagesWithin(watcher, 800);
  const c = await connect(b.port, { clientId: 'sys-pub', protocolVersion: 5 });
  t.is(await pubackCode(c, '$SYS/broker/alert', 'FORGED', true), ReasonCode.NotAuthorized, 'PUBLISH to $SYS refused');
  const r = await rawConnect(b.port);
  r.write(encodeConnect({ clientId: 'sys-will', version: 5, will: { topic: '$SYS/broker/alert', payload: 'FORGED-WILL', qos: 1, retain: true } }));
  const [connack] = await waitForType(r, PacketType.CONNACK);
  t.is(connack === undefined ? undefined : decodeConnack(connack).code, ReasonCode.NotAuthorized, 'a will on $SYS refuses the CONNECT');
  r.socket.destroy();
  t.deepEqual(await forged, [], 'nothing forged reached $SYS subscribers');
  const late = await connect(b.port, { clientId: 'sys-late', protocolVersion: 5 });
  const retainedForged = messagesWithin(late, 500);
  await late.subscribeAsync('$SYS/broker/alert', { qos: 1 });
  t.deepEqual(await retainedForged, [], 'and nothing was retained there');
  await Promise.all([watcher.endAsync(), c.endAsync(), late.endAsync()]);
});

test('Limits: an acknowledged QoS 1 message already queued is never evicted; a new one that does not fit is refused, counted and audited', async (t) => {
  const b = await startBroker({ limits: { maxQueuedMessages: 2, maxInflight: 1 } });
  t.teardown(() => b.stop());
  // A subscriber that never acknowledges: raw socket, so nothing answers the PUBLISH.
  const stuck = await rawConnect(b.port);
  stuck.write(encodeConnect({ clientId: 'stuck', version: 4 }));
  await waitForType(stuck, PacketType.CONNACK);
  stuck.write(frame(PacketType.SUBSCRIBE, 0x02, Buffer.from([0, 1, 0, 5, ...Buffer.from('q/one'), 1])));
  await waitForType(stuck, PacketType.SUBACK);
  const pub = await connect(b.port, { clientId: 'filler' });
  for (let i = 1; i <= 5; i++) await pub.publishAsync('q/one', `m${i}`, { qos: 1 });
  await delay(100);
  const first = ofType(packetsOf(stuck), PacketType.PUBLISH);
  t.is(first.length, 1, 'one in flight (maxInflight 1)');
  t.true(b.broker.stats.queueRefusedQos12 >= 2, 'm4 and m5 refused, not m2 and m3 evicted');
  // Acknowledging frees the window: the queued m2 and m3 follow, in order.
  const ackOf = (p: { body: Buffer }) => frame(PacketType.PUBACK, 0, p.body.subarray(p.body.readUInt16BE(0) + 2, p.body.readUInt16BE(0) + 4));
  stuck.write(ackOf(first[0] as { body: Buffer }));
  const all = await waitForPackets(stuck, (ps) => ofType(ps, PacketType.PUBLISH).length >= 2);
  const second = ofType(all, PacketType.PUBLISH)[1];
  t.true(second !== undefined && second.body.includes(Buffer.from('m2')), 'the queued m2 is delivered next');
  await delay(1100); // refusals are summarised into one record per second
  t.true(b.audit.records.some((r) => r.event === 'deliver' && r.action === 'queue-full' && r.reasonCode === ReasonCode.QuotaExceeded));
  stuck.socket.destroy();
  await pub.endAsync();
});

test('Limits: a subscriber that is not reading does not stop another subscriber getting every message', async (t) => {
  const b = await startBroker();
  t.teardown(() => b.stop());
  const stuck = await rawConnect(b.port);
  stuck.write(encodeConnect({ clientId: 'never-reads', version: 4 }));
  await waitForType(stuck, PacketType.CONNACK);
  stuck.write(frame(PacketType.SUBSCRIBE, 0x02, Buffer.from([0, 1, 0, 3, ...Buffer.from('f/x'), 1])));
  await waitForType(stuck, PacketType.SUBACK);
  stuck.socket.pause();
  const healthy = await connect(b.port, { clientId: 'healthy' });
  await healthy.subscribeAsync('f/x', { qos: 1 });
  const got = nextMessages(healthy, 200, 10_000);
  const pub = await connect(b.port, { clientId: 'p' });
  for (let i = 0; i < 200; i++) pub.publish('f/x', Buffer.alloc(1024, i), { qos: 1 });
  t.is((await got).length, 200);
  stuck.socket.destroy();
  await Promise.all([healthy.endAsync(), pub.endAsync()]);
});
