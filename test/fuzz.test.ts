/**
 * Fuzzing a live broker with fast-check (generators in test/fuzz/): random bytes, valid packets
 * of every type corrupted at random, and valid sessions ending in one packet the broker must
 * refuse. The run is seeded and has a fixed size; set FUZZ_SEED to replay a failure, and use
 * `npm run fuzz -- --minutes N` for a long run.
 */
import test from 'ava';
import fc from 'fast-check';
import { batchProperty, newStats, startFuzzBroker } from './fuzz/harness.ts';

const SEED = Number(process.env.FUZZ_SEED ?? 20261126);
const BATCH = 12;
const BATCHES = 5; // 60 cases: about 15 s on an idle machine

test('hostile byte streams never crash the broker, never hang a connection, and never stop it serving', async (t) => {
  t.timeout(55_000);
  const fb = await startFuzzBroker();
  t.teardown(() => fb.stop());
  const stats = newStats();
  const details = await fc.check(batchProperty(fb, stats, BATCH), {
    seed: SEED,
    numRuns: BATCHES,
    endOnFailure: true,
  });
  t.log(`seed ${SEED}: ${stats.cases} cases in ${stats.batches} batches, ${stats.closedByBroker} closed by the broker, ${stats.stillServing} still answering, ${stats.violationsRefused} violations refused`);
  if (details.failed) {
    t.fail(`fuzz failure (replay with FUZZ_SEED=${SEED}, fast-check path ${details.counterexamplePath ?? '?'}):\n${stats.problems.slice(0, 5).join('\n')}`);
    return;
  }
  t.is(details.numRuns, BATCHES, 'every batch ran');
  t.true(stats.violationsRefused > 0, 'some cases were violations the broker refused');
  t.true(stats.closedByBroker > stats.violationsRefused, 'random corruption closed some connections too');
  t.true(stats.stillServing > 0, 'some corrupted cases stayed valid and were served');
});
