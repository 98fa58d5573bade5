/**
 * The password file: one user per line, `user:$argon2id$v=19$m=...,t=...,p=...$salt$hash[:role,role]`.
 * Comment lines start with `#`. The parser is strict: a blank line is skipped and is never a
 * user, and a line without a well-formed argon2id hash is an error naming the line
 * (CVE-2018-12551 class: an empty hash must never mean an empty password).
 */
import fs from 'node:fs';
import { writeAtomic } from '../../util/fs.ts';
import type { Argon2Params } from '../../config/auth-schema.ts';

export interface PasswordEntry {
  username: string;
  hash: string;
  roles: string[];
}

/** A password file that cannot be used; `line` is 1-based when one line is at fault. */
export class PasswordFileError extends Error {
  readonly code = 'ERR_PORTCULLIS_PASSWORD_FILE';
  constructor(
    readonly file: string,
    readonly line: number | undefined,
    message: string,
  ) {
    super(`${file}${line !== undefined ? `:${line}` : ''}: ${message}`);
  }
}

const PHC = /^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$([A-Za-z0-9+/]{11,})\$([A-Za-z0-9+/]{16,})$/;
const USERNAME = /^[^\s:#+\u0000-\u001f\u007f][^\s:\u0000-\u001f\u007f]*$/;
const ROLE = /^[A-Za-z0-9_.\-]+$/;

/** The argon2 parameters of a PHC string, or undefined when it is not an argon2id v19 hash. */
export function phcParams(hash: string): Argon2Params | undefined {
  const m = PHC.exec(hash);
  if (m === null) return undefined;
  return { memoryKiB: Number(m[1]), timeCost: Number(m[2]), parallelism: Number(m[3]) };
}

/** Parses the file's text. Throws {@link PasswordFileError} naming the first bad line. */
export function parsePasswordText(text: string, file: string, floor: Argon2Params): Map<string, PasswordEntry> {
  const users = new Map<string, PasswordEntry>();
  const lines = text.split('\n');
  lines.forEach((raw, i) => {
    const n = i + 1;
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line.trim() === '' || line.startsWith('#')) return;
    const parts = line.split(':');
    const [username, hash, roles, ...extra] = parts;
    if (username === undefined || username === '') throw new PasswordFileError(file, n, 'a line must start with a user name');
    if (!USERNAME.test(username) || username.includes('#') || Buffer.byteLength(username) > 65535) {
      throw new PasswordFileError(file, n, 'the user name has a character that is not allowed (white space, control, : + #)');
    }
    if (hash === undefined || hash === '') throw new PasswordFileError(file, n, `user '${username}' has no password hash`);
    if (extra.length > 0) throw new PasswordFileError(file, n, 'too many fields: expected user:hash[:roles]');
    const params = phcParams(hash);
    if (params === undefined) throw new PasswordFileError(file, n, `user '${username}': the hash is not an argon2id (v=19) PHC string`);
    if (params.memoryKiB < floor.memoryKiB || params.timeCost < floor.timeCost || params.parallelism < floor.parallelism) {
      throw new PasswordFileError(
        file,
        n,
        `user '${username}': hash parameters m=${params.memoryKiB},t=${params.timeCost},p=${params.parallelism} are below the floor m=${floor.memoryKiB},t=${floor.timeCost},p=${floor.parallelism}`,
      );
    }
    const roleList = roles === undefined || roles === '' ? [] : roles.split(',');
    const badRole = roleList.find((r) => !ROLE.test(r));
    if (badRole !== undefined) throw new PasswordFileError(file, n, `user '${username}': bad role name '${badRole}'`);
    if (users.has(username)) throw new PasswordFileError(file, n, `user '${username}' appears twice`);
    users.set(username, { username, hash, roles: roleList });
  });
  return users;
}

/** Reads and parses a password file. A missing or unreadable file is an error too. */
export function readPasswordFile(file: string, floor: Argon2Params): Map<string, PasswordEntry> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new PasswordFileError(file, undefined, `cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  return parsePasswordText(text, file, floor);
}

/** Writes entries atomically (temporary file, then rename), readable by the owner only. */
export function writePasswordFile(file: string, users: Iterable<PasswordEntry>, header = '# Portcullis password file: user:argon2id-hash[:roles]. Maintain with `portcullis passwd`.\n'): void {
  let text = header;
  for (const u of users) text += `${u.username}:${u.hash}${u.roles.length > 0 ? `:${u.roles.join(',')}` : ''}\n`;
  writeAtomic(file, text, 0o600);
}
