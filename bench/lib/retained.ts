/**
 * Retained messages to a new wildcard subscriber: N retained messages are stored once per broker
 * (QoS 1, each on its own topic under `<zone>/sensor/...`, every PUBACK awaited), then each run
 * connects a fresh subscriber to `+/sensor/#` and times SUBSCRIBE → the last of the N received.
 * Every message must arrive exactly once, with the retain flag; otherwise the run FAILS.
 */
import { performance } from 'node:perf_hooks';
import { BenchClient, withTimeout, type Endpoint } from './client.ts';
import { PublishTemplate } from './mqtt.ts';
import { systemBusySeconds, type RunningBrokerProcess } from './brokers.ts';

export const RETAINED_FILTER = '+/sensor/#';
const topicOf = (i: number): string => `zone${i % 100}/sensor/retained/${i}`;

let counter = 0;

/** Publishes `count` retained messages (QoS 1, 64 at a time in flight) and waits for every PUBACK. */
export async function storeRetained(endpoint: Endpoint, count: number, payloadSize: number): Promise<void> {
  const pub = await BenchClient.connect(endpoint, `bench-${process.pid}-rp${++counter}`);
  try {
    let acked = 0;
    let sent = 0;
    const WINDOW = 16; // below every broker's inbound QoS 1 limit
    await withTimeout(
      new Promise<void>((resolve, reject) => {
        pub.onFailure = reject;
        const send = (): void => {
          while (sent < count && sent - acked < WINDOW) {
            const tpl = new PublishTemplate(topicOf(sent), 1, payloadSize, true);
            const buf = Buffer.allocUnsafe(tpl.packetSize);
            tpl.write(buf, 0, 0, sent, performance.now(), (sent % 65535) + 1);
            pub.socket.write(buf);
            sent++;
          }
        };
        pub.callbacks = {
          onPuback: () => {
            acked++;
            if (acked === count) resolve();
          },
          onChunkDone: send,
        };
        send();
      }),
      Math.max(10_000, count * 5),
      `PUBACKs for ${count} retained messages`,
    );
  } finally {
    await pub.close();
  }
}

export interface RetainedResult {
  ok: boolean;
  failure?: string;
  expected: number;
  received: number;
  duplicates: number;
  /** SUBSCRIBE written → last retained message received. */
  elapsedMs: number;
  messagesPerS: number;
  generatorCpu: number;
  brokerCpu: number | null;
  otherCpu: number | null;
}

export async function runRetained(broker: RunningBrokerProcess, endpoint: Endpoint, count: number): Promise<RetainedResult> {
  const sub = await BenchClient.connect(endpoint, `bench-${process.pid}-rs${++counter}`);
  const seen = new Uint8Array(count);
  let received = 0;
  let duplicates = 0;
  let foreign = 0;
  let notRetained = 0;
  let tLast = 0;
  let failure: string | null = null;
  const gen0 = process.cpuUsage();
  const brk0 = broker.cpuSeconds();
  const sys0 = systemBusySeconds();
  let t0 = 0;
  try {
    await new Promise<void>((resolve) => {
      let lastActivity = performance.now();
      const watchdog = setInterval(() => {
        if (performance.now() - lastActivity > 2000) {
          clearInterval(watchdog);
          resolve();
        }
      }, 100);
      sub.onFailure = (e) => {
        failure ??= `subscriber failed: ${e.message}`;
        clearInterval(watchdog);
        resolve();
      };
      sub.callbacks = {
        onPublish: (m) => {
          if (m.seq < 0 || m.seq >= count) return void foreign++;
          if (!m.retain) notRetained++;
          if (seen[m.seq] === 1) return void duplicates++;
          seen[m.seq] = 1;
          received++;
          tLast = performance.now();
        },
        onChunkDone: () => {
          lastActivity = performance.now();
          if (received === count) {
            clearInterval(watchdog);
            resolve();
          }
        },
      };
      t0 = performance.now();
      sub.subscribe(1, RETAINED_FILTER, 0).catch((e: unknown) => {
        failure ??= e instanceof Error ? e.message : String(e);
        clearInterval(watchdog);
        resolve();
      });
    });
  } finally {
    await sub.close();
  }
  const wallMs = Math.max(1, (tLast || performance.now()) - t0);
  const gen = process.cpuUsage(gen0);
  const generatorCpu = (gen.user + gen.system) / 1000 / wallMs;
  const brk1 = broker.cpuSeconds();
  const sys1 = systemBusySeconds();
  const brokerCpu = brk0 === null || brk1 === null ? null : ((brk1 - brk0) * 1000) / wallMs;
  const otherCpu = sys0 === null || sys1 === null || brokerCpu === null ? null : Math.max(0, ((sys1 - sys0) * 1000) / wallMs - brokerCpu - generatorCpu);
  if (failure === null) {
    if (received < count) failure = `retained loss: ${count - received} of ${count} never arrived`;
    else if (duplicates > 0) failure = `${duplicates} retained messages arrived twice`;
    else if (notRetained > 0) failure = `${notRetained} messages arrived without the retain flag`;
    else if (foreign > 0) failure = `${foreign} unexpected messages`;
  }
  return {
    ok: failure === null,
    ...(failure !== null ? { failure } : {}),
    expected: count,
    received,
    duplicates,
    elapsedMs: wallMs,
    messagesPerS: (received / wallMs) * 1000,
    generatorCpu,
    brokerCpu,
    otherCpu,
  };
}
