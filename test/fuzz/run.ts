/**
 * The long fuzz run: the same generators and checks as test/fuzz.test.ts, for as long as asked.
 *
 *   npm run fuzz -- --minutes 10 [--seed 1234] [--batch 16] [--shrink]
 *
 * Prints a summary (cases, connections, crashes, seed) and exits 1 on the first failure, with
 * the seed and fast-check path to replay it. --shrink lets fast-check minimise a failing batch
 * (slow: every attempt runs against the live broker).
 */
import fc from 'fast-check';
import { batchProperty, newStats, startFuzzBroker } from './harness.ts';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const minutes = Number(arg('minutes') ?? 1);
const seed = Number(arg('seed') ?? (Date.now() % 2 ** 31));
const batch = Number(arg('batch') ?? 16);
const shrink = process.argv.includes('--shrink');
if (!(minutes > 0) || !Number.isInteger(seed) || !(batch > 0)) {
  console.error('usage: npm run fuzz -- --minutes N [--seed S] [--batch B] [--shrink]');
  process.exit(2);
}

const fb = await startFuzzBroker();
const stats = newStats();
const started = Date.now();
console.log(`fuzzing a live broker on 127.0.0.1:${fb.port} for ${minutes} min, seed ${seed}, ${batch} concurrent connections per batch`);
const progress = setInterval(() => {
  console.log(`  ${((Date.now() - started) / 1000).toFixed(0)} s: ${stats.cases} cases, ${stats.connections} connections, ${stats.problems.length} problems`);
}, 30_000);

const details = await fc.check(batchProperty(fb, stats, batch), {
  seed,
  numRuns: Number.MAX_SAFE_INTEGER,
  interruptAfterTimeLimit: minutes * 60_000,
  markInterruptAsFailure: false,
  endOnFailure: !shrink,
});
clearInterval(progress);
await fb.stop();

const crashes = stats.problems.filter((p) => /uncaughtException|unhandledRejection|^log:/.test(p)).length;
const rows: [string, string | number][] = [
  ['seed', seed],
  ['duration', `${((Date.now() - started) / 1000).toFixed(0)} s`],
  ['batches', stats.batches],
  ['cases', stats.cases],
  ['connections', stats.connections],
  ['closed by the broker', stats.closedByBroker],
  ['corrupted but still served', stats.stillServing],
  ['violations refused with the right code', stats.violationsRefused],
  ['v5 closed without DISCONNECT (random class)', stats.v5ClosedWithoutDisconnect],
  ['crashes (errors logged, uncaught)', crashes],
  ['problems', stats.problems.length],
];
console.log('\nfuzz summary');
for (const [k, v] of rows) console.log(`  ${k.padEnd(44)} ${v}`);
if (details.failed) {
  console.log(`\nFAILED: replay with --seed ${seed} (fast-check path ${details.counterexamplePath ?? '?'})`);
  for (const p of stats.problems.slice(0, 10)) console.log(`  - ${p.slice(0, 4000)}`);
  process.exit(1);
}
console.log('\nno failure');
