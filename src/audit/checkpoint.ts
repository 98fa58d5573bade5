/**
 * Signed checkpoints: a record whose `signature` is a compact JWS (EdDSA, Ed25519) over the
 * checkpoint's own sequence number and the hash of the record before it. Because every hash
 * covers everything before it, one valid signature vouches for the whole chain up to it; a
 * rewritten chain (hashes recomputed) cannot carry a valid signature without the private key.
 */
import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import { CompactSign, compactVerify } from 'jose';

export interface CheckpointPayload {
  seq: number;
  prev: string;
  time: string;
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
  return JSON.parse(new TextDecoder().decode(payload)) as CheckpointPayload;
}
