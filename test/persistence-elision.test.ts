/**
 * Write elision in the broker's write path (src/broker/persistence.ts): with a durable store,
 * writes wait while the store commits and go to it together, in order; writes that undo each
 * other while they wait never reach it, and what they promised is still kept. A store double
 * records what it is asked to do and commits only when the test says so.
 */
import test from 'ava';
import { Persistence, type WriteTag } from '../src/broker/persistence.ts';
import type { Session } from '../src/broker/session.ts';
import type { Store } from '../src/store/types.ts';

class GatedStore {
  readonly calls: string[] = [];
  private gates: (() => void)[] = [];
  private op(name: string): Promise<void> {
    this.calls.push(name);
    return new Promise((resolve) => this.gates.push(resolve));
  }
  /** Commits everything asked so far. */
  commit(): void {
    const g = this.gates;
    this.gates = [];
    for (const r of g) r();
  }
  get waiting(): number {
    return this.gates.length;
  }
  enqueue = (_k: string, m: { topic: string }) => this.op(`enqueue ${m.topic}`);
  dequeue = (_k: string, n: number) => this.op(`dequeue ${n}`);
  putInflight = (_k: string, f: { packetId: number; state: string }) => this.op(`put ${f.packetId} ${f.state}`);
  deleteInflight = (_k: string, id: number) => this.op(`delete ${id}`);
  saveSession = () => this.op('saveSession');
  putRetained = (m: { topic: string }) => this.op(`retain ${m.topic}`);
}

const tick = () => new Promise((r) => setImmediate(r));
const session = (name: string) => ({ key: name }) as unknown as Session;

function setup() {
  const store = new GatedStore();
  const log = { error: () => {}, warn: () => {}, info: () => {} } as never;
  const p = new Persistence(store as unknown as Store, log, () => {});
  p.durable = true;
  const s = session('s');
  let settled = new Set<string>();
  const track = (name: string, pr: Promise<string>) => void pr.then((st) => settled.add(`${name}:${st}`));
  const w = {
    enqueue: (topic: string) => p.write(s, (st) => st.enqueue('s', { topic } as never), { kind: 'enqueue' }),
    dequeue: (count: number, storedAfter: number) => {
      const make = (n: number) => (st: Store) => st.dequeue('s', n);
      return p.write(s, make(count), { kind: 'dequeue', count, storedAfter, make } as WriteTag);
    },
    put: (id: number, state: 'publish' | 'pubrel' = 'publish') => p.write(s, (st) => st.putInflight('s', { packetId: id, state } as never), { kind: 'put', packetId: id, first: state === 'publish' }),
    del: (id: number) => p.write(s, (st) => st.deleteInflight('s', id), { kind: 'delete', packetId: id }),
    whole: () => p.write(s, (st) => st.saveSession({} as never), { kind: 'whole' }),
    retain: (topic: string) => p.write(null, (st) => st.putRetained({ topic } as never)),
  };
  return { store, p, w, track, settled: () => settled, reset: () => (settled = new Set()) };
}

test('an idle store gets a write at once (in the same turn of the event loop)', async (t) => {
  const { store, w } = setup();
  void w.retain('r/1');
  await tick();
  t.deepEqual(store.calls, ['retain r/1']);
});

test('put in flight and acknowledged while the store commits: neither write reaches it, and the put is settled ok at once', async (t) => {
  const { store, p, w, track, settled } = setup();
  void w.retain('busy');
  await tick(); // the store is now committing 'busy'
  track('put', w.put(7));
  track('del', w.del(7));
  await tick();
  t.true(settled().has('put:ok') && settled().has('del:ok'), 'settled before any commit');
  store.commit();
  await tick();
  await tick();
  t.deepEqual(store.calls, ['retain busy'], 'nothing else was written');
  t.is(p.elided.inflight, 1);
});

test('a queued message taken from the queue before its entry was written: the entry is never written; its promise waits for the batch holding where it went', async (t) => {
  const { store, p, w, track, settled } = setup();
  void w.retain('busy');
  await tick();
  track('A', w.enqueue('A'));
  track('B', w.enqueue('B'));
  track('putA', w.put(1)); // A goes in flight ...
  track('deq', w.dequeue(1, 1)); // ... and leaves the queue; B stays (1 stored entry left)
  store.commit(); // 'busy' commits; the held writes go to the store
  await tick();
  await tick();
  t.deepEqual(store.calls, ['retain busy', 'enqueue B', 'put 1 publish'], 'no enqueue of A, no dequeue');
  t.false(settled().has('A:ok'), 'A is not settled before the batch with its in-flight record commits');
  store.commit();
  await tick();
  await tick();
  t.true(settled().has('A:ok') && settled().has('putA:ok') && settled().has('B:ok'));
  t.is(p.elided.queued, 1);
});

test('entries already written are dequeued first; only newer held ones are cancelled', async (t) => {
  const { store, w } = setup();
  void w.enqueue('A');
  await tick(); // A is written (committing)
  void w.enqueue('B');
  void w.dequeue(2, 0); // both leave the queue
  store.commit();
  await tick();
  await tick();
  t.deepEqual(store.calls, ['enqueue A', 'dequeue 1'], 'A dequeued in the store, B never written');
});

test('a state change (PUBREC received) pins the record: put, put pubrel and delete are all written', async (t) => {
  const { store, w } = setup();
  void w.retain('busy');
  await tick();
  void w.put(3);
  void w.put(3, 'pubrel');
  void w.del(3);
  store.commit();
  await tick();
  await tick();
  t.deepEqual(store.calls, ['retain busy', 'put 3 publish', 'put 3 pubrel', 'delete 3']);
});

test('a whole-session write in between: held entries before it are not cancelled', async (t) => {
  const { store, w } = setup();
  void w.retain('busy');
  await tick();
  void w.enqueue('A');
  void w.put(9);
  void w.whole();
  void w.dequeue(1, 0);
  void w.del(9);
  store.commit();
  await tick();
  await tick();
  t.deepEqual(store.calls, ['retain busy', 'enqueue A', 'put 9 publish', 'saveSession', 'dequeue 1', 'delete 9']);
});

test('writes keep their order across batches, and drained() waits for the held ones', async (t) => {
  const { store, p, w } = setup();
  void w.retain('1');
  await tick();
  void w.retain('2');
  void w.retain('3');
  let drained = false;
  void p.drained().then(() => (drained = true));
  store.commit();
  await tick();
  await tick();
  t.deepEqual(store.calls, ['retain 1', 'retain 2', 'retain 3']);
  t.false(drained);
  store.commit();
  await tick();
  await tick();
  t.true(drained);
  t.is(store.waiting, 0);
});
