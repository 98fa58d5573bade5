/**
 * Configuration of the password, JWT and module authentication providers, of per-listener
 * identity rules (client id binding, wildcard refusal) and of failed-login protection.
 * Imported by schema.ts. See docs/authentication.md.
 */
import { z } from 'zod';

/** OWASP minimums for argon2id (Password Storage Cheat Sheet): 19 MiB, 2 passes, 1 lane. */
export const ARGON2_FLOOR = { memoryKiB: 19_456, timeCost: 2, parallelism: 1 } as const;

export const argon2Params = z
  .strictObject({
    memoryKiB: z.number().int().min(ARGON2_FLOOR.memoryKiB, `must be at least ${ARGON2_FLOOR.memoryKiB} KiB (OWASP minimum)`).max(4 * 1024 * 1024).default(ARGON2_FLOOR.memoryKiB),
    timeCost: z.number().int().min(ARGON2_FLOOR.timeCost, `must be at least ${ARGON2_FLOOR.timeCost} (OWASP minimum)`).max(100).default(ARGON2_FLOOR.timeCost),
    parallelism: z.number().int().min(ARGON2_FLOOR.parallelism).max(16).default(ARGON2_FLOOR.parallelism),
  })
  .prefault({});
export type Argon2Params = z.output<typeof argon2Params>;

export const passwordProvider = z.strictObject({
  provider: z.literal('password'),
  /** The password file: `user:$argon2id$...[:role,role]` per line (see `portcullis passwd`). */
  file: z.string().min(1),
  /** Reload when the file changes (SIGHUP always reloads). */
  watch: z.boolean().default(true),
  /** The floor for hashes in the file and the parameters of the dummy hash unknown users are checked against. */
  argon2: argon2Params,
  /** Longer user names or passwords are refused before argon2 runs. */
  maxUsernameBytes: z.number().int().min(1).max(65535).default(256),
  maxPasswordBytes: z.number().int().min(1).max(65535).default(1024),
  /** Users not in the file: deny (default) or abstain so a later provider may decide. Both take one argon2 verification. */
  unknownUser: z.enum(['deny', 'abstain']).default('deny'),
});
export type PasswordProviderConfig = z.output<typeof passwordProvider>;

export const JWT_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'HS256', 'HS384', 'HS512'] as const;

export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h);
}

export const jwtProvider = z
  .strictObject({
    provider: z.literal('jwt'),
    /** Algorithms accepted; anything else (and always `none`) is refused. */
    algorithms: z.array(z.enum(JWT_ALGORITHMS, { error: `unknown or forbidden algorithm: expected one of ${JWT_ALGORITHMS.join(', ')} ('none' is never accepted)` })).min(1, 'name at least one algorithm'),
    /** Required `iss`: one value or a list. */
    issuer: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)], { error: 'required: the issuer (iss) every token must carry, a string or a list' }),
    /** Required `aud`: one value or a list. */
    audience: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)], { error: 'required: the audience (aud) every token must carry, a string or a list' }),
    /** Static verification keys: PEM (SPKI public key) or JWK / JWKS JSON files. */
    keyFiles: z.array(z.string().min(1)).default([]),
    jwks: z
      .strictObject({
        /** https://...; plain http only to a loopback host (tests). */
        url: z.string().url(),
        timeoutMs: z.number().int().min(50).max(60_000).default(2000),
        /** Least time between two fetches caused by an unknown `kid`. */
        cooldownMs: z.number().int().min(0).default(30_000),
        /** The key set is fetched again after this long (a failed fetch keeps the last good set). */
        maxAgeMs: z.number().int().min(1000).default(600_000),
        maxBytes: z.number().int().min(1024).default(1024 * 1024),
      })
      .optional(),
    clockSkewSeconds: z.number().int().min(0).max(600).default(30),
    /** Tokens without `exp` are refused unless this is false. */
    requireExp: z.boolean().default(true),
    maxTokenBytes: z.number().int().min(64).max(65535).default(8192),
    claims: z
      .strictObject({
        /** The claim that becomes the username. */
        username: z.string().min(1).default('sub'),
        /** If set, the client id must equal this claim. */
        clientId: z.string().min(1).optional(),
        /** A string or string list of roles. */
        roles: z.string().min(1).default('roles'),
      })
      .prefault({}),
    /** The MQTT username, when given, must equal the username claim. */
    requireUsernameMatch: z.boolean().default(true),
    /** A password that is not a compact JWS: abstain (for mixed chains) instead of deny. */
    abstainOnNonJwt: z.boolean().default(false),
    /** The MQTT 5 authentication method name for enhanced authentication and re-authentication. */
    method: z.string().min(1).default('JWT'),
    /**
     * Verified-token cache: a token whose signature and claims were verified is remembered (by
     * its SHA-256) so a reconnect with the same token skips the signature check. `exp` is checked
     * again on every hit (a token is only cached once `nbf` has passed); a change of the key set
     * voids it. Off by default, like the password provider's credential cache: see SECURITY.md.
     */
    cache: z
      .strictObject({
        enabled: z.boolean().default(false),
        maxEntries: z.number().int().min(1).max(1_000_000).default(10_000),
        ttlSeconds: z.number().int().min(1).max(3600).default(300),
      })
      .prefault({}),
  })
  .superRefine((p, ctx) => {
    if (p.keyFiles.length === 0 && p.jwks === undefined) ctx.addIssue({ code: 'custom', path: ['keyFiles'], message: 'give keyFiles, a jwks url, or both' });
    if (p.jwks !== undefined) {
      const u = new URL(p.jwks.url);
      if (u.protocol !== 'https:' && !(u.protocol === 'http:' && isLoopbackHost(u.hostname))) {
        ctx.addIssue({ code: 'custom', path: ['jwks', 'url'], message: 'must be https (plain http is only accepted to a loopback host)' });
      }
    }
  });
export type JwtProviderConfig = z.output<typeof jwtProvider>;

export const moduleProvider = z.strictObject({
  provider: z.literal('module'),
  /** A module whose default export or `createAuthenticator` builds an Authenticator. */
  path: z.string().min(1),
  options: z.record(z.string(), z.unknown()).default({}),
});
export type ModuleProviderConfig = z.output<typeof moduleProvider>;

/** Per-listener identity rules, applied after a provider allowed. */
export const identityRules = z
  .strictObject({
    /** Client id binding: must equal the identity, or (prefix) be the identity followed by the separator and more. */
    clientIdBinding: z.enum(['none', 'equals', 'prefix']).default('none'),
    /** With prefix binding: what follows the identity in the client id (`dev` admits `dev` and `dev-2`, never `device-2`). */
    clientIdSeparator: z.string().min(1).max(8).default('-'),
    /** The identity the client id is bound to. */
    bindTo: z.enum(['username', 'cert-cn']).default('username'),
    /** Refuse user names and client ids with + # or U+0000 (they would widen %u / %c ACL placeholders). */
    refuseWildcards: z.boolean().default(true),
  })
  .prefault({});
export type IdentityRules = z.output<typeof identityRules>;

/** One throttle: free failures, then an exponential delay between credential checks. */
const throttle = (backoffAfter: number) =>
  z
    .strictObject({
      /** Failed logins before credential checks on this key are spaced out. */
      backoffAfter: z.number().int().min(1).default(backoffAfter),
      /** The space after the first failure over `backoffAfter`; it doubles with each further failure ... */
      baseDelayMs: z.number().int().min(1).default(1000),
      /** ... up to this. */
      maxDelayMs: z.number().int().min(1).default(60_000),
    })
    .prefault({});

/** An automatic ban, off by default: it cannot tell a guesser from the clients that share its key. */
const autoBan = z
  .strictObject({
    enabled: z.boolean().default(false),
    /** Failed logins (within `forgetAfterMs` of each other) before a ban. */
    after: z.number().int().min(1).default(100),
    banMs: z.number().int().min(100).default(5 * 60_000),
    /** Each repeated ban doubles, up to this cap. */
    maxBanMs: z.number().int().min(100).default(60 * 60_000),
  })
  .prefault({});

/** Keys of the flat authGuard of earlier versions, and what replaced them. */
const REPLACED_GUARD_KEYS: Record<string, string> = {
  byIp: 'failures are no longer counted by address alone: see authGuard.address (checks per second) and authGuard.bans.address (off by default)',
  byUsername: 'authGuard.username.enabled',
  backoffAfter: 'authGuard.pair.backoffAfter and authGuard.username.backoffAfter',
  baseDelayMs: 'authGuard.pair.baseDelayMs and authGuard.username.baseDelayMs',
  maxDelayMs: 'authGuard.pair.maxDelayMs and authGuard.username.maxDelayMs',
  banAfter: 'authGuard.bans.address.after and authGuard.bans.username.after (bans are off by default)',
  banMs: 'authGuard.bans.address.banMs and authGuard.bans.username.banMs',
  maxBanMs: 'authGuard.bans.address.maxBanMs and authGuard.bans.username.maxBanMs',
};

/**
 * Failed-login protection (docs/authentication.md#protection-against-abuse). It throttles what is
 * guessed: the (source address, user name) pair and the user name across addresses. The source
 * address alone only caps credential checks per second. A failure is a credential that a
 * provider checked and found wrong; an attempt the guard delays or refuses is not one.
 */
export const authGuard = z
  .preprocess(
    (v, ctx) => {
      if (v === null || typeof v !== 'object') return v;
      for (const [key, instead] of Object.entries(REPLACED_GUARD_KEYS)) {
        if (Object.hasOwn(v, key)) ctx.addIssue({ code: 'custom', path: [key], message: `replaced: use ${instead} (docs/authentication.md#protection-against-abuse)`, input: v });
      }
      return v;
    },
    z.strictObject({
      /** false turns throttling and bans off. The check queue (a resource cap) stays. */
      enabled: z.boolean().default(true),
      /** The (source address, user name) pair. */
      pair: throttle(5),
      /** The user name across all addresses: slows distributed guessing of one user. */
      username: z
        .strictObject({
          enabled: z.boolean().default(true),
          backoffAfter: z.number().int().min(1).default(20),
          baseDelayMs: z.number().int().min(1).default(1000),
          maxDelayMs: z.number().int().min(1).default(60_000),
        })
        .prefault({}),
      /**
       * Credential checks (of a guessable secret) per second from one source address. A check that
       * succeeds gives its token back, so this caps failed checks (and checks in flight), not
       * logins. Known-good clients are not counted. 0 turns it off.
       */
      address: z
        .strictObject({
          checksPerSecond: z.number().min(0).max(100_000).default(5),
          burst: z.number().int().min(1).max(100_000).default(20),
        })
        .prefault({}),
      /**
       * A client (source address, user name, client id) whose login succeeded within `windowMs`
       * is known good: failures that others cause on its user name or address do not hold it back.
       */
      knownGood: z
        .strictObject({
          windowMs: z.number().int().min(1000).max(30 * 24 * 3600_000).default(24 * 3600_000),
          /** Most known-good clients remembered; the least recently successful are forgotten first. */
          maxEntries: z.number().int().min(100).max(10_000_000).default(100_000),
        })
        .prefault({}),
      /**
       * A throttled attempt waits (its CONNACK is delayed) for its turn when that comes within
       * `maxHoldMs`; otherwise it is refused after `maxHoldMs`, so a retry loop cannot spin.
       */
      tarpit: z
        .strictObject({
          maxHoldMs: z.number().int().min(0).max(60_000).default(3000),
          /** Most attempts held at once (all addresses); beyond it, throttled attempts are refused at once. */
          maxHeld: z.number().int().min(0).max(1_000_000).default(1000),
        })
        .prefault({}),
      /** Automatic bans: both off by default. An operator's bans (`portcullis ban`) are separate. */
      bans: z.strictObject({ address: autoBan, username: autoBan }).prefault({}),
      /**
       * Credential checks running at once (argon2 on libuv's thread pool) and waiting. Beyond
       * `maxWaiting` a connect is refused with 0x88. Applies even with `enabled: false`.
       */
      checkQueue: z
        .strictObject({
          /** Default: the thread pool size (UV_THREADPOOL_SIZE, 4) minus one, at most the CPU count; one thread stays free for the audit log. */
          maxRunning: z.number().int().min(1).max(1024).optional(),
          maxWaiting: z.number().int().min(0).max(1_000_000).default(100),
        })
        .prefault({}),
      /** Failures are forgotten after this long without one. */
      forgetAfterMs: z.number().int().min(1000).default(15 * 60_000),
      /** Most tracked keys of each kind (pairs, user names, addresses); the least recently failed are dropped first. */
      maxEntries: z.number().int().min(100).default(100_000),
    }),
  )
  .prefault({});
export type AuthGuardConfig = z.output<typeof authGuard>;

/** The verified-credential cache: off by default (see SECURITY.md for the trade-off). */
export const credentialCache = z
  .strictObject({
    enabled: z.boolean().default(false),
    ttlMs: z.number().int().min(100).max(10 * 60_000).default(60_000),
    maxEntries: z.number().int().min(1).max(1_000_000).default(10_000),
  })
  .prefault({});
export type CredentialCacheConfig = z.output<typeof credentialCache>;
