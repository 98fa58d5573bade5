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
  /** The client id that published it, for no-local. */
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

export interface StoredSession {
  clientId: string;
  /** The identity that owns the session; a different identity cannot resume or take it over. */
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
 * so a restart with a durable store resumes where it stopped. Every implementation must pass
 * the shared conformance suite in test/store-conformance.ts.
 */
export interface Store {
  open(): Promise<void>;
  close(): Promise<void>;

  loadSessions(): Promise<StoredSession[]>;
  getSession(clientId: string): Promise<StoredSession | undefined>;
  /** Creates or replaces the session's header fields, keeping nothing else from an older one. */
  saveSession(session: StoredSession): Promise<void>;
  deleteSession(clientId: string): Promise<void>;
  /** Marks a session connected (expiresAt undefined) or disconnected (expiresAt set). */
  setSessionExpiry(clientId: string, expiresAt: number | undefined, expiryInterval: number): Promise<void>;

  putSubscription(clientId: string, subscription: StoredSubscription): Promise<void>;
  deleteSubscription(clientId: string, filter: string): Promise<void>;

  putInflight(clientId: string, inflight: StoredInflight): Promise<void>;
  deleteInflight(clientId: string, packetId: number): Promise<void>;

  enqueue(clientId: string, message: StoredMessage): Promise<void>;
  /** Removes the first `count` queued messages (they were sent or dropped). */
  dequeue(clientId: string, count: number): Promise<void>;

  putAwaitingRelease(clientId: string, packetId: number): Promise<void>;
  deleteAwaitingRelease(clientId: string, packetId: number): Promise<void>;

  loadRetained(): Promise<StoredMessage[]>;
  /** Stores a retained message; an empty payload clears the topic instead. */
  putRetained(message: StoredMessage): Promise<void>;
  deleteRetained(topic: string): Promise<void>;
}
