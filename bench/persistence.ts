/**
 * Persistent sessions, side by side in one run (docs/performance.md, "Durable store"):
 *
 * 1. Throughput into a persistent session (the subscriber connects with clean session false):
 *    QoS 1 1→1 and QoS 1 fan-in 10→1, for Portcullis on its durable store (LMDB, every
 *    acknowledgement after a flushed commit), Portcullis on its memory store, and Mosquitto with
 *    `persistence true` (which writes a snapshot every 30 minutes and at shutdown, and acknowledges
 *    before anything is on disk), on its defaults and with `max_queued_messages 0` (its default
 *    queue limit of 1000 drops acknowledged QoS 1 messages under fan-in; the durable store drops
 *    none). Rounds rotate the order; medians and ratios are reported.
 * 2. Restart: 100,000 retained messages and 10,000 persistent sessions holding 100 queued 64-byte
 *    QoS 1 messages each, filled over MQTT; then the time from starting the process to its first
 *    CONNACK, after a clean stop (both) and after kill -9 (Portcullis; Mosquitto would have lost
 *    everything since its last snapshot). Also the store's size on disk per queued message.
 *
 *   npm run bench:persistence                     # 5 rounds of 5 s per throughput run, then the restart
 *   npm run bench:persistence -- --rounds 3 --skip-restart
 *   npm run bench:persistence -- --skip-throughput --sessions 10000 --queued 100 --retained 100000
 *   npm run bench:persistence -- --sides durable,memory --scenarios 1to1 --skip-restart   # a quick A/B
 *
 * Per-identity quotas are lifted for Portcullis here (every benchmark client is one anonymous
 * address, which shares one quota), as are the per-address connection caps.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { BrokerUnavailable, buildDist, DEFAULT_MOSQUITTO, HOST, mosquittoVersion, projectRoot, setupPinning, startBroker, type Persistence, type RunningBrokerProcess } from './lib/brokers.ts';
import { BenchClient } from './lib/client.ts';
import { PublishTemplate } from './lib/mqtt.ts';
import { runThroughput, type ThroughputSpec } from './lib/scenarios.ts';
import { endpointFor, makeBenchFiles } from './lib/security.ts';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '5' },
    duration: { type: 'string', default: '5' },
    sessions: { type: 'string', default: '10000' },
    queued: { type: 'string', default: '100' },
    retained: { type: 'string', default: '100000' },
    restarts: { type: 'string', default: '3' },
    'skip-throughput': { type: 'boolean', default: false },
    'skip-restart': { type: 'boolean', default: false },
    /** Only these sides of the throughput runs (comma-separated: durable, memory, mosquitto, mosquitto-unbounded). */
    sides: { type: 'string', default: 'durable,memory,mosquitto,mosquitto-unbounded' },
    /** Only these throughput scenarios (comma-separated: 1to1, fanin). */
    scenarios: { type: 'string', default: '1to1,fanin' },
    /** Keep the filled stores (their folders are printed), to look at or to start a broker on. */
    keep: { type: 'boolean', default: false },
    out: { type: 'string', default: path.join(import.meta.dirname, 'results', 'persistence.md') },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  console.log('Usage: npm run bench:persistence -- [--rounds 5] [--duration 5] [--sides durable,memory,mosquitto,mosquitto-unbounded] [--scenarios 1to1,fanin] [--sessions 10000] [--queued 100] [--retained 100000] [--restarts 3] [--skip-throughput] [--skip-restart] [--keep] [--out FILE]');
  process.exit(0);
}
const rounds = Number(values.rounds);
const durationMs = Number(values.duration) * 1000;
const SESSIONS = Number(values.sessions);
const QUEUED = Number(values.queued);
const RETAINED = Number(values.retained);
const RESTARTS = Number(values.restarts);
const median = (a: number[]): number => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)] as number;
const out: string[] = [`# Persistent sessions (${new Date().toISOString().slice(0, 10)}; Mosquitto ${mosquittoVersion() ?? 'not found'})`, ''];

// ── 1. throughput into a persistent session ────────────────────────────────────

type Side = { id: string; name: string; broker: 'portcullis' | 'mosquitto'; persistence: Persistence };
const ALL_SIDES: Side[] = [
  { id: 'durable', name: 'Portcullis, durable store', broker: 'portcullis', persistence: 'durable' },
  { id: 'memory', name: 'Portcullis, memory store', broker: 'portcullis', persistence: 'none' },
  { id: 'mosquitto', name: 'Mosquitto, persistence true', broker: 'mosquitto', persistence: 'durable' },
  // Its default queue limit (1000) drops acknowledged messages under fan-in: this one loses none.
  { id: 'mosquitto-unbounded', name: 'Mosquitto, persistence true, max_queued_messages 0', broker: 'mosquitto', persistence: 'durable-unbounded' },
];
const ALL_SCENARIOS: { id: string; name: string; spec: ThroughputSpec }[] = [
  { id: '1to1', name: 'QoS 1 1→1 into a persistent session', spec: { publishers: 1, subscribers: 1, qos: 1, topic: () => 'bench/p/qos1', filter: 'bench/p/qos1', payloadSize: 64, window: 200, durationMs, persistentSubscribers: true } },
  { id: 'fanin', name: 'QoS 1 fan-in 10→1 into a persistent session', spec: { publishers: 10, subscribers: 1, qos: 1, topic: (i) => `bench/p/fanin/${i}`, filter: 'bench/p/fanin/+', payloadSize: 64, window: 200, durationMs, persistentSubscribers: true } },
];
const pick = <T extends { id: string }>(all: T[], list: string, what: string): T[] => {
  const ids = list.split(',').map((x) => x.trim()).filter((x) => x !== '');
  for (const id of ids) if (!all.some((x) => x.id === id)) throw new Error(`unknown ${what} '${id}' (one of ${all.map((x) => x.id).join(', ')})`);
  return all.filter((x) => ids.includes(x.id));
};
const SIDES = pick(ALL_SIDES, values.sides, 'side');
const SCENARIOS = pick(ALL_SCENARIOS, values.scenarios, 'scenario');

const pin = setupPinning(true);
console.log(pin.note);
const files = await makeBenchFiles();

if (!values['skip-throughput']) {
  const rates = new Map<string, number[]>();
  const cpu = new Map<string, number[]>();
  /** Per round, for ratios taken within a round (both sides under the same machine load). */
  const byRound = new Map<string, Map<number, { rate: number; cpu: number | null }>>();
  const failures = new Map<string, string[]>();
  for (let r = 0; r < rounds; r++) {
    const order = [...SIDES];
    for (let i = 0; i < r % order.length; i++) order.push(order.shift() as Side);
    for (const sc of SCENARIOS) {
      for (const side of order) {
        let broker: RunningBrokerProcess | null = null;
        try {
          broker = await startBroker(side.broker, 'off', files, pin, side.persistence);
          const res = await runThroughput(broker, endpointFor(broker, 'tcp', files), sc.spec);
          const key = `${sc.name}|${side.name}`;
          if (!res.ok) {
            console.log(`round ${r + 1} ${sc.name}, ${side.name}: FAILED ${res.failure}`);
            (failures.get(key) ?? failures.set(key, []).get(key)!).push(res.failure ?? 'failed');
          } else {
            (byRound.get(key) ?? byRound.set(key, new Map()).get(key)!).set(r, { rate: res.deliveriesPerS, cpu: res.brokerCpu === null ? null : (res.brokerCpu * 1000) / res.deliveriesPerS });
            (rates.get(key) ?? rates.set(key, []).get(key)!).push(res.deliveriesPerS);
            if (res.brokerCpu !== null) (cpu.get(key) ?? cpu.set(key, []).get(key)!).push((res.brokerCpu * 1000) / res.deliveriesPerS);
            console.log(`round ${r + 1} ${sc.name}, ${side.name}: ${res.deliveriesPerS.toFixed(0)} msgs/s, broker CPU ${res.brokerCpu === null ? '?' : (res.brokerCpu * 100).toFixed(0)} %`);
          }
        } catch (e) {
          if (e instanceof BrokerUnavailable) console.log(`${side.name}: ${e.message.split('\n')[0]}`);
          else throw e;
        } finally {
          await broker?.stop();
        }
      }
    }
  }
  /** Median over the rounds of a (side a ÷ side b) ratio of some figure, taken within each round. */
  const roundRatio = (sc: string, a: Side, b: Side, figure: (x: { rate: number; cpu: number | null }) => number | null): string => {
    const ra = byRound.get(`${sc}|${a.name}`);
    const rb = byRound.get(`${sc}|${b.name}`);
    const ratios: number[] = [];
    for (const [round, x] of ra ?? []) {
      const y = rb?.get(round);
      const fx = figure(x);
      const fy = y === undefined ? null : figure(y);
      if (fx !== null && fy !== null && fy > 0) ratios.push(fx / fy);
    }
    return ratios.length === 0 ? '—' : `${median(ratios).toFixed(2)} (${ratios.map((x) => x.toFixed(2)).join(' ')})`;
  };
  const [durable, memory, mosquitto, unbounded] = ALL_SIDES as [Side, Side, Side, Side];
  out.push(`## Throughput into a persistent session (${rounds} rounds of ${durationMs / 1000} s, medians; security off; 64-byte payloads)`, '');
  out.push('| Scenario | ' + SIDES.map((s) => s.name).join(' | ') + ' |');
  out.push('|---|' + SIDES.map(() => '---|').join(''));
  for (const sc of SCENARIOS) {
    const cells = SIDES.map((side) => {
      const key = `${sc.name}|${side.name}`;
      const r = rates.get(key);
      const c = cpu.get(key);
      const failed = failures.get(key)?.length ?? 0;
      const figure = r && r.length > 0 ? `${median(r).toFixed(0)} msgs/s${c && c.length > 0 ? ` (${median(c).toFixed(4)} ms CPU/msg)` : ''}` : '—';
      return failed > 0 ? `${figure}; **failed ${failed} of ${rounds} rounds**: ${failures.get(key)?.[0]}` : figure;
    });
    out.push(`| ${sc.name} | ${cells.join(' | ')} |`);
  }
  out.push('', 'Ratios taken within each round (median, then every round):', '');
  out.push('| Scenario | durable ÷ Mosquitto, msgs/s | durable ÷ Mosquitto with max_queued_messages 0, msgs/s | durable ÷ memory, msgs/s | memory ÷ durable, broker CPU per message |');
  out.push('|---|---|---|---|---|');
  for (const sc of SCENARIOS) {
    out.push(`| ${sc.name} | ${roundRatio(sc.name, durable, mosquitto, (x) => x.rate)} | ${roundRatio(sc.name, durable, unbounded, (x) => x.rate)} | ${roundRatio(sc.name, durable, memory, (x) => x.rate)} | ${roundRatio(sc.name, memory, durable, (x) => x.cpu)} |`);
  }
  out.push('');
}

// ── 2. restart with a full store ────────────────────────────────────────────────

interface Proc {
  child: ChildProcess;
  port: number;
  dir: string;
}

function freePortSync(): number {
  const r = spawnSync(process.execPath, ['-e', "const s=require('net').createServer();s.listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"], { encoding: 'utf8' });
  return Number(r.stdout.trim());
}

const DIST_MAIN = path.join(projectRoot, 'dist', 'cli', 'main.js');

function portcullisStart(dir: string, port: number): ChildProcess {
  const config = {
    listeners: [{ name: 'tcp', type: 'tcp', host: HOST, port, auth: ['anonymous'] }],
    authorizers: ['allow-all'],
    store: { type: 'lmdb', path: path.join(dir, 'store') },
    audit: { sink: 'none' },
    log: { level: 'warn' },
    sys: { intervalSeconds: 0 },
    limits: {
      maxConnectionsPerIp: 100_000,
      connectRate: { perSecond: 0, burst: 1 },
      maxRetainedMessages: 10_000_000,
      quotas: { persistentSessions: 10_000_000, retainedMessages: 10_000_000, retainedBytes: 2 ** 40, queuedBytes: 2 ** 40, subscriptions: 10_000_000 },
    },
  };
  fs.writeFileSync(path.join(dir, 'portcullis.json'), JSON.stringify(config));
  // As `npm start` runs it: this tree's dist/, built once per benchmark (BENCH_PORTCULLIS_FROM=src: src/ through the TypeScript loader).
  const fromSrc = process.env.BENCH_PORTCULLIS_FROM === 'src';
  if (!fromSrc) buildDist();
  const main = fromSrc ? ['--import', 'tsx', path.join(projectRoot, 'src', 'cli', 'main.ts')] : [DIST_MAIN];
  // BENCH_BROKER_NODE_ARGS: extra Node flags, as for the other Node brokers (e.g. "--cpu-prof --cpu-prof-dir prof").
  const extra = (process.env.BENCH_BROKER_NODE_ARGS ?? '').split(' ').filter((a) => a !== '');
  return spawn(process.execPath, [...extra, ...main, 'start', '--config', path.join(dir, 'portcullis.json')], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
}

function mosquittoStart(dir: string, port: number): ChildProcess {
  const conf = path.join(dir, 'mosquitto.conf');
  fs.writeFileSync(conf, [...(process.getuid?.() === 0 ? ['user root'] : []), 'allow_anonymous true', 'persistence true', `persistence_location ${dir}/`, 'log_dest stderr', 'log_type error', `listener ${port} ${HOST}`, ''].join('\n'));
  return spawn(DEFAULT_MOSQUITTO, ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** Time from spawn to the first CONNACK (a connect is tried every 10 ms). */
async function timedStart(start: () => ChildProcess, port: number): Promise<{ child: ChildProcess; ms: number }> {
  const t0 = performance.now();
  const child = start();
  for (;;) {
    if (child.exitCode !== null) throw new Error(`the broker exited with ${child.exitCode}`);
    try {
      const c = await BenchClient.connect({ host: HOST, port }, `restart-probe-${Date.now()}`, 2000);
      const ms = performance.now() - t0;
      await c.close();
      return { child, ms };
    } catch {
      await new Promise((r) => setTimeout(r, 10));
    }
    if (performance.now() - t0 > 300_000) throw new Error('no CONNACK within 300 s');
  }
}

function stop(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill(signal);
  });
}

/** Publishes QoS 1 messages pipelined (up to `window` unacknowledged) and waits for every PUBACK. */
async function publishAll(port: number, count: number, topicOf: (i: number) => string, retain: boolean): Promise<void> {
  const pub = await BenchClient.connect({ host: HOST, port }, `fill-${Date.now()}`, 10_000, 600);
  let acked = 0;
  let sent = 0;
  const window = 1000;
  let wake: (() => void) | null = null;
  pub.callbacks = {
    onPuback: () => {
      acked++;
      if (wake !== null && (sent - acked < window / 2 || acked === count)) {
        const w = wake;
        wake = null;
        w();
      }
    },
  };
  while (sent < count) {
    const n = Math.min(window - (sent - acked), count - sent);
    if (n > 0) {
      const templates = Array.from({ length: n }, (_, k) => new PublishTemplate(topicOf(sent + k), 1, 64, retain));
      const buf = Buffer.allocUnsafe(templates.reduce((a, t) => a + t.packetSize, 0));
      let o = 0;
      for (let k = 0; k < n; k++) o = (templates[k] as PublishTemplate).write(buf, o, 0, sent + k, 0, ((sent + k) % 65535) + 1);
      pub.socket.write(buf);
      sent += n;
    }
    await new Promise<void>((r) => (wake = r));
  }
  while (acked < count) await new Promise<void>((r) => (wake = r));
  await pub.close();
}

async function fill(port: number): Promise<void> {
  const t0 = performance.now();
  for (let i = 0; i < SESSIONS; i += 100) {
    await Promise.all(
      Array.from({ length: Math.min(100, SESSIONS - i) }, async (_, k) => {
        const c = await BenchClient.connect({ host: HOST, port }, `persist-${i + k}`, 30_000, 600, false);
        await c.subscribe(1, `q/${i + k}`, 1, 30_000);
        await c.close();
      }),
    );
  }
  console.log(`  ${SESSIONS} persistent sessions in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const t1 = performance.now();
  await publishAll(port, RETAINED, (i) => `r/${i}`, true);
  console.log(`  ${RETAINED} retained messages in ${((performance.now() - t1) / 1000).toFixed(1)} s`);
  const t2 = performance.now();
  await publishAll(port, SESSIONS * QUEUED, (i) => `q/${i % SESSIONS}`, false);
  console.log(`  ${SESSIONS * QUEUED} queued messages in ${((performance.now() - t2) / 1000).toFixed(1)} s`);
}

/** Connects one session and counts what it was owed. */
async function owed(port: number, id: string): Promise<number> {
  let n = 0;
  const c = await BenchClient.connect({ host: HOST, port }, id, 10_000, 600, false, { onPublish: () => void n++ });
  await new Promise((r) => setTimeout(r, 1500));
  await c.close();
  return n;
}

function storeUsedBytes(dir: string): number {
  // As `npm start` runs it: this tree's dist/, built once per benchmark (BENCH_PORTCULLIS_FROM=src: src/ through the TypeScript loader).
  const fromSrc = process.env.BENCH_PORTCULLIS_FROM === 'src';
  if (!fromSrc) buildDist();
  const main = fromSrc ? ['--import', 'tsx', path.join(projectRoot, 'src', 'cli', 'main.ts')] : [DIST_MAIN];
  const r = spawnSync(process.execPath, [...main, 'store', 'stats', '--path', path.join(dir, 'store'), '--json'], { encoding: 'utf8' });
  return (JSON.parse(r.stdout) as { usedBytes: number }).usedBytes;
}

if (!values['skip-restart']) {
  const rows: string[] = [];
  for (const which of ['portcullis', 'mosquitto'] as const) {
    if (which === 'mosquitto' && !fs.existsSync(DEFAULT_MOSQUITTO)) continue;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), `portcullis-bench-restart-${which}-`));
    const port = freePortSync();
    const start = () => (which === 'portcullis' ? portcullisStart(dir, port) : mosquittoStart(dir, port));
    console.log(`${which}: filling`);
    let { child } = await timedStart(start, port);
    await fill(port);
    await stop(child, 'SIGTERM');
    const size = which === 'portcullis' ? storeUsedBytes(dir) : fs.statSync(path.join(dir, 'mosquitto.db')).size;
    const clean: number[] = [];
    const crash: number[] = [];
    for (let i = 0; i < RESTARTS; i++) {
      const s = await timedStart(start, port);
      clean.push(s.ms);
      child = s.child;
      if (which === 'portcullis') {
        await stop(child, 'SIGKILL');
        const k = await timedStart(start, port);
        crash.push(k.ms);
        child = k.child;
      }
      await stop(child, 'SIGTERM');
      console.log(`  restart ${i + 1}: ${clean.at(-1)?.toFixed(0)} ms after a clean stop${which === 'portcullis' ? `, ${crash.at(-1)?.toFixed(0)} ms after kill -9` : ''}`);
    }
    const s = await timedStart(start, port);
    const got = await owed(port, 'persist-0');
    await stop(s.child, 'SIGTERM');
    const perMessage = size / (SESSIONS * QUEUED + RETAINED);
    rows.push(
      `| ${which === 'portcullis' ? 'Portcullis (durable store)' : 'Mosquitto (persistence true)'} | ${median(clean).toFixed(0)} ms | ${crash.length > 0 ? `${median(crash).toFixed(0)} ms` : '— (loses what came after its last snapshot)'} | ${(size / 2 ** 20).toFixed(0)} MiB | ${perMessage.toFixed(0)} B | ${got} of ${QUEUED} |`,
    );
    if (values.keep) console.log(`  kept: ${dir}`);
    else fs.rmSync(dir, { recursive: true, force: true });
  }
  out.push(`## Restart with ${RETAINED.toLocaleString('en')} retained messages and ${SESSIONS.toLocaleString('en')} sessions × ${QUEUED} queued (64-byte payloads; medians of ${RESTARTS})`, '');
  out.push('| Broker | Start to first CONNACK, after a clean stop | after kill -9 | Store on disk | per stored message (queued + retained) | One session\'s queue after the restarts |');
  out.push('|---|---|---|---|---|---|');
  out.push(...rows, '');
}

fs.mkdirSync(path.dirname(values.out), { recursive: true });
fs.writeFileSync(values.out, out.join('\n'));
console.log(out.join('\n'));
files.cleanup();
