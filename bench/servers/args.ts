/** Shared bits of the broker server scripts: --config parsing and the parent handshake. */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

/** Reads the JSON file named by --config (written by bench/lib/brokers.ts). */
export function serverConfig<T>(): T {
  const { values } = parseArgs({ options: { config: { type: 'string' } } });
  if (values.config === undefined) throw new Error('usage: --config FILE.json');
  return JSON.parse(readFileSync(values.config, 'utf8')) as T;
}

/**
 * Prints `READY {"tcp":port,"tls":port,"mtls":port}` for the parent, then stops on SIGTERM/SIGINT
 * or when the parent goes away (stdin closes), so no broker outlives the benchmark.
 */
export function serve(ports: { tcp: number; tls: number; mtls: number }, stop: () => Promise<void>): void {
  let stopping = false;
  const shutdown = (): void => {
    if (stopping) return;
    stopping = true;
    const force = setTimeout(() => process.exit(0), 3000);
    force.unref();
    stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  // The idle-memory scenario reads RSS after a full collection (the runner starts us with --expose-gc).
  process.on('SIGUSR2', () => (globalThis as { gc?: () => void }).gc?.());
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
  process.stdin.on('end', shutdown);
  process.stdin.on('error', shutdown);
  process.stdin.resume();
  process.stdout.write(`READY ${JSON.stringify(ports)}\n`);
}
