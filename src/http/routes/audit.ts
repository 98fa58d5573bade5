/**
 * The audit log over HTTP: its files, a query over one file, the tail of the live file (with an
 * optional wait for new records, for following it), and the latest denials as the broker wrote
 * them. Records are returned as written (they hold no secrets).
 */
import type { FastifyRequest } from 'fastify';
import type { AuditEventName } from '../../audit/types.ts';
import { AuditFiles, type AuditQuery } from '../audit-files.ts';
import type { OpsContext } from '../context.ts';
import { ApiError } from '../errors.ts';
import { limitParam, shortText, type JsonSchema, type RouteSpec } from '../route.ts';

// Every event name, checked by the compiler: a new kind of record can be queried the day it is written.
const EVENT_NAMES: Record<AuditEventName, true> = { connect: true, tls: true, publish: true, subscribe: true, unsubscribe: true, deliver: true, will: true, session: true, disconnect: true, reload: true, ban: true, unban: true, admin: true, audit: true, checkpoint: true, store: true, cluster: true };
const EVENTS = Object.keys(EVENT_NAMES);

const filters: Record<string, JsonSchema> = {
  event: { enum: EVENTS },
  decision: { enum: ['allow', 'deny'] },
  clientId: shortText(65535),
  username: shortText(65535),
  topic: shortText(65535),
  afterSeq: { type: 'integer', minimum: 0 },
  limit: limitParam,
};

const records: JsonSchema = { type: 'object', properties: { file: { type: 'string' }, records: { type: 'array', items: { type: 'object' } } } };

interface FilterQuery {
  event?: string;
  decision?: 'allow' | 'deny';
  clientId?: string;
  username?: string;
  topic?: string;
  afterSeq?: number;
  limit: number;
}

function toQuery(q: FilterQuery): AuditQuery {
  return {
    limit: q.limit,
    ...(q.event !== undefined ? { event: q.event } : {}),
    ...(q.decision !== undefined ? { decision: q.decision } : {}),
    ...(q.clientId !== undefined ? { client: q.clientId } : {}),
    ...(q.username !== undefined ? { user: q.username } : {}),
    ...(q.topic !== undefined ? { topic: q.topic } : {}),
    ...(q.afterSeq !== undefined ? { afterSeq: q.afterSeq } : {}),
  };
}

/**
 * Audit reads (queries and tails, waiting ones included) running at once; more get 503 ERR_BUSY.
 * Each reads in chunks and yields, but together they still share one event loop with MQTT.
 */
export const MAX_AUDIT_READERS = 16;

export function auditRoutes(ctx: OpsContext): RouteSpec[] {
  let readers = 0;
  const reading = async <T>(run: () => Promise<T>): Promise<T> => {
    if (readers >= MAX_AUDIT_READERS) throw Object.assign(new ApiError(503, 'ERR_BUSY', `${MAX_AUDIT_READERS} audit reads are running: try again shortly`), { retryAfter: 1 });
    readers++;
    try {
      return await run();
    } finally {
      readers--;
    }
  };
  const files = (): AuditFiles => {
    if (ctx.config.audit.sink !== 'file') throw new ApiError(409, 'ERR_CONFLICT', `the audit log is not a file here (audit.sink: ${ctx.config.audit.sink}); GET /api/v1/audit/denials still lists the latest denials`);
    return new AuditFiles(ctx.config.audit.path);
  };
  return [
    {
      method: 'GET',
      url: '/api/v1/audit/files',
      op: 'audit.files',
      kind: 'api',
      resource: 'audit',
      access: 'read',
      tag: 'audit',
      summary: 'The files of the audit log: the live file and the rotated ones, oldest first.',
      response: { type: 'object', properties: { items: { type: 'array', items: { type: 'object', properties: { name: { type: 'string' }, bytes: { type: 'integer' }, modified: { type: 'string' }, live: { type: 'boolean' } } } } } },
      handler: async () => ({ items: files().list() }),
    },
    {
      method: 'GET',
      url: '/api/v1/audit/records',
      op: 'audit.query',
      kind: 'api',
      resource: 'audit',
      access: 'read',
      tag: 'audit',
      summary: 'Query one audit file (the live one unless `file` names another from /audit/files): the last `limit` matching records, or the first `limit` after `afterSeq`.',
      schema: { querystring: { type: 'object', additionalProperties: false, properties: { ...filters, file: shortText(255) } } },
      response: records,
      handler: async (req: FastifyRequest) => {
        const q = req.query as FilterQuery & { file?: string };
        const f = files();
        // Checked first, so a bad name is refused whatever else the query says.
        f.resolve(q.file);
        return reading(async () => {
          // The records of decisions already made are written before the file is read: a denial
          // the caller just saw answered is in the answer.
          await ctx.flushAudit();
          const file = f.resolve(q.file);
          const result = await f.query(file, toQuery(q));
          return { file: file.slice(file.lastIndexOf('/') + 1), scanned: result.scanned, malformed: result.malformed, ...(result.truncated ? { truncated: true } : {}), records: result.records };
        });
      },
    },
    {
      method: 'GET',
      url: '/api/v1/audit/tail',
      op: 'audit.tail',
      kind: 'api',
      resource: 'audit',
      access: 'read',
      tag: 'audit',
      summary: 'The last `limit` matching records of the live file; with `afterSeq`, only newer ones, waiting up to `waitMs` for some (to follow the log, pass the last seq seen).',
      schema: { querystring: { type: 'object', additionalProperties: false, properties: { ...filters, waitMs: { type: 'integer', minimum: 0, maximum: 30_000, default: 0 } } } },
      response: records,
      handler: async (req: FastifyRequest, reply) => {
        const q = req.query as FilterQuery & { waitMs: number };
        const f = files();
        const query = toQuery(q);
        let gone = false;
        // The response's 'close': the client went away (or the answer was sent). Stop waiting for it.
        reply.raw.once('close', () => (gone = true));
        return reading(async () => {
          await ctx.flushAudit();
          let result = await f.tail(query);
          let position = result.position;
          const deadline = Date.now() + q.waitMs;
          // Following reads only what was appended since the last look.
          while (result.records.length === 0 && Date.now() < deadline && !gone) {
            await new Promise((r) => setTimeout(r, 200));
            result = await f.follow(position, query);
            position = result.position;
          }
          const live = ctx.config.audit.path;
          return { file: live.slice(live.lastIndexOf('/') + 1), ...(result.truncated ? { truncated: true } : {}), records: result.records };
        });
      },
    },
    {
      method: 'GET',
      url: '/api/v1/audit/denials',
      op: 'audit.denials',
      kind: 'api',
      resource: 'audit',
      access: 'read',
      tag: 'audit',
      summary: 'The latest denials the broker wrote to its audit log (access, connect, TLS, disconnect and admin refusals), newest first, from memory: works with every audit sink.',
      schema: { querystring: { type: 'object', additionalProperties: false, properties: { limit: { type: 'integer', minimum: 1, maximum: 200, default: 20 } } } },
      response: { type: 'object', properties: { items: { type: 'array', items: { type: 'object' } } } },
      handler: async (req: FastifyRequest) => ({ items: ctx.auditCounters.latestDenials((req.query as { limit: number }).limit) }),
    },
  ];
}
