/**
 * What the ops console shows, and the tools it offers: who am I, an overview with the counters
 * the console turns into rates, certificates near expiry, policy explain, and the OpenAPI
 * document.
 */
import type { FastifyRequest } from 'fastify';
import { ACCESS_EVENTS } from '../../metrics/audit-tee.ts';
import type { OpsContext } from '../context.ts';
import { ApiError } from '../errors.ts';
import { shortText, type JsonSchema, type RouteSpec } from '../route.ts';

const DAY = 86_400_000;

export function opsRoutes(ctx: OpsContext, openapi: () => unknown): RouteSpec[] {
  const daysLeft = (at: number | null, now: number): number | null => (at === null ? null : Math.floor(((at - now) / DAY) * 10) / 10);
  return [
    {
      method: 'GET',
      url: '/api/v1/whoami',
      op: 'whoami',
      kind: 'api',
      resource: 'whoami',
      access: 'read',
      tag: 'console',
      summary: 'The caller: name, how it authenticated, roles.',
      response: { type: 'object', properties: { name: { type: 'string' }, method: { type: 'string' }, roles: { type: 'array', items: { type: 'string' } } } },
      handler: async (req: FastifyRequest) => {
        const p = req.ops.principal;
        return { name: p?.name, method: p?.method, roles: p?.roles ?? [], ...(p?.certSubject !== undefined ? { certSubject: p.certSubject } : {}) };
      },
    },
    {
      method: 'GET',
      url: '/api/v1/overview',
      op: 'overview',
      kind: 'api',
      resource: 'overview',
      access: 'read',
      tag: 'console',
      summary: 'Counts and running totals: connections by listener and protocol, sessions, queues, connects, access decisions by action, messages, audit health.',
      response: { type: 'object' },
      handler: async () => {
        const counts = ctx.inspector.counts();
        const a = ctx.auditCounters;
        const health = ctx.auditHealth();
        return {
          time: new Date().toISOString(),
          version: ctx.version,
          uptimeSeconds: Math.round(process.uptime()),
          counts,
          totals: {
            connectsAccepted: a.connectsAllowed,
            connectsRefused: a.connectsRefused.samples().reduce((n, s) => n + s.value, 0),
            decisions: Object.fromEntries(ACCESS_EVENTS.map((e) => [e, a.accessCounts(e)])),
            tlsRefused: a.tls.samples().reduce((n, s) => n + s.value, 0),
          },
          audit: { ok: health.ok, pending: health.pending, dropped: health.dropped, written: health.written },
          bans: ctx.admissionStats().bans,
        };
      },
    },
    {
      method: 'GET',
      url: '/api/v1/certificates',
      op: 'certificates',
      kind: 'api',
      resource: 'certificates',
      access: 'read',
      tag: 'console',
      summary: "Listener certificates, CA bundles and CRLs with days left, and the connected clients whose certificate or credentials expire within `withinDays` (default http.console.expiryWarningDays).",
      schema: { querystring: { type: 'object', additionalProperties: false, properties: { withinDays: { type: 'integer', minimum: 1, maximum: 3650 } } } },
      response: { type: 'object', properties: { withinDays: { type: 'integer' }, files: { type: 'array', items: { type: 'object' } }, clients: { type: 'array', items: { type: 'object' } } } },
      handler: async (req: FastifyRequest) => {
        const within = (req.query as { withinDays?: number }).withinDays ?? ctx.http.console.expiryWarningDays;
        const now = Date.now();
        const files = ctx.tlsDates.read().map((d) => ({
          listener: d.listener,
          kind: d.kind,
          file: d.file,
          subject: d.subject,
          expiresAt: d.expiresAt === null ? null : new Date(d.expiresAt).toISOString(),
          daysLeft: daysLeft(d.expiresAt, now),
          nearExpiry: d.expiresAt !== null && d.expiresAt - now <= within * DAY,
          ...(d.error !== undefined ? { error: d.error } : {}),
        }));
        const clients = ctx.inspector.connections({ expiringWithinMs: within * DAY }, 0, 1000).items.map((c) => {
          const certAt = c.tls?.certNotAfter ? Date.parse(c.tls.certNotAfter) : null;
          const credAt = c.credentialsExpireAt ? Date.parse(c.credentialsExpireAt) : null;
          const at = Math.min(certAt ?? Infinity, credAt ?? Infinity);
          return { id: c.id, clientId: c.clientId, username: c.username, authMethod: c.authMethod, certSubject: c.tls?.certSubject ?? null, expiresAt: new Date(at).toISOString(), daysLeft: daysLeft(at, now) };
        });
        return { withinDays: within, files, clients };
      },
    },
    {
      method: 'POST',
      url: '/api/v1/policy/explain',
      op: 'policy.explain',
      kind: 'api',
      resource: 'policy/explain',
      access: 'read',
      tag: 'policy',
      summary: 'What the broker\'s Casbin policy decides for a user or client, an action and a topic, the rule that decides it and the rules its QoS or retain condition excluded. Changes nothing.',
      schema: {
        body: {
          type: 'object',
          required: ['action', 'topic'],
          additionalProperties: false,
          properties: {
            action: { enum: ['publish', 'subscribe', 'unsubscribe', 'deliver'] },
            topic: { type: 'string', minLength: 1, maxLength: 65535 },
            user: shortText(65535),
            client: shortText(65535),
            roles: { type: 'array', maxItems: 64, items: { type: 'string', pattern: '^[A-Za-z0-9_.:@-]{1,128}$' } },
            qos: { enum: [0, 1, 2] },
            retain: { type: 'boolean' },
            listener: shortText(256),
            shareGroup: shortText(256),
          },
        },
      },
      response: {
        type: 'object',
        properties: {
          results: {
            type: 'array',
            items: {
              type: 'object',
              properties: {
                authorizer: { type: 'string' },
                decision: { enum: ['allow', 'deny'] },
                rule: { type: ['string', 'null'] },
                detail: { type: 'string' },
                nearMisses: { type: 'array', items: { type: 'object', properties: { rule: { type: 'string' }, why: { type: 'string' } } } },
                policyVersion: { type: 'string' },
              },
            },
          },
        },
      },
      handler: async (req: FastifyRequest) => {
        const b = req.body as { action: 'publish' | 'subscribe' | 'unsubscribe' | 'deliver'; topic: string; user?: string; client?: string; roles?: string[]; qos?: 0 | 1 | 2; retain?: boolean; listener?: string; shareGroup?: string };
        if (b.user === undefined && b.client === undefined) throw new ApiError(400, 'ERR_BAD_REQUEST', 'give a user or a client');
        if (b.shareGroup !== undefined && b.action !== 'deliver') throw new ApiError(400, 'ERR_BAD_REQUEST', 'shareGroup is the group of a delivery on a shared subscription (action: deliver)');
        const results = ctx.explain({
          action: b.action,
          topic: b.topic,
          roles: b.roles ?? [],
          qos: b.qos ?? 0,
          retain: b.retain === true,
          ...(b.user !== undefined ? { user: b.user } : {}),
          ...(b.client !== undefined ? { client: b.client } : {}),
          ...(b.listener !== undefined ? { listener: b.listener } : {}),
          ...(b.shareGroup !== undefined ? { shareGroup: b.shareGroup } : {}),
        });
        if (results.length === 0) throw new ApiError(409, 'ERR_CONFLICT', 'no Casbin authorizer is configured: nothing to explain');
        return { results };
      },
    },
    {
      method: 'GET',
      url: '/api/v1/openapi.json',
      op: 'openapi',
      kind: 'api',
      resource: 'openapi',
      access: 'read',
      tag: 'console',
      summary: 'This API, as an OpenAPI 3.1 document.',
      response: { type: 'object' } as JsonSchema,
      handler: async () => openapi(),
    },
  ];
}
