/**
 * The request pipeline of the operations listener, as Fastify lifecycle hooks (registered before
 * the listener starts, in this order):
 *
 *   onRequest   host        a Host the listener is not configured for → 421 (DNS rebinding)
 *               identify    client certificate (mTLS); or a bearer token verified moments ago (the
 *                           cache: no argon2, no throttle); or a bearer token, throttled on its own
 *                           failures when its id exists; else throttled by address → 429; → 401
 *               media type  a request other than GET/HEAD without `Content-Type: application/json`
 *                           → 415, body or not (a cross-site page cannot send that type without a
 *                           CORS preflight, which this listener never grants)
 *               authorize   the admin policy: `read` or `publish` on `admin/<resource>` → 403
 *   (Fastify)   parse JSON body (413, 400, 415), validate params, query and body (400)
 *   handler
 *   onSend      security headers
 *   onResponse  one audit record per admin API call and per refusal anywhere; request counters
 *
 * A caller is identified before its body is read: an unauthenticated client never gets its
 * body parsed. Unknown routes go through the same hooks, so they too need a caller (and the
 * route map is not shown to strangers), get 404 and are audited.
 */
import type { TLSSocket } from 'node:tls';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { AdminAuthorizer, AdminPrincipal } from './admin-authz.ts';
import type { OpsContext } from './context.ts';
import { ApiError, toApiError, type ErrorBody } from './errors.ts';
import type { HostCheck } from './host-check.ts';
import type { RefusalKind, RefusalSummary } from './refusal-summary.ts';
import type { AuthThrottle, ThrottleSubject } from './throttle.ts';
import type { TokenAuthenticator } from './token-auth.ts';
import type { TokenEntry } from './token-file.ts';

const CLIENT_AUTH_OID = '1.3.6.1.5.5.7.3.2';

export interface PipelineParts {
  ctx: OpsContext;
  tokens: TokenAuthenticator | undefined;
  authz: AdminAuthorizer;
  throttle: AuthThrottle;
  hosts: HostCheck;
  /** Refusals a stranger can repeat at will are audited through it, summarised. */
  refusals: RefusalSummary;
  /** Client certificates are asked for (http.tls.ca). */
  mtls: boolean;
}

/** Methods that change nothing; every other one must say it sends JSON. */
const SAFE_METHODS = new Set(['GET', 'HEAD']);

/** The refusals audited through the summary, by error code (and every 401, by status). */
const SUMMARISED: Partial<Record<string, RefusalKind>> = {
  ERR_TOO_MANY_FAILURES: 'throttled',
  ERR_HOST_NOT_ALLOWED: 'host',
  ERR_BUSY: 'busy',
};

/** What Node reports for a client certificate it could not verify, in words. */
const CERT_ERRORS: Record<string, string> = {
  CERT_HAS_EXPIRED: 'client certificate expired',
  CERT_NOT_YET_VALID: 'client certificate not yet valid',
  CERT_REVOKED: 'client certificate revoked',
  UNABLE_TO_GET_CRL: 'no CRL for the client certificate issuer',
  CRL_HAS_EXPIRED: 'the CRL for the client certificate expired',
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 'client certificate from an unknown CA',
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'client certificate from an unknown CA',
  SELF_SIGNED_CERT_IN_CHAIN: 'client certificate from an unknown CA',
  DEPTH_ZERO_SELF_SIGNED_CERT: 'self-signed client certificate',
};

const CONSOLE_CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
const API_CSP = "default-src 'none'; frame-ancestors 'none'";

export function installPipeline(app: FastifyInstance, parts: PipelineParts): void {
  const { ctx, tokens, authz, throttle, hosts, refusals, mtls } = parts;
  const authConfigured = tokens !== undefined || mtls;
  const metricsPublic = ctx.http.metrics.public || !authConfigured;

  app.decorateRequest('ops', null as unknown as FastifyRequest['ops']);

  // Only JSON is parsed. An empty body with the JSON type is an empty object (a reload sends the
  // type and nothing else); a route that needs fields refuses it by its schema.
  app.removeAllContentTypeParsers();
  const json = app.getDefaultJsonParser('error', 'error');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) => {
    if (body === '') {
      done(null, {});
      return;
    }
    json(req, body as string, done);
  });

  // ── onRequest: where to, what, who is calling, and may they ───────────────
  app.addHook('onRequest', async (req) => {
    req.ops = { startedAt: performance.now(), principal: null, error: null };
    // Every path, the probes included: a rebound name must not read /metrics or /readyz either.
    const foreign = hosts.refused(req.headers.host);
    if (foreign !== undefined) {
      throw new ApiError(421, 'ERR_HOST_NOT_ALLOWED', `this listener does not serve the host '${foreign}': use localhost, its address (${ctx.http.host}) or a name in http.allowedHosts`);
    }
    const cfg = req.routeOptions.config;
    if (cfg.kind !== 'public' && !(cfg.kind === 'metrics' && metricsPublic)) req.ops.principal = await identify(req);
    // After identification, so that the refusal names whose browser was made to send it.
    if (!SAFE_METHODS.has(req.method)) {
      const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
      if (type !== 'application/json') {
        throw new ApiError(415, 'ERR_UNSUPPORTED_MEDIA_TYPE', `a ${req.method} request must have Content-Type: application/json, with a JSON body or none (got ${type === '' || type === undefined ? 'none' : `'${type.slice(0, 100)}'`})`);
      }
    }
  });

  app.addHook('onRequest', async (req) => {
    const cfg = req.routeOptions.config;
    const who = req.ops.principal;
    // Public routes have no caller; an unknown route needs one but no permission (404 follows).
    if (who === null || req.is404) return;
    // Fail closed: a route that needs a caller but names no policy object is refused, not let through.
    if (cfg.resource === undefined || cfg.access === undefined) throw new ApiError(403, 'ERR_FORBIDDEN', `no admin policy object is declared for ${req.method} ${req.routeOptions.url ?? ''}: refused`);
    const decision = authz.decide(who, cfg.resource, cfg.access);
    req.ops.decidedBy = decision.decidedBy;
    req.ops.rule = decision.rule;
    req.ops.policyVersion = decision.policyVersion;
    if (decision.kind !== 'allow') {
      const verb = cfg.access === 'change' ? 'change' : 'read';
      const roles = who.roles.length > 0 ? `roles ${who.roles.join(', ')}` : 'no roles';
      throw new ApiError(403, 'ERR_FORBIDDEN', `'${who.name}' (${roles}) may not ${verb} admin/${cfg.resource} (${decision.kind === 'deny' ? decision.detail : 'no rule allows it'}; see http.auth.policy)`);
    }
  });

  /**
   * Runs a check judged on `s`. Its unit is taken from the subject's bucket before the check
   * starts (429 when the bucket is empty), so that requests pipelined in one TCP chunk, all
   * admitted before the first check ends, run at most `burst` checks between them; a success
   * gives the unit back. A 401 keeps it (a failure). A 429 ERR_BUSY (the argon2 checks are
   * full) keeps it when judged on an address (junk, or an unknown token id: part of the flood
   * that fills them) and gives it back when judged on a token id that exists (its holder did
   * nothing wrong; that token's concurrent checks are still bounded by its bucket).
   */
  async function judged<T>(s: ThrottleSubject, check: () => T | Promise<T>): Promise<T> {
    const attempt = throttle.attempt(s);
    if (typeof attempt === 'number') {
      const whose = s.kind === 'token' ? `with the token ${s.id}` : `from ${s.address}`;
      throw Object.assign(new ApiError(429, 'ERR_TOO_MANY_FAILURES', `too many failed authentications ${whose}: try again in ${attempt} s`), { retryAfter: attempt });
    }
    try {
      const result = await check();
      attempt.giveBack();
      return result;
    } catch (err) {
      const failure = err instanceof ApiError && (err.statusCode === 401 || (err.code === 'ERR_BUSY' && s.kind === 'address'));
      if (!failure) attempt.giveBack();
      throw err;
    }
  }

  async function identify(req: FastifyRequest): Promise<AdminPrincipal> {
    const address: ThrottleSubject = { kind: 'address', address: req.socket.remoteAddress ?? 'unknown' };
    if (mtls) {
      // Identified by the TLS handshake: a good certificate is not throttled; a bad one fails its address.
      const socket = req.raw.socket as TLSSocket;
      if (presentedCertificate(socket)) {
        let caller: AdminPrincipal;
        try {
          caller = certificateCaller(socket);
        } catch (err) {
          return judged(address, () => Promise.reject(err));
        }
        return caller;
      }
    }
    const header = req.headers.authorization;
    const m = header === undefined ? null : /^Bearer +(\S+)$/i.exec(header);
    const id = m !== null && tokens !== undefined ? tokens.knownId(m[1] as string) : undefined;
    if (id === undefined) return judged(address, () => anonymousRefusal(header, m));
    // These exact bytes were verified moments ago (the cache: no argon2 to spare): accepted
    // without asking the throttle, so that failures others cause on this token's id (ids are
    // not secret) or from this address do not lock its holder out.
    const remembered = (tokens as TokenAuthenticator).remembered(m?.[1] as string);
    if (remembered !== undefined) {
      throttle.succeeded(id, address.address);
      return tokenPrincipal(remembered);
    }
    // A token whose id exists is judged on that token's failures, never its address's.
    const subject: ThrottleSubject = { kind: 'token', id, address: address.address };
    const caller = await judged(subject, () => tokenCaller(m?.[1] as string));
    throttle.succeeded(id, address.address);
    return caller;
  }

  /** The 401 for a request with no usable credentials (no header, malformed, an unknown token id; one added meanwhile passes). */
  async function anonymousRefusal(header: string | undefined, m: RegExpExecArray | null): Promise<AdminPrincipal> {
    if (!authConfigured) {
      throw new ApiError(401, 'ERR_NO_AUTHENTICATION_CONFIGURED', 'no authentication is configured for the admin API: set http.auth.tokens (see `portcullis token add`) or http.tls.ca for client certificates');
    }
    if (header === undefined) throw new ApiError(401, 'ERR_UNAUTHENTICATED', `authentication required: ${tokens !== undefined ? 'send Authorization: Bearer <token>' : ''}${tokens !== undefined && mtls ? ' or ' : ''}${mtls ? 'present a client certificate' : ''}`);
    if (m === null) throw new ApiError(401, 'ERR_TOKEN_MALFORMED', 'the Authorization header must be "Bearer <token>"');
    if (tokens === undefined) throw new ApiError(401, 'ERR_UNAUTHENTICATED', 'bearer tokens are not enabled (http.auth.tokens): present a client certificate');
    // A malformed token, or an unknown id: the same check (and time) as a wrong secret.
    return tokenCaller(m[1] as string);
  }

  async function tokenCaller(token: string): Promise<AdminPrincipal> {
    const r = await (tokens as TokenAuthenticator).check(token);
    if (!r.ok) {
      if (r.code === 'ERR_BUSY') throw Object.assign(new ApiError(429, 'ERR_BUSY', r.message), { retryAfter: 1 });
      throw new ApiError(401, r.code, r.message);
    }
    return tokenPrincipal(r.entry);
  }

  // ── responses: errors, headers, audit ──────────────────────────────────────
  app.setNotFoundHandler(async (req) => {
    const path = (req.url.split('?')[0] ?? '').slice(0, 200);
    throw new ApiError(404, 'ERR_NOT_FOUND', `no route ${req.method} ${path} (GET /api/v1/openapi.json lists them)`);
  });

  app.setErrorHandler(async (err, req, reply) => {
    const api = toApiError(err);
    if (req.ops === null || req.ops === undefined) req.ops = { startedAt: performance.now(), principal: null, error: null };
    req.ops.error = api;
    if (api.statusCode >= 500) ctx.log.error({ err: (err as Error).message, url: req.url.slice(0, 200) }, 'admin API request failed');
    if (api.statusCode === 401) reply.header('WWW-Authenticate', 'Bearer realm="portcullis"');
    const retry = (err as { retryAfter?: number }).retryAfter;
    if (retry !== undefined) reply.header('Retry-After', String(retry));
    const body: ErrorBody = { statusCode: api.statusCode, code: api.code, message: api.message, requestId: String(req.id) };
    return reply.code(api.statusCode).type('application/json; charset=utf-8').send(body);
  });

  app.addHook('onSend', async (req, reply, payload) => {
    reply.header('X-Request-Id', String(req.id));
    reply.header('X-Content-Type-Options', 'nosniff');
    reply.header('Referrer-Policy', 'no-referrer');
    reply.header('X-Frame-Options', 'DENY');
    reply.header('Cache-Control', 'no-store');
    reply.header('Content-Security-Policy', req.routeOptions.config.op?.startsWith('console') === true ? CONSOLE_CSP : API_CSP);
    if (ctx.http.tls !== undefined) reply.header('Strict-Transport-Security', 'max-age=31536000');
    return payload;
  });

  app.addHook('onResponse', async (req, reply) => {
    const cfg = req.routeOptions.config;
    const status = reply.statusCode;
    const route = req.is404 ? '(unmatched)' : (req.routeOptions.url ?? '(unmatched)');
    ctx.httpMeter.requests.add([route, req.method, String(status)]);
    // Every admin API call and every refusal anywhere; a successful probe, scrape or page load is not.
    if (status < 400 && cfg.kind !== 'api') return;
    const state: FastifyRequest['ops'] | null = req.ops ?? null;
    // A refusal anyone can repeat at will: the first of its kind from the address in full, the rest counted.
    // Every 401 too: a few in full (a typo, an expired token), the rest of a flood counted.
    const kind = state?.error !== null && state?.error !== undefined ? (SUMMARISED[state.error.code] ?? (status === 401 ? 'unauthenticated' : undefined)) : undefined;
    if (kind !== undefined && !refusals.admit(req.socket.remoteAddress ?? 'unknown', kind, status)) return;
    const who = state?.principal ?? null;
    const path = (req.url.split('?')[0] ?? '').slice(0, 256);
    ctx.audit({
      event: 'admin',
      action: `api.${req.is404 ? 'unknown-route' : (cfg.op ?? 'unknown-route')}`,
      decision: status < 400 ? 'allow' : 'deny',
      reason: state?.error?.message ?? `${req.method} ${path}`,
      listener: 'http',
      remoteAddress: req.socket.remoteAddress ?? '',
      remotePort: req.socket.remotePort ?? 0,
      ...(who !== null ? { username: who.name, authMethod: who.method } : {}),
      ...(who?.certFingerprint !== undefined ? { certFingerprint: who.certFingerprint } : {}),
      ...(who?.certSubject !== undefined ? { certSubject: who.certSubject } : {}),
      ...(state?.decidedBy !== undefined ? { decidedBy: state.decidedBy } : {}),
      ...(state?.rule !== undefined ? { rule: state.rule } : {}),
      ...(state?.policyVersion !== undefined ? { policyVersion: state.policyVersion } : {}),
      detail: {
        method: req.method,
        route,
        path,
        status,
        requestId: String(req.id),
        ...(state?.error !== null && state?.error !== undefined ? { code: state.error.code } : {}),
        ...(who?.tokenId !== undefined ? { tokenId: who.tokenId } : {}),
        ...(state?.target ?? {}),
      },
    });
  });
}

function tokenPrincipal(entry: TokenEntry): AdminPrincipal {
  return { name: entry.name, method: 'token', roles: [...entry.roles], tokenId: entry.id };
}

/** True when the TLS handshake brought a client certificate (good or not). */
function presentedCertificate(socket: TLSSocket): boolean {
  if (typeof socket.getPeerCertificate !== 'function') return false;
  const cert = socket.getPeerCertificate(false);
  return cert !== null && cert !== undefined && Object.keys(cert).length > 0;
}

/** The caller a presented client certificate names; a 401 when it is not good. */
function certificateCaller(socket: TLSSocket): AdminPrincipal {
  const cert = socket.getPeerCertificate(false);
  if (!socket.authorized) {
    const code = String(socket.authorizationError ?? 'UNKNOWN');
    const text = CERT_ERRORS[code] ?? `client certificate not verified (${code})`;
    throw new ApiError(401, code === 'CERT_HAS_EXPIRED' ? 'ERR_CERTIFICATE_EXPIRED' : 'ERR_CERTIFICATE_INVALID', text);
  }
  if (!(cert.ext_key_usage ?? []).includes(CLIENT_AUTH_OID)) throw new ApiError(401, 'ERR_CERTIFICATE_INVALID', 'client certificate without the clientAuth extended key usage');
  const cn = cert.subject?.CN;
  const name = Array.isArray(cn) ? cn[0] : cn;
  if (typeof name !== 'string' || name === '' || /[\u0000-\u001f\u007f+#/]/.test(name)) throw new ApiError(401, 'ERR_CERTIFICATE_INVALID', 'client certificate without a usable common name');
  const subject = Object.entries(cert.subject ?? {})
    .flatMap(([k, v]) => (Array.isArray(v) ? v : [v]).map((x) => `${k}=${String(x)}`))
    .join(', ');
  return { name, method: 'certificate', roles: [], certSubject: subject, certFingerprint: cert.fingerprint256 };
}

/** Replies 200 with JSON (the handlers return objects; Fastify serializes them). */
export type Handler = (req: FastifyRequest, reply: FastifyReply) => Promise<unknown>;
