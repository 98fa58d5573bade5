/**
 * TLS and secure WebSocket listeners with the TLS gate: TLS 1.2+ only, mTLS against a CA
 * bundle, CRLs, PSK identities, and hot reload of every file with setSecureContext. Reloads
 * never touch live connections, except that a CRL which newly revokes a live connection's
 * certificate closes it when `disconnectRevoked` is on.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { WebSocketServer, createWebSocketStream } from 'ws';
import type { AuditEvent } from '../audit/types.ts';
import { DEFAULT_CIPHERS, DEFAULT_PSK_CIPHERS } from '../config/tls-schema.ts';
import type { Logger } from '../log.ts';
import { type CrlState, type GatePolicy, type TlsRefusal, decide, handshakeRefusal, isRevoked } from './tls-gate.ts';
import { type TlsFiles, type TlsMaterial, TlsFileError, loadCrls, loadMaterial, loadPskFile } from './tls-material.ts';
import { closeServer, listen } from './tcp.ts';
import { type AdmitSocket, admittingFront } from './admit.ts';
import { upgradeDeadline } from './websocket.ts';
import type { ConnectionHandle, Listener, OnConnection, PeerInfo, TlsPeerInfo } from './types.ts';

export interface TlsListenerOptions {
  name: string;
  kind: 'tls' | 'wss';
  host: string;
  port: number;
  /** wss only. */
  path?: string;
  maxPayload?: number;
  cert: string;
  key: string;
  ca?: string | undefined;
  minVersion: 'TLSv1.2' | 'TLSv1.3';
  ciphers?: string | undefined;
  requestCert?: boolean | undefined;
  requireClientCert: boolean;
  requireClientAuthEku: boolean;
  /** Issue session tickets (resumption); off: no tickets, no ticket keys, every connect a full handshake. */
  sessionTickets?: boolean | undefined;
  crl?: { files: string[]; onExpired: 'deny' | 'keep-last-good'; disconnectRevoked: boolean } | undefined;
  psk?: { file: string; hint?: string | undefined } | undefined;
  reload: { watch: boolean; intervalMs: number; sighup: boolean };
  handshakeTimeoutMs: number;
  /** Admission control, run on each accepted TCP socket before the TLS handshake starts. */
  admit?: AdmitSocket | undefined;
  /** Where refusals and reloads are recorded. */
  audit: (event: AuditEvent) => void;
  log: Logger;
}

interface LiveConnection {
  socket: tls.TLSSocket;
  info: TlsPeerInfo;
  serials: { serial: string; issuer: string }[];
  /** The broker's handle, once the connection was handed over. */
  handle?: ConnectionHandle;
}

const refusalText: Record<TlsRefusal, string> = {
  'no-certificate': 'no client certificate',
  'unknown-ca': 'client certificate from an unknown CA',
  expired: 'client certificate expired',
  'not-yet-valid': 'client certificate not yet valid',
  revoked: 'client certificate revoked',
  'crl-missing': 'CRL missing',
  'crl-expired': 'CRL expired',
  'no-client-auth-eku': 'client certificate without clientAuth usage',
  'not-verified': 'client certificate not verified',
  'psk-unknown-identity': 'unknown PSK identity',
  'psk-failed': 'PSK handshake failed',
  'psk-not-used': 'PSK not used by the session',
  'protocol-version': "TLS protocol version refused (below the listener's minVersion, TLSv1.2 by default)",
  'handshake-failed': 'TLS handshake failed',
};

/** A `tls` or `wss` listener. Construction reads every file and throws TlsFileError naming a bad one. */
export class TlsListener implements Listener {
  readonly kind: 'tls' | 'wss';
  readonly name: string;
  private server: tls.Server | null = null;
  private front: net.Server | null = null;
  private wss: WebSocketServer | null = null;
  private material: TlsMaterial;
  private crl: CrlState | undefined;
  private pskKeys: Map<string, Buffer> | undefined;
  private readonly policy: GatePolicy;
  private readonly files: TlsFiles;
  private readonly pskSeen = new WeakMap<tls.TLSSocket, { identity?: string; unknown?: string }>();
  private readonly accepted = new WeakMap<tls.TLSSocket, TlsPeerInfo>();
  /** The chain's serials of each accepted connection, by its peer info, for {@link revokedNow}. */
  private readonly chains = new WeakMap<TlsPeerInfo, { serial: string; issuer: string }[]>();
  private readonly live = new Set<LiveConnection>();
  private readonly watched: string[] = [];
  private reloadTimer: NodeJS.Timeout | null = null;
  private crlExpiryWarned = new Set<string>();
  private readonly onSighup = () => void this.reload('SIGHUP');

  constructor(private readonly options: TlsListenerOptions) {
    this.kind = options.kind;
    this.name = options.name;
    this.files = { cert: options.cert, key: options.key, ca: options.ca, crl: options.crl?.files, psk: options.psk?.file };
    const requestCert = options.requestCert ?? options.ca !== undefined;
    this.policy = {
      requestCert,
      requireClientCert: options.requireClientCert,
      requireClientAuthEku: options.requireClientAuthEku,
      crl: options.crl === undefined ? undefined : { onExpired: options.crl.onExpired },
    };
    this.material = loadMaterial(this.files, this.secureOptions());
    if (options.crl !== undefined) this.crl = { index: loadCrls(options.crl.files, this.material.caCerts) };
    if (options.psk !== undefined) this.pskKeys = loadPskFile(options.psk.file);
  }

  private secureOptions(): tls.SecureContextOptions {
    const base = this.options.ciphers ?? DEFAULT_CIPHERS;
    return {
      minVersion: this.options.minVersion, // never below TLS 1.2: the schema only allows 1.2 and 1.3
      ciphers: this.options.psk !== undefined && this.options.ciphers === undefined ? `${base}:${DEFAULT_PSK_CIPHERS}` : base,
      honorCipherOrder: true,
      // Without tickets OpenSSL sends TLS 1.3 "stateful" tickets instead, which refer to a server
      // session cache that Node does not keep (no 'newSession' listener), so nothing resumes; and
      // it skips the stateless tickets' cost, which re-encodes and re-parses the session with the
      // client certificate twice per handshake (about a fifth of an mTLS handshake's CPU).
      // Client-initiated renegotiation (TLS 1.2) is refused outright: each one is a full handshake
      // the client can ask for at will, many per second on one socket.
      secureOptions: crypto.constants.SSL_OP_NO_RENEGOTIATION | (this.options.sessionTickets === true ? 0 : crypto.constants.SSL_OP_NO_TICKET),
    };
  }

  private contextOptions(): tls.TlsOptions {
    const m = this.material;
    return { ...this.secureOptions(), cert: m.cert, key: m.key, ...(m.ca ? { ca: m.ca } : {}) };
  }

  start(onConnection: OnConnection): Promise<{ host: string; port: number }> {
    const serverOptions: tls.TlsOptions = {
      ...this.contextOptions(),
      requestCert: this.policy.requestCert,
      rejectUnauthorized: false, // the gate decides, so each refusal is audited with its reason
      handshakeTimeout: this.options.handshakeTimeoutMs,
      ...(this.options.psk !== undefined
        ? {
            pskCallback: (socket: tls.TLSSocket, identity: string) => this.pskLookup(socket, identity),
            ...(this.options.psk.hint !== undefined ? { pskIdentityHint: this.options.psk.hint } : {}),
          }
        : {}),
    };
    let server: tls.Server;
    if (this.kind === 'tls') {
      server = tls.createServer(serverOptions, (socket) => {
        const info = this.accepted.get(socket);
        if (info === undefined) return; // refused by the gate
        socket.setNoDelay(true);
        this.handedOver(socket, onConnection(socket, this.peerInfo(socket, info)));
      });
    } else {
      const httpsServer = https.createServer({ ...serverOptions, ...upgradeDeadline(this.options.handshakeTimeoutMs) }, (_req, res) => {
        res.writeHead(426, { 'content-type': 'text/plain' }).end('MQTT over WebSocket only\n');
      });
      const wss = new WebSocketServer({
        server: httpsServer,
        path: this.options.path ?? '/mqtt',
        ...(this.options.maxPayload !== undefined ? { maxPayload: this.options.maxPayload } : {}),
        perMessageDeflate: false,
        handleProtocols: (protocols) => (protocols.has('mqtt') ? 'mqtt' : protocols.has('mqttv3.1') ? 'mqttv3.1' : false),
      });
      wss.on('connection', (ws, req) => {
        const socket = req.socket as tls.TLSSocket;
        const info = this.accepted.get(socket);
        if (info === undefined) return ws.terminate();
        socket.setNoDelay(true);
        this.handedOver(socket, onConnection(createWebSocketStream(ws), this.peerInfo(socket, info)));
      });
      this.wss = wss;
      server = httpsServer;
    }
    // The gate runs first, before the connection reaches MQTT (or HTTP for wss).
    server.prependListener('secureConnection', (socket: tls.TLSSocket) => this.gate(socket));
    server.on('tlsClientError', (err: Error & { code?: string }, socket: tls.TLSSocket) => this.handshakeFailed(err, socket));
    this.server = server;
    this.startWatching();
    // Admission (caps, connect rate, IP bans) decides on the raw socket, before any TLS work.
    this.front = this.options.admit === undefined ? server : admittingFront(server, this.options.admit);
    return listen(this.front, this.options.host, this.options.port);
  }

  async stop(): Promise<void> {
    this.stopWatching();
    this.wss?.close();
    await closeServer(this.front);
  }

  private handedOver(socket: tls.TLSSocket, handle: ConnectionHandle | void): void {
    if (handle === undefined) return;
    for (const live of this.live) if (live.socket === socket) live.handle = handle;
  }

  /** Live connections that passed the gate (for tests and $SYS). */
  get liveConnections(): number {
    return this.live.size;
  }

  private peerInfo(socket: tls.TLSSocket, info: TlsPeerInfo): PeerInfo {
    return { listener: this.name, transport: this.kind, remoteAddress: socket.remoteAddress ?? '', remotePort: socket.remotePort ?? 0, tls: info };
  }

  private pskLookup(socket: tls.TLSSocket, identity: string): Buffer | null {
    const key = this.pskKeys?.get(identity);
    if (key === undefined) {
      this.pskSeen.set(socket, { unknown: identity });
      return null;
    }
    this.pskSeen.set(socket, { identity });
    return key;
  }

  private gate(socket: tls.TLSSocket): void {
    const result = decide(socket, this.policy, this.crl, this.pskSeen.get(socket) ?? {});
    if (!result.ok) {
      this.refuse(socket, result.refusal, result.detail, result.info);
      return;
    }
    if (result.crlExpired !== undefined) this.warnCrlExpired(result.crlExpired);
    this.accepted.set(socket, result.info);
    this.chains.set(result.info, result.serials);
    const live: LiveConnection = { socket, info: result.info, serials: result.serials };
    this.live.add(live);
    socket.once('close', () => this.live.delete(live));
  }

  private refuse(socket: tls.TLSSocket, refusal: TlsRefusal, detail: string, info: TlsPeerInfo | undefined, pskIdentity?: string): void {
    const subject = info?.subject?.CN;
    this.options.log.info({ listener: this.name, remote: socket.remoteAddress, refusal, detail }, `TLS connection refused: ${refusalText[refusal]}`);
    this.options.audit({
      event: 'tls',
      action: 'handshake',
      decision: 'deny',
      reason: `${refusalText[refusal]}: ${detail}`,
      listener: this.name,
      remoteAddress: socket.remoteAddress ?? '',
      remotePort: socket.remotePort ?? 0,
      ...(info?.fingerprint256 !== undefined ? { certFingerprint: info.fingerprint256 } : {}),
      ...(subject !== undefined ? { certSubject: `CN=${String(subject)}` } : {}),
      detail: { refusal, ...(info?.protocol ? { protocol: info.protocol } : {}), ...(pskIdentity !== undefined ? { pskIdentity } : {}) },
    });
    socket.destroy();
  }

  private handshakeFailed(err: Error & { code?: string }, socket: tls.TLSSocket): void {
    const seen = this.pskSeen.get(socket);
    let refusal = handshakeRefusal(err);
    let detail = err.code ?? err.message;
    if (refusal === 'handshake-failed' && seen?.unknown !== undefined) {
      refusal = 'psk-unknown-identity';
      detail = `unknown PSK identity '${seen.unknown.slice(0, 128)}'`;
    } else if (refusal === 'handshake-failed' && seen?.identity !== undefined) {
      refusal = 'psk-failed';
      detail = `handshake with PSK identity '${seen.identity}' failed (wrong key?): ${err.code ?? err.message}`;
    }
    this.refuse(socket, refusal, detail, undefined, seen?.identity ?? seen?.unknown);
  }

  private warnCrlExpired(detail: string): void {
    if (this.crlExpiryWarned.has(detail)) return;
    this.crlExpiryWarned.add(detail);
    this.options.log.error({ listener: this.name, detail }, 'CRL EXPIRED: keeping the last good CRL (crl.onExpired: keep-last-good); publish a new CRL now');
    this.options.audit({ event: 'reload', action: 'crl', decision: 'deny', reason: `${detail}: keeping the last good CRL`, listener: this.name, detail: { onExpired: 'keep-last-good' } });
  }

  // ── reload ────────────────────────────────────────────────────────────────

  private startWatching(): void {
    if (this.options.reload.sighup) process.on('SIGHUP', this.onSighup);
    if (!this.options.reload.watch) return;
    const files = [this.files.cert, this.files.key, this.files.ca, ...(this.files.crl ?? []), this.files.psk].filter((f): f is string => f !== undefined);
    for (const file of new Set(files)) {
      fs.watchFile(file, { interval: this.options.reload.intervalMs, persistent: false }, (curr, prev) => {
        if (curr.mtimeMs === prev.mtimeMs && curr.size === prev.size && curr.ino === prev.ino) return;
        // Files are often replaced together (certificate and key): reload once, shortly after.
        if (this.reloadTimer !== null) clearTimeout(this.reloadTimer);
        this.reloadTimer = setTimeout(() => {
          this.reloadTimer = null;
          void this.reload(`${file} changed`);
        }, 100);
        this.reloadTimer.unref();
      });
      this.watched.push(file);
    }
  }

  private stopWatching(): void {
    process.off('SIGHUP', this.onSighup);
    for (const file of this.watched.splice(0)) fs.unwatchFile(file);
    if (this.reloadTimer !== null) clearTimeout(this.reloadTimer);
  }

  /**
   * Re-reads every file. Each part (certificate/key/CA, CRLs, PSK file) is replaced only when
   * it loads completely; a bad file keeps the last good one, is logged and audited.
   * Returns true when everything reloaded.
   */
  async reload(cause: string): Promise<boolean> {
    let ok = true;
    const fail = (what: string, err: unknown) => {
      ok = false;
      const file = err instanceof TlsFileError ? err.file : undefined;
      this.options.log.error({ listener: this.name, cause, file, err: (err as Error).message }, `${what} reload failed: keeping the last good ${what}`);
      this.options.audit({
        event: 'reload',
        action: what === 'PSK file' ? 'psk' : what === 'CRL' ? 'crl' : 'tls',
        decision: 'deny',
        reason: `${(err as Error).message}: keeping the last good ${what}`,
        listener: this.name,
        ...(file !== undefined ? { detail: { file } } : {}),
      });
    };
    try {
      const material = loadMaterial(this.files, this.secureOptions());
      this.material = material;
      this.server?.setSecureContext(this.contextOptions());
    } catch (err) {
      fail('certificate, key and CA', err);
    }
    if (this.options.crl !== undefined) {
      try {
        const index = loadCrls(this.options.crl.files, this.material.caCerts);
        this.crl = { index };
        this.crlExpiryWarned.clear();
        if (this.options.crl.disconnectRevoked) this.disconnectRevoked(index);
      } catch (err) {
        fail('CRL', err);
        if (this.options.crl.onExpired === 'deny' && this.crl !== undefined) {
          // Fail closed, loudly: certificate clients are refused until a readable CRL is back.
          this.crl = { index: this.crl.index, unavailable: (err as Error).message };
          this.options.log.error({ listener: this.name }, 'CRL UNAVAILABLE: refusing certificate clients until it can be read (crl.onExpired: deny)');
        }
      }
    }
    if (this.options.psk !== undefined) {
      try {
        this.pskKeys = loadPskFile(this.options.psk.file);
      } catch (err) {
        fail('PSK file', err);
      }
    }
    if (ok) {
      this.options.log.info({ listener: this.name, cause }, 'TLS material reloaded');
      this.options.audit({ event: 'reload', action: 'tls', decision: 'allow', reason: `TLS material reloaded (${cause})`, listener: this.name });
    }
    return ok;
  }

  /**
   * True when the current CRLs revoke a certificate of the chain this connection presented.
   * Asked after the connection is gone, before its delayed will is published: a will must not
   * outlive the revocation of the certificate that sent it.
   */
  revokedNow(info: TlsPeerInfo): boolean {
    const serials = this.chains.get(info);
    return this.crl !== undefined && serials !== undefined && isRevoked(serials, this.crl.index);
  }

  private disconnectRevoked(index: CrlState['index']): void {
    for (const conn of [...this.live]) {
      if (!isRevoked(conn.serials, index)) continue;
      this.live.delete(conn);
      this.options.log.warn({ listener: this.name, remote: conn.socket.remoteAddress, subject: conn.info.subject?.CN }, 'certificate revoked: closing the live connection');
      if (conn.handle !== undefined) {
        // The broker closes it as a security disconnect: audited there, the will discarded.
        conn.handle.securityClose('revoked', 'client certificate revoked by a reloaded CRL: live connection closed');
        setTimeout(() => conn.socket.destroy(), 1000).unref();
        continue;
      }
      this.options.audit({
        event: 'disconnect',
        action: 'revoked',
        decision: 'deny',
        reason: 'client certificate revoked by a reloaded CRL: live connection closed',
        listener: this.name,
        remoteAddress: conn.socket.remoteAddress ?? '',
        remotePort: conn.socket.remotePort ?? 0,
        ...(conn.info.fingerprint256 !== undefined ? { certFingerprint: conn.info.fingerprint256 } : {}),
        ...(conn.info.subject?.CN !== undefined ? { certSubject: `CN=${String(conn.info.subject.CN)}` } : {}),
      });
      conn.socket.destroy();
    }
  }
}
