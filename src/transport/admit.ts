/**
 * Admission at accept time, before a TLS handshake or an HTTP request is read: a plain
 * `net.Server` accepts each socket, asks `admit`, and hands the admitted ones to the TLS or
 * HTTP server by emitting 'connection' on it (the documented way to inject a socket). A
 * refused socket is destroyed by `admit` and never reaches the inner server.
 */
import net from 'node:net';

/** Decides one accepted socket; returns false after destroying it. */
export type AdmitSocket = (socket: net.Socket) => boolean;

/** A front server for `inner`; listen on the front, never on `inner`. */
export function admittingFront(inner: net.Server, admit: AdmitSocket): net.Server {
  const front = net.createServer({ noDelay: true }, (socket) => {
    if (admit(socket)) inner.emit('connection', socket);
  });
  // An HTTP(S) server starts its request and header timeouts on 'listening'; it never listens itself.
  front.once('listening', () => inner.emit('listening'));
  front.once('close', () => inner.close(() => {}));
  return front;
}
