/**
 * The `jwt` provider: a JWT in the MQTT password field (or, for MQTT 5 enhanced
 * authentication, in the authentication data with method `JWT`). Signature, algorithm
 * allow-list, `exp`/`nbf` with clock skew, `iss` and `aud` are checked with jose; claims map to
 * the Principal; `exp` becomes `Principal.expiresAt`, when the broker disconnects the client.
 *
 * @example
 * // auth: [{ provider: 'jwt', algorithms: ['RS256'], issuer: 'https://idp.example', audience: 'mqtt',
 * //          jwks: { url: 'https://idp.example/.well-known/jwks.json' } }]
 */
import { createHash } from 'node:crypto';
import { errors, jwtVerify, type JWTPayload } from 'jose';
import type { JwtProviderConfig } from '../../config/auth-schema.ts';
import { ReasonCode } from '../../protocol/reason-codes.ts';
import type { Authenticator, ConnectRequest, Decision, Principal } from '../types.ts';
import { JwtKeyStore, KeysUnavailableError } from './keys.ts';
import { Generations } from '../../util/generations.ts';

const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

interface CachedToken {
  payload: JWTPayload;
  /** The key set generation it was verified against. */
  generation: number;
  /** ms: the entry is void after this (TTL, capped by `exp`). */
  until: number;
}

export class JwtAuthenticator implements Authenticator {
  readonly id = 'jwt';
  readonly methods: readonly string[];
  readonly keys: JwtKeyStore;
  /** Verified tokens by SHA-256; bounded by `cache.maxEntries` (two generations: O(1) per insert under a flood). */
  private readonly verified: Generations<CachedToken>;
  cacheHits = 0;

  constructor(private readonly config: JwtProviderConfig) {
    this.methods = [config.method];
    this.keys = new JwtKeyStore(config);
    this.verified = new Generations(config.cache.maxEntries);
  }

  /** A signature cannot be guessed: verified tokens are never held back by password failures. */
  checksGuessableSecret(): boolean {
    return false;
  }

  /** Loads the static keys (throws KeyFileError naming the file) and fetches the JWKS once. */
  init(): Promise<void> {
    return this.keys.init();
  }

  async authenticate(req: ConnectRequest, signal?: AbortSignal): Promise<Decision<Principal>> {
    let token: Buffer | undefined;
    if (req.authenticationMethod !== undefined) {
      if (req.authenticationMethod !== this.config.method) return { kind: 'abstain' };
      token = req.authenticationData;
    } else {
      token = req.password;
    }
    if (token === undefined || token.length === 0) return { kind: 'abstain' };
    if (token.length > this.config.maxTokenBytes) return deny(ReasonCode.BadUserNameOrPassword, `token longer than ${this.config.maxTokenBytes} bytes`);
    const text = token.toString('utf8');
    if (!COMPACT_JWS.test(text)) {
      return this.config.abstainOnNonJwt ? { kind: 'abstain' } : deny(ReasonCode.BadUserNameOrPassword, 'not a JWT (compact JWS expected)');
    }
    const cache = this.config.cache;
    const now = Date.now();
    const digest = cache.enabled ? createHash('sha256').update(text).digest('base64') : '';
    const hit = cache.enabled ? this.verified.use(digest) : undefined;
    let payload: JWTPayload | undefined;
    if (hit !== undefined) {
      // Same bytes, verified before against the same key set: only the time claims can have changed.
      const skew = this.config.clockSkewSeconds * 1000;
      const exp = hit.payload.exp;
      if (hit.generation === this.keys.generation && now < hit.until && (typeof exp !== 'number' || now <= exp * 1000 + skew)) {
        payload = hit.payload;
        this.cacheHits++;
      } else {
        this.verified.delete(digest);
      }
    }
    if (payload === undefined) {
      // The key set as the check starts: a refresh while it runs (a key dropped) must not let the
      // token be cached as verified against the new set.
      const generation = this.keys.generation;
      try {
        payload = await this.verify(text);
      } catch (err) {
        if (signal?.aborted) return deny(ReasonCode.ServerUnavailable, 'deadline passed while verifying the token');
        return deny(...describe(err));
      }
      if (cache.enabled) this.remember(digest, payload, now, generation);
    }
    return this.principal(req, payload);
  }

  private async verify(text: string): Promise<JWTPayload> {
    const { payload } = await jwtVerify(text, this.keys.getKey, {
        algorithms: [...this.config.algorithms],
        issuer: this.config.issuer,
        audience: this.config.audience,
        clockTolerance: this.config.clockSkewSeconds,
        ...(this.config.requireExp ? { requiredClaims: ['exp'] } : {}),
    });
    return payload;
  }

  private remember(digest: string, payload: JWTPayload, now: number, generation: number): void {
    const cache = this.config.cache;
    let until = now + cache.ttlSeconds * 1000;
    if (typeof payload.exp === 'number') until = Math.min(until, payload.exp * 1000);
    if (until <= now) return;
    this.verified.set(digest, { payload, generation, until });
  }

  /** Maps verified claims to the Principal; checks that depend on the request run on every connect. */
  private principal(req: ConnectRequest, payload: JWTPayload): Decision<Principal> {
    const claims = this.config.claims;
    const username = payload[claims.username];
    if (typeof username !== 'string' || username === '') return deny(ReasonCode.BadUserNameOrPassword, `claim '${claims.username}' (username) is missing or not a string`);
    if (this.config.requireUsernameMatch && req.username !== undefined && req.username !== username) {
      return deny(ReasonCode.BadUserNameOrPassword, `the MQTT user name does not match claim '${claims.username}'`);
    }
    if (claims.clientId !== undefined) {
      const cid = payload[claims.clientId];
      if (typeof cid !== 'string' || cid !== req.clientId) return deny(ReasonCode.ClientIdentifierNotValid, `the client id does not match claim '${claims.clientId}'`);
    }
    const rawRoles = payload[claims.roles];
    const roles = typeof rawRoles === 'string' ? [rawRoles] : Array.isArray(rawRoles) ? rawRoles.filter((r): r is string => typeof r === 'string') : [];
    return {
      kind: 'allow',
      value: {
        clientId: req.clientId,
        username,
        method: 'jwt',
        provider: this.id,
        roles,
        attributes: { jwt: payload },
        // Skew applies alike at connect and at disconnect: the broker cuts the client off at the
        // moment the token stops being accepted at connect, so the token it cut off never gets back in.
        ...(typeof payload.exp === 'number' ? { expiresAt: (payload.exp + this.config.clockSkewSeconds) * 1000 } : {}),
      },
    };
  }
}

function deny(reason: ReasonCode, detail: string): Decision<Principal> {
  return { kind: 'deny', reason, detail };
}

/** Maps jose's error codes to a reason code and a cause for the audit record (never the token). */
function describe(err: unknown): [ReasonCode, string] {
  if (err instanceof KeysUnavailableError) return [ReasonCode.ServerUnavailable, `${err.code}: ${err.message}`];
  const code = (err as { code?: string }).code ?? 'ERR_UNKNOWN';
  const why: Record<string, string> = {
    ERR_JWT_EXPIRED: 'token expired',
    ERR_JWKS_NO_MATCHING_KEY: 'no key matches the token (unknown kid or wrong key type)',
    ERR_JWKS_MULTIPLE_MATCHING_KEYS: 'several keys match a token without kid',
    ERR_JWS_SIGNATURE_VERIFICATION_FAILED: 'signature does not verify',
    ERR_JOSE_ALG_NOT_ALLOWED: 'algorithm not in the allow-list',
    ERR_JWS_INVALID: 'malformed token',
    ERR_JWT_INVALID: 'malformed claims',
    ERR_JOSE_NOT_SUPPORTED: 'algorithm not supported',
  };
  if (err instanceof errors.JWTClaimValidationFailed) {
    return [ReasonCode.BadUserNameOrPassword, `${code}: claim '${err.claim}' ${err.reason === 'check_failed' ? 'check failed' : err.reason} (${err.message})`];
  }
  return [ReasonCode.BadUserNameOrPassword, `${code}: ${why[code] ?? (err as Error).message ?? 'invalid token'}`];
}
