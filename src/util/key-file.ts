/**
 * Secret key files, as the store's encryption and the cluster's bus signing read them: one key per
 * line, `<key id> <base64 key>`; `#` starts a comment; the first key is the one in use, every key
 * listed is accepted (rotation). The file must be readable by its owner only. Each caller turns a
 * refusal into its own error (the message names the file and line), so its error code is kept.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';

export interface FileKey {
  id: string;
  key: Buffer;
}

const KEY_ID = /^[A-Za-z0-9._-]{1,64}$/;
const BAD_ID = 'a key id is 1 to 64 of A-Z a-z 0-9 . _ -';

export interface KeyFileRules {
  /** "store", "cluster": named in messages ("the store key file ..."). */
  what: string;
  /** Exactly 32 bytes (an AES-256 key), or 32 or more (an HMAC key). */
  exact32: boolean;
  fail: (message: string, cause?: unknown) => Error;
}

/** Reads and checks a key file; throws `rules.fail(...)` naming the file and line. */
export function readKeyFile(file: string, rules: KeyFileRules): FileKey[] {
  const { what, fail } = rules;
  let stat: fs.Stats;
  let text: string;
  try {
    stat = fs.statSync(file);
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw fail(`cannot read the ${what} key file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, err);
  }
  // Like ssh with a private key: a key others can read is no longer a secret.
  if (process.platform !== 'win32' && (stat.mode & 0o077) !== 0) {
    throw fail(`the ${what} key file ${file} can be read or written by other users (mode ${(stat.mode & 0o777).toString(8)}); chmod 600 it`);
  }
  const keys: FileKey[] = [];
  const seen = new Set<string>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.replace(/#.*/, '').trim();
    if (line === '') return;
    const where = `${file}:${i + 1}`;
    const parts = line.split(/\s+/);
    if (parts.length !== 2) throw fail(`${where}: expected '<key id> <base64 key>'`);
    const [id, b64] = parts as [string, string];
    if (!KEY_ID.test(id)) throw fail(`${where}: ${BAD_ID}`);
    if (seen.has(id)) throw fail(`${where}: key id '${id}' appears twice`);
    const key = Buffer.from(b64, 'base64');
    const size = rules.exact32 ? key.length === 32 : key.length >= 32;
    if (!size || key.toString('base64').replace(/=+$/, '') !== b64.replace(/=+$/, '')) {
      throw fail(`${where}: the key must be ${rules.exact32 ? '' : 'at least '}32 random bytes in base64 (openssl rand -base64 32)`);
    }
    seen.add(id);
    keys.push({ id, key });
  });
  if (keys.length === 0) throw fail(`the ${what} key file ${file} holds no key`);
  return keys;
}

/** A new line for a key file: `<id> <base64 of 32 random bytes>`. */
export function newKeyFileLine(id: string, fail: (message: string) => Error): string {
  if (!KEY_ID.test(id)) throw fail(BAD_ID);
  return `${id} ${randomBytes(32).toString('base64')}`;
}
