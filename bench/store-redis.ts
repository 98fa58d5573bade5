/**
 * The Redis store against the LMDB store (durability sync), on a local redis-server with
 * appendonly yes and appendfsync always (the durable setting):
 *
 * 1. Store operations per second for enqueue, putInflight and deleteInflight, each awaited (the
 *    broker awaits a write before it acknowledges), with 1 and 64 sessions writing at once.
 * 2. Redis commands per operation (MONITOR, counting what crosses the network, not what scripts
 *    run inside Redis), for those and for saveSession, setSessionExpiry, getSession.
 * 3. A broker QoS 1 1→1 run: an online persistent v5 subscriber, a publisher with 32 QoS 1
 *    messages in flight; messages per second delivered and the median PUBACK latency.
 * 4. Redis memory per queued 64 B message (used_memory before and after 100,000 messages over
 *    1,000 sessions).
 * 5. Opening a Redis store of 100,000 sessions (each with a subscription and a queued message):
 *    the full, verified read open() makes, and getSession of one of them.
 *
 * Rounds interleave the stores, and each round runs both back to back: the report gives medians
 * and ranges, and the median of the per-round ratio redis / lmdb (an A/B within one round, which
 * the load of this shared machine affects least). Writes bench/results/store-redis.md.
 *
 *   npm run bench:store-redis
 *   npm run bench:store-redis -- --rounds 3 --duration 2 --flows 1,64
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import mqtt from 'mqtt';
import { createBroker, type RunningBroker } from '../src/index.ts';
import { silentLogger } from '../src/log.ts';
import { LmdbStore } from '../src/store/lmdb.ts';
import { RedisStore } from '../src/store/redis.ts';
import { redisConnection } from '../src/store/redis-config.ts';
import { parseConfig } from '../src/config/schema.ts';
import type { RedisStoreConfig } from '../src/config/store-redis-schema.ts';
import { sessionKey, type Store, type StoredMessage } from '../src/store/types.ts';
import { startRedis } from '../test/redis-server.ts';
import { monitor } from '../test/store-redis-support.ts';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '5' },
    duration: { type: 'string', default: '2' },
    flows: { type: 'string', default: '1,64' },
    'size-messages': { type: 'string', default: '100000' },
    'load-sessions': { type: 'string', default: '100000' },
    out: { type: 'string', default: path.join(import.meta.dirname, 'results', 'store-redis.md') },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  console.log('Usage: npm run bench:store-redis -- [--rounds 5] [--duration 2] [--flows 1,64] [--size-messages 100000] [--out FILE]');
  process.exit(0);
}
const rounds = Number(values.rounds);
const durationMs = Number(values.duration) * 1000;
const flowCounts = values.flows.split(',').map(Number);
const sizeMessages = Number(values['size-messages']);
const loadSessions = Number(values['load-sessions']);

const redis = await startRedis();
const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-bench-store-redis-'));
let n = 0;
const fresh = (base: string) => `${base}${++n}`;

function redisStoreConfig(extra: Record<string, unknown> = {}): RedisStoreConfig {
  return parseConfig({ store: { type: 'redis', url: redis.url, prefix: fresh('bench') + ':', ...extra } }).store as RedisStoreConfig;
}

interface Kind {
  name: string;
  make(): Store;
  /** The broker's store section for the same store. */
  config(): Record<string, unknown>;
}
const KINDS: Kind[] = [
  {
    name: 'redis',
    make: () => {
      const c = redisStoreConfig();
      return new RedisStore({ connection: redisConnection(c).connection, prefix: c.prefix });
    },
    config: () => ({ type: 'redis', url: redis.url, prefix: `${fresh('broker')}:` }),
  },
  {
    name: 'lmdb-sync',
    make: () => new LmdbStore({ path: path.join(tmpRoot, fresh('s')) }),
    config: () => ({ type: 'lmdb', path: path.join(tmpRoot, fresh('b')) }),
  },
];

const payload = Buffer.alloc(64, 0x61);
const msg = (i: number): StoredMessage => ({ topic: `bench/${i % 100}`, payload, qos: 1, retain: false });
const session = (id: string) => ({ clientId: id, owner: `user:${id}`, protocolVersion: 5 as const, expiryInterval: 3600, subscriptions: [{ filter: 'bench/#', qos: 1 as const, noLocal: false, retainAsPublished: false, retainHandling: 0 as const }], inflight: [], queue: [], awaitingRelease: [] });
const OPS = ['enqueue', 'putInflight', 'deleteInflight'] as const;
type Op = (typeof OPS)[number];

/** Operations per second of each kind, `flows` sessions at once, each awaiting its write. */
async function storeOps(kind: Kind, flows: number): Promise<Record<Op, number>> {
  const store = kind.make();
  await store.open();
  for (let f = 0; f < flows; f++) await store.saveSession(session(`c${f}`));
  const keys = Array.from({ length: flows }, (_, f) => sessionKey(`user:c${f}`, `c${f}`));
  const out = {} as Record<Op, number>;
  const put = new Array<number>(flows).fill(0);
  for (const op of OPS) {
    let done = 0;
    const end = Date.now() + durationMs;
    const started = process.hrtime.bigint();
    await Promise.all(
      keys.map(async (key, f) => {
        let i = 0;
        for (;;) {
          if (op === 'enqueue') await store.enqueue(key, msg(done));
          else if (op === 'putInflight') {
            if (i >= 65_535) break;
            await store.putInflight(key, { packetId: i + 1, state: 'publish', message: msg(done) });
            put[f] = i + 1;
          } else {
            if (i >= (put[f] as number)) break;
            await store.deleteInflight(key, i + 1);
          }
          i++;
          done++;
          if (Date.now() >= end) break;
        }
      }),
    );
    out[op] = done / (Number(process.hrtime.bigint() - started) / 1e9);
  }
  await store.close();
  return out;
}

/** Redis commands sent per operation (a fixed number of each, under MONITOR; not timed). */
async function commandsPerOp(): Promise<Record<string, number>> {
  const c = redisStoreConfig();
  const store = new RedisStore({ connection: redisConnection(c).connection, prefix: c.prefix });
  await store.open();
  const count = 200;
  const keys = Array.from({ length: count }, (_, i) => sessionKey(`user:m${i}`, `m${i}`));
  const out: Record<string, number> = {};
  const measure = async (name: string, run: (i: number) => Promise<unknown>) => {
    const m = await monitor(redis);
    for (let i = 0; i < count; i++) await run(i);
    await new Promise((r) => setTimeout(r, 200));
    m.stop();
    out[name] = m.commands().length / count;
  };
  await measure('saveSession', (i) => store.saveSession(session(`m${i}`)));
  await measure('enqueue', (i) => store.enqueue(keys[i] as string, msg(i)));
  await measure('dequeue', (i) => store.dequeue(keys[i] as string, 1));
  await measure('putInflight', (i) => store.putInflight(keys[i] as string, { packetId: 1, state: 'publish', message: msg(i) }));
  await measure('deleteInflight', (i) => store.deleteInflight(keys[i] as string, 1));
  await measure('setSessionExpiry', (i) => store.setSessionExpiry(keys[i] as string, Date.now() + 60_000, 60));
  await measure('getSession', (i) => store.getSession(keys[i] as string));
  await store.close();
  return out;
}

function client(port: number, options: mqtt.IClientOptions): Promise<mqtt.MqttClient> {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect({ host: '127.0.0.1', port, protocolVersion: 5, reconnectPeriod: 0, ...options });
    c.once('connect', () => resolve(c));
    c.once('error', reject);
  });
}

/** A broker on `kind`'s store: QoS 1 from one publisher (32 in flight) to one online persistent subscriber. */
async function brokerRun(kind: Kind): Promise<{ rate: number; ackMs: number }> {
  const broker: RunningBroker = createBroker(
    { listeners: [{ name: 'tcp', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }], authorizers: ['allow-all'], sys: { intervalSeconds: 0 }, audit: { sink: 'none' }, store: kind.config() } as never,
    { logger: silentLogger() },
  );
  const { listeners } = await broker.start();
  const port = listeners[0]?.port as number;
  const sub = await client(port, { clientId: 'sub', clean: false, properties: { sessionExpiryInterval: 3600 } });
  await sub.subscribeAsync('bench/#', { qos: 1 });
  let received = 0;
  sub.on('message', () => received++);
  const pub = await client(port, { clientId: 'pub' });
  const lat: number[] = [];
  const end = Date.now() + durationMs;
  const started = Date.now();
  let sent = 0;
  await Promise.all(
    Array.from({ length: 32 }, async () => {
      while (Date.now() < end) {
        const t0 = process.hrtime.bigint();
        await pub.publishAsync(`bench/${sent++ % 100}`, payload, { qos: 1 });
        lat.push(Number(process.hrtime.bigint() - t0) / 1e6);
      }
    }),
  );
  const seconds = (Date.now() - started) / 1000;
  for (let i = 0; i < 100 && received < sent; i++) await new Promise((r) => setTimeout(r, 20));
  sub.end(true);
  pub.end(true);
  await broker.stop();
  return { rate: received / seconds, ackMs: median(lat) };
}

/** Redis used_memory per queued 64 B message, over 1,000 sessions. */
async function memoryPerMessage(encrypted: boolean): Promise<{ perMessage: number; perSession: number }> {
  const used = async () => Number(/used_memory:(\d+)/.exec(await redis.command('INFO', 'memory'))?.[1]);
  await redis.command('FLUSHALL');
  const c = redisStoreConfig();
  const store = new RedisStore({ connection: redisConnection(c).connection, prefix: c.prefix, ...(encrypted ? { keys: [{ id: 'bench', key: Buffer.alloc(32, 1) }] } : {}) });
  await store.open();
  const before = await used();
  const sessions = 1000;
  for (let s = 0; s < sessions; s += 100) await Promise.all(Array.from({ length: 100 }, (_, j) => store.saveSession(session(`z${s + j}`))));
  const withSessions = await used();
  for (let i = 0; i < sizeMessages; i += 1000) await Promise.all(Array.from({ length: 1000 }, (_, j) => store.enqueue(sessionKey(`user:z${(i + j) % sessions}`, `z${(i + j) % sessions}`), msg(i + j))));
  const after = await used();
  await store.close();
  await redis.command('FLUSHALL');
  return { perMessage: (after - withSessions) / sizeMessages, perSession: (withSessions - before) / sessions };
}

/** Time to open (read and verify everything) a store of `count` sessions, and to read one session. */
async function openLarge(count: number): Promise<{ fillS: number; openS: number; getMs: number; sessionsPerS: number }> {
  await redis.command('FLUSHALL');
  const c = redisStoreConfig();
  const writer = new RedisStore({ connection: redisConnection(c).connection, prefix: c.prefix });
  await writer.open();
  const t0 = Date.now();
  for (let i = 0; i < count; i += 500) {
    await Promise.all(
      Array.from({ length: Math.min(500, count - i) }, async (_, j) => {
        await writer.saveSession(session(`L${i + j}`));
        await writer.enqueue(sessionKey(`user:L${i + j}`, `L${i + j}`), msg(i + j));
      }),
    );
  }
  const fillS = (Date.now() - t0) / 1000;
  await writer.close();
  const reader = new RedisStore({ connection: redisConnection(c).connection, prefix: c.prefix });
  const t1 = process.hrtime.bigint();
  const report = await reader.open();
  const openS = Number(process.hrtime.bigint() - t1) / 1e9;
  if (report.loaded.sessions !== count) throw new Error(`loaded ${report.loaded.sessions} of ${count} sessions`);
  const gets: number[] = [];
  for (let i = 0; i < 200; i++) {
    const t2 = process.hrtime.bigint();
    await reader.getSession(sessionKey(`user:L${(i * 7919) % count}`, `L${(i * 7919) % count}`));
    gets.push(Number(process.hrtime.bigint() - t2) / 1e6);
  }
  await reader.close();
  await redis.command('FLUSHALL');
  return { fillS, openS, getMs: median(gets), sessionsPerS: count / openS };
}

const median = (a: number[]): number => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)] as number;
const fmt = (x: number): string => Math.round(x).toLocaleString('en-US');
const range = (a: number[]) => `${fmt(median(a))} (${fmt(Math.min(...a))}–${fmt(Math.max(...a))})`;

console.log(`store-redis bench: ${rounds} rounds × ${durationMs / 1000} s per measurement, flows ${flowCounts.join(',')}; redis-server ${redis.url} (appendonly yes, appendfsync always)`);
const ops = new Map<string, number[]>();
/** Per round: redis / lmdb-sync for the same measurement (an A/B within one round). */
const ratios = new Map<string, number[]>();
const brokerRates = new Map<string, number[]>();
const brokerAcks = new Map<string, number[]>();
for (let round = 0; round < rounds; round++) {
  const order = KINDS.map((_, i) => KINDS[(i + round) % KINDS.length] as Kind);
  for (const kind of order) {
    for (const flows of flowCounts) {
      const r = await storeOps(kind, flows);
      for (const op of OPS) ops.set(`${kind.name}|${flows}|${op}`, [...(ops.get(`${kind.name}|${flows}|${op}`) ?? []), r[op]]);
      console.log(`round ${round + 1}: ${kind.name.padEnd(10)} flows ${String(flows).padStart(3)}: ${OPS.map((op) => `${op} ${fmt(r[op])}/s`).join(', ')}`);
    }
    const b = await brokerRun(kind);
    brokerRates.set(kind.name, [...(brokerRates.get(kind.name) ?? []), b.rate]);
    brokerAcks.set(kind.name, [...(brokerAcks.get(kind.name) ?? []), b.ackMs]);
    console.log(`round ${round + 1}: ${kind.name.padEnd(10)} broker QoS 1 1→1 persistent: ${fmt(b.rate)} msg/s, PUBACK median ${b.ackMs.toFixed(2)} ms`);
  }
  const last = (m: Map<string, number[]>, k: string) => (m.get(k) ?? []).at(-1) as number;
  const pair = (name: string, a: number, b: number) => ratios.set(name, [...(ratios.get(name) ?? []), a / b]);
  for (const flows of flowCounts) for (const op of OPS) pair(`${op}, ${flows} flow${flows === 1 ? '' : 's'}`, last(ops, `redis|${flows}|${op}`), last(ops, `lmdb-sync|${flows}|${op}`));
  pair('broker QoS 1 1→1 msg/s', last(brokerRates, 'redis'), last(brokerRates, 'lmdb-sync'));
}
const perOp = await commandsPerOp();
console.log('commands per operation:', perOp);
const mem = await memoryPerMessage(false);
const memEnc = await memoryPerMessage(true);
console.log(`Redis memory: ${mem.perMessage.toFixed(0)} B per queued 64 B message (${memEnc.perMessage.toFixed(0)} B encrypted), ${mem.perSession.toFixed(0)} B per session with one subscription`);
const large = loadSessions > 0 ? await openLarge(loadSessions) : undefined;
if (large !== undefined) console.log(`open of ${fmt(loadSessions)} sessions: ${large.openS.toFixed(1)} s (${fmt(large.sessionsPerS)} sessions/s; written in ${large.fillS.toFixed(1)} s); getSession median ${large.getMs.toFixed(2)} ms`);
const aof = fs.readdirSync(path.join(redis.dir, 'appendonlydir')).reduce((s, f) => s + fs.statSync(path.join(redis.dir, 'appendonlydir', f)).size, 0);
await redis.dispose();
fs.rmSync(tmpRoot, { recursive: true, force: true });

const lines: string[] = [];
lines.push('# Redis store against LMDB (npm run bench:store-redis)', '');
lines.push(`${new Date().toISOString()}, ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? '?'}), Node ${process.version}, ${rounds} rounds × ${durationMs / 1000} s; redis-server on loopback with appendonly yes, appendfsync always; LMDB with durability sync, temp folder in ${os.tmpdir()}.`, '');
lines.push('Store operations per second, each awaited (median of rounds, range):', '');
lines.push(`| store | flows | ${OPS.join(' | ')} |`, `|---|---:|${OPS.map(() => '---:').join('|')}|`);
for (const kind of KINDS) for (const flows of flowCounts) lines.push(`| ${kind.name} | ${flows} | ${OPS.map((op) => range(ops.get(`${kind.name}|${flows}|${op}`) ?? [0])).join(' | ')} |`);
lines.push('', 'Redis commands sent per store operation (MONITOR, commands run inside scripts not counted):', '');
lines.push('| operation | commands |', '|---|---:|');
for (const [op, count] of Object.entries(perOp)) lines.push(`| ${op} | ${count.toFixed(2)} |`);
lines.push('', 'Broker, QoS 1 from one publisher (32 in flight) to one online persistent v5 subscriber (median of rounds, range):', '');
lines.push('| store | messages/s delivered | PUBACK median (ms) |', '|---|---:|---:|');
for (const kind of KINDS) {
  const acks = brokerAcks.get(kind.name) ?? [0];
  lines.push(`| ${kind.name} | ${range(brokerRates.get(kind.name) ?? [0])} | ${median(acks).toFixed(2)} (${Math.min(...acks).toFixed(2)}–${Math.max(...acks).toFixed(2)}) |`);
}
lines.push('', 'Redis / LMDB, the median of the per-round ratios (each round ran both back to back; above 1: Redis faster):', '');
lines.push('| measurement | redis / lmdb-sync |', '|---|---:|');
for (const [name, r] of ratios) lines.push(`| ${name} | ${median(r).toFixed(2)} (${Math.min(...r).toFixed(2)}–${Math.max(...r).toFixed(2)}) |`);
if (large !== undefined) lines.push('', `Opening a Redis store of ${fmt(loadSessions)} sessions (each with a subscription and a queued message; read and verified whole, as open() does): ${large.openS.toFixed(1)} s, ${fmt(large.sessionsPerS)} sessions/s. getSession of one of them: median ${large.getMs.toFixed(2)} ms.`);
lines.push('', `Redis memory (used_memory): ${mem.perMessage.toFixed(0)} B per queued 64 B message (${memEnc.perMessage.toFixed(0)} B with encryption), ${mem.perSession.toFixed(0)} B per session with one subscription; append-only file at the end of the run: ${fmt(aof / 1024 / 1024)} MB.`);
const report = `${lines.join('\n')}\n`;
fs.mkdirSync(path.dirname(values.out), { recursive: true });
fs.writeFileSync(values.out, report);
console.log(`\n${report}`);
