/**
 * The floor under "anonymous connects/s ≥ 4× Aedes": a bare Node `net` server that only frames
 * packets and answers CONNECT with CONNACK (bench/servers/floor.ts), measured side by side with
 * Aedes and Portcullis, security off, over plain TCP, with the same connect generator and pinning
 * as `npm run bench`. All three are started at once and measured in rounds (one run of each per
 * round, the order rotated), so each ratio compares runs seconds apart.
 *
 *   npm run bench:floor                      # 9 rounds of 3 s
 *   npm run bench:floor -- --rounds 5 --duration 2
 *
 * Writes bench/results/floor.md. If the floor itself stays under 4× Aedes, no broker on Node's
 * `net` module can reach that target on this machine: everything a broker does comes on top.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { setupPinning, startBroker, startFloorServer, type RunningBrokerProcess } from './lib/brokers.ts';
import { connectGenerator, runConnects, type ConnectResult } from './lib/connections.ts';
import { endpointFor, makeBenchFiles } from './lib/security.ts';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '9' },
    duration: { type: 'string', default: '3' },
    concurrency: { type: 'string', default: '16' },
    out: { type: 'string', default: path.join(import.meta.dirname, 'results', 'floor.md') },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  console.log('Usage: npm run bench:floor -- [--rounds 9] [--duration 3] [--concurrency 16] [--out FILE]');
  process.exit(0);
}
const rounds = Number(values.rounds);
const durationMs = Number(values.duration) * 1000;
const concurrency = Number(values.concurrency);
if (!(rounds >= 1) || !(durationMs > 0) || !(concurrency >= 1)) {
  console.error('bad arguments (see --help)');
  process.exit(2);
}

const median = (a: number[]): number => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)] as number;
const range = (a: number[], digits: number): string => `${Math.min(...a).toFixed(digits)}–${Math.max(...a).toFixed(digits)}`;

const pin = setupPinning(true);
console.log(pin.note);
const gen = connectGenerator();
const files = await makeBenchFiles();
const sides: { label: string; broker: RunningBrokerProcess; runs: ConnectResult[] }[] = [];
try {
  sides.push({ label: 'Node floor (bare net server)', broker: await startFloorServer(files, pin), runs: [] });
  sides.push({ label: 'Aedes, security off', broker: await startBroker('aedes', 'off', files, pin), runs: [] });
  sides.push({ label: 'Portcullis, security off', broker: await startBroker('portcullis', 'off', files, pin), runs: [] });
  // Warm-up as long as a run: Aedes gets faster over its first seconds of connects.
  for (const s of sides) await runConnects(s.broker, endpointFor(s.broker, 'tcp', files), concurrency, durationMs);
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < sides.length; i++) {
      const s = sides[(i + r) % sides.length]!;
      const x = await runConnects(s.broker, endpointFor(s.broker, 'tcp', files), concurrency, durationMs);
      if (!x.ok) throw new Error(`${s.label}: ${x.failure ?? 'failed'}`);
      s.runs[r] = x;
      console.log(`round ${r + 1}/${rounds}  ${s.label.padEnd(30)} ${x.connectsPerS.toFixed(0)} connects/s, broker ${x.brokerMsPerConnect?.toFixed(4) ?? 'n/a'} ms CPU per connect, generator ${(100 * x.generatorCpu).toFixed(0)}%`);
    }
  }
} finally {
  for (const s of sides) await s.broker.stop();
  files.cleanup();
}

const aedes = sides[1]!;
const lines = [
  '# Connect floor on Node: a bare `net` server beside Aedes and Portcullis',
  '',
  `- Date: ${new Date().toISOString()}; ${os.cpus()[0]?.model.trim() ?? 'unknown CPU'}, ${os.cpus().length} CPUs, Node ${process.version}`,
  `- ${pin.note}`,
  `- Load: ${gen.path !== null ? 'the C connect generator (bench/gen/connect.c)' : `the Node connect loops (${gen.why})`}, ${concurrency} parallel loops; each connect is CONNECT, CONNACK, DISCONNECT, close.`,
  `- ${rounds} rounds of ${durationMs / 1000} s, one run of each server per round in rotated order; ratios are medians of the per-round ratios (runs seconds apart).`,
  '- Security off everywhere: the Node floor (bench/servers/floor.ts) frames packets, answers CONNECT with CONNACK and closes on DISCONNECT, and does nothing else.',
  '',
  '| Server | connects/s, median (min–max) | broker CPU ms per connect, median (min–max) | generator CPU, median | connects/s ÷ Aedes, paired median |',
  '|---|---:|---:|---:|---:|',
];
for (const s of sides) {
  const rates = s.runs.map((x) => x.connectsPerS);
  const cpu = s.runs.map((x) => x.brokerMsPerConnect ?? Number.NaN);
  const ratios = s.runs.map((x, r) => x.connectsPerS / aedes.runs[r]!.connectsPerS);
  lines.push(
    `| ${s.label} | ${median(rates).toFixed(0)} (${range(rates, 0)}) | ${median(cpu).toFixed(3)} (${range(cpu, 3)}) | ${(100 * median(s.runs.map((x) => x.generatorCpu))).toFixed(0)}% | ${median(ratios).toFixed(2)}× |`,
  );
}
const floorRatio = median(sides[0]!.runs.map((x, r) => x.connectsPerS / aedes.runs[r]!.connectsPerS));
const cpuOf = (i: number): number => median(sides[i]!.runs.map((x) => x.brokerMsPerConnect ?? Number.NaN));
// A CPU-bound server's connect rate is the inverse of its CPU per connect: 4x Aedes's rate means
// at most a quarter of Aedes's CPU per connect, of which the floor already takes its share.
const budgetUs = 1000 * (cpuOf(1) / 4 - cpuOf(0));
const addedUs = 1000 * (cpuOf(2) - cpuOf(0));
lines.push(
  '',
  `The bare Node server reaches ${floorRatio.toFixed(2)}× Aedes. ` +
    (budgetUs > 0
      ? `For 4× Aedes, a broker on Node's \`net\` module may add at most ${budgetUs.toFixed(1)} µs of CPU per connect to the floor (a quarter of Aedes's ${(1000 * cpuOf(1)).toFixed(0)} µs, less the floor's ${(1000 * cpuOf(0)).toFixed(0)} µs); Portcullis adds ${addedUs.toFixed(1)} µs.`
      : `That is below 4×: no broker on Node's \`net\` module reaches 4× Aedes on this machine, since everything a broker does per connect comes on top of the floor.`),
  '',
);
const md = lines.join('\n');
console.log(`\n${md}`);
mkdirSync(path.dirname(values.out), { recursive: true });
writeFileSync(values.out, md);
console.log(`Written to ${path.relative(process.cwd(), values.out)}`);
