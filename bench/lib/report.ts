/**
 * The markdown report: targets from the performance issue, a summary of medians (min–max) per
 * broker and configuration with ratios, per-run details with loss and CPU, and warnings.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BROKERS, mosquittoVersion, projectRoot, sleep, systemBusySeconds, type BrokerName, type Pinning, type Security } from './brokers.ts';
import { SCENARIO_INFO, TARGETS, metricsOf, PAYLOAD, type MetricDef, type ScenarioName, type Target } from './plan.ts';
import { ACL_RULES, FLEET_USERS } from './security.ts';
import { connectGenerator } from './connections.ts';

export interface RunOptions {
  quick: boolean;
  waitIdleS: number;
  windows: Partial<Record<ScenarioName, number>>;
  runs: number;
  /** Rounds of the connect scenarios (one run of every configuration per round). */
  connectRounds: number;
  scenarios: ScenarioName[];
  brokers: BrokerName[];
  security: Security[];
  durationMs: number;
  warmupMs: number;
  rate: number;
  connections: number;
  memoryRuns: number;
  retained: number;
  concurrency: number;
  pin: boolean;
  /** Run bench/persistence.ts after the rest (`--no-persistence` skips it). */
  persistence: boolean;
  out: string;
  dryRun: boolean;
}

/** One measured run of any scenario. */
export interface Sample {
  ok: boolean;
  failure?: string;
  values: Record<string, number>;
  generatorCpu: number | null;
  brokerCpu: number | null;
  otherCpu: number | null;
  /** One line for the progress log. */
  detail: string;
}

export interface Outcome {
  main: Sample[];
  latency: Sample[];
  /** Measured in rounds with the other configurations: run N of each was taken in the same round. */
  paired?: boolean;
}

/** Keyed by `broker/security`. */
export type Results = Record<string, { unavailable?: string; scenarios: Partial<Record<ScenarioName, Outcome>> }>;

/** Generator CPU above this (fraction of its core) flags a number as possibly generator-bound. */
export const GENERATOR_LIMIT = 0.8;

// ---------- load ----------

/** CPU cores kept busy by other processes while the benchmark is idle (null without /proc). */
export async function idleLoad(ms = 1000): Promise<number | null> {
  const a = systemBusySeconds();
  const own = process.cpuUsage();
  await sleep(ms);
  const b = systemBusySeconds();
  if (a === null || b === null) return null;
  const mine = process.cpuUsage(own);
  return Math.max(0, ((b - a) * 1000 - (mine.user + mine.system) / 1000) / ms);
}

/** --wait-idle: until two consecutive 500 ms windows show other processes below 10 % of a CPU, or maxS passed. */
export async function waitIdle(maxS: number): Promise<void> {
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

export function describeLoad(load: number | null): string {
  if (load === null) return 'unknown (no /proc/stat)';
  return `${load.toFixed(2)} CPU busy with other processes${load > 0.15 ? ' — NOT idle: numbers will be noisy and low' : ' (idle)'}`;
}

// ---------- statistics ----------

interface Summary {
  value: { median: number; min: number; max: number } | null;
  failure?: string;
  generatorCpu: number | null;
  /** Largest fraction of deliveries lost in one run (QoS 0 may lose messages; it is shown, not failed). */
  maxLost?: number;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function summarize(runs: Sample[], key: string): Summary {
  if (runs.length === 0) return { value: null, failure: 'not run', generatorCpu: null };
  const bad = runs.filter((r) => !r.ok);
  if (bad.length > 0) return { value: null, failure: `FAILED (${bad.length}/${runs.length}): ${bad[0]!.failure}`, generatorCpu: null };
  const xs = runs.map((r) => r.values[key]).filter((x): x is number => x !== undefined && Number.isFinite(x));
  const gens = runs.map((r) => r.generatorCpu).filter((x): x is number => x !== null);
  const generatorCpu = gens.length ? median(gens) : null;
  if (xs.length === 0) return { value: null, failure: 'n/a', generatorCpu };
  const maxLost = Math.max(0, ...runs.map((r) => r.values.lostFraction ?? 0));
  return { value: { median: median(xs), min: Math.min(...xs), max: Math.max(...xs) }, generatorCpu, ...(maxLost > 0 ? { maxLost } : {}) };
}

const int = (x: number): string => Math.round(x).toLocaleString('en-US');
const ms = (x: number): string => (Number.isFinite(x) ? (x < 10 ? x.toFixed(3) : x.toFixed(1)) : 'n/a');
const kib = (x: number): string => x.toFixed(2);
const pct = (x: number | null): string => (x === null ? 'n/a' : `${Math.round(x * 100)}%`);
const fmtOf = (m: MetricDef): ((x: number) => string) => (m.unit === 'ms' ? ms : m.unit === 'KiB' ? kib : int);
const esc = (s: string): string => s.replaceAll('|', '\\|').replaceAll('\n', ' ');

function cell(s: Summary, f: (x: number) => string): string {
  if (s.value === null) return esc(s.failure ?? 'n/a').slice(0, 160);
  const gen = s.generatorCpu !== null && s.generatorCpu > GENERATOR_LIMIT ? ` ⚠ gen ${pct(s.generatorCpu)}` : '';
  const lost = s.maxLost !== undefined ? ` (QoS 0 lost ≤ ${(s.maxLost * 100).toFixed(2)}%)` : '';
  return `${f(s.value.median)} (${f(s.value.min)}–${f(s.value.max)})${gen}${lost}`;
}

const NAMES: Record<BrokerName, string> = { portcullis: 'Portcullis', aedes: 'Aedes', mosquitto: 'Mosquitto' };
const label = (key: string): string => {
  const [b, s] = key.split('/') as [BrokerName, Security];
  return `${NAMES[b]} ${s}`;
};

// ---------- report ----------

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

export function report(opts: RunOptions, pin: Pinning, results: Results, startedAt: Date, wallS: number, estimateS: number, loads: [number | null, number | null]): string {
  const L: string[] = [];
  const ran = Object.keys(results).filter((k) => results[k]!.unavailable === undefined);
  const get = (key: string, s: ScenarioName): Outcome | undefined => results[key]?.scenarios[s];
  const sum = (key: string, m: MetricDef): Summary => summarize(get(key, m.scenario)?.[m.part] ?? [], m.key);

  L.push(`# Portcullis benchmark${opts.quick ? ' (quick run: indicative only)' : ''}`, '');
  L.push(`- Date: ${startedAt.toISOString()}; wall time ${Math.round(wallS)} s (estimated ${Math.round(estimateS)} s)`);
  L.push(`- Machine: ${os.cpus()[0]?.model ?? 'unknown CPU'}, ${os.cpus().length} CPUs, ${os.type()} ${os.release()}, Node ${process.version}`);
  L.push(`- CPU pinning: ${pin.note}`);
  L.push(`- Background load: before ${describeLoad(loads[0])}; after ${describeLoad(loads[1])}${opts.waitIdleS > 0 ? `; each run waited up to ${opts.waitIdleS} s for a quiet machine (--wait-idle)` : ''}`);
  L.push(`- Portcullis ${pkgVersion(path.join(projectRoot, 'package.json'))} at ${gitDescribe()}; Aedes ${pkgVersion(path.join(projectRoot, 'node_modules', 'aedes', 'package.json'))}; Mosquitto ${mosquittoVersion() ?? 'not installed'}`);
  L.push(
    `- ${opts.runs} measured run(s) per scenario after ${opts.warmupMs / 1000} s warm-up; ${opts.durationMs / 1000} s per run; ${PAYLOAD} B payloads; MQTT 3.1.1; ` +
      `latency paced at ${opts.rate} msg/s; ${opts.concurrency} parallel connect loops; ${int(opts.connections)} idle connections (${opts.memoryRuns} measurement(s)); ${int(opts.retained)} retained messages; ` +
      `windows ${Object.entries(opts.windows).filter(([k]) => opts.scenarios.includes(k as ScenarioName)).map(([k, v]) => `${k}=${v}`).join(', ')}`,
  );
  if (opts.scenarios.some((s) => SCENARIO_INFO[s].kind === 'connect')) {
    const gen = connectGenerator();
    L.push(
      gen.path === null
        ? `- Connects: Node loops in the benchmark process (the C load generator was not used: ${gen.why}).`
        : gen.tls
          ? '- Connects (plain TCP, TLS and mTLS): the C load generator (bench/gen/connect.c, one epoll thread, OpenSSL for TLS with full handshakes and no session resumption, built with the system C compiler).'
          : `- Plain TCP connects: the C load generator (bench/gen/connect.c, one epoll thread, built with the system C compiler); TLS and mTLS connects: Node loops in the benchmark process (the C generator was built without TLS: ${gen.tlsWhy}).`,
    );
  }
  if (opts.scenarios.some((s) => SCENARIO_INFO[s].kind === 'connect')) {
    L.push(
      `- Connect scenarios run in ${opts.connectRounds} rounds: every configuration is started at once (idle while another is fed), and each round measures one run of each, in rotated order. A target ratio for them is the median of the per-round ratios, so both sides of each pair ran seconds apart on the same host; the ratio of the two medians is shown beside it.`,
    );
  }
  L.push(
    `- **Security off**: anonymous, allow-all, no audit (Portcullis \`authorizers: [allow-all]\`, \`audit.sink: none\`; Mosquitto \`allow_anonymous true\`; Aedes without hooks); the mTLS listener still requires a client certificate (Portcullis: \`certificate\` provider).`,
  );
  L.push(
    `- **Security on**: ${FLEET_USERS + 1} users and ${int(ACL_RULES)} ACL rules, the bench user allowed its topics. Portcullis: argon2id password file (m=19 MiB, t=2, p=1) with the **credential cache on** (\`credentialCache.enabled\`), Casbin policy of ${int(ACL_RULES)} lines, default audit (denials, connects, subscribes) to a file; mTLS: \`certificate\` provider + the same policy. ` +
      `Mosquitto: \`password_file\` (mosquitto_passwd, PBKDF2-SHA512) + \`acl_file\` with ${int(ACL_RULES)} topic lines; mTLS: \`use_identity_as_username\`. ` +
      `Aedes: authenticate / authorizePublish / authorizeSubscribe hooks with salted SHA-256 passwords (much cheaper than argon2id or PBKDF2) and the same rules in memory; mTLS: the certificate CN as user.`,
  );
  L.push('- Portcullis in both modes: per-address connection caps and the connect rate limit lifted (every client comes from 127.0.0.1).');
  L.push(`- Values: median (min–max) over the runs. ⚠ gen N%: the load generator used more than ${pct(GENERATOR_LIMIT)} of its CPU, so the number may be generator-bound. A run with unexpected loss or duplicates is FAILED, not a number.`);
  L.push('');
  for (const [k, r] of Object.entries(results)) if (r.unavailable !== undefined) L.push(`> **${label(k)} skipped:** ${esc(r.unavailable)}`, '');

  // Targets
  L.push('## Targets (from the performance issue)', '');
  L.push('| Target | Portcullis | Reference | Ratio | Verdict |');
  L.push('|---|---:|---:|---:|---|');
  for (const t of TARGETS) {
    if (!opts.scenarios.includes(t.scenario)) continue;
    L.push(targetRow(t, opts, results, ran, sum, get));
  }
  L.push('');

  // Summary
  const metrics = opts.scenarios.flatMap((s) => metricsOf(s, opts.rate));
  const peers = (['aedes', 'mosquitto'] as const).filter((b) => opts.brokers.includes(b));
  const ratioCols: { head: string; value: (m: MetricDef) => string }[] = [];
  for (const sec of opts.security) {
    const p = `portcullis/${sec}`;
    if (!ran.includes(p)) continue;
    for (const b of peers) {
      const q = `${b}/${sec}`;
      if (ran.includes(q)) ratioCols.push({ head: `P/${NAMES[b]} (${sec})`, value: (m) => ratio(sum(p, m), sum(q, m)) });
    }
    if (sec === 'on' && peers.filter((b) => ran.includes(`${b}/on`)).length > 1) {
      ratioCols.push({
        head: 'P on / best peer on',
        value: (m) => {
          const best = bestPeer(m, 'on', ran, sum);
          return best ? `${ratio(sum(p, m), best.summary)} (${NAMES[best.broker]})` : 'n/a';
        },
      });
    }
  }
  L.push('## Summary', '');
  L.push('Ratios are Portcullis ÷ peer, medians: for msgs/s and connects/s higher is better; for ms and KiB lower is better.', '');
  L.push(`| Scenario | ${ran.map(label).join(' | ')} |${ratioCols.map((c) => ` ${c.head} |`).join('')}`);
  L.push(`|---|${ran.map(() => '---:').join('|')}|${ratioCols.map(() => '---:|').join('')}`);
  for (const m of metrics) {
    L.push(`| ${m.label}${m.higherIsBetter ? '' : ' (lower is better)'} | ${ran.map((k) => cell(sum(k, m), fmtOf(m))).join(' | ')} |${ratioCols.map((c) => ` ${c.value(m)} |`).join('')}`);
  }
  L.push('');

  // Details
  const warnings: string[] = [];
  L.push('## Details', '');
  L.push('| Configuration | Scenario | Runs | Lost | Duplicates | Generator CPU | Broker CPU | Other CPU | Extra |');
  L.push('|---|---|---:|---:|---:|---:|---:|---:|---|');
  for (const k of ran) {
    for (const s of opts.scenarios) {
      const o = get(k, s);
      if (!o) continue;
      for (const [part, runs] of [['main', o.main], ['latency', o.latency]] as const) {
        if (runs.length === 0) continue;
        const ok = runs.filter((r) => r.ok);
        const f = (xs: (number | null | undefined)[], fmt: (x: number) => string): string => {
          const v = xs.filter((x): x is number => typeof x === 'number' && Number.isFinite(x));
          return v.length ? `${fmt(median(v))} (${fmt(Math.min(...v))}–${fmt(Math.max(...v))})` : 'n/a';
        };
        const name = `${s}${part === 'latency' ? ' latency' : ''}`;
        const extra =
          SCENARIO_INFO[s].kind === 'memory'
            ? `RSS ${f(ok.map((r) => r.values.beforeMb), (x) => x.toFixed(1))} → ${f(ok.map((r) => r.values.afterMb), (x) => x.toFixed(1))} MiB${ok.some((r) => r.values.kbNoGc !== undefined) ? ` after GC; without GC ${f(ok.map((r) => r.values.kbNoGc), kib)} KiB per connection` : ''}`
            : SCENARIO_INFO[s].kind === 'throughput' && part === 'main'
              ? `${f(ok.map((r) => r.values.publishes), int)} publishes/s`
              : part === 'latency'
                ? `max ${f(ok.map((r) => r.values.max), ms)} ms at ${f(ok.map((r) => r.values.achieved), int)} msg/s`
                : SCENARIO_INFO[s].kind === 'retained'
                  ? `${f(ok.map((r) => r.values.rate), int)} msgs/s`
                  : '';
        const lostFrac = ok.map((r) => r.values.lostFraction ?? 0);
        L.push(
          `| ${label(k)} | ${name} | ${ok.length}/${runs.length} ok | ${f(ok.map((r) => r.values.lost), int)}${lostFrac.some((x) => x > 0) ? ` (max ${(Math.max(...lostFrac) * 100).toFixed(2)}%)` : ''} | ${f(ok.map((r) => r.values.duplicates), int)} | ${f(ok.map((r) => r.generatorCpu), pct)} | ${f(ok.map((r) => r.brokerCpu), pct)} | ${f(ok.map((r) => r.otherCpu), pct)} | ${extra} |`,
        );
        for (const r of runs) if (!r.ok) warnings.push(`${label(k)} ${name}: run FAILED: ${r.failure}`);
        const gens = ok.map((r) => r.generatorCpu).filter((x): x is number => x !== null);
        const brks = ok.map((r) => r.brokerCpu).filter((x): x is number => x !== null);
        const others = ok.map((r) => r.otherCpu).filter((x): x is number => x !== null);
        if (gens.length && median(gens) > GENERATOR_LIMIT) {
          warnings.push(`${label(k)} ${name}: the load generator used ${pct(median(gens))} of its CPU (broker ${brks.length ? pct(median(brks)) : 'n/a'}): the number may be generator-bound${brks.length && median(brks) > 0.95 ? ', although the broker was saturated too' : ''}.`);
        }
        if (others.length && Math.max(...others) > 0.15) warnings.push(`${label(k)} ${name}: other processes used up to ${pct(Math.max(...others))} of a CPU: the machine was not idle, numbers are noisy.`);
      }
    }
  }
  L.push('');
  if (warnings.length) {
    L.push('## Warnings', '');
    for (const w of warnings) L.push(`- ${esc(w)}`);
    L.push('');
  }
  L.push(
    'CPU figures are fractions of one core over each run (user + system). Broker CPU near 100% means the broker is the bottleneck, as intended; "Other CPU" is everything else on the machine during the run (should be near 0%). Broker CPU per connect is the broker\'s CPU time divided by completed connects: less sensitive to a busy generator than connects/s.',
  );
  return L.join('\n') + '\n';
}

function ratio(a: Summary, b: Summary | undefined): string {
  if (!a.value || !b?.value || b.value.median === 0) return 'n/a';
  const r = a.value.median / b.value.median;
  return `${r < 0.1 ? r.toPrecision(2) : r.toFixed(2)}×`;
}

function bestPeer(m: MetricDef, sec: Security, ran: string[], sum: (k: string, m: MetricDef) => Summary): { broker: BrokerName; summary: Summary } | null {
  let best: { broker: BrokerName; summary: Summary } | null = null;
  for (const b of BROKERS) {
    if (b === 'portcullis' || !ran.includes(`${b}/${sec}`)) continue;
    const s = sum(`${b}/${sec}`, m);
    if (!s.value) continue;
    if (best === null || (m.higherIsBetter ? s.value.median > best.summary.value!.median : s.value.median < best.summary.value!.median)) best = { broker: b, summary: s };
  }
  return best;
}

/**
 * For outcomes measured in rounds (Outcome.paired): the median over the rounds of a ÷ b, each
 * round's pair taken seconds apart. Rounds where either run failed are left out.
 */
function pairedRatio(a: Outcome | undefined, b: Outcome | undefined, m: MetricDef): { median: number; rounds: number } | null {
  if (a?.paired !== true || b?.paired !== true) return null;
  const xs = a[m.part];
  const ys = b[m.part];
  const rs: number[] = [];
  for (let i = 0; i < Math.min(xs.length, ys.length); i++) {
    const x = xs[i]?.ok ? xs[i]!.values[m.key] : undefined;
    const y = ys[i]?.ok ? ys[i]!.values[m.key] : undefined;
    if (x !== undefined && y !== undefined && Number.isFinite(x) && Number.isFinite(y) && y > 0) rs.push(x / y);
  }
  return rs.length === 0 ? null : { median: median(rs), rounds: rs.length };
}

function targetRow(t: Target, opts: RunOptions, results: Results, ran: string[], sum: (k: string, m: MetricDef) => Summary, get: (key: string, s: ScenarioName) => Outcome | undefined): string {
  const m = metricsOf(t.scenario, opts.rate).find((x) => x.key === t.key && x.part === t.part)!;
  const f = fmtOf(m);
  const p = `portcullis/${t.security}`;
  const na = (why: string): string => `| ${t.text} | n/a | n/a | n/a | not measured: ${why} |`;
  if (!ran.includes(p)) return na(`Portcullis security ${t.security} did not run`);
  const ps = sum(p, m);
  if (!ps.value) return `| ${t.text} | ${esc(ps.failure ?? 'n/a').slice(0, 120)} | | | **FAILED** |`;
  const gen = ps.generatorCpu !== null && ps.generatorCpu > GENERATOR_LIMIT ? ' (⚠ generator-bound?)' : '';
  const v = ps.value.median;
  if (t.against === 'absolute') {
    const pass = t.atLeast ? v >= t.bound : v <= t.bound;
    return `| ${t.text} | ${f(v)} | ${t.atLeast ? '≥' : '≤'} ${f(t.bound)} | | ${pass ? 'PASS' : '**MISS**'}${gen} |`;
  }
  let ref: { broker: BrokerName; summary: Summary } | null;
  if (t.against === 'best-peer') ref = bestPeer(m, t.security, ran, sum);
  else ref = ran.includes(`${t.against}/${t.security}`) && sum(`${t.against}/${t.security}`, m).value ? { broker: t.against, summary: sum(`${t.against}/${t.security}`, m) } : null;
  if (ref === null) return `| ${t.text} | ${f(v)} | n/a | n/a | not measured: no ${t.against === 'best-peer' ? 'peer' : NAMES[t.against]} result for security ${t.security}${results[`${t.against}/${t.security}`]?.unavailable ? ' (skipped)' : ''} |`;
  const ofMedians = v / ref.summary.value!.median;
  // Measured in rounds: the verdict uses the median of the per-round ratios, which a host that
  // changes speed between rounds moves far less than a ratio of two medians.
  const paired = pairedRatio(get(p, t.scenario), get(`${ref.broker}/${t.security}`, t.scenario), m);
  const r = paired?.median ?? ofMedians;
  const how = paired === null ? '' : ` (median of ${paired.rounds} paired rounds; ratio of medians ${ofMedians.toFixed(2)}×)`;
  const pass = t.atLeast ? r >= t.bound : r <= t.bound;
  return `| ${t.text} | ${f(v)} | ${f(ref.summary.value!.median)} (${NAMES[ref.broker]} ${t.security}) | ${r.toFixed(2)}×${how} | ${pass ? 'PASS' : '**MISS**'}${gen} |`;
}
