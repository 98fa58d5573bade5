/**
 * Configuration of the TLS listeners (`tls`, `wss`) and the `certificate` and `psk`
 * authentication providers. Imported by schema.ts.
 */
import { z } from 'zod';

/** Where an identity is taken from in a client certificate. */
export const identitySource = z.enum(['cn', 'san-dns', 'san-uri', 'san-email', 'fingerprint', 'none']);
export type IdentitySource = z.infer<typeof identitySource>;

const tlsVersion = z.enum(['TLSv1.2', 'TLSv1.3']);

/** TLS settings shared by `tls` and `wss` listeners. */
export const tlsSettings = {
  /** PEM server certificate, followed by intermediates. */
  cert: z.string().min(1),
  /** PEM private key of the server certificate. */
  key: z.string().min(1),
  /** CA bundle (PEM, intermediates and roots) that client certificates must chain to. */
  ca: z.string().min(1).optional(),
  minVersion: tlsVersion.default('TLSv1.2'),
  /** OpenSSL cipher list (TLS 1.2 names and TLS_* 1.3 suites). Default: AEAD suites only. */
  ciphers: z.string().min(1).optional(),
  /** Ask clients for a certificate (default: when `ca` is set). */
  requestCert: z.boolean().optional(),
  /** mTLS: refuse clients without a valid certificate. Needs `ca`. */
  requireClientCert: z.boolean().default(false),
  /** Refuse client certificates without the clientAuth extended key usage. */
  requireClientAuthEku: z.boolean().default(false),
  /**
   * Issue TLS session tickets, so clients can resume a session without a full handshake (and
   * without sending their certificate again; the gate still checks the session's certificate,
   * CRLs included). Off by default: every connect is a full handshake, the broker keeps no
   * ticket keys, and a full handshake skips the cost of making tickets nobody uses.
   */
  sessionTickets: z.boolean().default(false),
  crl: z
    .strictObject({
      files: z.array(z.string().min(1)).min(1, 'needs at least one CRL file'),
      /** What to do when a CRL is past its nextUpdate or cannot be read. */
      onExpired: z.enum(['deny', 'keep-last-good']).default('deny'),
      /** Close live connections whose certificate a reloaded CRL revokes. */
      disconnectRevoked: z.boolean().default(true),
    })
    .optional(),
  psk: z
    .strictObject({
      /** Lines of `identity:hexkey`; # starts a comment. */
      file: z.string().min(1),
      hint: z.string().min(1).optional(),
    })
    .optional(),
  reload: z
    .strictObject({
      /** Reload certificate, key, CA, CRL and PSK files when they change on disk. */
      watch: z.boolean().default(true),
      intervalMs: z.number().int().min(50).default(2000),
      /** Reload on SIGHUP. */
      sighup: z.boolean().default(true),
    })
    .prefault({}),
};

export const certificateProvider = z.strictObject({
  provider: z.literal('certificate'),
  /** What becomes the MQTT username. */
  username: identitySource.default('cn'),
  /** The identity the client id is compared with when `bindClientId` is on. */
  clientId: identitySource.default('cn'),
  /** Refuse a CONNECT whose client id is not the mapped identity. */
  bindClientId: z.boolean().default(false),
  /** With san-uri: only URIs with this prefix count (e.g. spiffe://example.org/). */
  uriPrefix: z.string().min(1).optional(),
  roles: z.array(z.string()).default([]),
});

export const pskProvider = z.strictObject({
  provider: z.literal('psk'),
  /** Refuse a CONNECT whose client id is not the PSK identity. */
  bindClientId: z.boolean().default(false),
  roles: z.array(z.string()).default([]),
});

export type CertificateProviderConfig = z.output<typeof certificateProvider>;
export type PskProviderConfig = z.output<typeof pskProvider>;

/** The default TLS 1.3 suites come first and SHA-256 first among them, so PSK can be used. */
export const DEFAULT_CIPHERS = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_CHACHA20_POLY1305_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

export const DEFAULT_PSK_CIPHERS = ['ECDHE-PSK-CHACHA20-POLY1305', 'PSK-AES128-GCM-SHA256', 'PSK-AES256-GCM-SHA384', 'PSK-CHACHA20-POLY1305'].join(':');

/** Cross-field checks of a TLS listener; each issue names its key. */
export function checkTlsListener(
  l: { ca?: string | undefined; requireClientCert: boolean; requestCert?: boolean | undefined; ciphers?: string | undefined; psk?: unknown; crl?: unknown },
  ctx: z.RefinementCtx,
): void {
  if (l.requireClientCert && l.ca === undefined) {
    ctx.addIssue({ code: 'custom', path: ['ca'], message: 'requireClientCert needs a CA bundle (ca: pki/ca-chain.crt)' });
  }
  if (l.requestCert === true && l.ca === undefined) ctx.addIssue({ code: 'custom', path: ['ca'], message: 'requestCert needs a CA bundle' });
  if (l.crl !== undefined && l.ca === undefined) ctx.addIssue({ code: 'custom', path: ['crl'], message: 'a CRL needs a CA bundle (ca:)' });
  if (l.psk !== undefined && l.ciphers !== undefined) {
    const first13 = l.ciphers.split(':').find((c) => c.startsWith('TLS_'));
    if (first13 !== undefined && !first13.endsWith('_SHA256')) {
      ctx.addIssue({ code: 'custom', path: ['ciphers'], message: `with psk the first TLS 1.3 suite must be a SHA-256 one (e.g. TLS_AES_128_GCM_SHA256), not ${first13}` });
    }
  }
}
