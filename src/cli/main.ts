/**
 * The `portcullis` command.
 */
import { Command } from 'commander';
import { VERSION } from '../broker/sys.ts';
import { startCommand } from './start.ts';
import { registerPkiCommand } from './pki.ts';
import { registerAuditCommand } from './audit.ts';
import { registerPolicyCommand } from './policy.ts';
import { registerPasswdCommand } from './passwd.ts';

const program = new Command();
program.name('portcullis').description('A security-first MQTT broker').version(VERSION, '-v, --version');

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

await program.parseAsync(process.argv);
