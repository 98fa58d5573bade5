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
}

/**
 * Persistent broker state: sessions (with their subscriptions, in-flight and queued messages)
 * and retained messages. The broker keeps live state in memory and writes through to the store,
 * so a restart with a durable store resumes where it stopped. Sessions are keyed by
 * {@link sessionKey} (owner and client id): the `key` parameters below are such keys. Every
 * implementation must pass the shared conformance suite in test/store-conformance.ts.
 */
export interface Store {
  open(): Promise<void>;
  close(): Promise<void>;

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

  loadRetained(): Promise<StoredMessage[]>;
  /** Stores a retained message; an empty payload clears the topic instead. */
  putRetained(message: StoredMessage): Promise<void>;
  deleteRetained(topic: string): Promise<void>;
}
