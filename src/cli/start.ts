import { createBroker } from '../index.ts';
import { DEFAULT_PKI_DIR, builtInDefaults } from '../config/defaults.ts';
import { ensureDevelopmentPki } from '../pki/bootstrap.ts';
import { loadConfigFile } from '../config/load.ts';
import { ConfigError, parseConfig, type Config } from '../config/schema.ts';
import cluster from 'node:cluster';
import { createLogger } from '../log.ts';
import { workerCount } from '../config/cluster-schema.ts';
import { runPrimary, workerConfig, workerIndex } from '../cluster/workers.ts';

/** `portcullis start`: runs until SIGTERM/SIGINT, then shuts down gracefully and exits 0. */
export async function startCommand(configFile: string | undefined): Promise<number> {
  let config: Config;
  try {
    config = configFile === undefined ? parseConfig(builtInDefaults, 'built-in defaults') : loadConfigFile(configFile);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`portcullis: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  const workers = workerCount(config.workers);
  if (workers > 1 && cluster.isPrimary) {
    // `workers: N`: this process only starts and watches the workers (src/cluster/workers.ts).
    return runPrimary(config, workers, createLogger(config.log.level, undefined, config.log.format).child({ role: 'primary' }));
  }
  const index = workerIndex();
  if (index !== null) config = workerConfig(config, index);
  const base = createLogger(config.log.level, undefined, config.log.format);
  const log = index === null ? base : base.child({ worker: index });
  let broker;
  try {
    // The built-in TLS listeners need a server certificate: make a development one on first start.
    if (configFile === undefined) ensureDevelopmentPki(DEFAULT_PKI_DIR, log);
    // With workers, one of them writes what the command line spools for the audit log.
    broker = createBroker(config, { logger: log, adminSpool: index === null || index === 1 });
  } catch (err) {
    process.stderr.write(`portcullis: ${(err as Error).message}\n`);
    return 2;
  }
  if (configFile === undefined) {
    log.info('no --config given: using built-in defaults (local-only mode: anonymous access with allow-all on 127.0.0.1:1883; TLS with certificate or PSK on 127.0.0.1:8883; mTLS on 127.0.0.1:8884)');
  }
  let addresses;
  try {
    ({ listeners: addresses } = await broker.start());
  } catch (err) {
    process.stderr.write(`portcullis: cannot start: ${(err as Error).message}\n`);
    return 1;
  }
  for (const a of addresses) {
    log.info({ listener: a.name, type: a.type, host: a.host, port: a.port }, `listening on ${a.type}://${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`);
  }
  return await new Promise<number>((resolve) => {
    let stopping = false;
    const shutdown = (signal: string) => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, 'shutting down');
      const force = setTimeout(() => {
        log.error('shutdown took too long: exiting');
        process.exit(1);
      }, broker.config.shutdown.graceMs + 3000);
      force.unref();
      broker.stop().then(
        () => {
          log.info('stopped');
          log.flush();
          resolve(0);
        },
        (err: unknown) => {
          log.error({ err: (err as Error).message }, 'error during shutdown');
          resolve(1);
        },
      );
    };
    // Not `once`: a second signal must not kill the broker in the middle of its graceful stop
    // (leaving the store locked and the audit log unsigned). One Ctrl-C at a terminal, or one
    // SIGTERM to a process group, reaches it twice under npx / npm start, which pass it on too.
    process.on('SIGTERM', () => shutdown('SIGTERM'));
    process.on('SIGINT', () => shutdown('SIGINT'));
    // SIGHUP reloads the policy files; the outcome goes to the log and the audit trail.
    process.on('SIGHUP', () => {
      if (stopping) return;
      if (broker.config.cluster !== undefined) {
        // In a cluster every node reloads, and this one reports each node's outcome (log and audit).
        // Its own TLS listeners reload on SIGHUP by themselves.
        log.info('SIGHUP: reloading the policy, password files, ban file and cluster key here, and everything on every other node');
        broker.reloadEverywhere('SIGHUP', ['policy', 'passwords', 'bans', 'cluster-key']).catch((err: unknown) => log.error({ err: (err as Error).message }, 'cluster reload failed'));
        return;
      }
      log.info('SIGHUP: reloading the policy');
      broker.reloadPolicy('SIGHUP').catch((err: unknown) => log.error({ err: (err as Error).message }, 'policy reload failed'));
      // ...and the password files (each outcome is logged and audited by the provider's reload hook).
      broker.reloadCredentials('SIGHUP').catch((err: unknown) => log.error({ err: (err as Error).message }, 'password file reload failed'));
      // ...and the ban file (the outcome and every ban added or removed are logged and audited).
      broker.reloadBans('SIGHUP');
    });
  });
}
