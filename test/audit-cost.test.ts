/**
 * What the default audit settings cost an allowed message: no record, no record object, only the
 * sink's health check (fail-closed). The benchmark measures the time; this proves the work.
 */
import test from 'ava';
import type { AuditEvent, AuditSink } from '../src/audit/types.ts';
import { createBroker } from '../src/index.ts';
import { silentLogger } from '../src/log.ts';
import { connect } from './helpers.ts';

/** A sink that counts what the broker asks of it. */
class CountingSink implements AuditSink {
  readonly events: AuditEvent[] = [];
  healthChecks = 0;
  record(event: AuditEvent): void {
    this.events.push(event);
  }
  healthy(): boolean {
    this.healthChecks++;
    return true;
  }
  health() {
    return { ok: true, pending: 0, dropped: 0, written: this.events.length };
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}

test('with the default audit settings an allowed publish and its delivery write no record: the broker only asks the sink whether it is healthy', async (t) => {
  const sink = new CountingSink();
  const broker = createBroker(
    {
      listeners: [{ name: 't', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }],
      authorizers: ['allow-all'],
      sys: { intervalSeconds: 0 },
      store: { type: 'memory' },
    },
    { logger: silentLogger(), audit: sink },
  );
  const { listeners } = await broker.start();
  t.teardown(() => broker.stop());
  const port = listeners[0]?.port ?? 0;
  const sub = await connect(port, { clientId: 'cost-sub' });
  const pub = await connect(port, { clientId: 'cost-pub' });
  t.teardown(() => {
    sub.end(true);
    pub.end(true);
  });
  await sub.subscribeAsync('cost/t', { qos: 0 });
  const setup = sink.events.length;
  const checksBefore = sink.healthChecks;
  const n = 200;
  let got = 0;
  const all = new Promise<void>((resolve) => sub.on('message', () => ++got === n && resolve()));
  for (let i = 0; i < n; i++) pub.publish('cost/t', `m${i}`, { qos: 0 });
  await all;
  t.is(sink.events.length, setup, 'no record for an allowed publish or delivery');
  t.is(sink.events.filter((e) => e.event === 'connect').length, 2, 'the two connects were recorded');
  t.is(sink.healthChecks - checksBefore, 2 * n, 'one health check per access decision: publish and deliver');
});
