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

/** A listener accepts sockets and hands each one to the broker as a Duplex plus a PeerInfo. */
export interface Listener {
  readonly name: string;
  readonly kind: PeerInfo['transport'];
  /** Starts listening; resolves with the bound address. */
  start(onConnection: (stream: Duplex, peer: PeerInfo) => void): Promise<{ host: string; port: number }>;
  /** Stops accepting new connections. Live connections are left to the broker. */
  stop(): Promise<void>;
}
