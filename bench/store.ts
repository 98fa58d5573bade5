/**
 * The store's raw write pattern, without a broker or sockets: for every QoS 1 message into a
 * persistent session, enqueue + dequeue + putInflight + deleteInflight, each awaited (the broker
 * awaits a write before it acknowledges). Many sessions run at once, so commits are grouped: one
 * sync per batch. Also measures the size on disk per queued 64-byte message.
 *
 *   npm run bench:store                                  # 5 rounds of 3 s per store, 64 flows
 *   npm run bench:store -- --rounds 3 --duration 2 --flows 1,64
 *   npm run bench:store -- --sqlite /path/to/node_modules/better-sqlite3   # add SQLite (not a dependency)
 *
 * Rounds interleave the stores (one run of each per round), so each comparison is between runs
 * seconds apart on this noisy machine; the report gives medians and ranges. Writes
 * bench/results/store.md.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { LmdbStore } from '../src/store/lmdb.ts';
import { MemoryStore } from '../src/store/memory.ts';
import type { StoredMessage } from '../src/store/types.ts';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '5' },
    duration: { type: 'string', default: '3' },
    flows: { type: 'string', default: '64' },
    'size-messages': { type: 'string', default: '100000' },
    dir: { type: 'string', default: os.tmpdir() },
    stores: { type: 'string', default: 'memory,lmdb-sync,lmdb-commit,lmdb-sync-encrypted' },
    sqlite: { type: 'string' },
    out: { type: 'string', default: path.join(import.meta.dirname, 'results', 'store.md') },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  console.log('Usage: npm run bench:store -- [--rounds 5] [--duration 3] [--flows 1,64] [--size-messages 100000] [--dir DIR] [--stores a,b] [--sqlite MODULE_DIR] [--out FILE]');
  process.exit(0);
}
const rounds = Number(values.rounds);
const durationMs = Number(values.duration) * 1000;
const flowCounts = values.flows.split(',').map(Number);
const sizeMessages = Number(values['size-messages']);

/** The four writes of one message, as the broker makes them. */
interface Pattern {
  name: string;
  open(dir: string): Promise<void>;
  /** Creates the session the flow writes into. */
  session(id: string): Promise<void>;
  message(id: string, packetId: number, m: StoredMessage): Promise<void>;
  /** Only enqueue (for the size measurement). */
  enqueue(id: string, m: StoredMessage): Promise<void>;
  /** Bytes on disk. */
  bytes(dir: string): number;
  close(): Promise<void>;
}

function storePattern(name: string, make: (dir: string) => LmdbStore | MemoryStore): Pattern {
  let store: LmdbStore | MemoryStore;
  return {
    name,
    async open(dir) {
      store = make(dir);
      await store.open();
    },
    session: (id) => store.saveSession({ clientId: id, owner: `user:${id}`, protocolVersion: 5, expiryInterval: 3600, subscriptions: [{ filter: 'bench/#', qos: 1, noLocal: false, retainAsPublished: false, retainHandling: 0 }], inflight: [], queue: [], awaitingRelease: [] }),
    async message(id, packetId, m) {
      await store.enqueue(id, m);
      await store.dequeue(id, 1);
      await store.putInflight(id, { packetId, state: 'publish', message: m });
      await store.deleteInflight(id, packetId);
    },
    enqueue: (id, m) => store.enqueue(id, m),
    bytes: (dir) => (name === 'memory' ? 0 : fs.statSync(path.join(dir, 'data.mdb')).size),
    close: () => store.close(),
  };
}

/**
 * The same pattern on SQLite (better-sqlite3, WAL, synchronous=FULL): statements of one event
 * turn go into one transaction, committed (and synced) at the end of the turn. better-sqlite3 is
 * synchronous: the commit's fsync blocks the event loop, which is how it would run in the broker.
 */
function sqlitePattern(moduleDir: string, durable: boolean): Pattern {
  const require = createRequire(path.join(moduleDir, 'package.json'));
  const Database = require(moduleDir) as new (file: string) => {
    pragma(s: string): unknown;
    exec(s: string): void;
    prepare(s: string): { run(...a: unknown[]): unknown; get(...a: unknown[]): Record<string, unknown> | undefined };
    close(): void;
  };
  let db: InstanceType<typeof Database>;
  let pending: { run: () => void; resolve: () => void; reject: (e: unknown) => void }[] = [];
  let scheduled = false;
  let stmts: Record<string, ReturnType<InstanceType<typeof Database>['prepare']>>;
  const flush = () => {
    scheduled = false;
    const batch = pending;
    pending = [];
    try {
      db.exec('BEGIN');
      for (const op of batch) op.run();
      db.exec('COMMIT');
      for (const op of batch) op.resolve();
    } catch (err) {
      try {
        db.exec('ROLLBACK');
      } catch {
        // nothing to roll back
      }
      for (const op of batch) op.reject(err);
    }
  };
  const op = (run: () => void) =>
    new Promise<void>((resolve, reject) => {
      pending.push({ run, resolve, reject });
      if (!scheduled) {
        scheduled = true;
        setImmediate(flush);
      }
    });
  const sid = new Map<string, number>();
  const encode = (m: StoredMessage) => Buffer.concat([Buffer.from(JSON.stringify({ t: m.topic, q: m.qos, r: m.retain })), m.payload]);
  return {
    name: durable ? 'sqlite-sync' : 'sqlite-normal',
    async open(dir) {
      fs.mkdirSync(dir, { recursive: true });
      db = new Database(path.join(dir, 'store.sqlite'));
      db.pragma('journal_mode = WAL');
      db.pragma(`synchronous = ${durable ? 'FULL' : 'NORMAL'}`);
      db.exec('CREATE TABLE sessions (id TEXT PRIMARY KEY, sid INTEGER, body BLOB)');
      db.exec('CREATE TABLE queue (sid INTEGER, seq INTEGER, body BLOB, PRIMARY KEY (sid, seq)) WITHOUT ROWID');
      db.exec('CREATE TABLE inflight (sid INTEGER, ord INTEGER, pid INTEGER, body BLOB, PRIMARY KEY (sid, ord)) WITHOUT ROWID');
      db.exec('CREATE UNIQUE INDEX inflight_pid ON inflight (sid, pid)');
      stmts = {
        session: db.prepare('INSERT OR REPLACE INTO sessions VALUES (?, ?, ?)'),
        sid: db.prepare('SELECT sid FROM sessions WHERE id = ?'),
        enqueue: db.prepare('INSERT INTO queue VALUES (?, (SELECT coalesce(max(seq), -1) + 1 FROM queue WHERE sid = ?), ?)'),
        dequeue: db.prepare('DELETE FROM queue WHERE sid = ? AND seq IN (SELECT seq FROM queue WHERE sid = ? ORDER BY seq LIMIT ?)'),
        putInflight: db.prepare('INSERT OR REPLACE INTO inflight VALUES (?, (SELECT coalesce((SELECT ord FROM inflight WHERE sid = ? AND pid = ?), (SELECT coalesce(max(ord), -1) + 1 FROM inflight WHERE sid = ?))), ?, ?)'),
        deleteInflight: db.prepare('DELETE FROM inflight WHERE sid = ? AND pid = ?'),
      };
    },
    session: (id) =>
      op(() => {
        const n = sid.size + 1;
        sid.set(id, n);
        stmts['session']?.run(id, n, Buffer.from(id));
      }),
    // Each write looks its session up, as the LMDB store does.
    async message(id, packetId, m) {
      const body = encode(m);
      const s = () => stmts['sid']?.get(id)?.['sid'];
      await op(() => void stmts['enqueue']?.run(s(), s(), body));
      await op(() => void stmts['dequeue']?.run(s(), s(), 1));
      await op(() => void stmts['putInflight']?.run(s(), s(), packetId, s(), packetId, body));
      await op(() => void stmts['deleteInflight']?.run(s(), packetId));
    },
    enqueue: (id, m) => {
      const body = encode(m);
      return op(() => void stmts['enqueue']?.run(sid.get(id), sid.get(id), body));
    },
    bytes: (dir) => ['store.sqlite', 'store.sqlite-wal'].reduce((n, f) => n + (fs.existsSync(path.join(dir, f)) ? fs.statSync(path.join(dir, f)).size : 0), 0),
    close: async () => db.close(),
  };
}

const patterns: Pattern[] = [];
for (const name of values.stores.split(',')) {
  if (name === 'memory') patterns.push(storePattern(name, () => new MemoryStore()));
  else if (name === 'lmdb-sync') patterns.push(storePattern(name, (dir) => new LmdbStore({ path: dir })));
  else if (name === 'lmdb-commit') patterns.push(storePattern(name, (dir) => new LmdbStore({ path: dir, durability: 'commit' })));
  else if (name === 'lmdb-sync-encrypted') patterns.push(storePattern(name, (dir) => new LmdbStore({ path: dir, keys: [{ id: 'bench', key: Buffer.alloc(32, 1) }] })));
  else {
    console.error(`unknown store ${name}`);
    process.exit(2);
  }
}
if (values.sqlite !== undefined) patterns.push(sqlitePattern(path.resolve(values.sqlite), true), sqlitePattern(path.resolve(values.sqlite), false));

const payload = Buffer.alloc(64, 0x61);
const message = (i: number): StoredMessage => ({ topic: `bench/${i % 100}`, payload, qos: 1, retain: false });
const tmpRoot = fs.mkdtempSync(path.join(values.dir, 'portcullis-bench-store-'));
let dirs = 0;
const freshDir = () => path.join(tmpRoot, `d${++dirs}`);

/**
 * Messages per second through the four writes, with `flows` sessions writing at once, and how
 * busy the event loop was meanwhile (a broker serves its clients from that loop: a store that
 * syncs on it stalls every connection for the length of each fsync).
 */
async function throughput(p: Pattern, flows: number): Promise<{ rate: number; elu: number; p99DelayMs: number }> {
  const dir = freshDir();
  await p.open(dir);
  for (let f = 0; f < flows; f++) await p.session(`c${f}`);
  let done = 0;
  let stop = false;
  const end = Date.now() + durationMs;
  const stalls = monitorEventLoopDelay({ resolution: 1 });
  stalls.enable();
  const elu0 = performance.eventLoopUtilization();
  const started = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: flows }, async (_, f) => {
      let packetId = 1;
      while (!stop) {
        await p.message(`c${f}`, packetId, message(done));
        packetId = packetId === 65535 ? 1 : packetId + 1;
        done++;
        if (Date.now() >= end) stop = true;
      }
    }),
  );
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const elu = performance.eventLoopUtilization(elu0).utilization;
  stalls.disable();
  await p.close();
  fs.rmSync(dir, { recursive: true, force: true });
  return { rate: done / seconds, elu, p99DelayMs: stalls.percentile(99) / 1e6 };
}

/**
 * Bytes on disk per queued 64 B message: the store holding `sizeMessages` messages over 1,000
 * sessions, minus the same store with the sessions only, both measured after close.
 */
async function sizePerMessage(p: Pattern): Promise<number> {
  const sessions = 1000;
  const fill = async (dir: string, messages: number): Promise<number> => {
    await p.open(dir);
    for (let s = 0; s < sessions; s++) await p.session(`c${s}`);
    for (let i = 0; i < messages; i += 1000) {
      await Promise.all(Array.from({ length: Math.min(1000, messages - i) }, (_, j) => p.enqueue(`c${(i + j) % sessions}`, message(i + j))));
    }
    await p.close();
    const bytes = p.bytes(dir);
    fs.rmSync(dir, { recursive: true, force: true });
    return bytes;
  };
  const base = await fill(freshDir(), 0);
  return ((await fill(freshDir(), sizeMessages)) - base) / sizeMessages;
}

const median = (a: number[]): number => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)] as number;
const fmt = (n: number): string => Math.round(n).toLocaleString('en-US');

console.log(`store bench: ${rounds} rounds × ${durationMs / 1000} s, flows ${flowCounts.join(',')}, stores ${patterns.map((p) => p.name).join(', ')}; in ${tmpRoot}`);
const results = new Map<string, number[]>();
const busy = new Map<string, number[]>();
const stallMax = new Map<string, number[]>(); // p99 event-loop delay per run
for (let round = 0; round < rounds; round++) {
  // Rotate the order each round so no store always runs first or last.
  const order = patterns.map((_, i) => patterns[(i + round) % patterns.length] as Pattern);
  for (const flows of flowCounts) {
    for (const p of order) {
      const { rate, elu, p99DelayMs } = await throughput(p, flows);
      const k = `${p.name}|${flows}`;
      results.set(k, [...(results.get(k) ?? []), rate]);
      busy.set(k, [...(busy.get(k) ?? []), elu]);
      stallMax.set(k, [...(stallMax.get(k) ?? []), p99DelayMs]);
      console.log(`round ${round + 1}: ${p.name.padEnd(20)} flows ${String(flows).padStart(3)}: ${fmt(rate)} msg/s (${fmt(rate * 4)} writes/s), event loop busy ${(elu * 100).toFixed(0)} %, p99 delay ${p99DelayMs.toFixed(1)} ms`);
    }
  }
}
const sizes = new Map<string, number>();
for (const p of patterns) {
  if (p.name === 'memory') continue;
  sizes.set(p.name, await sizePerMessage(p));
  console.log(`${p.name}: ${(sizes.get(p.name) as number).toFixed(1)} bytes on disk per queued 64 B message`);
}
fs.rmSync(tmpRoot, { recursive: true, force: true });

const lines: string[] = [];
lines.push(`# Store write pattern (npm run bench:store)`, '');
lines.push(`${new Date().toISOString()}, ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? '?'}), Node ${process.version}, ${rounds} rounds × ${durationMs / 1000} s; temp folder on ${values.dir}.`, '');
lines.push('Messages per second through enqueue + dequeue + putInflight + deleteInflight, each awaited (median of rounds, range):', '');
lines.push(`| store | ${flowCounts.map((f) => `${f} flow${f === 1 ? '' : 's'}`).join(' | ')} |`);
lines.push(`|---|${flowCounts.map(() => '---:').join('|')}|`);
for (const p of patterns) {
  const cells = flowCounts.map((f) => {
    const r = results.get(`${p.name}|${f}`) ?? [];
    return `${fmt(median(r))} (${fmt(Math.min(...r))}–${fmt(Math.max(...r))})`;
  });
  lines.push(`| ${p.name} | ${cells.join(' | ')} |`);
}
lines.push('', 'The event loop during those runs (median over rounds of: utilization; 99th percentile of the event-loop delay): a broker serves every client from that loop, so what the store keeps busy is taken from them.', '');
lines.push(`| store | ${flowCounts.map((f) => `${f} flow${f === 1 ? '' : 's'}`).join(' | ')} |`);
lines.push(`|---|${flowCounts.map(() => '---:').join('|')}|`);
for (const p of patterns) {
  const cells = flowCounts.map((f) => `${(median(busy.get(`${p.name}|${f}`) ?? [0]) * 100).toFixed(0)} %, ${median(stallMax.get(`${p.name}|${f}`) ?? [0]).toFixed(1)} ms`);
  lines.push(`| ${p.name} | ${cells.join(' | ')} |`);
}
lines.push('', `Bytes on disk per queued 64 B message (${fmt(sizeMessages)} messages over 1,000 sessions):`, '');
lines.push('| store | bytes/message |', '|---|---:|');
for (const [name, size] of sizes) lines.push(`| ${name} | ${size.toFixed(1)} |`);
const report = `${lines.join('\n')}\n`;
fs.mkdirSync(path.dirname(values.out), { recursive: true });
fs.writeFileSync(values.out, report);
console.log(`\n${report}`);
