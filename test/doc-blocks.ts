/**
 * Docs that run: the command blocks of README.md and docs/*.md that a user runs are marked, and
 * test/docs-run.test.ts runs them in order, in a fresh copy of the project, with real clients,
 * and checks what the text says comes out. The markers are words in a fenced block's info string
 * (after the language), which renderers ignore:
 *
 *   ```sh test                    run it (bash, `set -eo pipefail`, from the project's root); it must exit 0
 *   ```sh test may-fail           run it without `set -e`; its output block says what happened
 *   ```sh test exit=2             it must exit with this code
 *   ```sh test retry=5            run it again until it succeeds, for up to 5 s (the text says to wait)
 *   ```sh test stop=broker        first stop that background block (the text says to stop it: Ctrl-C)
 *   ```sh test background name=broker ready="listening on"
 *                                 start it and leave it running (a broker, a subscriber "in another
 *                                 terminal"): ready waits until its output matches; after="broker:client
 *                                 connected" waits until another one's output has a new match; tty
 *                                 runs it at a pseudo-terminal. It is stopped (SIGTERM to its process
 *                                 group) when another block takes its name, and at the end of the page.
 *   ```js test file=demo.mjs      write the block to that file (relative to the root) instead
 *   ```text output                what the block before printed: each line must appear, in this
 *                                 order (other lines may come between); `...` in a line matches
 *                                 anything, and a time like 12:00:01.123 matches any time
 *   ```text output=sub            what a background block printed (waited for, up to 15 s)
 *   ```sh notest                  a command block that is deliberately not run here (an install,
 *                                 a path on a server): the pages that must run say so for each block
 *
 * `<!-- test: fresh -->` on a line of its own starts a new, independent run (a fresh copy, its own
 * network): the parts of a page before and after it run at the same time. A marked block inside
 * an HTML comment runs too but is not shown: keep such hidden steps to what the text describes.
 *
 * Variables a block assigns (`TOKEN=$(...)`) are kept for the blocks after it.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export interface DocBlock {
  /** Path of the markdown file, relative to the project's root. */
  file: string;
  /** Line of the opening fence, 1-based. */
  line: number;
  lang: string;
  role: 'run' | 'output' | 'notest' | 'none';
  attrs: Map<string, string | true>;
  text: string;
  /** Which independent run of the page it belongs to (`<!-- test: fresh -->` starts the next). */
  unit: number;
}

/** Splits an info string into words; `key="a b"` keeps its spaces. */
function words(info: string): string[] {
  const out: string[] = [];
  const re = /([^\s"=]+)(?:=(?:"((?:[^"\\]|\\.)*)"|(\S*)))?/g;
  for (let m = re.exec(info); m !== null; m = re.exec(info)) {
    const [, key, quoted, bare] = m;
    out.push(quoted !== undefined ? `${key}=${quoted.replace(/\\(.)/g, '$1')}` : bare !== undefined ? `${key}=${bare}` : (key as string));
  }
  return out;
}

/** Every fenced block of a markdown text, with its role and attributes. */
export function parseBlocks(markdown: string, file: string): DocBlock[] {
  const lines = markdown.split('\n');
  const blocks: DocBlock[] = [];
  let unit = 0;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] as string;
    if (/^\s*<!--\s*test:\s*fresh\s*-->\s*$/.test(line)) {
      unit++;
      continue;
    }
    const open = /^(\s*)(`{3,}|~{3,})(.*)$/.exec(line);
    if (open === null) continue;
    const [, indent = '', fence = '', info = ''] = open;
    const body: string[] = [];
    let j = i + 1;
    for (; j < lines.length; j++) {
      const l = lines[j] as string;
      if (l.trim().startsWith(fence) && l.trim().replace(/[`~]/g, '') === '' && l.trim().length >= fence.length) break;
      body.push(l.startsWith(indent) ? l.slice(indent.length) : l.trimStart());
    }
    const [lang = '', ...rest] = words(info.trim());
    const attrs = new Map<string, string | true>();
    let role: DocBlock['role'] = 'none';
    for (const w of rest) {
      const eq = w.indexOf('=');
      const key = eq < 0 ? w : w.slice(0, eq);
      const value = eq < 0 ? true : w.slice(eq + 1);
      if (key === 'test') role = 'run';
      else if (key === 'notest') role = 'notest';
      else if (key === 'output') {
        role = 'output';
        if (value !== true) attrs.set('of', value);
      } else attrs.set(key, value);
    }
    blocks.push({ file, line: i + 1, lang, role, attrs, text: body.join('\n'), unit });
    i = j;
  }
  return blocks;
}

// ── output matching ───────────────────────────────────────────────────────────

// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07/g;

/** Terminal output as lines of text: colour codes, carriage returns and spinners removed. */
export function plainLines(text: string): string[] {
  return text
    .replace(ANSI, '')
    .replace(/[\u2800-\u28ff]/g, '') // npm's spinner
    .split('\n')
    .map((l) => {
      const cr = l.lastIndexOf('\r', l.length - 2);
      return (cr >= 0 ? l.slice(cr + 1) : l).replace(/\r$/, '').trimEnd();
    });
}

function lineRegex(expected: string): RegExp {
  const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const body = expected
    .trimEnd()
    .split('...')
    .map((part) => escape(part).replace(/\d\d:\d\d:\d\d\\\.\d{3}/g, '\\d\\d:\\d\\d:\\d\\d\\.\\d{3}'))
    .join('.*');
  return new RegExp(`^${body}$`);
}

/** Undefined when every expected line appears in the output in order; otherwise the first that does not. */
export function missingLine(expected: string, output: string): string | undefined {
  const actual = plainLines(output);
  let at = 0;
  for (const e of expected.split('\n')) {
    if (e.trim() === '' || e.trim() === '...') continue;
    const re = lineRegex(e);
    while (at < actual.length && !re.test(actual[at] as string)) at++;
    if (at >= actual.length) return e;
    at++;
  }
  return undefined;
}

// ── running a page ────────────────────────────────────────────────────────────

export interface BlockFailure {
  file: string;
  line: number;
  message: string;
}

export interface UnitReport {
  file: string;
  unit: number;
  ran: number;
  failure?: BlockFailure;
  seconds: number;
}

interface Background {
  name: string;
  child: ChildProcess;
  pidFile: string;
  output: () => string;
  exited: Promise<number | null>;
  how: () => string;
}

const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Names a block assigns at the start of a line (`TOKEN=$(...)`, `export KEY=...`): kept for the next blocks. */
function assigned(text: string): string[] {
  const names = new Set<string>();
  for (const m of text.matchAll(/^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=/gm)) names.add(m[1] as string);
  return [...names];
}

/**
 * Runs the marked blocks of one unit of a page in `root` (a fresh copy of the project), in order.
 * Stops at the first failure. Background blocks are stopped at the end.
 */
export async function runUnit(blocks: DocBlock[], root: string, env: NodeJS.ProcessEnv = process.env): Promise<UnitReport> {
  const started = Date.now();
  const first = blocks[0];
  const report: UnitReport = { file: first?.file ?? '', unit: first?.unit ?? 0, ran: 0, seconds: 0 };
  const work = path.join(root, '.doc-test');
  fs.mkdirSync(work, { recursive: true });
  const state = path.join(work, 'state.sh');
  const backgrounds = new Map<string, Background>();
  /** What happened to the processes of the page, for the report of a failure. */
  const notes: string[] = [];
  const fail = (b: DocBlock, message: string) => {
    report.failure = { file: b.file, line: b.line, message: notes.length > 0 ? `${message}\n(${notes.join('; ')})` : message };
  };
  let last: { output: string } | undefined;
  let n = 0;

  const script = (b: DocBlock, errexit: boolean, pidFile?: string) => {
    const vars = assigned(b.text);
    const file = path.join(work, `block-${++n}.sh`);
    fs.writeFileSync(
      file,
      [
        // The block's process group, which stop() signals. At a pseudo-terminal, script(1) runs
        // the block under $SHELL -c: with a SHELL other than bash, bash is that shell's child and
        // $$ names no group; the session's group is the one to stop.
        pidFile !== undefined ? `{ read -r _ _ _ _ __pg _ < /proc/$$/stat; } 2>/dev/null || __pg=$$; echo "$__pg" > '${pidFile}'` : '',
        // One stream, so that what a command prints and what the next echoes keep their order.
        'exec 2>&1',
        `[ -f '${state}' ] && . '${state}'`,
        vars.length > 0 ? `trap '__s=$?; declare -p ${vars.join(' ')} >> '"'"'${state}'"'"' 2>/dev/null; exit $__s' EXIT` : '',
        errexit ? 'set -eo pipefail' : '',
        `# ${b.file}:${b.line}`,
        b.text,
        '',
      ].join('\n'),
    );
    return file;
  };

  const stop = async (bg: Background) => {
    backgrounds.delete(bg.name);
    const pid = Number(fs.existsSync(bg.pidFile) ? fs.readFileSync(bg.pidFile, 'utf8') : 0);
    const signal = (sig: NodeJS.Signals) => {
      for (const target of [pid > 0 ? -pid : 0, bg.child.pid !== undefined ? -bg.child.pid : 0]) {
        if (target === 0) continue;
        try {
          process.kill(target, sig);
        } catch {
          // that group is gone
        }
      }
    };
    // The block's shell may end before what it started: npm exits on SIGTERM while the broker
    // under it is still closing its store. Stopped means no process of its groups is left.
    const alive = () =>
      [pid, bg.child.pid ?? 0].some((g) => {
        if (g <= 0) return false;
        try {
          process.kill(-g, 0);
          return true;
        } catch {
          return false;
        }
      });
    const since = Date.now();
    signal('SIGTERM');
    const gone = async () => {
      await bg.exited;
      while (alive()) await delay(50);
      return true;
    };
    const done = await Promise.race([gone(), delay(10_000).then(() => false)]);
    if (!done) signal('SIGKILL');
    await bg.exited;
    for (let i = 0; i < 40 && alive(); i++) await delay(50);
    notes.push(`'${bg.name}' (group ${pid}) stopped in ${Date.now() - since} ms${done ? '' : ' (SIGKILL after 10 s)'}: ${bg.how()}`);
  };

  try {
    for (const b of blocks) {
      if (b.role === 'output') {
        const of = b.attrs.get('of');
        const target = typeof of === 'string' ? backgrounds.get(of) : undefined;
        if (typeof of === 'string' && target === undefined) {
          fail(b, `no background block named '${of}' is running`);
          break;
        }
        report.ran++;
        const read = () => (target !== undefined ? target.output() : (last?.output ?? ''));
        const end = Date.now() + (target !== undefined ? 15_000 : 0);
        let missing = missingLine(b.text, read());
        while (missing !== undefined && Date.now() < end) {
          await delay(100);
          missing = missingLine(b.text, read());
        }
        if (missing !== undefined) {
          fail(b, `this line of the expected output did not appear:\n  ${missing}\nthe output was:\n${plainLines(read()).join('\n')}`);
          break;
        }
        continue;
      }
      if (b.role !== 'run') continue;
      report.ran++;
      const file = b.attrs.get('file');
      if (typeof file === 'string') {
        fs.mkdirSync(path.dirname(path.join(root, file)), { recursive: true });
        fs.writeFileSync(path.join(root, file), b.text.endsWith('\n') ? b.text : `${b.text}\n`);
        continue;
      }
      const stopFirst = b.attrs.get('stop');
      if (typeof stopFirst === 'string') {
        const bg = backgrounds.get(stopFirst);
        if (bg === undefined) {
          fail(b, `stop=${stopFirst}: no background block of that name is running`);
          break;
        }
        await stop(bg);
      }
      if (b.attrs.has('background')) {
        const name = String(b.attrs.get('name') ?? `background-${n}`);
        const previous = backgrounds.get(name);
        if (previous !== undefined) await stop(previous);
        const after = b.attrs.get('after');
        let waitOn: { bg: Background; re: RegExp; count: number } | undefined;
        if (typeof after === 'string') {
          const colon = after.indexOf(':');
          const bg = backgrounds.get(after.slice(0, colon));
          if (bg === undefined) {
            fail(b, `after=${after}: no background block named '${after.slice(0, colon)}' is running`);
            break;
          }
          const re = new RegExp(after.slice(colon + 1), 'g');
          waitOn = { bg, re, count: (plainLines(bg.output()).join('\n').match(re) ?? []).length };
        }
        const pidFile = path.join(work, `bg-${n + 1}.pid`);
        const sh = script(b, true, pidFile);
        const child = b.attrs.has('tty')
          ? spawn('script', ['-qefc', `bash '${sh}'`, '/dev/null'], { cwd: root, env, detached: true, stdio: ['pipe', 'pipe', 'pipe'] })
          : spawn('bash', [sh], { cwd: root, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
        child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
        let how = '';
        const exited = new Promise<number | null>((resolve) =>
          child.once('close', (code, sig) => {
            how = sig !== null ? `killed by ${sig}` : `exit ${code}`;
            resolve(code);
          }),
        );
        const bg: Background = { name, child, pidFile, output: () => out, exited, how: () => how };
        backgrounds.set(name, bg);
        const ready = b.attrs.get('ready');
        const end = Date.now() + 30_000;
        let gone = false;
        void exited.then(() => (gone = true));
        const isReady = () =>
          (typeof ready !== 'string' || new RegExp(ready).test(plainLines(out).join('\n'))) &&
          (waitOn === undefined || (plainLines(waitOn.bg.output()).join('\n').match(waitOn.re) ?? []).length > waitOn.count);
        while (!isReady() && !gone && Date.now() < end) await delay(50);
        if (!isReady()) {
          fail(b, `${gone ? `it ended (${how})` : 'it was not ready within 30 s'}${typeof ready === 'string' ? ` (waiting for /${ready}/)` : ''}${waitOn ? ` (waiting for a new /${waitOn.re.source}/ from '${waitOn.bg.name}')` : ''}; its output:\n${plainLines(out).join('\n')}`);
          break;
        }
        // A subscriber's SUBSCRIBE follows its CONNECT at once; let it land before the next command.
        if (waitOn !== undefined) await delay(150);
        continue;
      }
      const mayFail = b.attrs.has('may-fail');
      const exit = b.attrs.get('exit');
      const retry = Number(b.attrs.get('retry') ?? 0) * 1000;
      const sh = script(b, !mayFail);
      const until = Date.now() + retry;
      let result: { code: number | null; output: string };
      for (;;) {
        result = await runScript(sh, root, env, 60_000);
        const ok = mayFail || (typeof exit === 'string' ? result.code === Number(exit) : result.code === 0);
        if (ok || Date.now() >= until) break;
        await delay(250);
      }
      last = { output: result.output };
      const expected = typeof exit === 'string' ? Number(exit) : 0;
      if (!mayFail && result.code !== expected) {
        fail(b, `exit ${result.code} (expected ${expected})${retry > 0 ? ` after retrying for ${retry / 1000} s` : ''}; its output:\n${plainLines(result.output).join('\n')}`);
        break;
      }
    }
  } finally {
    for (const bg of [...backgrounds.values()].reverse()) await stop(bg);
    report.seconds = Math.round((Date.now() - started) / 100) / 10;
  }
  return report;
}

function runScript(file: string, cwd: string, env: NodeJS.ProcessEnv, timeoutMs: number): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn('bash', [file], { cwd, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const timer = setTimeout(() => {
      output += `\n(killed after ${timeoutMs / 1000} s)`;
      try {
        if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }, timeoutMs);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}
