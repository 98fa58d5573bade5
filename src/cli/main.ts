/**
 * The `portcullis` command.
 */
import { Command } from 'commander';
import { VERSION } from '../broker/sys.ts';
import { startCommand } from './start.ts';

const program = new Command();
program.name('portcullis').description('A security-first MQTT broker').version(VERSION, '-v, --version');

program
  .command('start')
  .description('start the broker (built-in local-only defaults without --config)')
  .option('-c, --config <file>', 'configuration file (YAML or JSON)')
  .action(async (opts: { config?: string }) => {
    process.exitCode = await startCommand(opts.config);
  });

await program.parseAsync(process.argv);
