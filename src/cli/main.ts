/**
 * The `portcullis` command.
 */
import { Command } from 'commander';
import { spoolAdminAction } from '../audit/admin-spool.ts';
import { VERSION } from '../broker/sys.ts';
import { startCommand } from './start.ts';
import { registerPkiCommand } from './pki.ts';
import { registerAuditCommand } from './audit.ts';
import { registerPolicyCommand } from './policy.ts';
import { registerPasswdCommand } from './passwd.ts';
import { registerBanCommand } from './ban.ts';
import { spoolTarget } from './spool-target.ts';
import { registerStoreCommand } from './store.ts';
import { registerClusterCommand } from './cluster.ts';
import { registerTokenCommand } from './token.ts';
import { registerConfigCommand } from './config.ts';

const program = new Command();
program.name('portcullis').description('A security-first MQTT broker').version(VERSION, '-v, --version');
program.option('--audit-spool <dir>', 'where CLI actions that change state are spooled for the broker\'s audit log (audit-spool/ beside audit.path)', process.env.PORTCULLIS_AUDIT_SPOOL ?? 'data/audit-spool');

/**
 * Commands that change state (and `store export`, which copies every stored message out in the
 * clear): each successful run becomes an `admin` audit record.
 */
const STATE_CHANGING = new Set(['pki init', 'pki server', 'pki client', 'pki revoke', 'pki crl', 'pki psk', 'passwd add', 'passwd remove', 'policy reload', 'ban add', 'ban remove', 'store compact', 'store import', 'store export', 'store keygen', 'token add', 'token remove', 'cluster keygen']);

program.hook('postAction', (_root, action) => {
  const names: string[] = [];
  const args: string[] = [];
  for (let c: Command | null = action; c !== null && c !== program; c = c.parent) {
    names.unshift(c.name());
    for (const [k, v] of Object.entries(c.opts())) args.push(`--${k}=${Array.isArray(v) ? v.join(',') : String(v)}`);
  }
  const command = names.join(' ');
  if (!STATE_CHANGING.has(command) || (process.exitCode !== undefined && process.exitCode !== 0)) return;
  const given = program.getOptionValueSource('auditSpool') === 'cli';
  const dir = (!given ? spoolTarget() : undefined) ?? (program.opts() as { auditSpool: string }).auditSpool;
  try {
    spoolAdminAction(dir, { command, args: [...action.args, ...args] });
  } catch (err) {
    process.stderr.write(`portcullis: WARNING: the action was done but could not be spooled for the audit log in ${dir}: ${(err as Error).message}\n`);
  }
});

program
  .command('start')
  .description('start the broker (built-in local-only defaults without --config)')
  .option('-c, --config <file>', 'configuration file (YAML or JSON)')
  .action(async (opts: { config?: string }) => {
    const code = await startCommand(opts.config);
    // Exit explicitly: the logger's async destination would otherwise keep the process alive.
    setTimeout(() => process.exit(code), 50).unref();
    process.exitCode = code;
  });

registerPkiCommand(program);
registerAuditCommand(program);
registerPolicyCommand(program);
registerPasswdCommand(program);
registerBanCommand(program);
registerStoreCommand(program);
registerClusterCommand(program);
registerTokenCommand(program);
registerConfigCommand(program);

await program.parseAsync(process.argv);
