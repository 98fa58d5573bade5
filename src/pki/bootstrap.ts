/**
 * First start on a fresh machine: the built-in defaults serve TLS on 8883 and mTLS on 8884
 * from pki/. When no server certificate exists there, a development CA and a server
 * certificate for localhost/127.0.0.1 are created, and the log says so loudly.
 */
import fs from 'node:fs';
import type { Logger } from '../log.ts';
import { initPki, issueServer } from './ca.ts';
import { paths, writeSecret } from './store.ts';

export interface BootstrapResult {
  createdCa: boolean;
  createdServer: boolean;
  createdPskFile: boolean;
}

export function ensureDevelopmentPki(dir: string, log: Logger): BootstrapResult {
  const p = paths(dir);
  const result: BootstrapResult = { createdCa: false, createdServer: false, createdPskFile: false };
  if (!fs.existsSync(p.server) || !fs.existsSync(p.serverKey)) {
    if (!fs.existsSync(p.ca) || !fs.existsSync(p.caKey)) {
      initPki({ dir, cn: 'Portcullis Development CA' });
      result.createdCa = true;
    }
    issueServer({ dir, dns: ['localhost'], ip: ['127.0.0.1'] });
    result.createdServer = true;
    log.warn(
      { dir, ca: p.ca, server: p.server },
      `no server certificate found: created a DEVELOPMENT ${result.createdCa ? 'CA and ' : ''}server certificate for localhost/127.0.0.1 under ${dir}/. ` +
        `Clients trust ${p.caChain}; issue device certificates with 'portcullis pki client --cn NAME'. Replace them with real certificates for production (docs/tls.md).`,
    );
  }
  if (!fs.existsSync(p.psk)) {
    writeSecret(p.psk, '# TLS-PSK identities for the 8883 listener: identity:hexkey per line. Add one with: portcullis pki psk NAME\n');
    result.createdPskFile = true;
  }
  return result;
}
