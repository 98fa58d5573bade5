/**
 * Bans: list, add and remove. A change is written to the ban file (admission.bans.file) the way
 * `portcullis ban` writes it, then the file is reloaded at once, so the ban is in force (and live
 * connections it covers are ended, when admission.bans.disconnectLive) before the call returns;
 * the reload audits each ban added or removed.
 */
import type { FastifyRequest } from 'fastify';
import { BAN_KINDS, type BanKind, BanFileError, normalizeBanValue, parseIsoDate, removeBan, upsertBan, type BanEntry } from '../../admission/ban-file.ts';
import { parseDuration } from '../../cli/ban.ts';
import type { OpsContext } from '../context.ts';
import { ApiError } from '../errors.ts';
import { shortText, type JsonSchema, type RouteSpec } from '../route.ts';

const ban: JsonSchema = {
  type: 'object',
  properties: {
    kind: { enum: [...BAN_KINDS] },
    value: { type: 'string' },
    until: { type: ['string', 'null'], format: 'date-time' },
    reason: { type: ['string', 'null'] },
    added: { type: ['string', 'null'], format: 'date-time' },
  },
};

function describe(b: BanEntry): Record<string, unknown> {
  return {
    kind: b.kind,
    value: b.value,
    until: b.until === undefined ? null : new Date(b.until).toISOString(),
    reason: b.reason ?? null,
    added: b.added === undefined ? null : new Date(b.added).toISOString(),
  };
}

export function banRoutes(ctx: OpsContext): RouteSpec[] {
  const file = (): string => {
    if (ctx.banFile === undefined) throw new ApiError(409, 'ERR_CONFLICT', 'no ban file is configured: set admission.bans.file');
    return ctx.banFile;
  };
  const checked = (kind: string, value: string): { kind: BanKind; value: string } => {
    const r = normalizeBanValue(kind, value);
    if (!r.ok) throw new ApiError(400, 'ERR_BAD_REQUEST', r.error);
    return r;
  };
  const reload = () => {
    const report = ctx.reloadBans('api');
    if (!report.ok) throw new ApiError(409, 'ERR_CONFLICT', `the ban file was written but does not load: ${report.detail}`);
    return report;
  };
  return [
    {
      method: 'GET',
      url: '/api/v1/bans',
      op: 'bans.list',
      kind: 'api',
      resource: 'bans',
      access: 'read',
      tag: 'bans',
      summary: 'The bans in force.',
      response: { type: 'object', properties: { file: { type: ['string', 'null'] }, items: { type: 'array', items: ban } } },
      handler: async () => ({ file: ctx.banFile ?? null, items: ctx.activeBans().map(describe) }),
    },
    {
      method: 'POST',
      url: '/api/v1/bans',
      op: 'bans.add',
      kind: 'api',
      resource: 'bans',
      access: 'change',
      tag: 'bans',
      summary: 'Ban a client id, user name, IP address or CIDR range (replaces a ban of the same value); `for` (30m, 7d) or `until` (ISO 8601).',
      schema: {
        body: {
          type: 'object',
          required: ['kind', 'value'],
          additionalProperties: false,
          properties: {
            kind: { enum: [...BAN_KINDS] },
            value: { type: 'string', minLength: 1, maxLength: 65535 },
            for: { type: 'string', pattern: '^(\\d+[smhdw])+$', maxLength: 32 },
            until: shortText(64),
            reason: { type: 'string', maxLength: 1000, pattern: '^[^\\u0000-\\u001f\\u007f]*$' },
          },
        },
      },
      response: { type: 'object', properties: { ban, replaced: { type: 'boolean' }, detail: { type: 'string' } } },
      handler: async (req: FastifyRequest, reply) => {
        const body = req.body as { kind: string; value: string; for?: string; until?: string; reason?: string };
        const target = file();
        const v = checked(body.kind, body.value);
        req.ops.target = { kind: v.kind, value: v.value };
        if (body.for !== undefined && body.until !== undefined) throw new ApiError(400, 'ERR_BAD_REQUEST', 'give for or until, not both');
        const now = Date.now();
        let until: number | undefined;
        if (body.for !== undefined) {
          try {
            until = now + parseDuration(body.for);
          } catch (err) {
            throw new ApiError(400, 'ERR_BAD_REQUEST', (err as Error).message.replace('--for', 'for'));
          }
        }
        if (body.until !== undefined) {
          until = parseIsoDate(body.until);
          if (until === undefined) throw new ApiError(400, 'ERR_BAD_REQUEST', `until '${body.until}': expected an ISO 8601 date-time with a time zone, e.g. 2026-12-01T00:00:00Z`);
          if (until <= now) throw new ApiError(400, 'ERR_BAD_REQUEST', `until '${body.until}' is in the past`);
        }
        const entry = { kind: v.kind, value: v.value, ...(until !== undefined ? { until } : {}), ...(body.reason !== undefined ? { reason: body.reason } : {}), added: now };
        let replaced: boolean;
        try {
          replaced = upsertBan(target, entry);
        } catch (err) {
          throw new ApiError(409, 'ERR_CONFLICT', err instanceof BanFileError ? err.message : `cannot write the ban file: ${(err as Error).message}`);
        }
        const report = reload();
        reply.code(replaced ? 200 : 201);
        return { ban: describe({ ...entry, line: 0 }), replaced, detail: report.detail };
      },
    },
    {
      method: 'DELETE',
      url: '/api/v1/bans/:kind/:value',
      op: 'bans.remove',
      kind: 'api',
      resource: 'bans',
      access: 'change',
      tag: 'bans',
      summary: 'Lift a ban (the value URL-encoded: a CIDR range holds a slash).',
      schema: { params: { type: 'object', required: ['kind', 'value'], additionalProperties: false, properties: { kind: { enum: [...BAN_KINDS] }, value: shortText(65535) } } },
      response: { type: 'object', properties: { removed: ban, detail: { type: 'string' } } },
      handler: async (req: FastifyRequest) => {
        const p = req.params as { kind: string; value: string };
        const target = file();
        const v = checked(p.kind, p.value);
        req.ops.target = { kind: v.kind, value: v.value };
        let removed: boolean;
        try {
          removed = removeBan(target, v.kind, v.value);
        } catch (err) {
          throw new ApiError(409, 'ERR_CONFLICT', err instanceof BanFileError ? err.message : `cannot write the ban file: ${(err as Error).message}`);
        }
        if (!removed) throw new ApiError(404, 'ERR_NOT_FOUND', `no ban on ${v.kind} ${v.value}`);
        const report = reload();
        return { removed: { kind: v.kind, value: v.value, until: null, reason: null, added: null }, detail: report.detail };
      },
    },
  ];
}
