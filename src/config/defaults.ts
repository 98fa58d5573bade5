import type { ConfigInput } from './schema.ts';

/**
 * The built-in configuration used when `portcullis start` gets no --config, after Mosquitto 2's
 * local-only mode: one plain listener on 127.0.0.1:1883 that admits local clients anonymously,
 * with allow-all. Nothing listens beyond loopback.
 *
 * Two TLS listeners use the files under pki/ (created on first start when missing, see
 * src/pki/bootstrap.ts) and are never anonymous:
 * - 8883, TLS: a client certificate from the CA, if presented, is verified and authenticates
 *   (`certificate`); otherwise a TLS-PSK identity from pki/private/psk.txt (`psk`). Clients
 *   with neither are refused.
 * - 8884, mTLS: a client certificate is required; its CN is the username.
 *
 * Sessions, queued messages and retained messages are kept durably under data/store (LMDB,
 * flushed before a write counts as done; docs/persistence.md), as with any configuration
 * without a `store` key.
 */
/** Where the built-in defaults read TLS files from, relative to the working directory. */
export const DEFAULT_PKI_DIR = 'pki';

export const builtInDefaults: ConfigInput = {
  listeners: [
    { name: 'local', type: 'tcp', host: '127.0.0.1', port: 1883, auth: ['anonymous'] },
    {
      name: 'tls',
      type: 'tls',
      host: '127.0.0.1',
      port: 8883,
      cert: 'pki/server.crt',
      key: 'pki/private/server.key',
      ca: 'pki/ca-chain.crt',
      psk: { file: 'pki/private/psk.txt' },
      auth: ['certificate', 'psk'],
    },
    {
      name: 'mtls',
      type: 'tls',
      host: '127.0.0.1',
      port: 8884,
      cert: 'pki/server.crt',
      key: 'pki/private/server.key',
      ca: 'pki/ca-chain.crt',
      requireClientCert: true,
      auth: [{ provider: 'certificate', username: 'cn' }],
    },
  ],
  authorizers: ['allow-all'],
  store: { type: 'lmdb', path: 'data/store' },
};
