/**
 * Starts each broker in its own child process (pinned to CPU 0 when taskset is available),
 * waits until it accepts connections, samples its CPU time from /proc, and stops it.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const BROKERS = ['portcullis', 'aedes', 'mosquitto'] as const;
export type BrokerName = (typeof BROKERS)[number];

export const DEFAULT_MOSQUITTO = '/usr/sbin/mosquitto';
let mosquittoPath = DEFAULT_MOSQUITTO;

export function setMosquittoPath(p: string): void {
  mosquittoPath = p;
}
export const HOST = '127.0.0.1';

const benchDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const projectRoot = path.resolve(benchDir, '..');

export interface Pinning {
  /** CPU list for the broker process, or null when not pinned. */
  brokerCpu: string | null;
  generatorCpu: string | null;
  note: string;
}

/** Pins this process (the load generator, all threads) to CPU 1 and reports what the brokers get. */
export function setupPinning(enabled: boolean): Pinning {
  if (!enabled) return { brokerCpu: null, generatorCpu: null, note: 'CPU pinning disabled (--no-pin)' };
  if (process.platform !== 'linux') return { brokerCpu: null, generatorCpu: null, note: `CPU pinning unavailable on ${process.platform}: broker and generator share CPUs` };
  const probe = spawnSync('taskset', ['-V'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) return { brokerCpu: null, generatorCpu: null, note: 'taskset not found: CPU pinning disabled, broker and generator share CPUs (numbers are noisier)' };
  const cpus = os.availableParallelism();
  if (cpus < 2) return { brokerCpu: null, generatorCpu: null, note: `only ${cpus} CPU available: no pinning, broker and generator share one CPU` };
  const r = spawnSync('taskset', ['-a', '-p', '-c', '1', String(process.pid)], { encoding: 'utf8' });
  if (r.status !== 0) return { brokerCpu: null, generatorCpu: null, note: `taskset failed (${(r.stderr || '').trim()}): CPU pinning disabled` };
  return { brokerCpu: '0', generatorCpu: '1', note: 'broker pinned to CPU 0, load generator pinned to CPU 1 (taskset)' };
}

export interface RunningBrokerProcess {
  name: BrokerName;
  host: string;
  port: number;
  pid: number;
  /** Broker CPU seconds (user+system) so far, or null when /proc is unavailable. */
  cpuSeconds(): number | null;
  /** Set when the process exited on its own. */
  exited: string | null;
  stderrTail(): string;
  stop(): Promise<void>;
}

export class BrokerUnavailable extends Error {}

export function mosquittoVersion(): string | null {
  if (!existsSync(mosquittoPath)) return null;
  const r = spawnSync(mosquittoPath, ['-h'], { encoding: 'utf8' });
  const m = /mosquitto version (\S+)/.exec(`${r.stdout}${r.stderr}`);
  return m ? m[1]! : 'unknown';
}

export async function startBroker(name: BrokerName, pin: Pinning): Promise<RunningBrokerProcess> {
  switch (name) {
    case 'portcullis':
    case 'aedes':
      return startNodeServer(name, pin);
    case 'mosquitto':
      return startMosquitto(pin);
  }
}

function pinned(pin: Pinning, cmd: string, args: string[]): [string, string[]] {
  // taskset execs the command, so the child pid is the broker's own pid.
  return pin.brokerCpu === null ? [cmd, args] : ['taskset', ['-c', pin.brokerCpu, cmd, ...args]];
}

async function startNodeServer(name: 'portcullis' | 'aedes', pin: Pinning): Promise<RunningBrokerProcess> {
  const script = path.join(benchDir, 'servers', `${name}.ts`);
  // `node --import tsx` (not `npx tsx`) so the broker is a single process whose CPU we can read.
  const [cmd, args] = pinned(pin, process.execPath, ['--import', 'tsx', script, '--host', HOST, '--port', '0']);
  const child = spawn(cmd, args, { cwd: projectRoot, stdio: ['pipe', 'pipe', 'pipe'] });
  const proc = wrap(name, child, HOST);
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new BrokerUnavailable(`${name} server did not report ready within 30 s${tail(proc)}`)), 30_000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString('utf8');
      const m = /^READY (\d+)$/m.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new BrokerUnavailable(`${name} server exited before it was ready (code ${code}, signal ${signal})${tail(proc)}`));
    });
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new BrokerUnavailable(`${name} server could not be started: ${err.message}`));
    });
  }).catch(async (e: unknown) => {
    await proc.stop();
    throw e;
  });
  proc.port = port;
  return proc;
}

async function startMosquitto(pin: Pinning): Promise<RunningBrokerProcess> {
  if (!existsSync(mosquittoPath)) throw new BrokerUnavailable(`${mosquittoPath} not found: Mosquitto skipped (install it, e.g. apt-get install mosquitto, or pass --mosquitto PATH)`);
  const port = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'portcullis-bench-mosquitto-'));
  const conf = path.join(dir, 'mosquitto.conf');
  // Defaults otherwise (max_inflight_messages 20, max_queued_messages 1000, Nagle on), like the other brokers.
  writeFileSync(
    conf,
    [
      '# generated by bench/lib/brokers.ts',
      `listener ${port} ${HOST}`,
      'allow_anonymous true',
      'persistence false',
      'log_dest stderr',
      'log_type error',
      'log_type warning',
      '',
    ].join('\n'),
  );
  const [cmd, args] = pinned(pin, mosquittoPath, ['-c', conf]);
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const proc = wrap('mosquitto', child, HOST, () => rmSync(dir, { recursive: true, force: true }));
  proc.port = port;
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (proc.exited) {
      await proc.stop();
      throw new BrokerUnavailable(`mosquitto exited: ${proc.exited}${tail(proc)}`);
    }
    if (await canConnect(HOST, port)) return proc;
    if (Date.now() > deadline) {
      await proc.stop();
      throw new BrokerUnavailable(`mosquitto did not accept connections on ${HOST}:${port} within 10 s${tail(proc)}`);
    }
    await sleep(50);
  }
}

function tail(p: RunningBrokerProcess): string {
  const t = p.stderrTail().trim();
  return t ? `\n--- stderr ---\n${t}` : '';
}

/** Broker processes started by us and not yet exited: killed if the benchmark itself ends early. */
const live = new Set<ChildProcess>();
let exitHooked = false;

function hookExit(): void {
  if (exitHooked) return;
  exitHooked = true;
  process.on('exit', () => {
    for (const c of live) c.kill('SIGKILL');
  });
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      for (const c of live) c.kill('SIGTERM');
      process.exit(130);
    });
  }
}

function wrap(name: BrokerName, child: ChildProcess, host: string, cleanup?: () => void): RunningBrokerProcess & { port: number } {
  hookExit();
  live.add(child);
  child.once('exit', () => live.delete(child));
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString('utf8')).slice(-4000);
  });
  let exitPromise: Promise<void>;
  const proc = {
    name,
    host,
    port: 0,
    pid: child.pid ?? -1,
    exited: null as string | null,
    cpuSeconds: () => procCpuSeconds(child.pid),
    stderrTail: () => stderr,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exitPromise;
        clearTimeout(t);
      }
      cleanup?.();
    },
  };
  exitPromise = new Promise<void>((resolve) => {
    if (child.exitCode !== null) return resolve();
    child.once('exit', (code, signal) => {
      proc.exited = `code ${code}, signal ${signal}`;
      resolve();
    });
    child.once('error', () => resolve());
  });
  return proc;
}

let clockTicks: number | null = null;

function ticksPerSecond(): number {
  if (clockTicks === null) {
    const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
    clockTicks = Number((r.stdout ?? '').trim()) || 100;
  }
  return clockTicks;
}

/** Busy CPU seconds of the whole machine (all CPUs, from /proc/stat); null when not on Linux. */
export function systemBusySeconds(): number | null {
  if (process.platform !== 'linux') return null;
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal ...
    const busy = f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + f[7]!;
    return busy / ticksPerSecond();
  } catch {
    return null;
  }
}

/** utime+stime of a process from /proc/<pid>/stat, in seconds; null when not on Linux. */
export function procCpuSeconds(pid: number | undefined): number | null {
  if (pid === undefined || process.platform !== 'linux') return null;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // after "pid (comm) ": state is field 0; utime is field 11, stime field 12
    const ticks = Number(fields[11]) + Number(fields[12]);
    return ticks / ticksPerSecond();
  } catch {
    return null;
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, HOST, () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function canConnect(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
