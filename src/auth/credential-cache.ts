/**
 * The verified-credential cache (off by default). Memory only, size-capped, short TTL. A key is
 * an HMAC-SHA256 of (user, password) under a random key made per process, so the cache holds
 * no password and no value that can be checked offline without that key.
 */
import { createHmac, randomBytes } from 'node:crypto';
import type { CredentialCacheConfig } from '../config/auth-schema.ts';

export class CredentialCache<T> {
  private readonly key = randomBytes(32);
  private readonly entries = new Map<string, { value: T; expires: number }>();
  hits = 0;
  misses = 0;

  constructor(private readonly config: Pick<CredentialCacheConfig, 'ttlMs' | 'maxEntries'>) {}

  private keyOf(username: string, password: Buffer): string {
    const h = createHmac('sha256', this.key);
    const u = Buffer.from(username, 'utf8');
    const len = Buffer.alloc(4);
    len.writeUInt32BE(u.length);
    // Length-prefixed, so (user, password) pairs cannot collide by moving bytes between them.
    return h.update(len).update(u).update(password).digest('base64');
  }

  /** The cached value; a miss is counted unless `countMiss` is false (a look that will be repeated). */
  get(username: string, password: Buffer, countMiss = true): T | undefined {
    const k = this.keyOf(username, password);
    const e = this.entries.get(k);
    if (e === undefined || e.expires <= Date.now()) {
      if (e !== undefined) this.entries.delete(k);
      if (countMiss) this.misses++;
      return undefined;
    }
    this.hits++;
    return e.value;
  }

  set(username: string, password: Buffer, value: T): void {
    const k = this.keyOf(username, password);
    this.entries.delete(k);
    this.entries.set(k, { value, expires: Date.now() + this.config.ttlMs });
    while (this.entries.size > this.config.maxEntries) {
      const oldest = this.entries.keys().next().value as string;
      this.entries.delete(oldest);
    }
  }

  clear(): void {
    this.entries.clear();
  }

  get size(): number {
    return this.entries.size;
  }
}
