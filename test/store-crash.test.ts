/**
 * Crash recovery of the LMDB store: a child process writes (8 concurrent flows of random Store
 * writes, so commits are grouped) and is killed with SIGKILL at a random moment, again and again
 * on the same folder. After each kill the store is opened again and must hold exactly the effect
 * of a prefix of the writes in the order they were issued (batches are atomic and in order), and
 * that prefix must include every write whose promise had resolved. A reference MemoryStore
 * replays the writes to compute each prefix.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import { LmdbStore, type Durability } from '../src/store/lmdb.ts';
import { MemoryStore } from '../src/store/memory.ts';
import { applyOp, canonical, type CrashOp } from './fixtures/store-crash-ops.ts';

const WRITER = fileURLToPath(new URL('./fixtures/store-crash-writer.ts', import.meta.url));
const KEY = { id: 'crash', key: Buffer.alloc(32, 3) };

interface Run {
  issued: Map<number, CrashOp>;
  acked: Set<number>;
  ready: boolean;
  errors: string[];
  stderr: string;
}

/** Starts the writer, kills it with SIGKILL `delayMs` after it reports the store open. */
function crashRun(dir: string, seed: number, durability: Durability, encrypted: boolean, firstOp: number, delayMs: number): Promise<Run> {
  const run: Run = { issued: new Map(), acked: new Set(), ready: false, errors: [], stderr: '' };
  const child = spawn(process.execPath, ['--import', 'tsx', WRITER, dir, String(seed), durability, encrypted ? 'encrypted' : 'plain'], {
    env: { ...process.env, CRASH_FIRST_OP: String(firstOp) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let buffered = '';
  const safety = setTimeout(() => child.kill('SIGKILL'), 20_000);
  child.stderr.on('data', (d: Buffer) => (run.stderr += d.toString()));
  child.stdout.on('data', (d: Buffer) => {
    buffered += d.toString();
    let nl: number;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      if (line === 'R') {
        run.ready = true;
        setTimeout(() => child.kill('SIGKILL'), delayMs);
      } else if (line.startsWith('I ')) {
        const sp = line.indexOf(' ', 2);
        run.issued.set(Number(line.slice(2, sp)), JSON.parse(line.slice(sp + 1)) as CrashOp);
      } else if (line.startsWith('A ')) run.acked.add(Number(line.slice(2)));
      else if (line.startsWith('E ')) run.errors.push(line.slice(2));
    }
  });
  return new Promise((resolve) =>
    child.once('close', () => {
      clearTimeout(safety);
      resolve(run);
    }),
  );
}

async function content(store: { loadSessions: MemoryStore['loadSessions']; loadRetained: MemoryStore['loadRetained'] }): Promise<string> {
  return canonical(await store.loadSessions(), await store.loadRetained());
}

async function crashLoop(t: ExecutionContext, kills: number, seed: number, modes: (i: number) => { durability: Durability; encrypted: boolean }): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-crash-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const model = new MemoryStore();
  let nextOp = 0;
  let totalAcked = 0;
  let totalLost = 0;
  for (let i = 0; i < kills; i++) {
    const { durability, encrypted } = modes(i);
    // Mostly while writing; every fifth kill lands at once, as the first writes are issued.
    const delayMs = i % 5 === 4 ? 0 : 20 + ((seed * 7919 + i * 104_729) % 280);
    const run = await crashRun(dir, seed + i, durability, encrypted, nextOp, delayMs);
    t.deepEqual(run.errors, [], `run ${i}: no write failed`);
    t.true(run.ready, `run ${i}: the writer opened the store (stderr: ${run.stderr.slice(0, 500)})`);

    const store = new LmdbStore({ path: dir, durability, ...(encrypted ? { keys: [KEY] } : {}) });
    const report = await store.open();
    const got = await content(store);
    await store.close();
    t.true(report.recovery.uncleanShutdown, `run ${i}: the stale lock of the killed writer is reported`);
    t.is(report.purged.orphans, 0, `run ${i}: no orphan records`);

    // Every acknowledged write must be there: replay up to the last one, then as far as the store got.
    const ids = [...run.issued.keys()].sort((a, b) => a - b);
    const lastAcked = run.acked.size === 0 ? nextOp - 1 : Math.max(...run.acked);
    let applied = nextOp;
    for (const id of ids) {
      if (id > lastAcked) break;
      await applyOp(model, run.issued.get(id) as CrashOp);
      applied = id + 1;
    }
    let expected = await content(model);
    while (expected !== got && run.issued.has(applied)) {
      await applyOp(model, run.issued.get(applied) as CrashOp);
      applied++;
      expected = await content(model);
    }
    if (expected !== got) {
      t.fail(`run ${i}: the reopened store is no prefix of the issued writes that includes every acknowledged one (issued ${ids.length}, acknowledged up to #${lastAcked}, seed ${seed + i})`);
      return;
    }
    totalAcked += run.acked.size;
    totalLost += ids.length > 0 ? (ids[ids.length - 1] as number) + 1 - applied : 0;
    // The next run continues from what the store holds: unapplied writes were lost, never acknowledged.
    nextOp = ids.length > 0 ? (ids[ids.length - 1] as number) + 1 : nextOp;
  }
  t.true(totalAcked > kills * 10, `writes were acknowledged between kills (${totalAcked})`);
  t.log(`${kills} kills, ${totalAcked} acknowledged writes all recovered, ${totalLost} unacknowledged writes lost`);
}

test('SIGKILL at random moments, 12 times: every acknowledged write is there after reopening, and nothing torn (durability sync)', async (t) => {
  t.timeout(120_000);
  await crashLoop(t, 12, 1000, () => ({ durability: 'sync', encrypted: false }));
});

test('SIGKILL at random moments, 12 times, encrypted, durability switching between sync and commit on the same store: same guarantees', async (t) => {
  t.timeout(120_000);
  await crashLoop(t, 12, 5000, (i) => ({ durability: i % 2 === 0 ? 'commit' : 'sync', encrypted: true }));
});
