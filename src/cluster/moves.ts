/**
 * A session moves between nodes: the takeover protocol. A client id (under one identity) is one
 * session in the whole cluster; a CONNECT on node B for a session that partition A holds takes it
 * over as a CONNECT on A itself would:
 *
 *   B: claim (script)        → the session is A's
 *   B → A  TAKEOVER          A ends the connection (0x8E), settles the will; clean start ends the session
 *   A → B  SUBS              its subscriptions (A still delivers to it, offline)
 *   B: arriving copy         B routes to a copy of it, and the other nodes confirm they know B's new interest
 *   B → A  COMMIT            A lets the session go: its state is in the store; RELEASED carries the
 *   A → B  RELEASED          vector of the last message A applied from each node
 *   B: arrive                B loads the session and keeps, of what its copy collected, exactly
 *                            the messages A had not applied (newer than A's vector)
 *
 * So no message is lost or doubled in between: every publisher sent each message for the session
 * to A (until A let it go) or to B (once it knew B's interest), and the vector splits the two
 * streams at the same point for every publisher. The ownership record moves in the same Redis
 * step as RELEASED is written. A CONNECT waits for all of it up to `cluster.moveTimeoutMs`; the
 * move itself finishes even if the client gave up.
 */
import { randomUUID } from 'node:crypto';
import type { ArrivingSession, ClaimResult, ClusterHost, Departing } from '../broker/cluster-port.ts';
import type { Message } from '../broker/message.ts';
import type { ClusterConfig } from '../config/cluster-schema.ts';
import type { Logger } from '../log.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';
import type { Store, StoredSession } from '../store/types.ts';
import { keyDigest, type Names } from './names.ts';
import type { OfflinePartitions } from './offline.ts';
import type { Outbox } from './outbox.ts';
import type { RedisClient } from './redis.ts';
import { runScript } from './scripts.ts';
import { encodeControl, fromJson, toJson, type Control, type JsonValue } from './wire.ts';

export interface MovesContext {
  readonly log: Logger;
  readonly config: ClusterConfig;
  readonly names: Names;
  readonly cmd: RedisClient;
  readonly outbox: Outbox;
  readonly offline: OfflinePartitions;
  readonly nodeId: string;
  home(): string;
  shared(): boolean;
  store(): Store;
  host(): ClusterHost;
  /** The last stamp applied in a partition, per node run (the split point of a move). */
  vector(p: string): Record<string, number>;
  hostedHere(p: string): boolean;
  /** Makes this node host a partition whose node is gone; false when it cannot (another store). */
  adopt(p: string): Promise<boolean>;
}

type Outcome = 'done' | 'redirect' | 'gone';

interface Move {
  id: string;
  key: string;
  from: string;
  clean: boolean;
  settle: (o: Outcome) => void;
  done: Promise<Outcome>;
  prepared: boolean;
  at: number;
}

interface Departure {
  id: string;
  replyTo: string;
  at: number;
  /** COMMIT came: the session is on its way out (released, its ownership record moving). */
  committed: boolean;
  /** Resolves once it has left (ownership moved) or the departure was given up. */
  ended: Promise<void>;
  end: () => void;
}

const MAX_ATTEMPTS = 5;

export class Moves {
  /** Moves this node asked for, by id. */
  private readonly moves = new Map<string, Move>();
  /**
   * Sessions leaving a partition hosted here, by partition and key: from TAKEOVER until the
   * ownership record has moved (or the departure is given up). Meanwhile a CONNECT here for the
   * session waits (claimLocked), then takes it over from where it went.
   */
  private readonly departing = new Map<string, Departure>();
  /** Claims in progress here, by key: one at a time per key. */
  private readonly locks = new Map<string, Promise<unknown>>();
  /** Takeovers of this node's own sessions that wait for a claim here of the same key. */
  private readonly deferred = new Map<string, (() => void)[]>();

  constructor(private readonly ctx: MovesContext) {}

  /** Keys being claimed here or leaving the home partition. */
  busy(key: string): boolean {
    return this.locks.has(key) || this.departing.has(`${this.ctx.home()}\u0000${key}`);
  }

  // ── requester side ─────────────────────────────────────────────────────────

  claim(key: string, clean: boolean, heldHere: boolean): Promise<ClaimResult> | null {
    if (heldHere && !this.busy(key)) return null; // this node's already: attached at once, as on one node
    const previous = this.locks.get(key) ?? Promise.resolve();
    const run = previous.then(() => this.claimLocked(key, clean));
    const lock = run.catch(() => undefined);
    this.locks.set(key, lock);
    void lock.then(() => {
      if (this.locks.get(key) === lock) this.locks.delete(key);
      // A takeover of this key that waited for the claim: after the attach that follows it.
      const waiting = this.deferred.get(key);
      if (waiting !== undefined && !this.locks.has(key)) {
        this.deferred.delete(key);
        setImmediate(() => waiting.forEach((w) => w()));
      }
    });
    return run.catch((err: unknown) => {
      this.ctx.log.error({ err: (err as Error).message }, 'cluster: claiming a session failed');
      return { ok: false, reason: ReasonCode.ServerUnavailable, detail: 'the cluster could not be asked who holds this session (Redis unreachable)' };
    });
  }

  private async claimLocked(key: string, clean: boolean): Promise<ClaimResult> {
    const { ctx } = this;
    const digest = keyDigest(key);
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const home = ctx.home();
      const leaving = this.departing.get(`${home}\u0000${key}`);
      if (leaving !== undefined) {
        // The session is moving to another node: the ownership record still names this partition
        // until it has left, so the claim script would answer 'mine' and this CONNECT would attach
        // here to a session that is about to go (both connections live, this one fed nothing).
        // Once it has left, it is taken over from where it went, as a second CONNECT would.
        if (!(await settledWithin(leaving.ended, ctx.config.moveTimeoutMs))) {
          return { ok: false, reason: ReasonCode.ServerUnavailable, detail: `the session is still moving to another node (cluster.moveTimeoutMs ${ctx.config.moveTimeoutMs} ms); try again` };
        }
        continue;
      }
      if (ctx.host().holds(key)) return OK;
      const r = (await runScript(ctx.cmd, 'claim', [ctx.names.owner(digest), ctx.names.owned(home)], [digest, key, home, ctx.names.prefix])) as string[];
      const [verdict, owner, alive] = r;
      if (verdict === 'mine' || verdict === 'free' || owner === home) {
        if (!clean && !ctx.host().holds(key) && ctx.shared()) {
          // A session in the store that no live partition holds (its owner record was lost): resumed.
          const stored = await ctx.store().getSession(key);
          if (stored !== undefined) ctx.host().adoptStored(stored);
        }
        return OK;
      }
      const from = owner as string;
      if (alive !== '1' && !ctx.hostedHere(from)) {
        // The node holding it is gone: its partition is adopted (here, or by whoever gets there first).
        if (!(await ctx.adopt(from))) {
          return { ok: false, reason: ReasonCode.ServerUnavailable, detail: 'the node that holds this session is down and its sessions cannot be moved (no shared store); try again when it is back' };
        }
      }
      const outcome = await this.request(key, clean, from);
      if (outcome === 'done') return OK;
      if (outcome === 'gone') {
        return { ok: false, reason: ReasonCode.ServerUnavailable, detail: `the session is still moving from another node (cluster.moveTimeoutMs ${ctx.config.moveTimeoutMs} ms); try again` };
      }
      await new Promise((r2) => setTimeout(r2, 20 * (attempt + 1)));
    }
    return { ok: false, reason: ReasonCode.ServerBusy, detail: 'the session kept moving between nodes; try again' };
  }

  /** Asks partition `from` for the session; resolves with how it ended, or 'gone' at the deadline (the move goes on). */
  private request(key: string, clean: boolean, from: string): Promise<Outcome> {
    const id = randomUUID();
    let settle!: (o: Outcome) => void;
    const done = new Promise<Outcome>((resolve) => (settle = resolve));
    const move: Move = { id, key, from, clean, settle, done, prepared: false, at: Date.now() };
    this.moves.set(id, move);
    this.send(from, { t: 'takeover', id, key, clean, replyTo: this.ctx.home() });
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<Outcome>((resolve) => {
      timer = setTimeout(() => resolve('gone'), this.ctx.config.moveTimeoutMs);
      timer.unref();
    });
    return Promise.race([done, deadline]).finally(() => clearTimeout(timer));
  }

  /** SUBS: the owner let the connection go and told us the session's subscriptions. */
  onSubs(c: Extract<Control, { t: 'subs' }>): void {
    const move = this.moves.get(c.id);
    if (move === undefined) {
      this.ctx.log.warn({ id: c.id }, 'cluster: SUBS for a move this node does not know: ignored (the other node keeps the session)');
      return;
    }
    const arriving = fromJson(c.session) as ArrivingSession;
    move.prepared = true;
    const known = this.ctx.host().prepareArrival(arriving);
    const commit = () => this.send(move.from, { t: 'commit', id: move.id, key: move.key });
    if (known === null) return commit();
    // COMMIT once every node routes this session's messages here too (or after ackTimeoutMs).
    void known.then(commit, commit);
  }

  /** RELEASED: the session is this node's now. */
  onReleased(c: Extract<Control, { t: 'released' }>): Promise<unknown> {
    const move = this.moves.get(c.id);
    this.moves.delete(c.id);
    const host = this.ctx.host();
    const vector = c.vector;
    const keep = (m: Message) => m.stamp === undefined || m.stamp.seq > (vector[m.stamp.node] ?? 0);
    const snapshot = c.snapshot === null ? null : (fromJson(c.snapshot) as StoredSession);
    let work: Promise<unknown>;
    if (c.present) work = host.arrive(c.key, snapshot, keep);
    else {
      host.abandonArrival(c.key);
      work = Promise.resolve();
    }
    return work.finally(() => move?.settle('done'));
  }

  onRedirect(c: Extract<Control, { t: 'redirect' }>): void {
    const move = this.moves.get(c.id);
    if (move === undefined) return;
    this.moves.delete(c.id);
    if (move.prepared) this.ctx.host().abandonArrival(move.key);
    move.settle('redirect');
  }

  // ── owner side ─────────────────────────────────────────────────────────────

  /** TAKEOVER in partition `p` (hosted here). */
  onTakeover(p: string, c: Extract<Control, { t: 'takeover' }>): void | Promise<unknown> {
    const slot = `${p}\u0000${c.key}`;
    const dep = this.departing.get(slot);
    if (dep !== undefined) {
      if (dep.id !== c.id) this.send(c.replyTo, { t: 'redirect', id: c.id, key: c.key }); // it is leaving for another node: ask again there
      return;
    }
    const home = p === this.ctx.home();
    if (home && this.locks.has(c.key)) {
      // A CONNECT here is claiming this session right now: the takeover follows its attach, as a second CONNECT would.
      const list = this.deferred.get(c.key) ?? [];
      list.push(() => void this.onTakeover(p, c));
      this.deferred.set(c.key, list);
      return;
    }
    const departed = home ? this.ctx.host().depart(c.key, c.clean) : this.ctx.offline.depart(p, c.key, c.clean);
    const next = (d: Departing): Promise<unknown> | void => {
      let end!: () => void;
      const ended = new Promise<void>((resolve) => (end = resolve));
      const dep: Departure = { id: c.id, replyTo: c.replyTo, at: Date.now(), committed: !d.present, ended, end };
      this.departing.set(slot, dep);
      // Nothing moves (a clean start ended it, or there was none): the key is the requester's once its record has moved.
      if (!d.present) return this.release(p, c.key, c.id, c.replyTo, null).finally(() => this.departed(slot, dep));
      this.send(c.replyTo, { t: 'subs', id: c.id, key: c.key, session: toJson(d.session) });
    };
    return departed instanceof Promise ? departed.then(next) : next(departed);
  }

  /** COMMIT in partition `p`: the session leaves. */
  onCommit(p: string, c: Extract<Control, { t: 'commit' }>): Promise<unknown> | void {
    const slot = `${p}\u0000${c.key}`;
    const dep = this.departing.get(slot);
    if (dep === undefined || dep.id !== c.id || dep.committed) return;
    // Still departing until the ownership record has moved: a CONNECT here meanwhile waits, and a
    // TAKEOVER from a third node is redirected (the session is not this partition's to give).
    dep.committed = true;
    const vector = this.ctx.vector(p); // now, before anything else in this inbox is applied
    const leaving = p === this.ctx.home() ? this.ctx.host().release(c.key) : this.ctx.offline.release(p, c.key);
    return leaving.then((stored) => this.release(p, c.key, c.id, dep.replyTo, stored, vector)).finally(() => this.departed(slot, dep));
  }

  /** A departure is over: the session left (its record moved), or it never will. */
  private departed(slot: string, dep: Departure): void {
    if (this.departing.get(slot) === dep) this.departing.delete(slot);
    dep.end();
  }

  /**
   * Moves the ownership record to `to` and writes RELEASED into its inbox, in one Redis step. The
   * session's state travels in the frame only when the new node cannot read it from the store.
   */
  private async release(p: string, key: string, id: string, to: string, stored: StoredSession | null, vector: Record<string, number> = {}): Promise<void> {
    const { ctx } = this;
    const local = ctx.hostedHere(to);
    const needSnapshot = stored !== null && (stored.expiryInterval === 0 || (!ctx.shared() && !local));
    const body = encodeControl({ t: 'released', id, key, present: stored !== null, vector, snapshot: needSnapshot ? toJson(stored) : null });
    const target = ctx.names.inbox(to);
    const digest = keyDigest(key);
    const frame = ctx.outbox.frame(target, [body]);
    await runScript(ctx.cmd, 'release', [ctx.names.owner(digest), ctx.names.owned(p), ctx.names.owned(to), target], [digest, key, p, to, frame]);
    // With a store per node, the session now lives in the new node's store.
    if (stored !== null && stored.expiryInterval > 0 && !ctx.shared() && !local) await ctx.store().deleteSession(key);
  }

  /** Departures never committed (the requester went away): the session stays here. */
  sweep(now: number): void {
    const limit = this.ctx.config.moveTimeoutMs * 2;
    for (const [slot, dep] of this.departing) {
      if (!dep.committed && now - dep.at > limit) this.departed(slot, dep);
    }
    // Moves whose other side never answered (it died before SUBS): forgotten; an arriving copy goes.
    for (const [id, move] of this.moves) {
      if (now - move.at <= limit * 5) continue;
      this.moves.delete(id);
      if (move.prepared) this.ctx.host().abandonArrival(move.key);
      move.settle('gone');
    }
  }

  private send(partition: string, c: Control): void {
    this.ctx.outbox.send(partition, encodeControl(c), false);
  }
}

const OK: ClaimResult = { ok: true };

/** Whether `p` settles within `ms`. */
function settledWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
    timer.unref();
  });
  return Promise.race([p.then(() => true), late]).finally(() => clearTimeout(timer));
}

/** For JSON messages: a session as SUBS describes it. */
export type SubsSession = JsonValue;
