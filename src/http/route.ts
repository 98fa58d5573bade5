/**
 * A route of the operations listener, as data: the pipeline reads who may call it (`resource`
 * and `access`, for the admin policy), whether it needs a caller at all (`public`), and what the
 * audit record calls it (`op`); the OpenAPI document is built from the same table.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Access, AdminPrincipal } from './admin-authz.ts';
import type { ApiError } from './errors.ts';

/** JSON Schema, as Fastify validates it and OpenAPI 3.1 describes it. */
export type JsonSchema = Record<string, unknown>;

export interface RouteSpec {
  method: 'GET' | 'POST' | 'DELETE';
  url: string;
  /** Names the operation: the audit record's action (`api.<op>`) and the OpenAPI operationId. */
  op: string;
  summary: string;
  tag: string;
  /**
   * public: anyone (health, the console's page); metrics: /metrics, public or not as configured;
   * otherwise an authenticated caller the admin policy allows `access` to `admin/<resource>`.
   */
  kind: 'public' | 'metrics' | 'api';
  resource?: string;
  access?: Access;
  schema?: { params?: JsonSchema; querystring?: JsonSchema; body?: JsonSchema };
  /** What a 200 returns, for the OpenAPI document. */
  response?: JsonSchema;
  /** The content type of a 200, when it is not JSON. */
  produces?: string;
  handler(req: FastifyRequest, reply: FastifyReply): Promise<unknown>;
}

/** What the pipeline keeps about one request. */
export interface RequestState {
  startedAt: number;
  principal: AdminPrincipal | null;
  error: ApiError | null;
  decidedBy?: string;
  rule?: string;
  policyVersion?: string;
  /** What the call acted on, for its audit record (a client id, a ban). */
  target?: Record<string, string | number | boolean>;
}

declare module 'fastify' {
  interface FastifyContextConfig {
    op?: string;
    kind?: RouteSpec['kind'];
    resource?: string;
    access?: Access;
  }
  interface FastifyRequest {
    ops: RequestState;
  }
}

/** Query and path strings: short, no control characters. */
export const shortText = (max = 1024): JsonSchema => ({ type: 'string', minLength: 1, maxLength: max, pattern: '^[^\\u0000-\\u001f\\u007f]*$' });

export const limitParam: JsonSchema = { type: 'integer', minimum: 1, maximum: 1000, default: 100 };
export const offsetParam: JsonSchema = { type: 'integer', minimum: 0, maximum: 10_000_000, default: 0 };
