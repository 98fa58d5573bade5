/**
 * The per-address connection cap of the operations listener, decided at accept time, before TLS
 * and before a byte of HTTP is read: one source address holding all of the listener's slots
 * would keep the probes and scrapes of everyone else out. A socket over the cap is closed at
 * once and its refusal audited through the summary (one record, then a count per interval).
 *
 * The gate sits in front of the server's own `connection` handlers (http's parser, or the TLS
 * wrap of https), so a refused socket never reaches them. Counts are kept only for addresses
 * with an open connection: the map holds at most as many entries as the server holds sockets.
 */
import type { Server } from 'node:net';
import type { Socket } from 'node:net';
import type { RefusalSummary } from './refusal-summary.ts';

export interface ConnectionGateStats {
  refused: number;
}

export function installConnectionGate(
  server: Server,
  maxPerAddress: number,
  summary: RefusalSummary,
  audit: (first: { address: string; port: number; open: number }) => void,
): ConnectionGateStats {
  const open = new Map<string, number>();
  const stats: ConnectionGateStats = { refused: 0 };
  const handlers = server.listeners('connection') as ((socket: Socket) => void)[];
  server.removeAllListeners('connection');
  server.on('connection', (socket: Socket) => {
    const address = socket.remoteAddress ?? 'unknown';
    const n = open.get(address) ?? 0;
    if (n >= maxPerAddress) {
      stats.refused++;
      if (summary.admit(address, 'connection-cap', 0)) audit({ address, port: socket.remotePort ?? 0, open: n });
      socket.destroy();
      return;
    }
    open.set(address, n + 1);
    socket.once('close', () => {
      const left = (open.get(address) ?? 1) - 1;
      if (left <= 0) open.delete(address);
      else open.set(address, left);
    });
    for (const h of handlers) h.call(server, socket);
  });
  return stats;
}
