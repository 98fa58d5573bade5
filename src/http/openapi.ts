/**
 * The OpenAPI 3.1 document of the operations listener, built from the route table the server
 * registers: what is documented is what is served and validated.
 */
import type { JsonSchema, RouteSpec } from './route.ts';

const ERRORS: [number, string][] = [
  [400, 'Bad request: invalid parameters or body, malformed JSON, a bad audit file name'],
  [401, 'No caller, a wrong, malformed or expired token, or a client certificate that is expired or not valid'],
  [403, 'The admin policy does not allow this caller this operation'],
  [404, 'No such route or object'],
  [413, 'Body larger than http.bodyLimit'],
  [415, 'Body is not JSON'],
  [429, 'Too many failed authentications from this address (Retry-After)'],
];

function parameters(where: 'path' | 'query', schema: JsonSchema | undefined): Record<string, unknown>[] {
  const props = (schema?.properties ?? {}) as Record<string, JsonSchema>;
  const required = new Set((schema?.required ?? []) as string[]);
  return Object.entries(props).map(([name, s]) => ({ name, in: where, required: where === 'path' || required.has(name), schema: s }));
}

export function openApiDocument(routes: readonly RouteSpec[], version: string, options: { tokens: boolean; mtls: boolean }): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  const security = [...(options.tokens ? [{ bearerToken: [] }] : []), ...(options.mtls ? [{ clientCertificate: [] }] : [])];
  for (const r of routes) {
    const url = r.url.replace(/:([A-Za-z]+)/g, '{$1}');
    const op: Record<string, unknown> = {
      operationId: r.op,
      summary: r.summary,
      tags: [r.tag],
      parameters: [...parameters('path', r.schema?.params), ...parameters('query', r.schema?.querystring)],
      responses: {
        [r.method === 'POST' && r.op === 'bans.add' ? '201' : '200']: {
          description: 'OK',
          content: { [r.produces ?? 'application/json']: { schema: r.response ?? { type: 'object' } } },
        },
        ...Object.fromEntries(
          ERRORS.filter(([code]) => r.kind !== 'public' || code === 404).map(([code, description]) => [
            String(code),
            { description, content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
          ]),
        ),
      },
      ...(r.kind === 'public' ? { security: [] } : {}),
      ...(r.resource !== undefined ? { 'x-portcullis-policy': { object: `admin/${r.resource}`, action: r.access === 'change' ? 'publish' : 'read' } } : {}),
    };
    if (r.schema?.body !== undefined) op.requestBody = { required: true, content: { 'application/json': { schema: r.schema.body } } };
    (paths[url] ??= {})[r.method.toLowerCase()] = op;
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'Portcullis operations API',
      version,
      description:
        'Metrics, health checks and the admin API of a Portcullis MQTT broker. Callers authenticate with a bearer token (`portcullis token add`) or a client certificate; the admin policy (http.auth.policy) decides each operation: `read` on admin/<object> for GET-like calls, `publish` for changes. Every call is audited.',
    },
    servers: [{ url: '/' }],
    security,
    paths,
    components: {
      securitySchemes: {
        ...(options.tokens ? { bearerToken: { type: 'http', scheme: 'bearer', description: 'pct_<id>_<secret>, from `portcullis token add`' } } : {}),
        ...(options.mtls ? { clientCertificate: { type: 'mutualTLS', description: 'A client certificate from http.tls.ca with the clientAuth usage; its CN is the caller' } } : {}),
      },
      schemas: {
        Error: {
          type: 'object',
          required: ['statusCode', 'code', 'message', 'requestId'],
          properties: { statusCode: { type: 'integer' }, code: { type: 'string' }, message: { type: 'string' }, requestId: { type: 'string' } },
        },
      },
    },
  };
}
