/**
 * Soak test: a broker in its own process under hours (or minutes) of mixed traffic.
 *
 *   npm run soak -- --minutes 2 [--rate 150] [--max-rss-mb 512] [--crash-kills 100]
 *
 * - Publishers (mqtt.js, v5 and v3.1.1) send QoS 0, 1 and 2 at a steady rate.
 * - Subscribers to `soak/#`: two that stay connected, four with persistent sessions that keep
 *   disconnecting (cleanly or by dropping the socket) and coming back.
 * - Churn: short-lived clients with wills connect, publish QoS 1, and leave cleanly or abruptly.
 * - Misbehaving clients: garbage bytes, slowloris CONNECTs, oversized packets, subscribers that
 *   never read their socket, QoS 2 publishers that never send PUBREL.
 *
 * At the end every acknowledged QoS 1/2 message must have reached every subscriber (all are
 * subscribed before the first publish; persistent ones are reconnected to drain), QoS 2 exactly
 * once, QoS 1 more than once only with DUP after a reconnect, and QoS 0 never twice. The
 * broker's RSS (after a GC) is sampled; the run fails on loss, duplicates, an error logged by
 * the broker, or memory that keeps growing over the second half.
 *
 * Then the crash soak: the durable store's kill -9 test (test/durability.test.ts) with
 * --crash-kills kills (100 by default; 20 in npm test): every message a publisher saw
 * acknowledged reaches every persistent subscriber, QoS 2 exactly once.
 */
import { fork, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import mqtt, { Store, type IPublishPacket, type MqttClient } from 'mqtt';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(process.argv[i + 1]) : fallback;
  if (!Number.isFinite(v) || v <= 0) {
    console.error(`--${name} must be a positive number`);
    process.exit(2);
  }
  return v;
}

const MINUTES = arg('minutes', 2);
const RATE = arg('rate', 150); // messages per second, all publishers together
const MAX_RSS_MB = arg('max-rss-mb', 512);
/** After the traffic soak: the durable store's kill -9 test (test/durability.test.ts) with this many kills; 0 skips it. */
const CRASH_KILLS = (() => {
  const i = process.argv.indexOf('--crash-kills');
  const v = i >= 0 ? Number(process.argv[i + 1]) : 100;
  if (!Number.isInteger(v) || v < 0) {
    console.error('--crash-kills must be a whole number (0 skips the crash soak)');
    process.exit(2);
  }
  return v;
})();
const DURATION_MS = MINUTES * 60_000;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const rand = (min: number, max: number) => min + Math.random() * (max - min);

// ── the broker process ───────────────────────────────────────────────────────

interface Sample {
  t: number;
  rss: number;
  heap: number;
  stats: Record<string, number>;
  connected: number;
  errors: string[];
}

const child = fork(fileURLToPath(new URL('./soak-broker.ts', import.meta.url)), [], {
  execArgv: ['--import', 'tsx', '--expose-gc'],
  env: {
    ...process.env,
    // One host plays hundreds of clients: exempt loopback from the per-address connect rate.
    PORTCULLIS_SOAK_CONFIG: JSON.stringify({ admission: { exempt: ['127.0.0.1/32'] } }),
  },
  stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
});
const port = await new Promise<number>((resolve, reject) => {
  child.once('message', (m: { type: string; port: number }) => (m.type === 'ready' ? resolve(m.port) : reject(new Error('unexpected message'))));
  child.once('exit', (code) => reject(new Error(`broker process exited with ${code}`)));
});
let brokerExited = false;
child.on('exit', () => {
  brokerExited = true;
});

function sample(): Promise<Sample> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the broker process did not answer a sample request within 10 s')), 10_000);
    const on = (m: Omit<Sample, 't'> & { type: string }) => {
      if (m.type !== 'sample') return;
      clearTimeout(timer);
      child.off('message', on);
      resolve({ ...m, t: Date.now() });
    };
    child.on('message', on);
    child.send({ type: 'sample' });
  });
}

// ── accounting ───────────────────────────────────────────────────────────────

interface Sent {
  qos: 0 | 1 | 2;
  acked: boolean;
}
const sent = new Map<string, Sent>();
const publishFailures = new Map<string, number>();

interface Receipt {
  count: number;
  epoch: number;
}

interface Subscriber {
  name: string;
  version: 4 | 5;
  qos: 1 | 2;
  persistent: boolean;
  client: MqttClient;
  epoch: number;
  received: Map<string, Receipt>;
  duplicates: string[];
  /** QoS 1 re-deliveries with DUP after a reconnect: allowed. */
  resent: number;
  reconnects: number;
  online: boolean;
}

const msgQos = (id: string) => Number(id.slice(id.lastIndexOf(':') + 1)) as 0 | 1 | 2;

function onMessage(sub: Subscriber, payload: Buffer, packet: IPublishPacket): void {
  const id = payload.toString();
  if (!id.startsWith('m:')) return;
  const effective = Math.min(sub.qos, msgQos(id));
  const r = sub.received.get(id);
  if (r === undefined) {
    sub.received.set(id, { count: 1, epoch: sub.epoch });
    return;
  }
  r.count++;
  // [MQTT-4.3.1]: QoS 1 may be delivered again, with DUP, when a session resumes; QoS 0 and 2 never.
  if (effective !== 1 || packet.dup !== true || sub.epoch <= r.epoch) {
    sub.duplicates.push(`${id} (QoS ${effective}, dup=${packet.dup}, epoch ${sub.epoch} vs ${r.epoch})`);
  } else sub.resent++;
  r.epoch = sub.epoch;
}

function connectClient(options: mqtt.IClientOptions): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect({ host: '127.0.0.1', port, reconnectPeriod: 0, connectTimeout: 10_000, keepalive: 30, ...options });
    c.once('connect', () => resolve(c));
    c.once('error', (err) => {
      c.end(true);
      reject(err);
    });
  });
}

async function makeSubscriber(name: string, version: 4 | 5, qos: 1 | 2, persistent: boolean): Promise<Subscriber> {
  const client = await connectClient({
    clientId: `soak-${name}`,
    protocolVersion: version,
    clean: !persistent,
    ...(version === 5 && persistent ? { properties: { sessionExpiryInterval: 3600 } } : {}),
    // Stores that survive end(): a QoS 2 message half-received before a disconnect is completed after it.
    ...(persistent ? { incomingStore: new Store({ clean: false }), outgoingStore: new Store({ clean: false }) } : {}),
    resubscribe: false,
  });
  const sub: Subscriber = { name, version, qos, persistent, client, epoch: 1, received: new Map(), duplicates: [], resent: 0, reconnects: 0, online: true };
  client.on('message', (_t, payload, packet) => onMessage(sub, payload, packet));
  client.on('connect', () => {
    sub.epoch++;
    sub.online = true;
  });
  client.on('close', () => {
    sub.online = false;
  });
  client.on('error', () => {});
  await client.subscribeAsync('soak/#', { qos });
  return sub;
}

/** Brings a persistent subscriber back with the same session and the same in-flight stores. */
function reconnect(sub: Subscriber): Promise<void> {
  return new Promise((resolve) => {
    const c = sub.client;
    c.once('connect', () => resolve());
    c.reconnect({ incomingStore: c.incomingStore, outgoingStore: c.outgoingStore });
  });
}

// ── workloads ────────────────────────────────────────────────────────────────

let running = true;
const counters = {
  published: [0, 0, 0],
  churnClients: 0,
  churnAbrupt: 0,
  persistentCycles: 0,
  persistentAbrupt: 0,
};

interface Misbehaviour {
  attempts: number;
  closedByBroker: number;
  notClosed: number;
  maxCloseMs: number;
}
const misbehaviour: Record<string, Misbehaviour> = {};
const mis = (name: string) => (misbehaviour[name] ??= { attempts: 0, closedByBroker: 0, notClosed: 0, maxCloseMs: 0 });

async function publisher(name: string, version: 4 | 5, intervalMs: number): Promise<void> {
  const client = await connectClient({ clientId: `soak-pub-${name}`, protocolVersion: version });
  client.on('error', () => {});
  let seq = 0;
  const pending = new Set<Promise<void>>();
  while (running) {
    const qos = (seq % 3) as 0 | 1 | 2;
    const id = `m:${name}:${seq}:${qos}`;
    const record: Sent = { qos, acked: false };
    sent.set(id, record);
    counters.published[qos] = (counters.published[qos] as number) + 1;
    const p = new Promise<void>((resolve) => {
      client.publish(`soak/${name}/${seq % 16}`, id, { qos }, (err) => {
        if (err) publishFailures.set(err.message, (publishFailures.get(err.message) ?? 0) + 1);
        else if (qos > 0) record.acked = true;
        resolve();
      });
    });
    pending.add(p);
    void p.then(() => pending.delete(p));
    seq++;
    await sleep(intervalMs);
  }
  await Promise.race([Promise.all(pending), sleep(10_000)]);
  await client.endAsync();
}

async function persistentCycler(sub: Subscriber): Promise<void> {
  while (running) {
    await sleep(rand(6000, 12_000));
    if (!running) break;
    const abrupt = Math.random() < 0.5;
    counters.persistentCycles++;
    if (abrupt) {
      counters.persistentAbrupt++;
      sub.client.stream.destroy();
    } else {
      await sub.client.endAsync();
    }
    await sleep(rand(500, 3000));
    await reconnect(sub);
    sub.reconnects++;
  }
}

let churnSeq = 0;
async function churn(): Promise<void> {
  while (running) {
    await sleep(300);
    const n = ++churnSeq;
    const version = n % 2 === 0 ? 5 : 4;
    void (async () => {
      let client: MqttClient;
      try {
        client = await connectClient({ clientId: `soak-churn-${n}`, protocolVersion: version, will: { topic: `soak-will/${n}`, payload: Buffer.from('gone'), qos: 1, retain: false } });
      } catch {
        return;
      }
      client.on('error', () => {});
      counters.churnClients++;
      for (let k = 0; k < 1 + (n % 3); k++) {
        const id = `m:churn${n}:${k}:1`;
        const record: Sent = { qos: 1, acked: false };
        sent.set(id, record);
        counters.published[1] = (counters.published[1] as number) + 1;
        try {
          await client.publishAsync(`soak/churn/${n % 8}`, id, { qos: 1 });
          record.acked = true;
        } catch {
          /* not acknowledged: not expected anywhere */
        }
      }
      if (n % 3 === 0) {
        counters.churnAbrupt++;
        client.stream.destroy();
      } else {
        await client.endAsync();
      }
    })();
  }
}

/** A raw socket that reports when the broker closes it. */
function raw(): Promise<{ socket: net.Socket; closed(ms: number): Promise<number | null> }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let closedAt: number | null = null;
    socket.on('data', () => {}); // flowing: the broker's FIN is seen even after it sent something
    socket.on('error', () => {});
    socket.on('close', () => {
      closedAt = Date.now();
    });
    socket.once('connect', () => {
      const openedAt = Date.now();
      resolve({
        socket,
        async closed(ms) {
          const end = Date.now() + ms;
          while (closedAt === null && Date.now() < end) await sleep(20);
          return closedAt === null ? null : closedAt - openedAt;
        },
      });
    });
    socket.once('error', reject);
  });
}

function str(s: string): Buffer {
  const b = Buffer.from(s);
  return Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b]);
}

function connectBytes(clientId: string, version: 4 | 5, keepAlive: number, clean = true, sessionExpiry = 0): Buffer {
  const props = version === 5 ? (sessionExpiry > 0 ? Buffer.from([5, 0x11, 0, 0, sessionExpiry >> 8, sessionExpiry & 0xff]) : Buffer.from([0])) : Buffer.alloc(0);
  const body = Buffer.concat([str('MQTT'), Buffer.from([version, clean ? 0x02 : 0x00, keepAlive >> 8, keepAlive & 0xff]), props, str(clientId)]);
  return Buffer.concat([Buffer.from([0x10, body.length]), body]);
}

function varint(n: number): Buffer {
  const out: number[] = [];
  do {
    let d = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) d |= 0x80;
    out.push(d);
  } while (n > 0);
  return Buffer.from(out);
}

/**
 * Runs one misbehaving client again and again; `act` returns how long the broker took to close
 * it, null when the broker did not, or 'left' when the client dropped the socket itself.
 */
async function misbehave(name: string, pauseMs: number, act: (n: number) => Promise<number | null | 'left'>): Promise<void> {
  let n = 0;
  while (running) {
    const m = mis(name);
    m.attempts++;
    try {
      const ms = await act(++n);
      if (ms === null) m.notClosed++;
      else if (ms !== 'left') {
        m.closedByBroker++;
        m.maxCloseMs = Math.max(m.maxCloseMs, ms);
      }
    } catch {
      m.notClosed++;
    }
    await sleep(pauseMs);
  }
}

const garbage = () =>
  misbehave('garbage bytes', 200, async () => {
    const c = await raw();
    c.socket.write(randomBytes(256));
    return c.closed(15_000);
  });

const slowloris = (k: number) =>
  misbehave(`slowloris CONNECT #${k}`, 100, async (n) => {
    const c = await raw();
    const bytes = connectBytes(`soak-slow-${k}-${n}`, 4, 60);
    for (let i = 0; i < bytes.length - 1 && !c.socket.destroyed && running; i++) {
      c.socket.write(bytes.subarray(i, i + 1));
      await sleep(1000);
    }
    const ms = await c.closed(15_000);
    c.socket.destroy();
    return ms;
  });

const oversized = () =>
  misbehave('oversized PUBLISH (2 MB claimed)', 500, async (n) => {
    const c = await raw();
    c.socket.write(connectBytes(`soak-big-${n}`, n % 2 === 0 ? 5 : 4, 30));
    await sleep(50);
    c.socket.write(Buffer.concat([Buffer.from([0x30]), varint(2 * 1024 * 1024), Buffer.alloc(64 * 1024, 0x61)]));
    return c.closed(15_000);
  });

const neverReads = (k: number) =>
  misbehave(`subscriber that never reads #${k}`, 200, async (n) => {
    const c = await raw();
    c.socket.write(connectBytes(`soak-deaf-${k}-${n}`, 4, 5));
    await sleep(100);
    const sub = Buffer.concat([Buffer.from([0x00, 0x01]), str('soak/#'), Buffer.from([0x01])]);
    c.socket.write(Buffer.concat([Buffer.from([0x82]), varint(sub.length), sub]));
    await sleep(100);
    // Never reads, never PUBACKs, never PINGs: keep-alive (5 s) or the slow-consumer check must end it.
    // A paused socket cannot see the close, so look after 15 s: reading again must find it closed.
    c.socket.pause();
    const until = Date.now() + 15_000;
    while (running && Date.now() < until) await sleep(200);
    c.socket.resume();
    const ms = await c.closed(2000);
    c.socket.destroy();
    return ms;
  });

const qos2NoPubrel = () =>
  misbehave('QoS 2 publisher that never sends PUBREL', 500, async (n) => {
    const c = await raw();
    c.socket.on('data', () => {}); // reads PUBRECs, answers none
    c.socket.write(connectBytes(`soak-norel-${n % 5}`, 5, 5, false, 10));
    await sleep(50);
    for (let id = 1; id <= 20; id++) {
      const body = Buffer.concat([str(`soak-norel/${n % 5}`), Buffer.from([id >> 8, id & 0xff, 0x00]), Buffer.from('never released')]);
      c.socket.write(Buffer.concat([Buffer.from([0x34]), varint(body.length), body]));
    }
    if (n % 2 === 0) {
      await sleep(1000);
      c.socket.destroy(); // drops the socket: the session keeps the unreleased ids until it expires
      return 'left';
    }
    return c.closed(15_000); // keep-alive 5 s ends it
  });

// ── the run ──────────────────────────────────────────────────────────────────

const started = Date.now();
console.log(`soak: broker pid ${child.pid} on 127.0.0.1:${port}, ${MINUTES} min, ${RATE} msg/s`);
const samples: Sample[] = [];
const errors: string[] = [];
const subscribers = await Promise.all([
  makeSubscriber('stay-v5', 5, 2, false),
  makeSubscriber('stay-v4', 4, 1, false),
  makeSubscriber('persist-v5-q2', 5, 2, true),
  makeSubscriber('persist-v5-q1', 5, 1, true),
  makeSubscriber('persist-v4-q2', 4, 2, true),
  makeSubscriber('persist-v4-q1', 4, 1, true),
]);
samples.push(await sample());

const publishers = ['p5a', 'p5b', 'p4a', 'p4b'].map((name) => publisher(name, name.startsWith('p5') ? 5 : 4, 4000 / RATE));
const others: Promise<void>[] = [
  ...subscribers.filter((s) => s.persistent).map(persistentCycler),
  churn(),
  garbage(),
  slowloris(1),
  slowloris(2),
  oversized(),
  neverReads(1),
  neverReads(2),
  qos2NoPubrel(),
];

const sampler = setInterval(() => {
  void sample()
    .then((s) => {
      samples.push(s);
      errors.push(...s.errors);
    })
    .catch((err: Error) => errors.push(err.message));
}, 2000);
const progress = setInterval(() => {
  const last = samples[samples.length - 1];
  console.log(
    `  ${((Date.now() - started) / 1000).toFixed(0)} s: ${sent.size} published, broker RSS ${last ? (last.rss / 1048576).toFixed(1) : '?'} MB, ${last?.connected ?? '?'} connected`,
  );
}, 15_000);

await sleep(DURATION_MS);
running = false;
console.log('  stopping traffic; draining');
await Promise.all(publishers);
await Promise.race([Promise.all(others), sleep(20_000)]);
for (const s of subscribers) if (!s.online) await reconnect(s);

// Drain: wait until every acknowledged message reached every subscriber, or 20 s pass.
const expected = [...sent.entries()].filter(([, s]) => s.acked && s.qos > 0).map(([id]) => id);
const missing = (s: Subscriber) => expected.filter((id) => !s.received.has(id));
const drainEnd = Date.now() + 20_000;
while (Date.now() < drainEnd && subscribers.some((s) => missing(s).length > 0)) await sleep(250);
await sleep(1000); // late duplicates would show up here
clearInterval(sampler);
clearInterval(progress);
for (const s of subscribers) await s.client.endAsync();
await sleep(1500);
const final = await sample();
samples.push(final);
errors.push(...final.errors);
const diedEarly = brokerExited;
child.send({ type: 'stop' });

// ── the verdict ──────────────────────────────────────────────────────────────

const mb = (b: number) => (b / 1048576).toFixed(1);
const rssOf = samples.map((s) => s.rss);
const half = samples.filter((s) => s.t >= started + DURATION_MS / 2 && s.t <= started + DURATION_MS);
/** Least-squares slope of RSS over time, in MB per minute. */
function slope(points: Sample[]): number {
  if (points.length < 3) return 0;
  const t0 = (points[0] as Sample).t;
  const xs = points.map((p) => (p.t - t0) / 60_000);
  const ys = points.map((p) => p.rss / 1048576);
  const mx = xs.reduce((a, b) => a + b, 0) / xs.length;
  const my = ys.reduce((a, b) => a + b, 0) / ys.length;
  let num = 0;
  let den = 0;
  for (let i = 0; i < xs.length; i++) {
    num += ((xs[i] as number) - mx) * ((ys[i] as number) - my);
    den += ((xs[i] as number) - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}
const lastHalfSlope = slope(half);
const firstHalfMax = Math.max(...samples.filter((s) => s.t < started + DURATION_MS / 2).map((s) => s.rss));
const secondHalfMax = Math.max(...half.map((s) => s.rss), 0);
const maxRss = Math.max(...rssOf);
// Unbounded: still climbing over the second half (more than 8 MB/min and 16 MB above the first half's peak), or over the hard cap.
const growing = lastHalfSlope > 8 && secondHalfMax - firstHalfMax > 16 * 1048576;
const overCap = maxRss > MAX_RSS_MB * 1048576;

console.log('\nsoak summary');
console.log(`  duration                        ${((Date.now() - started) / 1000).toFixed(0)} s (${MINUTES} min of traffic)`);
console.log(`  published QoS 0 / 1 / 2         ${counters.published.join(' / ')}`);
console.log(`  acknowledged QoS 1+2            ${expected.length}`);
console.log(`  publish failures                ${[...publishFailures.entries()].map(([k, v]) => `${k}: ${v}`).join(', ') || 'none'}`);
console.log(`  churn clients (abrupt)          ${counters.churnClients} (${counters.churnAbrupt})`);
console.log(`  persistent reconnects (abrupt)  ${counters.persistentCycles} (${counters.persistentAbrupt})`);
console.log('\n  subscriber        QoS  reconnects  received  lost  bad duplicates  QoS 1 resent with DUP  QoS 0 seen');
let lost = 0;
let badDuplicates = 0;
for (const s of subscribers) {
  const m = missing(s);
  lost += m.length;
  badDuplicates += s.duplicates.length;
  const qos0 = [...s.received.keys()].filter((id) => msgQos(id) === 0).length;
  console.log(
    `  ${s.name.padEnd(17)} ${String(s.qos).padEnd(4)} ${String(s.reconnects).padEnd(11)} ${String(s.received.size).padEnd(9)} ${String(m.length).padEnd(5)} ${String(s.duplicates.length).padEnd(15)} ${String(s.resent).padEnd(22)} ${qos0}`,
  );
  for (const id of m.slice(0, 3)) console.log(`      lost: ${id}`);
  for (const d of s.duplicates.slice(0, 3)) console.log(`      duplicate: ${d}`);
}
console.log('\n  misbehaving client                        attempts  closed by broker  not closed  slowest close seen');
for (const [name, m] of Object.entries(misbehaviour)) {
  console.log(`  ${name.padEnd(41)} ${String(m.attempts).padEnd(9)} ${String(m.closedByBroker).padEnd(17)} ${String(m.notClosed).padEnd(11)} ${(m.maxCloseMs / 1000).toFixed(1)} s`);
}
console.log('\n  broker RSS (after GC)');
console.log(`  start ${mb(rssOf[0] as number)} MB, max ${mb(maxRss)} MB, end ${mb(final.rss)} MB; samples ${samples.length}`);
console.log(`  first-half peak ${mb(firstHalfMax)} MB, second-half peak ${mb(secondHalfMax)} MB, second-half trend ${lastHalfSlope.toFixed(2)} MB/min`);
console.log(`  connected clients after everyone left: ${final.connected}`);
console.log(`  broker stats: ${JSON.stringify(final.stats)}`);
console.log(`  errors logged by the broker: ${errors.length}`);
for (const e of errors.slice(0, 5)) console.log(`    ${e}`);

const failures: string[] = [];
if (lost > 0) failures.push(`${lost} acknowledged messages lost`);
if (badDuplicates > 0) failures.push(`${badDuplicates} duplicates beyond the spec`);
if (growing) failures.push(`RSS still growing over the second half (${lastHalfSlope.toFixed(1)} MB/min)`);
if (overCap) failures.push(`RSS ${mb(maxRss)} MB over the ${MAX_RSS_MB} MB cap`);
if (errors.length > 0) failures.push(`${errors.length} errors logged by the broker`);
if (diedEarly) failures.push('the broker process exited early');
if (final.connected !== 0) failures.push(`${final.connected} clients still counted as connected after all left`);
const held = Object.entries(misbehaviour).filter(([, m]) => m.notClosed > 0);
if (held.length > 0) failures.push(`misbehaving clients not closed: ${held.map(([n, m]) => `${n} (${m.notClosed})`).join(', ')}`);
if (CRASH_KILLS > 0) {
  // Every message a publisher saw acknowledged survives CRASH_KILLS kill -9s of a durable broker.
  console.log(`\n  crash soak: kill -9 of a broker on the durable store, ${CRASH_KILLS} times (test/durability.test.ts)`);
  const crash = spawnSync('npx', ['ava', 'test/durability.test.ts', '--match', 'kill -9 during*', '--verbose'], {
    cwd: fileURLToPath(new URL('..', import.meta.url)),
    env: { ...process.env, PORTCULLIS_CRASH_KILLS: String(CRASH_KILLS) },
    stdio: 'inherit',
  });
  if (crash.status !== 0) failures.push(`the crash soak failed (${CRASH_KILLS} kills; exit ${crash.status ?? crash.signal})`);
}
console.log(failures.length === 0 ? '\nPASS' : `\nFAIL: ${failures.join('; ')}`);
await sleep(500);
process.exit(failures.length === 0 ? 0 : 1);
