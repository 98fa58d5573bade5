/**
 * `portcullis ban add|remove|list`: maintains the ban file. Each change is written to a
 * temporary file and renamed over the ban file, so a running broker that watches it (or gets
 * SIGHUP) reads either the old or the new list, never half of one; it audits each ban added
 * or removed when it picks the change up.
 */
import type { Command } from 'commander';
import { type BanKind, BanFileError, normalizeBanValue, parseIsoDate, readBanFile, removeBan, upsertBan } from '../admission/ban-file.ts';
import { isActive } from '../admission/bans.ts';

export const DEFAULT_BAN_FILE = 'data/bans.jsonl';

class UsageError extends Error {}

const UNITS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };
const MAX_DURATION_MS = 100 * 365 * 86_400_000;

/** Parses `90s`, `15m`, `1h30m`, `7d`, `2w` into milliseconds. */
export function parseDuration(text: string): number {
  if (!/^(\d+[smhdw])+$/.test(text)) throw new UsageError(`--for '${text}': expected a duration such as 30s, 15m, 1h, 1h30m, 7d or 2w`);
  let ms = 0;
  for (const m of text.matchAll(/(\d+)([smhdw])/g)) ms += Number(m[1]) * (UNITS[m[2] as string] as number);
  if (ms <= 0) throw new UsageError(`--for '${text}': the duration must be longer than zero`);
  if (ms > MAX_DURATION_MS) throw new UsageError(`--for '${text}': longer than 100 years; leave out --for and --until for a ban that never expires`);
  return ms;
}

function checked(kind: string, value: string): { kind: BanKind; value: string } {
  const r = normalizeBanValue(kind, value);
  if (!r.ok) throw new UsageError(r.error);
  return r;
}

/** Control characters from a hand-edited file must not reach the terminal. */
function printable(s: string): string {
  return s.replace(/[\u0000-\u001f\u007f]/g, '?');
}

function fail(err: unknown): number {
  process.stderr.write(`portcullis ban: ${(err as Error).message}\n`);
  return err instanceof UsageError || err instanceof BanFileError ? 2 : 1;
}

export function registerBanCommand(program: Command): void {
  const ban = program.command('ban').description('maintain the ban file (client ids, user names, IP addresses, CIDR ranges); a running broker picks changes up');
  ban
    .command('add <kind> <value>')
    .description('ban a client-id, username, ip or cidr (replaces an existing ban of the same value)')
    .option('--for <duration>', 'how long, e.g. 30m, 1h, 7d (default: no expiry)')
    .option('--until <iso>', 'until an ISO 8601 date-time with a time zone, e.g. 2026-12-01T00:00:00Z')
    .option('--reason <text>', 'why (kept in the file and the audit record)')
    .option('--file <file>', 'the ban file', DEFAULT_BAN_FILE)
    .action((kind: string, value: string, opts: { for?: string; until?: string; reason?: string; file: string }) => {
      try {
        const v = checked(kind, value);
        if (opts.for !== undefined && opts.until !== undefined) throw new UsageError('give --for or --until, not both');
        const now = Date.now();
        let until: number | undefined;
        if (opts.for !== undefined) until = now + parseDuration(opts.for);
        if (opts.until !== undefined) {
          until = parseIsoDate(opts.until);
          if (until === undefined) throw new UsageError(`--until '${opts.until}': expected an ISO 8601 date-time with a time zone, e.g. 2026-12-01T00:00:00Z`);
          if (until <= now) throw new UsageError(`--until '${opts.until}' is in the past`);
        }
        if (opts.reason !== undefined && (opts.reason.length > 1000 || /[\u0000-\u001f]/.test(opts.reason))) {
          throw new UsageError('--reason must be at most 1000 characters without control characters');
        }
        const replaced = upsertBan(opts.file, {
          kind: v.kind,
          value: v.value,
          ...(until !== undefined ? { until } : {}),
          ...(opts.reason !== undefined ? { reason: opts.reason } : {}),
          added: now,
        });
        const when = until === undefined ? 'with no expiry' : `until ${new Date(until).toISOString()}`;
        process.stderr.write(`${replaced ? 'updated' : 'added'}: ${v.kind} ${v.value} banned ${when} in ${opts.file}\n`);
        process.exitCode = 0;
      } catch (err) {
        process.exitCode = fail(err);
      }
    });
  ban
    .command('remove <kind> <value>')
    .description('lift a ban')
    .option('--file <file>', 'the ban file', DEFAULT_BAN_FILE)
    .action((kind: string, value: string, opts: { file: string }) => {
      try {
        const v = checked(kind, value);
        if (!removeBan(opts.file, v.kind, v.value)) {
          process.stderr.write(`portcullis ban: no ban on ${v.kind} ${v.value} in ${opts.file}\n`);
          process.exitCode = 1;
          return;
        }
        process.stderr.write(`removed: ${v.kind} ${v.value} from ${opts.file}\n`);
        process.exitCode = 0;
      } catch (err) {
        process.exitCode = fail(err);
      }
    });
  ban
    .command('list')
    .description('list the bans in the file: kind, value, expiry, state (active or expired), reason')
    .option('--file <file>', 'the ban file', DEFAULT_BAN_FILE)
    .option('--json', 'one JSON object per line')
    .action((opts: { file: string; json?: boolean }) => {
      try {
        const now = Date.now();
        for (const b of readBanFile(opts.file, true)) {
          const state = isActive(b, now) ? 'active' : 'expired';
          const until = b.until === undefined ? 'never' : new Date(b.until).toISOString();
          if (opts.json === true) {
            process.stdout.write(`${JSON.stringify({ kind: b.kind, value: b.value, until: b.until === undefined ? null : until, state, reason: b.reason ?? null })}\n`);
          } else {
            process.stdout.write(`${b.kind}\t${printable(b.value)}\t${until}\t${state}${b.reason !== undefined ? `\t${printable(b.reason)}` : ''}\n`);
          }
        }
        process.exitCode = 0;
      } catch (err) {
        process.exitCode = fail(err);
      }
    });
}
