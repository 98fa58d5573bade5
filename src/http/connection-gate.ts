/**
 * The connection caps of the operations listener, decided at accept time, before TLS and before
 * a byte of HTTP is read:
 *
 * - per address: one source address holding all of the listener's slots would keep the probes
 *   and scrapes of everyone else out;
 * - in all (`maxTotal`), with the last `reserve` slots kept for addresses that hold fewer than
 *   `reserveBelow` connections: a few addresses each at their own cap fill the rest, but a
 *   probe or a scrape from an address that holds (almost) nothing still gets in.
 *
 * A socket over a cap is closed at once and its refusal audited through the summary (one
 * record, then a count per interval, per address and kind). Node's own `maxConnections` is not
 * used: it drops sockets before any handler sees them, unaudited.
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

export interface ConnectionCaps {
  maxPerAddress: number;
  maxTotal: number;
  /** The last slots of `maxTotal`, only for an address holding fewer than `reserveBelow`. */
  reserve: number;
  reserveBelow: number;
}

/** What a refused socket is told to the audit callback (the first of its kind from the address in an interval). */
export interface GateRefusal {
  address: string;
  port: number;
  /** Connections the address holds. */
  open: number;
  /** Connections the listener holds. */
  total: number;
  refusal: 'connection-cap' | 'listener-full';
}

export function installConnectionGate(server: Server, caps: ConnectionCaps, summary: RefusalSummary, audit: (first: GateRefusal) => void): ConnectionGateStats {
  const open = new Map<string, number>();
  let total = 0;
  const stats: ConnectionGateStats = { refused: 0 };
  const handlers = server.listeners('connection') as ((socket: Socket) => void)[];
  server.removeAllListeners('connection');
  server.on('connection', (socket: Socket) => {
    const address = socket.remoteAddress ?? 'unknown';
    const n = open.get(address) ?? 0;
    const refusal =
      n >= caps.maxPerAddress ? 'connection-cap' : total >= caps.maxTotal || (total >= caps.maxTotal - caps.reserve && n >= caps.reserveBelow) ? 'listener-full' : undefined;
    if (refusal !== undefined) {
      stats.refused++;
      if (summary.admit(address, refusal, 0)) audit({ address, port: socket.remotePort ?? 0, open: n, total, refusal });
      socket.destroy();
      return;
    }
    open.set(address, n + 1);
    total++;
    socket.once('close', () => {
      total--;
      const left = (open.get(address) ?? 1) - 1;
      if (left <= 0) open.delete(address);
      else open.set(address, left);
    });
    for (const h of handlers) h.call(server, socket);
  });
  return stats;
}
