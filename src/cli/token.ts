/**
 * `portcullis token add|list|remove`: maintains the admin API token file (http.auth.tokens).
 * `add` makes a random token, prints it once on stdout and keeps only its argon2id hash; the
 * running broker picks the change up on its next request. Roles name subjects of the admin
 * policy (policies/admin/policy.csv: `admin` may change state, `read-only` may only read).
 */
import type { Command } from 'commander';
import { hashPassword } from '../auth/password/hash.ts';
import { ARGON2_FLOOR } from '../config/auth-schema.ts';
import { newToken, readTokenFile, ROLE_NAME, TOKEN_NAME, TokenFileError, writeTokenFile, type TokenEntry } from '../http/token-file.ts';
import { parseDuration } from './ban.ts';

export const DEFAULT_TOKEN_FILE = 'data/admin-tokens.jsonl';

class UsageError extends Error {}

function fail(err: unknown): number {
  process.stderr.write(`portcullis token: ${(err as Error).message}\n`);
  return err instanceof UsageError || err instanceof TokenFileError ? 2 : 1;
}

export interface TokenAddOptions {
  roles: string;
  file: string;
  expires?: string;
  replace?: boolean;
}

/** Adds a token for `name`; returns the token (shown once) and its entry. */
export async function addToken(name: string, opts: TokenAddOptions, now = Date.now()): Promise<{ token: string; entry: TokenEntry }> {
  if (!TOKEN_NAME.test(name)) throw new UsageError('the name must be 1-128 characters: letters, digits, _ . @ - (not first)');
  const roles = opts.roles.split(',').map((r) => r.trim()).filter((r) => r !== '');
  if (roles.length === 0) throw new UsageError('give at least one role with --roles (admin or read-only in the shipped admin policy)');
  const bad = roles.find((r) => !ROLE_NAME.test(r));
  if (bad !== undefined) throw new UsageError(`bad role name '${bad}': letters, digits, _ . -`);
  const entries = readTokenFile(opts.file, true);
  const existing = entries.findIndex((e) => e.name === name);
  if (existing >= 0 && opts.replace !== true) throw new UsageError(`'${name}' already has a token in ${opts.file}: give --replace to make a new one (the old one stops working)`);
  const { id, token } = newToken();
  const entry: TokenEntry = { id, name, roles, hash: await hashPassword(token, ARGON2_FLOOR), created: now, line: 0 };
  if (opts.expires !== undefined) {
    try {
      entry.expires = now + parseDuration(opts.expires);
    } catch (err) {
      throw new UsageError((err as Error).message.replace('--for', '--expires'));
    }
  }
  if (existing >= 0) entries.splice(existing, 1, entry);
  else entries.push(entry);
  writeTokenFile(opts.file, entries);
  return { token, entry };
}

export function registerTokenCommand(program: Command): void {
  const token = program.command('token').description('maintain the admin API tokens (argon2id-hashed in http.auth.tokens); a running broker picks changes up');
  token
    .command('add <name>')
    .description('make a token for NAME with roles; prints it once (only its hash is kept)')
    .requiredOption('--roles <roles>', 'comma-separated roles, e.g. admin or read-only')
    .option('--expires <duration>', 'how long it is valid, e.g. 12h, 30d (default: no expiry)')
    .option('--replace', 'replace the token NAME already has')
    .option('--file <file>', 'the token file', DEFAULT_TOKEN_FILE)
    .action(async (name: string, opts: TokenAddOptions) => {
      try {
        const { token: value, entry } = await addToken(name, opts);
        process.stdout.write(`${value}\n`);
        const until = entry.expires === undefined ? 'with no expiry' : `until ${new Date(entry.expires).toISOString()}`;
        process.stderr.write(`token for '${name}' (roles ${entry.roles.join(',')}) ${until} written to ${opts.file}; it is shown only now: store it in a secret manager\n`);
        process.exitCode = 0;
      } catch (err) {
        process.exitCode = fail(err);
      }
    });
  token
    .command('list')
    .description('list the tokens: id, name, roles, created, expiry, state (never a hash)')
    .option('--file <file>', 'the token file', DEFAULT_TOKEN_FILE)
    .option('--json', 'one JSON object per line')
    .action((opts: { file: string; json?: boolean }) => {
      try {
        const now = Date.now();
        for (const e of readTokenFile(opts.file)) {
          const expires = e.expires === undefined ? null : new Date(e.expires).toISOString();
          const state = e.expires !== undefined && e.expires <= now ? 'expired' : 'active';
          if (opts.json === true) process.stdout.write(`${JSON.stringify({ id: e.id, name: e.name, roles: e.roles, created: new Date(e.created).toISOString(), expires, state })}\n`);
          else process.stdout.write(`${e.id}\t${e.name}\troles=${e.roles.join(',')}\tcreated=${new Date(e.created).toISOString()}\texpires=${expires ?? 'never'}\t${state}\n`);
        }
        process.exitCode = 0;
      } catch (err) {
        process.exitCode = fail(err);
      }
    });
  token
    .command('remove <name>')
    .description("remove NAME's token (it stops working on the broker's next request)")
    .option('--file <file>', 'the token file', DEFAULT_TOKEN_FILE)
    .action((name: string, opts: { file: string }) => {
      try {
        const entries = readTokenFile(opts.file);
        const kept = entries.filter((e) => e.name !== name);
        if (kept.length === entries.length) {
          process.stderr.write(`portcullis token: no token named '${name}' in ${opts.file}\n`);
          process.exitCode = 1;
          return;
        }
        writeTokenFile(opts.file, kept);
        process.stderr.write(`removed the token of '${name}' from ${opts.file}\n`);
        process.exitCode = 0;
      } catch (err) {
        process.exitCode = fail(err);
      }
    });
}
