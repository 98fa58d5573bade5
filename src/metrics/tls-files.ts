/**
 * Certificate, CA and CRL dates read from the configured files, for the expiry gauges and the
 * console. A file is parsed again only when it changed (modification time and size), so a
 * scrape every second costs a stat per file. A file that cannot be read or parsed reports no
 * date (the TLS listener itself refuses such a file and keeps its last good one).
 */
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import * as x509 from '@peculiar/x509';
import { pemBlocks } from '../pki/crl.ts';

/** One file to watch: a server certificate, a CA bundle or CRLs, for a listener. */
export interface TlsFileRef {
  listener: string;
  kind: 'server' | 'ca' | 'crl';
  file: string;
}

export interface TlsFileDate {
  listener: string;
  kind: 'server' | 'ca' | 'crl';
  file: string;
  /** Certificate subject (the earliest to expire in a bundle), or the CRL issuer. */
  subject: string | null;
  /** notAfter of the certificate (the earliest in a CA bundle), or a CRL's nextUpdate (the earliest). */
  expiresAt: number | null;
  error?: string;
}

interface Cached {
  mtimeMs: number;
  size: number;
  date: TlsFileDate;
}

export class TlsFileDates {
  private readonly cache = new Map<string, Cached>();

  constructor(private readonly refs: readonly TlsFileRef[]) {}

  get files(): readonly TlsFileRef[] {
    return this.refs;
  }

  read(): TlsFileDate[] {
    return this.refs.map((ref) => this.readOne(ref));
  }

  private readOne(ref: TlsFileRef): TlsFileDate {
    const key = JSON.stringify([ref.listener, ref.kind, ref.file]);
    let st: fs.Stats;
    try {
      st = fs.statSync(ref.file);
    } catch (err) {
      return { ...ref, subject: null, expiresAt: null, error: `cannot read (${(err as NodeJS.ErrnoException).code ?? 'error'})` };
    }
    const hit = this.cache.get(key);
    if (hit !== undefined && hit.mtimeMs === st.mtimeMs && hit.size === st.size) return hit.date;
    const date = parse(ref);
    this.cache.set(key, { mtimeMs: st.mtimeMs, size: st.size, date });
    return date;
  }
}

function parse(ref: TlsFileRef): TlsFileDate {
  try {
    const text = fs.readFileSync(ref.file, 'utf8');
    if (ref.kind === 'crl') {
      let earliest: { at: number; issuer: string } | undefined;
      for (const block of pemBlocks(text, 'X509 CRL')) {
        const crl = new x509.X509Crl(block);
        const at = crl.nextUpdate?.getTime();
        if (at !== undefined && (earliest === undefined || at < earliest.at)) earliest = { at, issuer: crl.issuer };
      }
      return { ...ref, subject: earliest?.issuer ?? null, expiresAt: earliest?.at ?? null };
    }
    const blocks = pemBlocks(text, 'CERTIFICATE');
    // The server certificate is the first block (the rest is its chain); a CA bundle reports its earliest.
    const certs = (ref.kind === 'server' ? blocks.slice(0, 1) : blocks).map((b) => new X509Certificate(b));
    let earliest: X509Certificate | undefined;
    for (const c of certs) if (earliest === undefined || Date.parse(c.validTo) < Date.parse(earliest.validTo)) earliest = c;
    if (earliest === undefined) return { ...ref, subject: null, expiresAt: null, error: 'no PEM certificate in the file' };
    return { ...ref, subject: earliest.subject.replace(/\n/g, ', '), expiresAt: Date.parse(earliest.validTo) };
  } catch (err) {
    return { ...ref, subject: null, expiresAt: null, error: (err as Error).message };
  }
}
