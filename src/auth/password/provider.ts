/**
 * The `password` provider: user names and argon2id hashes from a password file that ops
 * maintain (`portcullis passwd`). The file is parsed strictly at start (a bad file stops the
 * start, naming the line), reloaded when it changes and on SIGHUP; a bad file during a reload
 * keeps the last good one. Unknown users are checked against a dummy hash, so they take as
 * long to refuse as known ones.
 *
 * @example
 * // listeners: [{ type: 'tls', ..., auth: [{ provider: 'password', file: 'data/passwords' }] }]
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Argon2Params, CredentialCacheConfig, PasswordProviderConfig } from '../../config/auth-schema.ts';
import { ReasonCode } from '../../protocol/reason-codes.ts';
import { CredentialCache } from '../credential-cache.ts';
import type { Authenticator, ConnectRequest, Decision, Principal } from '../types.ts';
import { type PasswordEntry, phcParams, readPasswordFile } from './file.ts';
import { dummyHash, verifyPassword } from './hash.ts';

/** What a reload did, for the log and the audit trail. */
export interface PasswordReloadReport {
  ok: boolean;
  file: string;
  users?: number;
  detail: string;
  trigger: string;
}

const EMPTY = Buffer.alloc(0);

/** The client sees one text for every password refusal; the cause goes to the audit record only. */
export const GENERIC_PASSWORD_DENIAL = 'bad user name or password';

export class PasswordAuthenticator implements Authenticator {
  readonly id = 'password';
  private users: Map<string, PasswordEntry>;
  private dummy: Promise<string> | undefined;
  private dummyParams: Argon2Params;
  private watcher: fs.FSWatcher | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private readonly listeners: ((r: PasswordReloadReport) => void)[] = [];
  private readonly cache: CredentialCache<{ username: string; roles: string[] }> | undefined;

  /** Reads the file now: throws PasswordFileError (with the line number) when it is malformed. */
  constructor(
    private readonly config: PasswordProviderConfig,
    cache?: CredentialCacheConfig,
  ) {
    this.users = readPasswordFile(config.file, config.argon2);
    this.dummyParams = this.commonParams();
    if (cache?.enabled) this.cache = new CredentialCache(cache);
  }

  /** Calls `fn` after every reload attempt, good or bad. */
  onReload(fn: (r: PasswordReloadReport) => void): void {
    this.listeners.push(fn);
  }

  get userCount(): number {
    return this.users.size;
  }

  get cacheStats(): { hits: number; misses: number; size: number } | undefined {
    return this.cache && { hits: this.cache.hits, misses: this.cache.misses, size: this.cache.size };
  }

  async init(): Promise<void> {
    this.dummy ??= dummyHash(this.dummyParams);
    await this.dummy;
    if (this.config.watch && this.watcher === undefined) {
      // Watch the directory: editors and `portcullis passwd` replace the file by renaming.
      const dir = path.dirname(path.resolve(this.config.file));
      const base = path.basename(this.config.file);
      try {
        this.watcher = fs.watch(dir, { persistent: false }, (_event, name) => {
          if (name !== null && name !== base) return;
          clearTimeout(this.debounce);
          this.debounce = setTimeout(() => void this.reload('file change'), 100);
          this.debounce.unref();
        });
        this.watcher.on('error', () => {});
      } catch {
        // No watch on this file system: SIGHUP still reloads.
      }
    }
  }

  /** Re-reads the file. A malformed file keeps the users loaded last. */
  async reload(trigger = 'api'): Promise<PasswordReloadReport> {
    let report: PasswordReloadReport;
    try {
      const users = readPasswordFile(this.config.file, this.config.argon2);
      this.users = users;
      this.cache?.clear(); // a removed user or changed password must not stay valid
      const params = this.commonParams();
      if (JSON.stringify(params) !== JSON.stringify(this.dummyParams)) {
        this.dummyParams = params;
        this.dummy = dummyHash(params);
      }
      report = { ok: true, file: this.config.file, users: users.size, detail: `${users.size} users loaded`, trigger };
    } catch (err) {
      report = { ok: false, file: this.config.file, detail: `${(err as Error).message}; keeping the last good file`, trigger };
    }
    for (const fn of this.listeners) fn(report);
    return report;
  }

  async close(): Promise<void> {
    clearTimeout(this.debounce);
    this.watcher?.close();
    this.watcher = undefined;
  }

  /** A password is checked whenever a user name is given (an unknown user's against the dummy hash). */
  checksGuessableSecret(req: ConnectRequest): boolean {
    return req.username !== undefined;
  }

  /**
   * Answers at once when no hash has to be checked: no user name (abstain), a refused length, an
   * empty password, or a credential-cache hit. Everything else waits for argon2 in authenticate().
   */
  decideNow(req: ConnectRequest): Decision<Principal> | undefined {
    return this.withoutHashing(req, false);
  }

  private withoutHashing(req: ConnectRequest, countMiss: boolean): Decision<Principal> | undefined {
    const username = req.username;
    if (username === undefined) return { kind: 'abstain' };
    const password = req.password ?? EMPTY;
    if (Buffer.byteLength(username) > this.config.maxUsernameBytes) return deny(`user name longer than ${this.config.maxUsernameBytes} bytes`);
    if (password.length > this.config.maxPasswordBytes) return deny(`password longer than ${this.config.maxPasswordBytes} bytes`);
    if (password.length === 0) return deny('empty password');
    // decideNow's miss is not counted: authenticate() looks again and counts it once.
    const cached = this.cache?.get(username, password, countMiss);
    if (cached !== undefined) return allow(req, cached.username, cached.roles, true);
    return undefined;
  }

  async authenticate(req: ConnectRequest): Promise<Decision<Principal>> {
    const now = this.withoutHashing(req, true);
    if (now !== undefined) return now;
    const username = req.username as string;
    const password = req.password ?? EMPTY;
    const entry = this.users.get(username);
    this.dummy ??= dummyHash(this.dummyParams);
    // The same argon2 work for known and unknown users: user names cannot be found by timing.
    const ok = await verifyPassword(entry?.hash ?? (await this.dummy), password);
    if (entry === undefined) {
      return this.config.unknownUser === 'abstain' ? { kind: 'abstain' } : deny('unknown user');
    }
    if (!ok) return deny('wrong password');
    // A reload may have replaced the file while argon2 ran (and cleared the cache): the password
    // checked must still be the user's, or a revoked password would pass now and, cached again
    // into the emptied cache, for the cache's whole TTL.
    const current = this.users.get(username);
    if (current === undefined || current.hash !== entry.hash) return deny('the password file changed during the check');
    this.cache?.set(username, password, { username, roles: current.roles });
    return allow(req, username, current.roles, false);
  }

  /** The parameters most hashes in the file use, so the dummy hash costs what a real one does. */
  private commonParams(): Argon2Params {
    const counts = new Map<string, { n: number; p: Argon2Params }>();
    for (const u of this.users.values()) {
      const p = phcParams(u.hash);
      if (p === undefined) continue;
      const k = `${p.memoryKiB},${p.timeCost},${p.parallelism}`;
      const c = counts.get(k) ?? { n: 0, p };
      c.n++;
      counts.set(k, c);
    }
    let best: { n: number; p: Argon2Params } | undefined;
    for (const c of counts.values()) if (best === undefined || c.n > best.n) best = c;
    return best?.p ?? this.config.argon2;
  }
}

function deny(cause: string): Decision<Principal> {
  return { kind: 'deny', reason: ReasonCode.BadUserNameOrPassword, detail: cause };
}

function allow(req: ConnectRequest, username: string, roles: string[], cached: boolean): Decision<Principal> {
  return {
    kind: 'allow',
    value: { clientId: req.clientId, username, method: 'password', provider: 'password', roles: [...roles], attributes: cached ? { credentialCache: true } : {} },
  };
}
