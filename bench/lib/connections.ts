/**
 * Connection scenarios: connect loops (TCP or TLS handshake + CONNECT + CONNACK + DISCONNECT,
 * from `concurrency` parallel loops for a fixed time) and idle memory per connection (broker RSS
 * before and after opening N connections that then stay idle).
 */
import { performance } from 'node:perf_hooks';
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
}

let counter = 0;

/**
 * `concurrency` loops, each: connect, CONNECT, wait for CONNACK, send DISCONNECT and end the socket
 * (without waiting for the broker's FIN: that wait only adds loopback round trips, not broker work).
 */
export async function runConnects(broker: RunningBrokerProcess, endpoint: Endpoint, concurrency: number, durationMs: number): Promise<ConnectResult> {
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
  /** Node brokers: the same from the reading before that GC (null for Mosquitto). */
  perConnectionNoGcKb: number | null;
  /** How long opening them took, seconds. */
  openS: number;
}

/**
 * Opens `count` connections (MQTT 3.1.1, keep-alive 600 s, nothing subscribed), `batch` at a time,
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
  try {
    for (let i = 0; i < count && failure === null; i += batch) {
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
    const openS = (performance.now() - t0) / 1000;
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
      perConnectionNoGcKb: clients.length > 0 && b.noGc !== null && a.noGc !== null ? (a.noGc - b.noGc) / clients.length : null,
      openS,
    };
  } finally {
    for (const c of clients) c.socket.destroy();
    await withTimeout(sleep(500), 1000, 'close').catch(() => {});
  }
}
