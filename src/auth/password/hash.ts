/**
 * argon2id behind a small adapter. Hashing and verification run on the libuv thread pool, so
 * the event loop keeps serving other clients while a password is checked.
 */
import { randomBytes } from 'node:crypto';
import argon2 from 'argon2';
import type { Argon2Params } from '../../config/auth-schema.ts';

/** Hashes a password to an argon2id PHC string. */
export function hashPassword(password: string | Buffer, params: Argon2Params): Promise<string> {
  return argon2.hash(password, {
    type: argon2.argon2id,
    memoryCost: params.memoryKiB,
    timeCost: params.timeCost,
    parallelism: params.parallelism,
  });
}

/** True when the password matches. A malformed hash counts as no match. */
export async function verifyPassword(hash: string, password: string | Buffer): Promise<boolean> {
  try {
    return await argon2.verify(hash, password);
  } catch {
    return false;
  }
}

/** A hash of a random secret, checked for unknown users so they take as long as known ones. */
export function dummyHash(params: Argon2Params): Promise<string> {
  return hashPassword(randomBytes(32), params);
}
