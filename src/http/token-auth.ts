/**
 * Bearer tokens for the admin API, checked against the token file's argon2id hashes.
 *
 * - The file is read at start (a malformed file stops the start, naming the line) and again
 *   when it changes (checked at most once a second, on use); a malformed change keeps the last
 *   good file and is reported.
 * - A token whose id is unknown is still checked against a hash, so the answer takes as long as
 *   for a known id with a wrong secret; both get the same error.
 * - A verified token is remembered for `cacheMs`, keyed by an HMAC of it under a key made at
 *   start (never the token itself), so a console polling every few seconds does not cost an
 *   argon2 hash per request. A change of the file forgets every remembered token.
 * - At most two argon2 checks run at once (they share libuv's pool with MQTT password checks);
 *   a few more may wait, the rest are refused.
 */
import { createHmac, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { dummyHash, verifyPassword } from '../auth/password/hash.ts';
import { ARGON2_FLOOR } from '../config/auth-schema.ts';
import { Generations } from '../util/generations.ts';
import { readTokenFile, TOKEN_PATTERN, type TokenEntry, TokenFileError } from './token-file.ts';

export type TokenCheck =
  | { ok: true; entry: TokenEntry }
  | { ok: false; code: 'ERR_TOKEN_MALFORMED' | 'ERR_TOKEN_INVALID' | 'ERR_TOKEN_EXPIRED' | 'ERR_BUSY'; message: string };

const MAX_CHECKING = 2;
const MAX_WAITING = 16;
const MAX_CACHED = 1000;

export class TokenAuthenticator {
  private byId = new Map<string, TokenEntry>();
  private stamp = '';
  private checkedAt = 0;
  private readonly cache = new Generations<{ id: string; hash: string; until: number }>(MAX_CACHED);
  private readonly cacheKey = randomBytes(32);
  private dummy: Promise<string> | undefined;
  private checking = 0;
  private readonly waiting: (() => void)[] = [];

  /** Reads the file now: throws TokenFileError when it is malformed (a missing file holds no tokens). */
  constructor(
    readonly file: string,
    private readonly cacheMs: number,
    private readonly onReload: (report: { ok: boolean; detail: string }) => void,
    private readonly now: () => number = Date.now,
  ) {
    this.replace(readTokenFile(file, true));
    this.stamp = fileStamp(file);
  }

  get size(): number {
    return this.byId.size;
  }

  private replace(entries: TokenEntry[]): void {
    this.byId = new Map(entries.map((e) => [e.id, e]));
    this.cache.clear();
  }

  /** Re-reads the file when it changed since the last look (at most once a second). */
  refresh(): void {
    const now = this.now();
    if (now - this.checkedAt < 1000) return;
    this.checkedAt = now;
    const stamp = fileStamp(this.file);
    if (stamp === this.stamp) return;
    this.stamp = stamp;
    try {
      this.replace(readTokenFile(this.file, true));
      this.onReload({ ok: true, detail: `${this.byId.size} token(s)` });
    } catch (err) {
      const message = err instanceof TokenFileError ? err.message : (err as Error).message;
      this.onReload({ ok: false, detail: `${message}; keeping the last good token file` });
    }
  }

  /**
   * The id a well-formed token names when that id is in the file (the throttle judges such a
   * request on the token's own failures); undefined otherwise. A token id is not a secret.
   */
  knownId(token: string): string | undefined {
    this.refresh();
    const id = TOKEN_PATTERN.exec(token)?.[1];
    return id !== undefined && this.byId.has(id) ? id : undefined;
  }

  /**
   * The entry of a token whose exact bytes were verified within `cacheMs` and whose line in the
   * file is unchanged and unexpired; undefined otherwise (then `check` decides). Costs an HMAC,
   * no argon2: the pipeline accepts such a token before asking the failure throttle.
   */
  remembered(token: string): TokenEntry | undefined {
    this.refresh();
    if (this.cacheMs <= 0) return undefined;
    const id = TOKEN_PATTERN.exec(token)?.[1];
    const entry = id === undefined ? undefined : this.byId.get(id);
    if (entry === undefined) return undefined;
    const cached = this.cache.get(this.cacheKeyOf(token));
    const now = this.now();
    if (cached === undefined || cached.id !== id || cached.hash !== entry.hash || cached.until <= now) return undefined;
    if (entry.expires !== undefined && entry.expires <= now) return undefined;
    return entry;
  }

  private cacheKeyOf(token: string): string {
    return createHmac('sha256', this.cacheKey).update(token).digest('base64url');
  }

  /** Checks `Authorization: Bearer <token>`'s token. */
  async check(token: string): Promise<TokenCheck> {
    this.refresh();
    const m = TOKEN_PATTERN.exec(token);
    if (m === null) return { ok: false, code: 'ERR_TOKEN_MALFORMED', message: 'malformed bearer token: expected pct_<16 hex>_<43 base64url characters> (see `portcullis token add`)' };
    const id = m[1] as string;
    const entry = this.byId.get(id);
    const key = this.cacheKeyOf(token);
    const cached = this.cache.get(key);
    let good = cached !== undefined && entry !== undefined && cached.id === id && cached.hash === entry.hash && cached.until > this.now();
    if (!good) {
      if (this.checking >= MAX_CHECKING) {
        if (this.waiting.length >= MAX_WAITING) return { ok: false, code: 'ERR_BUSY', message: 'too many token checks at once: try again shortly' };
        await new Promise<void>((resolve) => this.waiting.push(resolve));
      }
      this.checking++;
      try {
        good = entry !== undefined ? await verifyPassword(entry.hash, token) : (await verifyPassword(await this.dummyHash(), token), false);
      } finally {
        this.checking--;
        this.waiting.shift()?.();
      }
      if (good && entry !== undefined && this.cacheMs > 0) {
        this.cache.set(key, { id, hash: entry.hash, until: this.now() + this.cacheMs });
      }
    }
    // The file may have changed while argon2 ran: answer for the entry in force now.
    const current = this.byId.get(id);
    if (!good || entry === undefined || current?.hash !== entry.hash) return { ok: false, code: 'ERR_TOKEN_INVALID', message: 'invalid bearer token' };
    if (entry.expires !== undefined && entry.expires <= this.now()) {
      return { ok: false, code: 'ERR_TOKEN_EXPIRED', message: `the token '${entry.name}' expired at ${new Date(entry.expires).toISOString()}` };
    }
    return { ok: true, entry };
  }

  private dummyHash(): Promise<string> {
    this.dummy ??= dummyHash(ARGON2_FLOOR);
    return this.dummy;
  }
}

/** Inode, size and modification time: changes when the file is replaced or edited. */
function fileStamp(file: string): string {
  try {
    const st = fs.statSync(file);
    return `${st.ino}:${st.size}:${st.mtimeMs}`;
  } catch {
    return 'missing';
  }
}
