/**
 * Starts each broker in its own child process (pinned to CPU 0 when taskset is available), in one
 * of two configurations (security off / on), with three listeners each: plain TCP, TLS (server
 * certificate only) and mTLS (client certificate required). Waits until it accepts connections,
 * samples its CPU time and RSS from /proc, and stops it.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseConfig } from '../../src/config/schema.ts';
import type { BenchFiles } from './security.ts';

export const BROKERS = ['portcullis', 'aedes', 'mosquitto'] as const;
export type BrokerName = (typeof BROKERS)[number];
/** The Node servers bench/servers/ holds: two brokers, and the bare connect floor (startFloorServer). */
type NodeServerName = 'portcullis' | 'aedes' | 'floor';

/**
 * off: anonymous, allow-all, no audit (the mTLS listener still requires a client certificate).
 * on: passwords (TLS: passwords over TLS; mTLS: the certificate), a 1,000-rule ACL, and for
 * Portcullis the default audit to a file.
 */
export const SECURITY = ['off', 'on'] as const;
export type Security = (typeof SECURITY)[number];

/** The three listeners every broker opens. */
export type Transport = 'tcp' | 'tls' | 'mtls';

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
  name: BrokerName | 'floor';
  security: Security;
  host: string;
  ports: Record<Transport, number>;
  pid: number;
  /** Broker CPU seconds (user+system) so far, or null when /proc is unavailable. */
  cpuSeconds(): number | null;
  /** Resident set size in KiB, from /proc/<pid>/status; null when unavailable. */
  rssKb(): number | null;
  /** Node brokers: asks for a full garbage collection (SIGUSR2 → gc()); false for brokers without a GC. */
  collectGarbage(): boolean;
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

let instance = 0;

/**
 * How a broker keeps sessions: 'none' (the message scenarios: Mosquitto's default, Portcullis on
 * its memory store) or 'durable' (Portcullis on its default LMDB store, flushed before each
 * acknowledgement; Mosquitto with `persistence true` and its default autosave).
 */
/**
 * `durable-unbounded`: Mosquitto with persistence and `max_queued_messages 0`. With its default
 * (1000) Mosquitto acknowledges QoS 1 messages and then drops them when a subscriber's queue is
 * full; the durable store never drops an acknowledged message, so this is the comparable setting.
 */
export type Persistence = 'none' | 'durable' | 'durable-unbounded';

export async function startBroker(name: BrokerName, security: Security, files: BenchFiles, pin: Pinning, persistence: Persistence = 'none'): Promise<RunningBrokerProcess> {
  const config = path.join(files.dir, `${name}-${security}-${++instance}.json`);
  switch (name) {
    case 'portcullis': {
      const c = portcullisConfig(security, files);
      if (persistence === 'durable') c.store = { type: 'lmdb', path: mkdtempSync(path.join(files.dir, 'store-')) };
      writeFileSync(config, JSON.stringify(c));
      return startNodeServer(name, security, config, pin);
    }
    case 'aedes':
      writeFileSync(config, JSON.stringify({ security, host: HOST, ca: files.ca, cert: files.serverCert, key: files.serverKey, securityFile: files.aedesSecurityFile }));
      return startNodeServer(name, security, config, pin);
    case 'mosquitto':
      return startMosquitto(security, files, pin, persistence);
  }
}

/** Whether this Portcullis has per-address connection caps (limits.maxConnectionsPerIp, limits.connectRate). */
let admissionLimits: boolean | null = null;

/**
 * The Portcullis configuration. Per-address connection caps and the connect rate limit are lifted
 * in both modes: every benchmark client comes from 127.0.0.1, and the connect loops and the 5,000
 * idle connections would otherwise measure the limiter, not the broker.
 */
export function portcullisConfig(security: Security, files: BenchFiles): Record<string, unknown> {
  const on = security === 'on';
  const password = { provider: 'password', file: files.portcullisPasswordFile, watch: false };
  const tlsFiles = { cert: files.serverCert, key: files.serverKey };
  const config: Record<string, unknown> = {
    listeners: [
      { name: 'tcp', type: 'tcp', host: HOST, port: 0, auth: on ? [password] : ['anonymous'] },
      { name: 'tls', type: 'tls', host: HOST, port: 0, ...tlsFiles, auth: on ? [password] : ['anonymous'] },
      { name: 'mtls', type: 'tls', host: HOST, port: 0, ...tlsFiles, ca: files.ca, requireClientCert: true, auth: ['certificate'] },
    ],
    authorizers: on ? [{ type: 'casbin', model: path.join(projectRoot, 'policies', 'model.conf'), policy: files.casbinPolicyFile, watch: false }] : ['allow-all'],
    log: { level: 'silent' },
    // The message scenarios compare brokers without persistence (Mosquitto's default); the
    // persistent-session scenarios (bench/persistence.ts) set the durable store themselves.
    store: { type: 'memory' },
    audit: on ? { sink: 'file', path: path.join(files.dir, `audit-${instance}.jsonl`) } : { sink: 'none' },
    ...(on ? { credentialCache: { enabled: true } } : {}),
  };
  if (admissionLimits !== false) {
    const withLimits = { ...config, limits: { maxConnectionsPerIp: 100_000, connectRate: { perSecond: 0, burst: 1 } } };
    try {
      parseConfig(withLimits);
      admissionLimits = true;
      return withLimits;
    } catch {
      admissionLimits = false;
    }
  }
  parseConfig(config); // throws a ConfigError naming the key if the schema moved on
  return config;
}

function pinned(pin: Pinning, cmd: string, args: string[]): [string, string[]] {
  // taskset execs the command, so the child pid is the broker's own pid.
  return pin.brokerCpu === null ? [cmd, args] : ['taskset', ['-c', pin.brokerCpu, cmd, ...args]];
}

/**
 * A bare Node TCP server that frames MQTT packets and answers CONNECT with CONNACK
 * (bench/servers/floor.ts): what a connect costs on Node's `net` module with no broker in it.
 */
export async function startFloorServer(files: BenchFiles, pin: Pinning): Promise<RunningBrokerProcess> {
  const config = path.join(files.dir, `floor-${++instance}.json`);
  writeFileSync(config, JSON.stringify({ host: HOST }));
  return startNodeServer('floor', 'off', config, pin);
}

let built = false;
/** `npm run build` once per benchmark process (about 2 s): a stale dist/ would measure other code. */
export function buildDist(): void {
  if (built) return;
  const r = spawnSync('npm', ['run', '--silent', 'build'], { cwd: projectRoot, stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`npm run build failed before the benchmark:\n${r.stderr}`);
  built = true;
}

async function startNodeServer(name: NodeServerName, security: Security, config: string, pin: Pinning): Promise<RunningBrokerProcess> {
  // Portcullis runs as `npm start` runs it: dist/ on plain node, built once per benchmark process
  // so that it is this tree's code (BENCH_PORTCULLIS_FROM=src: from src/ through the TypeScript
  // loader, whose function-naming wrappers cost a few per cent of broker CPU). The other servers
  // are TypeScript: `node --import tsx` (not `npx tsx`) so the broker is a single process whose
  // CPU we can read.
  const fromDist = name === 'portcullis' && process.env.BENCH_PORTCULLIS_FROM !== 'src';
  if (fromDist) buildDist();
  const script = path.join(benchDir, 'servers', fromDist ? 'portcullis-dist.mjs' : `${name}.ts`);
  // --expose-gc: the idle-memory scenario asks for a collection (SIGUSR2) before reading RSS.
  // BENCH_BROKER_NODE_ARGS: extra Node flags for the Node brokers, e.g. "--cpu-prof --cpu-prof-dir prof".
  const extra = (process.env.BENCH_BROKER_NODE_ARGS ?? '').split(' ').filter((a) => a !== '');
  const loader = fromDist ? [] : ['--import', 'tsx'];
  const [cmd, args] = pinned(pin, process.execPath, ['--expose-gc', ...extra, ...loader, script, '--config', config]);
  const child = spawn(cmd, args, { cwd: projectRoot, stdio: ['pipe', 'pipe', 'pipe'] });
  const proc = wrap(name, security, child, HOST);
  const ports = await new Promise<Record<Transport, number>>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new BrokerUnavailable(`${name} server did not report ready within 30 s${tail(proc)}`)), 30_000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString('utf8');
      const m = /^READY (\{.*\})$/m.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(JSON.parse(m[1]!) as Record<Transport, number>);
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
  proc.ports = ports;
  return proc;
}

async function startMosquitto(security: Security, files: BenchFiles, pin: Pinning, persistence: Persistence = 'none'): Promise<RunningBrokerProcess> {
  if (!existsSync(mosquittoPath)) throw new BrokerUnavailable(`${mosquittoPath} not found: Mosquitto skipped (install it, e.g. apt-get install mosquitto, or pass --mosquitto PATH)`);
  const on = security === 'on';
  if (on && files.mosquittoPasswordFile === null) throw new BrokerUnavailable('mosquitto_passwd not found: Mosquitto with security on skipped');
  const ports = { tcp: await freePort(), tls: await freePort(), mtls: await freePort() };
  const dir = mkdtempSync(path.join(os.tmpdir(), 'portcullis-bench-mosquitto-'));
  const conf = path.join(dir, 'mosquitto.conf');
  // Defaults otherwise (max_inflight_messages 20, max_queued_messages 1000, Nagle on), like the other brokers.
  writeFileSync(
    conf,
    [
      '# generated by bench/lib/brokers.ts',
      'per_listener_settings false',
      ...(process.getuid?.() === 0 ? ['user root'] : []), // as root, mosquitto would drop to a user that cannot read the 0600 files
      `allow_anonymous ${on ? 'false' : 'true'}`,
      ...(on ? [`password_file ${files.mosquittoPasswordFile}`, `acl_file ${files.mosquittoAclFile}`] : []),
      ...(persistence === 'none' ? ['persistence false'] : ['persistence true', `persistence_location ${dir}/`]),
      ...(persistence === 'durable-unbounded' ? ['max_queued_messages 0'] : []),
      'log_dest stderr',
      'log_type error',
      'log_type warning',
      `listener ${ports.tcp} ${HOST}`,
      `listener ${ports.tls} ${HOST}`,
      `certfile ${files.serverCert}`,
      `keyfile ${files.serverKey}`,
      'tls_version tlsv1.2', // Mosquitto 2.0: TLS 1.2 or newer, as Portcullis
      `listener ${ports.mtls} ${HOST}`,
      `cafile ${files.ca}`,
      `certfile ${files.serverCert}`,
      `keyfile ${files.serverKey}`,
      'tls_version tlsv1.2',
      'require_certificate true',
      ...(on ? ['use_identity_as_username true'] : []),
      '',
    ].join('\n'),
  );
  const [cmd, args] = pinned(pin, mosquittoPath, ['-c', conf]);
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const proc = wrap('mosquitto', security, child, HOST, () => rmSync(dir, { recursive: true, force: true }));
  proc.ports = ports;
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (proc.exited) {
      await proc.stop();
      throw new BrokerUnavailable(`mosquitto exited: ${proc.exited}${tail(proc)}`);
    }
    if ((await canConnect(HOST, ports.tcp)) && (await canConnect(HOST, ports.mtls))) return proc;
    if (Date.now() > deadline) {
      await proc.stop();
      throw new BrokerUnavailable(`mosquitto did not accept connections on ${HOST}:${ports.tcp} within 10 s${tail(proc)}`);
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

function wrap(name: BrokerName | 'floor', security: Security, child: ChildProcess, host: string, cleanup?: () => void): RunningBrokerProcess {
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
    security,
    host,
    ports: { tcp: 0, tls: 0, mtls: 0 },
    pid: child.pid ?? -1,
    exited: null as string | null,
    cpuSeconds: () => procCpuSeconds(child.pid),
    rssKb: () => procRssKb(child.pid),
    collectGarbage: () => name !== 'mosquitto' && child.exitCode === null && child.kill('SIGUSR2'),
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

/** VmRSS of a process in KiB; null when not on Linux or the process is gone. */
export function procRssKb(pid: number | undefined): number | null {
  if (pid === undefined || process.platform !== 'linux') return null;
  try {
    const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** A port free on HOST now (the OS's pick), for a broker or a listener started after. */
export function freePort(): Promise<number> {
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
