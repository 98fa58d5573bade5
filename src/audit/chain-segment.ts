/**
 * Chaining audit records off the broker's thread.
 *
 * The broker's thread only lays records out in a *segment*: a list of numbers (a record's time
 * and the pieces of JSON text it is made of) and a buffer of JSON text. Pieces that repeat
 * (a connection's listener, address, client id and user name; a rule; a policy version) are
 * sent once as a numbered *definition* and then named by number. A worker thread turns a
 * segment into the final lines: it numbers the records, formats their times, links each to the
 * one before with SHA-256 and appends the `hash` field. The lines are byte for byte what
 * `serializeRecord` (record.ts) writes for the same events: a test holds the two to that.
 *
 * Layout of `nums`, entry after entry:
 * - a definition: `-1, id, start, length` (the piece's text is `text[start, start + length)`);
 * - a record: `timeMs, pieceCount, piece…`, where a piece is a definition id (>= 0) or an
 *   inline text `-(start + 1), length`; a negative length means the text is to be put in
 *   quotes (a JSON string that needs no escaping, sent without them).
 */
import { Worker } from 'node:worker_threads';
import crypto from 'node:crypto';
import { sha256Of } from './record.ts';

/** What the chaining side keeps between segments. */
export interface ChainState {
  seq: number;
  hash: string;
  defs: Buffer[];
  lastMs: number;
  lastTime: string;
}

/** The lines a segment became, `out[0, end)`, and how many records they are. */
export interface ChainedSegment {
  out: Buffer;
  end: number;
  count: number;
}

/**
 * Turns one segment into chained lines. Runs in the worker (its source is sent there as text),
 * so it may use nothing but its arguments and globals: no imports, no helpers from this module.
 */
export function chainSegment(
  nums: Float64Array,
  n: number,
  text: Uint8Array,
  state: ChainState,
  prefix: string,
  hashHex: (data: Uint8Array) => string,
  alloc: (size: number) => Buffer,
): ChainedSegment {
  // Buffer's own copy() and subarray() check their arguments and build objects: slower than the
  // copying itself for pieces this short, so bytes are moved with set() or a plain loop.
  // latin1Write: Node's encoder without `write`'s argument checks (every string here is ASCII).
  type Out = Buffer & { latin1Write(s: string, at: number): number };
  let out = alloc(text.byteLength * 2 + n * 64) as Out;
  let at = 0;
  let count = 0;
  let i = 0;
  while (i < n) {
    const head = nums[i] as number;
    if (head < 0) {
      const id = (nums[i + 1] as number) | 0;
      const start = (nums[i + 2] as number) | 0;
      state.defs[id] = Buffer.from(text.subarray(start, start + ((nums[i + 3] as number) | 0)));
      i += 4;
      continue;
    }
    // Indices are made small integers (`| 0`): a double used as an index takes a slow path.
    const pieces = (nums[i + 1] as number) | 0;
    // Room for the fixed parts (at most 200 bytes with the hash field) and every piece.
    let need = 256;
    for (let k = i + 2, end = i + 2 + pieces; k < end; k++) {
      const p = (nums[k] as number) | 0;
      if (p >= 0) need += (state.defs[p] as Buffer).length;
      else {
        need += Math.abs((nums[k + 1] as number) | 0) + 2;
        k++;
        end++;
      }
    }
    if (at + need > out.length) {
      const bigger = alloc(Math.max(out.length * 2, at + need * 2)) as Out;
      bigger.set(out.subarray(0, at));
      out = bigger;
    }
    if (head !== state.lastMs) {
      state.lastMs = head;
      state.lastTime = `${prefix}${new Date(head).toISOString()}","seq":`;
    }
    const start = at;
    const seq = state.seq + 1;
    at += out.latin1Write(state.lastTime, at);
    // The sequence number's digits, written by hand (no string).
    let digits = 1;
    for (let v = seq; v >= 10; v = Math.floor(v / 10)) digits++;
    for (let d = digits - 1, v = seq; d >= 0; d--, v = Math.floor(v / 10)) out[at + d] = 0x30 + (v % 10);
    at += digits;
    let k = i + 2;
    for (let left = pieces; left > 0; left--) {
      const p = (nums[k++] as number) | 0;
      if (p >= 0) {
        const def = state.defs[p] as Buffer;
        out.set(def, at);
        at += def.length;
        continue;
      }
      const from = -p - 1;
      let len = (nums[k++] as number) | 0;
      const quote = len < 0;
      if (quote) {
        len = -len;
        out[at++] = 0x22; // "
      }
      if (len > 48) out.set(text.subarray(from, from + len), at);
      else for (let j = 0; j < len; j++) out[at + j] = text[from + j] as number;
      at += len;
      if (quote) out[at++] = 0x22;
    }
    at += out.latin1Write(',"prev":"', at);
    at += out.latin1Write(state.hash, at);
    out[at++] = 0x22; // "
    out[at++] = 0x7d; // }
    const hash = hashHex(new Uint8Array(out.buffer, out.byteOffset + start, at - start));
    // The closing brace becomes `,"hash":"…"}` and the line ends.
    at += out.latin1Write(',"hash":"', at - 1) - 1;
    at += out.latin1Write(hash, at);
    out[at++] = 0x22; // "
    out[at++] = 0x7d; // }
    out[at++] = 0x0a; // \n
    state.seq = seq;
    state.hash = hash;
    count++;
    i = k;
  }
  return { out, end: at, count };
}

/**
 * Output buffers for chainSegment, reused: a fresh large buffer costs a page fault per 4 KiB on
 * first use, more than chaining the records written into it. Buffers come back once written.
 */
export function outputPool(): { alloc(size: number): Buffer; give(buffer: ArrayBuffer): void } {
  const pool: ArrayBuffer[] = [];
  return {
    alloc(size) {
      for (let i = 0; i < pool.length; i++) {
        const b = pool[i] as ArrayBuffer;
        if (b.byteLength >= size) {
          pool.splice(i, 1);
          return Buffer.from(b);
        }
      }
      return Buffer.allocUnsafeSlow(Math.max(size, 1 << 20));
    },
    give(buffer) {
      if (pool.length < 4) pool.push(buffer);
    },
  };
}


/** A request to the worker: chain a segment. The buffers are transferred, and come back. */
interface ChainRequest {
  id: number;
  nums: Float64Array;
  n: number;
  text: Uint8Array;
  /** Output buffers written since the last request, for reuse. */
  spare: ArrayBuffer[];
}
interface ChainReply {
  id: number;
  out: Uint8Array;
  end: number;
  count: number;
  seq: number;
  hash: string;
  nums: Float64Array;
  text: Uint8Array;
}

/** The segment after chaining, with the buffers it came in (for reuse). */
export interface ChainResult extends ChainedSegment {
  seq: number;
  hash: string;
  nums: Float64Array;
  text: Uint8Array;
}

/** Chains segments, in the order given, one at a time. */
export interface Chainer {
  chain(nums: Float64Array, n: number, text: Uint8Array): Promise<ChainResult>;
  /** An output buffer (from a result) that has been written and can be reused. */
  recycle(buffer: ArrayBuffer): void;
  close(): Promise<void>;
}

/** Chains on the calling thread: for environments without worker threads, and for tests. */
export function inlineChainer(tip: { seq: number; hash: string }, prefix: string): Chainer {
  const state: ChainState = { seq: tip.seq, hash: tip.hash, defs: [], lastMs: NaN, lastTime: '' };
  const hashHex = sha256Of(crypto);
  const pool = outputPool();
  return {
    chain: async (nums, n, text) => {
      const r = chainSegment(nums, n, text, state, prefix, hashHex, pool.alloc);
      return { ...r, seq: state.seq, hash: state.hash, nums, text };
    },
    recycle: (buffer) => pool.give(buffer),
    close: async () => {},
  };
}

/**
 * Chains in a worker thread. The worker's code is this module's `chainSegment`, sent as source
 * text, so it needs no loader and no file of its own. The worker does not keep the process
 * alive; if it dies, every pending and later request fails and the sink reports the error.
 */
export function workerChainer(tip: { seq: number; hash: string }, prefix: string): Chainer {
  const source = `
    'use strict';
    const { parentPort, workerData } = require('node:worker_threads');
    const crypto = require('node:crypto');
    var __name = (f) => f; // in case the transpiler that loaded the main thread named functions
    const chainSegment = ${chainSegment.toString()};
    const sha256Of = ${sha256Of.toString()};
    const outputPool = ${outputPool.toString()};
    const hashHex = sha256Of(crypto);
    const pool = outputPool();
    const state = { seq: workerData.seq, hash: workerData.hash, defs: [], lastMs: NaN, lastTime: '' };
    parentPort.on('message', (m) => {
      for (const b of m.spare) pool.give(b);
      const r = chainSegment(m.nums, m.n, m.text, state, workerData.prefix, hashHex, pool.alloc);
      const out = new Uint8Array(r.out.buffer, r.out.byteOffset, r.out.length);
      parentPort.postMessage({ id: m.id, out, end: r.end, count: r.count, seq: state.seq, hash: state.hash, nums: m.nums, text: m.text }, [out.buffer, m.nums.buffer, m.text.buffer]);
    });
  `;
  const worker = new Worker(source, { eval: true, workerData: { seq: tip.seq, hash: tip.hash, prefix } });
  worker.unref();
  let nextId = 0;
  let spare: ArrayBuffer[] = [];
  let failure: Error | null = null;
  const pending = new Map<number, { resolve: (r: ChainResult) => void; reject: (e: Error) => void }>();
  const fail = (err: Error) => {
    failure ??= err;
    for (const p of pending.values()) p.reject(failure);
    pending.clear();
  };
  let expectedReply = 0;
  worker.on('message', (m: ChainReply) => {
    // One worker, one ordered port: replies come in the order of the requests. If one ever did
    // not, the chain tip and the write order would be wrong, so that is treated as a failure.
    if (m.id !== expectedReply) {
      fail(new Error(`the audit chaining thread answered request ${m.id} before ${expectedReply}`));
      return;
    }
    expectedReply++;
    const p = pending.get(m.id);
    pending.delete(m.id);
    p?.resolve({ out: Buffer.from(m.out.buffer, m.out.byteOffset, m.out.byteLength), end: m.end, count: m.count, seq: m.seq, hash: m.hash, nums: m.nums, text: m.text });
  });
  worker.on('error', (err) => fail(err));
  worker.on('exit', (code) => fail(new Error(`the audit chaining thread exited (code ${code})`)));
  return {
    chain: (nums, n, text) =>
      new Promise((resolve, reject) => {
        if (failure !== null) {
          reject(failure);
          return;
        }
        const id = nextId++;
        pending.set(id, { resolve, reject });
        const request: ChainRequest = { id, nums, n, text, spare };
        worker.postMessage(request, [nums.buffer as ArrayBuffer, text.buffer as ArrayBuffer, ...spare]);
        spare = [];
      }),
    recycle: (buffer) => {
      if (spare.length < 4) spare.push(buffer);
    },
    close: async () => {
      failure ??= new Error('the audit chaining thread was stopped');
      await worker.terminate();
    },
  };
}
