/**
 * The admin token file that `portcullis token add` maintains: one JSON object per line, blank
 * lines and `#` comments allowed, mode 0600.
 *
 *   {"id":"3f9c0a1b2c3d4e5f","name":"alice","roles":["admin"],"hash":"$argon2id$v=19$m=19456,t=2,p=1$...","created":"2026-01-01T00:00:00.000Z"}
 *
 * A token is `pct_<id>_<secret>`: the id (16 hex digits) names its line, the secret is 32 random
 * bytes (base64url). Only an argon2id hash of the whole token is kept; the token itself is shown
 * once, when it is made. Parsing is strict: an unknown key, a bad id, name, role, hash or date, or
 * a duplicate fails the whole file with an error naming the file and line.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { phcParams } from '../auth/password/file.ts';
import { writeAtomic } from '../util/fs.ts';

export interface TokenEntry {
  id: string;
  name: string;
  roles: string[];
  hash: string;
  /** Epoch ms. */
  created: number;
  /** Epoch ms; undefined: never expires. */
  expires?: number;
  line: number;
}

export class TokenFileError extends Error {
  readonly code = 'ERR_PORTCULLIS_TOKEN_FILE';
  constructor(
    readonly file: string,
    readonly line: number | undefined,
    message: string,
  ) {
    super(line === undefined ? `${file}: ${message}` : `${file}:${line}: ${message}`);
  }
}

export const TOKEN_PATTERN = /^pct_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/;
/** Names and roles: what a Casbin subject (`user:NAME`, `role:NAME`) can hold without quoting or placeholders. */
export const TOKEN_NAME = /^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$/;
export const ROLE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const KEYS = new Set(['id', 'name', 'roles', 'hash', 'created', 'expires']);

export const TOKEN_FILE_HEADER = '# Portcullis admin API tokens: argon2id hashes, one JSON object per line. Maintain with `portcullis token`.\n';

/** A fresh token and its id. */
export function newToken(): { id: string; token: string } {
  const id = randomBytes(8).toString('hex');
  return { id, token: `pct_${id}_${randomBytes(32).toString('base64url')}` };
}

function date(value: unknown, fail: (m: string) => never, key: string): number {
  const ms = typeof value === 'string' ? Date.parse(value) : Number.NaN;
  if (Number.isNaN(ms)) fail(`"${key}" must be an ISO 8601 date-time`);
  return ms;
}

export function parseTokenText(text: string, file: string): TokenEntry[] {
  const entries: TokenEntry[] = [];
  const ids = new Set<string>();
  const names = new Set<string>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = i + 1;
    const s = raw.trim();
    if (s === '' || s.startsWith('#')) return;
    const fail = (message: string): never => {
      throw new TokenFileError(file, line, message);
    };
    let o: Record<string, unknown> = {};
    try {
      const v: unknown = JSON.parse(s);
      if (v === null || typeof v !== 'object' || Array.isArray(v)) fail('expected a JSON object');
      o = v as Record<string, unknown>;
    } catch (err) {
      if (err instanceof TokenFileError) throw err;
      fail(`not valid JSON: ${(err as Error).message}`);
    }
    for (const key of Object.keys(o)) if (!KEYS.has(key)) fail(`unknown key '${key}'`);
    if (typeof o.id !== 'string' || !/^[0-9a-f]{16}$/.test(o.id)) fail('"id" must be 16 lower-case hex digits');
    if (typeof o.name !== 'string' || !TOKEN_NAME.test(o.name)) fail('"name" must be 1-128 characters: letters, digits, _ . @ - (not first)');
    if (!Array.isArray(o.roles) || !o.roles.every((r) => typeof r === 'string' && ROLE_NAME.test(r))) fail('"roles" must be a list of role names (letters, digits, _ . -)');
    if (typeof o.hash !== 'string' || phcParams(o.hash) === undefined) fail('"hash" must be an argon2id (v=19) PHC string');
    const entry: TokenEntry = { id: o.id as string, name: o.name as string, roles: o.roles as string[], hash: o.hash as string, created: date(o.created, fail, 'created'), line };
    if (o.expires !== undefined) entry.expires = date(o.expires, fail, 'expires');
    if (ids.has(entry.id)) fail(`token id ${entry.id} appears twice`);
    if (names.has(entry.name)) fail(`the name '${entry.name}' appears twice`);
    ids.add(entry.id);
    names.add(entry.name);
    entries.push(entry);
  });
  return entries;
}

/** Reads the token file; a missing file holds no tokens when `missingOk`. */
export function readTokenFile(file: string, missingOk = false): TokenEntry[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if (missingOk && (err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new TokenFileError(file, undefined, `cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  return parseTokenText(text, file);
}

function line(e: TokenEntry): string {
  return JSON.stringify({ id: e.id, name: e.name, roles: e.roles, hash: e.hash, created: new Date(e.created).toISOString(), ...(e.expires !== undefined ? { expires: new Date(e.expires).toISOString() } : {}) });
}

/** Writes the entries (temporary file and rename, mode 0600): a running broker sees the old file or the new one. */
export function writeTokenFile(file: string, entries: readonly TokenEntry[]): void {
  writeAtomic(file, TOKEN_FILE_HEADER + entries.map((e) => `${line(e)}\n`).join(''), 0o600);
}
