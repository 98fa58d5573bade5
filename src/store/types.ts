import type { PublishProperties, QoS } from '../protocol/codec.ts';

/** An application message as the broker keeps it: what a PUBLISH carried, without per-hop fields. */
export interface StoredMessage {
  topic: string;
  payload: Buffer;
  qos: QoS;
  retain: boolean;
  /** v5 properties passed through unchanged (never topicAlias or subscriptionIdentifier). */
  properties?: PublishProperties;
  /** Epoch ms when the message expires (v5 message expiry), if it does. */
  expiresAt?: number;
  /** The session that published it (its {@link sessionKey}), for no-local. */
  origin?: string;
  /**
   * A queued delivery's subscription identifiers (v5), kept with the queued message so that it
   * carries them after a restart as it would have before [MQTT-3.3.4-3]. Only on queue entries.
   */
  subscriptionIds?: number[];
}

export interface StoredSubscription {
  filter: string;
  qos: QoS;
  noLocal: boolean;
  retainAsPublished: boolean;
  retainHandling: 0 | 1 | 2;
  subscriptionId?: number;
}

/** A message sent to a client and not yet fully acknowledged. */
export interface StoredInflight {
  packetId: number;
  /** 'publish': waiting for PUBACK/PUBREC; 'pubrel': PUBREC received, waiting for PUBCOMP. */
  state: 'publish' | 'pubrel';
  message: StoredMessage;
  /** The subscription identifiers the delivery carries (v5). */
  subscriptionIds?: number[];
}

/**
 * A session belongs to the identity that authenticated it: the same client id used by two
 * identities names two sessions. A store keys each session by this key, and every per-session
 * method takes it.
 *
 * @example
 * sessionKey('user:alice', 'device-1'); // 'user:alice\u0000device-1'
 */
export function sessionKey(owner: string, clientId: string): string {
  // U+0000 cannot occur in an MQTT string (the broker refuses it), so the key is unambiguous.
  return `${owner}\u0000${clientId}`;
}

/** The owner and client id a {@link sessionKey} was made of. */
export function splitSessionKey(key: string): { owner: string; clientId: string } {
  const at = key.indexOf('\u0000');
  return at < 0 ? { owner: '', clientId: key } : { owner: key.slice(0, at), clientId: key.slice(at + 1) };
}

/**
 * A will kept with a persistent session, so that a broker that stopped (or crashed) while the
 * client was connected can still publish it after a restart, after its delay.
 */
export interface StoredWill {
  /** The will message: topic, payload, QoS, retain flag and v5 will properties. */
  message: StoredMessage;
  /** v5 Will Delay Interval in seconds; 0 (and v3) publishes at once. */
  delayInterval: number;
  /** The identity the will is authorized and published as, after a restart (no secrets). */
  principal?: StoredPrincipal;
}

/** An authenticated identity as a stored will keeps it: what authorization reads, never a password or token. */
export interface StoredPrincipal {
  username?: string;
  method: string;
  provider: string;
  roles: string[];
  /** JSON-safe attributes (certificate fields, verified JWT claims, PSK identity). */
  attributes: Record<string, unknown>;
  /** The listener the client was connected to. */
  listener: string;
}

export interface StoredSession {
  clientId: string;
  /** The identity that owns the session; with the client id, it names the session ({@link sessionKey}). */
  owner: string;
  protocolVersion: 3 | 4 | 5;
  /** Seconds the session outlives its connection; 0xFFFFFFFF means never expires. */
  expiryInterval: number;
  /** Epoch ms when a disconnected session expires; undefined while connected or when it never expires. */
  expiresAt?: number;
  subscriptions: StoredSubscription[];
  inflight: StoredInflight[];
  queue: StoredMessage[];
  /** Inbound QoS 2 packet ids waiting for PUBREL. */
  awaitingRelease: number[];
  /** The will of the session's last connection, when it had one that is still pending. */
  will?: StoredWill;
}

/**
 * Persistent broker state: sessions (with their subscriptions, in-flight and queued messages)
 * and retained messages. The broker keeps live state in memory and writes through to the store,
 * so a restart with a durable store resumes where it stopped. Sessions are keyed by
 * {@link sessionKey} (owner and client id): the `key` parameters below are such keys. Every
 * implementation must pass the shared conformance suite in test/store-conformance.ts.
 */
export interface Store {
  /**
   * Opens the store: checks it, brings back what it holds, drops what expired while the broker
   * was down, and reports all of it (the broker audits the report). Rejects with a StoreError
   * (src/store/errors.ts) when the store is locked, damaged or not safe to use; it never opens
   * with silent loss.
   */
  open(): Promise<StoreOpenReport>;
  close(): Promise<void>;
  /**
   * Deletes sessions that expired while disconnected and retained messages whose message expiry
   * passed. `keep(key)` is asked, inside the write, for each expired session (by its session key): the broker
   * answers true for one it has just resumed. Queued messages of live sessions are left to the
   * broker (it drops expired ones as it delivers, and dequeues them).
   */
  purgeExpired(options?: PurgeOptions): Promise<PurgeReport>;

  loadSessions(): Promise<StoredSession[]>;
  getSession(key: string): Promise<StoredSession | undefined>;
  /** Creates or replaces the session (under sessionKey(owner, clientId)), keeping nothing from an older one. */
  saveSession(session: StoredSession): Promise<void>;
  deleteSession(key: string): Promise<void>;
  /** Marks a session connected (expiresAt undefined) or disconnected (expiresAt set). */
  setSessionExpiry(key: string, expiresAt: number | undefined, expiryInterval: number): Promise<void>;

  putSubscription(key: string, subscription: StoredSubscription): Promise<void>;
  deleteSubscription(key: string, filter: string): Promise<void>;

  putInflight(key: string, inflight: StoredInflight): Promise<void>;
  deleteInflight(key: string, packetId: number): Promise<void>;

  enqueue(key: string, message: StoredMessage): Promise<void>;
  /** Removes the first `count` queued messages (they were sent or dropped). */
  dequeue(key: string, count: number): Promise<void>;

  putAwaitingRelease(key: string, packetId: number): Promise<void>;
  deleteAwaitingRelease(key: string, packetId: number): Promise<void>;

  /** Sets (replaces) the session's will. Ignored for an unknown session, like every session write. */
  putWill(key: string, will: StoredWill): Promise<void>;
  /** Removes the session's will (published, or discarded by a normal DISCONNECT or a reconnect). */
  deleteWill(key: string): Promise<void>;

  loadRetained(): Promise<StoredMessage[]>;
  /** Stores a retained message; an empty payload clears the topic instead. */
  putRetained(message: StoredMessage): Promise<void>;
  deleteRetained(topic: string): Promise<void>;
}

/**
 * What a store may offer beyond {@link Store} (the LMDB store does): a batch whose writes are
 * decided only when its transaction starts. `prepare` is called inside the transaction, and the
 * writes it makes through the Store methods join it at once; until then the caller can still
 * drop writes that undo each other (src/broker/persistence.ts). Resolves once the batch is
 * committed; each write's own promise says how it went. Rejects without calling `prepare` when
 * nothing can be written. (A capability found on the store object, not a Store method: wrappers
 * that inherit from the store, like the metrics meter, pass it through.)
 */
export interface LateBatching {
  lateBatch(prepare: () => void): Promise<void>;
}

/** What a store holds, by kind. */
export interface StoreCounts {
  sessions: number;
  subscriptions: number;
  inflight: number;
  queued: number;
  awaitingRelease: number;
  retained: number;
  wills: number;
}

/** What open() dropped, and why. */
export interface StorePurgeCounts {
  /** Disconnected sessions whose expiry passed while the broker was down (with everything in them). */
  expiredSessions: number;
  /** Queued messages whose v5 message expiry passed. */
  expiredMessages: number;
  /** Retained messages whose v5 message expiry passed. */
  expiredRetained: number;
  /** Records that belonged to no session (none are expected; counted so nothing goes silently). */
  orphans: number;
}

/** The result of {@link Store.open}: what to log and audit about the store at start. */
export interface StoreOpenReport {
  /** 'memory' or 'lmdb'. */
  type: string;
  /** True when what the store holds survives a process crash. */
  durable: boolean;
  /** The store folder, for a store on disk. */
  path?: string;
  /** 'sync' or 'commit' for the lmdb store (docs/persistence.md). */
  durability?: string;
  /** Key id that encrypts new records, when encryption at rest is on. */
  encryptionKeyId?: string;
  /** True when this open made a new, empty store. */
  created: boolean;
  /** What was loaded (after the purge). */
  loaded: StoreCounts;
  purged: StorePurgeCounts;
  recovery: {
    /** The last broker on this store did not close it (crash, kill -9, power cut). */
    uncleanShutdown: boolean;
    /** The holder of the stale lock that was taken over, if any. */
    staleLock?: { pid: number; host: string; since: string };
  };
  /** Allowed but looser than the defaults (for example a folder other users can list). */
  warnings: string[];
  /** Size of the store on disk, in bytes. */
  bytes?: number;
  durationMs: number;
}

export interface PurgeOptions {
  /** Epoch ms to compare expiry times with; default now. */
  now?: number;
  /** Return true to keep an expired session, given its session key (the broker has resumed it). */
  keep?: (key: string) => boolean;
}

export interface PurgeReport {
  expiredSessions: number;
  expiredRetained: number;
}
