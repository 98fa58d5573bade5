import http from 'node:http';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, createWebSocketStream } from 'ws';
import type { Listener, OnConnection, PeerInfo } from './types.ts';
import { closeServer, listen } from './tcp.ts';
import { type AdmitSocket, admittingFront } from './admit.ts';

export interface WebSocketListenerOptions {
  name: string;
  host: string;
  port: number;
  path: string;
  maxPayload: number;
  /** Admission control, run on each accepted socket before the HTTP upgrade is read. */
  admit?: AdmitSocket | undefined;
  /** The whole upgrade request must arrive within this (limits.connectTimeoutMs). */
  upgradeTimeoutMs?: number;
}

/**
 * HTTP server options that bound how long an upgrade request may take to arrive: a client
 * that trickles its request headers (slowloris) is closed after `ms`, not after Node's
 * default 60 s, checked every second instead of every 30 s.
 */
export function upgradeDeadline(ms: number | undefined): http.ServerOptions {
  if (ms === undefined) return {};
  return { headersTimeout: ms, requestTimeout: ms, connectionsCheckingInterval: Math.min(1000, ms) };
}

/** MQTT over WebSocket with the `mqtt` subprotocol [MQTT-6.0.0-3..4]. */
export class WebSocketListener implements Listener {
  readonly kind = 'ws' as const;
  readonly name: string;
  private server: net.Server | null = null;
  private wss: WebSocketServer | null = null;

  constructor(private readonly options: WebSocketListenerOptions) {
    this.name = options.name;
  }

  start(onConnection: OnConnection): Promise<{ host: string; port: number }> {
    const server = http.createServer(upgradeDeadline(this.options.upgradeTimeoutMs), (_req, res) => {
      res.writeHead(426, { 'content-type': 'text/plain' }).end('MQTT over WebSocket only\n');
    });
    const wss = new WebSocketServer({
      server,
      path: this.options.path,
      maxPayload: this.options.maxPayload,
      perMessageDeflate: false,
      handleProtocols: (protocols) => (protocols.has('mqtt') ? 'mqtt' : protocols.has('mqttv3.1') ? 'mqttv3.1' : false),
    });
    wss.on('connection', (ws, req) => {
      const stream = createWebSocketStream(ws);
      const socket = req.socket;
      socket.setNoDelay(true);
      onConnection(stream, {
        listener: this.name,
        transport: 'ws',
        remoteAddress: socket.remoteAddress ?? '',
        remotePort: socket.remotePort ?? 0,
      });
    });
    this.server = this.options.admit === undefined ? server : admittingFront(server, this.options.admit);
    this.wss = wss;
    return listen(this.server, this.options.host, this.options.port);
  }

  async stop(): Promise<void> {
    this.wss?.close();
    await closeServer(this.server);
  }
}
