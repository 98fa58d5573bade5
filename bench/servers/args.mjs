// Shared bits of the broker server scripts: --config parsing and the parent handshake.
// Plain JavaScript (types in args.d.mts), so that the Portcullis server can run the compiled dist/
// on plain node, without the TypeScript loader the other servers use.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

/** Reads the JSON file named by --config (written by bench/lib/brokers.ts). */
export function serverConfig() {
  const { values } = parseArgs({ options: { config: { type: 'string' } } });
  if (values.config === undefined) throw new Error('usage: --config FILE.json');
  return JSON.parse(readFileSync(values.config, 'utf8'));
}

/**
 * Prints `READY {"tcp":port,"tls":port,"mtls":port}` for the parent, then stops on SIGTERM/SIGINT
 * or when the parent goes away (stdin closes), so no broker outlives the benchmark.
 */
export function serve(ports, stop) {
  let stopping = false;
  const shutdown = () => {
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
  process.on('SIGUSR2', () => globalThis.gc?.());
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
  process.stdin.on('end', shutdown);
  process.stdin.on('error', shutdown);
  process.stdin.resume();
  process.stdout.write(`READY ${JSON.stringify(ports)}\n`);
}

/** Starts a Portcullis broker (from src/ or dist/) and serves its tcp, tls and mtls ports. */
export async function servePortcullis(broker) {
  const info = await broker.start();
  const port = (name) => {
    const l = info.listeners.find((x) => x.name === name);
    if (l === undefined) throw new Error(`Portcullis started without the '${name}' listener`);
    return l.port;
  };
  serve({ tcp: port('tcp'), tls: port('tls'), mtls: port('mtls') }, () => broker.stop());
}
