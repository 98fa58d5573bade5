/** /metrics: the Prometheus text format. */
import type { MetricsRegistry } from '../../metrics/prom.ts';
import { ApiError } from '../errors.ts';
import type { RouteSpec } from '../route.ts';

export function metricsRoutes(registry: MetricsRegistry | undefined): RouteSpec[] {
  return [
    {
      method: 'GET',
      url: '/metrics',
      op: 'metrics',
      kind: 'metrics',
      resource: 'metrics',
      access: 'read',
      tag: 'metrics',
      summary: 'Prometheus metrics (text format 0.0.4); needs a caller allowed to read admin/metrics unless http.metrics.public or no authentication is configured.',
      produces: 'text/plain; version=0.0.4',
      handler: async (_req, reply) => {
        if (registry === undefined) throw new ApiError(404, 'ERR_NOT_FOUND', 'metrics are off (http.metrics.enabled: false)');
        reply.type(registry.contentType);
        return registry.text();
      },
    },
  ];
}
