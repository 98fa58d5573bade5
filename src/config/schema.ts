/**
 * The configuration schema. Every key has a safe default; a bad value stops the start with a
 * message naming the key and what is wrong.
 */
import { z } from 'zod';
import { certificateProvider, checkTlsListener, pskProvider, tlsSettings } from './tls-schema.ts';
import { authGuard, credentialCache, identityRules, isLoopbackHost, jwtProvider, moduleProvider, passwordProvider } from './auth-schema.ts';
import { admission, connectionLimits, listenerLimits } from './admission-schema.ts';
import { rateLimits } from './rate-limit-schema.ts';
import { storeConfig } from './store-schema.ts';
import { clusterConfig, workerCount, workersConfig } from './cluster-schema.ts';

const port = z.number().int().min(0).max(65535);
const positiveInt = z.number().int().positive();

const providerSpec = z.union([
  z.literal('anonymous').transform(() => ({ provider: 'anonymous' as const })),
  z.strictObject({ provider: z.literal('anonymous') }),
  z.literal('certificate').transform(() => certificateProvider.parse({ provider: 'certificate' })),
  certificateProvider,
  z.literal('psk').transform(() => pskProvider.parse({ provider: 'psk' })),
  pskProvider,
  passwordProvider,
  jwtProvider,
  moduleProvider,
  z.strictObject({
    provider: z.literal('static-users'),
    users: z
      .array(
        z.strictObject({
          username: z.string().min(1),
          password: z.string().min(1, 'must not be empty'),
          roles: z.array(z.string()).default([]),
        }),
      )
      .min(1, 'needs at least one user'),
  }),
], { error: "unknown authentication provider: expected 'anonymous', 'certificate', 'psk', { provider: 'password', file }, { provider: 'jwt', ... }, { provider: 'module', path } or { provider: 'static-users', users: [...] }" });

/** Routes objects naming an own-schema provider to that schema, so its errors name the exact key. */
const keyedProviders = { password: passwordProvider, jwt: jwtProvider, module: moduleProvider } as const;
const providerEntry = z.unknown().transform((v, ctx): z.output<typeof providerSpec> => {
  const name = v !== null && typeof v === 'object' ? (v as { provider?: unknown }).provider : undefined;
  const schema = typeof name === 'string' && Object.hasOwn(keyedProviders, name) ? keyedProviders[name as keyof typeof keyedProviders] : providerSpec;
  const r = schema.safeParse(v);
  if (r.success) return r.data;
  for (const issue of r.error.issues) ctx.addIssue({ code: 'custom', message: issue.message, path: issue.path });
  return z.NEVER;
});

const listenerBase = {
  name: z.string().min(1).optional(),
  host: z.string().min(1).default('127.0.0.1'),
  /** The ordered authentication chain. Empty means every client is refused. */
  auth: z.array(providerEntry).default([]),
  /** Identity rules applied after a provider allowed: client id binding, wildcard refusal. */
  identity: identityRules,
  /** This listener's own connection caps and connect rate (see docs/configuration.md). */
  limits: listenerLimits,
};

const tcpListener = z.strictObject({
  ...listenerBase,
  type: z.literal('tcp'),
  port: port.default(1883),
});

const wsListener = z.strictObject({
  ...listenerBase,
  type: z.literal('ws'),
  port: port.default(8080),
  path: z.string().startsWith('/').default('/mqtt'),
});

const tlsListener = z
  .strictObject({
    ...listenerBase,
    type: z.literal('tls'),
    port: port.default(8883),
    ...tlsSettings,
  })
  .superRefine(checkTlsListener);

const wssListener = z
  .strictObject({
    ...listenerBase,
    type: z.literal('wss'),
    port: port.default(8443),
    path: z.string().startsWith('/').default('/mqtt'),
    ...tlsSettings,
  })
  .superRefine(checkTlsListener);

const casbinAuthorizer = z.strictObject({
  type: z.literal('casbin'),
  id: z.string().min(1).default('casbin'),
  /** The Casbin model file (see policies/model.conf). */
  model: z.string().min(1).default('policies/model.conf'),
  /** The policy file. Missing or empty: every action is denied. */
  policy: z.string().min(1),
  /** Reload when the model or policy file changes. */
  watch: z.boolean().default(true),
  /** Most cached decisions, all principals together; 0 disables the cache. */
  cacheSize: z.number().int().min(0).default(100_000),
  /** How a JWT topic claim (principal.attributes.jwt[claim]) combines with the policy. */
  jwtTopics: z
    .strictObject({ claim: z.string().min(1).default('topics'), mode: z.enum(['intersection', 'union', 'ignore']).default('intersection') })
    .prefault({}),
  /**
   * A subscribe deny rule that overlaps a filter without covering it: `withhold` grants the
   * subscription and withholds every delivery the rule covers; `refuse` refuses the filter.
   */
  subscribeDenyOverlap: z.enum(['withhold', 'refuse']).default('withhold'),
  /**
   * Policy lines keyed on the client id (`client:` subjects, `g, client:...`, `%c`): refused
   * unless every listener binds client ids (`require-binding`), or allowed only on the
   * listeners that bind them (`bound-listeners`).
   */
  clientIdRules: z.enum(['require-binding', 'bound-listeners']).default('require-binding'),
});

const moduleAuthorizer = z.strictObject({
  type: z.literal('module'),
  /** A module (path relative to the working directory) whose default export or `createAuthorizer` builds an Authorizer. */
  path: z.string().min(1),
  /** Passed to the factory as is. */
  options: z.record(z.string(), z.unknown()).default({}),
});

const authorizerSpec = z.preprocess(
  (v) => (v === 'allow-all' ? { type: 'allow-all' } : v),
  z.discriminatedUnion('type', [z.strictObject({ type: z.literal('allow-all') }), casbinAuthorizer, moduleAuthorizer], {
    error: "unknown authorizer: expected 'allow-all', { type: 'casbin', policy: ... } or { type: 'module', path: ... }",
  }),
);

const limits = z
  .strictObject({
    maxPacketSize: z.number().int().min(64).max(268435455).default(1024 * 1024),
    maxConnectSize: z.number().int().min(64).max(268435455).default(64 * 1024),
    connectTimeoutMs: positiveInt.default(10_000),
    maxKeepAlive: z.number().int().min(1).max(65535).default(3600),
    /**
     * Keep-alive 0 turns keep-alive off ([MQTT-3.1.2-10]) and is accepted. With a value here, a
     * client that asked for 0 is still ended after this many idle seconds (v5 learns it as Server
     * Keep Alive). 0: no limit, as the spec and every common client expect.
     */
    keepAliveZeroMaxIdle: z.number().int().min(0).max(65535).default(0),
    maxClientIdLength: z.number().int().min(23).max(65535).default(256),
    maxTopicLength: z.number().int().min(1).max(65535).default(4096),
    maxTopicLevels: z.number().int().min(1).max(1024).default(64),
    /** Longest share name in `$share/{name}/{filter}`, in bytes (the whole filter also counts against maxTopicLength). */
    maxShareNameLength: z.number().int().min(1).max(65535).default(128),
    maxUserProperties: z.number().int().min(0).max(65535).default(32),
    receiveMaximum: z.number().int().min(1).max(65535).default(64),
    maxInflight: z.number().int().min(1).max(65535).default(64),
    maxQueuedMessages: z.number().int().min(0).default(1000),
    /** Queued bytes (payload + topic) per session; over it QoS 0 is dropped first, then new QoS 1/2 refused. */
    maxQueuedBytes: z.number().int().min(1024).default(16 * 1024 * 1024),
    /** Bytes waiting in a client's socket before the broker stops writing to it and queues instead. */
    maxSocketBufferBytes: z.number().int().min(16 * 1024).default(1024 * 1024),
    /** A connected client whose queue stays full, with no progress, this long is disconnected (0x97); 0: never. */
    slowConsumerTimeoutMs: z.number().int().min(0).default(30_000),
    /**
     * Flow control back to publishers: while a connected subscriber's queue is over half its
     * limits, the publishers of QoS 1/2 messages queued for it are not read, until it is down to
     * a quarter. A subscriber that acknowledges nothing for `stallMs` while it holds publishers
     * is stalled: it holds nobody until it has caught up (its queue limits apply as before).
     */
    flowControl: z
      .strictObject({
        enabled: z.boolean().default(true),
        stallMs: z.number().int().min(100).max(600_000).default(5000),
        /** The longest one subscriber holds its publishers at a time, however it acks. */
        maxHoldMs: z.number().int().min(100).max(3_600_000).default(10_000),
      })
      .prefault({}),
    queueQos0: z.boolean().default(false),
    topicAliasMaximum: z.number().int().min(0).max(65535).default(32),
    maxSubscriptionsPerClient: positiveInt.default(1000),
    maxSessionExpiry: z.number().int().min(0).max(0xffffffff).default(7 * 24 * 3600),
    /** Retained messages the whole broker keeps, by count and by bytes (topic, payload, properties). */
    maxRetainedMessages: positiveInt.default(1_000_000),
    maxRetainedBytes: positiveInt.default(1024 * 1024 * 1024),
    /**
     * Per identity, across all its sessions (anonymous clients: per source address): what one
     * identity may hold. Over a quota: v5 0x97 Quota exceeded, audited (see docs/configuration.md).
     */
    quotas: z
      .strictObject({
        retainedMessages: positiveInt.default(10_000),
        retainedBytes: positiveInt.default(64 * 1024 * 1024),
        persistentSessions: positiveInt.default(100),
        subscriptions: positiveInt.default(10_000),
        queuedBytes: positiveInt.default(128 * 1024 * 1024),
      })
      .prefault({}),
    /** Connection caps and the connect rate per source address, enforced at accept time. */
    ...connectionLimits,
  })
  .prefault({});

/** Syslog facilities by name, as `audit.anchor.syslog.facility` takes them. */
const syslogFacilities = { kern: 0, user: 1, daemon: 3, auth: 4, syslog: 5, authpriv: 10, local0: 16, local1: 17, local2: 18, local3: 19, local4: 20, local5: 21, local6: 22, local7: 23 } as const;

/** The outside witness of the audit log: where each signed checkpoint's digest also goes (see docs/audit.md). Off by default. */
const auditAnchor = z
  .strictObject({
    /** Names the log in each anchor; default: the host name and `audit.path`. */
    name: z.string().min(1).optional(),
    /** One line per checkpoint in the operational log (at info, whatever `log.level` is). */
    log: z.boolean().default(false),
    syslog: z
      .strictObject({
        host: z.string().min(1),
        port: port.default(514),
        transport: z.enum(['udp', 'tcp']).default('tcp'),
        facility: z.enum(Object.keys(syslogFacilities) as [keyof typeof syslogFacilities, ...(keyof typeof syslogFacilities)[]]).default('local0').transform((f) => syslogFacilities[f]),
        appName: z.string().regex(/^[!-~]{1,48}$/, 'printable ASCII without spaces, at most 48 characters').default('portcullis'),
      })
      .optional(),
    http: z
      .strictObject({
        url: z.string().refine((u) => /^https?:\/\//.test(u) && URL.canParse(u), 'must be an http:// or https:// URL'),
        /** Extra request headers, for example an Authorization header. */
        headers: z.record(z.string(), z.string()).default({}),
      })
      .optional(),
    /** Deadline of one delivery attempt (syslog over TCP, HTTP). */
    timeoutMs: positiveInt.default(2000),
    /** Attempts per anchor before it is given up (logged and audited). */
    attempts: z.number().int().min(1).max(10).default(3),
    retryDelayMs: z.number().int().min(0).default(1000),
  })
  .prefault({});

export const configSchema = z.strictObject({
  listeners: z
    .array(z.discriminatedUnion('type', [tcpListener, wsListener, tlsListener, wssListener]))
    .min(1, 'needs at least one listener')
    .prefault([{ type: 'tcp', host: '127.0.0.1', port: 1883, auth: [] }]),
  /** The authorizer chain. Empty means every publish and subscribe is denied. */
  authorizers: z.array(authorizerSpec).default([]),
  limits,
  log: z
    .strictObject({
      level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
      /** `pretty` (readable lines) or `json` (JSON lines); unset: pretty when standard error is a terminal, JSON otherwise. */
      format: z.enum(['pretty', 'json']).optional(),
    })
    .prefault({}),
  audit: z
    .strictObject({
      sink: z.enum(['file', 'stdout', 'none']).default('file'),
      path: z.string().min(1).default('data/audit.jsonl'),
      maxQueue: positiveInt.default(100_000),
      /** What the broker does while records cannot be written: refuse connects and deny access, or keep serving. */
      failMode: z.enum(['fail-closed', 'fail-open']).default('fail-closed'),
      /** fsync the audit file at most this often; 0 syncs after every batch. */
      fsyncIntervalMs: z.number().int().min(0).default(1000),
      retryIntervalMs: positiveInt.default(1000),
      rotate: z
        .strictObject({
          /** 0 turns size rotation off. */
          maxBytes: z.number().int().min(0).default(100 * 1024 * 1024),
          /** 0 turns time rotation off. */
          intervalSeconds: z.number().int().min(0).default(86_400),
        })
        .prefault({}),
      retention: z
        .strictObject({
          /** Rotated files kept; 0 keeps all. */
          maxFiles: z.number().int().min(0).default(30),
          /** 0 keeps rotated files whatever their age. */
          maxAgeDays: z.number().int().min(0).default(0),
          /** Retention deleting a rotated file last written less than this long ago raises an alarm (log and audit); 0 never. */
          alarmMinAgeHours: z.number().int().min(0).default(24),
        })
        .prefault({}),
      checkpoint: z
        .strictObject({
          /** An Ed25519 private key (PKCS#8 PEM); with it, signed checkpoints are written. */
          keyFile: z.string().min(1).optional(),
          keyId: z.string().min(1).optional(),
          intervalSeconds: positiveInt.default(60),
        })
        .prefault({}),
      anchor: auditAnchor,
      /** Topics and filters longer than this are cut in records, which then give their length and SHA-256. */
      maxTopicLength: z.number().int().min(16).max(65535).default(512),
      /** Repeated access denials: summarised per connection, and a limit that disconnects (see docs/audit.md). */
      denials: z
        .strictObject({
          summarize: z.boolean().default(true),
          /** The summary window, per connection and kind of denial. */
          intervalSeconds: positiveInt.default(10),
          /** Denials per connection and kind written in full per window before the rest are counted. */
          fullRecords: positiveInt.default(3),
          /** Disconnect a client after this many denials of its own requests within disconnectWindowSeconds; 0 never. */
          disconnectAfter: z.number().int().min(0).default(1000),
          disconnectWindowSeconds: positiveInt.default(10),
        })
        .prefault({}),
      /** Allowed decisions to record per action; denials are always recorded. */
      allowed: z
        .strictObject({
          connect: z.boolean().default(true),
          publish: z.boolean().default(false),
          subscribe: z.boolean().default(true),
          unsubscribe: z.boolean().default(true),
          deliver: z.boolean().default(false),
          /**
           * Allowed decisions per connection and kind written in full per audit.denials window
           * before the rest are counted into one summary record (with audit.denials.summarize).
           */
          fullRecords: positiveInt.default(100),
        })
        .prefault({}),
    })
    .prefault({}),
  /** Where sessions and retained messages persist: durable (LMDB under data/store) unless `type: memory`. */
  store: storeConfig,
  sys: z.strictObject({ intervalSeconds: z.number().int().min(0).default(10) }).prefault({}),
  shutdown: z.strictObject({ graceMs: positiveInt.default(5000) }).prefault({}),
  authDeadlineMs: positiveInt.default(5000),
  authzDeadlineMs: positiveInt.default(5000),
  /** Failed-login backoff and bans (see docs/authentication.md). */
  authGuard,
  /** The verified-credential cache for the password provider; off by default. */
  credentialCache,
  /** Exemptions, flapping detection and the ban file (see docs/bans.md). */
  admission,
  /** PUBLISH rate limits per connection and per identity; off by default (see docs/configuration.md). */
  rateLimits,
  /** Several nodes that behave as one broker, over Redis; off by default (see docs/cluster.md). */
  cluster: clusterConfig,
  /** Processes on this machine sharing the listeners (each a cluster node); more than 1 needs `cluster`. */
  workers: workersConfig,
  /**
   * The operations HTTP listener: Prometheus metrics, health checks, the admin API and the ops
   * console (docs/operations.md). Off unless set. On an address other than loopback it needs
   * authentication: a token file or a client CA (mTLS).
   */
  http: z
    .strictObject({
      host: z.string().min(1).default('127.0.0.1'),
      port: port.default(9234),
      /** HTTPS; with `ca`, client certificates from that CA authenticate (mTLS). */
      tls: z
        .strictObject({
          cert: z.string().min(1),
          key: z.string().min(1),
          ca: z.string().min(1).optional(),
          /** A PEM file of CRLs for the client certificates. */
          crl: z.string().min(1).optional(),
          minVersion: z.enum(['TLSv1.2', 'TLSv1.3']).default('TLSv1.2'),
        })
        .optional(),
      auth: z
        .strictObject({
          /** Bearer tokens, argon2id-hashed, one JSON object per line (`portcullis token add`). */
          tokens: z.string().min(1).optional(),
          /** The Casbin model and the admin policy (roles against `admin/...` objects). */
          model: z.string().min(1).default('policies/model.conf'),
          policy: z.string().min(1).default('policies/admin/policy.csv'),
          /** How long a verified token is remembered in memory (keyed by an HMAC of it); 0: argon2 on every request. */
          tokenCacheSeconds: z.number().int().min(0).max(3600).default(300),
          /** Failed authentications per source address: a burst, then this many per minute; over it, 429. */
          failures: z.strictObject({ burst: positiveInt.default(20), perMinute: positiveInt.default(30) }).prefault({}),
        })
        .prefault({}),
      metrics: z
        .strictObject({
          enabled: z.boolean().default(true),
          /** Serve /metrics without authentication even when authentication is configured. */
          public: z.boolean().default(false),
          /** Time one received message in this many for portcullis_publish_to_deliver_seconds. */
          latencySampleEvery: z.number().int().min(1).max(1_000_000).default(64),
        })
        .prefault({}),
      /** The admin API (/api/v1) and the ops console (/console/). */
      api: z.strictObject({ enabled: z.boolean().default(true) }).prefault({}),
      console: z
        .strictObject({
          enabled: z.boolean().default(true),
          /** Certificates (listeners, CAs, CRLs, connected clients) expiring within this many days are listed. */
          expiryWarningDays: z.number().int().min(1).max(3650).default(30),
        })
        .prefault({}),
      /** Largest request body, in bytes; larger: 413. */
      bodyLimit: z.number().int().min(1024).max(16 * 1024 * 1024).default(64 * 1024),
      /**
       * Open connections one source address may hold (of the listener's 256); more are closed at
       * accept. Not tiny: several operators and tools may share one address behind NAT.
       */
      maxConnectionsPerAddress: z.number().int().min(1).max(256).default(32),
      /**
       * Host names (the `Host` header, without the port) accepted besides `localhost`, the bind
       * address and IP literals; any other gets 421 (DNS rebinding). Names only, no ports, no wildcards.
       */
      allowedHosts: z
        .array(
          z
            .string()
            .min(1)
            .max(253)
            .regex(/^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?$/, 'must be a host name (letters, digits, - and dots; no port, no wildcard)'),
        )
        .max(64)
        .default([]),
    })
    .superRefine((h, ctx) => {
      const loopback = isLoopbackHost(h.host);
      if (!loopback && h.auth.tokens === undefined && h.tls?.ca === undefined) {
        ctx.addIssue({
          code: 'custom',
          path: ['auth'],
          message: `the operations listener on ${h.host} (not loopback) needs authentication: set http.auth.tokens (see \`portcullis token add\`) or http.tls.ca for client certificates`,
        });
      }
      if (h.tls?.crl !== undefined && h.tls.ca === undefined) ctx.addIssue({ code: 'custom', path: ['tls', 'crl'], message: 'a CRL needs http.tls.ca (the CA of the client certificates)' });
    })
    .optional(),
});

export type ConfigInput = z.input<typeof configSchema>;
export type Config = z.output<typeof configSchema>;
export type ListenerConfig = Config['listeners'][number];
export type ProviderConfig = ListenerConfig['auth'][number];
export type AuthorizerConfig = Config['authorizers'][number];
export type LimitsConfig = Config['limits'];

/** A configuration error with a stable code, naming every key that is wrong. */
export class ConfigError extends Error {
  readonly code = 'ERR_PORTCULLIS_CONFIG';
  constructor(
    message: string,
    readonly issues: { key: string; message: string }[] = [],
  ) {
    super(message);
  }
}

/** Validates and fills defaults. Throws {@link ConfigError} naming each bad key. */
export function parseConfig(input: unknown, source = 'configuration'): Config {
  const result = configSchema.safeParse(input ?? {});
  if (!result.success) {
    const issues = result.error.issues.map((issue) => ({
      key: issue.path.length ? issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : String(p))).join('.').replace(/\.\[/g, '[') : '(root)',
      message: issue.message,
    }));
    throw new ConfigError(
      `invalid ${source}:\n` + issues.map((i) => `  - ${i.key}: ${i.message}`).join('\n'),
      issues,
    );
  }
  const config = result.data;
  const names = new Set<string>();
  config.listeners.forEach((listener, i) => {
    listener.name ??= `${listener.type}-${listener.port}`;
    if (names.has(listener.name)) {
      throw new ConfigError(`invalid ${source}:\n  - listeners[${i}].name: duplicate listener name '${listener.name}'`, [
        { key: `listeners[${i}].name`, message: 'duplicate listener name' },
      ]);
    }
    names.add(listener.name);
  });
  if (workerCount(config.workers) > 1 && config.cluster === undefined) {
    const message = `${config.workers === 'auto' ? `'auto' (${workerCount(config.workers)} on this machine)` : config.workers} workers need \`cluster\` (cluster.redis and cluster.keyFile): every worker is a node of one cluster; set workers: 1 or configure the cluster`;
    throw new ConfigError(`invalid ${source}:\n  - workers: ${message}`, [{ key: 'workers', message }]);
  }
  return config;
}
