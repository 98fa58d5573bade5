/**
 * The admin API's errors: an HTTP status and a stable code, with a message that says what was
 * wrong and, where it helps, what to do. Fastify's own errors (body too large, malformed JSON,
 * validation) are mapped onto the same shape, so a client reads one format.
 *
 * @example
 * throw new ApiError(403, 'ERR_FORBIDDEN', "role read-only may not change bans");
 */
export type ApiErrorCode =
  | 'ERR_UNAUTHENTICATED'
  | 'ERR_NO_AUTHENTICATION_CONFIGURED'
  | 'ERR_TOKEN_MALFORMED'
  | 'ERR_TOKEN_INVALID'
  | 'ERR_TOKEN_EXPIRED'
  | 'ERR_CERTIFICATE_EXPIRED'
  | 'ERR_CERTIFICATE_INVALID'
  | 'ERR_FORBIDDEN'
  | 'ERR_NOT_FOUND'
  | 'ERR_BAD_REQUEST'
  | 'ERR_BAD_FILE'
  | 'ERR_MALFORMED_JSON'
  | 'ERR_BODY_TOO_LARGE'
  | 'ERR_UNSUPPORTED_MEDIA_TYPE'
  | 'ERR_HOST_NOT_ALLOWED'
  | 'ERR_HEADERS_TOO_LARGE'
  | 'ERR_REQUEST_TIMEOUT'
  | 'ERR_TOO_MANY_FAILURES'
  | 'ERR_BUSY'
  | 'ERR_CONFLICT'
  | 'ERR_NOT_AVAILABLE'
  | 'ERR_INTERNAL';

export class ApiError extends Error {
  constructor(
    readonly statusCode: number,
    readonly code: ApiErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/** What an error response body holds. */
export interface ErrorBody {
  statusCode: number;
  code: ApiErrorCode;
  message: string;
  requestId: string;
}

interface FastifyLikeError {
  code?: string;
  statusCode?: number;
  message: string;
  validation?: unknown[];
  validationContext?: string;
}

/** Maps any error thrown in the pipeline onto an ApiError; unknown ones become a 500 without details. */
export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  const e = (err ?? {}) as FastifyLikeError;
  switch (e.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new ApiError(413, 'ERR_BODY_TOO_LARGE', `request body larger than http.bodyLimit: ${e.message}`);
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return new ApiError(400, 'ERR_MALFORMED_JSON', `the body is not valid JSON: ${e.message}`);
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new ApiError(400, 'ERR_MALFORMED_JSON', 'the body is empty but Content-Type is application/json');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new ApiError(415, 'ERR_UNSUPPORTED_MEDIA_TYPE', 'send JSON (Content-Type: application/json)');
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new ApiError(400, 'ERR_BAD_REQUEST', 'Content-Length does not match the body');
  }
  if (Array.isArray(e.validation)) return new ApiError(400, 'ERR_BAD_REQUEST', `invalid ${e.validationContext ?? 'request'}: ${e.message}`);
  // A JSON syntax error from the parser (secure-json-parse) carries status 400.
  if (e.statusCode === 400 && err instanceof SyntaxError) return new ApiError(400, 'ERR_MALFORMED_JSON', `the body is not valid JSON: ${e.message}`);
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) return new ApiError(e.statusCode, 'ERR_BAD_REQUEST', e.message);
  return new ApiError(500, 'ERR_INTERNAL', 'internal error (see the broker log)');
}
