/**
 * The operational log is readable at a terminal and JSON for machines: `portcullis start` writes
 * readable lines (local time, level, message, key=value) when standard error is a terminal, JSON
 * lines when it is not, and `log.format: pretty | json` chooses either way. The terminal is a
 * real pseudo-terminal made by util-linux `script`.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { fileURLToPath } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import { chooseLogFormat, createLogger, formatPretty, localTime } from '../src/log.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const main = path.join(root, 'src', 'cli', 'main.ts');
const tsx = import.meta.resolve('tsx');
const SCRIPT = '/usr/bin/script';
const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-9;]*m/g;

function capture(format?: 'pretty' | 'json'): { log: ReturnType<typeof createLogger>; text: () => string } {
  const out = new PassThrough();
  let text = '';
  out.on('data', (d: Buffer) => (text += d.toString()));
  return { log: createLogger('info', out, format), text: () => text };
}

test('pretty: local time, level, message and the other fields as key=value, no JSON', (t) => {
  const { log, text } = capture('pretty');
  log.info({ listener: 'local', host: '127.0.0.1', port: 1883 }, 'listening on tcp://127.0.0.1:1883');
  log.warn({ clientId: 'a b', detail: { n: 1 } }, 'something odd');
  const [first, second] = text().trimEnd().split('\n');
  t.regex(first ?? '', /^\d\d:\d\d:\d\d\.\d{3} INFO {2}listening on tcp:\/\/127\.0\.0\.1:1883 listener=local host=127\.0\.0\.1 port=1883$/);
  t.regex(second ?? '', /^\d\d:\d\d:\d\d\.\d{3} WARN {2}something odd clientId="a b" detail=\{"n":1\}$/);
  t.notRegex(text(), /"level"|"time"|"name":"portcullis"/);
});

test('pretty: the time is the local time of the record, not UTC', (t) => {
  const ms = Date.UTC(2026, 0, 2, 3, 4, 5, 67);
  const tz = process.env.TZ;
  process.env.TZ = 'Asia/Kolkata'; // UTC+05:30 all year
  try {
    t.is(localTime(ms), '08:34:05.067');
    t.true(formatPretty(JSON.stringify({ level: 30, time: ms, name: 'portcullis', msg: 'hi' })).startsWith('08:34:05.067 INFO  hi'));
  } finally {
    if (tz === undefined) delete process.env.TZ;
    else process.env.TZ = tz;
  }
});

test('pretty: an error prints its message and its stack below; secrets stay redacted; a line that is not a record passes through', (t) => {
  const { log, text } = capture('pretty');
  const err = new Error('boom');
  log.error({ err, password: 'hunter2' }, 'failed');
  t.regex(text(), /ERROR failed err=boom password=\[redacted\]\n {4}Error: boom\n {8}at /);
  t.notRegex(text(), /hunter2/);
  t.is(formatPretty('not json'), 'not json');
});

test('json: one JSON object per line, as before; an explicit destination that is not a terminal gets JSON by default', (t) => {
  for (const format of ['json', undefined] as const) {
    const { log, text } = capture(format);
    log.info({ listener: 'local' }, 'hello');
    const rec = JSON.parse(text().trim()) as Record<string, unknown>;
    t.is(rec.msg, 'hello');
    t.is(rec.level, 30);
    t.is(rec.listener, 'local');
  }
});

test('the format follows the terminal unless one is chosen', (t) => {
  t.is(chooseLogFormat(undefined, { isTTY: true }), 'pretty');
  t.is(chooseLogFormat(undefined, {}), 'json');
  t.is(chooseLogFormat('json', { isTTY: true }), 'json');
  t.is(chooseLogFormat('pretty', {}), 'pretty');
});

// ── portcullis start, at a terminal and through a pipe ───────────────────────

/**
 * Runs `portcullis start --config FILE` (on an ephemeral loopback port), under a pseudo-terminal
 * when `tty`; stops it by its pid (written by the shell that execs it) once it has listened.
 */
async function startOutput(t: ExecutionContext, log: object | undefined, tty: boolean): Promise<string> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-log-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const config = path.join(dir, 'broker.json');
  fs.writeFileSync(config, JSON.stringify({ listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }], authorizers: ['allow-all'], store: { type: 'memory' }, audit: { sink: 'none' }, ...(log ? { log } : {}) }));
  const pidFile = path.join(dir, 'pid');
  const inner = `echo $$ > ${quote(pidFile)}; exec ${quote(process.execPath)} --import ${quote(tsx)} ${quote(main)} start --config ${quote(config)}`;
  const child = tty ? spawn(SCRIPT, ['-qec', `sh -c ${quote(inner)}`, '/dev/null'], { cwd: dir, stdio: ['pipe', 'pipe', 'pipe'] }) : spawn('sh', ['-c', inner], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  child.stdout?.on('data', (d: Buffer) => (text += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (text += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  const killer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  const end = Date.now() + 15_000;
  while (!/listening on/.test(text) && Date.now() < end && child.exitCode === null) await new Promise((r) => setTimeout(r, 50));
  const pid = Number(fs.existsSync(pidFile) ? fs.readFileSync(pidFile, 'utf8') : 0);
  if (pid > 0) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      // already gone
    }
  }
  await exited;
  clearTimeout(killer);
  return text.replace(/\r/g, '');
}

const haveScript = fs.existsSync(SCRIPT);

test('portcullis start at a terminal: readable lines with the level in colour, no JSON', async (t) => {
  if (!haveScript) {
    t.pass('util-linux script is not installed');
    return;
  }
  const out = await startOutput(t, undefined, true);
  t.regex(out, /\d\d:\d\d:\d\d\.\d{3} \x1b\[32mINFO \x1b\[0m listening on tcp:\/\/127\.0\.0\.1:\d+ /, out);
  t.regex(out.replace(ANSI, ''), /\d\d:\d\d:\d\d\.\d{3} INFO {2}stopped/);
  t.notRegex(out, /\{"level"/);
});

test('portcullis start through a pipe: JSON lines', async (t) => {
  const out = await startOutput(t, undefined, false);
  const lines = out.trim().split('\n').map((l) => JSON.parse(l) as { msg: string; level: number });
  t.true(lines.some((l) => l.level === 30 && /^listening on tcp:\/\/127\.0\.0\.1:\d+$/.test(l.msg)), out);
});

test('log.format: json at a terminal gives JSON; log.format: pretty through a pipe gives readable lines without colour codes', async (t) => {
  if (!haveScript) {
    t.pass('util-linux script is not installed');
    return;
  }
  const [json, pretty] = await Promise.all([startOutput(t, { format: 'json' }, true), startOutput(t, { format: 'pretty' }, false)]);
  t.true(json.trim().split('\n').every((l) => l.startsWith('{"level":')), json);
  t.regex(pretty, /^\d\d:\d\d:\d\d\.\d{3} INFO {2}listening on tcp:\/\/127\.0\.0\.1:\d+ listener=tcp-0/m);
  t.notRegex(pretty, /\x1b\[|\{"level"/);
});

test('log.format accepts only pretty or json', async (t) => {
  const { parseConfig } = await import('../src/config/schema.ts');
  t.throws(() => parseConfig({ log: { format: 'text' } }), { message: /log\.format: Invalid option: expected one of "pretty"\|"json"/ });
});
