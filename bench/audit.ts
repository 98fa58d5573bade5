/**
 * The cost of the audit log: QoS 0 throughput (one publisher → one subscriber over loopback)
 * and the broker's CPU time per delivered message, with audit off, with only connects and
 * denials audited (the defaults), and with every publish and delivery audited; then the file
 * sink alone: records per second and CPU time per record.
 *
 *   npm run bench:audit                   # 7 runs of 3 s per mode, modes interleaved
 *   npm run bench:audit -- --runs 9 --duration 5
 *   npm run bench:audit -- --profile prof # also write a CPU profile of each broker process
 *   npm run bench:audit -- --ab-rate 0,20000,100000 --ab-cycles 40  # the interleaved A/B phase (0: flood)
 *   npm run bench:audit -- --runs 0 --ab-rate 0 --ab-modes publishes --sink-runs 0  # the flood A/B alone
 *   npm run bench:audit -- --modes off,publishes  # separate runs of a subset of modes
 *   npm run bench:audit -- --pin process  # the whole broker on one CPU (default: its main thread)
 *   BENCH_AUDIT_DEBUG=1 npm run bench:audit   # the broker prints its audit counters, GC and per-thread CPU every 0.5 s
 *
 * Pinning (Linux, 2 or more CPUs, taskset): the load generator (this process) runs on CPU 1.
 * With `--pin main` (the default) the broker's main thread, the one that runs the event loop,
 * has CPU 0 to itself and the broker's other threads (the audit chaining thread, libuv's pool,
 * the garbage collector's helpers) share CPU 1 with the generator: a broker with a second core
 * for its audit thread. With `--pin process` every thread of the broker shares CPU 0: a broker
 * with one core. `--pin none` leaves placement to the kernel.
 *
 * The broker runs in its own process (this file with --server) so the load generator does not
 * share its event loop; it reports its own CPU time (process.cpuUsage) at the start and end of
 * each measuring window. CPU time per message is much less sensitive to other load on the
 * machine than throughput is. Results go to stdout and bench/results/audit.md.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { PerformanceObserver } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import mqttPacket from 'mqtt-packet';
import { createAuditSink } from '../src/audit/sinks.ts';
import type { AuditWho } from '../src/audit/types.ts';
import { createBroker, type ConfigInput } from '../src/index.ts';
import { silentLogger } from '../src/log.ts';
import { setupPinning } from './lib/brokers.ts';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opt = (name: string, def: number) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : def;
};
const optString = (name: string): string | undefined => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};

type Mode = 'off' | 'denials' | 'publishes' | 'all';
const MODES: Record<Mode, { label: string; audit: ConfigInput['audit'] }> = {
  off: { label: 'audit off', audit: { sink: 'none' } },
  denials: { label: 'connects + denials audited (default)', audit: { sink: 'file' } },
  publishes: { label: 'allowed publishes audited (and connects, denials)', audit: { sink: 'file', allowed: { publish: true }, ...(process.env.BENCH_AUDIT_QUEUE ? { maxQueue: Number(process.env.BENCH_AUDIT_QUEUE) } : {}), ...(process.env.BENCH_AUDIT_FSYNC ? { fsyncIntervalMs: Number(process.env.BENCH_AUDIT_FSYNC) } : {}) } },
  all: { label: 'every publish and delivery audited', audit: { sink: 'file', allowed: { publish: true, deliver: true } } },
};

/**
 * The CPU time of the calling thread in µs, from Linux's schedstat (nanoseconds on the CPU);
 * the event loop's busy time where that is not available. Busy time also counts the moments
 * the thread waited for a core, which on a two-core machine shared with the load generator and
 * the audit thread is not small.
 */
function mainThreadCpuUs(): number {
  try {
    return Math.round(Number(fs.readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0]) / 1000);
  } catch {
    return Math.round(performance.eventLoopUtilization().active * 1000);
  }
}

type PinMode = 'main' | 'process' | 'none';
const pinMode = (optString('pin') ?? 'main') as PinMode;
if (!['main', 'process', 'none'].includes(pinMode)) throw new Error(`--pin must be main, process or none, not ${pinMode}`);
/** What the pinning came to, for the report. */
let pinNote = 'not pinned (--pin none)';

/** Pins the broker process's threads as `pinMode` says (see the top of this file). */
function pinBroker(pid: number): void {
  if (pinMode === 'none' || !pinNote.startsWith('pinned')) return;
  const set = (cpu: string, tid: string, all = false) => spawnSync('taskset', [...(all ? ['-a'] : []), '-p', '-c', cpu, tid], { stdio: 'ignore' });
  if (pinMode === 'process') {
    set('0', String(pid), true);
    return;
  }
  let tids: string[] = [];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return;
  }
  for (const tid of tids) set(tid === String(pid) ? '0' : '1', tid);
}

if (args[0] === '--server') {
  // One broker per mode named ("off" or "off+denials": two in one process, for the A/B phase).
  const modes = (args[1] as string).split('+') as Mode[];
  const dir = args[2] as string;
  const brokers = modes.map((mode, i) =>
    createBroker({
      listeners: [{ name: 'bench', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }],
      authorizers: ['allow-all'],
      store: { type: 'memory' },
      log: { level: 'silent' },
      sys: { intervalSeconds: 0 },
      audit: { ...MODES[mode].audit, path: path.join(dir, `audit-${i}.jsonl`) },
    }),
  );
  const ports: number[] = [];
  for (const b of brokers) ports.push((await b.start()).listeners[0]?.port ?? 0);
  process.stdout.write(`READY ${ports.join(' ')}\n`);
  // "cpu" on stdin: reply with this process's CPU time so far (µs) and the audit counters.
  process.stdin.on('data', (d: Buffer) => {
    for (const _ of d.toString().match(/cpu\n/g) ?? []) {
      const c = process.cpuUsage();
      const hs = brokers.map((b) => b.auditHealth());
      const h = { written: hs.reduce((a, x) => a + x.written, 0), dropped: hs.reduce((a, x) => a + x.dropped, 0), pending: hs.reduce((a, x) => a + x.pending, 0) };
      const elu = performance.eventLoopUtilization();
      process.stdout.write(`CPU ${c.user + c.system} ${h.written} ${h.dropped} ${Math.round(elu.active * 1000)} ${Math.round((elu.active + elu.idle) * 1000)} ${mainThreadCpuUs()} ${h.pending}\n`);
    }
  });
  if (process.env.BENCH_AUDIT_DEBUG) {
    // Every half second: the audit counters and each thread's CPU time meanwhile (ms).
    let last = new Map<string, number>();
    const gc = { minor: 0, major: 0, ms: 0 };
    new PerformanceObserver((l) => {
      for (const e of l.getEntries()) {
        const kind = (e as unknown as { detail?: { kind?: number } }).detail?.kind ?? 0;
        if (kind === 1) gc.minor++;
        else gc.major++;
        gc.ms += e.duration;
      }
    }).observe({ entryTypes: ['gc'] });
    setInterval(() => {
      const now = new Map<string, number>();
      for (const t of fs.readdirSync('/proc/self/task')) {
        try {
          now.set(t, Number(fs.readFileSync(`/proc/self/task/${t}/schedstat`, 'utf8').split(' ')[0]) / 1e6);
        } catch {}
      }
      const busy = [...now].map(([t, ms]) => [t, Math.round(ms - (last.get(t) ?? ms))] as const).filter(([, ms]) => ms > 5);
      last = now;
      process.stderr.write(`gc ${gc.minor} minor ${gc.major} other ${gc.ms.toFixed(0)} ms; `);
      gc.minor = gc.major = gc.ms = 0;
      process.stderr.write(`health ${JSON.stringify(brokers.map((b) => b.auditHealth()))} threads ${busy.map(([t, ms]) => `${t === String(process.pid) ? 'main' : t}:${ms}`).join(' ')}\n`);
    }, 500).unref();
  }
  process.stdin.on('end', () => void Promise.all(brokers.map((b) => b.stop())).then(() => process.exit(0)));
} else {
  await main();
}

interface CpuSample {
  /** CPU time of the whole process (all threads), µs. */
  us: number;
  written: number;
  dropped: number;
  /** Event-loop active and total time, µs: the main thread's share of the work. */
  loopActive: number;
  loopTotal: number;
  /** The main thread's CPU time, µs. */
  mainCpu: number;
  /** Audit records waiting to be written, all brokers of the process. */
  pending: number;
}

interface Server {
  port: number;
  /** Every broker's port, when the process runs more than one. */
  ports: number[];
  /** The broker process's CPU time so far in µs, and its audit sink's written/dropped counts. */
  cpu(): Promise<CpuSample>;
  /** (Re)applies the CPU pinning to the broker's threads, including any started since. */
  pin(): void;
  stop(): Promise<void>;
}


function startServer(mode: string, dir: string): Promise<Server> {
  const profileDir = optString('profile');
  // One directory per mode: Node names the files itself (one per thread).
  const nodeArgs = profileDir !== undefined ? ['--cpu-prof', '--cpu-prof-dir', path.resolve(profileDir, mode)] : [];
  const child = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', path.join(here, 'audit.ts'), '--server', mode, dir], { stdio: ['pipe', 'pipe', 'inherit'] });
  const waiting: ((v: CpuSample) => void)[] = [];
  return new Promise((resolve, reject) => {
    let out = '';
    let ready = false;
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      let nl: number;
      while ((nl = out.indexOf('\n')) >= 0) {
        const line = out.slice(0, nl);
        out = out.slice(nl + 1);
        const r = /^READY ([\d ]+)$/.exec(line);
        const c = /^CPU (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)$/.exec(line);
        if (r && !ready) {
          ready = true;
          const ports = (r[1] as string).split(' ').map(Number);
          resolve({
            port: ports[0] as number,
            ports,
            cpu: () => new Promise((res) => (waiting.push(res), child.stdin.write('cpu\n'))),
            pin: () => pinBroker(child.pid as number),
            stop: () => new Promise((res) => (child.once('close', () => res()), child.stdin.end())),
          });
        } else if (c) waiting.shift()?.({ us: Number(c[1]), written: Number(c[2]), dropped: Number(c[3]), loopActive: Number(c[4]), loopTotal: Number(c[5]), mainCpu: Number(c[6]), pending: Number(c[7]) });
      }
    });
    child.once('error', reject);
  });
}

function rawClient(port: number, clientId: string): Promise<net.Socket> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => {
      s.setNoDelay(true);
      s.write(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId, keepalive: 600 }));
      s.once('data', () => resolve(s)); // CONNACK
    });
  });
}

interface RunResult {
  /** Delivered messages per second. */
  rate: number;
  /** Broker CPU time per delivered message, µs. */
  cpuPerMsg: number;
  /** Audit records written per delivered message during the window. */
  recordsPerMsg: number;
  /** Event-loop utilization of the broker's main thread during the window, 0..1. */
  loop: number;
  /** The broker's main thread CPU time per delivered message, µs. */
  loopPerMsg: number;
  /** Records dropped during the window. */
  dropped: number;
  /** The load generator's (this process's) CPU time per delivered message, µs. */
  generatorPerMsg: number;
}

/**
 * Publishes as fast as the socket takes it (`rate` 0: the broker's throughput), or `rate`
 * messages per second in 10 ms steps (the broker's CPU time per message below saturation).
 */
async function throughput(server: Server, seconds: number, rate = 0): Promise<RunResult> {
  const port = server.port;
  const sub = await rawClient(port, 'bench-sub');
  sub.write(mqttPacket.generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'bench/t', qos: 0 }] }));
  await new Promise((r) => sub.once('data', r)); // SUBACK
  const pkt = mqttPacket.generate({ cmd: 'publish', topic: 'bench/t', payload: Buffer.alloc(64, 1), qos: 0, retain: false, dup: false });
  const batch = Buffer.concat(Array.from({ length: 200 }, () => pkt));
  let bytes = 0;
  let counting = false;
  sub.on('data', (d: Buffer) => {
    if (counting) bytes += d.length;
  });
  const pub = await rawClient(port, 'bench-pub');
  let running = true;
  const pump = () => {
    while (running && pub.write(batch));
    if (running) pub.once('drain', pump);
  };
  let paced: NodeJS.Timeout | null = null;
  if (rate > 0) {
    // Catch up on the steps a late timer missed, so the offered rate holds under load.
    const perMs = rate / 1000;
    const start = performance.now();
    let sent = 0;
    paced = setInterval(() => {
      let due = Math.floor((performance.now() - start) * perMs) - sent;
      // After a long stall, skip what is more than 50 ms late instead of bursting it.
      if (due > rate / 20) {
        sent += due - Math.floor(rate / 20);
        due = Math.floor(rate / 20);
      }
      while (due > 0) {
        const n = Math.min(due, 200);
        pub.write(n === 200 ? batch : batch.subarray(0, n * pkt.length));
        sent += n;
        due -= n;
      }
    }, 10);
  } else pump();
  await new Promise((r) => setTimeout(r, 500)); // warm-up
  server.pin(); // threads started during the warm-up too
  const cpu0 = await server.cpu();
  const gen0 = process.cpuUsage();
  counting = true;
  const t0 = process.hrtime.bigint();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  counting = false;
  const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
  const gen = process.cpuUsage(gen0);
  const cpu1 = await server.cpu();
  running = false;
  if (paced !== null) clearInterval(paced);
  pub.destroy();
  sub.destroy();
  const delivered = bytes / pkt.length;
  return {
    rate: delivered / elapsed,
    cpuPerMsg: (cpu1.us - cpu0.us) / delivered,
    recordsPerMsg: (cpu1.written - cpu0.written) / delivered,
    loop: (cpu1.loopActive - cpu0.loopActive) / (cpu1.loopTotal - cpu0.loopTotal),
    loopPerMsg: (cpu1.mainCpu - cpu0.mainCpu) / delivered,
    dropped: cpu1.dropped - cpu0.dropped,
    generatorPerMsg: (gen.user + gen.system) / delivered,
  };
}

interface SinkResult {
  /** Records per second, from the first record() to the last byte written. */
  rate: number;
  /** CPU time per record, µs: record() calls plus serializing, chaining and writing. */
  cpuPerRecord: number;
  /** CPU time per record spent in the record() calls alone (the caller's cost), µs. */
  callerPerRecord: number;
}

async function sinkAlone(n: number): Promise<SinkResult> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-bench-audit-'));
  try {
    const sink = createAuditSink(
      { sink: 'file', path: path.join(dir, 'audit.jsonl'), maxQueue: n + 10, fsyncIntervalMs: 1000, retryIntervalMs: 1000, rotate: { maxBytes: 0, intervalSeconds: 0 }, retention: { maxFiles: 0, maxAgeDays: 0 }, checkpoint: { intervalSeconds: 60 } },
      silentLogger(),
    );
    const topics = Array.from({ length: 100 }, (_, i) => `plant/${i}/temp`);
    const whos: AuditWho[] = Array.from({ length: 1000 }, (_, i) => ({ listener: 'bench', remoteAddress: '127.0.0.1', remotePort: 50000 + i, clientId: `device-${i}`, username: 'fleet', authMethod: 'password' }));
    let caller = 0;
    const c0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; ) {
      const cs = process.hrtime.bigint();
      // One event-loop turn's worth of decisions, as a busy broker makes them.
      for (const end = Math.min(n, i + 2000); i < end; i++) {
        // As the broker records an allowed publish: the access fast path, one `who` per client.
        const who = whos[i % 1000] as AuditWho;
        if (sink.recordAccess !== undefined) sink.recordAccess(who, 'publish', 'allow', 0, undefined, 'allow-all', undefined, undefined, topics[i % 100] as string, 0, false);
        else sink.record({ event: 'publish', decision: 'allow', reasonCode: 0, ...who, decidedBy: 'allow-all', topic: topics[i % 100] as string, qos: 0, retain: false });
      }
      // Wall time of the calls: process CPU time would also count the chaining thread meanwhile.
      caller += Number(process.hrtime.bigint() - cs) / 1000;
      await new Promise((r) => setImmediate(r));
    }
    await sink.close();
    const c = process.cpuUsage(c0);
    return { rate: n / (Number(process.hrtime.bigint() - t0) / 1e9), cpuPerRecord: (c.user + c.system) / n, callerPerRecord: caller / n };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * One broker per mode in one process, fed the same steady rate in turn, in cycles of one slice
 * each (the order reverses every cycle): all see the same machine load within a second, so the
 * per-slice CPU time per message compares them more finely than separate runs. Only for modes
 * of similar cost: the brokers share one heap, so a mode that makes much garbage would bill its
 * garbage collection to the slice after it.
 */
/** Per slice: the process's CPU time (all threads) and its main thread's CPU time, per delivered message (µs). */
interface Slices {
  cpu: number[];
  loop: number[];
  /** Delivered messages per second (floods only). */
  rate: number[];
}

async function interleaved(server: Server, modes: Mode[], cycles: number, sliceMs: number, rate: number): Promise<Record<Mode, Slices>> {
  const pkt = mqttPacket.generate({ cmd: 'publish', topic: 'bench/t', payload: Buffer.alloc(64, 1), qos: 0, retain: false, dup: false });
  const batch = Buffer.concat(Array.from({ length: 200 }, () => pkt));
  const sides = await Promise.all(
    server.ports.map(async (port, i) => {
      const sub = await rawClient(port, `ab-sub-${i}`);
      sub.write(mqttPacket.generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'bench/t', qos: 0 }] }));
      await new Promise((r) => sub.once('data', r)); // SUBACK
      const side = { sub, pub: await rawClient(port, `ab-pub-${i}`), bytes: 0 };
      sub.on('data', (d: Buffer) => (side.bytes += d.length));
      return side;
    }),
  );
  server.pin();
  const out: Record<Mode, Slices> = { off: { cpu: [], loop: [], rate: [] }, denials: { cpu: [], loop: [], rate: [] }, publishes: { cpu: [], loop: [], rate: [] }, all: { cpu: [], loop: [], rate: [] } };
  for (let i = 0; i < (cycles + 1) * modes.length; i++) {
    const cycle = Math.floor(i / modes.length);
    const step = i % modes.length;
    const which = cycle % 2 === 0 ? step : modes.length - 1 - step;
    const side = sides[which] as (typeof sides)[number];
    if (rate === 0) {
      // Flood: as fast as the broker takes them. The first 100 ms fill the pipeline; the slice's
      // throughput is what is delivered in the rest, and its CPU time is counted over the same.
      let running = true;
      const pump = () => {
        while (running && side.pub.write(batch));
        if (running) side.pub.once('drain', pump);
      };
      pump();
      await new Promise((r) => setTimeout(r, 100));
      const c0 = await server.cpu();
      const b0 = side.bytes;
      const t0 = performance.now();
      await new Promise((r) => setTimeout(r, sliceMs));
      const c1 = await server.cpu();
      const delivered = (side.bytes - b0) / pkt.length;
      const elapsed = (performance.now() - t0) / 1000;
      running = false;
      side.pub.removeAllListeners('drain');
      // The backlog drains, the audit log's too, before the next slice (it would slow that one).
      await new Promise((r) => setTimeout(r, 200));
      for (let w = 0; w < 40 && (await server.cpu()).pending > 0; w++) await new Promise((r) => setTimeout(r, 50));
      if (cycle > 0) {
        const o = out[modes[which] as Mode];
        o.cpu.push((c1.us - c0.us) / delivered);
        o.loop.push((c1.mainCpu - c0.mainCpu) / delivered);
        o.rate.push(delivered / elapsed);
      }
      continue;
    }
    const c0 = await server.cpu();
    const b0 = side.bytes;
    const start = performance.now();
    let sent = 0;
    await new Promise<void>((resolve) => {
      const timer = setInterval(() => {
        const now = performance.now();
        let due = Math.min(Math.floor(((Math.min(now, start + sliceMs) - start) * rate) / 1000) - sent, rate / 20);
        while (due > 0) {
          const n = Math.min(due, 200);
          side.pub.write(n === 200 ? batch : batch.subarray(0, n * pkt.length));
          sent += n;
          due -= n;
        }
        if (now >= start + sliceMs) {
          clearInterval(timer);
          resolve();
        }
      }, 10);
    });
    await new Promise((r) => setTimeout(r, 100)); // the last deliveries
    const c1 = await server.cpu();
    const delivered = (side.bytes - b0) / pkt.length;
    if (cycle > 0) {
      // The first cycle warms up.
      out[modes[which] as Mode].cpu.push((c1.us - c0.us) / delivered);
      out[modes[which] as Mode].loop.push((c1.mainCpu - c0.mainCpu) / delivered);
    }
  }
  for (const s of sides) {
    s.pub.destroy();
    s.sub.destroy();
  }
  return out;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length === 0 ? 0 : s.length % 2 === 1 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}
function fmt(x: number, digits = 0): string {
  return x.toLocaleString('en', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}
function range(xs: number[], digits = 0): string {
  return `${fmt(Math.min(...xs), digits)}–${fmt(Math.max(...xs), digits)}`;
}

function table(results: Record<Mode, RunResult[]>): string[] {
  const modes = (Object.keys(MODES) as Mode[]).filter((m) => results[m].length > 0);
  const baseRate = median(results.off.map((x) => x.rate));
  const baseCpu = median(results.off.map((x) => x.cpuPerMsg));
  const baseLoop = median(results.off.map((x) => x.loopPerMsg));
  return [
    '| Mode | Delivered msg/s (median) | min–max | Throughput cost | Broker CPU µs/msg, all threads (median) | min–max | CPU cost | Main thread µs/msg (median) | Main-thread cost | Records/msg | Dropped (median) |',
    '|---|---|---|---|---|---|---|---|---|---|---|',
    ...modes.map((m) => {
      const rates = results[m].map((x) => x.rate);
      const cpus = results[m].map((x) => x.cpuPerMsg);
      const rateCost = m === 'off' ? '—' : `${(((baseRate - median(rates)) / baseRate) * 100).toFixed(1)}%`;
      const cpuCost = m === 'off' ? '—' : `${(((median(cpus) - baseCpu) / baseCpu) * 100).toFixed(1)}%`;
      const loops = results[m].map((x) => x.loopPerMsg);
      const loopCost = m === 'off' ? '—' : `${(((median(loops) - baseLoop) / baseLoop) * 100).toFixed(1)}%`;
      return `| ${MODES[m].label} | ${fmt(median(rates))} | ${range(rates)} | ${rateCost} | ${fmt(median(cpus), 2)} | ${range(cpus, 2)} | ${cpuCost} | ${fmt(median(loops), 2)} | ${loopCost} | ${fmt(median(results[m].map((x) => x.recordsPerMsg)), 2)} | ${fmt(median(results[m].map((x) => x.dropped)))} |`;
    }),
  ];
}

/** Each run's CPU/msg against the audit-off run of the same round, in %. */
function paired(results: Record<Mode, RunResult[]>, m: Mode): string {
  const xs = results[m].map((x, i) => ((x.cpuPerMsg - (results.off[i] as RunResult).cpuPerMsg) / (results.off[i] as RunResult).cpuPerMsg) * 100);
  return `${xs.map((x) => `${x.toFixed(1)}%`).join(', ')} (median **${median(xs).toFixed(1)}%**)`;
}

async function main(): Promise<void> {
  if (pinMode !== 'none') {
    const pinning = setupPinning(true);
    pinNote =
      pinning.generatorCpu === null
        ? pinning.note
        : pinMode === 'main'
          ? "pinned: the load generator on CPU 1; the broker's main thread alone on CPU 0, its other threads (audit chaining, libuv pool, GC helpers) on CPU 1 with the generator"
          : 'pinned: the load generator on CPU 1; the whole broker (every thread) on CPU 0';
  }
  const runs = opt('runs', 7);
  const seconds = opt('duration', 3);
  const records = opt('records', 500_000);
  const rate = opt('rate', 20_000);
  // `--modes off,publishes`: a subset, for a quicker look (audit off is always measured).
  const modes = (Object.keys(MODES) as Mode[]).filter((m) => m === 'off' || (optString('modes') ?? m).split(',').includes(m));
  const flood: Record<Mode, RunResult[]> = { off: [], denials: [], publishes: [], all: [] };
  const paced: Record<Mode, RunResult[]> = { off: [], denials: [], publishes: [], all: [] };
  const line = (label: string, res: RunResult) =>
    `${label}: ${Math.round(res.rate)} msg/s, ${res.cpuPerMsg.toFixed(3)} µs CPU/msg, ${res.recordsPerMsg.toFixed(2)} records/msg, loop ${(res.loop * 100).toFixed(0)}% busy (${res.loopPerMsg.toFixed(3)} µs/msg), generator ${res.generatorPerMsg.toFixed(3)} µs/msg, ${res.dropped} dropped\n`;
  for (let r = 0; r < runs; r++) {
    // Rotate the order between runs so a drift in machine load does not favour one mode.
    const order = modes.map((_, i) => modes[(i + r) % modes.length] as Mode);
    for (const mode of order) {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-bench-audit-'));
      const server = await startServer(mode, dir);
      const full = await throughput(server, seconds);
      flood[mode].push(full);
      process.stderr.write(line(`run ${r + 1}/${runs} ${mode} flood`, full));
      await new Promise((res) => setTimeout(res, 1000)); // let the audit queue drain
      const steady = await throughput(server, seconds, rate);
      paced[mode].push(steady);
      process.stderr.write(line(`run ${r + 1}/${runs} ${mode} ${rate} msg/s`, steady));
      await server.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
  const abCycles = opt('ab-cycles', 40);
  const abRates = (optString('ab-rate') ?? '0,20000,100000').split(',').map(Number); // 0: flood
  // Each mode against audit off, in its own process of two brokers (a mode that makes much
  // garbage would bill its collection to the other broker's slices if more shared one heap).
  const abModes = (optString('ab-modes') ?? 'denials,publishes').split(',') as Mode[];
  const ab: Partial<Record<string, { off: Slices; mode: Slices }>> = {};
  if (abCycles > 0) {
    for (const abRate of abRates) for (const m of abModes) {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-bench-audit-'));
      const server = await startServer(`off+${m}`, dir);
      const res = await interleaved(server, ['off', m], abCycles, 500, abRate);
      await server.stop();
      fs.rmSync(dir, { recursive: true, force: true });
      ab[`${abRate} ${m}`] = { off: res.off, mode: res[m] };
      if (abRate === 0) process.stderr.write(`A/B flood ${m}: off ${fmt(median(res.off.rate))} / ${m} ${fmt(median(res[m].rate))} msg/s; `);
      process.stderr.write(`A/B ${abRate} msg/s ${m}: off ${median(res.off.loop).toFixed(3)} / ${m} ${median(res[m].loop).toFixed(3)} µs main thread per msg; off ${median(res.off.cpu).toFixed(3)} / ${m} ${median(res[m].cpu).toFixed(3)} µs all threads\n`);
    }
  }
  // Each cycle's slice of a mode against the same cycle's audit-off slice, in %.
  const abCost = (xsMode: number[], xsOff: number[]) => {
    const xs = xsMode.map((d, i) => ((d - (xsOff[i] as number)) / (xsOff[i] as number)) * 100).sort((x, y) => x - y);
    return `median **${median(xs).toFixed(1)}%**, middle half ${xs[Math.floor(xs.length / 4)]?.toFixed(1)}% to ${xs[Math.floor((xs.length * 3) / 4)]?.toFixed(1)}%`;
  };
  // Each cycle's throughput against the same cycle's audit-off throughput: the cost, in %.
  const abRateCost = (xsMode: number[], xsOff: number[]) => {
    const xs = xsMode.map((d, i) => (((xsOff[i] as number) - d) / (xsOff[i] as number)) * 100).sort((x, y) => x - y);
    return `median **${median(xs).toFixed(1)}%**, middle half ${xs[Math.floor(xs.length / 4)]?.toFixed(1)}% to ${xs[Math.floor((xs.length * 3) / 4)]?.toFixed(1)}%`;
  };
  const rateLabel = (r: number) => (r === 0 ? 'flood' : `${fmt(r)} msg/s`);
  const sinkRuns: SinkResult[] = [];
  // The sink alone runs in this process: its chaining thread gets a CPU of its own, as a broker's
  // does with `--pin main` (this process was pinned to CPU 1 as the load generator).
  if (pinMode !== 'none' && pinNote.startsWith('pinned')) spawnSync('taskset', ['-a', '-p', '-c', `0-${os.availableParallelism() - 1}`, String(process.pid)], { stdio: 'ignore' });
  for (let r = 0; r < opt('sink-runs', 5); r++) {
    sinkRuns.push(await sinkAlone(records));
    process.stderr.write(`sink run ${r + 1}: ${Math.round(sinkRuns[r]?.rate ?? 0)} records/s, ${sinkRuns[r]?.cpuPerRecord.toFixed(2)} µs CPU/record\n`);
  }
  const sinkRate = sinkRuns.map((x) => x.rate);
  const report = [
    '# Audit log cost',
    '',
    `Generated by \`npm run bench:audit\` on ${new Date().toISOString()} (${os.cpus().length} CPUs, Node ${process.version}, load average at the end ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}).`,
    `QoS 0, one publisher → one subscriber, 64-byte payloads, MQTT 3.1.1, loopback; broker in its own process; ${runs} rounds, modes interleaved (the order rotates every round); median and min–max shown.`,
    `CPU placement (\`--pin ${pinMode}\`): ${pinNote}.`,
    '"CPU/msg" is the broker process\'s CPU time (user + system, all threads: the main thread, the audit chaining thread, libuv and GC helpers) during the measuring window divided by the messages delivered in it; "main thread" is the CPU time of the thread that runs the event loop (Linux schedstat), divided the same way.',
    '',
    `## Flood: as fast as the broker takes them (${seconds} s per run)`,
    '',
    ...table(flood),
    '',
    `CPU cost per round against audit off: default ${paired(flood, 'denials')}; publishes ${paired(flood, 'publishes')}; all ${paired(flood, 'all')}.`,
    '',
    `## Steady ${fmt(rate)} msg/s, below saturation (${seconds} s per run)`,
    '',
    ...table(paced),
    '',
    `CPU cost per round against audit off: default ${paired(paced, 'denials')}; publishes ${paired(paced, 'publishes')}; all ${paired(paced, 'all')}.`,
    '',
    `## Against audit off, interleaved in one process (${abRates.map(rateLabel).join(', ')}; ${abCycles} cycles of one 0.5 s slice per mode)`,
    '',
    'Two brokers in one process, one with audit off and one with the mode, fed in turn; each slice is compared with the audit-off slice of the same cycle. "Flood": as fast as the broker takes them, the first 100 ms of each slice not counted. "Main thread" is the CPU time of the event-loop thread: the work that limits throughput when the broker has a core for its audit thread.',
    '',
    ...(abCycles > 0 && abRates.includes(0)
      ? [
          '| Mode | Delivered msg/s (off → mode, medians) | Throughput cost, cycle by cycle | Main thread µs/msg (off → mode) | Main-thread cost, cycle by cycle |',
          '|---|---|---|---|---|',
          ...abModes.map((m) => {
            const r = ab[`0 ${m}`] as { off: Slices; mode: Slices };
            return `| ${MODES[m].label} | ${fmt(median(r.off.rate))} → ${fmt(median(r.mode.rate))} | ${abRateCost(r.mode.rate, r.off.rate)} | ${median(r.off.loop).toFixed(3)} → ${median(r.mode.loop).toFixed(3)} | ${abCost(r.mode.loop, r.off.loop)} |`;
          }),
          '',
        ]
      : []),
    ...(abCycles > 0
      ? [
          '| Rate | Mode | Main thread µs/msg (off → mode, medians) | Main-thread cost, cycle by cycle | All threads µs/msg (off → mode) | CPU cost, cycle by cycle |',
          '|---|---|---|---|---|---|',
          ...abRates.flatMap((rate) => abModes.map((m) => [rate, m] as const)).map(([abRate, m]) => {
            const r = ab[`${abRate} ${m}`] as { off: Slices; mode: Slices };
            return `| ${rateLabel(abRate)} | ${MODES[m].label} | ${median(r.off.loop).toFixed(3)} → ${median(r.mode.loop).toFixed(3)} | ${abCost(r.mode.loop, r.off.loop)} | ${median(r.off.cpu).toFixed(3)} → ${median(r.mode.cpu).toFixed(3)} | ${abCost(r.mode.cpu, r.off.cpu)} |`;
          }),
        ]
      : ['(skipped)']),
    '',
    '## File sink alone',
    '',
    `Hash-chained, batched, fsync every 1 s; ${fmt(records)} records per run, ${sinkRuns.length} runs: **${fmt(median(sinkRate))} records/s** (min–max ${range(sinkRate)}), ` +
      `${median(sinkRuns.map((x) => x.cpuPerRecord)).toFixed(2)} µs CPU per record in all (all threads), of which ${median(sinkRuns.map((x) => x.callerPerRecord)).toFixed(2)} µs (wall time) in the calls that record, on the caller's thread.`,
    '',
    'Targets from the issue: at most 15% cost with allowed publishes audited, at most 3% with only denials and connects audited.',
    'With "every publish and delivery audited" each message makes two records (publish + deliver).',
    '',
  ].join('\n');
  process.stdout.write(report);
  const out = optString('out') ?? path.join(here, 'results', 'audit.md');
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, report);
}
