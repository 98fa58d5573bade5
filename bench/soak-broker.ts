/**
 * The broker under soak, in its own process so its resident memory is measured alone. The
 * configuration comes as JSON in PORTCULLIS_SOAK_CONFIG. Over IPC the parent asks for samples
 * ({ type: 'sample' }: RSS after a GC, stats, connected clients, error-level log lines) and ends
 * it with { type: 'stop' }.
 */
import { createBroker, type ConfigInput } from '../src/index.ts';
import { createLogger } from '../src/log.ts';

const config = JSON.parse(process.env['PORTCULLIS_SOAK_CONFIG'] ?? '{}') as Partial<ConfigInput>;
const errors: string[] = [];
const logSink = {
  write(line: string) {
    try {
      const r = JSON.parse(line) as { level?: number; msg?: string; err?: unknown };
      if ((r.level ?? 0) >= 50) errors.push(`${r.msg ?? ''} ${JSON.stringify(r.err ?? '')}`.slice(0, 1000));
    } catch {
      errors.push(line.slice(0, 200));
    }
    return true;
  },
} as unknown as NodeJS.WritableStream;
process.on('uncaughtException', (err) => errors.push(`uncaughtException: ${err.stack ?? String(err)}`));
process.on('unhandledRejection', (err) => errors.push(`unhandledRejection: ${(err as Error)?.stack ?? String(err)}`));

const broker = createBroker(
  {
    listeners: [{ name: 'soak', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }],
    authorizers: ['allow-all'],
    store: { type: 'memory' },
    sys: { intervalSeconds: 0 },
    audit: { sink: 'none' },
    ...config,
  },
  { logger: createLogger('warn', logSink) },
);
const { listeners } = await broker.start();
const send = (m: unknown) => process.send?.(m);
send({ type: 'ready', port: listeners[0]?.port });

process.on('message', (m: { type: string }) => {
  if (m.type === 'sample') {
    (globalThis as { gc?: () => void }).gc?.();
    send({ type: 'sample', rss: process.memoryUsage().rss, heap: process.memoryUsage().heapUsed, stats: { ...broker.stats }, connected: broker.connectedClients, errors: errors.splice(0) });
  } else if (m.type === 'stop') {
    void broker.stop().then(() => process.exit(0));
  }
});
process.on('disconnect', () => void broker.stop().then(() => process.exit(0)));
