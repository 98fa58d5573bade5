/**
 * The seam between the broker and the cluster (src/cluster/), in both directions. Types only:
 * the broker never imports the cluster, and the cluster sees the broker only through
 * {@link ClusterHost}. On a single node there is no link (null) and none of this runs.
 *
 * The cluster divides sessions into partitions. A node hosts its own partition (the sessions of
 * its clients, in the broker's session registry) and may host partitions adopted from nodes that
 * died (offline sessions, kept by the cluster on the store). Messages reach a partition through
 * its inbox on the bus; a session moves between partitions by the takeover protocol in
 * docs/cluster.md, during which the broker holds an arriving copy of it.
 */
import type { Principal } from '../auth/types.ts';
import type { Store, StoreOpenReport, StoredSession, StoredSubscription, StoredWill } from '../store/types.ts';
import type { Message } from './message.ts';
import type { FlowSource, WriteStatus } from './ports.ts';

/** A `$share` group matched on this node for a message: the cluster decides whether a member here or on another node takes it. */
export interface LocalShare {
  /** `$share/{group}/{filter}`: the group as every node names it. */
  readonly key: string;
}

/**
 * Another partition's interest, kept in the router's own trie (router.ts) beside this node's
 * subscriptions: one walk per publish finds the local subscribers and the partitions elsewhere
 * to send it to. The cluster keeps it up to date (snapshots, the broadcast stream, partitions
 * that end); the router only matches it.
 */
export interface RemoteInterest {
  /** Partition `partition` subscribes to `filter` (or `$share/{group}/{filter}`). */
  add(partition: string, filter: string): void;
  remove(partition: string, filter: string): void;
  /** Forgets everything a partition subscribes to (it ended, or it is read again). */
  dropPartition(partition: string): void;
  /** Replaces what is known of a partition. */
  replacePartition(partition: string, filters: Iterable<string>): void;
  /** The filters a partition has, as this node knows them (a copy). */
  filters(partition: string): string[];
}

/** A partition elsewhere, as a match names it. */
export interface RemotePartitionRef {
  readonly id: string;
}

/** A `$share` group with members in partitions elsewhere. */
export interface RemoteGroupRef {
  /** `$share/{group}/{filter}`. */
  readonly key: string;
  readonly partitions: ReadonlySet<RemotePartitionRef>;
}

/** What a publish matched elsewhere, from the router's walk; reused by the next match. */
export interface RemoteMatch {
  /** Partitions with a plain subscriber, each once. */
  readonly remoteMatched: readonly RemotePartitionRef[];
  /** Groups with members elsewhere, each once. */
  readonly remoteGroups: readonly RemoteGroupRef[];
}

/** What forwarding a message came to. */
export interface Forwarded {
  /** Resolves once every inbox it was written to holds it durably (QoS 1/2); null: nothing to wait for. */
  written: Promise<WriteStatus> | null;
  /** Shared groups a member on another node takes: not delivered here. Null: none. */
  remoteGroups: ReadonlySet<string> | null;
  /** Partitions it was sent to (counted as matches for v5's 0x10 No matching subscribers). */
  partitions: number;
}

/** How a claim on a session key ended. */
export type ClaimResult = { ok: true } | { ok: false; reason: number; detail: string };

/** What the broker asks of the cluster. */
export interface ClusterLink {
  /** Sets the message's origin stamp (node and sequence), which orders it against session moves. */
  stamp(message: Message): void;
  /**
   * Sends a message routed here to the partitions elsewhere whose interest matches it: `remote`,
   * found by the same router walk that found the local subscribers (and `shares`, the groups
   * with members here). The result is read at once: it may be reused by the next call.
   */
  forward(message: Message, shares: readonly LocalShare[], remote: RemoteMatch): Forwarded;
  /**
   * A retained message was set or cleared here: every node learns it. `written` is the local
   * store write it must follow. Resolves (QoS 1/2) once the other nodes have applied it.
   */
  retained(message: Message, written: Promise<WriteStatus> | null): Promise<WriteStatus> | null;
  /** This node's interest in a filter (or `$share/g/f`) began or ended; a beginning resolves once the other nodes know it. */
  interest(filter: string, present: boolean): Promise<WriteStatus> | null;
  /**
   * Before a CONNECT attaches a session: makes it this node's, taking it over from the node that
   * holds it. Null: it is already this node's, attach at once. Otherwise the moved state (if any)
   * has been installed in the registry by the time the promise resolves.
   */
  claim(key: string, cleanStart: boolean, heldHere: boolean): Promise<ClaimResult> | null;
  /** A session of this node ended (clean start, expiry, a non-persistent session disconnected). */
  ended(key: string): void;
  /** A claim that resolved was not followed by an attach (the client went away). */
  unclaimed(key: string): void;
  /**
   * A message for `$share` group `group` (`$share/g/f`) that a member here took and did not
   * finish before its session ended, and that no other member here can take: a node with members
   * of the group gets it [MQTT 5.0 4.8.2]. Nothing happens when no node has members.
   */
  passShared(message: Message, group: string): void;
}

/** A session as a move describes it before its state follows: enough to route to it. */
export interface ArrivingSession {
  key: string;
  clientId: string;
  owner: string;
  protocolVersion: 3 | 4 | 5;
  expiryInterval: number;
  subscriptions: StoredSubscription[];
}

/** What the owner of a session reports when a takeover asks for it. */
export type Departing = { present: false } | { present: true; session: ArrivingSession };

/** A will of a session the cluster holds offline (adopted), published as the identity it was stored with. */
export interface DetachedWill {
  key: string;
  clientId: string;
  quotaKey: string;
  will: StoredWill;
  principal: Principal;
  listener: string;
}

/** What the cluster may ask of the broker (src/broker/migration.ts implements it). */
export interface ClusterHost {
  /** Where the cluster keeps the other partitions' interest: the router's trie. */
  readonly remoteInterest: RemoteInterest;
  /**
   * Routes a message that arrived from another node to this node's sessions; resolves once what it
   * wrote is committed. `from`: its publisher on the other node, which flow control may hold
   * (through the bus); null for a message no publisher can be held for (QoS 0, a will).
   */
  deliverRemote(message: Message, plain: boolean, groups: readonly string[] | null, from: FlowSource | null): Promise<WriteStatus> | null;
  /**
   * Cross-node flow control: a subscriber on node run `holder` holds this node's publisher (the
   * client of session `key`), or lets it go. Ignored for a publisher not connected here. True
   * when it held it.
   */
  flowHold(key: string, holder: string, hold: boolean): boolean;
  /** Node run `holder` is gone: the holds it asked of this node's publishers end. */
  flowHolderGone(holder: string): void;
  /**
   * Cross-node flow control on this node's publishers: holds applied, holds that ran out
   * (maxHoldMs, or the publisher's hold budget), holds refused (budget spent), held now; and the
   * bytes queued here beyond subscribers' limits while their holds crossed the bus.
   */
  flowStatus(): { applied: number; expired: number; refused: number; held: number; transitBytes: number };
  /** A retained message set or cleared on another node; `persist`: this node's store must keep it too. */
  applyRetained(message: Message, persist: boolean): void;
  /** The session (by key) is held here, connected or not. */
  holds(key: string): boolean;
  /**
   * A takeover from another node: the connection is ended (0x8E), a pending will is settled as a
   * new connection would settle it. With clean start the session ends here (not present).
   */
  depart(key: string, cleanStart: boolean): Departing;
  /** The move is committed: the session leaves this node; resolves once its store writes are done, with its state. */
  release(key: string): Promise<StoredSession | null>;
  /**
   * A session is moving here: route to it (queued, not stored) until {@link arrive}. Resolves once
   * the other nodes know the interest it adds here (null: it adds none).
   */
  prepareArrival(session: ArrivingSession): Promise<WriteStatus> | null;
  /**
   * Its state has come: installs it (from `stored`, else loaded from the store) and adds what the
   * arriving copy collected that the old owner had not (`keep`). Resolves once that is written.
   */
  arrive(key: string, stored: StoredSession | null, keep: (message: Message) => boolean): Promise<void>;
  /** The move failed: drop the arriving copy. */
  abandonArrival(key: string): void;
  /** Installs a session found in the store with no owner (resumed by a claim). */
  adoptStored(stored: StoredSession): void;
  /** Publishes a will of a session the cluster held offline (authorized as its stored identity). */
  publishWill(will: DetachedWill): void;
  /** This node lost its own partition (it was cut off longer than its lease and another node took it over): end every session here without writing. */
  dropAll(reason: string): void;
  /** The filters (and `$share/g/f`) this node's sessions subscribe to. */
  interestSnapshot(): string[];
  /** The keys of the sessions held here (not arriving copies). */
  sessionKeys(): string[];
  /** Every retained message held here (for a node that joins with a store of its own). */
  retainedSnapshot(): Message[];
}

/** The cluster's lifecycle, driven by the broker's start and stop. */
export interface ClusterRuntime extends ClusterLink {
  /** Connects to Redis and notes where the broadcast stream stands, before the store is read. */
  prepare(): Promise<void>;
  /** Joins: hosts this node's partition (and adopts its own earlier ones), learns the others' interest, reads its inbox. */
  start(host: ClusterHost, store: Store, report: StoreOpenReport): Promise<void>;
  /** Leaves, once the connections are closed: this node's sessions go to another node. */
  stop(): Promise<void>;
}
