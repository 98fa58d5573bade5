/**
 * The verified-credential cache (off by default). Memory only, size-capped, short TTL. A key is
 * an HMAC-SHA256 of (user, password) under a random key made per process, so the cache holds
 * no password and no value that can be checked offline without that key.
 */
import { hash, randomBytes } from 'node:crypto';
import type { CredentialCacheConfig } from '../config/auth-schema.ts';
import { Generations } from '../util/generations.ts';

const BLOCK = 64;

/**
 * HMAC-SHA256 (RFC 2104) of len(user) ‖ user ‖ password, the length a 4-byte big-endian prefix so
 * (user, password) pairs cannot collide by moving bytes between them. Built from two one-shot
 * hashes over reused buffers: a connect that hits the cache pays for this on every attempt, and
 * an Hmac object costs more to make than the hashing of inputs this short. The password's copy
 * in the scratch buffer is zeroed before `of` returns.
 */
export class CredentialMac {
  /** K xor ipad, then room for the message. */
  private inner: Buffer;
  /** K xor opad, then the inner digest. */
  private readonly outer = Buffer.alloc(BLOCK + 32);

  constructor(key: Buffer = randomBytes(32)) {
    if (key.length > BLOCK) throw new Error('CredentialMac: key longer than one block');
    this.inner = Buffer.alloc(BLOCK + 256);
    for (let i = 0; i < BLOCK; i++) {
      const k = i < key.length ? (key[i] as number) : 0;
      this.inner[i] = k ^ 0x36;
      this.outer[i] = k ^ 0x5c;
    }
  }

  /** The MAC, base64. */
  of(username: string, password: Buffer): string {
    const userBytes = Buffer.byteLength(username, 'utf8');
    const end = BLOCK + 4 + userBytes + password.length;
    if (end > this.inner.length) {
      const bigger = Buffer.alloc(Math.max(end, this.inner.length * 2));
      this.inner.copy(bigger, 0, 0, BLOCK);
      this.inner.fill(0);
      this.inner = bigger;
    }
    const m = this.inner;
    m.writeUInt32BE(userBytes, BLOCK);
    m.write(username, BLOCK + 4, 'utf8');
    password.copy(m, BLOCK + 4 + userBytes);
    const innerDigest = hash('sha256', m.subarray(0, end), 'buffer');
    m.fill(0, BLOCK + 4 + userBytes, end);
    innerDigest.copy(this.outer, BLOCK);
    return hash('sha256', this.outer, 'base64');
  }
}

export class CredentialCache<T> {
  private readonly mac = new CredentialMac();
  /** Bounded by two generations: a flood of new credentials costs O(1) per insert. */
  private readonly entries: Generations<{ value: T; expires: number }>;
  hits = 0;
  misses = 0;

  constructor(private readonly config: Pick<CredentialCacheConfig, 'ttlMs' | 'maxEntries'>) {
    this.entries = new Generations(config.maxEntries);
  }

  /** The cached value; a miss is counted unless `countMiss` is false (a look that will be repeated). */
  get(username: string, password: Buffer, countMiss = true): T | undefined {
    const k = this.mac.of(username, password);
    const e = this.entries.use(k);
    if (e === undefined || e.expires <= Date.now()) {
      if (e !== undefined) this.entries.delete(k);
      if (countMiss) this.misses++;
      return undefined;
    }
    this.hits++;
    return e.value;
  }

  set(username: string, password: Buffer, value: T): void {
    const k = this.mac.of(username, password);
    this.entries.set(k, { value, expires: Date.now() + this.config.ttlMs });
  }

  clear(): void {
    this.entries.clear();
  }

  get size(): number {
    return this.entries.size;
  }
}
