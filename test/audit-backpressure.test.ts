/**
 * Read back-pressure from the audit log, over a real loopback socket: when allowed publishes are
 * audited and records arrive faster than the log writes them, the broker stops reading from its
 * clients until the log catches up. A flood is slowed down, not denied (fail-closed) and not
 * stripped of its records (fail-open): every publish is delivered and every record written.
 *
 * The log's output here is deliberately slow (each write waits 3 ms) and its queue small (2,000
 * records), so a flood of 20,000 publishes fills it many times over. Without the back-pressure
 * the queue fills, `healthy()` turns false and fail-closed denies publishes: the counts below
 * then fall short and `dropped` is not 0.
 */
import test, { type ExecutionContext } from 'ava';
import mqtt from 'mqtt';
import mqttPacket from 'mqtt-packet';
import { ChainedAuditSink, type AuditOutput } from '../src/audit/chained-sink.ts';
import { parseRecord } from '../src/audit/record.ts';
import { silentLogger } from '../src/log.ts';
import { memoryAuditOutput, rawConnected, startBroker } from './helpers.ts';

const COUNT = 20_000;

/**
 * A subscriber to `flood/t` and a raw client that writes `count` QoS 0 publishes to it in one
 * go; resolves with the number delivered once all arrived or `waitMs` passed.
 */
async function flood(t: ExecutionContext, port: number, count: number, waitMs: number): Promise<number> {
  let received = 0;
  const sub = mqtt.connect(`mqtt://127.0.0.1:${port}`, { clientId: 'sub', reconnectPeriod: 0 });
  t.teardown(() => sub.end(true));
  await new Promise<void>((resolve, reject) => {
    sub.once('connect', () => sub.subscribe('flood/t', { qos: 0 }, (err) => (err ? reject(err) : resolve())));
    sub.once('error', reject);
  });
  sub.on('message', () => received++);
  const socket = await rawConnected(port, 'flooder');
  t.teardown(() => socket.destroy());
  const one = mqttPacket.generate({ cmd: 'publish', topic: 'flood/t', payload: Buffer.alloc(40, 0x61), qos: 0, retain: false, dup: false });
  socket.write(Buffer.concat(Array.from({ length: count }, () => one)));
  const deadline = Date.now() + waitMs;
  while (received < count && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  return received;
}

for (const failMode of ['fail-closed', 'fail-open'] as const) {
  test(`${failMode}: a flood faster than the audit log is slowed down by not reading, not denied and not dropped`, async (t) => {
    t.timeout(60_000);
    const out = memoryAuditOutput(3);
    const sink = new ChainedAuditSink(out, { maxQueue: 2000, log: silentLogger(), fsyncIntervalMs: 0 });
    const tb = await startBroker({ audit: { allowed: { publish: true }, failMode } }, { audit: sink as never });
    t.teardown(() => tb.stop());

    const received = await flood(t, tb.port, COUNT, 50_000);
    t.is(received, COUNT, 'every publish was delivered: none was denied');
    t.true(tb.broker.stats.auditHolds > 0, 'the broker held the flooding connection at least once');
    await sink.flush();
    t.is(sink.dropped, 0, 'no audit record was dropped');
    const publishes = out
      .lines()
      .map((l) => parseRecord(l))
      .filter((r) => r?.event === 'publish');
    t.is(publishes.length, COUNT, 'one record per publish');
    t.true(
      publishes.every((r) => r?.decision === 'allow'),
      'every publish was allowed',
    );
  });
}

test('fail-open: a log whose write hangs holds clients for at most 2 s, then they are read again and the records that do not fit are dropped and counted', async (t) => {
  t.timeout(30_000);
  // Every write hangs until the test lets go of it (before stopping the broker, which flushes).
  const pending: (() => void)[] = [];
  let hang = true;
  const out: AuditOutput = {
    name: 'hung',
    write: () => (hang ? new Promise<void>((resolve) => pending.push(resolve)) : Promise.resolve()),
    writev: () => (hang ? new Promise<void>((resolve) => pending.push(resolve)) : Promise.resolve()),
    close: async () => {},
  };
  const sink = new ChainedAuditSink(out, { maxQueue: 1000, log: silentLogger(), fsyncIntervalMs: 0 });
  const tb = await startBroker({ audit: { allowed: { publish: true }, failMode: 'fail-open' } }, { audit: sink as never });
  t.teardown(async () => {
    hang = false;
    for (const r of pending.splice(0)) r();
    await tb.stop();
  });

  const count = 5000;
  const started = Date.now();
  const received = await flood(t, tb.port, count, 20_000);
  t.is(received, count, 'every publish was delivered (fail-open)');
  t.true(Date.now() - started >= 1900, 'after being held for about 2 s');
  t.true(tb.broker.stats.auditHolds > 0, 'the client was held first');
  t.true(sink.dropped > 0, 'records that did not fit were dropped, and counted');
});

test('a custom sink that says it is backlogged but cannot call back (no whenDrained) is never waited for', async (t) => {
  const { MemoryAuditSink } = await import('../src/audit/sinks.ts');
  class HalfSink extends MemoryAuditSink {
    backlogged(): boolean {
      return true;
    }
  }
  const b = await startBroker({}, { audit: new HalfSink() });
  t.teardown(() => b.stop());
  const sub = await mqtt.connectAsync(b.url, { clientId: 'half-sub', reconnectPeriod: 0 });
  t.teardown(() => sub.end(true));
  await sub.subscribeAsync('half/#', { qos: 1 });
  const got = new Promise<string>((resolve) => sub.once('message', (_topic, payload) => resolve(payload.toString())));
  const pub = await mqtt.connectAsync(b.url, { clientId: 'half-pub', reconnectPeriod: 0 });
  t.teardown(() => pub.end(true));
  await pub.publishAsync('half/t', 'through', { qos: 1 });
  t.is(await got, 'through');
  t.is(b.broker.stats.auditHolds, 0);
});
