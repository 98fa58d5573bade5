/**
 * CRL writing and reading with @peculiar/x509 (node-forge has no CRL support). This is the only
 * file that knows @peculiar/x509.
 */
import 'reflect-metadata';
import { createPrivateKey, createPublicKey, verify, webcrypto, X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import * as x509 from '@peculiar/x509';
import forge from 'node-forge';
import { normalizeSerial } from './ca.ts';
import { PkiError, paths, readIndex, writeAtomic } from './store.ts';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const RSA_SHA256 = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
const ECDSA_P256_SHA256 = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };

async function signCrl(caCertPem: string, caKeyPem: string, serials: { serial: string; revokedAt?: string }[], nextUpdate: Date, now: Date): Promise<string> {
  const algorithm = createPrivateKey(caKeyPem).asymmetricKeyType === 'ec' ? ECDSA_P256_SHA256 : RSA_SHA256;
  const key = await webcrypto.subtle.importKey('pkcs8', createPrivateDer(caKeyPem), algorithm, false, ['sign']);
  const ca = new x509.X509Certificate(caCertPem);
  const crl = await x509.X509CrlGenerator.create({
    issuer: ca.subjectName,
    thisUpdate: now,
    nextUpdate,
    signingAlgorithm: algorithm,
    signingKey: key as unknown as x509.X509CrlCreateParams['signingKey'],
    entries: serials.map((s) => ({ serialNumber: s.serial, revocationDate: s.revokedAt ? new Date(s.revokedAt) : now })),
  });
  return x509.PemConverter.encode(crl.rawData, 'X509 CRL');
}

function createPrivateDer(pemText: string): Buffer {
  return Buffer.from(pemText.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
}

export interface CrlOptions {
  dir: string;
  /** Days until nextUpdate (default 30). */
  days?: number;
  /** Or an exact nextUpdate. */
  nextUpdate?: Date;
  /** Where to write; default pki/crl.pem. */
  out?: string;
  now?: Date;
}

/**
 * Writes the issuing CA's CRL (and, with an intermediate, the root's CRL after it) to one PEM
 * file. Returns the file and the number of revoked serials.
 */
export async function writeCrl(o: CrlOptions): Promise<{ file: string; revoked: number; nextUpdate: Date }> {
  const p = paths(o.dir);
  if (!fs.existsSync(p.ca) || !fs.existsSync(p.caKey)) throw new PkiError('ERR_PKI_NO_CA', `no CA in ${o.dir}: run 'portcullis pki init' first`);
  const now = o.now ?? new Date();
  const nextUpdate = o.nextUpdate ?? new Date(now.getTime() + (o.days ?? 30) * 24 * 3600 * 1000);
  const entries = readIndex(o.dir).filter((e) => e.status === 'revoked');
  const hasRoot = fs.existsSync(p.root);
  const leaves = entries.filter((e) => e.kind === 'client' || e.kind === 'server' || (!hasRoot && e.kind === 'ca'));
  let out = await signCrl(fs.readFileSync(p.ca, 'utf8'), fs.readFileSync(p.caKey, 'utf8'), leaves, nextUpdate, now);
  if (hasRoot && fs.existsSync(p.rootKey)) {
    const cas = entries.filter((e) => e.kind === 'ca');
    out += '\n' + (await signCrl(fs.readFileSync(p.root, 'utf8'), fs.readFileSync(p.rootKey, 'utf8'), cas, nextUpdate, now));
  }
  const file = o.out ?? p.crl;
  writeAtomic(file, out.endsWith('\n') ? out : out + '\n', 0o644);
  return { file, revoked: leaves.length, nextUpdate };
}

/** A parsed, signature-checked CRL. */
export interface LoadedCrl {
  /** SHA-256 fingerprint of the CA certificate that signed it. */
  issuerFingerprint: string;
  issuer: string;
  thisUpdate: Date;
  nextUpdate?: Date;
  revoked: Set<string>;
  file: string;
}

/** Splits a PEM bundle into its blocks of the given label. */
export function pemBlocks(text: string, label: string): string[] {
  const re = new RegExp(`-----BEGIN ${label}-----[\\s\\S]*?-----END ${label}-----`, 'g');
  return text.match(re) ?? [];
}

/**
 * Reads every CRL in a PEM file and checks each one's signature against the CA bundle. Throws
 * with the file name when the file is unreadable, holds no CRL, or a CRL was not signed by
 * one of the CAs.
 */
export function readCrlFile(file: string, cas: X509Certificate[]): LoadedCrl[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read CRL ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const blocks = pemBlocks(text, 'X509 CRL');
  if (blocks.length === 0) throw new Error(`${file} holds no PEM CRL (-----BEGIN X509 CRL-----)`);
  return blocks.map((block, i) => {
    let crl: x509.X509Crl;
    try {
      crl = new x509.X509Crl(block);
    } catch (err) {
      throw new Error(`${file}: CRL #${i + 1} cannot be parsed: ${(err as Error).message}`);
    }
    const issuer = cas.find((ca) => sameName(ca.subject, crl.issuer) && verifySync(crl, ca));
    if (issuer === undefined) throw new Error(`${file}: CRL #${i + 1} (issuer ${crl.issuer}) is not signed by any CA in the CA bundle`);
    return {
      issuerFingerprint: issuer.fingerprint256,
      issuer: crl.issuer,
      thisUpdate: crl.thisUpdate,
      ...(crl.nextUpdate ? { nextUpdate: crl.nextUpdate } : {}),
      revoked: new Set(crl.entries.map((e) => normalizeSerial(e.serialNumber))),
      file,
    };
  });
}

function sameName(nodeSubject: string, x509Name: string): boolean {
  const a = nodeSubject.split('\n').map((s) => s.trim()).filter(Boolean).sort();
  const b = new x509.Name(x509Name).toString().split(/,\s*(?=[A-Za-z0-9.]+=)/).map((s) => s.trim()).filter(Boolean).sort();
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** RSA/ECDSA signature check of the CRL body with Node's crypto (synchronous). */
function verifySync(crl: x509.X509Crl, ca: X509Certificate): boolean {
  try {
    // CertificateList ::= SEQUENCE { tbsCertList, signatureAlgorithm, signatureValue }
    const outer = forge.asn1.fromDer(forge.util.createBuffer(Buffer.from(crl.rawData).toString('binary')));
    const tbsNode = (outer.value as forge.asn1.Asn1[])[0] as forge.asn1.Asn1;
    const tbs = Buffer.from(forge.asn1.toDer(tbsNode).getBytes(), 'binary');
    const sig = Buffer.from(crl.signature);
    const hash = (crl.signatureAlgorithm as { hash?: { name?: string } }).hash?.name?.replace('-', '').toLowerCase() ?? 'sha256';
    return verify(hash, tbs, createPublicKey(ca.publicKey.export({ type: 'spki', format: 'pem' })), sig);
  } catch {
    return false;
  }
}

