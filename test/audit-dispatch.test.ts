/**
 * The audit sink hands records to the chaining thread in batches: a small segment waits for the
 * dispatch timer (a fifth of the fsync interval). Records made while that timer is armed do not
 * schedule a look at the queue of their own; the timer sends them. These tests check that such
 * records are still written, in order and chained, with nothing else happening: no further
 * records and no flush().
 */
import test from 'ava';
import { ChainedAuditSink } from '../src/audit/chained-sink.ts';
import { parseRecord } from '../src/audit/record.ts';
import { silentLogger } from '../src/log.ts';
import { memoryAuditOutput } from './helpers.ts';

const turn = () => new Promise((resolve) => setImmediate(resolve));

async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  return true;
}

for (const chainInWorker of [true, false]) {
  test(`records made while the dispatch timer is armed are written when it fires, without a flush (${chainInWorker ? 'worker' : 'inline'} chaining)`, async (t) => {
    const out = memoryAuditOutput();
    // fsync every 500 ms: a small segment waits up to 100 ms for more records.
    const sink = new ChainedAuditSink(out, { maxQueue: 1000, log: silentLogger(), fsyncIntervalMs: 500, chainInWorker });
    const records = () => out.lines().map((l) => parseRecord(l) ?? t.fail(`not a record: ${l}`));
    const reasons = (): string[] => records().map((r) => r?.reason ?? '');
    try {
      sink.record({ event: 'connect', decision: 'allow', reason: 'first', clientId: 'a' });
      t.true(await until(() => reasons().includes('first'), 5000), 'the first record is written');
      // The next record comes within the dispatch interval: its look at the queue arms the timer.
      sink.record({ event: 'connect', decision: 'allow', reason: 'second', clientId: 'b' });
      await turn();
      // These come while the timer is armed.
      sink.record({ event: 'connect', decision: 'allow', reason: 'third', clientId: 'c' });
      await turn();
      sink.record({ event: 'subscribe', decision: 'deny', reason: 'fourth', clientId: 'd', topic: 'x/y' });
      t.true(await until(() => reasons().includes('fourth'), 5000), 'the records made while the timer was armed are written');
      const written = records();
      t.deepEqual(
        written.map((r) => r?.reason),
        ['new chain', 'first', 'second', 'third', 'fourth'],
      );
      t.deepEqual(
        written.map((r) => r?.seq),
        [1, 2, 3, 4, 5],
      );
      for (let i = 1; i < written.length; i++) t.is(written[i]?.prev, written[i - 1]?.hash, `record ${i + 1} is chained to the one before`);
    } finally {
      await sink.close();
    }
  });
}
