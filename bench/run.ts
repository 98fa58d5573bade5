/**
 * Portcullis benchmark entry point: `npm run bench -- [--quick] [--scenarios a,b] [--brokers x,y] [--security off,on]`.
 *
 * Every broker runs in its own child process (CPU 0), in two configurations (security off / on),
 * freshly started for each scenario; this process is the load generator (CPU 1), speaking
 * hand-encoded MQTT 3.1.1 over raw TCP or TLS sockets. See bench/README.md.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { BROKERS, DEFAULT_MOSQUITTO, SECURITY, projectRoot, setMosquittoPath, setupPinning, startBroker, type BrokerName, type Pinning, type RunningBrokerProcess, type Security, type Transport } from './lib/brokers.ts';
import type { Endpoint } from './lib/client.ts';
import { runConnects, runIdleMemory } from './lib/connections.ts';
import { DEFAULT_WINDOWS, PAYLOAD, SCENARIOS, SCENARIO_INFO, throughputSpec, type ScenarioName } from './lib/plan.ts';
import { idleLoad, describeLoad, report, waitIdle, type Outcome, type Results, type RunOptions, type Sample } from './lib/report.ts';
import { runRetained, storeRetained } from './lib/retained.ts';
import { runLatency, runThroughput } from './lib/scenarios.ts';
import { endpointFor, makeBenchFiles, type BenchFiles } from './lib/security.ts';

function usage(): string {
  return `Usage: npm run bench -- [options]

  --quick                1 run of 1 s per scenario, 0.5 s warm-up, 1,000 idle connections, 1,000 retained
                         messages: checks every scenario works (a few minutes); numbers are indicative only
  --runs N               measured runs per scenario (default 3; idle memory is measured --memory-runs times)
  --connect-rounds N     rounds of the connect scenarios, one run of every configuration each (default 9)
  --scenarios a,b        of ${SCENARIOS.join(', ')} (default: all)
  --brokers x,y          of ${BROKERS.join(', ')} (default: all; Mosquitto is skipped if not installed)
  --security off,on      configurations (default: both; see bench/README.md)
  --duration S           seconds of publishing / connecting per run (default 3)
  --warmup S             seconds of discarded warm-up per scenario and configuration (default 1)
  --rate N               publish rate of the QoS 1 latency run, msg/s (default 1000)
  --window s=N,...       flow-control window per publisher (default ${Object.entries(DEFAULT_WINDOWS).map(([k, v]) => `${k}=${v}`).join(',')})
  --connections N        idle connections for the memory scenarios (default 5000)
  --memory-runs N        idle-memory measurements per configuration (default 1)
  --retained N           retained messages for the retained scenario (default 10000)
  --concurrency N        parallel connect loops in the connect scenarios (default 16)
  --mosquitto PATH       Mosquitto binary (default ${DEFAULT_MOSQUITTO}; skipped if missing)
  --wait-idle S          before each run, wait up to S seconds for other processes to go quiet (default 0: off)
  --no-pin               do not pin broker/generator to CPUs with taskset
  --out FILE             markdown report path (default bench/results/latest.md; with --quick bench/results/quick.md)
  --persistence, --no-persistence
                         run or skip the persistent-session part (default: run it when --scenarios is not
                         given). It is bench/persistence.ts, run last: QoS 1 1→1 and
                         fan-in 10→1 into persistent sessions on the durable store, the memory store and
                         Mosquitto with persistence true; with --quick 1 round of 2 s, no restart scenario;
                         its report goes to bench/results/persistence.md, or quick-persistence.md)
  --dry-run              print the plan and the estimated duration, run nothing
  -h, --help`;
}

function die(msg: string): never {
  console.error(`bench: ${msg}\n\n${usage()}`);
  process.exit(2);
}

function parseOptions(): RunOptions {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      runs: { type: 'string' },
      'connect-rounds': { type: 'string' },
      scenarios: { type: 'string', default: SCENARIOS.join(',') },
      brokers: { type: 'string', default: BROKERS.join(',') },
      security: { type: 'string', default: SECURITY.join(',') },
      duration: { type: 'string' },
      warmup: { type: 'string' },
      rate: { type: 'string', default: '1000' },
      window: { type: 'string', default: '' },
      connections: { type: 'string' },
      'memory-runs': { type: 'string', default: '1' },
      retained: { type: 'string' },
      concurrency: { type: 'string', default: '16' },
      mosquitto: { type: 'string', default: DEFAULT_MOSQUITTO },
      'wait-idle': { type: 'string', default: '0' },
      'no-pin': { type: 'boolean', default: false },
      persistence: { type: 'boolean' },
      'no-persistence': { type: 'boolean', default: false },
      out: { type: 'string' },
      'dry-run': { type: 'boolean', default: false },
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
    if (items.length === 0) die(`--${what} needs at least one of ${allowed.join(', ')}`);
    return allowed.filter((a) => items.includes(a)); // canonical order, deduplicated
  };
  const num = (raw: string, what: string, min: number): number => {
    const n = Number(raw);
    if (!Number.isFinite(n) || n < min) die(`--${what} must be a number ≥ ${min}`);
    return n;
  };
  const q = values.quick;
  setMosquittoPath(values.mosquitto);
  const windows = { ...DEFAULT_WINDOWS };
  for (const item of values.window.split(',').map((x) => x.trim()).filter(Boolean)) {
    const [k, v] = item.split('=');
    if (!(k! in DEFAULT_WINDOWS) || v === undefined) die(`--window expects scenario=N pairs of ${Object.keys(DEFAULT_WINDOWS).join(', ')}; got '${item}'`);
    const n = Math.floor(num(v, 'window', 1));
    if ((k === 'qos1' || k === 'qos2') && n > 65000) die(`--window ${k} must be below 65000 (packet ids)`);
    windows[k as ScenarioName] = n;
  }
  return {
    quick: q,
    waitIdleS: num(values['wait-idle'], 'wait-idle', 0),
    windows,
    runs: Math.floor(num(values.runs ?? (q ? '1' : '3'), 'runs', 1)),
    connectRounds: Math.floor(num(values['connect-rounds'] ?? (q ? '1' : '9'), 'connect-rounds', 1)),
    scenarios: list(values.scenarios, SCENARIOS, 'scenarios'),
    brokers: list(values.brokers, BROKERS, 'brokers'),
    security: list(values.security, SECURITY, 'security'),
    durationMs: num(values.duration ?? (q ? '1' : '3'), 'duration', 0.1) * 1000,
    warmupMs: num(values.warmup ?? (q ? '0.5' : '1'), 'warmup', 0) * 1000,
    rate: num(values.rate, 'rate', 1),
    connections: Math.floor(num(values.connections ?? (q ? '1000' : '5000'), 'connections', 1)),
    memoryRuns: Math.floor(num(values['memory-runs'], 'memory-runs', 1)),
    retained: Math.floor(num(values.retained ?? (q ? '1000' : '10000'), 'retained', 1)),
    concurrency: Math.floor(num(values.concurrency, 'concurrency', 1)),
    pin: !values['no-pin'],
    persistence: values['no-persistence'] ? false : (values.persistence ?? values.scenarios === SCENARIOS.join(',')),
    out: path.resolve(values.out ?? path.join(projectRoot, 'bench', 'results', q ? 'quick.md' : 'latest.md')),
    dryRun: values['dry-run'],
  };
}

// ---------- estimating ----------

/** Rough seconds per scenario and configuration: broker start, warm-up, runs, set-up and drain. */
function estimateSeconds(o: RunOptions): number {
  const d = o.durationMs / 1000;
  const w = o.warmupMs / 1000;
  let perConfig = 0;
  for (const s of o.scenarios) {
    const start = 3; // start-up of a Node broker under tsx, and connecting the clients
    switch (SCENARIO_INFO[s].kind) {
      case 'throughput':
        perConfig += start + (w > 0 ? w + 1 : 0) + o.runs * (d + 1) + (s === 'qos1' ? o.runs * (d + 0.5) : 0) + (s.endsWith('mtls') ? 2 : 0);
        break;
      case 'retained':
        perConfig += start + o.retained / 2000 + (o.runs + 1) * (1 + o.retained / 20_000);
        break;
      case 'connect':
        perConfig += start + w + o.connectRounds * d;
        break;
      case 'memory':
        perConfig += start + o.memoryRuns * (9 + o.connections / (s === 'memory-mtls' ? 300 : 2000));
        break;
    }
  }
  // The persistent-session part: 3 sides × 2 scenarios × rounds, plus the restart scenario's fill.
  const persistence = !o.persistence ? 0 : o.quick ? 6 * (2 + 4) + 30 : 6 * 5 * (5 + 3) + 240;
  return perConfig * o.brokers.length * o.security.length + 10 + persistence;
}

// ---------- running ----------

const failed = (why: string): Sample => ({ ok: false, failure: why, values: {}, generatorCpu: null, brokerCpu: null, otherCpu: null, detail: `FAILED: ${why}` });

async function guarded(broker: RunningBrokerProcess, fn: () => Promise<Sample>): Promise<Sample> {
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
const cpus = (s: { generatorCpu: number | null; brokerCpu: number | null; otherCpu: number | null }): string => `gen CPU ${pct(s.generatorCpu)}, broker CPU ${pct(s.brokerCpu)}, other CPU ${pct(s.otherCpu)}`;

async function throughputSample(broker: RunningBrokerProcess, endpoint: Endpoint, s: ScenarioName, opts: RunOptions, durationMs: number): Promise<Sample> {
  const r = await runThroughput(broker, endpoint, throughputSpec(s, durationMs, opts.windows[s] ?? 200));
  const loss = `lost ${int(r.lost)}${r.expected > 0 ? ` (${((r.lost / r.expected) * 100).toFixed(2)}%)` : ''}${r.duplicates ? `, dup ${int(r.duplicates)}` : ''}${r.outOfOrder ? `, out-of-order ${int(r.outOfOrder)}` : ''}${r.unexpectedAcks ? `, unexpected acks ${r.unexpectedAcks}` : ''}`;
  return {
    ok: r.ok,
    ...(r.failure !== undefined ? { failure: r.failure } : {}),
    values: { rate: r.deliveriesPerS, publishes: r.publishesPerS, lost: r.lost, lostFraction: r.expected ? r.lost / r.expected : 0, duplicates: r.duplicates },
    generatorCpu: r.generatorCpu,
    brokerCpu: r.brokerCpu,
    otherCpu: r.otherCpu,
    detail: r.ok ? `${int(r.deliveriesPerS)} msgs/s (${int(r.publishesPerS)} publishes/s, ${r.elapsedS.toFixed(2)} s; ${loss}; ${cpus(r)})` : `FAILED: ${r.failure} (${loss})`,
  };
}

async function connectSample(broker: RunningBrokerProcess, endpoint: Endpoint, opts: RunOptions, durationMs: number): Promise<Sample> {
  const r = await runConnects(broker, endpoint, opts.concurrency, durationMs);
  return {
    ok: r.ok,
    ...(r.failure !== undefined ? { failure: r.failure } : {}),
    values: { rate: r.connectsPerS, ...(r.brokerMsPerConnect !== null ? { cpuMs: r.brokerMsPerConnect } : {}) },
    generatorCpu: r.generatorCpu,
    brokerCpu: r.brokerCpu,
    otherCpu: r.otherCpu,
    detail: r.ok ? `${int(r.connectsPerS)} connects/s, broker ${r.brokerMsPerConnect === null ? 'n/a' : r.brokerMsPerConnect.toFixed(3)} ms CPU per connect (${int(r.connects)} connects; ${cpus(r)})` : `FAILED: ${r.failure}`,
  };
}

async function runScenario(broker: RunningBrokerProcess, s: ScenarioName, opts: RunOptions, files: BenchFiles): Promise<Outcome> {
  const info = SCENARIO_INFO[s];
  const endpoint = endpointFor(broker, info.transport, files);
  const out: Outcome = { main: [], latency: [] };
  const log = (label: string, x: Sample): void => console.log(`  ${label.padEnd(14)}${x.detail}`);
  const measure = async (label: string, into: Sample[], fn: () => Promise<Sample>): Promise<void> => {
    await waitIdle(opts.waitIdleS);
    const x = await guarded(broker, fn);
    into.push(x);
    log(label, x);
  };
  switch (info.kind) {
    case 'throughput': {
      if (opts.warmupMs > 0) {
        const w = await guarded(broker, () => throughputSample(broker, endpoint, s, opts, opts.warmupMs));
        console.log(`  ${'warm-up'.padEnd(14)}${w.ok ? `${int(w.values.rate ?? 0)} msgs/s (discarded)` : w.detail}`);
      }
      for (let r = 1; r <= opts.runs; r++) await measure(`run ${r}/${opts.runs}`, out.main, () => throughputSample(broker, endpoint, s, opts, opts.durationMs));
      if (s === 'qos1') {
        for (let r = 1; r <= opts.runs; r++) {
          await measure(`latency ${r}/${opts.runs}`, out.latency, async () => {
            const l = await runLatency(broker, endpoint, { topic: 'bench/qos1/latency', payloadSize: PAYLOAD, ratePerS: opts.rate, durationMs: opts.durationMs });
            return {
              ok: l.ok,
              ...(l.failure !== undefined ? { failure: l.failure } : {}),
              values: { p50: l.p50Ms, p99: l.p99Ms, max: l.maxMs, achieved: l.ratePerS },
              generatorCpu: l.generatorCpu,
              brokerCpu: l.brokerCpu,
              otherCpu: l.otherCpu,
              detail: l.ok ? `p50 ${ms(l.p50Ms)} ms, p99 ${ms(l.p99Ms)} ms, max ${ms(l.maxMs)} ms at ${int(l.ratePerS)} msg/s (dup ${l.duplicates}; ${cpus(l)})` : `FAILED: ${l.failure}`,
            };
          });
        }
      }
      break;
    }
    case 'retained': {
      const t0 = performance.now();
      await storeRetained(endpoint, opts.retained, PAYLOAD);
      console.log(`  ${'stored'.padEnd(14)}${int(opts.retained)} retained messages in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      const one = async (): Promise<Sample> => {
        const r = await runRetained(broker, endpoint, opts.retained);
        return {
          ok: r.ok,
          ...(r.failure !== undefined ? { failure: r.failure } : {}),
          values: { ms: r.elapsedMs, rate: r.messagesPerS, lost: r.expected - r.received, duplicates: r.duplicates },
          generatorCpu: r.generatorCpu,
          brokerCpu: r.brokerCpu,
          otherCpu: r.otherCpu,
          detail: r.ok ? `${int(r.received)} retained in ${ms(r.elapsedMs)} ms (${int(r.messagesPerS)} msgs/s; ${cpus(r)})` : `FAILED: ${r.failure}`,
        };
      };
      if (opts.warmupMs > 0) log('warm-up', await guarded(broker, one));
      for (let r = 1; r <= opts.runs; r++) await measure(`run ${r}/${opts.runs}`, out.main, one);
      break;
    }
    case 'connect':
      throw new Error('connect scenarios are measured in rounds across configurations (runConnectRounds)');
    case 'memory': {
      for (let r = 1; r <= opts.memoryRuns; r++) {
        await measure(`run ${r}/${opts.memoryRuns}`, out.main, async () => {
          const m = await runIdleMemory(broker, endpoint, opts.connections);
          return {
            ok: m.ok,
            ...(m.failure !== undefined ? { failure: m.failure } : {}),
            values: { kb: m.perConnectionKb, kbMarginal: m.marginalKb, beforeMb: m.beforeKb / 1024, afterMb: m.afterKb / 1024, ...(m.perConnectionNoGcKb !== null ? { kbNoGc: m.perConnectionNoGcKb } : {}) },
            generatorCpu: null,
            brokerCpu: null,
            otherCpu: null,
            detail: m.ok
              ? `${m.perConnectionKb.toFixed(2)} KiB per connection, ${m.marginalKb.toFixed(2)} marginal (${int(m.connections)} open in ${m.openS.toFixed(1)} s; RSS ${(m.beforeKb / 1024).toFixed(1)} → ${(m.afterKb / 1024).toFixed(1)} MiB${m.perConnectionNoGcKb !== null ? `, after GC; before GC ${m.perConnectionNoGcKb.toFixed(2)} KiB per connection` : ''})`
              : `FAILED: ${m.failure}`,
          };
        });
      }
      break;
    }
  }
  return out;
}

function shortReason(why: string): string {
  const [first, ...rest] = why.split('\n');
  const err = rest.find((l) => /^\s*\w*Error\b|^\s*\w+Error \[|^\d+: Error/.test(l));
  return err ? `${first} — ${err.trim()}` : (first ?? why);
}

/**
 * Starts a broker for scenario `s`, or records why it could not: a broker that cannot start
 * before any of its scenarios ran marks the configuration unavailable (e.g. Mosquitto not
 * installed); later, it fails just this scenario. Null when it did not start.
 */
async function startFor(name: BrokerName, security: Security, s: ScenarioName, entry: Results[string], pin: Pinning, files: BenchFiles): Promise<RunningBrokerProcess | null> {
  try {
    return await startBroker(name, security, files, pin);
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    if (Object.keys(entry.scenarios).length === 0) {
      console.log(`\n[${name}, security ${security}] SKIPPED: ${why}`);
      entry.unavailable = shortReason(why);
    } else {
      console.log(`\n[${name}, security ${security}] ${SCENARIO_INFO[s].title}: broker did not start: ${why}`);
      entry.scenarios[s] = { main: [failed(`broker did not start: ${shortReason(why)}`)], latency: [] };
    }
    return null;
  }
}

/** One scenario on one configuration, on a freshly started broker. */
async function runOne(name: BrokerName, security: Security, s: ScenarioName, entry: Results[string], opts: RunOptions, pin: Pinning, files: BenchFiles): Promise<void> {
  const broker = await startFor(name, security, s, entry, pin, files);
  if (broker === null) return;
  console.log(`\n[${name}, security ${security}] ${SCENARIO_INFO[s].title} (pid ${broker.pid}, ${broker.host}:${broker.ports[SCENARIO_INFO[s].transport]} ${SCENARIO_INFO[s].transport})`);
  try {
    entry.scenarios[s] = await runScenario(broker, s, opts, files);
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    console.log(`  FAILED: ${why}`);
    entry.scenarios[s] = { main: [failed(why)], latency: [] };
  } finally {
    await broker.stop();
  }
}

/**
 * A connect scenario on every configuration at once: all brokers are started (each idle while
 * another is fed), warmed up, then measured in rounds, one run of each configuration per round,
 * the order rotated from round to round. Connect rates move with the host's speed by 30-50 %
 * within minutes here; run N of Portcullis and run N of a peer are seconds apart, so the report
 * can compare them pair by pair (Outcome.paired).
 */
async function runConnectRounds(s: ScenarioName, keys: { name: BrokerName; security: Security }[], results: Results, opts: RunOptions, pin: Pinning, files: BenchFiles): Promise<void> {
  const info = SCENARIO_INFO[s];
  const live: { key: string; broker: RunningBrokerProcess; endpoint: Endpoint; out: Outcome }[] = [];
  try {
    for (const { name, security } of keys) {
      const key = `${name}/${security}`;
      const entry = results[key]!;
      if (entry.unavailable !== undefined) continue;
      const broker = await startFor(name, security, s, entry, pin, files);
      if (broker === null) continue;
      const out: Outcome = { main: [], latency: [], paired: true };
      entry.scenarios[s] = out;
      live.push({ key, broker, endpoint: endpointFor(broker, info.transport, files), out });
    }
    console.log(`\n[${info.title}] ${live.length} configuration(s) started, measured in ${opts.connectRounds} round(s) of one run each`);
    // Warm-up also fills Portcullis's credential cache: later connects are "warm".
    if (opts.warmupMs > 0) {
      for (const l of live) {
        const w = await guarded(l.broker, () => connectSample(l.broker, l.endpoint, opts, opts.warmupMs));
        console.log(`  ${l.key.padEnd(22)}${'warm-up'.padEnd(14)}${w.detail}`);
      }
    }
    for (let r = 0; r < opts.connectRounds; r++) {
      for (let i = 0; i < live.length; i++) {
        const l = live[(i + r) % live.length]!;
        await waitIdle(opts.waitIdleS);
        const x = await guarded(l.broker, () => connectSample(l.broker, l.endpoint, opts, opts.durationMs));
        // Each configuration's runs stay in round order, whatever order a round fed them in.
        l.out.main[r] = x;
        console.log(`  ${l.key.padEnd(22)}${`round ${r + 1}/${opts.connectRounds}`.padEnd(14)}${x.detail}`);
      }
    }
  } finally {
    for (const l of live) await l.broker.stop();
  }
}

// ---------- main ----------

const opts = parseOptions();
const pin = setupPinning(opts.pin);
const startedAt = new Date();
const estimate = estimateSeconds(opts);
console.log(
  `Portcullis benchmark${opts.quick ? ' (quick)' : ''}: brokers ${opts.brokers.join(', ')}; security ${opts.security.join(', ')}; scenarios ${opts.scenarios.join(', ')}; ${opts.runs} run(s) × ${opts.durationMs / 1000} s`,
);
console.log(`Estimated duration: ~${Math.ceil(estimate / 60)} min (${Math.round(estimate)} s)`);
if (opts.dryRun) process.exit(0);
console.log(pin.note);
const loadBefore = await idleLoad();
console.log(`Background load: ${describeLoad(loadBefore)}`);
console.log('Making the PKI, password files and ACLs ...');
const files = await makeBenchFiles();
process.on('exit', () => files.cleanup()); // also on Ctrl-C, which ends the run through process.exit
const results: Results = {};
for (const b of opts.brokers) for (const sec of opts.security) results[`${b}/${sec}`] = { scenarios: {} };
try {
  // Scenario by scenario, every configuration in turn: the figures compared in one row are
  // measured minutes apart, not a whole broker's run apart, so drifting background load hurts less.
  for (const s of opts.scenarios) {
    if (SCENARIO_INFO[s].kind === 'connect') {
      await runConnectRounds(s, opts.brokers.flatMap((name) => opts.security.map((security) => ({ name, security }))), results, opts, pin, files);
      continue;
    }
    for (const b of opts.brokers) {
      for (const sec of opts.security) {
        const entry = results[`${b}/${sec}`]!;
        if (entry.unavailable !== undefined) continue;
        await runOne(b, sec, s, entry, opts, pin, files);
      }
    }
  }
} finally {
  files.cleanup();
}
const loadAfter = await idleLoad();
const md = report(opts, pin, results, startedAt, (Date.now() - startedAt.getTime()) / 1000, estimate, [loadBefore, loadAfter]);
console.log(`\n${md}`);
mkdirSync(path.dirname(opts.out), { recursive: true });
writeFileSync(opts.out, md);
console.log(`Report written to ${path.relative(process.cwd(), opts.out) || opts.out}`);

// The persistent-session scenarios: their own script (a broker per store, restarts, Mosquitto
// with persistence true), run after the rest so that neither part loads the other's brokers.
if (opts.persistence) {
  const args = opts.quick
    ? ['--rounds', '1', '--duration', '2', '--skip-restart', '--out', path.join(projectRoot, 'bench', 'results', 'quick-persistence.md')]
    : [];
  console.log(`\nPersistent sessions: bench/persistence.ts ${args.join(' ')}`);
  const build = spawnSync('npm', ['run', 'build', '--silent'], { cwd: projectRoot, stdio: 'inherit' });
  const run = build.status === 0 ? spawnSync(process.execPath, ['--import', 'tsx', path.join(projectRoot, 'bench', 'persistence.ts'), ...args], { cwd: projectRoot, stdio: 'inherit' }) : build;
  if (run.status !== 0) {
    console.error('bench: the persistent-session part failed');
    process.exitCode = 1;
  }
}
