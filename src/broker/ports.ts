/**
 * The shapes the rooms of the broker share, with no implementation behind them: a client
 * connection as the rest of the broker sees it, and what a connection needs from its host.
 * This file imports only types, so every room can depend on it without a loop.
 */
import type { Duplex } from 'node:stream';
import type { AuditWho } from '../audit/types.ts';
import type { Principal } from '../auth/types.ts';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import type { Packet, ProtocolVersion, PublishProperties, QoS } from '../protocol/codec.ts';
import type { PeerInfo } from '../transport/types.ts';
import type { TokenBucket } from './token-bucket.ts';

export interface Will {
  topic: string;
  payload: Buffer;
  qos: QoS;
  retain: boolean;
  properties?: PublishProperties;
  delaySeconds: number;
}

export type ConnectionState = 'new' | 'connecting' | 'connected' | 'closed';

/** What became of a store write: committed, refused because the disk is full, or failed otherwise (persistence.ts). */
export type WriteStatus = 'ok' | 'full' | 'failed';

/**
 * A publisher as flow control sees it (delivery.ts): a client connection here, or in a cluster a
 * publisher on another node, held and released through the bus (src/cluster/flow.ts).
 */
export interface FlowSource {
  readonly state: ConnectionState;
  /** On another node: what it sent before its hold got there is already on the way (see Delivery.deliver). */
  readonly remote?: boolean;
  holdForFlow(): void;
  releaseFlow(): void;
}

/**
 * A client connection, as the security gate, sessions and delivery see it: its identity, what
 * it negotiated, and the ways to write to it or end it. The Connection class implements it.
 */
export interface Client {
  readonly peer: PeerInfo;
  readonly stream: Duplex;
  readonly openedAt: number;
  readonly v5: boolean;
  state: ConnectionState;
  version: ProtocolVersion;
  clientId: string;
  /** A bridge's CONNECT (protocol level with 0x80, Mosquitto's try_private): shown in the log and the audit. */
  bridge: boolean;
  principal: Principal | null;
  keepAlive: number;
  lastSeen: number;
  will: Will | null;
  /** Set by a DISCONNECT 0x00 from the client (the will is discarded [MQTT-3.14.4-3]) or by a security disconnect. */
  discardWill: boolean;
  /** Set when a new connection took the session over. */
  takenOver: boolean;
  /** With takenOver: the new connection started clean, so this session ends. */
  sessionEnding: boolean;
  outboundAliases: Map<string, number> | null;
  outboundAliasMaximum: number;
  /** The client's receive maximum: our in-flight window towards it [MQTT-3.3.4-7]. */
  sendWindow: number;
  clientMaxPacketSize: number;
  problemInformation: boolean;
  /** Ends the connection when its credentials expire (Principal.expiresAt). */
  expiryTimer: NodeJS.Timeout | null;
  /** More than limits.maxSocketBufferBytes wait in the socket: deliveries queue until it drains. */
  writeBlocked: boolean;
  /** Rate-limit throttle: the socket is not read until this time (epoch ms); 0: not throttled. */
  readPausedUntil: number;
  /** When this client first went over its rate limit since its last accepted publish; 0: it has not. */
  rateLimitedSince: number;
  clientBucket: TokenBucket | null;
  identityBucket: TokenBucket | null;
  identityKey: string | null;
  /** Who this connection's access records name, and for which principal (made again when either changes). */
  auditWho: AuditWho | null;
  auditWhoPrincipal: Principal | null;
  /** Queues bytes; writes made in one event-loop turn go out in one batch. */
  write(buf: Buffer): void;
  send(packet: Packet): void;
  /** Ends the connection for a reason: a v5 client that completed CONNECT is told with DISCONNECT. */
  disconnect(code: number, detail: string): void;
  /** Marks the connection closed, whatever closed it. */
  close(reason: { code: number; detail: string }): void;
  /** Sends a packet once the store writes it depends on are committed, in order with the others sent this way. */
  sendWhenWritten(wait: Promise<WriteStatus> | null, make: (status: WriteStatus) => Packet | Buffer | null): void;
  /** Ends a rate-limit throttle. */
  resumeReading(): void;
  /** Subscribers behind on this client's messages that hold its reading (flow control); 0: none. */
  readonly flowHolds: number;
  holdForFlow(): void;
  releaseFlow(): void;
  /** The audit log caught up: read again. */
  releaseAudit(): void;
  describeClose(): string;
}

/** What a connection needs from the broker that accepted it. */
export interface ConnectionHost<C> {
  readonly log: Logger;
  readonly limits: Config['limits'];
  /** The packet-size limits every connection's reader applies: one object for all of them. */
  readonly readerLimits: { maxPacketSize: number; maxConnectSize: number };
  /** Hands a packet to its handler; a returned promise holds the next packets until it settles. */
  dispatch(conn: C, packet: Packet): void | Promise<void>;
  /** True while the audit log is behind: the connection stops reading until it catches up. */
  auditBacklogged(): boolean;
  holdForAudit(conn: C): void;
  /** The listener ends the connection for a security reason (e.g. its certificate was revoked). */
  securityClose(conn: C, action: string, reason: string): void;
  /** The socket drained: queued deliveries may go out. */
  drained(conn: C): void;
  /** The connection closed; `before`: the state it was in (a CONNECT refused or never read, or a connected client). */
  connectionClosed(conn: C, before: ConnectionState): void;
}
