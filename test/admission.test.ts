/**
 * Admission control over real sockets: connection caps (total, per listener, per source
 * address), the connect rate, exemptions, flapping bans, a flood of 2,000 connections and
 * 200 slowloris connections. Different loopback source addresses (127.0.0.2, ...) stand in
 * for different clients.
 */
import test from 'ava';
import mqtt, { type MqttClient } from 'mqtt';
import { connect, delay, nextMessages } from './helpers.ts';
import { connectFrom, refusalCode } from './auth-support.ts';
import { admissionRecords, rawOpen, startAdmissionBroker, waitFor, type RawSocket } from './admission-support.ts';
import { rawConnectPacket } from './helpers.ts';
import { parseConfig } from '../src/index.ts';

const fastRate = { perSecond: 10_000, burst: 10_000 };

async function pubSubWorks(port: number, localAddress: string, tag: string): Promise<boolean> {
  const sub = await connectFrom(port, localAddress, { clientId: `${tag}-sub` });
  const pub = await connectFrom(port, localAddress, { clientId: `${tag}-pub` });
  try {
    await sub.subscribeAsync(`admission/${tag}`, { qos: 1 });
    const got = nextMessages(sub, 1, 5000);
    await pub.publishAsync(`admission/${tag}`, 'still served', { qos: 1 });
    return (await got)[0]?.payload === 'still served';
  } finally {
    sub.end(true);
    pub.end(true);
  }
}

test('per-address cap: the 4th connection from one address is closed at accept without a byte; another address is served; audited with a count', async (t) => {
  const tb = await startAdmissionBroker({
    limits: { maxConnectionsPerIp: 3, connectRate: fastRate },
    admission: { refusalAudit: { intervalMs: 200 } },
  });
  t.teardown(() => tb.stop());
  const clients: MqttClient[] = [];
  for (let i = 0; i < 3; i++) clients.push(await connect(tb.port, { clientId: `cap-${i}` }));
  t.teardown(() => clients.forEach((c) => c.end(true)));
  const fourth = rawOpen(tb.port);
  t.is(await fourth.outcome, 'closed', 'refused at accept');
  t.is(fourth.bytes(), 0, 'nothing was sent: no CONNACK, the socket was destroyed');
  t.is((await refusalCode(tb.port, { clientId: 'cap-5', protocolVersion: 5 })).code, -1, 'an MQTT client sees the connection closed, no CONNACK');
  const other = await connectFrom(tb.port, '127.0.0.2', { clientId: 'other-address' });
  other.end(true);
  t.is(tb.broker.admissionStats().refused['ip-cap'], 2);
  // The first refusal is recorded at once, the second is folded into a summary record with its count.
  t.true(await waitFor(() => admissionRecords(tb.audit).length >= 2, 2000));
  const recs = admissionRecords(tb.audit);
  t.is(recs[0]?.remoteAddress, '127.0.0.1');
  t.is(recs[0]?.listener, 'test');
  t.is(recs[0]?.detail?.refusal, 'ip-cap');
  t.regex(recs[0]?.reason ?? '', /source address reached \(3\)/);
  t.is(recs.reduce((n, r) => n + Number(r.detail?.count ?? 0), 0), 2);
  // A slot frees when a client leaves.
  clients.shift()?.end(true);
  t.true(await waitFor(() => tb.broker.admissionStats().connections === 2 + 0, 2000));
  const again = await connect(tb.port, { clientId: 'cap-again' });
  again.end(true);
  t.pass();
});

test('total cap across addresses, and a listener cap on one listener only', async (t) => {
  const tb = await startAdmissionBroker({
    listeners: [
      { name: 'main', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] },
      { name: 'small', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'], limits: { maxConnections: 1 } },
    ],
    limits: { maxConnections: 4, connectRate: fastRate },
  });
  t.teardown(() => tb.stop());
  const main = tb.ports.main as number;
  const small = tb.ports.small as number;
  const live: MqttClient[] = [];
  t.teardown(() => live.forEach((c) => c.end(true)));
  live.push(await connectFrom(small, '127.0.0.5', { clientId: 'small-1' }));
  const smallSecond = rawOpen(small, '127.0.0.6');
  t.is(await smallSecond.outcome, 'closed', 'the listener cap (1) refuses a second connection on that listener');
  live.push(await connectFrom(main, '127.0.0.2', { clientId: 'a' }));
  live.push(await connectFrom(main, '127.0.0.3', { clientId: 'b' }));
  live.push(await connectFrom(main, '127.0.0.4', { clientId: 'c' }));
  const fifth = rawOpen(main, '127.0.0.7');
  t.is(await fifth.outcome, 'closed', 'the total cap (4) refuses a fifth connection from a new address');
  const stats = tb.broker.admissionStats();
  t.is(stats.refused['listener-cap'], 1);
  t.is(stats.refused['total-cap'], 1);
  t.is(stats.connections, 4);
  t.true(await waitFor(() => admissionRecords(tb.audit).some((r) => r.detail?.refusal === 'total-cap' && r.remoteAddress === '127.0.0.7')));
  t.true(admissionRecords(tb.audit).some((r) => r.detail?.refusal === 'listener-cap' && r.listener === 'small'));
  (live.pop() as MqttClient).end(true);
  t.true(await waitFor(() => tb.broker.admissionStats().connections === 3));
  live.push(await connectFrom(main, '127.0.0.7', { clientId: 'd' }));
});

test('a listener maxConnectionsPerIp replaces the global cap for that listener, which counts addresses on its own', async (t) => {
  const tb = await startAdmissionBroker({
    listeners: [
      { name: 'public', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] },
      { name: 'backend', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'], limits: { maxConnectionsPerIp: 5 } },
    ],
    limits: { maxConnectionsPerIp: 1, connectRate: fastRate },
  });
  t.teardown(() => tb.stop());
  const live: MqttClient[] = [];
  t.teardown(() => live.forEach((c) => c.end(true)));
  for (let i = 0; i < 5; i++) live.push(await connect(tb.ports.backend as number, { clientId: `be-${i}` }));
  t.is(await rawOpen(tb.ports.backend as number).outcome, 'closed', 'the 6th on the backend listener is refused');
  live.push(await connect(tb.ports.public as number, { clientId: 'pub-0' }));
  t.is(await rawOpen(tb.ports.public as number).outcome, 'closed', 'the global cap (1) holds on the other listener');
});

test('connect rate: a burst is admitted, the next connection is refused at once, the bucket refills; another address is unaffected', async (t) => {
  // One token every 5 s: slow enough that a loaded machine cannot refill the bucket by accident.
  // Outcomes are read from the broker's counts: under load a connect may wait for a SYN retry.
  const tb = await startAdmissionBroker({ limits: { connectRate: { perSecond: 0.2, burst: 3 } } });
  t.teardown(() => tb.stop());
  const stats = () => tb.broker.admissionStats();
  const sockets = [rawOpen(tb.port), rawOpen(tb.port), rawOpen(tb.port)];
  t.teardown(() => sockets.forEach((s) => s.socket.destroy()));
  t.true(await waitFor(() => stats().accepted === 3, 5000), 'the burst of 3 is admitted');
  const fourth = rawOpen(tb.port);
  sockets.push(fourth);
  t.true(await waitFor(() => stats().refused.rate === 1, 5000), 'the 4th is refused');
  t.true(await fourth.closed(2000));
  t.is(fourth.bytes(), 0);
  t.is(stats().accepted, 3);
  const elsewhere = rawOpen(tb.port, '127.0.0.2');
  sockets.push(elsewhere);
  t.true(await waitFor(() => stats().accepted === 4, 5000), 'the bucket is per source address');
  t.is(await elsewhere.outcome, 'open');
  await delay(5200); // one token back
  const later = await connect(tb.port, { clientId: 'after-refill' });
  later.end(true);
  t.is(stats().refused.rate, 1);
  t.true(await waitFor(() => admissionRecords(tb.audit).some((r) => r.detail?.refusal === 'rate' && /0\.2\/s, burst 3/.test(r.reason ?? ''))));
});

test('exempt ranges skip the caps and the rate, but are still counted', async (t) => {
  const tb = await startAdmissionBroker({
    limits: { maxConnectionsPerIp: 1, connectRate: { perSecond: 1, burst: 1 } },
    admission: { exempt: ['127.0.0.3/32', '::1'] },
  });
  t.teardown(() => tb.stop());
  const live: MqttClient[] = [];
  t.teardown(() => live.forEach((c) => c.end(true)));
  for (let i = 0; i < 4; i++) live.push(await connectFrom(tb.port, '127.0.0.3', { clientId: `ops-${i}` }));
  t.is(tb.broker.admissionStats().connections, 4);
  live.push(await connect(tb.port, { clientId: 'plain-1' }));
  t.is(await rawOpen(tb.port).outcome, 'closed', 'a non-exempt address still has a cap of 1');
});

test('a bad exempt range is refused at start with the key named', async (t) => {
  const err = await t.throwsAsync(startAdmissionBroker({ admission: { exempt: ['10.0.0.5/8'] } }));
  t.is((err as { code?: string }).code, 'ERR_PORTCULLIS_CONFIG');
  t.regex(err?.message ?? '', /admission\.exempt\[0\]: '10\.0\.0\.5\/8' has host bits set; did you mean 10\.0\.0\.0\/8\?/);
});

test('on the defaults, a client id that reconnects 100 times in a row (connect, publish, DISCONNECT) is never banned for flapping', async (t) => {
  const tb = await startAdmissionBroker({ authGuard: {} }); // the defaults: only the test's broker set-up differs
  t.teardown(() => tb.stop());
  for (const version of [4, 5] as const) {
    for (let i = 0; i < 50; i++) {
      const c = await connectFrom(tb.port, '127.0.0.1', { clientId: `loop-${version}`, protocolVersion: version });
      await c.publishAsync('admission/loop', `${i}`, { qos: 1 });
      await c.endAsync();
    }
  }
  t.false(tb.audit.records.some((r) => r.event === 'ban'), 'no ban of any kind');
  t.false(tb.audit.records.some((r) => r.event === 'connect' && r.decision === 'deny'), 'no refused connect');
});

test('flapping: a client id that connects 3 times within the window is banned (v5 0x8A, v3.1.1 rc 5), other ids unaffected, audited; the ban expires', async (t) => {
  const tb = await startAdmissionBroker({ admission: { flapping: { enabled: true, maxConnects: 3, windowMs: 30_000, banMs: 3000 } } });
  t.teardown(() => tb.stop());
  for (let i = 0; i < 3; i++) {
    const c = await connect(tb.port, { clientId: 'flappy', protocolVersion: 5 });
    await c.endAsync();
  }
  const v5 = await refusalCode(tb.port, { clientId: 'flappy', protocolVersion: 5 });
  t.is(v5.code, 0x8a, 'MQTT 5: CONNACK 0x8A Banned');
  t.is((await refusalCode(tb.port, { clientId: 'flappy', protocolVersion: 4 })).code, 5, 'MQTT 3.1.1: return code 5 (not authorized)');
  t.is((await refusalCode(tb.port, { clientId: 'steady', protocolVersion: 5 })).code, 0, 'another client id connects');
  const ban = tb.audit.records.find((r) => r.event === 'ban' && r.action === 'flapping');
  t.is(ban?.clientId, 'flappy');
  t.is(ban?.reasonCode, 0x8a);
  t.is(ban?.detail?.durationMs, 3000);
  const refusals = tb.audit.records.filter((r) => r.event === 'connect' && r.decision === 'deny' && r.clientId === 'flappy');
  t.is(refusals.length, 2);
  // Flapping is decided after authentication (it is per identity): the provider's verdict comes first.
  t.true(refusals.every((r) => r.decidedBy === 'flapping' && r.reasonCode === 0x8a && r.verdicts?.at(-1)?.provider === 'flapping'));
  t.true(await waitFor(() => tb.audit.records.some((r) => r.event === 'unban' && r.action === 'flapping' && r.clientId === 'flappy'), 8000), 'the expiry is audited');
  t.is((await refusalCode(tb.port, { clientId: 'flappy', protocolVersion: 5 })).code, 0, 'and the client id connects again');
});

test('flapping counts only authenticated connects: failed logins with a client id do not get it banned', async (t) => {
  const tb = await startAdmissionBroker({
    listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users: [{ username: 'dev', password: 'dev-pw' }] }] }],
    admission: { flapping: { enabled: true, maxConnects: 3, windowMs: 10_000, banMs: 60_000 } },
  });
  t.teardown(() => tb.stop());
  for (let i = 0; i < 5; i++) t.is((await refusalCode(tb.port, { clientId: 'device-7', username: 'dev', password: 'wrong', protocolVersion: 5 })).code, 0x86);
  t.is((await refusalCode(tb.port, { clientId: 'device-7', username: 'dev', password: 'dev-pw', protocolVersion: 5 })).code, 0);
  t.false(tb.audit.records.some((r) => r.event === 'ban'));
});

test.serial('a flood of 2,000 connections: refused at accept, the broker stays up, an exempt client is served during it and any client after it, RSS bounded, audit bounded', async (t) => {
  t.timeout(60_000);
  const tb = await startAdmissionBroker({
    limits: { maxConnections: 300, maxConnectionsPerIp: 50, connectRate: { perSecond: 100, burst: 100 }, connectTimeoutMs: 60_000 },
    admission: { exempt: ['127.0.0.9/32'], refusalAudit: { intervalMs: 200 } },
  });
  t.teardown(() => tb.stop());
  const rssBefore = process.memoryUsage().rss;
  const started = Date.now();
  const sockets: RawSocket[] = [];
  let served = false;
  for (let batch = 0; batch < 10; batch++) {
    const wave = Array.from({ length: 200 }, () => rawOpen(tb.port, '127.0.0.1', 100));
    sockets.push(...wave);
    await Promise.all(wave.map((s) => s.outcome));
    if (batch === 4) served = await pubSubWorks(tb.port, '127.0.0.9', 'during-flood');
  }
  // Under load some connects wait for a SYN retry: classify once every one reached admission
  // (2,000 from the flood and the two exempt clients) and the refused ones have seen their close.
  const refusedNow = () => Object.values(tb.broker.admissionStats().refused).reduce((a, b) => a + b, 0);
  t.true(await waitFor(() => tb.broker.admissionStats().accepted + refusedNow() === 2002, 20_000), 'every connection was decided');
  const refused = refusedNow();
  t.true(await waitFor(() => sockets.filter((s) => s.isClosed()).length === refused, 5000));
  const outcomes = sockets.map((s) => (s.isClosed() ? 'closed' : 'open'));
  const open = outcomes.filter((o) => o === 'open').length;
  const elapsed = Date.now() - started;
  t.true(served, 'an exempt client was served during the flood');
  t.is(open, 50, 'exactly the per-address cap is open');
  t.is(tb.broker.admissionStats().accepted, 52, 'the flood got 50 in, the exempt client 2');
  t.is(refused, 1950);
  t.true(sockets.filter((s, i) => outcomes[i] === 'closed').every((s) => s.bytes() === 0), 'refused sockets never got a byte');
  // The flooding address is still capped, but once it stops, clients are served.
  for (const s of sockets) s.socket.destroy();
  t.true(await waitFor(() => tb.broker.admissionStats().connections === 0, 5000));
  await delay(1100); // the bucket refills
  t.true(await pubSubWorks(tb.port, '127.0.0.1', 'after-flood'));
  const rssGrowth = (process.memoryUsage().rss - rssBefore) / 1024 / 1024;
  t.log(`2,000 connections in ${elapsed} ms; ${open} admitted; RSS +${rssGrowth.toFixed(1)} MiB; ${admissionRecords(tb.audit).length} audit records`);
  t.true(rssGrowth < 200, `RSS grew by ${rssGrowth.toFixed(1)} MiB`);
  // One record per address per interval, plus summaries: far fewer than the refusals, and every refusal counted.
  t.true(await waitFor(() => admissionRecords(tb.audit).reduce((n, r) => n + Number(r.detail?.count ?? 0), 0) === refused, 3000));
  const records = admissionRecords(tb.audit).length;
  t.true(records <= 2 * Math.ceil((Date.now() - started) / 200) + 2, `${records} audit records for ${refused} refusals`);
});

test.serial('200 slowloris connections (silent, one byte, a trickle) are dropped at the CONNECT deadline while a valid client is served', async (t) => {
  t.timeout(30_000);
  const tb = await startAdmissionBroker({ limits: { connectTimeoutMs: 1000, connectRate: fastRate } });
  t.teardown(() => tb.stop());
  const rssBefore = process.memoryUsage().rss;
  const opened = Date.now();
  const slow = Array.from({ length: 200 }, (_, i) => rawOpen(tb.port, `127.0.0.${10 + (i % 4)}`, 50));
  t.teardown(() => slow.forEach((s) => s.socket.destroy()));
  t.deepEqual(new Set(await Promise.all(slow.map((s) => s.outcome))), new Set(['open']), 'every slow connection is accepted');
  const connectBytes = rawConnectPacket('slow-one');
  slow.forEach((s, i) => {
    if (i % 3 === 1) s.socket.write(connectBytes.subarray(0, 1));
  });
  // A trickle: one byte of CONNECT every 200 ms keeps data flowing, but the deadline counts from the open.
  let offset = 0;
  const trickle = setInterval(() => {
    offset++;
    slow.forEach((s, i) => {
      if (i % 3 === 2 && !s.socket.destroyed && offset < connectBytes.length) s.socket.write(connectBytes.subarray(offset - 1, offset));
    });
  }, 200);
  t.teardown(() => clearInterval(trickle));
  t.true(await pubSubWorks(tb.port, '127.0.0.2', 'beside-slowloris'), 'a valid client is served meanwhile');
  const closed = await Promise.all(slow.map((s) => s.closed(4000)));
  const took = Date.now() - opened;
  clearInterval(trickle);
  t.is(closed.filter(Boolean).length, 200, 'every slow connection was closed by the broker');
  t.true(took >= 900, `not before the deadline (${took} ms)`);
  t.true(took < 3500, `closed within ${took} ms of opening`);
  t.true(await waitFor(() => tb.broker.admissionStats().connections === 0));
  const rssGrowth = (process.memoryUsage().rss - rssBefore) / 1024 / 1024;
  t.true(rssGrowth < 100, `RSS grew by ${rssGrowth.toFixed(1)} MiB`);
});

test.serial('per-address state is bounded: beyond maxTrackedAddresses new addresses are refused, and the shared sweep expires idle entries', async (t) => {
  const tb = await startAdmissionBroker({
    limits: { connectRate: { perSecond: 1000, burst: 10 } },
    admission: { maxTrackedAddresses: 100, refusalAudit: { intervalMs: 100 }, exempt: ['127.0.0.3'] },
  });
  t.teardown(() => tb.stop());
  const addresses = Array.from({ length: 110 }, (_, i) => `127.0.${1 + Math.floor(i / 200)}.${(i % 200) + 2}`);
  const held = addresses.map((a) => rawOpen(tb.port, a, 1000));
  t.teardown(() => held.forEach((s) => s.socket.destroy()));
  // Every connection reaches admission (under load some wait for a SYN retry first).
  const decided = () => tb.broker.admissionStats().accepted + (tb.broker.admissionStats().refused['tracking-full'] ?? 0);
  t.true(await waitFor(() => decided() === 110, 10_000));
  t.is(tb.broker.admissionStats().accepted, 100, 'one connection from each of the first 100 addresses');
  t.is(tb.broker.admissionStats().refused['tracking-full'], 10);
  t.is(tb.broker.admissionStats().trackedAddresses, 100);
  const exempt = await connectFrom(tb.port, '127.0.0.3', { clientId: 'exempt-while-full' });
  exempt.end(true);
  t.is(tb.broker.admissionStats().refused['tracking-full'], 10, 'an exempt address is admitted while the table is full');
  for (const s of held) s.socket.destroy();
  t.true(await waitFor(() => tb.broker.admissionStats().trackedAddresses === 0, 3000), 'idle entries are expired by the sweep');
  const again = await connectFrom(tb.port, '127.0.1.250', { clientId: 'new-address' });
  again.end(true);
});

test('admission on a WebSocket listener runs before the HTTP upgrade: a refused connection gets no HTTP response', async (t) => {
  const tb = await startAdmissionBroker({
    listeners: [{ name: 'ws', type: 'ws', host: '127.0.0.1', port: 0, auth: ['anonymous'], limits: { maxConnectionsPerIp: 1 } }],
    limits: { connectRate: fastRate },
  });
  t.teardown(() => tb.stop());
  const first = await new Promise<MqttClient>((resolve, reject) => {
    const c = mqtt.connect(`ws://127.0.0.1:${tb.port}/mqtt`, { reconnectPeriod: 0, clientId: 'ws-1' });
    c.once('connect', () => resolve(c));
    c.once('error', reject);
  });
  t.teardown(() => first.end(true));
  const second = rawOpen(tb.port, '127.0.0.1', 1000);
  second.socket.write('GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n');
  t.is(await second.outcome, 'closed');
  t.is(second.bytes(), 0, 'not even an HTTP status line');
  t.is(tb.broker.admissionStats().refused['ip-cap'], 1);
  const other = rawOpen(tb.port, '127.0.0.2', 300);
  t.is(await other.outcome, 'open', 'another address reaches the HTTP server');
  other.socket.destroy();
});

test('bad admission settings are refused with the key named', (t) => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ limits: { maxConnections: 0 } }, /limits\.maxConnections: Too small/],
    [{ limits: { maxConnectionsPerIp: 1.5 } }, /limits\.maxConnectionsPerIp: /],
    [{ limits: { connectRate: { perSecond: -1 } } }, /limits\.connectRate\.perSecond: Too small/],
    [{ limits: { connectRate: { burst: 0 } } }, /limits\.connectRate\.burst: Too small/],
    [{ listeners: [{ type: 'tcp', limits: { connectRate: { perSecond: 5 } } }] }, /listeners\[0\]\.limits\.connectRate\.burst: /],
    [{ listeners: [{ type: 'tcp', limits: { maxConections: 5 } }] }, /listeners\[0\]\.limits: Unrecognized key: "maxConections"/],
    [{ admission: { exempt: ['localhost'] } }, /admission\.exempt\[0\]: 'localhost' is not an IPv4 or IPv6 address or CIDR range/],
    [{ admission: { ipv6Prefix: 16 } }, /admission\.ipv6Prefix: Too small/],
    [{ admission: { flapping: { maxConnects: 1 } } }, /admission\.flapping\.maxConnects: Too small/],
    [{ admission: { bans: { file: '' } } }, /admission\.bans\.file: Too small/],
  ];
  for (const [config, re] of cases) {
    const err = t.throws(() => parseConfig(config));
    t.is((err as { code?: string }).code, 'ERR_PORTCULLIS_CONFIG');
    t.regex(err?.message ?? '', re, JSON.stringify(config));
  }
});

test('a listener connectRate has its own bucket per address; the other listener keeps the global rate', async (t) => {
  const tb = await startAdmissionBroker({
    listeners: [
      { name: 'public', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] },
      { name: 'strict', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'], limits: { connectRate: { perSecond: 0.1, burst: 2 } } },
    ],
    limits: { connectRate: fastRate },
  });
  t.teardown(() => tb.stop());
  const sockets = [rawOpen(tb.ports.strict as number), rawOpen(tb.ports.strict as number)];
  t.teardown(() => sockets.forEach((s) => s.socket.destroy()));
  t.true(await waitFor(() => tb.broker.admissionStats().accepted === 2, 5000));
  const third = rawOpen(tb.ports.strict as number);
  sockets.push(third);
  t.is(await third.outcome, 'closed', 'the strict listener allows a burst of 2');
  for (let i = 0; i < 5; i++) (await connect(tb.ports.public as number, { clientId: `public-${i}` })).end(true);
  t.is(tb.broker.admissionStats().refused.rate, 1, 'the public listener is not held by the strict bucket');
  t.true(await waitFor(() => admissionRecords(tb.audit).some((r) => r.listener === 'strict' && r.detail?.refusal === 'rate')));
});

test('refusal records are bounded in addresses: beyond refusalAudit.maxAddresses, refusals are summed into one record for "*"', async (t) => {
  const tb = await startAdmissionBroker({
    limits: { maxConnectionsPerIp: 1, connectRate: fastRate },
    // A long interval, so that the five refusals fall in one even on a loaded machine.
    admission: { refusalAudit: { intervalMs: 2000, maxAddresses: 2 } },
  });
  t.teardown(() => tb.stop());
  const held = Array.from({ length: 5 }, (_, i) => rawOpen(tb.port, `127.0.3.${i + 1}`, 300));
  t.teardown(() => held.forEach((s) => s.socket.destroy()));
  t.true(await waitFor(() => tb.broker.admissionStats().accepted === 5, 5000));
  const refused = Array.from({ length: 5 }, (_, i) => rawOpen(tb.port, `127.0.3.${i + 1}`, 1000));
  t.deepEqual(new Set(await Promise.all(refused.map((s) => s.outcome))), new Set(['closed']));
  t.true(await waitFor(() => admissionRecords(tb.audit).some((r) => r.remoteAddress === '*'), 8000));
  const recs = admissionRecords(tb.audit);
  t.is(recs.filter((r) => r.remoteAddress !== '*').length, 2, 'two addresses recorded on their own');
  const overflow = recs.find((r) => r.remoteAddress === '*');
  t.is(overflow?.detail?.count, 3);
  t.is(overflow?.detail?.['ip-cap'], 3);
  t.is(recs.reduce((n, r) => n + Number(r.detail?.count ?? 0), 0), 5, 'every refusal is counted once');
});

test("flapping is counted per identity and client id: bob reconnecting in a loop with alice's client id bans only bob's use of it, never alice", async (t) => {
  const tb = await startAdmissionBroker({
    listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users: [{ username: 'alice', password: 'a-pw' }, { username: 'bob', password: 'b-pw' }] }] }],
    admission: { flapping: { enabled: true, maxConnects: 3, windowMs: 30_000, banMs: 60_000 } },
  });
  t.teardown(() => tb.stop());
  const owner = { clientId: 'dev-a', username: 'alice', password: 'a-pw', protocolVersion: 5 as const, clean: false, properties: { sessionExpiryInterval: 600 } };
  t.is((await refusalCode(tb.port, owner)).code, 0);
  const bob = { clientId: 'dev-a', username: 'bob', password: 'b-pw', protocolVersion: 5 as const };
  const codes: number[] = [];
  for (let i = 0; i < 5; i++) codes.push((await refusalCode(tb.port, bob)).code);
  t.deepEqual(codes, [0, 0, 0, 0x8a, 0x8a], "bob's own loop bans bob's use of the client id after 3 connects");
  t.is((await refusalCode(tb.port, owner)).code, 0, 'alice, the other identity, is not banned');
  const ban = tb.audit.records.find((r) => r.event === 'ban' && r.action === 'flapping');
  t.is(ban?.username, 'bob');
});
