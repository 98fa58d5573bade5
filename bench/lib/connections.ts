/**
 * Connection scenarios: connect loops (TCP or TLS handshake + CONNECT + CONNACK + DISCONNECT,
 * from `concurrency` parallel loops for a fixed time) and idle memory per connection (broker RSS
 * before and after opening N connections that then stay idle).
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { BenchClient, withTimeout, type Endpoint } from './client.ts';
import { sleep, systemBusySeconds, type RunningBrokerProcess } from './brokers.ts';

export interface ConnectResult {
  ok: boolean;
  failure?: string;
  connects: number;
  connectsPerS: number;
  /** Broker CPU milliseconds per completed connect (null without /proc). */
  brokerMsPerConnect: number | null;
  generatorCpu: number;
  brokerCpu: number | null;
  otherCpu: number | null;
  /** Which load generator ran: 'c' (bench/gen/connect.c) or 'node'. */
  generator: 'c' | 'node';
}

let counter = 0;

/**
 * The C connect generator, compiled on first use: with TLS (OpenSSL) when its headers and
 * libraries are found (`tls: true`), else plain TCP only (`tls: false`, `tlsWhy` says why); null
 * (with the reason) when it cannot be built at all.
 */
export type ConnectGenerator = { path: string; tls: true } | { path: string; tls: false; tlsWhy: string } | { path: null; why: string };
let cGenerator: ConnectGenerator | undefined;

export function connectGenerator(): ConnectGenerator {
  if (cGenerator !== undefined) return cGenerator;
  if (process.env.BENCH_NODE_CONNECT_GENERATOR === '1') return (cGenerator = { path: null, why: 'BENCH_NODE_CONNECT_GENERATOR=1' });
  if (process.platform !== 'linux') return (cGenerator = { path: null, why: `epoll is Linux-only (${process.platform})` });
  const src = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'gen', 'connect.c');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'portcullis-bench-gen-'));
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  const out = path.join(dir, 'connect');
  const cc = process.env.CC ?? 'cc';
  const firstLine = (r: ReturnType<typeof spawnSync>): string => (r.error?.message ?? String(r.stderr)).trim().split('\n')[0] ?? '';
  const withTls = spawnSync(cc, ['-O2', '-DWITH_TLS', '-o', out, src, '-lssl', '-lcrypto'], { encoding: 'utf8' });
  if (!withTls.error && withTls.status === 0) return (cGenerator = { path: out, tls: true });
  const plain = spawnSync(cc, ['-O2', '-o', out, src], { encoding: 'utf8' });
  if (plain.error || plain.status !== 0) return (cGenerator = { path: null, why: `${cc} failed: ${firstLine(plain)}` });
  return (cGenerator = { path: out, tls: false, tlsWhy: `no OpenSSL to build against (${firstLine(withTls)}; Debian: apt-get install libssl-dev)` });
}

/**
 * Connect loops in the C generator (bench/gen/connect.c), plain TCP or TLS: one epoll thread in a
 * child process, which inherits this process's CPU pinning. Its CPU is read from its own getrusage.
 */
async function runConnectsC(gen: string, broker: RunningBrokerProcess, endpoint: Endpoint, concurrency: number, durationMs: number): Promise<ConnectResult> {
  const tag = `bench-${process.pid}-c${++counter}`;
  const creds = endpoint.credentials ? [endpoint.credentials.username, endpoint.credentials.password] : [];
  const files = endpoint.tls?.files;
  const tlsArgs = endpoint.tls === undefined || files === undefined ? [] : ['--ca', files.ca, '--servername', endpoint.tls.servername];
  if (files?.cert !== undefined && files.key !== undefined) tlsArgs.push('--cert', files.cert, '--key', files.key);
  const brk0 = broker.cpuSeconds();
  const sys0 = systemBusySeconds();
  const t0 = performance.now();
  const child = spawn(gen, [...tlsArgs, endpoint.host, String(endpoint.port), String(concurrency), String(durationMs), tag, ...creds], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
  child.stderr.on('data', (d: Buffer) => (err += d.toString('utf8')));
  const code = await withTimeout(
    new Promise<number | null>((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', (c) => resolve(c));
    }),
    durationMs + 15_000,
    'C connect generator',
  ).catch((e: unknown) => {
    child.kill('SIGKILL');
    throw e;
  });
  const wallMs = performance.now() - t0;
  const brk1 = broker.cpuSeconds();
  const sys1 = systemBusySeconds();
  let parsed: { connects: number; failures: number; failure: string | null; wallMs: number; cpuMs: number };
  try {
    parsed = JSON.parse(out.trim().split('\n').pop() ?? '') as typeof parsed;
  } catch {
    throw new Error(`C connect generator exited with ${code} and no result${err ? `: ${err.trim()}` : ''}`);
  }
  const brokerSeconds = brk0 === null || brk1 === null ? null : brk1 - brk0;
  const brokerCpu = brokerSeconds === null ? null : (brokerSeconds * 1000) / wallMs;
  const generatorCpu = parsed.cpuMs / parsed.wallMs;
  const otherCpu = sys0 === null || sys1 === null || brokerCpu === null ? null : Math.max(0, ((sys1 - sys0) * 1000) / wallMs - brokerCpu - generatorCpu);
  let failure = parsed.failures > 0 ? `${parsed.failures} connect(s) failed, first: ${parsed.failure ?? 'unknown'}` : null;
  if (failure === null && parsed.connects === 0) failure = 'no connect completed';
  return {
    ok: failure === null,
    ...(failure !== null ? { failure } : {}),
    connects: parsed.connects,
    connectsPerS: (parsed.connects / parsed.wallMs) * 1000,
    brokerMsPerConnect: brokerSeconds === null || parsed.connects === 0 ? null : (brokerSeconds * 1000) / parsed.connects,
    generatorCpu,
    brokerCpu,
    otherCpu,
    generator: 'c',
  };
}

/**
 * `concurrency` loops, each: connect, CONNECT, wait for CONNACK, send DISCONNECT and end the socket
 * (without waiting for the broker's FIN: that wait only adds loopback round trips, not broker work).
 */
export async function runConnects(broker: RunningBrokerProcess, endpoint: Endpoint, concurrency: number, durationMs: number): Promise<ConnectResult> {
  const cGen = connectGenerator();
  if (cGen.path !== null && (endpoint.tls === undefined || (cGen.tls && endpoint.tls.files !== undefined))) return runConnectsC(cGen.path, broker, endpoint, concurrency, durationMs);
  const tag = `bench-${process.pid}-c${++counter}`;
  let connects = 0;
  let failure: string | null = null;
  const gen0 = process.cpuUsage();
  const brk0 = broker.cpuSeconds();
  const sys0 = systemBusySeconds();
  const t0 = performance.now();
  const end = t0 + durationMs;
  let n = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (failure === null && performance.now() < end) {
        try {
          const c = await BenchClient.connect(endpoint, `${tag}-${n++}`);
          connects++;
          c.disconnect();
        } catch (e) {
          failure ??= e instanceof Error ? e.message : String(e);
        }
      }
    }),
  );
  const wallMs = performance.now() - t0;
  const gen = process.cpuUsage(gen0);
  const generatorCpu = (gen.user + gen.system) / 1000 / wallMs;
  const brk1 = broker.cpuSeconds();
  const sys1 = systemBusySeconds();
  const brokerSeconds = brk0 === null || brk1 === null ? null : brk1 - brk0;
  const brokerCpu = brokerSeconds === null ? null : (brokerSeconds * 1000) / wallMs;
  const otherCpu = sys0 === null || sys1 === null || brokerCpu === null ? null : Math.max(0, ((sys1 - sys0) * 1000) / wallMs - brokerCpu - generatorCpu);
  if (failure === null && connects === 0) failure = 'no connect completed';
  return {
    ok: failure === null,
    ...(failure !== null ? { failure } : {}),
    connects,
    connectsPerS: (connects / wallMs) * 1000,
    brokerMsPerConnect: brokerSeconds === null || connects === 0 ? null : (brokerSeconds * 1000) / connects,
    generatorCpu,
    brokerCpu,
    otherCpu,
    generator: 'node',
  };
}

export interface MemoryResult {
  ok: boolean;
  failure?: string;
  connections: number;
  beforeKb: number;
  afterKb: number;
  /** (after − before) / connections, in KiB; for Node brokers both readings follow a full GC. */
  perConnectionKb: number;
  /**
   * (after − reading at half) / the second half's connections: what one more idle connection
   * costs once the broker holds many, without one-time growth (allocator arenas, heap spaces).
   */
  marginalKb: number;
  /** Node brokers: the same from the reading before that GC (null for Mosquitto). */
  perConnectionNoGcKb: number | null;
  /** How long opening them took, seconds. */
  openS: number;
}

/**
 * Opens `count` connections (MQTT 3.1.1, keep-alive 600 s, nothing subscribed), `batch` at a time
 * (reading RSS once more when half are open, for the marginal figure),
 * waits for the broker to settle and reads its RSS. All connections are closed before returning.
 * A warm-up of 200 connections, opened and closed first, keeps one-time costs (JIT, TLS contexts,
 * pools) out of the per-connection figure. For the Node brokers each reading follows a full GC
 * (without it, the figure swings with whatever garbage the heap holds); the reading just before
 * that GC is kept too.
 */
export async function runIdleMemory(broker: RunningBrokerProcess, endpoint: Endpoint, count: number, batch = 50): Promise<MemoryResult> {
  const tag = `bench-${process.pid}-m${++counter}`;
  const clients: BenchClient[] = [];
  let failure: string | null = null;
  for (let i = 0; i < Math.min(200, count); i += batch) {
    const warm = await Promise.all(Array.from({ length: batch }, (_, k) => BenchClient.connect(endpoint, `${tag}-warm-${i + k}`, 10_000, 600)));
    for (const c of warm) c.disconnect();
  }
  const settledRss = async (): Promise<{ rss: number | null; noGc: number | null }> => {
    await sleep(1000);
    const noGc = broker.rssKb();
    if (!broker.collectGarbage()) return { rss: noGc, noGc: null };
    await sleep(1000);
    return { rss: broker.rssKb(), noGc };
  };
  const b = await settledRss();
  const before = b.rss;
  const t0 = performance.now();
  const half = Math.floor(count / 2);
  let mid: number | null = null;
  let atMid = 0;
  let midWaitMs = 0;
  try {
    for (let i = 0; i < count && failure === null; i += batch) {
      if (mid === null && i >= half) {
        const w = performance.now();
        mid = (await settledRss()).rss;
        atMid = clients.length;
        midWaitMs = performance.now() - w;
      }
      const opened = await Promise.allSettled(Array.from({ length: Math.min(batch, count - i) }, (_, k) => BenchClient.connect(endpoint, `${tag}-${i + k}`, 10_000, 600)));
      for (const o of opened) {
        if (o.status === 'fulfilled') {
          clients.push(o.value);
          o.value.onFailure = (e) => {
            failure ??= `an idle connection failed: ${e.message}`;
          };
        } else failure ??= o.reason instanceof Error ? o.reason.message : String(o.reason);
      }
    }
    const openS = (performance.now() - t0 - midWaitMs) / 1000;
    const a = await settledRss();
    const after = a.rss;
    if (failure === null && (before === null || after === null)) failure = 'broker RSS unavailable (no /proc)';
    return {
      ok: failure === null,
      ...(failure !== null ? { failure: `${failure} (${clients.length} of ${count} open)` } : {}),
      connections: clients.length,
      beforeKb: before ?? 0,
      afterKb: after ?? 0,
      perConnectionKb: clients.length > 0 && before !== null && after !== null ? (after - before) / clients.length : 0,
      marginalKb: clients.length > atMid && mid !== null && after !== null ? (after - mid) / (clients.length - atMid) : 0,
      perConnectionNoGcKb: clients.length > 0 && b.noGc !== null && a.noGc !== null ? (a.noGc - b.noGc) / clients.length : null,
      openS,
    };
  } finally {
    for (const c of clients) c.socket.destroy();
    await withTimeout(sleep(500), 1000, 'close').catch(() => {});
  }
}
