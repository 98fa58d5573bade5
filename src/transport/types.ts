import type { Duplex } from 'node:stream';

/** What the transport learned about a connection; it knows nothing of MQTT. */
export interface PeerInfo {
  /** The configured name of the listener that accepted the connection. */
  listener: string;
  transport: 'tcp' | 'ws' | 'tls' | 'wss';
  remoteAddress: string;
  remotePort: number;
  /** Filled by TLS listeners: what the handshake established. */
  tls?: TlsPeerInfo;
}

export interface TlsPeerInfo {
  protocol: string | null;
  cipher?: string;
  /** True when a client certificate was presented and verified against the CA bundle. */
  authorized: boolean;
  authorizationError?: string;
  subject?: Record<string, string | string[]>;
  subjectAltNames?: string[];
  issuer?: Record<string, string | string[]>;
  serialNumber?: string;
  fingerprint256?: string;
  validTo?: string;
  pskIdentity?: string;
}

/**
 * What the broker gives back for an accepted connection: how a listener ends it for a security
 * reason it learns about later (a certificate that a reloaded CRL revokes), so that the broker
 * closes it as a security disconnect (audited, will discarded) rather than as a lost socket.
 */
export interface ConnectionHandle {
  securityClose(action: string, reason: string): void;
}

export type OnConnection = (stream: Duplex, peer: PeerInfo) => ConnectionHandle | void;

/** A listener accepts sockets and hands each one to the broker as a Duplex plus a PeerInfo. */
export interface Listener {
  readonly name: string;
  readonly kind: PeerInfo['transport'];
  /** Starts listening; resolves with the bound address. */
  start(onConnection: OnConnection): Promise<{ host: string; port: number }>;
  /** Stops accepting new connections. Live connections are left to the broker. */
  stop(): Promise<void>;
}
