/**
 * What a packet handler may ask of the broker: the security gate, the sessions and delivery,
 * each through the few operations handlers need. Handlers never see the Broker class; this file
 * declares types only and imports no implementation.
 */
import type { AuditEvent } from '../audit/types.ts';
import type { ChainResult } from '../auth/chain.ts';
import type { ConnectRequest, Principal } from '../auth/types.ts';
import type { Action, AuthzResult } from '../authz/types.ts';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import type { QoS } from '../protocol/codec.ts';
import type { StoredSubscription, StoredWill } from '../store/types.ts';
import type { ClaimResult } from './cluster-port.ts';
import type { Message } from './message.ts';
import type { WriteStatus } from './persistence.ts';
import type { Client } from './ports.ts';
import type { PublishRateLimiter } from './rate-limit.ts';
import type { Inflight, Session } from './session.ts';
import type { BrokerStats, CoarseClock } from './stats.ts';

/** Authentication, authorization and audit (src/broker/gate.ts). */
export interface GateApi {
  supportsAuthMethod(listener: string, method: string): boolean;
  decideAuthentication(listener: string, req: ConnectRequest): ChainResult | Promise<ChainResult>;
  /**
   * Asks the authorizer chain, which refuses a publish to a broker-reserved tree ($SYS) first,
   * and audits the decision. `will`: the publish is a will; `shareGroup`: a delivery through a
   * `$share` group.
   */
  authorize(conn: Client, action: Action, topic: string, qos: QoS, retain: boolean, will?: boolean, shareGroup?: string): AuthzResult | Promise<AuthzResult>;
  audit(conn: Client | null, event: AuditEvent): void;
  /** A request refused by a limit or a malformed filter: audited as a summarised denial. */
  refuse(conn: Client, event: AuditEvent & { event: 'subscribe' | 'unsubscribe' | 'publish'; decision: 'deny' }): void;
  auditsConnects(): boolean;
  auditAvailable(): boolean;
  /** Ends a connection for a security reason, audited; `dropWill` (default true) discards its will. */
  disconnectForSecurity(conn: Client, code: number, action: string, reason: string, dropWill?: boolean): void;
  armCredentialExpiry(conn: Client): void;
}

/** Session state and the store (src/broker/sessions.ts). */
export interface SessionsApi {
  /**
   * In a cluster: makes the session (identity and client id) this node's before it is attached,
   * taking it over from another node. Null when there is nothing to wait for (a single node).
   */
  claim(owner: string, clientId: string, cleanStart: boolean): Promise<ClaimResult> | null;
  /** A claim that resolved was not followed by an attach: the client went away meanwhile. */
  unclaimed(owner: string, clientId: string): void;
  /** Takes over a live session, discards it on clean start, or resumes it; null: over the identity's persistent-session quota. */
  attach(conn: Client, clientId: string, owner: string, cleanStart: boolean, expiryInterval: number, quotaKey: string): { session: Session; present: boolean } | null;
  /** Whether the session's identity may hold one more subscription (limits.quotas.subscriptions). */
  subscriptionFits(session: Session): boolean;
  addSubscription(session: Session, sub: StoredSubscription): void;
  removeSubscription(session: Session, filter: string): boolean;
  /** An inbound QoS 2 packet id is held until PUBREL [MQTT-4.3.3-10]. */
  holdForRelease(session: Session, packetId: number): void;
  /** PUBREL: the packet id is free again. False when it was not held. */
  release(session: Session, packetId: number): boolean;
  /**
   * Collects the store writes of the synchronous code that follows; {@link writesDone} then gives
   * what they came to once committed (null: nothing to wait for, as with a memory store). An
   * acknowledgement that promises those writes is sent only after them (durability contract).
   */
  trackWrites(): void;
  writesDone(): Promise<WriteStatus> | null;
  /** Keeps a persistent session's will in the store, with the identity it is published as. */
  storeWill(session: Session, will: StoredWill, principal: Principal, listener: string): void;
}

/** Routing and delivery (src/broker/delivery.ts). */
export interface DeliveryApi {
  /**
   * Stores a retained message if needed and delivers to every matching subscription; returns how
   * many matched. `from`, the publisher, may be held by flow control.
   */
  route(message: Message, from?: Client | null): number;
  /** PUBACK, PUBCOMP or a refusing PUBREC: the in-flight slot is free. */
  completeInflight(session: Session, packetId: number): void;
  /** PUBREC: the QoS 2 delivery now waits for PUBCOMP. */
  awaitComplete(session: Session, inflight: Inflight): void;
  /** Whether a retained message may be kept: the publisher's quota and the broker's retained limits (v5 0x97 when not). */
  retainFits(message: Message, quotaKey: string): boolean;
  /** Sends the retained messages matching a new subscription. */
  sendRetained(session: Session, sub: StoredSubscription): void;
  /** After CONNACK: re-sends what was in flight, then the queue. */
  resumeDelivery(session: Session): void;
}

export interface BrokerApi {
  readonly config: Config;
  readonly log: Logger;
  readonly stats: BrokerStats;
  readonly clock: CoarseClock;
  /** PUBLISH rate limits; null when none is configured (the default). */
  readonly rateLimiter: PublishRateLimiter | null;
  readonly gate: GateApi;
  readonly sessions: SessionsApi;
  readonly delivery: DeliveryApi;
  /** CONNACK was sent: the connection counts as connected. */
  connectionOpened(conn: Client, principal: Principal): void;
  /** A session restored from the store resumes: its subscriptions are checked against the policy as this connection's identity. */
  recheckRestored(session: Session, conn: Client): Promise<unknown>;
}
