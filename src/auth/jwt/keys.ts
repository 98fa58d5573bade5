/**
 * Verification keys for the JWT provider: static keys from PEM or JWK files, and a JWKS URL.
 * The remote set is cached; it is fetched again when it is older than `maxAgeMs` or when a
 * token names an unknown `kid` (at most once per `cooldownMs`). Every fetch has a deadline and
 * a size cap; a failed fetch keeps the last good set.
 */
import { createPublicKey } from 'node:crypto';
import fs from 'node:fs';
import { createLocalJWKSet, type JSONWebKeySet, type JWK, type JWSHeaderParameters, type FlattenedJWSInput } from 'jose';
import type { JwtProviderConfig } from '../../config/auth-schema.ts';

/** A key file that cannot be used. `index` is its position in `keyFiles`. */
export class KeyFileError extends Error {
  readonly code = 'ERR_PORTCULLIS_JWT_KEY';
  constructor(
    readonly index: number,
    message: string,
  ) {
    super(message);
  }
}

/** No key set could be obtained at all (the JWKS endpoint never answered and there are no static keys). */
export class KeysUnavailableError extends Error {
  readonly code = 'ERR_PORTCULLIS_JWKS_UNAVAILABLE';
}

export interface JwksFetchReport {
  ok: boolean;
  url: string;
  keys?: number;
  detail: string;
  trigger: string;
}

function isPublicJwk(k: unknown): k is JWK {
  if (k === null || typeof k !== 'object') return false;
  const j = k as Record<string, unknown>;
  if (typeof j.kty !== 'string') return false;
  if (j.kty !== 'oct' && j.d !== undefined) return false; // never hold a private key
  if (j.use !== undefined && j.use !== 'sig') return false;
  return true;
}

/** Loads static keys. Throws {@link KeyFileError} naming the file. */
export function loadKeyFiles(files: readonly string[]): JWK[] {
  const out: JWK[] = [];
  for (const [i, file] of files.entries()) {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      throw new KeyFileError(i, `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    if (text.includes('-----BEGIN')) {
      if (/PRIVATE KEY/.test(text)) throw new KeyFileError(i, `${file} holds a private key: give the public key`);
      try {
        out.push(createPublicKey(text).export({ format: 'jwk' }) as JWK);
      } catch (err) {
        throw new KeyFileError(i, `${file} is not a usable PEM public key: ${(err as Error).message}`);
      }
      continue;
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (err) {
      throw new KeyFileError(i, `${file} is neither PEM nor JSON: ${(err as Error).message}`);
    }
    const keys = json !== null && typeof json === 'object' && Array.isArray((json as JSONWebKeySet).keys) ? (json as JSONWebKeySet).keys : [json];
    for (const k of keys) {
      if (!isPublicJwk(k)) throw new KeyFileError(i, `${file} holds a key that is not a public signing JWK (missing kty, private part, or use other than sig)`);
      out.push(k);
    }
  }
  return out;
}

type GetKey = ReturnType<typeof createLocalJWKSet>;

export class JwtKeyStore {
  private staticKeys: JWK[] = [];
  private remoteKeys: JWK[] = [];
  private set: GetKey = createLocalJWKSet({ keys: [] });
  private fetchedAt = 0;
  private lastAttempt = -Infinity;
  private everFetched = false;
  private inflight: Promise<void> | undefined;
  private readonly listeners: ((r: JwksFetchReport) => void)[] = [];
  fetches = 0;
  /** Bumped whenever the key set is rebuilt: cached verifications from an older set are void. */
  generation = 0;

  /** Reads the static key files now: throws KeyFileError naming the file. */
  constructor(private readonly config: JwtProviderConfig) {
    this.staticKeys = loadKeyFiles(config.keyFiles);
    this.rebuild();
  }

  onFetch(fn: (r: JwksFetchReport) => void): void {
    this.listeners.push(fn);
  }

  async init(): Promise<void> {
    if (this.config.jwks !== undefined) await this.refresh('start');
  }

  /** The key for a token's header, fetching the JWKS when it is stale or the kid is unknown. */
  readonly getKey = async (header: JWSHeaderParameters, token: FlattenedJWSInput) => {
    const jwks = this.config.jwks;
    if (jwks !== undefined && Date.now() - this.fetchedAt > jwks.maxAgeMs && Date.now() - this.lastAttempt >= jwks.cooldownMs) await this.refresh('max age');
    try {
      return await this.set(header, token);
    } catch (err) {
      if ((err as { code?: string }).code !== 'ERR_JWKS_NO_MATCHING_KEY' || jwks === undefined) throw this.unavailableOr(err);
      if (Date.now() - this.lastAttempt >= jwks.cooldownMs || this.inflight !== undefined) {
        await this.refresh(`unknown kid ${header.kid ?? '(none)'}`);
        try {
          return await this.set(header, token);
        } catch (again) {
          throw this.unavailableOr(again);
        }
      }
      throw this.unavailableOr(err);
    }
  };

  private unavailableOr(err: unknown): unknown {
    if (this.config.jwks !== undefined && !this.everFetched && this.staticKeys.length === 0) {
      return new KeysUnavailableError('the JWKS endpoint has not answered yet and there are no static keys');
    }
    return err;
  }

  /** Fetches the JWKS once (concurrent callers share the fetch). */
  refresh(trigger: string): Promise<void> {
    this.inflight ??= this.fetchOnce(trigger).finally(() => {
      this.inflight = undefined;
    });
    return this.inflight;
  }

  private async fetchOnce(trigger: string): Promise<void> {
    const jwks = this.config.jwks;
    if (jwks === undefined) return;
    this.lastAttempt = Date.now();
    this.fetches++;
    let report: JwksFetchReport;
    try {
      const res = await fetch(jwks.url, { signal: AbortSignal.timeout(jwks.timeoutMs), redirect: 'error', headers: { accept: 'application/json' } });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const declared = Number(res.headers.get('content-length') ?? '0');
      if (declared > jwks.maxBytes) throw new Error(`response larger than ${jwks.maxBytes} bytes`);
      const body = Buffer.from(await res.arrayBuffer());
      if (body.length > jwks.maxBytes) throw new Error(`response larger than ${jwks.maxBytes} bytes`);
      let json: unknown;
      try {
        json = JSON.parse(body.toString('utf8'));
      } catch {
        throw new Error('response is not JSON');
      }
      const keys = (json as JSONWebKeySet | null)?.keys;
      if (!Array.isArray(keys)) throw new Error('response has no "keys" array');
      const usable = keys.filter(isPublicJwk);
      if (usable.length === 0) throw new Error('response has no usable public signing key');
      this.remoteKeys = usable;
      this.fetchedAt = Date.now();
      this.everFetched = true;
      this.rebuild();
      report = { ok: true, url: jwks.url, keys: usable.length, detail: `${usable.length} keys`, trigger };
    } catch (err) {
      const e = err as Error;
      const why = e.name === 'TimeoutError' || e.name === 'AbortError' ? `no answer within ${jwks.timeoutMs} ms` : e.message;
      report = { ok: false, url: jwks.url, detail: `JWKS fetch failed (${why}); keeping the last good key set`, trigger };
    }
    for (const fn of this.listeners) fn(report);
  }

  private rebuild(): void {
    this.generation++;
    this.set = createLocalJWKSet({ keys: [...this.staticKeys, ...this.remoteKeys] });
  }
}
