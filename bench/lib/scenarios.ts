/**
 * The load generator: flow-controlled throughput runs and a paced latency run, over raw sockets.
 *
 * Flow control: a publisher may have at most `window` messages that are not yet seen by every
 * subscriber (and, for QoS 1, not yet PUBACKed). Progress per (publisher, subscriber) is the highest
 * sequence number received, so a lost QoS 0 message does not shrink the window forever.
 */
import { performance } from 'node:perf_hooks';
import { BenchClient, withTimeout, type Endpoint } from './client.ts';
import { PublishTemplate, type QoS, type ReceivedPublish } from './mqtt.ts';
import { systemBusySeconds, type RunningBrokerProcess } from './brokers.ts';

export interface ThroughputSpec {
  publishers: number;
  subscribers: number;
  qos: QoS;
  /** Topic published by publisher i; with several, the publisher cycles through them message by message. */
  topic: (i: number) => string | string[];
  /** Filter(s) subscriber s subscribes to. Every subscriber must match every published topic exactly once. */
  filter: string | ((s: number) => string | string[]);
  /** Filters one extra client subscribes to that match nothing published (a bigger subscription tree). */
  background?: string[];
  payloadSize: number;
  window: number;
  durationMs: number;
  /** Subscribers connect with clean session false: deliveries go through a persistent session (and a durable store, when the broker has one). */
  persistentSubscribers?: boolean;
}

export interface ThroughputResult {
  ok: boolean;
  failure?: string;
  /** Messages published (all publishers). */
  published: number;
  /** Deliveries expected: published × subscribers (each subscriber receives every message). */
  expected: number;
  /** Unique deliveries received. */
  received: number;
  lost: number;
  duplicates: number;
  outOfOrder: number;
  unexpectedAcks: number;
  elapsedS: number;
  /** Unique deliveries per second, first PUBLISH written → last delivery received. */
  deliveriesPerS: number;
  publishesPerS: number;
  /** CPU of the load generator, fraction of one core over the run. */
  generatorCpu: number;
  /** CPU of the broker process, fraction of one core over the run (null without /proc). */
  brokerCpu: number | null;
  /** CPU used by everything else on the machine during the run, in cores (noise indicator; null without /proc). */
  otherCpu: number | null;
}

export interface LatencySpec {
  topic: string;
  payloadSize: number;
  ratePerS: number;
  durationMs: number;
}

export interface LatencyResult {
  ok: boolean;
  failure?: string;
  published: number;
  received: number;
  lost: number;
  duplicates: number;
  /** Achieved publish rate. */
  ratePerS: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  generatorCpu: number;
  brokerCpu: number | null;
  otherCpu: number | null;
}

/** Received sequence numbers of one (publisher, subscriber) stream: a growable bitmap. */
class SeqTracker {
  private bits = new Uint8Array(1 << 14);
  received = 0;
  duplicates = 0;
  outOfOrder = 0;
  highest = -1;

  add(seq: number): void {
    const byte = seq >>> 3;
    if (byte >= this.bits.length) {
      let n = this.bits.length * 2;
      while (n <= byte) n *= 2;
      const b = new Uint8Array(n);
      b.set(this.bits);
      this.bits = b;
    }
    const mask = 1 << (seq & 7);
    if ((this.bits[byte]! & mask) !== 0) {
      this.duplicates++;
      return;
    }
    this.bits[byte]! |= mask;
    this.received++;
    if (seq > this.highest) this.highest = seq;
    else this.outOfOrder++;
  }
}

interface Clients {
  pubs: BenchClient[];
  subs: BenchClient[];
  closeAll(): Promise<void>;
}

let runCounter = 0;

async function connectClients(endpoint: Endpoint, publishers: number, subscribers: number, filter: ThroughputSpec['filter'], qos: QoS, onFailure: (e: Error) => void, background: string[] = [], persistent = false): Promise<Clients> {
  const tag = `bench-${process.pid}-${++runCounter}`;
  const all: BenchClient[] = [];
  const closeAll = async (): Promise<void> => {
    await Promise.all(all.map((c) => c.close()));
    // Persistent sessions outlive their connections: end them (a clean connect), or the next
    // run in the same broker would also feed queues nobody reads.
    if (persistent) await Promise.all(Array.from({ length: subscribers }, async (_, i) => (await BenchClient.connect(endpoint, `${tag}-sub-${i}`)).close()));
  };
  try {
    const subs = await Promise.all(
      Array.from({ length: subscribers }, async (_, i) => {
        const c = await BenchClient.connect(endpoint, `${tag}-sub-${i}`, 5000, 60, !persistent);
        all.push(c);
        await c.subscribe(1, typeof filter === 'function' ? filter(i) : filter, qos);
        return c;
      }),
    );
    if (background.length > 0) {
      const c = await BenchClient.connect(endpoint, `${tag}-background`);
      all.push(c);
      for (let i = 0; i < background.length; i += 100) await c.subscribe(1 + i / 100, background.slice(i, i + 100), qos);
    }
    const pubs = await Promise.all(
      Array.from({ length: publishers }, async (_, i) => {
        const c = await BenchClient.connect(endpoint, `${tag}-pub-${i}`);
        all.push(c);
        return c;
      }),
    );
    for (const c of all) c.onFailure = onFailure;
    return { pubs, subs, closeAll };
  } catch (e) {
    await closeAll();
    throw e;
  }
}

function cpuSince(start: NodeJS.CpuUsage, wallMs: number): number {
  const d = process.cpuUsage(start);
  return wallMs > 0 ? (d.user + d.system) / 1000 / wallMs : 0;
}

interface CpuMark {
  gen: NodeJS.CpuUsage;
  broker: number | null;
  system: number | null;
  t: number;
}

function cpuMark(broker: RunningBrokerProcess): CpuMark {
  return { gen: process.cpuUsage(), broker: broker.cpuSeconds(), system: systemBusySeconds(), t: performance.now() };
}

/** Generator, broker and other CPU since the mark, each as a fraction of one core. */
function cpuSinceMark(broker: RunningBrokerProcess, m: CpuMark): { generatorCpu: number; brokerCpu: number | null; otherCpu: number | null } {
  const wallMs = performance.now() - m.t;
  const generatorCpu = cpuSince(m.gen, wallMs);
  const brokerCpu = brokerCpuSince(broker, m.broker, wallMs);
  const sys = systemBusySeconds();
  const otherCpu = sys === null || m.system === null || brokerCpu === null || wallMs <= 0 ? null : Math.max(0, ((sys - m.system) * 1000) / wallMs - brokerCpu - generatorCpu);
  return { generatorCpu, brokerCpu, otherCpu };
}

function brokerCpuSince(broker: RunningBrokerProcess, start: number | null, wallMs: number): number | null {
  const now = broker.cpuSeconds();
  return start === null || now === null || wallMs <= 0 ? null : ((now - start) * 1000) / wallMs;
}

/** Gives up when no message or ack arrived for this long. */
const STALL_MS = 2000;

/**
 * Pause between the last SUBACK and the first PUBLISH. Without it the first ~20 messages on fresh
 * connections arrive ~18 ms late with every broker (connection start-up on loopback), which would
 * show up as the latency maximum.
 */
const SETTLE_MS = 200;
const settle = (): Promise<void> => new Promise((r) => setTimeout(r, SETTLE_MS));

export async function runThroughput(broker: RunningBrokerProcess, endpoint: Endpoint, spec: ThroughputSpec): Promise<ThroughputResult> {
  const { publishers: P, subscribers: S, qos, window } = spec;
  let failure: string | null = null;
  let finish: () => void = () => {};
  const done = new Promise<void>((resolve) => {
    finish = resolve;
  });
  const fail = (why: string): void => {
    failure ??= why;
    finish();
  };
  const clients = await connectClients(endpoint, P, S, spec.filter, qos, (e) => fail(`client error: ${e.message}`), spec.background, spec.persistentSubscribers === true);
  await settle();

  const templates = Array.from({ length: P }, (_, i) => {
    const t = spec.topic(i);
    return (Array.isArray(t) ? t : [t]).map((topic) => new PublishTemplate(topic, qos, spec.payloadSize));
  });
  const trackers = Array.from({ length: P }, () => Array.from({ length: S }, () => new SeqTracker()));
  const sent = new Array<number>(P).fill(0);
  const acked = new Array<number>(P).fill(0);
  const blocked = new Array<boolean>(P).fill(false);
  // QoS 1/2: outstanding packet ids per publisher (packet id = seq % 65535 + 1; window < 65535)
  const outstanding = qos > 0 ? Array.from({ length: P }, () => new Uint8Array(65536)) : [];
  let unexpectedAcks = 0;
  let invalid = 0;
  let lastActivity = performance.now();
  let lastDelivery = 0;
  let sending = true;
  const minBatch = Math.max(1, Math.floor(window / 16));
  const maxBatch = Math.min(window, 4096);

  const progress = (p: number): number => {
    let min = qos > 0 ? acked[p]! : Number.POSITIVE_INFINITY;
    for (const t of trackers[p]!) if (t.highest + 1 < min) min = t.highest + 1;
    return min;
  };

  let pumpScheduled = false;
  const schedulePump = (): void => {
    if (!pumpScheduled && sending) {
      pumpScheduled = true;
      setImmediate(pump);
    }
  };

  const pump = (): void => {
    pumpScheduled = false;
    if (!sending) return;
    const now = performance.now();
    if (now >= tStop) {
      stopSending();
      return;
    }
    for (let p = 0; p < P; p++) {
      if (blocked[p]) continue;
      const inFlight = sent[p]! - progress(p);
      const allowed = window - inFlight;
      if (allowed <= 0 || (allowed < minBatch && inFlight > 0)) continue;
      const n = Math.min(allowed, maxBatch);
      const tpls = templates[p]!;
      const buf = Buffer.allocUnsafe(n * Math.max(...tpls.map((t) => t.packetSize)));
      let off = 0;
      let seq = sent[p]!;
      for (let i = 0; i < n; i++, seq++) {
        let id = 0;
        if (qos > 0) {
          id = (seq % 65535) + 1;
          outstanding[p]![id] = 1;
        }
        off = tpls[seq % tpls.length]!.write(buf, off, p, seq, now, id);
      }
      sent[p] = seq;
      const sock = clients.pubs[p]!.socket;
      if (!sock.write(off === buf.length ? buf : buf.subarray(0, off))) {
        blocked[p] = true;
        sock.once('drain', () => {
          blocked[p] = false;
          schedulePump();
        });
      }
    }
  };

  const isComplete = (): boolean => {
    for (let p = 0; p < P; p++) {
      if (qos > 0 && acked[p] !== sent[p]) return false;
      for (const t of trackers[p]!) {
        if (qos > 0 ? t.received < sent[p]! : t.highest + 1 < sent[p]!) return false;
      }
    }
    return true;
  };

  const onDelivery = (s: number) => (m: ReceivedPublish): void => {
    const p = m.publisher;
    const tracker = trackers[p]?.[s];
    if (tracker === undefined || m.seq < 0) {
      invalid++;
      return;
    }
    tracker.add(m.seq);
  };
  const onChunk = (): void => {
    const now = performance.now();
    lastActivity = now;
    lastDelivery = now;
    if (sending) schedulePump();
    else if (isComplete()) finish();
  };
  clients.subs.forEach((c, s) => {
    c.callbacks = { onPublish: onDelivery(s), onChunkDone: onChunk };
  });
  clients.pubs.forEach((c, p) => {
    c.callbacks = {
      onPuback: (id) => {
        const o = outstanding[p];
        if (o === undefined || o[id] !== 1) {
          unexpectedAcks++;
          return;
        }
        o[id] = 0;
        acked[p]!++;
      },
      onChunkDone: () => {
        lastActivity = performance.now();
        if (sending) schedulePump();
        else if (isComplete()) finish();
      },
    };
  });

  const mark = cpuMark(broker);
  const t0 = mark.t;
  const tStop = t0 + spec.durationMs;
  const stopSending = (): void => {
    if (!sending) return;
    sending = false;
    if (isComplete()) finish();
  };

  const stopTimer = setTimeout(stopSending, spec.durationMs);
  const watchdog = setInterval(() => {
    const idle = performance.now() - lastActivity;
    if (idle < STALL_MS) return;
    if (sending) fail(`stalled: nothing received for ${STALL_MS} ms while publishing`);
    else finish(); // draining ended: whatever is missing now is lost
  }, 100);
  if (failure === null) pump();
  await done;
  clearTimeout(stopTimer);
  clearInterval(watchdog);
  const tEnd = performance.now();
  const cpu = cpuSinceMark(broker, mark);
  const bytesIn = clients.subs.reduce((a, c) => a + c.socket.bytesRead, 0);
  await withTimeout(clients.closeAll(), 5000, 'clients to close').catch(() => {});

  const published = sent.reduce((a, b) => a + b, 0);
  let received = 0;
  let duplicates = 0;
  let outOfOrder = 0;
  for (const row of trackers) {
    for (const t of row) {
      received += t.received;
      duplicates += t.duplicates;
      outOfOrder += t.outOfOrder;
    }
  }
  const expected = published * S;
  const lost = expected - received;
  const ackedTotal = acked.reduce((a, b) => a + b, 0);
  const elapsedMs = Math.max(1, (lastDelivery || tEnd) - t0);
  if (failure === null) {
    if (invalid > 0) failure = `${invalid} deliveries with an unknown publisher or a short payload`;
    else if (qos > 0 && lost > 0) failure = `QoS ${qos} loss: ${lost} of ${expected} deliveries never arrived`;
    else if (qos > 0 && ackedTotal < published) failure = `QoS ${qos}: ${published - ackedTotal} ${qos === 1 ? 'PUBACKs' : 'PUBCOMPs'} missing`;
    else if (qos !== 1 && duplicates > 0) failure = `QoS ${qos} duplicates: ${duplicates} (${qos === 0 ? 'at-most-once' : 'exactly-once'} violated)`;
    else if (received === 0) failure = 'nothing was delivered';
    else if (bytesIn < received * Math.min(...templates[0]!.map((t) => t.packetSize))) failure = `subscribers read ${bytesIn} bytes, fewer than ${received} deliveries need`;
  }
  return {
    ok: failure === null,
    ...(failure !== null ? { failure } : {}),
    published,
    expected,
    received,
    lost,
    duplicates,
    outOfOrder,
    unexpectedAcks,
    elapsedS: elapsedMs / 1000,
    deliveriesPerS: (received / elapsedMs) * 1000,
    publishesPerS: (published / elapsedMs) * 1000,
    ...cpu,
  };
}

/** QoS 1, one publisher → one subscriber, paced at a fixed rate; latency = receive time − send time. */
export async function runLatency(broker: RunningBrokerProcess, endpoint: Endpoint, spec: LatencySpec): Promise<LatencyResult> {
  let failure: string | null = null;
  let finish: () => void = () => {};
  const done = new Promise<void>((resolve) => {
    finish = resolve;
  });
  const fail = (why: string): void => {
    failure ??= why;
    finish();
  };
  const clients = await connectClients(endpoint, 1, 1, spec.topic, 1, (e) => fail(`client error: ${e.message}`));
  await settle();
  const pub = clients.pubs[0]!;
  const sub = clients.subs[0]!;
  const tpl = new PublishTemplate(spec.topic, 1, spec.payloadSize);
  const total = Math.max(1, Math.round((spec.ratePerS * spec.durationMs) / 1000));
  const latencies = new Float64Array(total);
  let samples = 0;
  let lastSendTime = 0;
  const tracker = new SeqTracker();
  const outstanding = new Uint8Array(65536);
  let sent = 0;
  let acked = 0;
  let unexpected = 0;
  let lastActivity = performance.now();
  let sending = true;
  const MAX_OUTSTANDING = 10_000;

  const isComplete = (): boolean => sent === total && acked === sent && tracker.received >= sent;
  sub.callbacks = {
    onPublish: (m) => {
      const now = performance.now();
      if (m.seq < 0 || m.seq >= total || m.publisher !== 0) {
        unexpected++;
        return;
      }
      const before = tracker.received;
      tracker.add(m.seq);
      if (tracker.received > before) latencies[samples++] = now - m.sentAt;
    },
    onChunkDone: () => {
      lastActivity = performance.now();
      if (!sending && isComplete()) finish();
    },
  };
  pub.callbacks = {
    onPuback: (id) => {
      if (outstanding[id] !== 1) {
        unexpected++;
        return;
      }
      outstanding[id] = 0;
      acked++;
    },
    onChunkDone: () => {
      lastActivity = performance.now();
      if (!sending && isComplete()) finish();
    },
  };

  const mark = cpuMark(broker);
  const t0 = mark.t;
  const interval = 1000 / spec.ratePerS;
  let timer: NodeJS.Timeout | undefined;
  const tick = (): void => {
    if (failure !== null) return;
    const now = performance.now();
    const due = Math.min(total, Math.floor((now - t0) / interval) + 1);
    while (sent < due) {
      if (sent - Math.min(acked, tracker.received) > MAX_OUTSTANDING) {
        fail(`broker cannot sustain ${spec.ratePerS} msg/s: more than ${MAX_OUTSTANDING} messages outstanding`);
        return;
      }
      const id = (sent % 65535) + 1;
      outstanding[id] = 1;
      const buf = Buffer.allocUnsafe(tpl.packetSize);
      lastSendTime = performance.now();
      tpl.write(buf, 0, 0, sent, lastSendTime, id);
      pub.socket.write(buf);
      sent++;
    }
    if (sent >= total) {
      sending = false;
      if (isComplete()) finish();
      return;
    }
    timer = setTimeout(tick, Math.max(0, t0 + sent * interval - performance.now()));
  };
  const watchdog = setInterval(() => {
    if (performance.now() - lastActivity >= STALL_MS) finish();
  }, 100);
  tick();
  await done;
  clearTimeout(timer);
  clearInterval(watchdog);
  const cpu = cpuSinceMark(broker, mark);
  await withTimeout(clients.closeAll(), 5000, 'clients to close').catch(() => {});

  const lost = sent - tracker.received;
  if (failure === null) {
    if (lost > 0) failure = `QoS 1 loss: ${lost} of ${sent} messages never arrived`;
    else if (acked < sent) failure = `QoS 1: ${sent - acked} PUBACKs missing`;
    else if (unexpected > 0) failure = `${unexpected} unexpected packets (unknown PUBACK ids or foreign messages)`;
  }
  const sorted = Float64Array.from(latencies.subarray(0, samples)).sort();
  return {
    ok: failure === null,
    ...(failure !== null ? { failure } : {}),
    published: sent,
    received: tracker.received,
    lost,
    duplicates: tracker.duplicates,
    ratePerS: sent > 1 ? ((sent - 1) / Math.max(1, lastSendTime - t0)) * 1000 : 0,
    p50Ms: percentile(sorted, 0.5),
    p99Ms: percentile(sorted, 0.99),
    maxMs: sorted.length > 0 ? sorted[sorted.length - 1]! : Number.NaN,
    ...cpu,
  };
}

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil(q * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}
