import { pino } from 'pino';

export type Logger = pino.Logger;

/** `json`: one JSON object per line (for log shippers); `pretty`: one readable line per record (for a person). */
export type LogFormat = 'pretty' | 'json';

/** The format to use: the one chosen, else `pretty` when the stream is a terminal and `json` when it is not. */
export function chooseLogFormat(chosen: LogFormat | undefined, stream: { isTTY?: boolean } = process.stderr): LogFormat {
  return chosen ?? (stream.isTTY === true ? 'pretty' : 'json');
}

/**
 * The operational log: pino records, as JSON lines or, for a terminal, as readable lines (see
 * {@link prettyStream}). Secrets are redacted by path as a second line of defence, in both.
 */
export function createLogger(level: string, destination?: NodeJS.WritableStream, format?: LogFormat): Logger {
  const out: Sink = destination ?? pino.destination({ fd: 2, sync: false });
  const pretty = chooseLogFormat(format, (destination ?? process.stderr) as { isTTY?: boolean }) === 'pretty';
  return pino(
    {
      level,
      base: { name: 'portcullis' },
      redact: { paths: ['password', '*.password', 'token', '*.token', 'key', '*.key'], censor: '[redacted]' },
    },
    pretty ? prettyStream(out, { colors: destination === undefined && process.stderr.isTTY === true && !('NO_COLOR' in process.env) }) : out,
  );
}

/** What pino writes to: a stream, or pino's own destination. */
type Sink = { write(chunk: string): unknown; flush?: (cb?: (err?: Error) => void) => void };

export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

const LEVELS: Record<number, { name: string; color: string }> = {
  10: { name: 'TRACE', color: '\x1b[90m' },
  20: { name: 'DEBUG', color: '\x1b[90m' },
  30: { name: 'INFO', color: '\x1b[32m' },
  40: { name: 'WARN', color: '\x1b[33m' },
  50: { name: 'ERROR', color: '\x1b[31m' },
  60: { name: 'FATAL', color: '\x1b[35m' },
};
/** Fields every record has, or that only repeat what the line already says. */
const HIDDEN = new Set(['level', 'time', 'msg', 'name', 'pid', 'hostname', 'v']);
const BARE = /^[\w.:/@+\-[\]]+$/;

const two = (n: number) => (n < 10 ? `0${n}` : String(n));

/** `HH:MM:SS.mmm` in the machine's time zone. */
export function localTime(ms: number): string {
  const d = new Date(ms);
  const milli = d.getMilliseconds();
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}.${milli < 10 ? '00' : milli < 100 ? '0' : ''}${milli}`;
}

function value(v: unknown): string {
  if (typeof v === 'string') return BARE.test(v) ? v : JSON.stringify(v);
  if (v === null || typeof v !== 'object') return String(v);
  return JSON.stringify(v);
}

/**
 * One pino record (a JSON line) as a person reads it: local time, level, message, then the other
 * fields as `key=value`, an error's stack on the lines below. A line that is not a record passes
 * through as it is.
 */
export function formatPretty(line: string, colors = false): string {
  let rec: Record<string, unknown>;
  try {
    rec = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line;
  }
  if (rec === null || typeof rec !== 'object') return line;
  const level = LEVELS[rec.level as number] ?? { name: String(rec.level), color: '' };
  const time = typeof rec.time === 'number' ? localTime(rec.time) : '';
  const name = level.name.padEnd(5);
  let out = `${time} ${colors ? `${level.color}${name}\x1b[0m` : name} ${typeof rec.msg === 'string' ? rec.msg : ''}`;
  const stacks: string[] = [];
  for (const [k, v] of Object.entries(rec)) {
    if (HIDDEN.has(k) || v === undefined) continue;
    const stack = v !== null && typeof v === 'object' ? (v as { stack?: unknown }).stack : undefined;
    if (typeof stack === 'string') {
      out += ` ${k}=${value((v as { message?: unknown }).message ?? '')}`;
      stacks.push(stack.replace(/^/gm, '    '));
      continue;
    }
    out += ` ${colors ? `\x1b[2m${k}=\x1b[0m` : `${k}=`}${value(v)}`;
  }
  return stacks.length === 0 ? out : `${out}\n${stacks.join('\n')}`;
}

/** A stream for pino that writes each record to `out` as {@link formatPretty} lays it out. */
export function prettyStream(out: Sink, options: { colors?: boolean } = {}): NodeJS.WritableStream & { flush(cb?: (err?: Error) => void): void } {
  const colors = options.colors === true;
  const stream = {
    write(chunk: string | Uint8Array): boolean {
      const text = typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8');
      let lines = '';
      for (const line of text.split('\n')) if (line !== '') lines += `${formatPretty(line, colors)}\n`;
      return out.write(lines) !== false;
    },
    flush(cb?: (err?: Error) => void): void {
      if (typeof out.flush === 'function') out.flush(cb);
      else cb?.();
    },
  };
  return stream as unknown as NodeJS.WritableStream & { flush(cb?: (err?: Error) => void): void };
}
