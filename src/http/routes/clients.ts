/** Clients (live connections) and sessions: list, show, kick; a session's subscriptions. */
import type { FastifyRequest } from 'fastify';
import type { OpsContext } from '../context.ts';
import { ApiError } from '../errors.ts';
import { limitParam, offsetParam, shortText, type JsonSchema, type RouteSpec } from '../route.ts';

const connection: JsonSchema = {
  type: 'object',
  properties: {
    id: { type: 'integer' },
    clientId: { type: 'string' },
    username: { type: ['string', 'null'] },
    authMethod: { type: ['string', 'null'] },
    provider: { type: ['string', 'null'] },
    roles: { type: 'array', items: { type: 'string' } },
    listener: { type: 'string' },
    transport: { type: 'string' },
    remoteAddress: { type: 'string' },
    remotePort: { type: 'integer' },
    protocol: { type: 'string' },
    bridge: { type: 'boolean' },
    keepAlive: { type: 'integer' },
    connectedAt: { type: 'string', format: 'date-time' },
    credentialsExpireAt: { type: ['string', 'null'], format: 'date-time' },
    tls: { type: ['object', 'null'] },
    subscriptions: { type: 'integer' },
    queued: { type: 'integer' },
    inflight: { type: 'integer' },
  },
};

const subscription: JsonSchema = {
  type: 'object',
  properties: {
    filter: { type: 'string' },
    qos: { type: 'integer' },
    noLocal: { type: 'boolean' },
    retainAsPublished: { type: 'boolean' },
    retainHandling: { type: 'integer' },
    subscriptionId: { type: ['integer', 'null'] },
  },
};

const session: JsonSchema = {
  type: 'object',
  properties: {
    owner: { type: 'string' },
    clientId: { type: 'string' },
    connected: { type: 'boolean' },
    connectionId: { type: ['integer', 'null'] },
    persistent: { type: 'boolean' },
    protocol: { type: 'string' },
    expiresAt: { type: ['string', 'null'] },
    listener: { type: 'string' },
    subscriptions: { type: 'integer' },
    queued: { type: 'integer' },
    inflight: { type: 'integer' },
    droppedMessages: { type: 'integer' },
  },
};

const pageOf = (item: JsonSchema): JsonSchema => ({ type: 'object', properties: { total: { type: 'integer' }, offset: { type: 'integer' }, items: { type: 'array', items: item } } });

const idParams: JsonSchema = { type: 'object', required: ['id'], additionalProperties: false, properties: { id: { type: 'integer', minimum: 1 } } };

interface ListQuery {
  clientId?: string;
  username?: string;
  listener?: string;
  owner?: string;
  connected?: boolean;
  limit: number;
  offset: number;
}

export function clientRoutes(ctx: OpsContext): RouteSpec[] {
  const inspector = ctx.inspector;
  const notFound = (id: number) => new ApiError(404, 'ERR_NOT_FOUND', `no connected client with id ${id} (ids come from GET /api/v1/clients)`);
  return [
    {
      method: 'GET',
      url: '/api/v1/clients',
      op: 'clients.list',
      kind: 'api',
      resource: 'clients',
      access: 'read',
      tag: 'clients',
      summary: 'Connected clients, optionally filtered by client id, user name or listener.',
      schema: {
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { clientId: shortText(65535), username: shortText(65535), listener: shortText(256), limit: limitParam, offset: offsetParam },
        },
      },
      response: pageOf(connection),
      handler: async (req: FastifyRequest) => {
        const q = req.query as ListQuery;
        const { total, items } = inspector.connections(
          {
            ...(q.clientId !== undefined ? { clientId: q.clientId } : {}),
            ...(q.username !== undefined ? { username: q.username } : {}),
            ...(q.listener !== undefined ? { listener: q.listener } : {}),
          },
          q.offset,
          q.limit,
        );
        return { total, offset: q.offset, items };
      },
    },
    {
      method: 'GET',
      url: '/api/v1/clients/:id',
      op: 'clients.show',
      kind: 'api',
      resource: 'clients',
      access: 'read',
      tag: 'clients',
      summary: 'One connected client, with its subscriptions.',
      schema: { params: idParams },
      response: { type: 'object', properties: { ...(connection.properties as object), subscriptionList: { type: 'array', items: subscription } } },
      handler: async (req: FastifyRequest) => {
        const { id } = req.params as { id: number };
        const info = inspector.connection(id);
        if (info === undefined) throw notFound(id);
        return { ...info, subscriptionList: inspector.subscriptionsOf(id) ?? [] };
      },
    },
    {
      method: 'POST',
      url: '/api/v1/clients/:id/kick',
      op: 'clients.kick',
      kind: 'api',
      resource: 'clients/kick',
      access: 'change',
      tag: 'clients',
      summary: 'Disconnect a client as an administrative action (MQTT 5: DISCONNECT 0x98); its will is discarded. Audited with the reason.',
      schema: {
        params: idParams,
        body: { type: 'object', additionalProperties: false, properties: { reason: { type: 'string', minLength: 1, maxLength: 500, pattern: '^[^\\u0000-\\u001f\\u007f]*$' } } },
      },
      response: { type: 'object', properties: { kicked: connection } },
      handler: async (req: FastifyRequest) => {
        const { id } = req.params as { id: number };
        const body = (req.body ?? {}) as { reason?: string };
        const who = req.ops.principal?.name ?? 'unknown';
        const before = inspector.connection(id);
        if (before === undefined) throw notFound(id);
        req.ops.target = { connectionId: id, clientId: before.clientId };
        const kicked = ctx.kick(id, `kicked by ${who} through the admin API${body.reason !== undefined ? `: ${body.reason}` : ''}`);
        if (kicked === undefined) throw notFound(id);
        return { kicked };
      },
    },
    {
      method: 'GET',
      url: '/api/v1/sessions',
      op: 'sessions.list',
      kind: 'api',
      resource: 'sessions',
      access: 'read',
      tag: 'sessions',
      summary: 'Sessions (connected and offline), optionally filtered by client id, owner (the identity) or state.',
      schema: {
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { clientId: shortText(65535), owner: shortText(65535), connected: { type: 'boolean' }, limit: limitParam, offset: offsetParam },
        },
      },
      response: pageOf(session),
      handler: async (req: FastifyRequest) => {
        const q = req.query as ListQuery;
        const { total, items } = inspector.sessions(
          {
            ...(q.clientId !== undefined ? { clientId: q.clientId } : {}),
            ...(q.owner !== undefined ? { owner: q.owner } : {}),
            ...(q.connected !== undefined ? { connected: q.connected } : {}),
          },
          q.offset,
          q.limit,
        );
        return { total, offset: q.offset, items };
      },
    },
    {
      method: 'GET',
      url: '/api/v1/sessions/:owner/:clientId',
      op: 'sessions.show',
      kind: 'api',
      resource: 'sessions',
      access: 'read',
      tag: 'sessions',
      summary: 'One session (by owner and client id, each URL-encoded) with its subscriptions.',
      schema: { params: { type: 'object', required: ['owner', 'clientId'], additionalProperties: false, properties: { owner: shortText(65535), clientId: shortText(65535) } } },
      response: { type: 'object', properties: { ...(session.properties as object), subscriptionList: { type: 'array', items: subscription } } },
      handler: async (req: FastifyRequest) => {
        const { owner, clientId } = req.params as { owner: string; clientId: string };
        const s = inspector.session(owner, clientId);
        if (s === undefined) throw new ApiError(404, 'ERR_NOT_FOUND', 'no such session (owners and client ids come from GET /api/v1/sessions)');
        return s;
      },
    },
  ];
}
