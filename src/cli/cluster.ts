/**
 * `portcullis cluster keygen | status`: the cluster's key file, and what the cluster looks like
 * from Redis (nodes, their leases, partitions and where they are hosted). See docs/cluster.md.
 */
import fs from 'node:fs';
import type { Command } from 'commander';
import { clusterView } from '../cluster/admin.ts';
import { ClusterError } from '../cluster/errors.ts';
import { newClusterKeyLine } from '../cluster/keys.ts';
import { loadConfigFile } from '../config/load.ts';

function fail(err: unknown): number {
  process.stderr.write(`portcullis cluster: ${(err as Error).message}\n`);
  return err instanceof ClusterError && err.code === 'ERR_CLUSTER_KEY' ? 2 : 1;
}

export function registerClusterCommand(program: Command): void {
  const cluster = program.command('cluster').description('the cluster key, and the state of a cluster in Redis');
  cluster
    .command('keygen')
    .description('add a new random key as the first line of a cluster key file (created 0600): the key every node signs bus messages with')
    .requiredOption('--key-file <file>', 'the key file (cluster.keyFile)')
    .option('--id <id>', 'the key id', `k-${new Date().toISOString().slice(0, 10)}`)
    .action((opts: { keyFile: string; id: string }) => {
      try {
        const line = newClusterKeyLine(opts.id);
        const old = fs.existsSync(opts.keyFile) ? fs.readFileSync(opts.keyFile, 'utf8') : '';
        if (old.split(/\r?\n/).some((l) => l.trim().split(/\s+/)[0] === opts.id)) throw new ClusterError('ERR_CLUSTER_KEY', `key id '${opts.id}' is already in ${opts.keyFile}`);
        const tmp = `${opts.keyFile}.tmp-${process.pid}`;
        fs.writeFileSync(tmp, `${line}\n${old}`, { mode: 0o600 });
        fs.renameSync(tmp, opts.keyFile);
        process.stdout.write(`added key '${opts.id}' as the first (signing) key of ${opts.keyFile}: copy the file to every node (keep it 0600), then reload them\n`);
        process.exitCode = 0;
      } catch (err) {
        process.exitCode = fail(err);
      }
    });
  cluster
    .command('status')
    .description('the nodes of the cluster (alive or not), and each partition of sessions with its host, its sessions and its unapplied messages')
    .requiredOption('-c, --config <file>', 'a configuration with `cluster`')
    .option('--json', 'machine-readable output')
    .action(async (opts: { config: string; json?: boolean }) => {
      try {
        const config = loadConfigFile(opts.config);
        if (config.cluster === undefined) throw new Error(`${opts.config} has no \`cluster\` section`);
        const view = await clusterView(config.cluster);
        if (opts.json === true) process.stdout.write(JSON.stringify(view, null, 2) + '\n');
        else {
          const lines = [`nodes (${view.nodes.filter((n) => n.alive).length} alive of ${view.nodes.length} registered):`];
          for (const n of view.nodes) lines.push(`  ${n.node}  ${n.alive ? 'alive' : 'GONE '}  ${String(n.info['host'] ?? '')} pid ${String(n.info['pid'] ?? '?')} since ${String(n.info['started'] ?? '?')}`);
          lines.push(`partitions (${view.partitions.length}):`);
          for (const p of view.partitions) lines.push(`  ${p.id}  host ${p.hostNode}${p.alive ? '' : ' (GONE: waiting to be adopted)'}  ${p.sessions} sessions, ${p.pending} messages not yet applied`);
          process.stdout.write(lines.join('\n') + '\n');
        }
        process.exitCode = 0;
      } catch (err) {
        process.exitCode = fail(err);
      }
    });
}
