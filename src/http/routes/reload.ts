/**
 * Reloads, as SIGHUP does them, one kind at a time: the policy (every Casbin authorizer; live
 * subscriptions re-checked), password files, TLS certificates, keys, CAs, CRLs and PSK files
 * (every TLS listener and the operations listener's own), and the ban file. A file that does not
 * load keeps the last good one; the answer says so (200 with ok: false, as the reload itself
 * was carried out), and every outcome is audited by what reloads it.
 */
import type { OpsContext } from '../context.ts';
import type { JsonSchema, RouteSpec } from '../route.ts';

const report: JsonSchema = { type: 'object', properties: { ok: { type: 'boolean' }, results: { type: 'array', items: { type: 'object' } } } };

export function reloadRoutes(ctx: OpsContext): RouteSpec[] {
  const route = (what: string, summary: string, run: () => Promise<{ ok: boolean }[]>): RouteSpec => ({
    method: 'POST',
    url: `/api/v1/reload/${what}`,
    op: `reload.${what}`,
    kind: 'api',
    resource: `reload/${what}`,
    access: 'change',
    tag: 'reload',
    summary,
    response: report,
    handler: async (req) => {
      const results = await run();
      const ok = results.every((r) => r.ok);
      req.ops.target = { ok };
      return { ok, results };
    },
  });
  return [
    route('policy', 'Reload the Casbin policy files; live subscriptions are re-checked against the new policy.', async () =>
      (await ctx.reloadPolicy('api')).map((r) => ({ ok: r.ok, ...(r.version !== undefined ? { version: r.version } : {}), ...(r.detail !== undefined ? { detail: r.detail } : {}) })),
    ),
    route('passwords', 'Reload every password file.', () => ctx.reloadPasswords('api')),
    route('certificates', 'Reload certificates, keys, CAs, CRLs and PSK files of every TLS listener (live connections are kept).', () => ctx.reloadCertificates('api')),
    route('bans', 'Reload the ban file.', async () => {
      const r = ctx.reloadBans('api');
      return [{ ok: r.ok, file: r.file, detail: r.detail, changes: r.changes.length }];
    }),
  ];
}
