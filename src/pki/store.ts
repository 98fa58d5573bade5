/**
 * The on-disk layout that `portcullis pki` writes, and its plain-text index of issued and
 * revoked certificates. Private keys are written with mode 0600 under paths that .gitignore
 * excludes (`*.key`, `private/`).
 *
 *   pki/ca.crt                 the issuing CA (the intermediate when there is one)
 *   pki/ca-chain.crt           the CA bundle for listeners: issuing CA, then the root
 *   pki/root-ca.crt            the root, only with `pki init --intermediate`
 *   pki/private/*.key          CA and server keys, mode 0600
 *   pki/server.crt             server certificate followed by the intermediate, if any
 *   pki/clients/NAME.crt|.key  client certificates and keys (keys mode 0600)
 *   pki/crl.pem                the CRL written by `pki crl`
 *   pki/index.txt              one line per issued certificate
 */
import fs from 'node:fs';
import path from 'node:path';
import { ensureDir, writeAtomic } from '../util/fs.ts';

export { writeAtomic };

export class PkiError extends Error {
  constructor(
    readonly code: 'ERR_PKI_EXISTS' | 'ERR_PKI_NO_CA' | 'ERR_PKI_NOT_FOUND' | 'ERR_PKI_BAD_INPUT' | 'ERR_PKI_INDEX',
    message: string,
  ) {
    super(message);
  }
}

export interface IndexEntry {
  status: 'valid' | 'revoked';
  serial: string;
  kind: 'root' | 'ca' | 'server' | 'client';
  notBefore: string;
  notAfter: string;
  revokedAt?: string;
  subject: string;
  file: string;
}

export const paths = (dir: string) => ({
  dir,
  ca: path.join(dir, 'ca.crt'),
  caKey: path.join(dir, 'private', 'ca.key'),
  caChain: path.join(dir, 'ca-chain.crt'),
  root: path.join(dir, 'root-ca.crt'),
  rootKey: path.join(dir, 'private', 'root-ca.key'),
  server: path.join(dir, 'server.crt'),
  serverKey: path.join(dir, 'private', 'server.key'),
  clients: path.join(dir, 'clients'),
  crl: path.join(dir, 'crl.pem'),
  index: path.join(dir, 'index.txt'),
  psk: path.join(dir, 'private', 'psk.txt'),
});

const HEADER = '# portcullis pki index: status\tserial\tkind\tnotBefore\tnotAfter\trevokedAt\tsubject\tfile\n';

export function readIndex(dir: string): IndexEntry[] {
  const file = paths(dir).index;
  if (!fs.existsSync(file)) return [];
  const entries: IndexEntry[] = [];
  fs.readFileSync(file, 'utf8')
    .split('\n')
    .forEach((line, i) => {
      if (line.trim() === '' || line.startsWith('#')) return;
      const f = line.split('\t');
      const [status, serial, kind, notBefore, notAfter, revokedAt, subject, name] = f;
      if (f.length !== 8 || (status !== 'V' && status !== 'R') || !['root', 'ca', 'server', 'client'].includes(kind ?? '')) {
        throw new PkiError('ERR_PKI_INDEX', `${file}:${i + 1}: malformed index line`);
      }
      entries.push({
        status: status === 'V' ? 'valid' : 'revoked',
        serial: serial as string,
        kind: kind as IndexEntry['kind'],
        notBefore: notBefore as string,
        notAfter: notAfter as string,
        ...(revokedAt ? { revokedAt } : {}),
        subject: subject as string,
        file: name as string,
      });
    });
  return entries;
}

export function writeIndex(dir: string, entries: IndexEntry[]): void {
  const body = entries
    .map((e) => [e.status === 'valid' ? 'V' : 'R', e.serial, e.kind, e.notBefore, e.notAfter, e.revokedAt ?? '', e.subject.replace(/[\t\n]/g, ' '), e.file].join('\t'))
    .join('\n');
  writeAtomic(paths(dir).index, HEADER + body + (body ? '\n' : ''), 0o644);
}


export function writeSecret(file: string, data: string): void {
  writeAtomic(file, data, 0o600);
}

/** A file name for a certificate subject: anything but [A-Za-z0-9._-] becomes '_'. */
export function safeName(name: string): string {
  const s = name.replace(/[^A-Za-z0-9._-]/g, '_').replace(/^\.+/, '_');
  return s.length === 0 ? '_' : s.slice(0, 128);
}
