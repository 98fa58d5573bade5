/**
 * `portcullis passwd add|remove|list|verify FILE USER`: maintains a password file of argon2id
 * hashes. The password is read from a hidden prompt on a terminal, or from the first line of
 * stdin; never from the command line, where it would land in shell history and `ps`.
 */
import fs from 'node:fs';
import type { Command } from 'commander';
import { ARGON2_FLOOR, type Argon2Params } from '../config/auth-schema.ts';
import { PasswordFileError, phcParams, readPasswordFile, writePasswordFile, type PasswordEntry } from '../auth/password/file.ts';
import { hashPassword, verifyPassword } from '../auth/password/hash.ts';

async function readPassword(prompt: string, confirm: boolean): Promise<string> {
  const stdin = process.stdin;
  if (!stdin.isTTY) {
    const chunks: Buffer[] = [];
    for await (const c of stdin) chunks.push(c as Buffer);
    const first = Buffer.concat(chunks).toString('utf8').split(/\r?\n/)[0] ?? '';
    return first;
  }
  const ask = (text: string) =>
    new Promise<string>((resolve) => {
      process.stderr.write(text);
      stdin.setRawMode(true);
      stdin.resume();
      let value = '';
      const onData = (d: Buffer) => {
        for (const ch of d.toString('utf8')) {
          if (ch === '\r' || ch === '\n') {
            stdin.setRawMode(false);
            stdin.pause();
            stdin.off('data', onData);
            process.stderr.write('\n');
            return resolve(value);
          }
          if (ch === '\u0003') process.exit(130);
          if (ch === '\u007f') value = value.slice(0, -1);
          else value += ch;
        }
      };
      stdin.on('data', onData);
    });
  const first = await ask(prompt);
  if (confirm && (await ask('Repeat password: ')) !== first) throw new Error('the passwords do not match');
  return first;
}

function load(file: string, mustExist: boolean): Map<string, PasswordEntry> {
  if (!mustExist && !fs.existsSync(file)) return new Map();
  // Hashes below the floor are still listed and verifiable here; the broker refuses them.
  return readPasswordFile(file, { memoryKiB: 1, timeCost: 1, parallelism: 1 });
}

function fail(err: unknown): number {
  process.stderr.write(`portcullis passwd: ${(err as Error).message}\n`);
  return err instanceof PasswordFileError ? 2 : 1;
}

const int = (v: string) => Number.parseInt(v, 10);

export function registerPasswdCommand(program: Command): void {
  const passwd = program.command('passwd').description('maintain a password file (argon2id); the password is read from a prompt or stdin, never argv');
  passwd
    .command('add <file> <user>')
    .description('add a user or change their password (creates the file, mode 0600)')
    .option('--roles <roles>', 'comma-separated roles')
    .option('--memory <KiB>', `argon2 memory in KiB (floor ${ARGON2_FLOOR.memoryKiB})`, int, ARGON2_FLOOR.memoryKiB)
    .option('--time <n>', `argon2 passes (floor ${ARGON2_FLOOR.timeCost})`, int, ARGON2_FLOOR.timeCost)
    .option('--parallelism <n>', `argon2 lanes (floor ${ARGON2_FLOOR.parallelism})`, int, ARGON2_FLOOR.parallelism)
    .action(async (file: string, user: string, opts: { roles?: string; memory: number; time: number; parallelism: number }) => {
      process.exitCode = await (async () => {
        try {
          const params: Argon2Params = { memoryKiB: opts.memory, timeCost: opts.time, parallelism: opts.parallelism };
          if (!(params.memoryKiB >= ARGON2_FLOOR.memoryKiB && params.timeCost >= ARGON2_FLOOR.timeCost && params.parallelism >= ARGON2_FLOOR.parallelism)) {
            throw new Error(`argon2 parameters below the OWASP floor (memory ${ARGON2_FLOOR.memoryKiB} KiB, time ${ARGON2_FLOOR.timeCost}, parallelism ${ARGON2_FLOOR.parallelism})`);
          }
          const users = load(file, false);
          // Checked by the file parser too; here so a bad name never reaches the file.
          if (!/^[^\s:#+\u0000-\u001f\u007f]+$/.test(user)) throw new Error('the user name must not contain white space, control characters, : + or #');
          const roles = opts.roles === undefined ? (users.get(user)?.roles ?? []) : opts.roles.split(',').filter((r) => r !== '');
          const password = await readPassword(`Password for ${user}: `, true);
          if (password.length === 0) throw new Error('empty password refused');
          users.set(user, { username: user, hash: await hashPassword(password, params), roles });
          writePasswordFile(file, users.values());
          process.stderr.write(`${user} saved in ${file}\n`);
          return 0;
        } catch (err) {
          return fail(err);
        }
      })();
    });
  passwd
    .command('remove <file> <user>')
    .description('remove a user')
    .action((file: string, user: string) => {
      try {
        const users = load(file, true);
        if (!users.delete(user)) throw new Error(`no user '${user}' in ${file}`);
        writePasswordFile(file, users.values());
        process.stderr.write(`${user} removed from ${file}\n`);
        process.exitCode = 0;
      } catch (err) {
        process.exitCode = fail(err);
      }
    });
  passwd
    .command('list <file>')
    .description('list users, roles and hash parameters (never the hashes)')
    .action((file: string) => {
      try {
        for (const u of load(file, true).values()) {
          const p = phcParams(u.hash);
          process.stdout.write(`${u.username}\troles=${u.roles.join(',')}\targon2id m=${p?.memoryKiB},t=${p?.timeCost},p=${p?.parallelism}\n`);
        }
        process.exitCode = 0;
      } catch (err) {
        process.exitCode = fail(err);
      }
    });
  passwd
    .command('verify <file> <user>')
    .description('check a password; exit 0 when it matches, 1 when not')
    .action(async (file: string, user: string) => {
      try {
        const entry = load(file, true).get(user);
        const password = await readPassword(`Password for ${user}: `, false);
        const ok = entry !== undefined && password.length > 0 && (await verifyPassword(entry.hash, password));
        process.stderr.write(ok ? 'password matches\n' : 'no match\n');
        process.exitCode = ok ? 0 : 1;
      } catch (err) {
        process.exitCode = fail(err);
      }
    });
}
