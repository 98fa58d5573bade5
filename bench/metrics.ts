/**
 * What metrics cost: two Portcullis brokers of this tree started at once, one without the
 * operations listener (metrics off), one with it (http on 127.0.0.1, /metrics scraped every
 * second while that broker is measured), fed in turn, one slice each per cycle, the order
 * alternating, so a host that changes speed changes both sides of each pair alike (as
 * bench/ab.ts does for two trees). QoS 0 fan-in (10→1) and fan-out (1→50), plain TCP.
 *
 *   npm run bench:metrics                                  # both scenarios, security off and on, 11 cycles of 2 s slices
 *   npm run bench:metrics -- --scenarios fanin --security on --cycles 6 --slice 2
 *
 * Prints per scenario the medians of each side (deliveries/s, broker CPU per 1,000 deliveries)
 * and the median of the per-cycle ratios (metrics on ÷ off), and writes a markdown report to
 * bench/results/metrics.md. The target (issue 21): at most 3 % fewer deliveries per second.
 * `--control` runs the same with metrics off on both sides (an A/A run): the spread the harness
 * shows between two identical brokers. `--no-scrape` keeps the operations listener on the second
 * broker but never scrapes it: what the listener's mere presence costs, apart from the scrapes.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { buildDist, freePort, portcullisConfig, procCpuSeconds, procRssKb, projectRoot, setupPinning, type Pinning, type RunningBrokerProcess, type Security } from './lib/brokers.ts';
import { DEFAULT_WINDOWS, throughputSpec, type ScenarioName } from './lib/plan.ts';
import { runThroughput } from './lib/scenarios.ts';
import { endpointFor, makeBenchFiles, type BenchFiles } from './lib/security.ts';

const { values } = parseArgs({
  options: {
    scenarios: { type: 'string', default: 'fanin,fanout' },
    security: { type: 'string', default: 'off,on' },
    cycles: { type: 'string', default: '11' },
    slice: { type: 'string', default: '2' },
    out: { type: 'string', default: path.join(projectRoot, 'bench', 'results', 'metrics.md') },
    /** A/A control: the second broker without metrics too (and not scraped), to see the harness's own spread. */
    control: { type: 'boolean', default: false },
    /** The second broker with the operations listener, never scraped. */
    'no-scrape': { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  console.log('Usage: npm run bench:metrics -- [--scenarios fanin,fanout] [--security off,on] [--cycles 11] [--slice 2] [--out FILE] [--control] [--no-scrape]');
  process.exit(0);
}
const scenarios = (values.scenarios as string).split(',') as ScenarioName[];
const securities = (values.security as string).split(',') as Security[];
const cycles = Number(values.cycles);
const sliceMs = Number(values.slice) * 1000;
if (!scenarios.every((s) => s === 'fanin' || s === 'fanout') || !securities.every((s) => s === 'off' || s === 'on') || !(cycles > 0) || !(sliceMs >= 1000)) {
  console.error('bad arguments (see --help)');
  process.exit(2);
}

const median = (a: number[]): number => {
  const s = [...a].sort((p, q) => p - q);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};


/** A broker process (bench/servers/portcullis-dist.mjs, or portcullis.ts from src/) with this configuration, pinned as the other benchmarks pin it. */
async function startPortcullis(config: Record<string, unknown>, security: Security, files: BenchFiles, pin: Pinning, tag: string): Promise<RunningBrokerProcess> {
  const file = path.join(files.dir, `metrics-${tag}-${security}.json`);
  // Each broker its own audit file: two hash-chained sinks appending to one file would interleave their chains.
  const audit = config.audit as { sink?: string; path?: string } | undefined;
  const own = audit?.sink === 'file' ? { ...config, audit: { ...audit, path: path.join(files.dir, `metrics-audit-${tag}-${security}.jsonl`) } } : config;
  fs.writeFileSync(file, JSON.stringify(own));
  // BENCH_BROKER_NODE_ARGS: extra Node flags for both brokers, e.g. "--cpu-prof --cpu-prof-dir prof" (as npm run bench takes them).
  const extra = (process.env.BENCH_BROKER_NODE_ARGS ?? '').split(' ').filter((a) => a !== '');
  // As `npm start` runs it: dist/ on plain node, built once (BENCH_PORTCULLIS_FROM=src: src/ through tsx).
  const fromSrc = process.env.BENCH_PORTCULLIS_FROM === 'src';
  if (!fromSrc) buildDist();
  const server = fromSrc ? ['--import', 'tsx', path.join(projectRoot, 'bench', 'servers', 'portcullis.ts')] : [path.join(projectRoot, 'bench', 'servers', 'portcullis-dist.mjs')];
  const args = [...extra, ...server, '--config', file];
  const [cmd, argv] = pin.brokerCpu === null ? [process.execPath, args] : ['taskset', ['-c', pin.brokerCpu, process.execPath, ...args]];
  const child = spawn(cmd, argv, { cwd: projectRoot, stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  // BENCH_BROKER_LOG_DIR: keeps each broker's output (e.g. --trace-gc's lines) in DIR/metrics-<side>-<security>.log.
  const logDir = process.env.BENCH_BROKER_LOG_DIR;
  if (logDir !== undefined && logDir !== '') {
    const log = fs.createWriteStream(path.join(logDir, `metrics-${tag}-${security}.log`));
    child.stdout!.pipe(log);
    child.stderr!.on('data', (d: Buffer) => log.write(d));
  }
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const ports = await new Promise<RunningBrokerProcess['ports']>((resolve, reject) => {
    let out: string | null = '';
    const timer = setTimeout(() => reject(new Error(`broker ${tag} not ready in 30 s\n${stderr}`)), 30_000);
    child.stdout!.on('data', (d: Buffer) => {
      if (out === null) return; // ready: what follows (e.g. --trace-gc's lines) is not kept here
      out += d.toString();
      const m = /^READY (\{.*\})$/m.exec(out);
      if (m) {
        clearTimeout(timer);
        out = null;
        resolve(JSON.parse(m[1] as string) as RunningBrokerProcess['ports']);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`broker ${tag} exited (${code})\n${stderr}`));
    });
  });
  return {
    name: 'portcullis',
    security,
    host: '127.0.0.1',
    ports,
    pid: child.pid ?? -1,
    cpuSeconds: () => procCpuSeconds(child.pid),
    rssKb: () => procRssKb(child.pid),
    collectGarbage: () => child.kill('SIGUSR2'),
    exited: null,
    stderrTail: () => stderr,
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

/** GETs /metrics every second while started; counts scrapes and keeps the last body's size. */
class Scraper {
  private timer: NodeJS.Timeout | null = null;
  // One kept-alive connection, as Prometheus scrapes.
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  scrapes = 0;
  failures = 0;
  lastBytes = 0;
  lastReceived = 0;
  constructor(private readonly port: number) {}
  private once(): void {
    http
      .get({ host: '127.0.0.1', port: this.port, path: '/metrics', agent: this.agent }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const body = Buffer.concat(chunks).toString();
          if (res.statusCode !== 200) {
            this.failures++;
            return;
          }
          this.scrapes++;
          this.lastBytes = body.length;
          const m = /^portcullis_messages_received_total\{qos="0"\} (\d+)/m.exec(body);
          this.lastReceived = m ? Number(m[1]) : 0;
        });
      })
      .on('error', () => this.failures++);
  }
  start(): void {
    this.once();
    this.timer = setInterval(() => this.once(), 1000);
  }
  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }
  close(): void {
    this.stop();
    this.agent.destroy();
  }
}

interface Row {
  scenario: ScenarioName;
  security: Security;
  off: { rate: number[]; cpu: number[] };
  on: { rate: number[]; cpu: number[] };
  rateRatios: number[];
  cpuRatios: number[];
  scrapes: number;
  scrapeFailures: number;
  metricsBytes: number;
}

const pin = setupPinning(true);
console.log(pin.note);
const files = await makeBenchFiles();
const rows: Row[] = [];
const started = new Date();
try {
  for (const security of securities) {
    // Two brokers at once cannot share the default store folder; QoS 0 to clean sessions never
    // touches the store, so both keep theirs in memory.
    // Throughput, not logins, is measured: the failed-login guard and its check queue would refuse
    // (0x88) some of the 50 subscribers a fan-out connects at once on a loaded host.
    const base = { ...portcullisConfig(security, files), store: { type: 'memory' }, authGuard: { enabled: false, checkQueue: { maxWaiting: 10_000 } } };
    const httpPort = await freePort();
    const off = await startPortcullis(base, security, files, pin, 'off');
    const control = values.control === true;
    const noScrape = values['no-scrape'] === true;
    const on = await startPortcullis(control ? base : { ...base, http: { host: '127.0.0.1', port: httpPort, metrics: { public: true } } }, security, files, pin, 'on');
    const scraper = new Scraper(httpPort);
    try {
      for (const scenario of scenarios) {
        const spec = throughputSpec(scenario, sliceMs, DEFAULT_WINDOWS[scenario] ?? 200);
        const slice = async (b: RunningBrokerProcess, scrape: boolean): Promise<[number, number]> => {
          const scraped = scrape && !control && !noScrape;
          if (scraped) scraper.start();
          try {
            const x = await runThroughput(b, endpointFor(b, 'tcp', files), spec);
            if (!x.ok || x.brokerCpu === null) throw new Error(x.failure ?? 'no broker CPU reading');
            return [x.deliveriesPerS, (x.brokerCpu * x.elapsedS * 1e6) / x.received];
          } finally {
            if (scraped) scraper.stop();
          }
        };
        // Warm-up of both (JIT, connection set-up paths).
        await slice(off, false);
        await slice(on, true);
        const row: Row = { scenario, security, off: { rate: [], cpu: [] }, on: { rate: [], cpu: [] }, rateRatios: [], cpuRatios: [], scrapes: 0, scrapeFailures: 0, metricsBytes: 0 };
        const before = scraper.scrapes;
        for (let c = 0; c < cycles; c++) {
          // Alternate the order: neither side always runs on a warmer or cooler machine.
          const order: ('off' | 'on')[] = c % 2 === 0 ? ['off', 'on'] : ['on', 'off'];
          const got: Record<'off' | 'on', [number, number]> = { off: [0, 0], on: [0, 0] };
          for (const side of order) got[side] = await slice(side === 'off' ? off : on, side === 'on');
          row.off.rate.push(got.off[0]);
          row.off.cpu.push(got.off[1]);
          row.on.rate.push(got.on[0]);
          row.on.cpu.push(got.on[1]);
          row.rateRatios.push(got.on[0] / got.off[0]);
          row.cpuRatios.push(got.on[1] / got.off[1]);
          console.log(
            `${scenario} security ${security} cycle ${c + 1}/${cycles}: off ${got.off[0].toFixed(0)}/s (${got.off[1].toFixed(3)} ms CPU/1k), on ${got.on[0].toFixed(0)}/s (${got.on[1].toFixed(3)} ms CPU/1k)`,
          );
        }
        row.scrapes = scraper.scrapes - before;
        row.scrapeFailures = scraper.failures;
        row.metricsBytes = scraper.lastBytes;
        if (!control && !noScrape && scraper.lastReceived === 0) throw new Error('the scraped broker reports no received messages: /metrics did not see the load');
        rows.push(row);
        console.log(
          `\n${scenario}, security ${security}: deliveries/s off ${median(row.off.rate).toFixed(0)}, on ${median(row.on.rate).toFixed(0)}; on ÷ off, median of ${cycles} cycles: ` +
            `throughput ${median(row.rateRatios).toFixed(3)}, CPU per delivery ${median(row.cpuRatios).toFixed(3)} (${row.scrapes} scrapes of ${row.metricsBytes} bytes)\n`,
        );
      }
    } finally {
      scraper.close();
      await off.stop();
      await on.stop();
    }
  }
} finally {
  files.cleanup();
}

const pct = (r: number) => `${r >= 1 ? '+' : ''}${((r - 1) * 100).toFixed(1)} %`;
const lines = [
  '# Metrics on against off (bench/metrics.ts)',
  '',
  ...(values.control === true ? ['**Control run (A/A): metrics off on both sides.**', ''] : []),
  ...(values['no-scrape'] === true ? ['**No-scrape run: the operations listener on, /metrics never scraped.**', ''] : []),
  `Run ${started.toISOString()}: ${cycles} cycles of ${sliceMs / 1000} s slices per scenario, order alternating; ${pin.note}.`,
  'Metrics on: the operations listener on 127.0.0.1 with /metrics scraped every second while that broker is measured.',
  '',
  '| Scenario | Security | Deliveries/s off | Deliveries/s on | Throughput on ÷ off (median of cycles) | CPU per delivery on ÷ off | Target (≥ 0.97) | Scrapes |',
  '|---|---|---|---|---|---|---|---|',
  ...rows.map((r) => {
    const ratio = median(r.rateRatios);
    return `| ${r.scenario === 'fanin' ? 'QoS 0 fan-in 10→1' : 'QoS 0 fan-out 1→50'} | ${r.security} | ${median(r.off.rate).toFixed(0)} | ${median(r.on.rate).toFixed(0)} | ${ratio.toFixed(3)} (${pct(ratio)}) | ${median(r.cpuRatios).toFixed(3)} | ${ratio >= 0.97 ? 'PASS' : 'MISS'} | ${r.scrapes} (${r.scrapeFailures} failed) |`;
  }),
  '',
  'Per-cycle throughput ratios (on ÷ off):',
  '',
  ...rows.map((r) => `- ${r.scenario}, security ${r.security}: ${r.rateRatios.map((x) => x.toFixed(3)).join(' ')}`),
  '',
];
fs.mkdirSync(path.dirname(values.out as string), { recursive: true });
fs.writeFileSync(values.out as string, lines.join('\n'));
console.log(lines.join('\n'));
