/**
 * The write path to the Store, owned by the session registry (sessions.ts): every write goes
 * through here, so this is where the durability contract is kept.
 *
 * - Writes never block the caller; each one's outcome is a promise of a {@link WriteStatus} that
 *   never rejects.
 * - With a durable store, the writes one action makes (a PUBLISH routed to persistent sessions,
 *   a SUBSCRIBE, a CONNECT) are collected, and the acknowledgement that promises them (PUBACK,
 *   PUBREC, PUBCOMP, SUBACK, CONNACK) is sent only once they are committed. A memory store is
 *   not waited for: its writes cannot fail and promise nothing across a restart.
 * - A write that fails (disk full, an unwritable store) is logged and audited once per episode;
 *   the session it belonged to is marked, and written again whole once writes succeed.
 * - With a durable store, writes are held while the store is busy committing, and handed to it
 *   together, in order, as the next batch. While they wait, writes that undo each other are
 *   dropped (write elision): a message put in flight and acknowledged by its subscriber before
 *   its record was written needs no record at all, and a message queued and taken from the queue
 *   again needs no queue entry. What a dropped write promised is still kept: an acknowledged
 *   delivery is done (the message reached its subscriber), and a queued message that moved on
 *   resolves with the batch that holds where it went. The store sees an in-order sequence of
 *   writes whose every prefix is a state the broker could have been in, so a crash at any point
 *   still loses nothing that was acknowledged. Under load this removes most of the store's work
 *   for subscribers that keep up; at low load nothing waits (an idle store gets writes at once).
 */
import type { AuditEvent } from '../audit/types.ts';
import type { Logger } from '../log.ts';
import { isStoreError } from '../store/errors.ts';
import type { LateBatching, Store } from '../store/types.ts';
import type { Session } from './session.ts';

import type { WriteStatus } from './ports.ts';

export type { WriteStatus } from './ports.ts';

const OK: Promise<WriteStatus> = Promise.resolve('ok');
/**
 * A placeholder until a promise's executor hands over its resolver. One shared function: every
 * write would otherwise create one (and pay for naming it where the code runs through a
 * transpiler that keeps function names, as the benchmarks do).
 */
function noop(): void {}

/** What a held write is, for write elision (see the module comment). Writes without a tag are kept as they are. */
export type WriteTag =
  | { kind: 'enqueue' }
  /** `count` stored entries taken from the front of the queue; `storedAfter`: stored entries left in memory after it; `make` writes a dequeue of n. */
  | { kind: 'dequeue'; count: number; storedAfter: number; make: (count: number) => (store: Store) => Promise<void> }
  /** A delivery put in flight; `first`: its first record (state 'publish'), which an acknowledgement may cancel. */
  | { kind: 'put'; packetId: number; first: boolean }
  | { kind: 'delete'; packetId: number }
  /** A write of the whole session (or its removal): what was held before it can no longer be cancelled. */
  | { kind: 'whole' };

interface Held {
  op: ((store: Store) => Promise<void>) | null;
  session: Session | null;
  resolve: (status: WriteStatus) => void;
  cancelled: boolean;
  /** Promises of cancelled queue entries that moved on: resolved with the batch this write is in. */
  carried: ((status: WriteStatus) => void)[] | null;
  /** Its batch's transaction has started: it is being written, and can no longer be cancelled. */
  frozen: boolean;
}

/** Per session, the held writes that a later one may still cancel. */
interface Ledger {
  enqueues: Held[];
  puts: Map<number, Held>;
}

export class Persistence {
  /** True when the store keeps what it commits across a crash (set when it opens). */
  durable = false;
  /** Between {@link collect} and {@link collected}: the writes collected (the first alone, the array only from the second: most actions collect none or one). */
  private collecting = false;
  private first: Promise<WriteStatus> | null = null;
  private batch: Promise<WriteStatus>[] | null = null;
  /** When writes started failing (0: they do not), and whether the disk is full. */
  private failingSince = 0;
  private failures = 0;
  private readonly dirty = new Set<Session>();
  /** Durable store: writes waiting for the next batch, in order. */
  private held: Held[] = [];
  private ledgers = new Map<Session, Ledger>();
  /** Writes handed to the store and not settled yet. */
  private outstanding = 0;
  private flushScheduled = false;
  private idleWaiters: (() => void)[] = [];
  /** Settled once the batch the writes held now will go out in has settled (session moves wait for it). */
  private nextBatch: { promise: Promise<void>; resolve: () => void } | null = null;
  /** Writes the store never saw because a later one undid them (for $SYS and the benchmarks). */
  readonly elided = { inflight: 0, queued: 0 };

  constructor(
    readonly store: Store,
    private readonly log: Logger,
    private readonly audit: (event: AuditEvent) => void,
  ) {}

  /** Starts collecting the writes made until {@link collected} (synchronous code only: the collection is global). */
  collect(): void {
    this.collecting = true;
    this.first = null;
    this.batch = null;
  }

  /** What the writes since {@link collect} came to, once committed; null when nothing needs waiting for. */
  collected(): Promise<WriteStatus> | null {
    const first = this.first;
    const b = this.batch;
    this.collecting = false;
    this.first = null;
    this.batch = null;
    if (b !== null) return Promise.all(b).then(worst);
    return first;
  }

  /** Adds a write to the collection, when one is being made. */
  private collectOne(p: Promise<WriteStatus>): void {
    if (!this.collecting) return;
    if (this.first === null) this.first = p;
    else (this.batch ??= [this.first]).push(p);
  }

  /** Writes through to the store; `session`: whose state it is, rewritten whole if this write fails; `tag`: what it is, for write elision. */
  write(session: Session | null, op: (store: Store) => Promise<void>, tag?: WriteTag): Promise<WriteStatus> {
    if (!this.durable) {
      const p = this.issue(session, op);
      if (session !== null) session.lastWrite = p;
      return p;
    }
    let resolve: (status: WriteStatus) => void = noop;
    const p = new Promise<WriteStatus>((r) => (resolve = r));
    const held: Held = { op, session, resolve, cancelled: false, carried: null, frozen: false };
    this.collectOne(p);
    if (tag !== undefined && session !== null && !this.elide(session, held, tag)) return p;
    // A session moving to another node waits until every write made for it has settled
    // (migration.ts). Held writes go to the store batch after batch, so that is when the batch
    // holding its latest write has settled (not the write's own promise: write elision may settle
    // a held write at once while earlier ones still wait).
    if (session !== null) session.lastWrite = this.heldBatch();
    this.held.push(held);
    this.schedule();
    return p;
  }

  /**
   * Applies write elision to a new held write; false when the write is not needed at all (it
   * cancelled an earlier one and is settled already).
   */
  private elide(session: Session, held: Held, tag: WriteTag): boolean {
    let ledger = this.ledgers.get(session);
    switch (tag.kind) {
      case 'enqueue':
        if (ledger === undefined) this.ledgers.set(session, (ledger = { enqueues: [], puts: new Map() }));
        ledger.enqueues.push(held);
        return true;
      case 'dequeue': {
        // The cancellable enqueues are the newest stored entries: those ahead of them were
        // written (or can no longer be cancelled), and a dequeue takes those first.
        const pending = ledger?.enqueues ?? [];
        // Entries whose batch has started are written: they are the oldest of the list.
        while (pending.length > 0 && (pending[0] as Held).frozen) pending.shift();
        const ahead = tag.storedAfter + tag.count - pending.length;
        const written = Math.max(0, Math.min(tag.count, ahead));
        const cancel = Math.min(tag.count - written, pending.length);
        if (cancel > 0) {
          held.carried = [];
          // shift(), not splice(0, n): the list can be long, and n is usually 1.
          for (let k = 0; k < cancel; k++) {
            const e = pending.shift() as Held;
            e.cancelled = true;
            held.carried.push(e.resolve);
          }
          this.elided.queued += cancel;
        }
        held.op = written + (tag.count - written - cancel) > 0 ? tag.make(written + (tag.count - written - cancel)) : null;
        return true;
      }
      case 'put':
        if (ledger === undefined) this.ledgers.set(session, (ledger = { enqueues: [], puts: new Map() }));
        if (tag.first) ledger.puts.set(tag.packetId, held);
        else ledger.puts.delete(tag.packetId); // a state change: the record must now be written, and deleted later
        return true;
      case 'delete': {
        const put = ledger?.puts.get(tag.packetId);
        if (put === undefined) return true;
        if (put.frozen) {
          // Its batch's transaction has started: the record is (being) written, so it must be deleted.
          ledger?.puts.delete(tag.packetId);
          return true;
        }
        // Acknowledged before its record was written: the delivery is done, and neither write is needed.
        ledger?.puts.delete(tag.packetId);
        put.cancelled = true;
        put.resolve('ok');
        held.resolve('ok');
        this.elided.inflight++;
        return false;
      }
      case 'whole':
        this.ledgers.delete(session);
        return true;
    }
  }

  private schedule(): void {
    if (this.flushScheduled || this.outstanding > 0) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      this.flush();
    });
  }

  /** Hands the held writes to the store as one batch (the store groups what it gets in one turn into one commit). */
  /** Settles once the batch the writes held now go out in has settled. */
  private heldBatch(): Promise<void> {
    if (this.nextBatch === null) {
      let resolve: () => void = noop;
      const promise = new Promise<void>((r) => (resolve = r));
      this.nextBatch = { promise, resolve };
    }
    return this.nextBatch.promise;
  }

  private flush(): void {
    if (this.outstanding > 0) return;
    if (this.held.length === 0) {
      this.nextBatch?.resolve();
      this.nextBatch = null;
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
      return;
    }
    const batch = this.held;
    this.held = [];
    const settled = this.nextBatch;
    this.nextBatch = null;
    const late = (this.store as Partial<LateBatching>).lateBatch;
    if (late !== undefined) {
      this.flushLate(batch, settled, late);
      return;
    }
    this.ledgers = new Map(); // what is handed over can no longer be cancelled
    const issued: Promise<WriteStatus>[] = [];
    const afterBatch: ((status: WriteStatus) => void)[] = [];
    for (const h of batch) this.hand(h, issued, afterBatch);
    this.settleBatch(issued, afterBatch, settled);
  }

  /** Hands one held write to the store (inside the batch's transaction for a late batch). */
  private hand(h: Held, issued: Promise<WriteStatus>[], afterBatch: ((status: WriteStatus) => void)[]): void {
    h.frozen = true;
    if (h.cancelled) return;
    if (h.carried !== null) afterBatch.push(...h.carried);
    if (h.op === null) {
      afterBatch.push(h.resolve);
      return;
    }
    const p = this.issue(h.session, h.op);
    issued.push(p);
    void p.then(h.resolve);
  }

  private settleBatch(issued: Promise<WriteStatus>[], afterBatch: ((status: WriteStatus) => void)[], settled: { resolve: () => void } | null): void {
    if (issued.length === 0) {
      for (const r of afterBatch) r('ok');
      settled?.resolve();
      this.outstanding = 0;
      this.flush();
      return;
    }
    this.outstanding = Math.max(1, issued.length);
    void Promise.all(issued).then((statuses) => {
      const status = worst(statuses);
      for (const r of afterBatch) r(status);
      settled?.resolve();
      this.outstanding = 0;
      this.flush();
    });
  }

  /**
   * A store with late batches (the LMDB store): the batch is handed over now, but what it writes
   * is taken from it only when its transaction starts (inside the store's transaction callback).
   * Until then its writes stay in the ledgers and can still be cancelled, exactly like held
   * ones: a delivery put in flight and acknowledged by its subscriber while the previous batch
   * was committing (the usual case under load: the acknowledgement arrives while this batch waits
   * for the disk) costs no write at all, instead of a put in this batch and a delete in the next.
   *
   * Why this keeps the durability contract (every crash point):
   * - The store sees, in order, the held writes minus pairs that undo each other, as before; a
   *   write is only ever cancelled while it is not in any transaction (`frozen` is set for every
   *   write of the batch, synchronously, as its transaction starts), so no transaction holds half
   *   of a pair. Every committed prefix is a state the broker could have been in.
   * - A QoS 1 delivery whose put is cancelled was acknowledged by its subscriber (PUBACK): the
   *   subscriber owns the message, nothing is owed to it after a crash, so the publisher's PUBACK
   *   (which waits for the put's promise) may go at once. Before that PUBACK nothing was promised:
   *   a crash before it loses nothing acknowledged. If the subscriber's PUBACK comes after the
   *   transaction started, the put is written and the delete goes in a later batch: a crash in
   *   between redelivers the message (at least once).
   * - QoS 2 outbound: a PUBLISH to a persistent session goes out only after its in-flight record
   *   is committed (delivery.ts), so its put is frozen before PUBREC can come, and the 'pubrel'
   *   state is a second put that is never cancelled: a subscriber holding the packet id gets its
   *   PUBREL after a restart.
   * - A batch that fails (disk full) fails every write in it, as before; one that cannot start
   *   (the store closed or refusing writes) never calls prepare, and its writes fail here.
   * - The publisher's PUBACK for a message that was put (not cancelled) still waits for the commit
   *   of the batch holding the put.
   */
  private flushLate(batch: Held[], settled: { resolve: () => void } | null, late: LateBatching['lateBatch']): void {
    const issued: Promise<WriteStatus>[] = [];
    const afterBatch: ((status: WriteStatus) => void)[] = [];
    let prepared = false;
    this.outstanding = 1;
    const prepare = (): void => {
      prepared = true;
      for (const h of batch) this.hand(h, issued, afterBatch);
      // What is now being written leaves the ledgers (which then hold only writes still held).
      for (const [session, ledger] of this.ledgers) {
        for (const [id, h] of ledger.puts) if (h.frozen) ledger.puts.delete(id);
        while (ledger.enqueues.length > 0 && (ledger.enqueues[0] as Held).frozen) ledger.enqueues.shift();
        if (ledger.puts.size === 0 && ledger.enqueues.length === 0) this.ledgers.delete(session);
      }
    };
    let started: Promise<void>;
    try {
      started = late(prepare);
    } catch (err) {
      started = Promise.reject(err);
    }
    void started.then(
      () => undefined,
      (err: unknown) => {
        if (prepared) return; // each write heard of the failure through its own promise
        // Never started: nothing of the batch was written.
        for (const h of batch) {
          h.frozen = true;
          if (h.cancelled) continue;
          const status = this.failed(err, h.session);
          h.resolve(status);
          if (h.carried !== null) for (const r of h.carried) r(status);
        }
      },
    ).then(() => this.settleBatch(issued, afterBatch, settled));
  }

  /** Resolves once every write made so far has been handed to the store and settled (before the store closes). */
  drained(): Promise<void> {
    if (!this.durable || (this.held.length === 0 && this.outstanding === 0)) return Promise.resolve();
    return new Promise((resolve) => {
      this.idleWaiters.push(resolve);
      if (this.outstanding === 0 && !this.flushScheduled) this.flush();
    });
  }

  /** One write handed to the store now; its status never rejects. */
  private issue(session: Session | null, op: (store: Store) => Promise<void>): Promise<WriteStatus> {
    let p: Promise<WriteStatus>;
    try {
      p = op(this.store).then(
        () => this.succeeded(),
        (err: unknown) => this.failed(err, session),
      );
    } catch (err) {
      p = Promise.resolve(this.failed(err, session));
    }
    return p;
  }

  /**
   * Adds something else an acknowledgement must wait for to the writes being collected, whatever
   * the store: a bus write in a cluster (the message is durable in another node's inbox) or the
   * other nodes confirming a subscription.
   */
  track(wait: Promise<WriteStatus>): void {
    this.collectOne(wait);
  }

  private succeeded(): WriteStatus {
    if (this.failingSince !== 0) this.recovered();
    return 'ok';
  }

  private failed(err: unknown, session: Session | null): WriteStatus {
    const full = isStoreError(err, 'ERR_STORE_WRITE') && (err as { diskFull?: boolean }).diskFull === true;
    this.failures++;
    if (session !== null) this.dirty.add(session);
    if (this.failingSince === 0) {
      this.failingSince = Date.now();
      const detail = (err as Error).message;
      this.log.error({ err: detail, diskFull: full }, 'store write failed: what cannot be made durable is refused (PUBACK/PUBREC 0x97 or 0x80, v3 clients disconnected) until writes succeed again; QoS 0 and reads go on');
      this.audit({ event: 'store', action: 'write-failed', decision: 'deny', reason: `store write failed: ${detail}`, detail: { diskFull: full } });
    }
    return full ? 'full' : 'failed';
  }

  private recovered(): void {
    const failedFor = Date.now() - this.failingSince;
    this.log.warn({ failedForMs: failedFor, failedWrites: this.failures }, 'store writes succeed again');
    this.audit({ event: 'store', action: 'write-recovered', decision: 'allow', reason: `store writes succeed again after ${failedFor} ms`, detail: { failedWrites: this.failures } });
    this.failingSince = 0;
    this.failures = 0;
    // Memory and disk may differ for the sessions whose writes failed: write them again, whole.
    const dirty = [...this.dirty];
    this.dirty.clear();
    for (const session of dirty) {
      if (!session.stored || !session.persistent) continue;
      const snapshot = session.toStored();
      void this.write(session, (s) => s.saveSession(snapshot), { kind: 'whole' });
    }
  }

  /** True while store writes fail. */
  get failing(): boolean {
    return this.failingSince !== 0;
  }

  /** A status that is already known (nothing to wait for). */
  static readonly ok = OK;
}

function worst(statuses: WriteStatus[]): WriteStatus {
  if (statuses.includes('full')) return 'full';
  if (statuses.includes('failed')) return 'failed';
  return 'ok';
}
