/**
 * The files behind a TLS listener: server certificate and key, CA bundle, CRLs and the PSK
 * file. Everything is read and checked before it replaces what is live, so a bad file keeps
 * the last good material.
 */
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import tls from 'node:tls';
import { type LoadedCrl, pemBlocks, readCrlFile } from '../pki/crl.ts';

/** A file that could not be used; `option` is the configuration key that names it. */
export class TlsFileError extends Error {
  readonly code = 'ERR_PORTCULLIS_TLS_FILE';
  constructor(
    readonly option: string,
    readonly file: string,
    message: string,
  ) {
    super(message);
  }
}

export interface TlsFiles {
  cert: string;
  key: string;
  ca?: string | undefined;
  crl?: string[] | undefined;
  psk?: string | undefined;
}

export interface TlsMaterial {
  cert: Buffer;
  key: Buffer;
  ca?: Buffer;
  caCerts: X509Certificate[];
}

function read(option: string, file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new TlsFileError(option, file, `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/** Reads and checks the certificate, key and CA bundle; throws TlsFileError naming the file. */
export function loadMaterial(files: TlsFiles, secureOptions: tls.SecureContextOptions): TlsMaterial {
  const cert = read('cert', files.cert);
  const key = read('key', files.key);
  if (pemBlocks(cert.toString('utf8'), 'CERTIFICATE').length === 0) throw new TlsFileError('cert', files.cert, `${files.cert} holds no PEM certificate`);
  if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(key.toString('utf8'))) throw new TlsFileError('key', files.key, `${files.key} holds no PEM private key`);
  let ca: Buffer | undefined;
  const caCerts: X509Certificate[] = [];
  if (files.ca !== undefined) {
    ca = read('ca', files.ca);
    const blocks = pemBlocks(ca.toString('utf8'), 'CERTIFICATE');
    if (blocks.length === 0) throw new TlsFileError('ca', files.ca, `${files.ca} holds no PEM certificate`);
    for (const [i, block] of blocks.entries()) {
      try {
        caCerts.push(new X509Certificate(block));
      } catch (err) {
        throw new TlsFileError('ca', files.ca, `${files.ca}: certificate #${i + 1} cannot be parsed: ${(err as Error).message}`);
      }
    }
  }
  try {
    tls.createSecureContext({ ...secureOptions, cert, key, ...(ca ? { ca } : {}) });
  } catch (err) {
    const message = (err as Error).message;
    const option = /key/i.test(message) ? 'key' : 'cert';
    throw new TlsFileError(option, option === 'key' ? files.key : files.cert, `${files.cert} / ${files.key}: ${message}`);
  }
  return { cert, key, ...(ca ? { ca } : {}), caCerts };
}

/** CRLs keyed by the SHA-256 fingerprint of the CA that signed them. */
export type CrlIndex = Map<string, LoadedCrl>;

export function loadCrls(files: string[], caCerts: X509Certificate[]): CrlIndex {
  const index: CrlIndex = new Map();
  for (const file of files) {
    let crls: LoadedCrl[];
    try {
      crls = readCrlFile(file, caCerts);
    } catch (err) {
      throw new TlsFileError('crl.files', file, (err as Error).message);
    }
    for (const crl of crls) {
      const previous = index.get(crl.issuerFingerprint);
      if (previous === undefined || previous.thisUpdate < crl.thisUpdate) index.set(crl.issuerFingerprint, crl);
    }
  }
  return index;
}

/**
 * Reads a PSK file: `identity:hexkey` per line, # comments. Identities are printable ASCII
 * without ':' (at most 128 bytes); keys are 16 to 64 bytes of hex. Errors name file and line
 * but never echo a key.
 */
export function loadPskFile(file: string): Map<string, Buffer> {
  const text = read('psk.file', file).toString('utf8');
  const keys = new Map<string, Buffer>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const at = `${file}:${i + 1}`;
    const sep = line.indexOf(':');
    if (sep <= 0) throw new TlsFileError('psk.file', file, `${at}: expected identity:hexkey`);
    const identity = line.slice(0, sep);
    const hex = line.slice(sep + 1).trim();
    if (!/^[\x21-\x7e]{1,128}$/.test(identity)) throw new TlsFileError('psk.file', file, `${at}: the identity must be 1-128 printable ASCII characters`);
    if (!/^([0-9a-fA-F]{2}){16,64}$/.test(hex)) throw new TlsFileError('psk.file', file, `${at}: the key must be 16 to 64 bytes of hex`);
    if (keys.has(identity)) throw new TlsFileError('psk.file', file, `${at}: identity ${identity} appears twice`);
    keys.set(identity, Buffer.from(hex, 'hex'));
  });
  return keys;
}
