/**
 * The ban file that ops maintain (by hand or with `portcullis ban`): one JSON object per line,
 * blank lines and `#` comments allowed.
 *
 *   {"kind":"ip","value":"203.0.113.7","until":"2026-12-01T00:00:00.000Z","reason":"scanner"}
 *   {"kind":"cidr","value":"2001:db8:bad::/48"}
 *   {"kind":"client-id","value":"sensor-17","reason":"firmware loop"}
 *   {"kind":"username","value":"mallory"}
 *
 * Parsing is strict: an unknown key or kind, a bad address, a CIDR with host bits set, a bad
 * date or a duplicate fails the whole file with an error naming the file and line.
 */
import fs from 'node:fs';
import { formatAddress, formatCidr, parseAddress, parseCidr } from '../util/address.ts';
import { writeAtomic } from '../util/fs.ts';

export const BAN_KINDS = ['client-id', 'username', 'ip', 'cidr'] as const;
export type BanKind = (typeof BAN_KINDS)[number];

export interface BanEntry {
  kind: BanKind;
  /** Normalized: canonical address text for ip and cidr. */
  value: string;
  /** Epoch milliseconds; undefined means the ban never expires. */
  until?: number;
  reason?: string;
  /** When it was added (epoch ms), informational. */
  added?: number;
  /** The line it came from (1-based). */
  line: number;
}

/** A ban file that cannot be used, naming the file and line. */
export class BanFileError extends Error {
  readonly code = 'ERR_PORTCULLIS_BAN_FILE';
  constructor(
    readonly file: string,
    readonly line: number | undefined,
    message: string,
  ) {
    super(line === undefined ? `${file}: ${message}` : `${file}:${line}: ${message}`);
  }
}

const KEYS = new Set(['kind', 'value', 'until', 'reason', 'added']);
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})$/;
const MAX_VALUE_BYTES = 65535;
const MAX_REASON = 1000;

export const BAN_FILE_HEADER = '# Portcullis ban list: one JSON object per line (kind: client-id | username | ip | cidr). Maintain with `portcullis ban`.\n';

/** The identity of a ban: one entry per kind and normalized value. */
export function banKey(kind: BanKind, value: string): string {
  return `${kind}\u0000${value}`;
}

/** Checks a kind and value, returning the normalized value or an error text. */
export function normalizeBanValue(kind: string, value: string): { ok: true; value: string; kind: BanKind } | { ok: false; error: string } {
  if (!(BAN_KINDS as readonly string[]).includes(kind)) return { ok: false, error: `unknown kind '${kind}': expected ${BAN_KINDS.join(', ')}` };
  const k = kind as BanKind;
  if (value === '') return { ok: false, error: 'the value must not be empty' };
  if (Buffer.byteLength(value) > MAX_VALUE_BYTES) return { ok: false, error: `the value is longer than ${MAX_VALUE_BYTES} bytes` };
  if (k === 'ip') {
    const a = value.includes('/') ? undefined : parseAddress(value);
    if (a === undefined || value.includes('%')) return { ok: false, error: `'${value}' is not an IPv4 or IPv6 address${value.includes('/') ? ' (use kind cidr for a range)' : ''}` };
    return { ok: true, kind: k, value: formatAddress(a) };
  }
  if (k === 'cidr') {
    if (!value.includes('/')) return { ok: false, error: `'${value}' is not a CIDR range (address/prefix); use kind ip for one address` };
    const r = parseCidr(value);
    if (!r.ok) return { ok: false, error: r.error };
    return { ok: true, kind: k, value: formatCidr(r.value) };
  }
  if (value.includes('\u0000')) return { ok: false, error: 'the value must not contain U+0000' };
  return { ok: true, kind: k, value };
}

/** Parses an ISO 8601 date-time with a zone (`2026-12-01T00:00:00Z`); undefined when it is not one. */
export function parseIsoDate(text: string): number | undefined {
  if (!ISO.test(text)) return undefined;
  const ms = Date.parse(text);
  if (Number.isNaN(ms)) return undefined;
  // Date.parse rolls 2026-02-31 over to March: refuse a day that does not exist.
  const [y, m, d] = text.slice(0, 10).split('-').map(Number) as [number, number, number];
  const check = new Date(Date.UTC(y, m - 1, d));
  return check.getUTCFullYear() === y && check.getUTCMonth() === m - 1 && check.getUTCDate() === d ? ms : undefined;
}

/** Parses the text of a ban file. Throws BanFileError naming the first bad line. */
export function parseBanText(text: string, file: string): BanEntry[] {
  const entries: BanEntry[] = [];
  const seen = new Map<string, number>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = i + 1;
    const s = raw.trim();
    if (s === '' || s.startsWith('#')) return;
    const fail = (message: string): never => {
      throw new BanFileError(file, line, message);
    };
    let obj: unknown;
    try {
      obj = JSON.parse(s);
    } catch (err) {
      fail(`not valid JSON: ${(err as Error).message}`);
    }
    if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) fail('expected a JSON object such as {"kind":"ip","value":"192.0.2.1"}');
    const o = obj as Record<string, unknown>;
    for (const key of Object.keys(o)) if (!KEYS.has(key)) fail(`unknown key '${key}' (allowed: ${[...KEYS].join(', ')})`);
    if (typeof o.kind !== 'string') fail(`"kind" is missing: expected ${BAN_KINDS.join(', ')}`);
    if (typeof o.value !== 'string') fail('"value" is missing or not a string');
    const checked = normalizeBanValue(o.kind as string, o.value as string);
    if (!checked.ok) return fail(checked.error);
    const entry: BanEntry = { kind: checked.kind, value: checked.value, line };
    if (o.until !== undefined) {
      const until = typeof o.until === 'string' ? parseIsoDate(o.until) : undefined;
      if (until === undefined) fail('"until" must be an ISO 8601 date-time with a time zone, such as 2026-12-01T00:00:00Z');
      entry.until = until;
    }
    if (o.added !== undefined) {
      const added = typeof o.added === 'string' ? parseIsoDate(o.added) : undefined;
      if (added === undefined) fail('"added" must be an ISO 8601 date-time with a time zone');
      entry.added = added;
    }
    if (o.reason !== undefined) {
      if (typeof o.reason !== 'string' || o.reason.length > MAX_REASON) fail(`"reason" must be a string of at most ${MAX_REASON} characters`);
      entry.reason = o.reason as string;
    }
    const key = banKey(entry.kind, entry.value);
    const first = seen.get(key);
    if (first !== undefined) fail(`${entry.kind} ${entry.value} is already banned on line ${first}`);
    seen.set(key, line);
    entries.push(entry);
  });
  return entries;
}

/** Reads a ban file. A missing file is an empty list when `missingOk`; anything else unreadable throws. */
export function readBanFile(file: string, missingOk = true): BanEntry[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && missingOk) return [];
    throw new BanFileError(file, undefined, `cannot read: ${code ?? (err as Error).message}`);
  }
  return parseBanText(text, file);
}

/** One line of the file for an entry. */
export function formatBanLine(e: Omit<BanEntry, 'line'>): string {
  return JSON.stringify({
    kind: e.kind,
    value: e.value,
    ...(e.until !== undefined ? { until: new Date(e.until).toISOString() } : {}),
    ...(e.reason !== undefined ? { reason: e.reason } : {}),
    ...(e.added !== undefined ? { added: new Date(e.added).toISOString() } : {}),
  });
}

/**
 * Adds or replaces (same kind and value) a ban, keeping every other line and comment as it was.
 * The file is written to a temporary file beside it and renamed over it, so a broker that is
 * watching never reads half a file. Returns true when an existing ban was replaced.
 */
export function upsertBan(file: string, entry: Omit<BanEntry, 'line'>): boolean {
  const { lines, entries } = load(file);
  const existing = entries.find((e) => e.kind === entry.kind && e.value === entry.value);
  const text = formatBanLine(entry);
  if (existing !== undefined) lines[existing.line - 1] = text;
  else {
    while (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
    lines.push(text);
  }
  writeAtomically(file, lines);
  return existing !== undefined;
}

/** Removes a ban; returns false (and leaves the file alone) when there was none. */
export function removeBan(file: string, kind: BanKind, value: string): boolean {
  const { lines, entries } = load(file);
  const existing = entries.find((e) => e.kind === kind && e.value === value);
  if (existing === undefined) return false;
  lines.splice(existing.line - 1, 1);
  writeAtomically(file, lines);
  return true;
}

function load(file: string): { lines: string[]; entries: BanEntry[] } {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new BanFileError(file, undefined, `cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    text = BAN_FILE_HEADER;
  }
  const entries = parseBanText(text, file); // a malformed file is never edited
  return { lines: text.replace(/\r?\n$/, '').split(/\r?\n/), entries };
}

function writeAtomically(file: string, lines: string[]): void {
  let mode = 0o644;
  try {
    mode = fs.statSync(file).mode & 0o777;
  } catch {
    // a new file
  }
  writeAtomic(file, `${lines.join('\n')}\n`, mode);
}
