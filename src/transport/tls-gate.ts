/**
 * The TLS gate: after the handshake, decides whether a connection may go on to MQTT. The
 * server runs with `rejectUnauthorized: false`, so every refusal is decided here and has an
 * exact, stable reason for the audit log instead of an opaque handshake failure.
 */
import type tls from 'node:tls';
import type { CrlIndex } from './tls-material.ts';
import type { TlsPeerInfo } from './types.ts';

/** Why the gate refused a connection. Stable: tests and audit consumers key on these. */
export type TlsRefusal =
  | 'no-certificate'
  | 'unknown-ca'
  | 'expired'
  | 'not-yet-valid'
  | 'revoked'
  | 'crl-missing'
  | 'crl-expired'
  | 'no-client-auth-eku'
  | 'not-verified'
  | 'psk-unknown-identity'
  | 'psk-failed'
  | 'psk-not-used'
  | 'protocol-version'
  | 'handshake-failed';

export const CLIENT_AUTH_OID = '1.3.6.1.5.5.7.3.2';

export interface GatePolicy {
  requestCert: boolean;
  requireClientCert: boolean;
  requireClientAuthEku: boolean;
  crl: { onExpired: 'deny' | 'keep-last-good' } | undefined;
}

export interface CrlState {
  index: CrlIndex;
  /** Set while the CRL files cannot be read (with onExpired: deny, every certificate is refused). */
  unavailable?: string;
}

export type GateResult =
  | { ok: true; info: TlsPeerInfo; serials: { serial: string; issuer: string }[]; crlExpired?: string }
  | { ok: false; refusal: TlsRefusal; detail: string; info: TlsPeerInfo };

const UNKNOWN_CA = new Set([
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_SIGNATURE_FAILURE',
  'CERT_UNTRUSTED',
  'CERT_CHAIN_TOO_LONG',
  'INVALID_CA',
]);

export function normalizeSerial(serial: string): string {
  return serial.replace(/:/g, '').toLowerCase().replace(/^0+(?=.)/, '');
}

/**
 * The client's leaf certificate, read once per connection. Measured per fresh connection
 * (Node 20), `getPeerCertificate(false)` costs ~70 µs; `getPeerX509Certificate()` ~200 µs on its
 * first call; `getPeerCertificate(true)` builds the whole chain and costs several times more, so
 * it is called only when CRLs need the chain.
 */
export function peerCertificate(socket: tls.TLSSocket): tls.PeerCertificate | undefined {
  const peer = socket.getPeerCertificate(false);
  return peer === null || peer === undefined || peer.raw === undefined ? undefined : peer;
}

/** What the handshake established, in the shape the broker's PeerInfo carries. */
export function describePeer(socket: tls.TLSSocket, pskIdentity: string | undefined, peer: tls.PeerCertificate | undefined): TlsPeerInfo {
  const cipher = socket.getCipher();
  const info: TlsPeerInfo = { protocol: socket.getProtocol(), authorized: false, ...(cipher ? { cipher: cipher.name } : {}) };
  if (pskIdentity !== undefined) {
    info.pskIdentity = pskIdentity;
    return info;
  }
  if (peer === undefined || peer.raw === undefined) return info;
  info.authorized = socket.authorized;
  if (socket.authorizationError) info.authorizationError = String(socket.authorizationError);
  info.subject = flatten(peer.subject);
  info.issuer = flatten(peer.issuer);
  if (peer.subjectaltname) info.subjectAltNames = splitAltNames(peer.subjectaltname);
  info.serialNumber = normalizeSerial(peer.serialNumber);
  info.fingerprint256 = peer.fingerprint256;
  info.validTo = new Date(peer.valid_to).toISOString();
  return info;
}

function flatten(name: tls.Certificate | undefined): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  if (name === undefined || name === null) return out;
  for (const [k, v] of Object.entries(name)) if (typeof v === 'string' || Array.isArray(v)) out[k] = v as string | string[];
  return out;
}

/**
 * Splits Node's `subjectaltname` ("DNS:a, URI:spiffe://x, email:e") into entries. Node quotes
 * values that contain a comma or quote (JSON style), so those are unquoted rather than split.
 */
export function splitAltNames(s: string): string[] {
  const out: string[] = [];
  const re = /\s*([A-Za-z ]+):("(?:[^"\\]|\\.)*"|[^,]*)(?:,|$)/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(s)) !== null && m[0] !== '') {
    const value = (m[2] as string).startsWith('"') ? (JSON.parse(m[2] as string) as string) : (m[2] as string);
    out.push(`${(m[1] as string).trim()}:${value}`);
  }
  return out;
}

/** Decides a certificate connection. `psk` is set when the PSK callback accepted an identity. */
export function decide(socket: tls.TLSSocket, policy: GatePolicy, crl: CrlState | undefined, psk: { identity?: string; unknown?: string }, now = Date.now()): GateResult {
  if (psk.identity !== undefined) {
    const info = describePeer(socket, psk.identity, undefined);
    // Proof that the PSK authenticated: no certificate was exchanged, and on TLS 1.2 a PSK suite was chosen.
    const certificateSent = peerCertificate(socket) !== undefined;
    const tls12 = socket.getProtocol() === 'TLSv1.2';
    if (certificateSent || (tls12 && !(info.cipher ?? '').includes('PSK'))) {
      return { ok: false, refusal: 'psk-not-used', detail: 'the PSK identity was offered but the session was not authenticated by it', info };
    }
    return { ok: true, info, serials: [] };
  }
  const peer = peerCertificate(socket);
  const info = describePeer(socket, undefined, peer);
  if (psk.unknown !== undefined) {
    // TLS 1.3 falls back to a certificate handshake on an unknown identity: refuse it, never silently.
    return { ok: false, refusal: 'psk-unknown-identity', detail: `unknown PSK identity '${psk.unknown.slice(0, 128)}'`, info };
  }
  if (!policy.requestCert) return { ok: true, info, serials: [] };
  if (peer === undefined || peer.raw === undefined) {
    if (policy.requireClientCert) return { ok: false, refusal: 'no-certificate', detail: 'no client certificate presented', info };
    return { ok: true, info, serials: [] };
  }
  if (!socket.authorized) {
    const code = String(socket.authorizationError ?? 'UNKNOWN');
    if (code === 'CERT_HAS_EXPIRED') return { ok: false, refusal: 'expired', detail: `client certificate expired at ${info.validTo}`, info };
    if (code === 'CERT_NOT_YET_VALID') return { ok: false, refusal: 'not-yet-valid', detail: 'client certificate is not yet valid', info };
    if (code === 'CERT_REVOKED') return { ok: false, refusal: 'revoked', detail: 'client certificate is revoked', info };
    if (UNKNOWN_CA.has(code)) return { ok: false, refusal: 'unknown-ca', detail: `client certificate does not chain to the configured CA bundle (${code})`, info };
    return { ok: false, refusal: 'not-verified', detail: `client certificate not verified (${code})`, info };
  }
  if (policy.requireClientAuthEku) {
    const eku = peer.ext_key_usage ?? [];
    if (!eku.includes(CLIENT_AUTH_OID)) return { ok: false, refusal: 'no-client-auth-eku', detail: 'client certificate lacks the clientAuth extended key usage', info };
  }
  // Without CRLs nothing needs the chain; building it costs more than the rest of the gate.
  if (policy.crl === undefined || crl === undefined) return { ok: true, info, serials: [] };
  // The verified chain, leaf first, each with the fingerprint of the CA that issued it.
  const serials: { serial: string; issuer: string }[] = [];
  let cert: tls.DetailedPeerCertificate = socket.getPeerCertificate(true);
  for (let depth = 0; depth < 10; depth++) {
    const issuer = cert.issuerCertificate;
    if (issuer === undefined || issuer === null || issuer === cert || issuer.fingerprint256 === cert.fingerprint256) break;
    serials.push({ serial: normalizeSerial(cert.serialNumber), issuer: issuer.fingerprint256 });
    cert = issuer;
  }
  if (crl.unavailable !== undefined && policy.crl.onExpired === 'deny') {
    return { ok: false, refusal: 'crl-missing', detail: `CRL unavailable: ${crl.unavailable}`, info };
  }
  let crlExpired: string | undefined;
  for (const [i, { serial, issuer }] of serials.entries()) {
    const list = crl.index.get(issuer);
    if (list === undefined) {
      if (i === 0) return { ok: false, refusal: 'crl-missing', detail: 'no CRL from the CA that issued this certificate', info };
      continue; // a CRL for an intermediate's issuer is optional
    }
    if (list.nextUpdate !== undefined && list.nextUpdate.getTime() < now) {
      const detail = `CRL ${list.file} from ${list.issuer} expired at ${list.nextUpdate.toISOString()}`;
      if (policy.crl.onExpired === 'deny') return { ok: false, refusal: 'crl-expired', detail, info };
      crlExpired = detail;
    }
    if (list.revoked.has(serial)) {
      return { ok: false, refusal: 'revoked', detail: i === 0 ? 'client certificate is revoked' : 'an intermediate CA of the client certificate is revoked', info };
    }
  }
  return { ok: true, info, serials, ...(crlExpired !== undefined ? { crlExpired } : {}) };
}

/** True when any certificate in a connection's chain is on a CRL. */
export function isRevoked(serials: { serial: string; issuer: string }[], index: CrlIndex): boolean {
  return serials.some(({ serial, issuer }) => index.get(issuer)?.revoked.has(serial) === true);
}

/** Maps a handshake error to a refusal. */
export function handshakeRefusal(err: Error & { code?: string }): TlsRefusal {
  const text = `${err.code ?? ''} ${err.message}`.toLowerCase();
  if (text.includes('unsupported_protocol') || text.includes('unsupported protocol') || text.includes('version too low') || text.includes('no protocols available')) {
    return 'protocol-version';
  }
  return 'handshake-failed';
}
