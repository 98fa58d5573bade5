/**
 * Before/after for the connect path: broker CPU per connect of two Portcullis trees (say, a
 * checkout of an older commit with its own node_modules or a link to these, and this tree),
 * both brokers started at once and fed in turn, one slice each per cycle, so a host that
 * changes speed during the run changes both sides of each pair alike.
 *
 *   npm run bench:connect-ab -- --base ../portcullis-before                 # security on, plain TCP
 *   npm run bench:connect-ab -- --base ../before --security off --transport mtls --cycles 8
 *
 * Prints the median broker CPU per connect of each side and the median of the per-cycle ratios
 * (this tree ÷ base): below 1 means this tree spends less CPU per connect. Plain TCP uses the C
 * connect generator when a C compiler is found (bench/gen/connect.c), as `npm run bench` does.
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { setupPinning, type RunningBrokerProcess, type Security, type Transport } from './lib/brokers.ts';
import { runConnects } from './lib/connections.ts';
import { endpointFor, makeBenchFiles, type BenchFiles } from './lib/security.ts';

const { values } = parseArgs({
  options: {
    base: { type: 'string' },
    security: { type: 'string', default: 'on' },
    transport: { type: 'string', default: 'tcp' },
    cycles: { type: 'string', default: '12' },
    slice: { type: 'string', default: '1' },
    concurrency: { type: 'string', default: '16' },
    help: { type: 'boolean', default: false },
  },
});
if (values.help || values.base === undefined) {
  console.log('Usage: npm run bench:connect-ab -- --base DIR [--security on|off] [--transport tcp|tls|mtls] [--cycles 12] [--slice 1] [--concurrency 16]');
  process.exit(values.help ? 0 : 2);
}
const security = values.security as Security;
const transport = values.transport as Transport;
const cycles = Number(values.cycles);
const sliceMs = Number(values.slice) * 1000;
const concurrency = Number(values.concurrency);
if (!['on', 'off'].includes(security) || !['tcp', 'tls', 'mtls'].includes(transport) || !(cycles > 0) || !(sliceMs > 0) || !(concurrency > 0)) {
  console.error('bad arguments (see --help)');
  process.exit(2);
}

type StartBroker = (name: 'portcullis', security: Security, files: BenchFiles, pin: ReturnType<typeof setupPinning>) => Promise<RunningBrokerProcess>;

/** The tree's own broker launcher, so its broker runs its own code. */
async function launcher(dir: string): Promise<StartBroker> {
  const mod = (await import(path.join(path.resolve(dir), 'bench', 'lib', 'brokers.ts'))) as { startBroker: StartBroker };
  return mod.startBroker;
}

const median = (a: number[]): number => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)] as number;

const pin = setupPinning(true);
console.log(pin.note);
const files = await makeBenchFiles();
const sides = [
  { name: `base (${values.base})`, start: await launcher(values.base) },
  { name: 'this tree', start: await launcher(path.resolve(import.meta.dirname, '..')) },
];
const brokers: RunningBrokerProcess[] = [];
try {
  for (const s of sides) brokers.push(await s.start('portcullis', security, files, pin));
  const eps = brokers.map((b) => endpointFor(b, transport, files));
  // Warm-up: JIT, and for security on the credential cache.
  for (let i = 0; i < 2; i++) await runConnects(brokers[i]!, eps[i]!, concurrency, sliceMs);
  const ms: number[][] = [[], []];
  const ratios: number[] = [];
  for (let c = 0; c < cycles; c++) {
    const r = [];
    for (let i = 0; i < 2; i++) {
      const x = await runConnects(brokers[i]!, eps[i]!, concurrency, sliceMs);
      if (!x.ok || x.brokerMsPerConnect === null) throw new Error(`${sides[i]!.name}: ${x.failure ?? 'no broker CPU reading'}`);
      r.push(x.brokerMsPerConnect);
      ms[i]!.push(x.brokerMsPerConnect);
    }
    ratios.push(r[1]! / r[0]!);
    console.log(`cycle ${c + 1}/${cycles}: base ${r[0]!.toFixed(4)} ms, this tree ${r[1]!.toFixed(4)} ms per connect`);
  }
  console.log(
    `\nsecurity ${security}, ${transport}: broker CPU per connect, medians of ${cycles} cycles: base ${median(ms[0]!).toFixed(4)} ms, this tree ${median(ms[1]!).toFixed(4)} ms; ` +
      `this tree ÷ base, median of the cycles' ratios: ${median(ratios).toFixed(3)} (${ratios.map((x) => x.toFixed(2)).join(' ')})`,
  );
} finally {
  for (const b of brokers) await b.stop();
  files.cleanup();
}
