/**
 * Portcullis benchmark entry point: `npm run bench -- [--runs N] [--scenarios a,b] [--brokers x,y]`.
 *
 * Every broker runs in its own child process (CPU 0); this process is the load generator (CPU 1),
 * speaking hand-encoded MQTT 3.1.1 over raw sockets. See bench/README.md.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import {
  BROKERS,
  DEFAULT_MOSQUITTO,
  mosquittoVersion,
  setMosquittoPath,
  projectRoot,
  setupPinning,
  sleep,
  startBroker,
  systemBusySeconds,
  type BrokerName,
  type Pinning,
  type RunningBrokerProcess,
} from './lib/brokers.ts';
import { runLatency, runThroughput, type LatencyResult, type ThroughputResult, type ThroughputSpec } from './lib/scenarios.ts';

const SCENARIOS = ['fanin', 'fanout', 'qos1'] as const;
type ScenarioName = (typeof SCENARIOS)[number];

const PAYLOAD = 64;

const DEFAULT_WINDOWS: Record<ScenarioName, number> = { fanin: 200, fanout: 1000, qos1: 200 };

interface Options {
  waitIdleS: number;
  windows: Record<ScenarioName, number>;
  runs: number;
  scenarios: ScenarioName[];
  brokers: BrokerName[];
  durationMs: number;
  warmupMs: number;
  rate: number;
  pin: boolean;
  out: string;
}

/** The throughput part of each scenario. `window` is per publisher (see lib/scenarios.ts). */
function throughputSpec(name: ScenarioName, durationMs: number, window: number): ThroughputSpec {
  switch (name) {
    case 'fanin':
      return { publishers: 10, subscribers: 1, qos: 0, topic: (i) => `bench/fanin/${i}`, filter: 'bench/fanin/+', payloadSize: PAYLOAD, window, durationMs };
    case 'fanout':
      return { publishers: 1, subscribers: 50, qos: 0, topic: () => 'bench/fanout', filter: 'bench/fanout', payloadSize: PAYLOAD, window, durationMs };
    case 'qos1':
      return { publishers: 1, subscribers: 1, qos: 1, topic: () => 'bench/qos1', filter: 'bench/qos1', payloadSize: PAYLOAD, window, durationMs };
  }
}

const TITLES: Record<ScenarioName, string> = {
  fanin: 'QoS 0 fan-in, 10 publishers → 1 subscriber',
  fanout: 'QoS 0 fan-out, 1 publisher → 50 subscribers',
  qos1: 'QoS 1, 1 publisher → 1 subscriber',
};

function usage(): string {
  return `Usage: npm run bench -- [options]

  --runs N               measured runs per scenario (default 3)
  --scenarios a,b        of ${SCENARIOS.join(', ')} (default: all)
  --brokers x,y          of ${BROKERS.join(', ')} (default: all; Mosquitto is skipped if not installed)
  --duration S           seconds of publishing per run (default 3)
  --warmup S             seconds of discarded warm-up per scenario and broker (default 1)
  --rate N               publish rate of the QoS 1 latency run, msg/s (default 1000)
  --window s=N,...       flow-control window per publisher (default ${Object.entries(DEFAULT_WINDOWS).map(([k, v]) => `${k}=${v}`).join(',')})
  --mosquitto PATH       Mosquitto binary (default ${DEFAULT_MOSQUITTO}; skipped if missing)
  --wait-idle S          before each run, wait up to S seconds for other processes to go quiet (default 0: off)
  --no-pin               do not pin broker/generator to CPUs with taskset
  --out FILE             markdown report path (default bench/results/latest.md)
  -h, --help`;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      runs: { type: 'string', default: '3' },
      scenarios: { type: 'string', default: SCENARIOS.join(',') },
      brokers: { type: 'string', default: BROKERS.join(',') },
      duration: { type: 'string', default: '3' },
      warmup: { type: 'string', default: '1' },
      rate: { type: 'string', default: '1000' },
      window: { type: 'string', default: '' },
      mosquitto: { type: 'string', default: DEFAULT_MOSQUITTO },
      'wait-idle': { type: 'string', default: '0' },
      'no-pin': { type: 'boolean', default: false },
      out: { type: 'string', default: path.join(projectRoot, 'bench', 'results', 'latest.md') },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    console.log(usage());
    process.exit(0);
  }
  const list = <T extends string>(raw: string, allowed: readonly T[], what: string): T[] => {
    const items = raw.split(',').map((s) => s.trim()).filter(Boolean);
    for (const i of items) if (!allowed.includes(i as T)) die(`unknown ${what} '${i}': expected ${allowed.join(', ')}`);
    if (items.length === 0) die(`--${what}s needs at least one of ${allowed.join(', ')}`);
    return allowed.filter((a) => items.includes(a)); // canonical order, deduplicated
  };
  const num = (raw: string, what: string, min: number): number => {
    const n = Number(raw);
    if (!Number.isFinite(n) || n < min) die(`--${what} must be a number ≥ ${min}`);
    return n;
  };
  setMosquittoPath(values.mosquitto);
  const windows = { ...DEFAULT_WINDOWS };
  for (const item of values.window.split(',').map((x) => x.trim()).filter(Boolean)) {
    const [k, v] = item.split('=');
    if (!SCENARIOS.includes(k as ScenarioName) || v === undefined) die(`--window expects scenario=N pairs, e.g. fanin=100,qos1=200; got '${item}'`);
    const n = Math.floor(num(v, 'window', 1));
    if (k === 'qos1' && n > 65000) die('--window qos1 must be below 65000 (packet ids)');
    windows[k as ScenarioName] = n;
  }
  return {
    waitIdleS: num(values['wait-idle'], 'wait-idle', 0),
    windows,
    runs: Math.floor(num(values.runs, 'runs', 1)),
    scenarios: list(values.scenarios, SCENARIOS, 'scenario'),
    brokers: list(values.brokers, BROKERS, 'broker'),
    durationMs: num(values.duration, 'duration', 0.1) * 1000,
    warmupMs: num(values.warmup, 'warmup', 0) * 1000,
    rate: num(values.rate, 'rate', 1),
    pin: !values['no-pin'],
    out: path.resolve(values.out),
  };
}

function die(msg: string): never {
  console.error(`bench: ${msg}\n\n${usage()}`);
  process.exit(2);
}

// ---------- running ----------

interface ScenarioOutcome {
  throughput: ThroughputResult[];
  latency: LatencyResult[];
}

type BrokerOutcome = { unavailable: string } | { scenarios: Partial<Record<ScenarioName, ScenarioOutcome>> };

function failedThroughput(why: string): ThroughputResult {
  return { ok: false, failure: why, published: 0, expected: 0, received: 0, lost: 0, duplicates: 0, outOfOrder: 0, unexpectedAcks: 0, elapsedS: 0, deliveriesPerS: 0, publishesPerS: 0, generatorCpu: 0, brokerCpu: null, otherCpu: null };
}

function failedLatency(why: string): LatencyResult {
  return { ok: false, failure: why, published: 0, received: 0, lost: 0, duplicates: 0, ratePerS: 0, p50Ms: Number.NaN, p99Ms: Number.NaN, maxMs: Number.NaN, generatorCpu: 0, brokerCpu: null, otherCpu: null };
}

async function guarded<T>(broker: RunningBrokerProcess, fn: () => Promise<T>, failed: (why: string) => T): Promise<T> {
  if (broker.exited) return failed(`broker process exited (${broker.exited})`);
  try {
    const r = await fn();
    return broker.exited ? failed(`broker process exited during the run (${broker.exited})`) : r;
  } catch (e) {
    return failed(e instanceof Error ? e.message : String(e));
  }
}

const pct = (x: number | null): string => (x === null ? 'n/a' : `${Math.round(x * 100)}%`);
const int = (x: number): string => Math.round(x).toLocaleString('en-US');
const ms = (x: number): string => (Number.isFinite(x) ? (x < 10 ? x.toFixed(3) : x.toFixed(1)) : 'n/a');

function describeThroughput(r: ThroughputResult): string {
  if (!r.ok) return `FAILED: ${r.failure}`;
  const extra = [
    `lost ${int(r.lost)}${r.expected > 0 ? ` (${((r.lost / r.expected) * 100).toFixed(2)}%)` : ''}`,
    r.duplicates ? `dup ${int(r.duplicates)}` : '',
    r.outOfOrder ? `out-of-order ${int(r.outOfOrder)}` : '',
    r.unexpectedAcks ? `unexpected PUBACK ${r.unexpectedAcks}` : '',
    `gen CPU ${pct(r.generatorCpu)}`,
    `broker CPU ${pct(r.brokerCpu)}`,
    `other CPU ${pct(r.otherCpu)}`,
  ].filter(Boolean);
  return `${int(r.deliveriesPerS)} deliveries/s (${int(r.publishesPerS)} publishes/s, ${r.elapsedS.toFixed(2)} s; ${extra.join(', ')})`;
}

function describeLatency(r: LatencyResult): string {
  if (!r.ok) return `FAILED: ${r.failure}`;
  return `p50 ${ms(r.p50Ms)} ms, p99 ${ms(r.p99Ms)} ms, max ${ms(r.maxMs)} ms at ${int(r.ratePerS)} msg/s (${int(r.received)} msgs, dup ${r.duplicates}; gen CPU ${pct(r.generatorCpu)}, broker CPU ${pct(r.brokerCpu)}, other CPU ${pct(r.otherCpu)})`;
}

/** First line of a failure, plus the first error line of the broker's stderr if there is one. */
function shortReason(why: string): string {
  const [first, ...rest] = why.split('\n');
  const err = rest.find((l) => /^\s*\w*Error\b|^\s*\w+Error \[/.test(l));
  return err ? `${first} — ${err.trim()}` : (first ?? why);
}

async function runBroker(name: BrokerName, opts: Options, pin: Pinning): Promise<BrokerOutcome> {
  const scenarios: Partial<Record<ScenarioName, ScenarioOutcome>> = {};
  for (const scenario of opts.scenarios) {
    let broker: RunningBrokerProcess;
    try {
      broker = await startBroker(name, pin);
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      if (Object.keys(scenarios).length === 0) {
        console.log(`\n[${name}] SKIPPED: ${why}`);
        return { unavailable: shortReason(why) };
      }
      // It ran before: keep those results, count this scenario as failed.
      console.log(`\n[${name}] ${TITLES[scenario]}: broker did not start: ${why}`);
      const f = `broker did not start: ${shortReason(why)}`;
      scenarios[scenario] = { throughput: [failedThroughput(f)], latency: scenario === 'qos1' ? [failedLatency(f)] : [] };
      continue;
    }
    console.log(`\n[${name}] ${TITLES[scenario]} (pid ${broker.pid}, ${broker.host}:${broker.port})`);
    const outcome: ScenarioOutcome = { throughput: [], latency: [] };
    try {
      const spec = throughputSpec(scenario, opts.durationMs, opts.windows[scenario]);
      if (opts.warmupMs > 0) {
        const w = await guarded(broker, () => runThroughput(broker, { ...spec, durationMs: opts.warmupMs }), failedThroughput);
        console.log(`  warm-up         ${w.ok ? `${int(w.deliveriesPerS)} deliveries/s (discarded)` : `FAILED: ${w.failure}`}`);
      }
      for (let r = 1; r <= opts.runs; r++) {
        await waitIdle(opts.waitIdleS);
        const res = await guarded(broker, () => runThroughput(broker, spec), failedThroughput);
        outcome.throughput.push(res);
        console.log(`  run ${r}/${opts.runs}       ${describeThroughput(res)}`);
      }
      if (scenario === 'qos1') {
        for (let r = 1; r <= opts.runs; r++) {
          await waitIdle(opts.waitIdleS);
          const res = await guarded(broker, () => runLatency(broker, { topic: 'bench/qos1/latency', payloadSize: PAYLOAD, ratePerS: opts.rate, durationMs: opts.durationMs }), failedLatency);
          outcome.latency.push(res);
          console.log(`  latency ${r}/${opts.runs}   ${describeLatency(res)}`);
        }
      }
    } finally {
      await broker.stop();
    }
    scenarios[scenario] = outcome;
  }
  return { scenarios };
}

// ---------- reporting ----------

interface Summary {
  /** Median, min, max over successful runs; null when any run failed or none ran. */
  value: { median: number; min: number; max: number } | null;
  failure?: string;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function summarize<R extends { ok: boolean; failure?: string }>(runs: R[], pick: (r: R) => number): Summary {
  if (runs.length === 0) return { value: null, failure: 'not run' };
  const failed = runs.filter((r) => !r.ok);
  if (failed.length > 0) return { value: null, failure: `FAIL (${failed.length}/${runs.length} runs): ${failed[0]!.failure}` };
  const xs = runs.map(pick);
  return { value: { median: median(xs), min: Math.min(...xs), max: Math.max(...xs) } };
}

const fmtRange = (s: Summary, f: (x: number) => string): string =>
  s.value === null ? (s.failure ?? 'n/a').replaceAll('|', '\\|').replaceAll('\n', ' ') : `${f(s.value.median)} (${f(s.value.min)}–${f(s.value.max)})`;

function ratio(a: Summary, b: Summary | undefined): string {
  if (!a.value || !b?.value || b.value.median === 0) return 'n/a';
  return `${(a.value.median / b.value.median).toFixed(2)}×`;
}

function gitDescribe(): string {
  try {
    const sha = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: projectRoot, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src'], { cwd: projectRoot, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    return dirty ? `${sha} (src/ has uncommitted changes)` : sha;
  } catch {
    return 'unknown';
  }
}

function pkgVersion(file: string): string {
  try {
    return (JSON.parse(readFileSync(file, 'utf8')) as { version?: string }).version ?? '?';
  } catch {
    return '?';
  }
}

/** CPU cores kept busy by other processes while the benchmark is idle (null without /proc). */
async function idleLoad(ms = 1000): Promise<number | null> {
  const a = systemBusySeconds();
  const own = process.cpuUsage();
  await sleep(ms);
  const b = systemBusySeconds();
  if (a === null || b === null) return null;
  const mine = process.cpuUsage(own);
  return Math.max(0, ((b - a) * 1000 - (mine.user + mine.system) / 1000) / ms);
}

/**
 * --wait-idle: waits until two consecutive 500 ms windows show other processes below 10 % of a CPU
 * (the broker between runs is idle, so it does not count), or until maxS seconds have passed.
 */
async function waitIdle(maxS: number): Promise<void> {
  if (maxS <= 0) return;
  const deadline = Date.now() + maxS * 1000;
  let quiet = 0;
  let waited = false;
  while (Date.now() < deadline) {
    const load = await idleLoad(500);
    if (load === null) return;
    quiet = load < 0.1 ? quiet + 1 : 0;
    if (quiet >= 2) break;
    if (!waited && load >= 0.1) {
      waited = true;
      process.stdout.write(`  (waiting up to ${maxS} s for other processes to go quiet: ${load.toFixed(2)} CPU busy) `);
    }
  }
  if (waited) console.log(quiet >= 2 ? 'quiet' : 'gave up, running anyway');
}

function describeLoad(load: number | null): string {
  if (load === null) return 'unknown (no /proc/stat)';
  return `${load.toFixed(2)} CPU busy with other processes${load > 0.15 ? ' — NOT idle: numbers will be noisy and low' : ' (idle)'}`;
}

function report(opts: Options, pin: Pinning, outcomes: Map<BrokerName, BrokerOutcome>, startedAt: Date, wallS: number, loads: [number | null, number | null]): string {
  const lines: string[] = [];
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  lines.push('# Portcullis benchmark', '');
  lines.push(`- Date: ${startedAt.toISOString()}; total wall time ${wallS.toFixed(0)} s`);
  lines.push(`- Machine: ${cpu}, ${os.cpus().length} CPUs, ${os.type()} ${os.release()}, Node ${process.version}`);
  lines.push(`- CPU pinning: ${pin.note}`);
  lines.push(`- Background load: before ${describeLoad(loads[0])}; after ${describeLoad(loads[1])}${opts.waitIdleS > 0 ? `; each run waited up to ${opts.waitIdleS} s for a quiet machine (--wait-idle)` : ''}`);
  lines.push(`- Portcullis ${pkgVersion(path.join(projectRoot, 'package.json'))} at ${gitDescribe()}; Aedes ${pkgVersion(path.join(projectRoot, 'node_modules', 'aedes', 'package.json'))}; Mosquitto ${mosquittoVersion() ?? 'not installed'}`);
  lines.push(`- ${opts.runs} measured run(s) per scenario after ${opts.warmupMs / 1000} s warm-up; ${opts.durationMs / 1000} s of publishing per run; ${PAYLOAD} B payloads; MQTT 3.1.1; latency run paced at ${opts.rate} msg/s; flow-control windows per publisher ${Object.entries(opts.windows).filter(([k]) => opts.scenarios.includes(k as ScenarioName)).map(([k, v]) => `${k}=${v}`).join(', ')}`);
  lines.push('- Values: median (min–max) over the runs. Throughput = unique messages received by subscribers per second.');
  lines.push('');
  for (const [name, o] of outcomes) if ('unavailable' in o) lines.push(`> **${name} skipped:** ${o.unavailable}`, '');

  const ran = [...outcomes].filter(([, o]) => 'scenarios' in o).map(([n]) => n);
  const get = (b: BrokerName, s: ScenarioName): ScenarioOutcome | undefined => {
    const o = outcomes.get(b);
    return o && 'scenarios' in o ? o.scenarios[s] : undefined;
  };

  // Summary table
  type Row = { label: string; per: Map<BrokerName, Summary>; fmt: (x: number) => string; lowerIsBetter?: boolean };
  const rows: Row[] = [];
  for (const s of opts.scenarios) {
    const tp = new Map<BrokerName, Summary>();
    for (const b of ran) tp.set(b, summarize(get(b, s)?.throughput ?? [], (r) => r.deliveriesPerS));
    rows.push({ label: `${TITLES[s]}: msgs/s`, per: tp, fmt: int });
    if (s === 'qos1') {
      const p50 = new Map<BrokerName, Summary>();
      const p99 = new Map<BrokerName, Summary>();
      for (const b of ran) {
        p50.set(b, summarize(get(b, s)?.latency ?? [], (r) => r.p50Ms));
        p99.set(b, summarize(get(b, s)?.latency ?? [], (r) => r.p99Ms));
      }
      rows.push({ label: `QoS 1 latency p50 @ ${opts.rate} msg/s: ms`, per: p50, fmt: ms, lowerIsBetter: true });
      rows.push({ label: `QoS 1 latency p99 @ ${opts.rate} msg/s: ms`, per: p99, fmt: ms, lowerIsBetter: true });
    }
  }
  const ratioCols = (['aedes', 'mosquitto'] as const).filter((b) => ran.includes('portcullis') && ran.includes(b));
  lines.push('## Summary', '');
  lines.push(`| Scenario | ${ran.map(cap).join(' | ')} |${ratioCols.map((b) => ` Portcullis/${cap(b)} |`).join('')}`);
  lines.push(`|---|${ran.map(() => '---:').join('|')}|${ratioCols.map(() => '---:|').join('')}`);
  for (const row of rows) {
    const cells = ran.map((b) => fmtRange(row.per.get(b)!, row.fmt));
    const ratios = ratioCols.map((b) => ratio(row.per.get('portcullis')!, row.per.get(b)));
    lines.push(`| ${row.label}${row.lowerIsBetter ? ' (lower is better)' : ''} | ${cells.join(' | ')} |${ratios.map((r) => ` ${r} |`).join('')}`);
  }
  if (ratioCols.length === 0 && ran.length > 0) lines.push('', '_No ratios: Portcullis and at least one other broker must both run._');
  lines.push('');

  // Details
  lines.push('## Details', '');
  lines.push('| Broker | Scenario | Throughput msgs/s | Publishes/s | Lost | Duplicates | Generator CPU | Broker CPU | Other CPU |');
  lines.push('|---|---|---:|---:|---:|---:|---:|---:|---:|');
  const warnings: string[] = [];
  for (const b of ran) {
    for (const s of opts.scenarios) {
      const o = get(b, s);
      if (!o) continue;
      const ok = o.throughput.filter((r) => r.ok);
      const failed = o.throughput.length - ok.length;
      const f = (xs: number[], fmt: (x: number) => string): string => (xs.length ? `${fmt(median(xs))} (${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))})` : 'n/a');
      const lost = ok.map((r) => r.lost);
      const lostPct = ok.map((r) => (r.expected ? r.lost / r.expected : 0));
      const gen = ok.map((r) => r.generatorCpu);
      const brk = ok.map((r) => r.brokerCpu).filter((x): x is number => x !== null);
      const other = ok.map((r) => r.otherCpu).filter((x): x is number => x !== null);
      lines.push(
        `| ${cap(b)} | ${s} | ${failed ? `${failed}/${o.throughput.length} runs FAILED; ` : ''}${f(ok.map((r) => r.deliveriesPerS), int)} | ${f(ok.map((r) => r.publishesPerS), int)} | ${f(lost, int)}${lost.some((x) => x > 0) ? ` (max ${(Math.max(...lostPct) * 100).toFixed(2)}%)` : ''} | ${f(ok.map((r) => r.duplicates), int)} | ${f(gen, pct)} | ${brk.length ? f(brk, pct) : 'n/a'} | ${other.length ? f(other, pct) : 'n/a'} |`,
      );
      if (other.length && Math.max(...other) > 0.15) warnings.push(`${cap(b)} ${s}: other processes used up to ${pct(Math.max(...other))} of a CPU during the runs: the machine was not idle, numbers are noisy.`);
      if (gen.length && median(gen) > 0.9) {
        const bm = brk.length ? median(brk) : null;
        warnings.push(
          bm !== null && bm > 0.95
            ? `${cap(b)} ${s}: the load generator used ${pct(median(gen))} of its CPU, but the broker was at ${pct(bm)}: still broker-bound, with little headroom.`
            : `${cap(b)} ${s}: the load generator used ${pct(median(gen))} of its CPU (broker ${pct(bm)}): this number may be generator-bound.`,
        );
      }
      const quiet = other.length === 0 || median(other) < 0.15; // otherwise the other processes explain it
      if (quiet && gen.length && brk.length && median(gen) < 0.75 && median(brk) < 0.75) warnings.push(`${cap(b)} ${s}: neither broker (${pct(median(brk))}) nor generator (${pct(median(gen))}) saturated a CPU: the flow-control window or the broker's own flow control limits throughput.`);
      for (const r of o.throughput) if (!r.ok) warnings.push(`${cap(b)} ${s}: run failed: ${r.failure}`);
      for (const r of o.latency) if (!r.ok) warnings.push(`${cap(b)} ${s} latency: run failed: ${r.failure}`);
      const latOther = o.latency.filter((r) => r.ok && r.otherCpu !== null).map((r) => r.otherCpu!);
      if (latOther.length && Math.max(...latOther) > 0.15) warnings.push(`${cap(b)} ${s} latency: other processes used up to ${pct(Math.max(...latOther))} of a CPU during the runs: p99 and max are inflated.`);
      if (ok.some((r) => r.outOfOrder > 0)) warnings.push(`${cap(b)} ${s}: messages from one publisher arrived out of order.`);
    }
  }
  lines.push('');
  if (ran.some((b) => get(b, 'qos1')?.latency.length)) {
    lines.push('| Broker | QoS 1 latency @ paced rate | p50 ms | p99 ms | max ms | Achieved msg/s | Generator CPU | Broker CPU | Other CPU |');
    lines.push('|---|---|---:|---:|---:|---:|---:|---:|---:|');
    for (const b of ran) {
      const o = get(b, 'qos1');
      if (!o?.latency.length) continue;
      const ok = o.latency.filter((r) => r.ok);
      const f = (xs: number[], fmt: (x: number) => string): string => (xs.length ? `${fmt(median(xs))} (${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))})` : 'n/a');
      const brk = ok.map((r) => r.brokerCpu).filter((x): x is number => x !== null);
      const other = ok.map((r) => r.otherCpu).filter((x): x is number => x !== null);
      const failed = o.latency.length - ok.length;
      lines.push(`| ${cap(b)} | ${failed ? `${failed}/${o.latency.length} runs FAILED` : `${ok.length} runs`} | ${f(ok.map((r) => r.p50Ms), ms)} | ${f(ok.map((r) => r.p99Ms), ms)} | ${f(ok.map((r) => r.maxMs), ms)} | ${f(ok.map((r) => r.ratePerS), int)} | ${f(ok.map((r) => r.generatorCpu), pct)} | ${brk.length ? f(brk, pct) : 'n/a'} | ${other.length ? f(other, pct) : 'n/a'} |`);
    }
    lines.push('');
  }
  if (warnings.length) {
    lines.push('## Warnings', '');
    for (const w of warnings) lines.push(`- ${w}`);
    lines.push('');
  }
  lines.push('CPU figures are fractions of one core over each run (user + system). Broker CPU near 100% means the broker is the bottleneck, as intended; "Other CPU" is everything else on the machine during the run (should be near 0%).');
  return lines.join('\n') + '\n';
}

function cap(s: string): string {
  return s === 'portcullis' ? 'Portcullis' : s === 'aedes' ? 'Aedes' : s === 'mosquitto' ? 'Mosquitto' : s;
}

// ---------- main ----------

const opts = parseOptions();
const pin = setupPinning(opts.pin);
const startedAt = new Date();
console.log(`Portcullis benchmark: brokers ${opts.brokers.join(', ')}; scenarios ${opts.scenarios.join(', ')}; ${opts.runs} run(s) × ${opts.durationMs / 1000} s`);
console.log(pin.note);
const loadBefore = await idleLoad();
console.log(`Background load: ${describeLoad(loadBefore)}`);

const outcomes = new Map<BrokerName, BrokerOutcome>();
for (const b of opts.brokers) {
  try {
    outcomes.set(b, await runBroker(b, opts, pin));
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    console.log(`\n[${b}] ABORTED: ${why}`);
    outcomes.set(b, { unavailable: `aborted: ${shortReason(why)}` });
  }
}

const loadAfter = await idleLoad();
const md = report(opts, pin, outcomes, startedAt, (Date.now() - startedAt.getTime()) / 1000, [loadBefore, loadAfter]);
console.log(`\n${md}`);
mkdirSync(path.dirname(opts.out), { recursive: true });
writeFileSync(opts.out, md);
console.log(`Report written to ${path.relative(process.cwd(), opts.out) || opts.out}`);
