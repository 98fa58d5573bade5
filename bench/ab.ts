/**
 * Before/after of two Portcullis trees (say, a checkout of an older commit with its own
 * node_modules or a link to these, and this tree): both brokers started at once and fed in turn,
 * one slice each per cycle, so a host that changes speed during the run changes both sides of
 * each pair alike.
 *
 *   npm run bench:connect-ab -- --base ../portcullis-before                 # connects, security on, plain TCP
 *   npm run bench:connect-ab -- --base ../before --security off --transport mtls --cycles 8
 *   npm run bench:ab -- --base ../before --scenario fanin --security off     # a throughput scenario
 *
 * `--scenario connect` (the default) measures broker CPU per connect; a throughput scenario of
 * `npm run bench` (fanin, fanout, qos1, qos2, wildcard, fanin-mtls, fanout-mtls) measures
 * deliveries per second and broker CPU per delivery. Prints the medians of each side and the
 * median of the per-cycle ratios (this tree ÷ base). Plain TCP connects use the C connect
 * generator when a C compiler is found (bench/gen/connect.c), as `npm run bench` does.
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { setupPinning, type RunningBrokerProcess, type Security, type Transport } from './lib/brokers.ts';
import { runConnects } from './lib/connections.ts';
import { DEFAULT_WINDOWS, SCENARIO_INFO, SCENARIOS, throughputSpec, type ScenarioName } from './lib/plan.ts';
import { runThroughput } from './lib/scenarios.ts';
import type { Endpoint } from './lib/client.ts';
import { endpointFor, makeBenchFiles, type BenchFiles } from './lib/security.ts';

const { values } = parseArgs({
  options: {
    base: { type: 'string' },
    scenario: { type: 'string', default: 'connect' },
    security: { type: 'string', default: 'on' },
    transport: { type: 'string', default: 'tcp' },
    cycles: { type: 'string', default: '12' },
    slice: { type: 'string', default: '1' },
    concurrency: { type: 'string', default: '16' },
    help: { type: 'boolean', default: false },
  },
});
if (values.help || values.base === undefined) {
  console.log('Usage: npm run bench:ab -- --base DIR [--scenario connect|fanin|fanout|qos1|...] [--security on|off] [--transport tcp|tls|mtls] [--cycles 12] [--slice 1] [--concurrency 16]');
  process.exit(values.help ? 0 : 2);
}
const security = values.security as Security;
const scenario = values.scenario as ScenarioName | 'connect';
const throughput = scenario !== 'connect' && SCENARIOS.includes(scenario) && SCENARIO_INFO[scenario].kind === 'throughput';
if (scenario !== 'connect' && !throughput) {
  console.error(`--scenario: 'connect' or a throughput scenario (${SCENARIOS.filter((s) => SCENARIO_INFO[s].kind === 'throughput').join(', ')})`);
  process.exit(2);
}
const transport = throughput ? SCENARIO_INFO[scenario as ScenarioName].transport : (values.transport as Transport);
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

/** One slice against one broker: [the figure compared (lower is better), a second figure shown beside it]. */
async function slice(broker: RunningBrokerProcess, ep: Endpoint): Promise<[number, number]> {
  if (!throughput) {
    const x = await runConnects(broker, ep, concurrency, sliceMs);
    if (!x.ok || x.brokerMsPerConnect === null) throw new Error(x.failure ?? 'no broker CPU reading');
    return [x.brokerMsPerConnect, x.connectsPerS];
  }
  const name = scenario as ScenarioName;
  const x = await runThroughput(broker, ep, throughputSpec(name, sliceMs, DEFAULT_WINDOWS[name] ?? 200));
  if (!x.ok || x.brokerCpu === null) throw new Error(x.failure ?? 'no broker CPU reading');
  // Broker CPU (ms) per 1,000 deliveries: lower is better, like CPU per connect.
  return [(x.brokerCpu * x.elapsedS * 1e6) / x.received, x.deliveriesPerS];
}
const unit = throughput ? 'ms CPU per 1,000 deliveries' : 'ms CPU per connect';
const rateUnit = throughput ? 'deliveries/s' : 'connects/s';

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
  for (let i = 0; i < 2; i++) await slice(brokers[i]!, eps[i]!);
  const ms: number[][] = [[], []];
  const rates: number[][] = [[], []];
  const ratios: number[] = [];
  for (let c = 0; c < cycles; c++) {
    const r = [];
    for (let i = 0; i < 2; i++) {
      const [cost, rate] = await slice(brokers[i]!, eps[i]!).catch((err: Error) => {
        throw new Error(`${sides[i]!.name}: ${err.message}`);
      });
      r.push(cost);
      ms[i]!.push(cost);
      rates[i]!.push(rate);
    }
    ratios.push(r[1]! / r[0]!);
    console.log(`cycle ${c + 1}/${cycles}: base ${r[0]!.toFixed(4)}, this tree ${r[1]!.toFixed(4)} ${unit}`);
  }
  console.log(
    `\n${scenario}, security ${security}, ${transport}: ${unit}, medians of ${cycles} cycles: base ${median(ms[0]!).toFixed(4)}, this tree ${median(ms[1]!).toFixed(4)} ` +
      `(${rateUnit}: base ${median(rates[0]!).toFixed(0)}, this tree ${median(rates[1]!).toFixed(0)}); ` +
      `this tree ÷ base, median of the cycles' ratios: ${median(ratios).toFixed(3)} (${ratios.map((x) => x.toFixed(2)).join(' ')})`,
  );
} finally {
  for (const b of brokers) await b.stop();
  files.cleanup();
}
