/**
 * The Grafana dashboard in docs/grafana/ queries only series a running broker serves on
 * /metrics, the Prometheus example scrapes the right path, and docs/operations.md's table names
 * every series the broker serves (and nothing it does not).
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import YAML from 'yaml';
import { connect } from './helpers.ts';
import { parseMetrics, request, root, startOpsBroker } from './ops-support.ts';

const dashboardFile = path.join(root, 'docs', 'grafana', 'portcullis-dashboard.json');

/** Every metric name in the dashboard's queries and variables. */
function dashboardMetrics(): Set<string> {
  const dash = JSON.parse(fs.readFileSync(dashboardFile, 'utf8')) as { panels: { targets?: { expr: string }[] }[]; templating: { list: { query?: unknown }[] } };
  const exprs = [
    ...dash.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr)),
    ...dash.templating.list.map((v) => (typeof v.query === 'object' && v.query !== null ? (v.query as { query: string }).query : String(v.query ?? ''))),
  ];
  const names = new Set<string>();
  for (const e of exprs) for (const m of e.matchAll(/\b((?:portcullis|nodejs|process)_[a-z0-9_]+)/g)) names.add(m[1] as string);
  return names;
}

test('every metric the Grafana dashboard queries exists in /metrics', async (t) => {
  const b = await startOpsBroker({}, { http: { metrics: { public: true } } as never });
  try {
    const c = await connect(b.mqttPort, { clientId: 'dash' });
    await c.subscribeAsync('a/#');
    await c.publishAsync('a/b', 'x');
    const { types } = parseMetrics((await request(b.base, '/metrics')).text);
    const wanted = dashboardMetrics();
    t.true(wanted.size >= 30, `the dashboard queries ${wanted.size} metrics`);
    const missing: string[] = [];
    for (const name of wanted) {
      const family = types.has(name) ? name : name.replace(/_(bucket|sum|count)$/, '');
      if (!types.has(family) || (family !== name && types.get(family) !== 'histogram')) missing.push(name);
    }
    t.deepEqual(missing, [], `queried by the dashboard, not served: ${missing.join(', ')}`);
    await c.endAsync();
  } finally {
    await b.stop();
  }
});

test('the Prometheus example scrapes /metrics with a bearer token file', (t) => {
  const conf = YAML.parse(fs.readFileSync(path.join(root, 'docs', 'grafana', 'prometheus.yml'), 'utf8')) as { scrape_configs: { job_name: string; metrics_path: string; authorization?: { type: string; credentials_file?: string } }[] };
  const job = conf.scrape_configs.find((j) => j.job_name === 'portcullis');
  t.is(job?.metrics_path, '/metrics');
  t.is(job?.authorization?.type, 'Bearer');
  t.truthy(job?.authorization?.credentials_file);
});

test("docs/operations.md's table lists every portcullis_ series /metrics serves, and only those", async (t) => {
  const b = await startOpsBroker({}, { http: { metrics: { public: true } } as never });
  try {
    const { types } = parseMetrics((await request(b.base, '/metrics')).text);
    const served = [...types.keys()].filter((n) => n.startsWith('portcullis_')).sort();
    const doc = fs.readFileSync(path.join(root, 'docs', 'operations.md'), 'utf8');
    const documented = [...new Set([...doc.matchAll(/^\| `(portcullis_[a-z0-9_]+)` \|/gm)].map((m) => m[1] as string))].sort();
    t.deepEqual(documented, served);
  } finally {
    await b.stop();
  }
});
