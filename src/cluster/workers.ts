/**
 * `workers: N`: N broker processes on this machine that share the listeners (node:cluster), each
 * a node of the cluster on the same Redis, with the same mechanism as nodes on many machines.
 *
 * The primary process does no MQTT work: it starts the workers, starts one again when it dies,
 * passes SIGHUP to one worker (which reloads every node, itself included, and reports each), and
 * stops them all on SIGTERM. Node 20 has no `reusePort`, so connections are accepted by the
 * primary and handed to the workers in turn (node:cluster's round-robin scheduling on Linux).
 *
 * Each worker is node `<node id>-w<n>`, audits to its own chained file (`audit-w<n>.jsonl` beside
 * `audit.path`; `portcullis audit verify` takes them all), and with the embedded store keeps its
 * own store folder (`<store.path>-w<n>`); with a Redis store, its own `store.instance` (`<instance>-w<n>`).
 */
import cluster from 'node:cluster';
import os from 'node:os';
import path from 'node:path';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';

export const WORKER_ENV = 'PORTCULLIS_WORKER';
const BASE_ENV = 'PORTCULLIS_NODE_BASE';

/** The worker number of this process (1..N), or null in a process that is not a worker. */
export function workerIndex(): number | null {
  if (!cluster.isWorker) return null;
  const n = Number(process.env[WORKER_ENV]);
  return Number.isInteger(n) && n > 0 ? n : null;
}

/** A file name with `-w<n>` before its extension: `data/audit.jsonl` → `data/audit-w2.jsonl`. */
export function perWorker(file: string, index: number): string {
  const ext = path.extname(file);
  return ext === '' ? `${file}-w${index}` : `${file.slice(0, -ext.length)}-w${index}${ext}`;
}

/** The configuration one worker runs with: its node id, audit file and store folder of its own. */
export function workerConfig(config: Config, index: number): Config {
  const base = process.env[BASE_ENV] ?? config.cluster?.nodeId ?? os.hostname();
  const out: Config = { ...config, audit: { ...config.audit, path: perWorker(config.audit.path, index) } };
  if (config.cluster !== undefined) out.cluster = { ...config.cluster, nodeId: `${base}-w${index}` };
  if (config.store.type === 'lmdb') out.store = { ...config.store, path: `${config.store.path}-w${index}` };
  // A Redis store is shared by every worker (sessions move through it), but each broker on it
  // needs an instance name of its own.
  if (config.store.type === 'redis') out.store = { ...config.store, instance: `${config.store.instance}-w${index}` };
  return out;
}

/**
 * Runs the primary: starts `count` workers and keeps them running until SIGTERM or SIGINT.
 * Resolves with the exit code.
 */
export function runPrimary(config: Config, count: number, log: Logger): Promise<number> {
  // The node id the workers share (the configured one, by default the host name): the same at
  // every start, so each worker takes back its own store's sessions.
  const base = config.cluster?.nodeId ?? os.hostname();
  const env = (index: number) => ({ [WORKER_ENV]: String(index), [BASE_ENV]: base });
  const workers = new Map<number, import('node:cluster').Worker>();
  let stopping = false;
  const restarts: number[] = [];
  const start = (index: number) => {
    const w = cluster.fork(env(index));
    workers.set(index, w);
    w.on('exit', (code, signal) => {
      if (workers.get(index) === w) workers.delete(index);
      if (stopping) return;
      // A worker that died is started again (its node id and store come back with it); a crash loop is slowed down.
      const now = Date.now();
      restarts.push(now);
      while (restarts.length > 0 && now - (restarts[0] as number) > 60_000) restarts.shift();
      const wait = restarts.length > 5 ? 5000 : 200;
      log.error({ worker: index, code, signal, restartInMs: wait }, `worker ${index} exited: starting it again`);
      setTimeout(() => {
        if (!stopping) start(index);
      }, wait).unref();
    });
  };
  log.info({ workers: count, nodeBase: base }, `starting ${count} workers`);
  for (let i = 1; i <= count; i++) start(i);
  return new Promise<number>((resolve) => {
    const shutdown = (signal: string) => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, 'shutting down the workers');
      const left = [...workers.values()];
      if (left.length === 0) return resolve(0);
      let n = left.length;
      const force = setTimeout(() => {
        for (const w of workers.values()) w.process.kill('SIGKILL');
        resolve(1);
      }, config.shutdown.graceMs + 5000);
      force.unref();
      for (const w of left) {
        w.once('exit', () => {
          if (--n === 0) {
            clearTimeout(force);
            resolve(0);
          }
        });
        w.process.kill('SIGTERM');
      }
    };
    process.once('SIGTERM', () => shutdown('SIGTERM'));
    process.once('SIGINT', () => shutdown('SIGINT'));
    // One worker reloads every node (itself included) and reports each; the others hear it over the bus.
    process.on('SIGHUP', () => {
      if (stopping) return;
      const first = [...workers.entries()].sort((a, b) => a[0] - b[0])[0]?.[1];
      log.info('SIGHUP: passed to one worker, which reloads every node of the cluster');
      first?.process.kill('SIGHUP');
    });
  });
}
