/**
 * The Prometheus text the metrics registry writes itself (src/metrics/prom.ts): headers, label
 * escaping, histogram buckets made cumulative, special values, families separated by a blank
 * line; and the prom-client process defaults whose cost grows with connections are left out.
 */
import test from 'ava';
import type { Sample } from '../src/metrics/counts.ts';
import fs from 'node:fs';
import net from 'node:net';
import { MetricsRegistry, O_N_PROCESS_FAMILIES, openFds } from '../src/metrics/prom.ts';

test('counters, gauges and histograms in text format 0.0.4, label values escaped', async (t) => {
  const r = new MetricsRegistry(false);
  r.add({ name: 'x_total', help: 'Help with a \\ and a\nnewline.', type: 'counter', collect: (): Sample[] => [{ labels: { reason: 'say "hi"\\\n' }, value: 3 }, { labels: {}, value: 0 }] });
  r.add({ name: 'g', help: 'A gauge.', type: 'gauge', collect: (): Sample[] => [{ labels: { a: '1', b: '2' }, value: Number.NaN }, { labels: {}, value: Number.POSITIVE_INFINITY }] });
  r.add({ name: 'h_seconds', help: 'A histogram.', type: 'histogram', collect: () => [{ labels: { kind: 'k' }, bounds: [0.1, 1], counts: [2, 3, 1], sum: 4.5, count: 6 }] });
  r.add({ name: 'empty', help: 'No samples.', type: 'gauge', collect: () => [] });
  t.is(
    await r.text(),
    [
      '# HELP x_total Help with a \\\\ and a\\nnewline.',
      '# TYPE x_total counter',
      'x_total{reason="say \\"hi\\"\\\\\\n"} 3',
      'x_total 0',
      '',
      '# HELP g A gauge.',
      '# TYPE g gauge',
      'g{a="1",b="2"} Nan',
      'g +Inf',
      '',
      '# HELP h_seconds A histogram.',
      '# TYPE h_seconds histogram',
      'h_seconds_bucket{kind="k",le="0.1"} 2',
      'h_seconds_bucket{kind="k",le="1"} 5',
      'h_seconds_bucket{kind="k",le="+Inf"} 6',
      'h_seconds_sum{kind="k"} 4.5',
      'h_seconds_count{kind="k"} 6',
      '',
      '# HELP empty No samples.',
      '# TYPE empty gauge',
      '',
    ].join('\n'),
  );
  t.throws(() => r.add({ name: 'g', help: '', type: 'gauge', collect: () => [] }), { message: /registered twice/ });
});

test('the process series follow the broker\'s, without the families whose cost grows with connections', async (t) => {
  const r = new MetricsRegistry(true);
  r.add({ name: 'portcullis_info', help: 'Info.', type: 'gauge', collect: () => [{ labels: { version: '1' }, value: 1 }] });
  const text = await r.text();
  t.true(text.startsWith('# HELP portcullis_info Info.\n# TYPE portcullis_info gauge\nportcullis_info{version="1"} 1\n\n# HELP process_cpu_user_seconds_total'));
  t.true(text.endsWith('\n') && !text.endsWith('\n\n'));
  for (const name of ['process_cpu_seconds_total', 'process_resident_memory_bytes', 'nodejs_eventloop_lag_p99_seconds', 'nodejs_heap_size_used_bytes', 'nodejs_gc_duration_seconds']) {
    t.regex(text, new RegExp(`^# TYPE ${name} `, 'm'), name);
  }
  t.regex(text, /^nodejs_heap_space_size_used_bytes\{space="[a-z_]+"\} \d+$/m);
  for (const name of O_N_PROCESS_FAMILIES) t.notRegex(text, new RegExp(`^# TYPE ${name} `, 'm'), name);
});

test('process_open_fds counts the open descriptors at each scrape (200 more sockets show at once)', async (t) => {
  const r = new MetricsRegistry(true);
  const fds = async () => Number(/^process_open_fds (\d+)$/m.exec(await r.text())?.[1]);
  const listed = fs.readdirSync('/proc/self/fd').length - 1;
  t.true(Math.abs((openFds(Date.now()) ?? -1) - listed) <= 2, `${openFds(Date.now())} against ${listed} listed`);
  if (fs.statSync('/proc/self/fd').size === 0) {
    // A kernel before 6.2: the count comes from a listing made at most every 10 s, checked above.
    t.log('this kernel does not report the descriptor count in /proc/self/fd: the listing is used');
    return;
  }
  const before = await fds();
  const server = net.createServer().listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  const port = (server.address() as net.AddressInfo).port;
  const sockets = await Promise.all(Array.from({ length: 100 }, () => new Promise<net.Socket>((resolve) => { const s = net.connect(port, '127.0.0.1', () => resolve(s)); })));
  await new Promise((resolve) => setTimeout(resolve, 50)); // the server side accepted them too
  const after = await fds();
  for (const s of sockets) s.destroy();
  server.close();
  t.true(after - before >= 200, `${before} → ${after}`);
});
