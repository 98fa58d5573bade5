/**
 * Cluster benchmark: `npm run bench:cluster -- [--runs N] [--messages N] [--seconds S] [--out FILE]`.
 *
 * Measures what the cluster costs, in CPU rather than only rates (the machine is small and
 * shared, so rates say little; CPU per message is what a deployment divides its cores by):
 *
 * Options: --only cpu|workers runs one part; --qos 0|1 one QoS of the first part.
 *
 * 1. Broker CPU per message, local against cross-node: two broker processes (nodes a and b)
 *    on one Redis; a publisher on a; the subscriber on a (local) or on b (cross-node). QoS 0 and
 *    QoS 1. Broker CPU is both processes' user+system time (from /proc) over the messages
 *    delivered; Redis commands and Redis CPU per publish come from INFO before and after. Each
 *    run's log line also gives the brokers' system (kernel) CPU and context switches per message,
 *    and the messages per XADD (per frame written), XREAD and XTRIM (INFO commandstats): what
 *    the per-frame costs are shared among. BENCH_BROKER_NODE_ARGS passes Node options to the
 *    brokers (for a profile: `--cpu-prof --cpu-prof-dir=<absolute folder>`, written when they stop).
 * 2. `workers: 2` against `workers: 1` (and a single node without a cluster): connects per second
 *    (CONNECT, CONNACK, DISCONNECT in parallel loops) and QoS 0 fan-in (8 publishers, 1
 *    subscriber) with the CPU of every broker process per message.
 *
 * Every figure is the median of --runs runs (default 3), each on fresh processes and a fresh
 * Redis (append-only, fsync every second, as most deployments run it). Writes a markdown report
 * (default bench/results/cluster.md). Brokers: memory store, no audit, anonymous with allow-all:
 * what is measured is the cluster, not the security pipeline (measured elsewhere, bench/README.md).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { BenchClient } from './lib/client.ts';
import { freePort, procCpuSeconds, projectRoot, sleep } from './lib/brokers.ts';
import { PublishTemplate } from './lib/mqtt.ts';
import { startRedis, type RedisServer } from '../test/redis-server.ts';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    messages: { type: 'string', default: '20000' },
    seconds: { type: 'string', default: '4' },
    out: { type: 'string', default: path.join(projectRoot, 'bench', 'results', 'cluster.md') },
    only: { type: 'string' },
    qos: { type: 'string' },
  },
});
const RUNS = Number(values.runs);
const MESSAGES = Number(values.messages);
const SECONDS = Number(values.seconds);
const HOST = '127.0.0.1';

interface Broker {
  child: ChildProcess;
  port: number;
  dir: string;
  /** The processes doing MQTT work: the broker, or with workers each worker. */
  pids(): number[];
  stop(): Promise<void>;
}


async function startBroker(config: Record<string, unknown>, workers: number): Promise<Broker> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-bench-cluster-'));
  const port = await freePort();
  const full = {
    listeners: [{ name: 'tcp', type: 'tcp', host: HOST, port, auth: ['anonymous'] }],
    authorizers: ['allow-all'],
    store: { type: 'memory' },
    audit: { sink: 'none' },
    sys: { intervalSeconds: 0 },
    log: { level: 'warn' },
    // The connect rate and per-address cap are off (one address makes every connect); queue limits are the defaults.
    limits: { connectRate: { perSecond: 0, burst: 1 }, maxConnectionsPerIp: 1_000_000 },
    ...config,
  };
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(full));
  const child = spawn(process.execPath, [...(process.env.BENCH_BROKER_NODE_ARGS ?? '').split(' ').filter(Boolean), '--import', import.meta.resolve('tsx'), path.join(projectRoot, 'src', 'cli', 'main.ts'), 'start', '--config', path.join(dir, 'config.json')], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const until = Date.now() + 30_000;
  // With workers, wait until every worker listens (each logs nothing at warn: poll connects until N distinct are possible is not visible; wait for the workers to exist, then a settle time).
  for (;;) {
    if (child.exitCode !== null || Date.now() > until) throw new Error(`broker did not start: ${err}`);
    const ok = await new Promise<boolean>((r) => {
      const s = net.connect({ host: HOST, port }, () => (s.destroy(), r(true)));
      s.once('error', () => r(false));
    });
    if (ok && (workers <= 1 || childPids(child.pid as number).length >= workers)) break;
    await sleep(100);
  }
  if (workers > 1) await sleep(1500); // the other workers finish joining and listening
  return {
    child,
    port,
    dir,
    pids: () => (workers > 1 ? childPids(child.pid as number) : [child.pid as number]),
    stop: async () => {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await Promise.race([exited, sleep(10_000)]);
        if (child.exitCode === null) child.kill('SIGKILL');
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

function childPids(pid: number): number[] {
  try {
    return execFileSync('ps', ['-o', 'pid=', '--ppid', String(pid)]).toString().trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function cpu(pids: number[]): number {
  return pids.reduce((s, p) => s + (procCpuSeconds(p) ?? 0), 0);
}

/** The system (kernel) part of {@link cpu}, for the log: sockets to Redis cost the kernel as much as the broker. */
function systemCpu(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      ticks += Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[12]);
    } catch {
      // not on Linux, or gone
    }
  }
  return ticks / 100; // USER_HZ
}

/** Context switches of the processes (voluntary: waiting on a socket; involuntary: preempted), for the log. */
function contextSwitches(pids: number[]): { voluntary: number; involuntary: number } {
  let voluntary = 0;
  let involuntary = 0;
  for (const pid of pids) {
    try {
      const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
      voluntary += Number(/^voluntary_ctxt_switches:\s*(\d+)/m.exec(status)?.[1] ?? 0);
      involuntary += Number(/^nonvoluntary_ctxt_switches:\s*(\d+)/m.exec(status)?.[1] ?? 0);
    } catch {
      // not on Linux, or gone
    }
  }
  return { voluntary, involuntary };
}

async function redisInfo(r: RedisServer): Promise<{ calls: number; cpu: number; byCommand: Map<string, number> }> {
  const stats = await r.command('INFO', 'stats');
  const cpuInfo = await r.command('INFO', 'cpu');
  const commandStats = await r.command('INFO', 'commandstats');
  const calls = Number(/total_commands_processed:(\d+)/.exec(stats)?.[1] ?? 0);
  const user = Number(/used_cpu_user:([\d.]+)/.exec(cpuInfo)?.[1] ?? 0);
  const sys = Number(/used_cpu_sys:([\d.]+)/.exec(cpuInfo)?.[1] ?? 0);
  const byCommand = new Map<string, number>();
  for (const m of commandStats.matchAll(/cmdstat_([a-z|]+):calls=(\d+)/g)) byCommand.set(m[1] as string, Number(m[2]));
  return { calls, cpu: user + sys, byCommand };
}

/** Messages per call of each bus command (XADD: messages per frame written), for the log. */
function perCommand(r0: Map<string, number>, r1: Map<string, number>, messages: number): string {
  const out: string[] = [];
  for (const name of ['xadd', 'evalsha', 'xread', 'xtrim']) {
    const n = (r1.get(name) ?? 0) - (r0.get(name) ?? 0);
    if (n > 0) out.push(`${name} ${fmt(messages / n, 0)}`);
  }
  return out.length === 0 ? '' : `, messages per ${out.join(', ')}`;
}

function keyFile(dir: string): string {
  const f = path.join(dir, 'cluster.keys');
  fs.writeFileSync(f, `k1 ${randomBytes(32).toString('base64')}\n`, { mode: 0o600 });
  return f;
}

function clusterSection(redis: RedisServer, key: string, nodeId: string): Record<string, unknown> {
  return { cluster: { redis: { url: redis.url }, keyFile: key, nodeId, name: 'bench', leaseMs: 5000 } };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 === 1 ? (s[(s.length - 1) / 2] as number) : ((s[s.length / 2 - 1] as number) + (s[s.length / 2] as number)) / 2;
};

/** Sends `count` messages from `pub`, at most `window` not yet received by the subscriber (and for QoS 1, PUBACKed). */
async function pump(pub: BenchClient, sub: BenchClient, topic: string, qos: 0 | 1, count: number, window: number, received: () => number): Promise<number> {
  const tpl = new PublishTemplate(topic, qos, 64);
  let sent = 0;
  let acked = 0;
  pub.callbacks.onPuback = () => acked++;
  void sub;
  const started = performance.now();
  // A run that stops making progress is a failure to report, not a hang.
  let progressAt = Date.now();
  let last = -1;
  const stalled = (what: string) => new Error(`${what}: no progress for 15 s (sent ${sent}, acknowledged ${acked}, received ${received()} of ${count})`);
  while (sent < count) {
    // Paced end to end by what the subscriber received (and for QoS 1 also by PUBACKs), local
    // and cross-node alike: what is measured is the cost of a message, not of flow control
    // (which holds a publisher one bus round trip late across nodes, docs/cluster.md).
    const done = qos === 0 ? received() : Math.min(acked, received());
    if (done !== last) {
      last = done;
      progressAt = Date.now();
    } else if (Date.now() - progressAt > 15_000) throw stalled(`QoS ${qos} to ${topic}`);
    const room = Math.min(window - (sent - done), count - sent, 256);
    if (room <= 0) {
      await sleep(1);
      continue;
    }
    const buf = Buffer.allocUnsafe(room * tpl.packetSize);
    let o = 0;
    for (let i = 0; i < room; i++) o = tpl.write(buf, o, 0, sent + i, performance.now(), ((sent + i) % 65535) + 1);
    sent += room;
    pub.socket.write(buf);
    await new Promise((r) => setImmediate(r));
  }
  const deadline = Date.now() + 15_000;
  while (received() < count) {
    if (Date.now() > deadline) throw stalled(`QoS ${qos} to ${topic}, waiting for the last deliveries`);
    await sleep(5);
  }
  return (performance.now() - started) / 1000;
}

interface CpuRow {
  scenario: string;
  qos: 0 | 1;
  rate: number;
  brokerUsPerMsg: number;
  redisCmdsPerMsg: number;
  redisUsPerMsg: number;
  /** For the log: messages per call of each bus command. */
  commands: string;
}

async function cpuPerMessage(qos: 0 | 1, cross: boolean): Promise<CpuRow> {
  const redis = await startRedis({ args: ['--appendfsync', 'everysec'] });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-bench-keys-'));
  const key = keyFile(dir);
  const a = await startBroker(clusterSection(redis, key, 'a'), 1);
  const b = await startBroker(clusterSection(redis, key, 'b'), 1);
  try {
    const sub = await BenchClient.connect({ host: HOST, port: (cross ? b : a).port }, 'sub');
    let received = 0;
    sub.callbacks.onPublish = () => received++;
    await sub.subscribe(1, 'bench/#', qos);
    const pub = await BenchClient.connect({ host: HOST, port: a.port }, 'pub');
    // Warm-up (JIT, connections), not measured.
    await pump(pub, sub, 'bench/x', qos, 2000, 256, () => received);
    received = 0;
    await sleep(300);
    const pids = [...a.pids(), ...b.pids()];
    const cpu0 = cpu(pids);
    const sys0 = systemCpu(pids);
    const cs0 = contextSwitches(pids);
    const r0 = await redisInfo(redis);
    const secs = await pump(pub, sub, 'bench/x', qos, MESSAGES, qos === 0 ? 1000 : 256, () => received);
    const cpu1 = cpu(pids);
    const sys1 = systemCpu(pids);
    const cs1 = contextSwitches(pids);
    const r1 = await redisInfo(redis);
    pub.disconnect();
    sub.disconnect();
    return {
      scenario: cross ? 'cross-node (publisher on a, subscriber on b)' : 'local (publisher and subscriber on a)',
      qos,
      rate: received / secs,
      brokerUsPerMsg: ((cpu1 - cpu0) * 1e6) / received,
      redisCmdsPerMsg: (r1.calls - r0.calls - 3) / received, // the three INFO commands of the first reading
      redisUsPerMsg: ((r1.cpu - r0.cpu) * 1e6) / received,
      commands: `, system ${fmt(((sys1 - sys0) * 1e6) / received, 1)} µs/msg, context switches per 1,000 msgs ${fmt(((cs1.voluntary - cs0.voluntary) * 1000) / received, 1)} + ${fmt(((cs1.involuntary - cs0.involuntary) * 1000) / received, 1)} preempted${perCommand(r0.byCommand, r1.byCommand, received)}`,
    };
  } finally {
    await a.stop();
    await b.stop();
    await redis.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

interface WorkerRow {
  config: string;
  connectsPerSec: number;
  fanInRate: number;
  fanInUsPerMsg: number;
}

async function connectsPerSecond(port: number, seconds: number, loops: number): Promise<number> {
  let n = 0;
  const end = Date.now() + seconds * 1000;
  let i = 0;
  await Promise.all(
    Array.from({ length: loops }, async () => {
      while (Date.now() < end) {
        const c = await BenchClient.connect({ host: HOST, port }, `conn-${i++}`).catch(() => null);
        if (c === null) continue;
        n++;
        await c.close();
      }
    }),
  );
  return n / seconds;
}

async function fanIn(port: number, seconds: number, publishers: number, pids: () => number[]): Promise<{ rate: number; usPerMsg: number }> {
  const sub = await BenchClient.connect({ host: HOST, port }, 'fan-sub');
  let received = 0;
  sub.callbacks.onPublish = () => received++;
  await sub.subscribe(1, 'fan/#', 0);
  const pubs = await Promise.all(Array.from({ length: publishers }, (_, i) => BenchClient.connect({ host: HOST, port }, `fan-pub-${i}`)));
  const tpl = pubs.map((_, i) => new PublishTemplate(`fan/${i}`, 0, 64));
  let sent = 0;
  let stop = false;
  const run = async (measure: boolean) => {
    stop = false;
    const loops = pubs.map(async (p, i) => {
      while (!stop) {
        // Keep about 2,000 messages in the pipe in all (QoS 0 has no acknowledgement to pace by).
        if (sent - received > 2000) {
          await sleep(1);
          continue;
        }
        const t = tpl[i] as PublishTemplate;
        const buf = Buffer.allocUnsafe(50 * t.packetSize);
        let o = 0;
        for (let k = 0; k < 50; k++) o = t.write(buf, o, i, sent + k, 0);
        sent += 50;
        p.socket.write(buf);
        await new Promise((r) => setImmediate(r));
      }
    });
    const r0 = received;
    const c0 = cpu(pids());
    const t0 = performance.now();
    await sleep((measure ? seconds : 1) * 1000);
    stop = true;
    await Promise.all(loops);
    const secs = (performance.now() - t0) / 1000;
    const got = received - r0;
    return { rate: got / secs, usPerMsg: ((cpu(pids()) - c0) * 1e6) / Math.max(1, got) };
  };
  await run(false); // warm-up
  await sleep(500);
  sent = received;
  const r = await run(true);
  for (const p of pubs) p.disconnect();
  sub.disconnect();
  return r;
}

async function workersRun(label: string, workers: number, clustered: boolean): Promise<WorkerRow> {
  const redis = await startRedis({ args: ['--appendfsync', 'everysec'] });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-bench-keys-'));
  const key = keyFile(dir);
  const broker = await startBroker({ ...(clustered ? clusterSection(redis, key, 'box') : {}), ...(workers > 1 ? { workers } : {}) }, workers);
  try {
    await connectsPerSecond(broker.port, 1, 16); // warm-up
    const connects = await connectsPerSecond(broker.port, SECONDS, 16);
    await sleep(500);
    const fan = await fanIn(broker.port, SECONDS, 8, broker.pids);
    return { config: label, connectsPerSec: connects, fanInRate: fan.rate, fanInUsPerMsg: fan.usPerMsg };
  } finally {
    await broker.stop();
    await redis.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const fmt = (n: number, d = 0) => (Number.isFinite(n) ? n.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d }) : '-');

async function main(): Promise<void> {
  const lines: string[] = [];
  lines.push(`# Cluster benchmark`, '', `${new Date().toISOString()}, Node ${process.version}, ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? '?'}), median of ${RUNS} runs.`, '');
  lines.push(`Redis ${execFileSync('redis-server', ['--version']).toString().trim().split(' ')[2]?.replace('v=', '') ?? '?'}, append-only with fsync every second; brokers on a memory store with no audit and allow-all (the cluster is what is measured). Everything, load generator included, shares the same ${os.cpus().length} CPUs.`, '');
  if (values.only === undefined || values.only === 'cpu') {
    const rows: CpuRow[] = [];
    const pairRatios = new Map<number, number[]>();
    for (const qos of values.qos === undefined ? ([0, 1] as const) : [Number(values.qos) as 0 | 1]) {
      // Local and cross-node runs interleaved, in alternating order, so that a host that changes
      // speed during the benchmark changes both sides of each pair alike; each pair gives a ratio.
      const byKind: Record<'local' | 'cross', CpuRow[]> = { local: [], cross: [] };
      const ratios: number[] = [];
      for (let i = 0; i < RUNS; i++) {
        const pair: Partial<Record<'local' | 'cross', CpuRow>> = {};
        for (const cross of i % 2 === 0 ? [false, true] : [true, false]) {
          const r = await cpuPerMessage(qos, cross);
          pair[cross ? 'cross' : 'local'] = r;
          byKind[cross ? 'cross' : 'local'].push(r);
          console.error(`cpu qos ${qos} ${cross ? 'cross' : 'local'} run ${i + 1}: ${fmt(r.brokerUsPerMsg, 2)} µs/msg, ${fmt(r.rate)} msg/s, ${fmt(r.redisCmdsPerMsg, 3)} redis cmds/msg, ${fmt(r.redisUsPerMsg, 2)} redis µs/msg${r.commands}`);
        }
        ratios.push((pair.cross as CpuRow).brokerUsPerMsg / (pair.local as CpuRow).brokerUsPerMsg);
        console.error(`cpu qos ${qos} round ${i + 1}: cross / local ${fmt(ratios[ratios.length - 1] as number, 2)}`);
      }
      pairRatios.set(qos, ratios);
      for (const kind of ['local', 'cross'] as const) {
        const runs = byKind[kind];
        rows.push({ scenario: runs[0]?.scenario as string, qos, rate: median(runs.map((r) => r.rate)), brokerUsPerMsg: median(runs.map((r) => r.brokerUsPerMsg)), redisCmdsPerMsg: median(runs.map((r) => r.redisCmdsPerMsg)), redisUsPerMsg: median(runs.map((r) => r.redisUsPerMsg)), commands: '' });
      }
    }
    lines.push('## Broker CPU per message: local and cross-node', '', `${fmt(MESSAGES)} messages of 64 bytes per run, one publisher, one subscriber; local and cross-node runs interleaved in rounds.`, '');
    lines.push('| Delivery | QoS | Broker CPU per message (both nodes) | Cross / local (of the medians) | Cross / local (median of the rounds) | Redis commands per message | Redis CPU per message | Rate (msg/s) |', '|---|---|---|---|---|---|---|---|');
    for (const r of rows) {
      const local = rows.find((x) => x.qos === r.qos && x.scenario.startsWith('local'));
      const isLocal = r.scenario.startsWith('local');
      const perRound = pairRatios.get(r.qos) ?? [];
      lines.push(`| ${r.scenario} | ${r.qos} | ${fmt(r.brokerUsPerMsg, 2)} µs | ${isLocal ? '1' : fmt(r.brokerUsPerMsg / (local?.brokerUsPerMsg ?? NaN), 2)}× | ${isLocal ? '' : `${fmt(median(perRound), 2)}× (${perRound.map((x) => fmt(x, 2)).join(' ')})`} | ${fmt(r.redisCmdsPerMsg, 3)} | ${fmt(r.redisUsPerMsg, 2)} µs | ${fmt(r.rate)} |`);
    }
    lines.push('');
  }
  if (values.only === undefined || values.only === 'workers') {
    const configs: [string, number, boolean][] = [
      ['one node, no cluster', 1, false],
      ['cluster, workers: 1', 1, true],
      ['cluster, workers: 2', 2, true],
    ];
    const rows: WorkerRow[] = [];
    for (const [label, workers, clustered] of configs) {
      const runs: WorkerRow[] = [];
      for (let i = 0; i < RUNS; i++) {
        const r = await workersRun(label, workers, clustered);
        runs.push(r);
        console.error(`${label} run ${i + 1}: ${fmt(r.connectsPerSec)} connects/s, fan-in ${fmt(r.fanInRate)} msg/s at ${fmt(r.fanInUsPerMsg, 1)} µs/msg`);
      }
      rows.push({ config: label, connectsPerSec: median(runs.map((r) => r.connectsPerSec)), fanInRate: median(runs.map((r) => r.fanInRate)), fanInUsPerMsg: median(runs.map((r) => r.fanInUsPerMsg)) });
    }
    lines.push('## workers: 2 against workers: 1', '', `Connects: 16 parallel loops of CONNECT, CONNACK, DISCONNECT for ${SECONDS} s. Fan-in: 8 publishers of QoS 0 to one subscriber for ${SECONDS} s; CPU of every broker process (the primary too) per message delivered.`, '');
    lines.push('| Configuration | Connects/s | QoS 0 fan-in (msg/s) | Broker CPU per fan-in message |', '|---|---|---|---|');
    for (const r of rows) lines.push(`| ${r.config} | ${fmt(r.connectsPerSec)} | ${fmt(r.fanInRate)} | ${fmt(r.fanInUsPerMsg, 1)} µs |`);
    lines.push('');
  }
  fs.mkdirSync(path.dirname(values.out as string), { recursive: true });
  fs.writeFileSync(values.out as string, lines.join('\n'));
  process.stdout.write(lines.join('\n') + '\n');
}

await main();
