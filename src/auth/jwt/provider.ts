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
import { errors, jwtVerify, type JWTPayload } from 'jose';
import type { JwtProviderConfig } from '../../config/auth-schema.ts';
import { ReasonCode } from '../../protocol/reason-codes.ts';
import type { Authenticator, ConnectRequest, Decision, Principal } from '../types.ts';
import { JwtKeyStore, KeysUnavailableError } from './keys.ts';

const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

export class JwtAuthenticator implements Authenticator {
  readonly id = 'jwt';
  readonly methods: readonly string[];
  readonly keys: JwtKeyStore;

  constructor(private readonly config: JwtProviderConfig) {
    this.methods = [config.method];
    this.keys = new JwtKeyStore(config);
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
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(text, this.keys.getKey, {
        algorithms: [...this.config.algorithms],
        issuer: this.config.issuer,
        audience: this.config.audience,
        clockTolerance: this.config.clockSkewSeconds,
        ...(this.config.requireExp ? { requiredClaims: ['exp'] } : {}),
      }));
    } catch (err) {
      if (signal?.aborted) return deny(ReasonCode.ServerUnavailable, 'deadline passed while verifying the token');
      return deny(...describe(err));
    }
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
        ...(typeof payload.exp === 'number' ? { expiresAt: payload.exp * 1000 } : {}),
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
