/**
 * Signed checkpoints: a record whose `signature` is a compact JWS (EdDSA, Ed25519) over the
 * checkpoint's own sequence number, the hash of the record before it (the head of the chain),
 * its time, how many records it is the first signature for, and the interval at which the
 * broker promised to sign. Because every hash covers everything before it, one valid signature
 * vouches for the whole chain up to it; a rewritten chain (hashes recomputed) cannot carry a
 * valid signature without the private key. `verify` checks each field against the records.
 */
import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import { CompactSign, compactVerify } from 'jose';

export interface CheckpointPayload {
  /** The checkpoint record's own sequence number. */
  seq: number;
  /** The hash of the record before it: the head of the chain it signs. */
  prev: string;
  /** The checkpoint record's `time`. */
  time: string;
  /**
   * How many records before it this checkpoint is the first signature for: those since the
   * previous checkpoint of the same run, or since the run's `audit`/`start` record. Absent in
   * checkpoints written before it was added.
   */
  count?: number;
  /** `audit.checkpoint.intervalSeconds` of the run that signed it: the cadence it promised. */
  interval?: number;
}

export class AuditKeyError extends Error {
  readonly code = 'ERR_PORTCULLIS_AUDIT_KEY';
}

/** Loads an Ed25519 private key (PKCS#8 PEM). Errors name the file. */
export function loadSigningKey(file: string): KeyObject {
  return loadEd25519(file, createPrivateKey, 'a PEM private key');
}

/** Loads an Ed25519 public key, or derives it from a private key file. */
export function loadVerifyKey(file: string): KeyObject {
  return loadEd25519(file, createPublicKey, 'a PEM public or private key');
}

function loadEd25519(file: string, parse: (pem: string) => KeyObject, expected: string): KeyObject {
  let pem: string;
  try {
    pem = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new AuditKeyError(`cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  let key: KeyObject;
  try {
    key = parse(pem);
  } catch {
    throw new AuditKeyError(`${file} is not ${expected}`);
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new AuditKeyError(`${file} holds a ${key.asymmetricKeyType} key; an Ed25519 key is required`);
  return key;
}

export function signCheckpoint(payload: CheckpointPayload, key: KeyObject, kid?: string): Promise<string> {
  return new CompactSign(new TextEncoder().encode(JSON.stringify(payload)))
    .setProtectedHeader({ alg: 'EdDSA', ...(kid !== undefined ? { kid } : {}) })
    .sign(key);
}

/** Verifies a checkpoint signature; resolves with the signed payload or throws. */
export async function verifyCheckpoint(jws: string, key: KeyObject): Promise<CheckpointPayload> {
  const { payload } = await compactVerify(jws, key, { algorithms: ['EdDSA'] });
  const value: unknown = JSON.parse(new TextDecoder().decode(payload));
  if (!isPayload(value)) throw new AuditKeyError('the signed checkpoint payload is not {seq, prev, time}');
  return value;
}

function isPayload(v: unknown): v is CheckpointPayload {
  if (v === null || typeof v !== 'object') return false;
  const p = v as Record<string, unknown>;
  return (
    typeof p.seq === 'number' &&
    typeof p.prev === 'string' &&
    typeof p.time === 'string' &&
    (p.count === undefined || (typeof p.count === 'number' && Number.isInteger(p.count) && p.count >= 0)) &&
    (p.interval === undefined || (typeof p.interval === 'number' && p.interval > 0))
  );
}
