/** Shared bits of the broker server scripts: --host/--port parsing and the parent handshake. */
import { parseArgs } from 'node:util';

export function serverArgs(): { host: string; port: number } {
  const { values } = parseArgs({ options: { host: { type: 'string', default: '127.0.0.1' }, port: { type: 'string', default: '0' } } });
  return { host: values.host, port: Number(values.port) };
}

/**
 * Prints `READY <port>` for the parent, then stops on SIGTERM/SIGINT or when the parent goes
 * away (stdin closes), so no broker outlives the benchmark.
 */
export function serve(port: number, stop: () => Promise<void>): void {
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
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
  process.stdin.on('end', shutdown);
  process.stdin.on('error', shutdown);
  process.stdin.resume();
  process.stdout.write(`READY ${port}\n`);
}
