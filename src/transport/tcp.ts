import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { AdmitSocket } from './admit.ts';
import type { Listener, OnConnection, PeerInfo } from './types.ts';

export interface TcpListenerOptions {
  name: string;
  host: string;
  port: number;
  /** Admission control, run on each accepted socket before anything is read from it. */
  admit?: AdmitSocket | undefined;
}

/** A plain TCP listener. Nagle is off: the broker batches its own writes with cork/uncork. */
export class TcpListener implements Listener {
  readonly kind = 'tcp' as const;
  readonly name: string;
  private server: net.Server | null = null;

  constructor(private readonly options: TcpListenerOptions) {
    this.name = options.name;
  }

  start(onConnection: OnConnection): Promise<{ host: string; port: number }> {
    const admit = this.options.admit;
    const server = net.createServer({ noDelay: true }, (socket) => {
      if (admit !== undefined && !admit(socket)) return;
      onConnection(socket, {
        listener: this.name,
        transport: 'tcp',
        remoteAddress: socket.remoteAddress ?? '',
        remotePort: socket.remotePort ?? 0,
      });
    });
    this.server = server;
    return listen(server, this.options.host, this.options.port);
  }

  stop(): Promise<void> {
    return closeServer(this.server);
  }
}

export function listen(server: net.Server, host: string, port: number): Promise<{ host: string; port: number }> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      const address = server.address() as net.AddressInfo;
      resolve({ host: address.address, port: address.port });
    });
  });
}

export function closeServer(server: { close(cb: (err?: Error) => void): unknown } | null): Promise<void> {
  return new Promise((resolve) => {
    if (server === null) return resolve();
    server.close(() => resolve());
  });
}
