/**
 * The operations listener: Fastify 5 with the pipeline of pipeline.ts, the routes of routes/,
 * and /metrics over the families of src/metrics. Loaded only when `http` is configured, so a
 * broker without it never loads Fastify or prom-client.
 */
import crypto from 'node:crypto';
import { STATUS_CODES, type Server } from 'node:http';
import type { Socket } from 'node:net';
import type { Server as HttpsServer } from 'node:https';
import tls from 'node:tls';
import Fastify, { type FastifyInstance } from 'fastify';
import { families } from '../metrics/collectors.ts';
import { MetricsRegistry } from '../metrics/prom.ts';
import { installConnectionGate } from './connection-gate.ts';
import type { OpsContext } from './context.ts';
import type { ApiErrorCode, ErrorBody } from './errors.ts';
import { HostCheck } from './host-check.ts';
import { openApiDocument } from './openapi.ts';
import { installPipeline } from './pipeline.ts';
import type { RouteSpec } from './route.ts';
import { auditRoutes } from './routes/audit.ts';
import { banRoutes } from './routes/bans.ts';
import { clientRoutes } from './routes/clients.ts';
import { consoleRoutes } from './routes/console.ts';
import { healthRoutes } from './routes/health.ts';
import { metricsRoutes } from './routes/metrics.ts';
import { opsRoutes } from './routes/ops.ts';
import { reloadRoutes } from './routes/reload.ts';
import type { OpsSetup, TlsFiles } from './setup.ts';
import { RefusalSummary } from './refusal-summary.ts';
import { AuthThrottle } from './throttle.ts';

export interface OpsServer {
  readonly address: { host: string; port: number; protocol: 'http' | 'https' };
  /** Reads the TLS files again and uses them for new connections; a bad file keeps the last good ones. */
  reloadTls(): { ok: boolean; detail: string };
  close(): Promise<void>;
}

/** Open connections the listener keeps at most: the operations port is for a few tools, not for crowds. */
const MAX_CONNECTIONS = 256;
/** The last slots of MAX_CONNECTIONS, kept for addresses holding fewer than RESERVE_BELOW connections (probes, scrapes). */
const RESERVED_CONNECTIONS = 16;
const RESERVE_BELOW = 2;
/**
 * How often Node looks for connections past headersTimeout or requestTimeout (its default, 30 s,
 * let an idle socket hold its slot 30 s instead of the 10 s headersTimeout).
 */
const CONNECTIONS_CHECKING_MS = 1000;

function secureOptions(files: TlsFiles, minVersion: 'TLSv1.2' | 'TLSv1.3'): tls.SecureContextOptions & tls.TlsOptions {
  return {
    cert: files.cert,
    key: files.key,
    minVersion,
    // No tickets: every connection is a full handshake, so the client certificate is checked on each.
    secureOptions: crypto.constants.SSL_OP_NO_RENEGOTIATION | crypto.constants.SSL_OP_NO_TICKET,
    ...(files.ca !== undefined ? { ca: files.ca, requestCert: true, rejectUnauthorized: false } : {}),
    ...(files.crl !== undefined ? { crl: files.crl } : {}),
    // https.createServer takes the http server options here (Fastify passes these through).
    connectionsCheckingInterval: CONNECTIONS_CHECKING_MS,
  } as tls.SecureContextOptions & tls.TlsOptions;
}

/** What the HTTP parser refused (Node's clientError), as the admin API's error shape. */
function parserRefusal(err: Error & { code?: string }): { status: number; code: ApiErrorCode; message: string } {
  if (err.code === 'HPE_HEADER_OVERFLOW') return { status: 431, code: 'ERR_HEADERS_TOO_LARGE', message: 'the request headers are larger than the listener accepts' };
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') return { status: 408, code: 'ERR_REQUEST_TIMEOUT', message: 'the request did not arrive in time (10 s for the headers)' };
  return { status: 400, code: 'ERR_BAD_REQUEST', message: `malformed HTTP request (${String(err.code ?? 'parse error').slice(0, 64)})` };
}

export async function startOpsServer(ctx: OpsContext, setup: OpsSetup): Promise<OpsServer> {
  const h = ctx.http;
  setup.authz.onReload((r) => {
    (r.ok ? ctx.log.info.bind(ctx.log) : ctx.log.error.bind(ctx.log))({ file: h.auth.policy }, `admin policy reload: ${r.detail ?? (r.ok ? 'ok' : 'failed')}`);
    ctx.audit({ event: 'reload', action: 'admin-policy', decision: r.ok ? 'allow' : 'deny', reason: r.detail ?? (r.ok ? 'reloaded' : 'reload failed'), ...(r.version !== undefined ? { policyVersion: r.version } : {}), detail: { file: h.auth.policy } });
    if (!r.ok) return;
    // A bare user name was refused at start; brought in by an edit, its line matches no caller: say so.
    for (const problem of setup.authz.bareSubjectLines()) {
      ctx.log.error({ file: h.auth.policy }, `admin policy: ${problem}; the line matches no caller`);
      ctx.audit({ event: 'reload', action: 'admin-policy', decision: 'deny', reason: `${problem}; the line matches no caller`, detail: { file: h.auth.policy } });
    }
  });
  const refusals = new RefusalSummary(ctx.audit);
  const tlsFiles = setup.readTls();
  const common = {
    logger: false,
    bodyLimit: h.bodyLimit,
    trustProxy: false,
    return503OnClosing: true,
    forceCloseConnections: true,
    // The audit tail waits up to 30 s; slow or idle clients are not kept longer.
    requestTimeout: 45_000,
    connectionTimeout: 60_000,
    keepAliveTimeout: 5_000,
    http: { connectionsCheckingInterval: CONNECTIONS_CHECKING_MS },
    routerOptions: { maxParamLength: 1024 },
    genReqId: () => crypto.randomUUID(),
    // A request the HTTP parser refuses (malformed, headers too large, too slow) never reaches the
    // hooks: it is answered and audited here, summarised like the listener's other floods.
    clientErrorHandler: (err: Error & { code?: string }, socket: Socket) => {
      if (err.code === 'ECONNRESET' || socket.destroyed) return;
      const r = parserRefusal(err);
      const address = socket.remoteAddress ?? 'unknown';
      if (refusals.admit(address, 'parser', r.status)) {
        ctx.audit({ event: 'admin', action: 'http.bad-request', decision: 'deny', reason: r.message, listener: 'http', remoteAddress: address, remotePort: socket.remotePort ?? 0, detail: { refusal: 'parser', status: r.status, code: r.code } });
      }
      if (socket.writable) {
        const body = JSON.stringify({ statusCode: r.status, code: r.code, message: r.message, requestId: crypto.randomUUID() } satisfies ErrorBody);
        socket.write(`HTTP/1.1 ${r.status} ${STATUS_CODES[r.status] ?? ''}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nX-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n${body}`);
      }
      socket.destroy();
    },
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array' as const, useDefaults: true, allErrors: false } },
  };
  // Fastify types the instance by its server (http or https); the routes need neither.
  const app = (tlsFiles !== undefined ? Fastify({ ...common, https: secureOptions(tlsFiles, h.tls?.minVersion ?? 'TLSv1.2') }) : Fastify(common)) as unknown as FastifyInstance;
  app.server.headersTimeout = 10_000;
  const caps = { maxPerAddress: h.maxConnectionsPerAddress, maxTotal: MAX_CONNECTIONS, reserve: RESERVED_CONNECTIONS, reserveBelow: RESERVE_BELOW };
  installConnectionGate(app.server, caps, refusals, ({ address, port, open, total, refusal }) => {
    const reason =
      refusal === 'connection-cap'
        ? `${open} connections open from this address: http.maxConnectionsPerAddress (${h.maxConnectionsPerAddress}) reached`
        : total >= MAX_CONNECTIONS
          ? `the listener holds its ${MAX_CONNECTIONS} connections`
          : `the listener holds ${total} of its ${MAX_CONNECTIONS} connections; the last ${RESERVED_CONNECTIONS} are kept for addresses holding fewer than ${RESERVE_BELOW} (this one holds ${open})`;
    ctx.log.warn({ address }, `operations listener: connection refused, ${reason}`);
    ctx.audit({ event: 'admin', action: 'http.connection-refused', decision: 'deny', reason, listener: 'http', remoteAddress: address, remotePort: port, detail: { refusal, open, total, limit: refusal === 'connection-cap' ? h.maxConnectionsPerAddress : MAX_CONNECTIONS } });
  });

  installPipeline(app, {
    ctx,
    tokens: setup.tokens,
    authz: setup.authz,
    throttle: new AuthThrottle(h.auth.failures.burst, h.auth.failures.perMinute),
    hosts: new HostCheck(h.host, h.allowedHosts),
    refusals,
    mtls: h.tls?.ca !== undefined,
  });

  let registry: MetricsRegistry | undefined;
  if (h.metrics.enabled && ctx.metrics !== undefined) {
    registry = new MetricsRegistry();
    for (const f of families(ctx.metrics)) registry.add(f);
  }
  const routes: RouteSpec[] = [...healthRoutes(ctx), ...metricsRoutes(registry)];
  if (h.api.enabled) {
    let document: unknown;
    const api = [...clientRoutes(ctx), ...banRoutes(ctx), ...reloadRoutes(ctx), ...auditRoutes(ctx), ...opsRoutes(ctx, () => document)];
    routes.push(...api);
    if (h.console.enabled) routes.push(...consoleRoutes());
    document = openApiDocument(routes, ctx.version, { tokens: setup.tokens !== undefined, mtls: h.tls?.ca !== undefined });
  }
  for (const r of routes) {
    // A route that needs a caller must say what the admin policy decides on; the pipeline refuses it otherwise.
    if (r.kind !== 'public' && (r.resource === undefined || r.access === undefined)) throw new Error(`operations route ${r.method} ${r.url} needs a caller but declares no admin policy object`);
    app.route({
      method: r.method,
      url: r.url,
      ...(r.schema !== undefined ? { schema: r.schema } : {}),
      config: { op: r.op, kind: r.kind, ...(r.resource !== undefined ? { resource: r.resource } : {}), ...(r.access !== undefined ? { access: r.access } : {}) },
      handler: r.handler,
    });
  }

  try {
    await setup.authz.init();
    await app.listen({ host: h.host, port: h.port });
  } catch (err) {
    await app.close();
    await setup.authz.close();
    refusals.close();
    throw err;
  }
  const bound = app.server.address();
  const port = bound !== null && typeof bound === 'object' ? bound.port : h.port;
  const server = app.server as Server | HttpsServer;
  return {
    address: { host: h.host, port, protocol: tlsFiles !== undefined ? 'https' : 'http' },
    reloadTls() {
      if (tlsFiles === undefined) return { ok: true, detail: 'no TLS on the operations listener' };
      try {
        const files = setup.readTls() as TlsFiles;
        (server as HttpsServer).setSecureContext(secureOptions(files, h.tls?.minVersion ?? 'TLSv1.2'));
        return { ok: true, detail: 'reloaded' };
      } catch (err) {
        return { ok: false, detail: `${(err as Error).message}; keeping the last good files` };
      }
    },
    async close() {
      await app.close();
      await setup.authz.close();
      refusals.close();
    },
  };
}
