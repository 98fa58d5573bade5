/**
 * A cluster node: this process as one node of a cluster over Redis (docs/cluster.md). It
 * implements the broker's {@link ClusterRuntime} and ties the rooms of src/cluster together:
 *
 * - leases: the node renews `lease:<node id>`; a node whose lease lapsed is dead;
 * - partitions: this node's own (its sessions, in the broker) and those it adopted from dead
 *   nodes (offline sessions, offline.ts), each with an inbox stream it reads (inbox.ts);
 * - interest: what every other partition subscribes to, from their snapshots and the broadcast
 *   stream, kept in the broker's router beside its own subscriptions (one walk per publish); a
 *   publish goes only to partitions it matches (outbox.ts);
 * - moves: the takeover protocol (moves.ts);
 * - barriers: a SUBACK, a retained PUBACK or a move waits until every live node has applied
 *   the broadcast entry it depends on (or `ackTimeoutMs`);
 * - retained messages: a node with a store of its own that starts takes them from a live node.
 */
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import type { AuditEvent } from '../audit/types.ts';
import type { ClaimResult, ClusterHost, ClusterRuntime, Forwarded, LocalShare, RemoteMatch, RemotePartitionRef } from '../broker/cluster-port.ts';
import type { Message } from '../broker/message.ts';
import { messageSize } from '../broker/message.ts';
import type { FlowSource, WriteStatus } from '../broker/ports.ts';
import type { ClusterConfig } from '../config/cluster-schema.ts';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import type { Store, StoreOpenReport, StoredSession } from '../store/types.ts';
import { sessionKey } from '../store/types.ts';
import { ClusterError } from './errors.ts';
import type { Frame, FrameProblem } from './frame.ts';
import { RemotePublishers } from './flow.ts';
import { compareIds, Inbox } from './inbox.ts';
import { loadClusterKeys, type ClusterKey } from './keys.ts';
import { Moves } from './moves.ts';
import { keyDigest, Names, nodeOfRun } from './names.ts';
import { OfflinePartitions } from './offline.ts';
import { CONTROL_MAXLEN, Outbox } from './outbox.ts';
import { createRedisClient, redisReady, type RedisClient } from './redis.ts';
import { defineScripts, runScript } from './scripts.ts';
import { isShare, ShareIndex } from './shares.ts';
import type { ClusterStatus } from './status.ts';
import { BodyReader, encodeControl, fromJson, publishHeader, PublishWire, toJson, type Control, type JsonValue } from './wire.ts';

export interface ClusterNodeOptions {
  cluster: ClusterConfig;
  limits: () => Config['limits'];
  log: Logger;
  /** Records cluster events (a refused frame, an adoption, a lost partition) in the audit log. */
  audit: (event: AuditEvent) => void;
  /** Forces the store to be treated as shared by all nodes (embedding; a Redis store is recognised by itself). */
  sharedStore?: boolean;
}

/** What other parts of the broker (reloads, bans, failed logins, rate limits, $SYS) exchange over the bus (sync.ts). */
export interface ClusterExtension {
  onControl(c: Control, sender: string): void | Promise<unknown>;
  onReply(c: Control, sender: string): void;
}

export type { ClusterStatus } from './status.ts';

interface PartitionInfo {
  host: string;
  origin: string;
  alive: boolean;
}

interface Barrier {
  expect: Set<string>;
  resolve: () => void;
}

const OK: Promise<WriteStatus> = Promise.resolve('ok');
const NOTHING: Forwarded = { written: null, remoteGroups: null, partitions: 0 };

/**
 * How many partitions may pass one `$share` group copy on (see {@link ClusterNode.passShares}):
 * the count travels in the signed frame and only grows, so a copy ends after this many passes
 * even while the nodes' views of the interest disagree.
 */
const MAX_SHARE_PASSES = 3;
/** The longest wait between two tries of a pass that Redis did not take (over maxPendingBytes, or unreachable). */
const PASS_RETRY_MAX_MS = 500;

/**
 * The publisher of a group copy passed on by another node, as flow control here sees it. The
 * node that passed it signed it, so the publisher's node is not known here and nothing is held
 * (hold and release do nothing). But the copy was acknowledged to its publisher and is on the
 * bus, like what a publisher on another node sent before a hold reached it: a connected member
 * keeps it beyond its queue limits within the node's in-transit allowance (Delivery.deliver),
 * instead of refusing it at the limit (docs/cluster.md, "`$share` groups across nodes").
 */
const PASSED_ON: FlowSource = { state: 'connected', remote: true, holdForFlow: () => undefined, releaseFlow: () => undefined };

export class ClusterNode implements ClusterRuntime {
  readonly nodeId: string;
  readonly run: string;
  readonly names: Names;
  private readonly config: ClusterConfig;
  private readonly log: Logger;
  private keys: ClusterKey[];
  private keyMap: Map<string, Buffer>;
  readonly cmd: RedisClient;
  private readonly reader: RedisClient;
  readonly outbox: Outbox;
  private readonly inbox: Inbox;
  readonly offline: OfflinePartitions;
  private readonly moves: Moves;
  /** Publishers on other nodes that subscribers here hold (cross-node flow control). */
  private readonly flow = new RemotePublishers((run, c) => this.outbox.send(this.homeOfRun(run), encodeControl(c), false));
  private homeId: string;
  private homeGeneration = 0;
  private hostRef: ClusterHost | null = null;
  private storeRef: Store | null = null;
  private shared = false;
  private seq = 0;
  private controlStart = '0-0';
  /** Per hosted partition: the last stamp applied, per node run. */
  private readonly applied = new Map<string, Map<string, number>>();
  private readonly partitionsKnown = new Map<string, PartitionInfo>();
  private readonly liveRuns = new Set<string>();
  private readonly barriers = new Map<string, Barrier>();
  private readonly adopting = new Map<string, Promise<boolean>>();
  private readonly shareTurns = new Map<string, number>();
  /** The `$share` groups this node's sessions are members of (from {@link interest}: exactly the router's groups here). */
  private readonly ownShares = new Set<string>();
  /** The other partitions' interest as the router keeps it, and which of them have members of each group. */
  private shareIndex: ShareIndex | null = null;
  /** Group copies passed on to another partition, and those no partition with members could take. */
  private readonly shareStats = { passed: 0, dropped: 0 };
  /**
   * Bytes of group messages that ended sessions handed on ({@link passShared}) waiting for Redis
   * to take them: nothing else holds them (the sessions are gone, their quotas given back), so they
   * are bounded by `cluster.maxPendingBytes`; beyond it a message is dropped and counted.
   */
  private passWaitingBytes = 0;
  private passDropLoggedAt = 0;
  /** Sessions of this node's earlier runs, from its own store (a store per node), waiting for their partitions. */
  private localSessions: Map<string, StoredSession> | null = null;
  private timers: NodeJS.Timeout[] = [];
  private running = false;
  private stopping = false;
  private redisUp = true;
  private redisSince = Date.now();
  private leaseRenewedAt = 0;
  /** Interest that could not be announced (Redis down): announced whole when it is back. */
  private interestDirty = false;
  private fencing = false;
  private received = 0;
  /** Reads the bodies of received frames in place (one for the node: no object per body). */
  private readonly bodyReader = new BodyReader();
  /** Writes each forwarded publish into the outbox's batches (set per message: the outbox writes it at once). */
  private readonly wire = new PublishWire();
  private readonly plainForwarded: Forwarded & { remoteGroups: null } = { written: null, remoteGroups: null, partitions: 0 };
  private refusedFrames = 0;
  private refusedLoggedAt = 0;
  extension: ClusterExtension | null = null;
  /**
   * While this node (with a store of its own) takes the retained messages from a live node: the
   * topics set or cleared since it started reading the broadcast stream (newer than the
   * snapshot's), and the topics the snapshot held.
   */
  private retainedSync: { from: string; touched: Set<string>; seen: Set<string>; done: (complete: boolean) => void } | null = null;

  constructor(private readonly options: ClusterNodeOptions) {
    const config = (this.config = options.cluster);
    this.log = options.log.child({ node: config.nodeId });
    this.nodeId = config.nodeId;
    this.run = `${config.nodeId}~${Date.now().toString(36)}${randomBytes(3).toString('hex')}`;
    this.homeId = this.run;
    this.names = new Names(config.name);
    this.keys = loadClusterKeys(config.keyFile);
    this.keyMap = new Map(this.keys.map((k) => [k.id, k.key]));
    this.cmd = createRedisClient(config.redis, `portcullis:${this.run}`);
    this.reader = createRedisClient(config.redis, `portcullis:${this.run}:reader`, true);
    defineScripts(this.cmd);
    this.outbox = new Outbox(this.cmd, () => this.keys[0] as ClusterKey, this.run, this.names, () => this.homeId, config.maxPendingBytes, this.log);
    this.outbox.interestBody = (add, del) => (add.length + del.length === 0 ? null : encodeControl({ t: 'interest', p: this.homeId, add: [...add], del: [...del], ...(add.length > 0 ? { ackTo: this.homeId } : {}) }));
    this.inbox = new Inbox(this.reader, this.cmd, () => this.keyMap, { refused: (s, p, sender, id) => this.frameRefused(s, p, sender, id), health: (ok, err) => this.readerHealth(ok, err) }, this.log, this.names.control, config.maxClockSkewMs);
    const node = this;
    this.offline = new OfflinePartitions({
      log: this.log,
      limits: options.limits,
      store: () => this.store,
      host: () => this.host,
      interestGone: (p, filters) => void this.offlineInterestGone(p, filters),
      ended: (p, key) => void runScript(this.cmd, 'free', [this.names.owner(keyDigest(key)), this.names.owned(p)], [keyDigest(key), p]).catch(() => undefined),
      empty: (p) => void this.dropPartition(p),
    });
    this.moves = new Moves({
      log: this.log,
      config,
      names: this.names,
      cmd: this.cmd,
      outbox: this.outbox,
      offline: this.offline,
      nodeId: this.nodeId,
      home: () => this.homeId,
      shared: () => this.shared,
      store: () => this.store,
      host: () => this.host,
      vector: (p) => this.vector(p),
      hostedHere: (p) => node.hostedHere(p),
      adopt: (p) => this.adopt(p),
    });
  }

  private get host(): ClusterHost {
    if (this.hostRef === null) throw new Error('internal error: the cluster node has not started');
    return this.hostRef;
  }

  /**
   * What every other partition subscribes to, kept in the broker's router (one walk per publish
   * finds local subscribers and partitions elsewhere), through the index of `$share` group
   * members (shares.ts). This node's own interest is not in it.
   */
  private get table(): ShareIndex {
    return (this.shareIndex ??= new ShareIndex(this.host.remoteInterest));
  }

  private get store(): Store {
    if (this.storeRef === null) throw new Error('internal error: the cluster node has not started');
    return this.storeRef;
  }

  /** This node's own partition. */
  get home(): string {
    return this.homeId;
  }

  /** Re-reads the key file (a reload): a bad file keeps the keys in use. */
  reloadKeys(): { ok: boolean; detail: string } {
    try {
      this.keys = loadClusterKeys(this.config.keyFile);
      this.keyMap = new Map(this.keys.map((k) => [k.id, k.key]));
      return { ok: true, detail: `${this.keys.length} key(s), signing with '${this.keys[0]?.id}'` };
    } catch (err) {
      return { ok: false, detail: (err as Error).message };
    }
  }

  private hostedHere(p: string): boolean {
    return p === this.homeId || this.offline.hosts(p);
  }

  // ── lifecycle ──────────────────────────────────────────────────────────────

  async prepare(): Promise<void> {
    try {
      await Promise.all([this.cmd.connect(), this.reader.connect()]);
    } catch (err) {
      this.cmd.disconnect();
      this.reader.disconnect();
      throw new ClusterError('ERR_CLUSTER_REDIS', `cannot reach Redis (cluster.redis): ${(err as Error).message}`, { cause: err });
    }
    this.cmd.on('ready', () => this.commandsReady());
    this.cmd.on('end', () => undefined);
    this.cmd.on('error', () => undefined); // reported through health and failed writes, not per reconnect attempt
    this.reader.on('error', () => undefined);
    // The broadcast stream is read from here on: retained messages set after this point are
    // applied on top of what the store holds now (the store is read after this).
    const last = (await this.cmd.xrevrange(this.names.control, '+', '-', 'COUNT', 1)) as [string, string[]][];
    this.controlStart = last[0]?.[0] ?? '0-0';
  }

  async start(host: ClusterHost, store: Store, report: StoreOpenReport): Promise<void> {
    this.hostRef = host;
    this.storeRef = store;
    this.shared = this.options.sharedStore === true || report.type === 'redis';
    await this.register();
    await runScript(this.cmd, 'createPartition', [this.names.partition(this.homeId), this.names.partitions, this.names.hosted(this.run), this.names.inbox(this.homeId), this.names.interest(this.homeId)], [this.homeId, this.run, this.nodeId]);
    this.applied.set(this.homeId, new Map());
    void this.outbox.broadcast(encodeControl({ t: 'node', run: this.run, event: 'up' }));
    void this.outbox.broadcast(encodeControl({ t: 'partition', p: this.homeId, event: 'created', host: this.run }));
    await this.scanPartitions();
    for (const [p] of this.partitionsKnown) {
      if (p === this.homeId) continue;
      const filters = (await this.cmd.hkeys(this.names.interest(p))) as string[];
      this.table.replacePartition(p, filters);
    }
    this.inbox.add(this.names.control, this.controlStart, (f, id) => this.onControlFrame(f, id), false);
    this.inbox.add(this.names.inbox(this.homeId), '0-0', (f, id) => this.onPartitionFrame(this.homeId, f, id), true);
    this.inbox.start();
    this.running = true;
    if (!this.shared) {
      // A store of this node's own: the sessions in it belong to this node's earlier runs.
      this.localSessions = new Map((await store.loadSessions()).map((s) => [sessionKey(s.owner, s.clientId), s]));
    }
    await this.watch();
    if (this.localSessions !== null && this.localSessions.size > 0) {
      const left = this.localSessions.size;
      // Copies that another node holds now (moved while this one was down are not possible with its own store, but a crash mid-move is).
      for (const key of this.localSessions.keys()) void store.deleteSession(key).catch(() => undefined);
      this.log.warn({ sessions: left }, 'cluster: sessions in this node\'s store that no partition of it holds were deleted (they moved to another node)');
      this.localSessions.clear();
    }
    // With a store of its own, retained messages set or cleared while this node was away (or
    // before it first joined) are not in it: it takes them from a live node before it listens.
    if (!this.shared) await this.syncRetained();
    const lease = this.config.leaseMs;
    this.timers.push(setInterval(() => void this.renew(), Math.max(50, Math.floor(lease / 3))).unref());
    this.timers.push(setInterval(() => void this.watch(), Math.max(100, Math.floor(lease / 2))).unref());
    this.timers.push(setInterval(() => this.sweep(), 5000).unref());
    this.log.info({ run: this.run, partitions: this.partitionsKnown.size, sharedStore: this.shared }, 'cluster: joined');
  }

  async stop(): Promise<void> {
    if (!this.running) {
      this.cmd.disconnect();
      this.reader.disconnect();
      return;
    }
    this.running = false;
    this.stopping = true;
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    for (const b of this.barriers.values()) b.resolve();
    this.barriers.clear();
    // What this node wrote is sent; then its partitions go to the others, which adopt them at once.
    this.outbox.flush();
    await this.inbox.stop();
    const mine = [this.homeId, ...this.offline.ids];
    this.offline.close();
    try {
      for (const p of mine) {
        await runScript(this.cmd, 'freePartition', [this.names.partition(p), this.names.hosted(this.run)], [p, this.run]);
        await this.broadcastNow(encodeControl({ t: 'partition', p, event: 'freed' }));
      }
      await this.broadcastNow(encodeControl({ t: 'node', run: this.run, event: 'down' }));
      await this.cmd.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 1", 1, this.names.lease(this.nodeId), this.run);
      await this.cmd.hdel(this.names.nodes, this.nodeId);
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'cluster: could not hand the partitions over at stop (Redis unreachable): they are adopted when the lease runs out');
    }
    this.cmd.disconnect();
    this.reader.disconnect();
  }

  private async broadcastNow(body: Buffer): Promise<void> {
    const id = this.outbox.broadcast(body);
    this.outbox.flush();
    await id;
  }

  private async register(): Promise<void> {
    const info = JSON.stringify({ run: this.run, pid: process.pid, host: os.hostname(), started: new Date().toISOString() });
    const deadline = Date.now() + this.config.leaseMs + 3000;
    for (;;) {
      const r = (await runScript(this.cmd, 'register', [this.names.lease(this.nodeId), this.names.nodes], [this.run, this.config.leaseMs, this.nodeId, info])) as string[];
      if (r[0] === 'ok') break;
      if (Date.now() > deadline) {
        throw new ClusterError('ERR_CLUSTER_NODE', `cluster.nodeId '${this.nodeId}' is in use by a live node (${r[1]}): every node needs its own id`);
      }
      // The previous process of this node (killed) holds the lease until it runs out.
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    this.leaseRenewedAt = Date.now();
    this.liveRuns.add(this.run);
  }

  // ── leases, partitions, adoption ───────────────────────────────────────────

  private async renew(): Promise<void> {
    if (!this.running) return;
    let r: string[];
    try {
      r = (await runScript(this.cmd, 'renew', [this.names.lease(this.nodeId), this.names.hosted(this.run)], [this.run, this.config.leaseMs, this.names.prefix, this.homeId, ...this.offline.ids])) as string[];
    } catch {
      return; // Redis unreachable: the node goes on serving local traffic; the outage is reported by health
    }
    this.leaseRenewedAt = Date.now();
    if (r[0] === 'ok') return;
    if (r[0] === 'taken') {
      this.log.error({ holder: r[1] }, `cluster: another process runs as node '${this.nodeId}': this one gives up its sessions`);
      this.lost([this.homeId, ...this.offline.ids], 'another process took over this node id');
      return;
    }
    const lost = r.slice(1).filter((x) => x.startsWith('lost:')).map((x) => x.slice(5));
    const remade = r.slice(1).filter((x) => x.startsWith('new:')).map((x) => x.slice(4));
    if (lost.length > 0) this.lost(lost, 'this node was cut off from Redis for longer than cluster.leaseMs and another node took over its sessions');
    if (remade.length > 0) await this.remade(remade);
  }

  /**
   * Redis lost the records of partitions this node hosts (it restarted without its data): they
   * were made again; their sessions are claimed back and this node's interest announced whole.
   */
  private async remade(partitions: string[]): Promise<void> {
    this.log.error({ partitions }, 'cluster: Redis lost the records of this node\'s partitions (restarted without its data?): making them again; messages that were waiting in their inboxes are lost');
    this.options.audit({ event: 'cluster', action: 'partition-remade', decision: 'deny', reason: `Redis lost the records of partitions ${partitions.join(', ')}: made again`, detail: { partitions: partitions.join(',') } });
    for (const p of partitions) {
      const keys = p === this.homeId ? this.host.sessionKeys() : this.offline.keys(p);
      let taken = 0;
      for (let i = 0; i < keys.length; i += 500) {
        const args: string[] = [this.names.prefix, p];
        for (const k of keys.slice(i, i + 500)) args.push(keyDigest(k), k);
        taken += Number(await runScript(this.cmd, 'reown', [this.names.owned(p)], args).catch(() => 0));
      }
      if (taken > 0) this.log.warn({ partition: p, sessions: taken }, 'cluster: sessions claimed by another node while Redis had lost them: that node holds another copy');
      if (p !== this.homeId) {
        await this.cmd.hset(this.names.interest(p), ...this.offline.filters(p).flatMap((f) => [f, '1'])).catch(() => undefined);
      }
    }
    if (partitions.includes(this.homeId)) await this.announceInterest();
    await this.resync();
  }

  /** Reads every partition's interest again (after the broadcast stream lost entries this node had not read). */
  private async resync(): Promise<void> {
    try {
      await this.scanPartitions();
      for (const [p] of this.partitionsKnown) {
        if (p === this.homeId) continue;
        this.table.replacePartition(p, (await this.cmd.hkeys(this.names.interest(p))) as string[]);
      }
      this.log.warn('cluster: the interest of every partition was read again');
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'cluster: reading the interest again failed (tried at the next recovery)');
    }
  }

  /** Partitions another node adopted while this one was cut off: their sessions are that node's now. */
  private lost(partitions: string[], reason: string): void {
    this.options.audit({ event: 'cluster', action: 'partition-lost', decision: 'deny', reason: `${reason}: partitions ${partitions.join(', ')}`, detail: { partitions: partitions.join(',') } });
    this.log.error({ partitions }, `cluster: ${reason}`);
    for (const p of partitions) {
      void this.inbox.remove(this.names.inbox(p));
      this.applied.delete(p);
      if (p === this.homeId) {
        this.fencing = true;
        this.host.dropAll(reason);
        this.fencing = false;
        // A fresh partition for the clients that connect from now on.
        this.homeId = `${this.run}.${++this.homeGeneration}`;
        this.applied.set(this.homeId, new Map());
        void runScript(this.cmd, 'createPartition', [this.names.partition(this.homeId), this.names.partitions, this.names.hosted(this.run), this.names.inbox(this.homeId), this.names.interest(this.homeId)], [this.homeId, this.run, this.nodeId]).then(() => {
          this.inbox.add(this.names.inbox(this.homeId), '0-0', (f, id) => this.onPartitionFrame(this.homeId, f, id), true);
          void this.outbox.broadcast(encodeControl({ t: 'partition', p: this.homeId, event: 'created', host: this.run }));
        });
      } else this.offline.drop(p);
    }
  }

  /** Reads every partition's host and whether it is alive; adopts those whose node is gone. */
  private async watch(): Promise<void> {
    if (!this.running && this.hostRef === null) return;
    try {
      await this.scanPartitions();
    } catch {
      return;
    }
    const adoptions: Promise<boolean>[] = [];
    for (const [p, info] of this.partitionsKnown) {
      if (info.alive || this.hostedHere(p)) continue;
      if (!this.shared && info.origin !== this.nodeId) continue;
      // Just back from an outage: the others renew their leases now; do not take theirs meanwhile.
      if (this.redisUp && Date.now() - this.redisSince < this.config.leaseMs && info.origin !== this.nodeId) continue;
      adoptions.push(this.adopt(p).catch((err: unknown) => (this.log.warn({ partition: p, err: (err as Error).message }, 'cluster: adopting a partition failed (tried again)'), false)));
    }
    await Promise.all(adoptions);
  }

  private async scanPartitions(): Promise<void> {
    const flat = (await runScript(this.cmd, 'partitions', [this.names.partitions], [this.names.prefix])) as string[];
    const seen = new Set<string>();
    const live = new Set<string>([this.run]);
    for (let i = 0; i + 3 < flat.length; i += 4) {
      const p = flat[i] as string;
      const info = { host: flat[i + 1] as string, origin: flat[i + 2] as string, alive: flat[i + 3] === '1' };
      seen.add(p);
      this.partitionsKnown.set(p, info);
      if (info.alive) live.add(info.host);
    }
    for (const p of [...this.partitionsKnown.keys()]) {
      if (!seen.has(p)) {
        this.partitionsKnown.delete(p);
        if (!this.hostedHere(p)) this.table.dropPartition(p);
      }
    }
    for (const r of [...this.liveRuns]) if (!live.has(r)) this.runGone(r);
    for (const r of live) this.liveRuns.add(r);
  }

  /**
   * Makes this node the host of partition `p`, whose node is gone. True when a live node hosts it
   * now (this one or another that got there first), or it no longer exists.
   */
  adopt(p: string): Promise<boolean> {
    const running = this.adopting.get(p);
    if (running !== undefined) return running;
    const work = this.adoptNow(p).finally(() => this.adopting.delete(p));
    this.adopting.set(p, work);
    return work;
  }

  private async adoptNow(p: string): Promise<boolean> {
    if (this.hostedHere(p)) return true;
    const r = (await runScript(this.cmd, 'adopt', [this.names.partition(p), this.names.hosted(this.run)], [p, this.run, this.names.prefix, this.shared ? '' : this.nodeId])) as string[];
    if (r[0] === 'alive' || r[0] === 'gone') return true;
    if (r[0] === 'foreign') return false;
    const owned = (await this.cmd.hgetall(this.names.owned(p))) as Record<string, string>;
    const stored: StoredSession[] = [];
    for (const key of Object.values(owned)) {
      let s: StoredSession | undefined;
      if (this.localSessions !== null) {
        s = this.localSessions.get(key);
        this.localSessions.delete(key);
      } else s = await this.store.getSession(key);
      if (s !== undefined) stored.push(s);
    }
    this.applied.set(p, new Map());
    this.offline.adopt(p, stored);
    this.inbox.add(this.names.inbox(p), '0-0', (f, id) => this.onPartitionFrame(p, f, id), true);
    this.partitionsKnown.set(p, { host: this.run, origin: this.partitionsKnown.get(p)?.origin ?? '', alive: true });
    void this.outbox.broadcast(encodeControl({ t: 'partition', p, event: 'adopted', host: this.run }));
    this.options.audit({ event: 'cluster', action: 'adopt', decision: 'allow', reason: `adopted partition ${p} of a node that is gone (${r[1] ?? 'unknown'}): ${stored.length} sessions`, detail: { partition: p, previousHost: r[1] ?? '', sessions: stored.length } });
    return true;
  }

  /** An adopted partition has no session left: it ends. */
  private async dropPartition(p: string): Promise<void> {
    if (!this.offline.hosts(p) || this.stopping) return;
    const r = await runScript(this.cmd, 'dropPartition', [this.names.partition(p), this.names.partitions, this.names.hosted(this.run), this.names.inbox(p), this.names.interest(p), this.names.owned(p)], [p, this.run]).catch(() => 'error');
    if (r !== 'ok') return;
    await this.inbox.remove(this.names.inbox(p));
    this.offline.drop(p);
    this.applied.delete(p);
    this.table.dropPartition(p);
    this.partitionsKnown.delete(p);
    void this.outbox.broadcast(encodeControl({ t: 'partition', p, event: 'gone' }));
    this.log.info({ partition: p }, 'cluster: an adopted partition has no session left: it ends');
  }

  private async offlineInterestGone(p: string, filters: string[]): Promise<void> {
    try {
      await this.cmd.hdel(this.names.interest(p), ...filters);
    } catch {
      return;
    }
    void this.outbox.broadcast(encodeControl({ t: 'interest', p, add: [], del: filters }));
  }

  private runGone(run: string): void {
    this.liveRuns.delete(run);
    this.flow.gone(run);
    this.hostRef?.flowHolderGone(run);
    for (const [id, b] of this.barriers) {
      b.expect.delete(run);
      if (b.expect.size === 0) {
        this.barriers.delete(id);
        b.resolve();
      }
    }
  }

  private sweep(): void {
    const now = Date.now();
    this.moves.sweep(now);
    this.flow.sweep();
    this.inbox.replay.sweep(now, this.config.maxClockSkewMs * 2);
  }

  // ── Redis health ───────────────────────────────────────────────────────────

  private readerHealth(ok: boolean, err?: Error): void {
    if (ok === this.redisUp) return;
    this.redisUp = ok;
    this.redisSince = Date.now();
    if (ok) {
      void this.checkControlGap();
      this.log.warn('cluster: Redis answers again: cross-node delivery resumes');
      this.options.audit({ event: 'cluster', action: 'redis-up', decision: 'allow', reason: 'Redis answers again: cross-node delivery resumes' });
    } else {
      this.log.error({ err: err?.message }, 'cluster: Redis does not answer: local traffic goes on; QoS 1/2 messages for other nodes are refused, QoS 0 dropped, until it is back');
      this.options.audit({ event: 'cluster', action: 'redis-down', decision: 'deny', reason: `Redis does not answer (${err?.message ?? 'unknown'}): cross-node delivery stopped` });
    }
  }

  /** After an outage: if the broadcast stream was trimmed past what this node read (or lost), read the snapshots again. */
  private async checkControlGap(): Promise<void> {
    const at = this.inbox.position(this.names.control) ?? '0-0';
    try {
      const first = (await this.cmd.xrange(this.names.control, '-', '+', 'COUNT', 1)) as [string, string[]][];
      const firstId = first[0]?.[0];
      const lastGenerated = ((await this.cmd.xrevrange(this.names.control, '+', '-', 'COUNT', 1)) as [string, string[]][])[0]?.[0];
      const lost = (firstId !== undefined && compareIds(firstId, at) > 0 && at !== '0-0') || (lastGenerated !== undefined && compareIds(lastGenerated, at) < 0) || (lastGenerated === undefined && at !== '0-0');
      if (lost) await this.resync();
    } catch {
      // checked again at the next recovery
    }
  }

  private commandsReady(): void {
    if (!this.running) return;
    void this.renew();
    if (this.interestDirty) void this.announceInterest();
  }

  /** Announces this node's whole interest (after an outage lost some of its changes). */
  private async announceInterest(): Promise<void> {
    this.interestDirty = false;
    const filters = this.host.interestSnapshot();
    const frame = this.outbox.frame(this.names.control, [encodeControl({ t: 'interest', p: this.homeId, add: filters, del: [], full: true } as Control)]);
    try {
      await this.cmd.eval(
        "redis.call('DEL', KEYS[1]) for i = 2, #ARGV do redis.call('HSET', KEYS[1], ARGV[i], '1') end return redis.call('XADD', KEYS[2], 'MAXLEN', '~', '" + CONTROL_MAXLEN + "', '*', 'f', ARGV[1])",
        2,
        this.names.interest(this.homeId),
        this.names.control,
        frame,
        ...filters,
      );
    } catch {
      this.interestDirty = true;
    }
  }

  /** Readiness and $SYS. */
  status(): ClusterStatus {
    return {
      nodeId: this.nodeId,
      run: this.run,
      redis: this.redisUp && redisReady(this.cmd) ? 'up' : 'down',
      since: this.redisSince,
      leaseCurrent: Date.now() - this.leaseRenewedAt < this.config.leaseMs,
      partitions: [this.homeId, ...this.offline.ids],
      liveNodes: this.liveRuns.size,
      offlineSessions: this.offline.sessionCount(),
      pendingBytes: this.outbox.pending,
      bus: { ...this.outbox.stats, received: this.received, refusedFrames: this.refusedFrames },
      shares: { ...this.shareStats },
      flow: { ...this.flow.stats, ...this.flowApplied() },
    };
  }

  private flowApplied(): { holdsApplied: number; holdsExpired: number; holdsRefused: number; held: number; inTransitBytes: number } {
    const s = this.hostRef?.flowStatus() ?? { applied: 0, expired: 0, refused: 0, held: 0, transitBytes: 0 };
    return { holdsApplied: s.applied, holdsExpired: s.expired, holdsRefused: s.refused, held: s.held, inTransitBytes: s.transitBytes };
  }

  /**
   * The partition a node run reads as its own (its inbox is where a message for the node itself
   * goes): named after the run, `<run>` or, after it lost one, `<run>.<n>` with the highest n.
   */
  private homeOfRun(run: string): string {
    if (run === this.run) return this.homeId;
    let best = run;
    let gen = 0;
    for (const [p, info] of this.partitionsKnown) {
      if (info.host !== run || !p.startsWith(`${run}.`)) continue;
      const n = Number(p.slice(run.length + 1));
      if (n > gen) {
        gen = n;
        best = p;
      }
    }
    return best;
  }

  private frameRefused(stream: string, problem: FrameProblem | 'replay' | 'clock' | 'malformed-body', sender: string | undefined, entryId: string): void {
    this.refusedFrames++;
    const now = Date.now();
    if (now - this.refusedLoggedAt < 5000) return;
    this.refusedLoggedAt = now;
    const reason = `cluster: a bus message was refused (${problem}) in ${stream}: ${problem === 'bad-signature' || problem === 'unknown-key' ? 'not signed with the cluster key: someone with write access to Redis, or a node with another key file' : problem === 'replay' ? 'a copy of a message already applied' : problem === 'clock' ? 'its timestamp is far from when Redis stored it (a copy written later, or clocks out of step by more than cluster.maxClockSkewMs)' : 'it could not be read'}`;
    this.log.error({ stream, problem, sender, entryId, refused: this.refusedFrames }, reason);
    this.options.audit({ event: 'cluster', action: 'frame-refused', decision: 'deny', reason, detail: { stream, problem, sender: sender ?? '', entryId, refusedSoFar: this.refusedFrames } });
  }

  // ── what arrives ───────────────────────────────────────────────────────────

  private onControlFrame(frame: Frame, entryId: string): void | Promise<unknown> {
    const waits: Promise<unknown>[] = [];
    const reader = this.bodyReader;
    const { buf, spans } = frame;
    for (let i = 0; i < spans.length; i += 2) {
      if (reader.read(buf, spans[i] as number, spans[i + 1] as number, frame.sender)) continue;
      const c = reader.control as Control;
      switch (c.t) {
        case 'interest':
          if (c.p !== this.homeId) {
            if ((c as { full?: boolean }).full === true) this.table.replacePartition(c.p, c.add);
            else {
              for (const f of c.add) this.table.add(c.p, f);
              for (const f of c.del) this.table.remove(c.p, f);
            }
          }
          if (c.ackTo !== undefined && frame.sender !== this.run) this.ack(c.ackTo, entryId);
          break;
        case 'retain':
          if (this.retainedSync !== null) this.retainedSync.touched.add((fromJson(c.m) as Message).topic);
          // This node's own sets are applied again here, in the stream's order: set locally first,
          // then overwritten by another node's set that the stream holds before it, the topic
          // would otherwise keep the other one here while every other node keeps this one.
          this.host.applyRetained(fromJson(c.m) as Message, !this.shared);
          if (c.ackTo !== undefined && frame.sender !== this.run) this.ack(c.ackTo, entryId);
          break;
        case 'partition':
          if (c.event === 'gone') {
            if (!this.hostedHere(c.p)) this.table.dropPartition(c.p);
            this.partitionsKnown.delete(c.p);
          } else if (c.event === 'freed' && !this.stopping) setTimeout(() => void this.watch(), Math.floor(Math.random() * 50)).unref();
          else if (c.host !== undefined) {
            this.partitionsKnown.set(c.p, { host: c.host, origin: this.partitionsKnown.get(c.p)?.origin ?? nodeOfRun(c.p), alive: true });
            if (c.event === 'created' && c.p !== this.homeId && !this.hostedHere(c.p)) this.table.dropPartition(c.p); // made just now: its interest follows in the stream
          }
          break;
        case 'node':
          if (c.event === 'up') this.liveRuns.add(c.run);
          else {
            this.runGone(c.run);
            if (this.retainedSync?.from === c.run) this.retainedSync.done(false);
          }
          break;
        case 'retained-wanted':
          // Not awaited: the snapshot goes out paced by Redis while this stream is read on.
          if (c.ask === this.run) void this.sendRetained(c.replyTo);
          break;
        default: {
          const r = this.extension?.onControl(c, frame.sender);
          if (r instanceof Promise) waits.push(r);
        }
      }
    }
    return waits.length > 0 ? Promise.all(waits) : undefined;
  }

  private onPartitionFrame(p: string, frame: Frame, entryId: string): void | Promise<unknown> {
    void entryId;
    const waits: Promise<unknown>[] = [];
    const vector = this.applied.get(p);
    const home = p === this.homeId;
    let publishers: ReturnType<RemotePublishers['ofRun']> | null = null;
    const reader = this.bodyReader;
    const { buf, spans } = frame;
    // The last stamp applied per node goes into the vector once per run of messages from one
    // node (not per message), and always before a control body or the end of the frame: what
    // reads the vector (a move, moves.ts) runs from a control body or later.
    let stampNode: string | null = null;
    let stampSeq = 0;
    // The publisher of the previous message (its origin string is kept by the reader: the same string for a repeated origin).
    let lastOrigin: string | undefined;
    let lastFrom: FlowSource | null = null;
    try {
      for (let i = 0; i < spans.length; i += 2) {
        if (reader.read(buf, spans[i] as number, spans[i + 1] as number, frame.sender)) {
          this.received++;
          const m = reader.message as Message;
          const plain = reader.plain;
          let groups = reader.groups;
          const passes = reader.passes;
          const stamp = m.stamp;
          if (stamp !== undefined && vector !== undefined) {
            if (stamp.node !== stampNode) {
              if (stampNode !== null) applyStamp(vector, stampNode, stampSeq);
              stampNode = stamp.node;
              stampSeq = stamp.seq;
            } else if (stamp.seq > stampSeq) stampSeq = stamp.seq;
          }
          if (groups !== null) {
            // Group copies for groups this partition has no member of any more: passed on.
            const orphans = this.orphans(p, home, groups);
            if (orphans !== null) {
              const passed = this.passShares(p, m, orphans, passes, frame.sender);
              if (passed !== null) waits.push(passed);
              groups = orphans.length === groups.length ? null : groups.filter((g) => !orphans.includes(g));
              if (groups === null && !plain) continue;
            }
          }
          let w: Promise<WriteStatus> | null;
          if (home) {
            // The publisher is the client of session `origin` on the node that sent the frame (the
            // node it published on); a passed copy comes from another node, which cannot hold it,
            // and is kept within the in-transit allowance without a hold (PASSED_ON).
            let from: FlowSource | null = null;
            if (m.qos > 0 && passes > 0) from = PASSED_ON;
            else if (m.qos > 0 && m.origin !== undefined) {
              if (m.origin !== lastOrigin) {
                lastFrom = this.flow.of((publishers ??= this.flow.ofRun(frame.sender)), frame.sender, m.origin);
                lastOrigin = m.origin;
              }
              from = lastFrom;
            }
            w = this.host.deliverRemote(m, plain, groups, from);
          } else w = this.offline.apply(p, m, plain, groups);
          if (w !== null) waits.push(w);
          continue;
        }
        if (stampNode !== null && vector !== undefined) {
          applyStamp(vector, stampNode, stampSeq);
          stampNode = null;
        }
        const c = reader.control as Control;
        const r = this.onPartitionControl(p, c, frame.sender);
        if (r instanceof Promise) waits.push(r);
      }
    } finally {
      if (stampNode !== null && vector !== undefined) applyStamp(vector, stampNode, stampSeq);
    }
    return waits.length > 0 ? Promise.all(waits) : undefined;
  }

  private onPartitionControl(p: string, c: Control, sender: string): void | Promise<unknown> {
    const home = p === this.homeId;
    switch (c.t) {
      case 'takeover':
        return this.moves.onTakeover(p, c);
      case 'commit':
        return this.moves.onCommit(p, c);
      case 'subs':
        if (home) this.moves.onSubs(c);
        return;
      case 'released':
        if (home) return this.moves.onReleased(c);
        // A move the dead node of this partition had asked for: the session joins the partition here.
        if (c.present) {
          const s = c.snapshot === null ? this.store.getSession(c.key) : Promise.resolve(fromJson(c.snapshot) as StoredSession);
          return s.then((stored) => stored !== undefined && this.offline.arrived(p, stored));
        }
        return;
      case 'redirect':
        if (home) this.moves.onRedirect(c);
        return;
      case 'flow':
        // A hold from a node for a publisher of this node's own partition; nothing else can be held.
        if (home && typeof c.key === 'string' && typeof c.hold === 'boolean') this.host.flowHold(c.key, sender, c.hold);
        return;
      case 'ack':
        if (home) for (const id of c.ids) this.acked(id, sender);
        return;
      case 'retained-snapshot':
        if (home) this.retainedChunk(c.m, c.last, sender);
        return;
      default:
        if (home) this.extension?.onReply(c, sender);
    }
  }

  // ── retained messages for a node that joins ────────────────────────────────

  /**
   * Asks one live node for every retained message it holds and waits (up to a deadline) until
   * they are applied here: what the snapshot holds replaces what this node's store had, except
   * for topics set or cleared on the broadcast stream since this node started reading it (those
   * are newer); what this node had that the snapshot lacks was cleared meanwhile and goes.
   */
  private async syncRetained(): Promise<void> {
    const from = [...this.liveRuns].filter((r) => r !== this.run).sort()[0];
    if (from === undefined) return;
    let finish!: (complete: boolean) => void;
    const finished = new Promise<boolean>((resolve) => (finish = resolve));
    const sync = { from, touched: new Set<string>(), seen: new Set<string>(), done: (complete: boolean) => finish(complete) };
    this.retainedSync = sync;
    const wait = Math.max(5000, this.config.ackTimeoutMs * 3);
    const timer = setTimeout(() => finish(false), wait);
    timer.unref();
    const sent = await this.outbox.broadcast(encodeControl({ t: 'retained-wanted', replyTo: this.homeId, ask: from }));
    if (sent === null) finish(false);
    const complete = await finished;
    clearTimeout(timer);
    this.retainedSync = null;
    if (complete) this.log.info({ from: nodeOfRun(from), retained: sync.seen.size }, 'cluster: retained messages taken from a live node');
    else this.log.warn({ from: nodeOfRun(from), waitedMs: wait, received: sync.seen.size }, "cluster: the retained messages of the other nodes did not all arrive: this node has its store's and what is set from now on");
  }

  /** Sends every retained message held here to a node that joins, in chunks, each written before the next is made. */
  private async sendRetained(to: string): Promise<void> {
    const all = this.host.retainedSnapshot();
    const CHUNK_BYTES = 256 * 1024;
    let chunk: JsonValue[] = [];
    let bytes = 0;
    for (let i = 0; i <= all.length; i++) {
      const m = all[i];
      if (m !== undefined) {
        chunk.push(toJson({ topic: m.topic, payload: m.payload, qos: m.qos, retain: true, properties: m.properties, expiresAt: m.expiresAt, origin: m.origin }));
        bytes += 64 + m.topic.length + m.payload.length;
      }
      const last = i === all.length;
      if (!last && bytes < CHUNK_BYTES) continue;
      const status = (await this.outbox.send(to, encodeControl({ t: 'retained-snapshot', m: chunk, last }), true)) ?? 'failed';
      if (status !== 'ok') {
        this.log.warn({ to }, 'cluster: could not send the retained messages to a node that joins (it goes on with its own)');
        return;
      }
      chunk = [];
      bytes = 0;
    }
  }

  private retainedChunk(messages: JsonValue[], last: boolean, sender: string): void {
    const sync = this.retainedSync;
    if (sync === null || sender !== sync.from) return;
    for (const raw of messages) {
      const m = fromJson(raw) as Message;
      sync.seen.add(m.topic);
      if (!sync.touched.has(m.topic)) this.host.applyRetained(m, true);
    }
    if (!last) return;
    for (const held of this.host.retainedSnapshot()) {
      if (sync.seen.has(held.topic) || sync.touched.has(held.topic)) continue;
      this.host.applyRetained({ topic: held.topic, payload: Buffer.alloc(0), qos: 0, retain: true }, true);
    }
    sync.done(true);
  }

  // ── barriers ───────────────────────────────────────────────────────────────

  private ack(to: string, entryId: string): void {
    this.outbox.send(to, encodeControl({ t: 'ack', ids: [entryId] }), false);
  }

  private acked(id: string, run: string): void {
    const b = this.barriers.get(id);
    if (b === undefined) return;
    b.expect.delete(run);
    if (b.expect.size === 0) {
      this.barriers.delete(id);
      b.resolve();
    }
  }

  /**
   * Resolves once every live node has applied broadcast entry `id` (they acknowledge it), or
   * after `ackTimeoutMs` (a node that does not answer is late or dying; its lease decides).
   */
  private barrier(id: string): Promise<void> {
    return new Promise<void>((resolve) => {
      let settled = false;
      const timer = setTimeout(() => {
        if (settled) return;
        settled = true;
        const b = this.barriers.get(id);
        this.barriers.delete(id);
        this.log.warn({ waitingFor: b === undefined ? [] : [...b.expect], ackTimeoutMs: this.config.ackTimeoutMs }, 'cluster: nodes did not confirm a subscription or retained message within cluster.ackTimeoutMs: going on');
        resolve();
      }, this.config.ackTimeoutMs);
      timer.unref();
      const done = () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve();
      };
      // Every node that joined before this entry is known once the stream has been read up to it.
      void this.inbox.controlReached(id).then(() => {
        if (settled) return;
        const expect = new Set([...this.liveRuns].filter((r) => r !== this.run));
        if (expect.size === 0) return done();
        this.barriers.set(id, { expect, resolve: done });
      });
    });
  }

  private vector(p: string): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [node, seq] of this.applied.get(p) ?? []) out[node] = seq;
    if (p === this.homeId) out[this.run] = this.seq;
    return out;
  }

  // ── for the extension (sync.ts) ────────────────────────────────────────────

  /** Broadcasts a control message to every node; resolves with its entry id (null: not written). */
  broadcastControl(c: Control): Promise<string | null> {
    return this.outbox.broadcast(encodeControl(c));
  }

  /** Sends a control message to a partition's inbox, or a command-line client's reply stream (`cli:<id>`). */
  sendControl(to: string, c: Control): void {
    this.outbox.send(to, encodeControl(c), false);
  }

  /** The runs of the nodes alive now, this one included. */
  liveNodes(): string[] {
    return [...this.liveRuns];
  }

  get ackTimeoutMs(): number {
    return this.config.ackTimeoutMs;
  }

  get syncIntervalMs(): number {
    return this.config.syncIntervalMs;
  }

  /** Writes this node's statistics for the others and reads every node's (for the cluster totals in $SYS). */
  async exchangeStats(values: Record<string, number>): Promise<{ node: string; values: Record<string, number> }[] | null> {
    try {
      const now = Date.now();
      await this.cmd.hset(this.names.stats, this.nodeId, JSON.stringify({ at: now, run: this.run, values }));
      const all = (await this.cmd.hgetall(this.names.stats)) as Record<string, string>;
      const out: { node: string; values: Record<string, number> }[] = [];
      for (const [node, raw] of Object.entries(all)) {
        try {
          const v = JSON.parse(raw) as { at: number; run: string; values: Record<string, number> };
          if (this.liveRuns.has(v.run)) out.push({ node, values: v.values });
          else if (now - v.at > 10 * this.config.leaseMs) void this.cmd.hdel(this.names.stats, node);
        } catch {
          // a value another version wrote: skipped
        }
      }
      return out;
    } catch {
      return null;
    }
  }

  /** The node that publishes the cluster totals: the live node with the smallest id. */
  isLeader(): boolean {
    let least = this.nodeId;
    for (const r of this.liveRuns) {
      const n = nodeOfRun(r);
      if (n < least) least = n;
    }
    return least === this.nodeId;
  }

  // ── ClusterLink ────────────────────────────────────────────────────────────

  stamp(message: Message): void {
    if (message.stamp === undefined) message.stamp = { node: this.run, seq: ++this.seq };
  }

  forward(message: Message, shares: readonly LocalShare[], match: RemoteMatch): Forwarded {
    if (match.remoteGroups.length === 0) return match.remoteMatched.length === 0 ? NOTHING : this.forwardPlain(message, match.remoteMatched);
    const home = this.homeId;
    const targets = new Map<string, { plain: boolean; groups: string[] | null }>();
    for (const p of match.remoteMatched) if (p.id !== home) targets.set(p.id, { plain: true, groups: null });
    let remoteGroups: Set<string> | null = null;
    for (const { key, partitions } of match.remoteGroups) {
      const local = shares.some((s) => s.key === key);
      const pick = this.pickShare(key, partitions, local);
      if (pick === home) continue;
      let t = targets.get(pick);
      if (t === undefined) targets.set(pick, (t = { plain: false, groups: null }));
      (t.groups ??= []).push(key);
      if (local) (remoteGroups ??= new Set()).add(key);
    }
    if (targets.size === 0) return { written: null, remoteGroups, partitions: 0 };
    const wait = message.qos > 0;
    let written: Promise<WriteStatus> | null = null;
    let all: Promise<WriteStatus>[] | null = null;
    for (const [p, t] of targets) {
      // One writer for every send: the outbox writes the body into its batch at once.
      const w = this.outbox.send(p, this.wire.set(publishHeader(t.plain, t.groups), message, this.run), wait);
      if (w === null) continue;
      if (written === null) written = w;
      else (all ??= [written]).push(w);
    }
    if (all !== null) written = Promise.all(all).then((s) => (s.includes('failed') ? 'failed' : 'ok'));
    return { written, remoteGroups, partitions: targets.size };
  }

  /** The usual case: plain subscribers only, one body (header and message) shared by every partition. */
  private forwardPlain(message: Message, partitions: readonly RemotePartitionRef[]): Forwarded {
    const wait = message.qos > 0;
    const body = this.wire.set(publishHeader(true, null), message, this.run);
    const length = body.length;
    let written: Promise<WriteStatus> | null = null;
    let all: Promise<WriteStatus>[] | null = null;
    let n = 0;
    for (const { id } of partitions) {
      if (id === this.homeId) continue;
      n++;
      const w = this.outbox.send(id, body, wait, length);
      if (w === null) continue;
      if (written === null) written = w;
      else (all ??= [written]).push(w);
    }
    if (all !== null) written = Promise.all(all).then((s) => (s.includes('failed') ? 'failed' : 'ok'));
    // One result object for every plain forward (read by the caller at once: see ClusterLink.forward).
    const out = this.plainForwarded;
    out.written = written;
    out.partitions = n;
    return out;
  }

  /**
   * A `$share` group with members in several partitions: the partitions take turns (this node's
   * own members count as one partition, among which its router takes turns). Partitions whose
   * members are all offline (adopted) get a turn only when no other has members.
   */
  private pickShare(key: string, members: ReadonlySet<RemotePartitionRef>, local: boolean): string {
    const candidates: string[] = [];
    for (const { id } of members) if (id !== this.homeId) candidates.push(id);
    return this.takeTurn(key, candidates, local) ?? this.homeId;
  }

  /** One of `candidates` (partitions elsewhere with members of group `key`) or, with `local`, this node's; null: none. */
  private takeTurn(key: string, candidates: string[], local: boolean): string | null {
    const live = candidates.filter((p) => !this.adoptedPartition(p));
    const pool = (live.length > 0 || local ? live : candidates).sort();
    if (local) pool.push(this.homeId);
    if (pool.length === 0) return null;
    const turn = this.shareTurns.get(key) ?? 0;
    if (this.shareTurns.size > 100_000) this.shareTurns.clear();
    this.shareTurns.set(key, turn + 1);
    return pool[turn % pool.length] as string;
  }

  // ── $share group copies whose member left ──────────────────────────────────

  /**
   * The groups of `groups` that partition `p` (hosted here) has no member of: the publishing node
   * picked it from what it last heard, and its last member left since (unsubscribed, ended, moved
   * on). Null: it has members of every one.
   */
  private orphans(p: string, home: boolean, groups: readonly string[]): string[] | null {
    let out: string[] | null = null;
    for (const g of groups) if (!(home ? this.ownShares.has(g) : this.offline.hasMember(p, g))) (out ??= []).push(g);
    return out;
  }

  /**
   * Group copies that reached partition `p` after its last member of the group left: each goes to
   * one other partition that has members, as a new frame this node signs, where it is delivered
   * (and authorized for the member) as any group copy. On one node a message for a group with no
   * member is delivered to nobody; here it is dropped only when no partition has members, or after
   * {@link MAX_SHARE_PASSES} passes. Resolves once the copies are in Redis (QoS 1/2): the inbox
   * keeps the entry that carried them until then.
   *
   * `passes`: how often the copy was passed on before; `sender`: the run that wrote the frame.
   */
  private passShares(p: string, m: Message, groups: string[], passes: number, sender: string): Promise<WriteStatus> | null {
    if (passes >= MAX_SHARE_PASSES) {
      this.shareStats.dropped += groups.length;
      return null;
    }
    // Not back to where it came from: that partition had no member either.
    const exclude = passes > 0 ? [p, this.homeOfRun(sender)] : [p];
    return this.sendPasses(m, groups, passes + 1, exclude, 0, false);
  }

  /**
   * Writes `m` for `groups` to partitions with members (not those in `exclude`), counted as
   * `passes`. A write Redis does not take (over maxPendingBytes, or unreachable) is tried again
   * while the node runs (QoS 1/2: the message was acknowledged to its publisher), until the
   * message expires. `ended`: handed on by a session that ended ({@link passShared}), which
   * nothing else holds: its tries are bounded (see {@link passWaitingBytes}); a copy from an inbox
   * is bounded by the inbox, which keeps the entry that carried it until Redis has the copy.
   *
   * Each write carries a new stamp of this node's (moves.ts): in the partitions it goes to, it is
   * ordered like this node's own messages, and the publisher's stamps there keep coming in order
   * from the publisher's node alone.
   */
  private sendPasses(m: Message, groups: readonly string[], passes: number, exclude: readonly string[], attempt: number, ended: boolean): Promise<WriteStatus> | null {
    const byTarget = new Map<string, string[]>();
    for (const g of groups) {
      const candidates: string[] = [];
      for (const id of this.table.members(g)) if (id !== this.homeId && !exclude.includes(id)) candidates.push(id);
      const target = this.takeTurn(g, candidates, this.ownShares.has(g) && !exclude.includes(this.homeId));
      if (target === null) {
        this.shareStats.dropped++; // no member anywhere (as this node knows): delivered to nobody, as on one node
        continue;
      }
      const list = byTarget.get(target);
      if (list === undefined) byTarget.set(target, [g]);
      else list.push(g);
    }
    if (byTarget.size === 0) return null;
    const wait = m.qos > 0;
    const copy: Message = { ...m, stamp: { node: this.run, seq: ++this.seq } };
    const writes: Promise<WriteStatus>[] = [];
    for (const [target, list] of byTarget) {
      this.shareStats.passed += list.length;
      const w = this.outbox.send(target, this.wire.set(publishHeader(false, list, passes), copy, this.run), wait);
      if (w === null) continue;
      writes.push(w.then((status) => (status === 'ok' ? status : this.passAgain(m, list, passes, exclude, attempt, ended))));
    }
    if (writes.length === 0) return null;
    return writes.length === 1 ? (writes[0] as Promise<WriteStatus>) : Promise.all(writes).then((s) => (s.includes('failed') ? 'failed' : 'ok'));
  }

  /**
   * A pass Redis did not take: tried again after a pause (to the partitions with members then),
   * until the node stops or the message expires. One a session that ended handed on waits only
   * while the bytes waiting so stay within `cluster.maxPendingBytes`: a client that ends sessions
   * holding full queues (it can take its own session over with a clean start without Redis) would
   * otherwise pile up memory for as long as Redis is away.
   */
  private async passAgain(m: Message, groups: string[], passes: number, exclude: readonly string[], attempt: number, ended: boolean): Promise<WriteStatus> {
    this.shareStats.passed -= groups.length;
    const size = ended && attempt === 0 ? messageSize(m) : 0;
    if (size > 0) {
      if (this.passWaitingBytes + size > this.config.maxPendingBytes) return this.passLost(m, groups, 'more group messages of ended sessions wait for Redis than cluster.maxPendingBytes allows');
      this.passWaitingBytes += size;
    }
    await new Promise((resolve) => setTimeout(resolve, Math.min(PASS_RETRY_MAX_MS, 25 << Math.min(attempt, 5))));
    if (m.expiresAt !== undefined && m.expiresAt <= Date.now()) {
      this.passWaitingBytes -= size;
      return 'ok'; // expired meanwhile: delivered to nobody, as anywhere
    }
    if (!this.running || this.fencing) {
      this.passWaitingBytes -= size;
      return this.passLost(m, groups, 'this node stopped before Redis took it');
    }
    const again = this.sendPasses(m, groups, passes, exclude, attempt + 1, ended);
    if (size === 0) return again ?? 'ok';
    // Counted until this message is in Redis or given up (the tries after this one count nothing more).
    const done = again ?? OK;
    void done.then(() => (this.passWaitingBytes -= size));
    return done;
  }

  /** A pass given up: counted, and logged at most once every 5 s. */
  private passLost(m: Message, groups: string[], why: string): WriteStatus {
    this.shareStats.dropped += groups.length;
    const now = Date.now();
    if (now - this.passDropLoggedAt >= 5000) {
      this.passDropLoggedAt = now;
      this.log.error({ topic: m.topic, groups, dropped: this.shareStats.dropped }, `cluster: a $share group message whose member left could not be passed on to another node (${why}): lost for the group`);
    }
    return 'failed';
  }

  /** A partition held by a node other than the one that made it: its sessions are offline. */
  private adoptedPartition(p: string): boolean {
    const info = this.partitionsKnown.get(p);
    // A partition is named after the run that made it (`<run>` or `<run>.<n>`): another host adopted it.
    return info !== undefined && info.host !== p.replace(/\.\d+$/, '');
  }

  retained(message: Message, written: Promise<WriteStatus> | null): Promise<WriteStatus> | null {
    this.retainedSync?.touched.add(message.topic);
    const wait = message.qos > 0;
    const send = (): Promise<WriteStatus> => {
      const body = encodeControl({ t: 'retain', m: toJson({ topic: message.topic, payload: message.payload, qos: message.qos, retain: true, properties: message.properties, expiresAt: message.expiresAt, origin: message.origin }), ...(wait ? { ackTo: this.homeId } : {}) });
      return this.outbox.broadcast(body).then((id) => {
        if (id === null) return 'failed' as WriteStatus;
        return wait ? this.barrier(id).then(() => 'ok' as WriteStatus) : OK;
      });
    };
    // The other nodes learn it once the store has it: one that joins and reads the store misses nothing.
    const done = written === null ? send() : written.then((s) => (s === 'ok' ? send() : s));
    return wait ? done : (void done, null);
  }

  interest(filter: string, present: boolean): Promise<WriteStatus> | null {
    if (isShare(filter)) {
      if (present) this.ownShares.add(filter);
      else this.ownShares.delete(filter);
    }
    if (this.fencing || this.stopping) return null;
    const id = this.outbox.interest(filter, present);
    if (!present) {
      void id.then((x) => x === null && (this.interestDirty = true));
      return null;
    }
    return id.then((x) => {
      if (x === null) {
        // Redis is down: the subscription works here; the others learn it when Redis is back.
        this.interestDirty = true;
        return 'ok' as WriteStatus;
      }
      return this.barrier(x).then(() => 'ok' as WriteStatus);
    });
  }

  claim(key: string, cleanStart: boolean, heldHere: boolean): Promise<ClaimResult> | null {
    return this.moves.claim(key, cleanStart, heldHere);
  }

  ended(key: string): void {
    if (this.fencing || !this.running) return;
    const d = keyDigest(key);
    void runScript(this.cmd, 'free', [this.names.owner(d), this.names.owned(this.homeId)], [d, this.homeId]).catch(() => undefined);
  }

  unclaimed(key: string): void {
    this.ended(key);
  }

  passShared(message: Message, group: string): void {
    // Fenced: the session is another node's now, with what it held.
    if (!this.running || this.fencing) return;
    void this.sendPasses(message, [group], 1, [this.homeId], 0, true);
  }
}

/** Records `seq` as applied from node run `node`, unless a later one is. */
function applyStamp(vector: Map<string, number>, node: string, seq: number): void {
  if (seq > (vector.get(node) ?? 0)) vector.set(node, seq);
}
