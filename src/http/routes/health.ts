/** /healthz (the process answers) and /readyz (it can do its job), for Kubernetes and systemd. */
import type { OpsContext } from '../context.ts';
import type { RouteSpec } from '../route.ts';

export function healthRoutes(ctx: OpsContext): RouteSpec[] {
  return [
    {
      method: 'GET',
      url: '/healthz',
      op: 'healthz',
      kind: 'public',
      tag: 'health',
      summary: 'Liveness: the process answers (200 while the event loop runs).',
      response: { type: 'object', properties: { status: { const: 'ok' }, version: { type: 'string' }, uptimeSeconds: { type: 'number' } } },
      handler: async () => ({ status: 'ok', version: ctx.version, uptimeSeconds: Math.round(process.uptime()) }),
    },
    {
      method: 'GET',
      url: '/readyz',
      op: 'readyz',
      kind: 'public',
      tag: 'health',
      summary: 'Readiness: listeners up, store open, audit sink healthy, policy loaded, Redis connected when clustered; 503 naming what is not.',
      response: {
        type: 'object',
        properties: {
          status: { enum: ['ready', 'not-ready'] },
          checks: { type: 'array', items: { type: 'object', properties: { name: { type: 'string' }, ok: { type: 'boolean' }, detail: { type: 'string' } } } },
        },
      },
      handler: async (_req, reply) => {
        const checks = ctx.ready();
        const ok = checks.every((c) => c.ok);
        reply.code(ok ? 200 : 503);
        return { status: ok ? 'ready' : 'not-ready', checks };
      },
    },
  ];
}
