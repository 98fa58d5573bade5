/**
 * Encryption at rest: the key file and AES-256-GCM sealing of record values.
 *
 * The key file holds one key per line, `<key id> <base64 of 32 bytes>`; `#` starts a comment.
 * The FIRST key encrypts every new record; every key listed decrypts. Rotation is therefore: put
 * a new key on the first line, keep the old ones below, restart; `portcullis store compact`
 * re-encrypts every record with the new key, after which the old lines can go (docs/persistence.md).
 *
 * Nonces: AES-GCM must never see the same (key, nonce) twice. A random 96-bit nonce per record
 * would reach the 2^32-messages-per-key bound in hours on a busy broker, and one key file may be
 * shared by several stores. So each open of a store draws a random 32-byte salt (an "epoch", kept
 * in the store), derives a fresh AES key from the master key and that salt with HKDF-SHA256, and
 * numbers records with a counter within the epoch: (derived key, counter) is unique.
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';
import { newKeyFileLine, readKeyFile } from '../util/key-file.ts';
import { StoreError } from './errors.ts';

export interface StoreKey {
  id: string;
  key: Buffer;
}

const HKDF_INFO = Buffer.from('portcullis store record key v1');
export const SALT_BYTES = 32;
const TAG_BYTES = 16;

/** Reads and checks a key file. Throws StoreError ERR_STORE_KEY naming the file and line. */
export function loadKeyFile(file: string): StoreKey[] {
  return readKeyFile(file, { what: 'store', exact32: true, fail: (message, cause) => new StoreError('ERR_STORE_KEY', message, file, cause === undefined ? undefined : { cause }) });
}

/** A new key line for a key file: `<id> <base64>`. */
export function newKeyLine(id: string): string {
  return newKeyFileLine(id, (message) => new StoreError('ERR_STORE_KEY', message));
}

/** The header of a sealed value: key id, epoch, counter; then the GCM tag and the ciphertext. */
export interface SealedParts {
  keyId: string;
  epoch: number;
  counter: number;
  tag: Buffer;
  ciphertext: Buffer;
}

/**
 * Seals and opens record bodies. Decryption needs the epoch salts the store keeps (see
 * {@link addEpoch}); encryption needs the current epoch ({@link startEpoch}).
 */
export class Keyring {
  private readonly byId = new Map<string, Buffer>();
  private readonly salts = new Map<number, Buffer>();
  private readonly derived = new Map<string, Buffer>();
  private epoch = -1;
  private counter = 0;

  constructor(readonly keys: StoreKey[]) {
    for (const k of keys) this.byId.set(k.id, k.key);
  }

  /** The key id that encrypts new records. */
  get activeId(): string {
    return (this.keys[0] as StoreKey).id;
  }

  hasKey(id: string): boolean {
    return this.byId.has(id);
  }

  addEpoch(epoch: number, salt: Buffer): void {
    this.salts.set(epoch, Buffer.from(salt));
  }

  /** Makes `epoch` (whose salt was just stored) the one new records are sealed under. */
  startEpoch(epoch: number, salt: Buffer): void {
    this.addEpoch(epoch, salt);
    this.epoch = epoch;
    this.counter = 0;
  }

  static newSalt(): Buffer {
    return randomBytes(SALT_BYTES);
  }

  private derive(keyId: string, epoch: number): Buffer {
    const id = `${epoch}/${keyId}`;
    let k = this.derived.get(id);
    if (k === undefined) {
      const master = this.byId.get(keyId);
      const salt = this.salts.get(epoch);
      if (master === undefined) throw new StoreError('ERR_STORE_KEY', `a record is encrypted with key id '${keyId}', which is not in the key file`);
      if (salt === undefined) throw new StoreError('ERR_STORE_CORRUPT', `a record is encrypted under epoch ${epoch}, whose salt is missing from the store`);
      k = Buffer.from(hkdfSync('sha256', master, salt, HKDF_INFO, 32));
      this.derived.set(id, k);
    }
    return k;
  }

  seal(aad: Buffer, body: Buffer): SealedParts {
    if (this.epoch < 0) throw new Error('Keyring.seal before startEpoch');
    const keyId = this.activeId;
    const counter = this.counter++;
    const cipher = createCipheriv('aes-256-gcm', this.derive(keyId, this.epoch), nonce(this.epoch, counter));
    cipher.setAAD(aad);
    const ciphertext = Buffer.concat([cipher.update(body), cipher.final()]);
    return { keyId, epoch: this.epoch, counter, tag: cipher.getAuthTag(), ciphertext };
  }

  /** Throws StoreError ERR_STORE_KEY for an unknown key id, or a plain Error when authentication fails. */
  open(aad: Buffer, parts: SealedParts): Buffer {
    const decipher = createDecipheriv('aes-256-gcm', this.derive(parts.keyId, parts.epoch), nonce(parts.epoch, parts.counter), { authTagLength: TAG_BYTES });
    decipher.setAAD(aad);
    decipher.setAuthTag(parts.tag);
    return Buffer.concat([decipher.update(parts.ciphertext), decipher.final()]);
  }
}

function nonce(epoch: number, counter: number): Buffer {
  const iv = Buffer.allocUnsafe(12);
  iv.writeUInt32BE(epoch >>> 0, 0);
  iv.writeUInt32BE(Math.floor(counter / 2 ** 32), 4);
  iv.writeUInt32BE(counter >>> 0, 8);
  return iv;
}
