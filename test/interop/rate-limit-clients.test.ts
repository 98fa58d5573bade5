/**
 * Every rate-limit action (rateLimits.v5Action reject | throttle | disconnect, v3Action throttle |
 * disconnect) against two real client stacks: Python paho-mqtt (Debian's python3-paho-mqtt 1.6)
 * and MQTT.js. Both check that a reason code is one the spec allows in the packet that carries it
 * (MQTT 5 allows 0x96 Message rate too high only in DISCONNECT): paho's network thread dies on
 * anything else, MQTT.js reports "Invalid puback reason code" and closes the connection. So a
 * refusal must reach them as PUBACK / PUBREC 0x97 Quota exceeded, and the connection must stay
 * usable.
 */
import test, { type ExecutionContext } from 'ava';
import mqtt from 'mqtt';
import type { ConfigInput } from '../../src/index.ts';
import { connect, delay, startBroker, type TestBroker } from '../helpers.ts';
import { havePaho, jsonLines, paho } from './clients.ts';
import { requireTool, slots } from './matrix.ts';

const slot = slots(3);
let unique = 0;

/** A broker with only this rate limit, and a subscriber that counts what is delivered. */
async function setup(t: ExecutionContext, rateLimits: NonNullable<ConfigInput['rateLimits']>) {
  await slot(t);
  const b: TestBroker = await startBroker({ rateLimits });
  t.teardown(() => b.stop());
  const prefix = `rl-clients/${++unique}`;
  const sub = await connect(b.port, { protocolVersion: 5, clientId: `sub-${unique}` });
  t.teardown(() => sub.end(true));
  const delivered: string[] = [];
  sub.on('message', (topic) => delivered.push(topic));
  await sub.subscribeAsync(`${prefix}/#`, { qos: 2 });
  return { b, prefix, delivered };
}

async function until(predicate: () => boolean, ms = 5000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > end) return false;
    await delay(20);
  }
  return true;
}

interface PahoResult {
  connack: number;
  seconds: number;
  completed: number;
  alive: boolean;
  disconnect: number | null;
  later?: boolean;
  laterAck?: number | null;
  acks: [string, number][];
}

async function pahoRun(port: number, prefix: string, version: '3.1.1' | '5', count: number, qos: 0 | 1 | 2, later = 0): Promise<PahoResult> {
  const r = await paho('rate_limit.py', ['--port', String(port), '--version', version, '--prefix', prefix, '--count', String(count), '--qos', String(qos), ...(later > 0 ? ['--later', String(later)] : [])], 30_000).exit;
  const lines = jsonLines(r.stdout);
  const last = lines[lines.length - 1];
  if (last === undefined) throw new Error(`rate_limit.py printed no result (exit ${r.code}): ${r.stdout}${r.stderr}`);
  return last as unknown as PahoResult;
}

const REJECT = { perClient: { messagesPerSecond: 1, burstMessages: 3 }, v5Action: 'reject' as const };

test('paho 5, v5Action reject: QoS 1 over the limit gets PUBACK 0x97 (not 0x96, which paho refuses), nothing over the limit is delivered, the connection stays usable', async (t) => {
  if (!requireTool(t, havePaho, 'python3-paho-mqtt')) return;
  const { b, prefix, delivered } = await setup(t, REJECT);
  const r = await pahoRun(b.port, prefix, '5', 6, 1, 1.2);
  t.is(r.connack, 0);
  t.true(r.alive, "paho's network thread survived every answer");
  t.deepEqual(r.acks.slice(0, 6).map(([type]) => type), Array(6).fill('puback'));
  const codes = r.acks.slice(0, 6).map(([, c]) => c);
  t.is(codes.filter((c) => c === 0).length, 3, JSON.stringify(codes));
  t.is(codes.filter((c) => c === 0x97).length, 3, JSON.stringify(codes));
  t.is(r.completed, 6, 'every publish completed (accepted or refused)');
  t.is(r.disconnect, null);
  t.true(r.later, 'after the bucket refilled, a publish is acknowledged');
  t.is(r.laterAck, 0);
  t.true(await until(() => delivered.length >= 4));
  await delay(200);
  t.deepEqual(delivered, [`${prefix}/m`, `${prefix}/m`, `${prefix}/m`, `${prefix}/later`]);
  t.true(b.broker.stats.publishesRateLimited >= 3);
});

test('paho 5, v5Action reject: QoS 2 over the limit gets PUBREC 0x97 (its PUBREL then PUBCOMP 0x92); QoS 0 over the limit is dropped', async (t) => {
  if (!requireTool(t, havePaho, 'python3-paho-mqtt')) return;
  const { b, prefix, delivered } = await setup(t, REJECT);
  const r = await pahoRun(b.port, prefix, '5', 5, 2);
  t.true(r.alive);
  const pubrecs = r.acks.filter(([type]) => type === 'pubrec').map(([, c]) => c);
  t.deepEqual([...pubrecs].sort(), [0, 0, 0, 0x97, 0x97], JSON.stringify(r.acks));
  // paho 1.6 answers even a refusing PUBREC with PUBREL; the broker did not keep the id.
  t.deepEqual(r.acks.filter(([type]) => type === 'pubcomp').map(([, c]) => c).sort(), [0, 0, 0, 0x92, 0x92]);
  t.is(r.completed, 5);
  t.true(await until(() => delivered.length >= 3));
  const q0 = await pahoRun(b.port, `${prefix}/q0`, '5', 5, 0);
  t.true(q0.alive);
  await delay(300);
  t.is(delivered.length, 3 + 3, 'QoS 0: the burst of 3 is delivered, the rest dropped');
});

test('MQTT.js 5, v5Action reject: QoS 1 and QoS 2 over the limit fail with reason code 0x97 and the connection stays up', async (t) => {
  const { b, prefix, delivered } = await setup(t, REJECT);
  const c = await connect(b.port, { protocolVersion: 5, clientId: `pub-${unique}` });
  t.teardown(() => c.end(true));
  let errors = 0;
  c.on('error', () => errors++);
  const outcome = (p: Promise<unknown>) => p.then(() => 0, (err: Error & { code?: number }) => err.code ?? -1);
  const q1 = await Promise.all([1, 2, 3, 4, 5].map((i) => outcome(c.publishAsync(`${prefix}/q1`, String(i), { qos: 1 }))));
  t.deepEqual(q1, [0, 0, 0, 0x97, 0x97]);
  t.is(await outcome(c.publishAsync(`${prefix}/q2`, 'x', { qos: 2 })), 0x97);
  t.true(c.connected, 'still connected');
  t.is(errors, 0, 'no protocol error');
  await delay(1100);
  t.is(await outcome(c.publishAsync(`${prefix}/later`, 'later', { qos: 1 })), 0);
  t.true(await until(() => delivered.length >= 4));
  t.deepEqual(delivered, [`${prefix}/q1`, `${prefix}/q1`, `${prefix}/q1`, `${prefix}/later`]);
});

const THROTTLE_V5 = { perClient: { messagesPerSecond: 20, burstMessages: 5 }, v5Action: 'throttle' as const };
const THROTTLE_V3 = { perClient: { messagesPerSecond: 20, burstMessages: 5 }, v3Action: 'throttle' as const };

for (const version of ['5', '3.1.1'] as const) {
  test(`paho ${version}, ${version === '5' ? 'v5Action' : 'v3Action'} throttle: 25 QoS 1 are all acknowledged with success and delivered, held to about 20/s`, async (t) => {
    if (!requireTool(t, havePaho, 'python3-paho-mqtt')) return;
    const { b, prefix, delivered } = await setup(t, version === '5' ? THROTTLE_V5 : THROTTLE_V3);
    const r = await pahoRun(b.port, prefix, version, 25, 1);
    t.true(r.alive);
    t.is(r.completed, 25);
    t.is(r.disconnect, null);
    if (version === '5') t.deepEqual(r.acks.map(([, c]) => c), Array(25).fill(0));
    t.true(r.seconds >= 0.8, `20 beyond the burst of 5 at 20/s take about a second (${r.seconds} s)`);
    t.true(await until(() => delivered.length >= 25));
    t.is(b.broker.stats.publishesRateLimited, 0, 'nothing refused');
  });

  test(`MQTT.js ${version}, ${version === '5' ? 'v5Action' : 'v3Action'} throttle: 25 QoS 1 are all acknowledged and delivered, held to about 20/s`, async (t) => {
    const { b, prefix, delivered } = await setup(t, version === '5' ? THROTTLE_V5 : THROTTLE_V3);
    const c = await connect(b.port, { protocolVersion: version === '5' ? 5 : 4, clientId: `pub-${unique}` });
    t.teardown(() => c.end(true));
    const started = Date.now();
    const acks = await Promise.all(Array.from({ length: 25 }, (_, i) => c.publishAsync(`${prefix}/m`, String(i), { qos: 1 })));
    const seconds = (Date.now() - started) / 1000;
    t.is(acks.length, 25);
    if (version === '5') t.deepEqual(acks.map((p) => (p as { reasonCode?: number } | undefined)?.reasonCode ?? 0), Array(25).fill(0));
    t.true(seconds >= 0.8, `${seconds} s`);
    t.true(await until(() => delivered.length >= 25));
    t.true(c.connected);
    t.is(b.broker.stats.publishesRateLimited, 0);
  });
}

const DISCONNECT = { perClient: { messagesPerSecond: 1, burstMessages: 3 }, v5Action: 'disconnect' as const, v3Action: 'disconnect' as const };

test('paho 5, v5Action disconnect: over the limit the client gets DISCONNECT 0x96; only the burst is delivered', async (t) => {
  if (!requireTool(t, havePaho, 'python3-paho-mqtt')) return;
  const { b, prefix, delivered } = await setup(t, DISCONNECT);
  const r = await pahoRun(b.port, prefix, '5', 6, 1);
  t.is(r.disconnect, 0x96, JSON.stringify(r));
  t.true(r.acks.every(([, c]) => c === 0), 'the accepted publishes were acknowledged with success');
  await delay(300);
  t.is(delivered.length, 3);
  t.true(b.audit.records.some((x) => x.event === 'disconnect' && x.action === 'rate-limit' && x.reasonCode === 0x96));
});

test('paho 3.1.1, v3Action disconnect: over the limit the connection is closed; only the burst is delivered', async (t) => {
  if (!requireTool(t, havePaho, 'python3-paho-mqtt')) return;
  const { prefix, b, delivered } = await setup(t, DISCONNECT);
  const r = await pahoRun(b.port, prefix, '3.1.1', 6, 1);
  t.not(r.disconnect, null, 'paho saw the connection end');
  t.not(r.disconnect, 0, 'not a normal disconnect');
  t.true(r.completed <= 3, `at most the burst was acknowledged (${r.completed})`);
  await delay(300);
  t.is(delivered.length, 3);
});

test('MQTT.js 5 and 3.1.1, disconnect: v5 gets DISCONNECT 0x96, v3.1.1 a closed connection; only the bursts are delivered', async (t) => {
  const { b, prefix, delivered } = await setup(t, DISCONNECT);
  const v5 = await connect(b.port, { protocolVersion: 5, clientId: `pub5-${unique}` });
  t.teardown(() => v5.end(true));
  const told = new Promise<number | undefined>((resolve) => v5.once('disconnect', (p: mqtt.IDisconnectPacket) => resolve(p.reasonCode)));
  for (let i = 0; i < 6; i++) v5.publish(`${prefix}/v5`, String(i), { qos: 1 }, () => undefined);
  t.is(await told, 0x96);
  const v3 = await connect(b.port, { protocolVersion: 4, clientId: `pub3-${unique}` });
  t.teardown(() => v3.end(true));
  const closed = new Promise<void>((resolve) => v3.once('close', () => resolve()));
  for (let i = 0; i < 6; i++) v3.publish(`${prefix}/v3`, String(i), { qos: 1 }, () => undefined);
  await closed;
  t.false(v3.connected);
  await delay(300);
  t.is(delivered.filter((x) => x.endsWith('/v5')).length, 3);
  t.is(delivered.filter((x) => x.endsWith('/v3')).length, 3);
});
