/**
 * Runs fuzz cases against a live broker over loopback sockets and checks what a hostile client
 * must never achieve: an exception escaping a handler (error log, uncaught exception or
 * unhandled rejection), a connection left hanging, a broker that stops serving, or connected
 * clients that are never released. Shared by test/fuzz.test.ts and `npm run fuzz`.
 */
import net from 'node:net';
import mqtt from 'mqtt';
import fc from 'fast-check';
import { createBroker, type RunningBroker } from '../../src/index.ts';
import { createLogger } from '../../src/log.ts';
import { encodeCase, frame, fuzzCase, str, u16, type FuzzCase } from './generators.ts';

/** Limits small enough that every stalled connection is closed within seconds. */
export const FUZZ_LIMITS = { connectTimeoutMs: 1000, maxKeepAlive: 2, keepAliveZeroMaxIdle: 2, maxSessionExpiry: 2 } as const;
const MAX_PACKET_SIZE = 1024 * 1024; // the broker's default, for the over-size violation

export interface FuzzBroker {
  broker: RunningBroker;
  port: number;
  /** Error-level log lines and process-level failures seen since the start. */
  errors: string[];
  stop(): Promise<void>;
}

export interface FuzzStats {
  cases: number;
  batches: number;
  connections: number;
  closedByBroker: number;
  stillServing: number;
  violationsRefused: number;
  v5ClosedWithoutDisconnect: number;
  problems: string[];
}

export function newStats(): FuzzStats {
  return { cases: 0, batches: 0, connections: 0, closedByBroker: 0, stillServing: 0, violationsRefused: 0, v5ClosedWithoutDisconnect: 0, problems: [] };
}

/**
 * Starts a broker on an ephemeral loopback port with default limits except short deadlines.
 * Its logger keeps every line at level error or above; uncaught exceptions and unhandled
 * rejections in this process are recorded too.
 */
export async function startFuzzBroker(): Promise<FuzzBroker> {
  const errors: string[] = [];
  const sink = {
    write(line: string) {
      try {
        const record = JSON.parse(line) as { level?: number; msg?: string; err?: unknown };
        if ((record.level ?? 0) >= 50) errors.push(`log: ${record.msg ?? ''} ${JSON.stringify(record.err ?? '')}`.slice(0, 2000));
      } catch {
        errors.push(`unparsable log line: ${line.slice(0, 200)}`);
      }
      return true;
    },
  } as unknown as NodeJS.WritableStream;
  const onUncaught = (err: unknown) => errors.push(`uncaughtException: ${(err as Error)?.stack ?? String(err)}`);
  const onRejection = (err: unknown) => errors.push(`unhandledRejection: ${(err as Error)?.stack ?? String(err)}`);
  process.on('uncaughtException', onUncaught);
  process.on('unhandledRejection', onRejection);
  const broker = createBroker(
    {
      listeners: [{ name: 'fuzz', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }],
      authorizers: ['allow-all'],
      sys: { intervalSeconds: 0 },
      audit: { sink: 'none' },
      store: { type: 'memory' },
      limits: { ...FUZZ_LIMITS },
      // Every case comes from 127.0.0.1; the per-address connect rate is not what is fuzzed here.
      admission: { exempt: ['127.0.0.1/32'] },
    },
    { logger: createLogger('warn', sink) },
  );
  const { listeners } = await broker.start();
  return {
    broker,
    port: listeners[0]?.port ?? 0,
    errors,
    async stop() {
      await broker.stop();
      process.off('uncaughtException', onUncaught);
      process.off('unhandledRejection', onRejection);
    },
  };
}

interface RawPacket {
  type: number;
  flags: number;
  body: Buffer;
}

/** Splits what the broker sent into packets; `rest` is the number of trailing bytes that are not a whole packet. */
function parse(buf: Buffer): { packets: RawPacket[]; rest: number } {
  const packets: RawPacket[] = [];
  let off = 0;
  while (off < buf.length) {
    let length = 0;
    let multiplier = 1;
    let i = off + 1;
    let complete = false;
    while (i < buf.length && i - off <= 4) {
      const digit = buf[i++] as number;
      length += (digit & 0x7f) * multiplier;
      multiplier *= 128;
      if ((digit & 0x80) === 0) {
        complete = true;
        break;
      }
    }
    if (!complete || i + length > buf.length) break;
    packets.push({ type: (buf[off] as number) >> 4, flags: (buf[off] as number) & 0x0f, body: buf.subarray(i, i + length) });
    off = i + length;
  }
  return { packets, rest: buf.length - off };
}

const PROBE_ID = 0xffff;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Plays one case on a fresh connection and returns what was wrong, if anything.
 *
 * - A violation must be refused: the connection closed, and a v5 client told with DISCONNECT
 *   and one of the right reason codes. The valid CONNECT before it must have been accepted.
 * - Anything else must not hang: after the case, a QoS 1 PUBLISH probe is sent, and the broker
 *   must either close the connection or acknowledge the probe before the CONNECT deadline or
 *   keep-alive would have closed it (a corrupted length can make the broker wait for the rest
 *   of a frame, which is right; waiting forever is not).
 */
export async function runCase(port: number, c: FuzzCase, clientId: string, stats: FuzzStats): Promise<string[]> {
  const problems: string[] = [];
  const { packets, reasons } = encodeCase(c, clientId, MAX_PACKET_SIZE);
  const socket = net.connect(port, '127.0.0.1');
  const chunks: Buffer[] = [];
  let closed = false;
  let endedByUs = false;
  socket.on('data', (d: Buffer) => chunks.push(d));
  socket.on('error', () => {});
  socket.on('close', () => {
    closed = true;
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', () => resolve());
    socket.once('error', reject);
  });
  stats.connections++;
  const received = () => Buffer.concat(chunks);
  const waitFor = async (done: () => boolean, ms: number) => {
    const end = Date.now() + ms;
    while (!done() && Date.now() < end) await sleep(10);
    return done();
  };
  const describe = () => `case ${JSON.stringify(c, (_k, v) => (v?.type === 'Buffer' ? Buffer.from(v.data).toString('hex') : v))}`;
  try {
    if (c.kind === 'bad-connect') {
      socket.write(packets[0] as Buffer);
      if (!(await waitFor(() => closed, 5000))) {
        problems.push(`a CONNECT with ${c.violation.kind} was not closed within 5 s: ${describe()}`);
        return problems;
      }
      stats.closedByBroker++;
      stats.violationsRefused++;
      const got = parse(received()).packets;
      const accepted = got.find((p) => p.type === 2 && (p.body[1] as number) === 0);
      if (accepted !== undefined || got.some((p) => p.type !== 2)) {
        problems.push(`a CONNECT with ${c.violation.kind} got ${got.map((p) => `type ${p.type} code ${p.body[1]}`).join(', ')} instead of a refusal: ${describe()}`);
      }
      return problems;
    }
    if (c.kind === 'violation') {
      // The CONNECT alone first: it is valid and must be accepted before the violation counts.
      socket.write(packets[0] as Buffer);
      const gotConnack = await waitFor(() => closed || parse(received()).packets.some((p) => p.type === 2), 5000);
      const connack = parse(received()).packets.find((p) => p.type === 2);
      if (!gotConnack || connack === undefined || (connack.body[1] as number) !== 0) {
        problems.push(`a valid CONNECT was not accepted (CONNACK ${connack ? (connack.body[1] as number).toString(16) : 'none'}): ${describe()}`);
        return problems;
      }
      socket.write(Buffer.concat(packets.slice(1)));
      if (!(await waitFor(() => closed, 5000))) {
        problems.push(`violation ${c.violation.kind} did not close the connection within 5 s: ${describe()}`);
        return problems;
      }
      stats.closedByBroker++;
      stats.violationsRefused++;
      if (c.version === 5) {
        const all = parse(received()).packets;
        const last = all[all.length - 1];
        const code = last?.type === 14 ? (last.body.length === 0 ? 0 : (last.body[0] as number)) : -1;
        if (!(reasons ?? []).includes(code)) {
          problems.push(`violation ${c.violation.kind}: v5 DISCONNECT reason ${code === -1 ? 'missing' : `0x${code.toString(16)}`}, expected ${(reasons ?? []).map((r) => `0x${r.toString(16)}`).join('/')}: ${describe()}`);
        }
      }
    } else {
      for (const p of packets) socket.write(p);
      const version = c.version;
      const probe = frame(0x32, Buffer.concat([str('fz-probe'), u16(PROBE_ID), version === 5 ? Buffer.from([0]) : Buffer.alloc(0), Buffer.from('probe')]));
      if (!closed) socket.write(probe);
      const acked = () => parse(received()).packets.some((p) => p.type === 4 && p.body.length >= 2 && p.body.readUInt16BE(0) === PROBE_ID);
      // Worst legitimate wait: keep-alive 2 s x 1.5, checked by a 100 ms sweep; or the 1 s CONNECT deadline.
      const limit = FUZZ_LIMITS.maxKeepAlive * 1500 + 3000; // slack for a loaded machine
      if (!(await waitFor(() => closed || acked(), limit))) {
        problems.push(`connection left hanging: neither closed nor answering after ${limit} ms: ${describe()}`);
        return problems;
      }
      if (closed) {
        stats.closedByBroker++;
        const all = parse(received()).packets;
        const connack = all.find((p) => p.type === 2);
        const last = all[all.length - 1];
        if (version === 5 && connack !== undefined && (connack.body[1] as number) === 0 && last?.type !== 14) stats.v5ClosedWithoutDisconnect++;
      } else {
        stats.stillServing++;
        endedByUs = true;
      }
    }
    const rest = parse(received()).rest;
    if (rest !== 0 && (closed || !endedByUs)) problems.push(`the broker sent ${rest} bytes that are not a whole packet: ${describe()}`);
    return problems;
  } finally {
    socket.destroy();
  }
}

let serial = 0;

/** A fresh, well-behaved mqtt.js client can CONNECT, SUBSCRIBE, PUBLISH and receive its own message. */
export async function checkServing(port: number, version: 4 | 5): Promise<string[]> {
  const id = `fz-alive-${process.pid}-${++serial}`;
  const client = mqtt.connect({ host: '127.0.0.1', port, clientId: id, protocolVersion: version, reconnectPeriod: 0, connectTimeout: 5000, keepalive: 2 });
  try {
    await new Promise<void>((resolve, reject) => {
      client.once('connect', () => resolve());
      client.once('error', reject);
      client.once('close', () => reject(new Error('closed before CONNACK')));
    });
    const got = new Promise<string>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no message within 5 s')), 5000);
      client.once('message', (_topic, payload) => {
        clearTimeout(t);
        resolve(payload.toString());
      });
    });
    await client.subscribeAsync(`alive/${id}`, { qos: 1 });
    await client.publishAsync(`alive/${id}`, 'still serving', { qos: 1 });
    const payload = await got;
    return payload === 'still serving' ? [] : [`well-behaved client got '${payload}'`];
  } catch (err) {
    return [`the broker stopped serving a well-behaved v${version} client: ${(err as Error).message}`];
  } finally {
    await client.endAsync(true);
  }
}

/** After every case socket is gone, the broker must have released every connected client. */
async function checkReleased(fb: FuzzBroker): Promise<string[]> {
  const end = Date.now() + 3000;
  while (fb.broker.connectedClients > 0 && Date.now() < end) await sleep(20);
  return fb.broker.connectedClients === 0 ? [] : [`${fb.broker.connectedClients} connected clients still held after all fuzz sockets closed`];
}

/**
 * The property: a batch of cases runs concurrently, then the broker must still serve a fresh
 * client, hold no connection, and have logged no error.
 */
export function batchProperty(fb: FuzzBroker, stats: FuzzStats, batchSize: number) {
  return fc.asyncProperty(fc.array(fuzzCase, { minLength: batchSize, maxLength: batchSize }), async (cases) => {
    const batch = ++stats.batches;
    const results = await Promise.all(cases.map((c, i) => runCase(fb.port, c, `fz-${process.pid}-${batch}-${i}`, stats)));
    stats.cases += cases.length;
    const problems = results.flat();
    problems.push(...(await checkServing(fb.port, batch % 2 === 0 ? 4 : 5)));
    problems.push(...(await checkReleased(fb)));
    problems.push(...fb.errors.splice(0));
    if (problems.length > 0) {
      stats.problems.push(...problems);
      throw new Error(problems.join('\n'));
    }
  });
}
