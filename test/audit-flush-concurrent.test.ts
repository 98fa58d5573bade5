/**
 * Concurrent flushes of the audit sink while records keep arriving: each one must finish. Two
 * flush() calls used to wake each other in microtasks for ever while a segment was still with
 * the chaining thread (whose reply is a macrotask): the broker's event loop hung at 100 % CPU,
 * found through two concurrent audit queries of the operations API.
 */
import test from 'ava';
import { ChainedAuditSink } from '../src/audit/chained-sink.ts';
import { silentLogger } from '../src/log.ts';
import { memoryAuditOutput } from './helpers.ts';

test('two and six flushes at once, with records arriving, all finish and every record is written', async (t) => {
  t.timeout(20_000);
  const out = memoryAuditOutput();
  const sink = new ChainedAuditSink(out, { maxQueue: 100_000, log: silentLogger(), fsyncIntervalMs: 0 });
  const who = { listener: 't', remoteAddress: '127.0.0.2', remotePort: 50000, clientId: 'c', username: 'u', authMethod: 'password' };
  let n = 0;
  for (let round = 0; round < 40; round++) {
    for (let i = 0; i < 200; i++) sink.recordAccess(who, 'subscribe', 'allow', 1, undefined, 'casbin', undefined, 'v1', `t/${n++}`, 1, false);
    const flushes = Array.from({ length: round % 2 === 0 ? 2 : 6 }, () => sink.flush());
    // A timer must still run while they wait: the event loop is not held.
    const timer = new Promise<'timer'>((resolve) => setTimeout(() => resolve('timer'), 5000));
    const first = await Promise.race([Promise.all(flushes).then(() => 'flushed' as const), timer]);
    t.is(first, 'flushed', `round ${round}: the flushes finished`);
    if (first !== 'flushed') break;
  }
  await sink.close();
  t.is(out.lines().filter((l) => l.includes('"event":"subscribe"')).length, n, 'every record was written');
});
