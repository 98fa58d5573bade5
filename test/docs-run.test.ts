/**
 * Docs that run. The command blocks of README.md and docs/*.md that a user runs are marked (see
 * test/doc-blocks.ts for the markers, and docs/contributing.md); this file runs them, page by
 * page, in order, each page in a fresh copy of the project (the files git tracks or would track,
 * the built dist/, and node_modules linked), with the real clients (the CLI through npx,
 * mosquitto_pub / mosquitto_sub, openssl, node), and checks the output the text shows. A page
 * whose commands stop working, or whose shown output stops being true, fails here.
 *
 * Each page runs in its own network namespace (unshare: a private loopback), so the documented
 * ports (1883, 8883, 8884, 8080) are used exactly as written, by several pages at once, without
 * touching anything else on the machine; a pid namespace ends every process a page started when
 * it ends. Where namespaces are not available, the pages run one at a time on this machine's
 * loopback, holding the lock of the tests that use the built-in default ports.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import { type DocBlock, parseBlocks, type UnitReport } from './doc-blocks.ts';
import { lockDefaultPorts } from './default-ports.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const tsx = import.meta.resolve('tsx');
const runner = path.join(root, 'test', 'doc-run.ts');

/** The pages whose commands a new user follows: each must have runnable blocks, and mark every command block. */
const MUST_RUN = ['README.md', 'docs/quickstart.md', 'docs/tls.md', 'docs/pki.md', 'docs/authentication.md', 'docs/policies.md', 'docs/configuration.md', 'docs/audit.md', 'docs/operations.md'];
const SHELL = new Set(['sh', 'bash', 'shell', 'console']);

const pages = ['README.md', ...fs.readdirSync(path.join(root, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];
const blocksOf = new Map<string, DocBlock[]>(pages.map((p) => [p, parseBlocks(fs.readFileSync(path.join(root, p), 'utf8'), p)]));

/** The clients the pages use: a page never passes without running its commands. */
const TOOLS = { '/usr/bin/mosquitto_pub': 'mosquitto-clients', '/usr/bin/mosquitto_sub': 'mosquitto-clients', '/usr/bin/openssl': 'openssl', '/usr/bin/script': 'bsdutils (util-linux)', '/usr/bin/curl': 'curl' };
const missingTools = [...new Set(Object.entries(TOOLS).filter(([file]) => !fs.existsSync(file)).map(([, pkg]) => pkg))];

const netns = (() => {
  if (process.platform !== 'linux' || !fs.existsSync('/usr/sbin/ip') && !fs.existsSync('/sbin/ip')) return false;
  return spawnSync('unshare', ['-rnpf', '--mount-proc', '--kill-child', 'sh', '-c', 'ip link set lo up'], { stdio: 'ignore' }).status === 0;
})();

// ── what the pages say about themselves ──────────────────────────────────────

test('the pages a new user follows have runnable blocks, and mark every command block test or notest', (t) => {
  for (const page of MUST_RUN) {
    const blocks = blocksOf.get(page) ?? [];
    t.true(blocks.some((b) => b.role === 'run'), `${page} has no runnable block`);
    for (const b of blocks.filter((x) => SHELL.has(x.lang) && x.role === 'none')) t.fail(`${page}:${b.line}: a ${b.lang} block that is neither \`test\` nor \`notest\``);
  }
  for (const [page, blocks] of blocksOf) {
    blocks.forEach((b, i) => {
      if (b.role !== 'output' || b.attrs.has('of')) return;
      const before = blocks.slice(0, i).reverse().find((x) => x.role === 'run' || x.role === 'output');
      if (before?.role !== 'run' || before.attrs.has('background') || before.attrs.has('file')) t.fail(`${page}:${b.line}: an output block must follow a block that runs in the foreground, or name a background one (output=NAME)`);
    });
  }
});

/** A command line of a comment or a block, without its prompt, comment and surplus spaces. */
const normal = (line: string) => line.replace(/^\s*(#\s*)?(\$\s+)?/, '').replace(/\s+(#|\().*$/, '').replace(/\s+/g, ' ').trim();
const COMMAND = /^(npx|npm|mosquitto_pub|mosquitto_sub|openssl|node|echo|printf|TOKEN=)\b/;

test("every command an example's comments suggest is a runnable block of the docs (so it is run and checked there)", (t) => {
  const runnable = new Set<string>();
  for (const blocks of blocksOf.values()) for (const b of blocks) if (b.role === 'run') for (const l of b.text.split('\n')) runnable.add(normal(l));
  const dir = path.join(root, 'docs', 'examples');
  let suggested = 0;
  for (const f of fs.readdirSync(dir).filter((x) => x.endsWith('.yaml'))) {
    for (const line of fs.readFileSync(path.join(dir, f), 'utf8').split('\n')) {
      if (!line.startsWith('#')) continue;
      const cmd = normal(line);
      if (!COMMAND.test(cmd)) continue;
      suggested++;
      t.true(runnable.has(cmd), `docs/examples/${f}: "${cmd}" is not in any runnable block`);
    }
  }
  t.true(suggested >= 20, `${suggested} suggested commands found`);
});

test('every example binds loopback, unless its first comment says it is about remote access', (t) => {
  const dir = path.join(root, 'docs', 'examples');
  for (const f of fs.readdirSync(dir).filter((x) => x.endsWith('.yaml'))) {
    const text = fs.readFileSync(path.join(dir, f), 'utf8');
    const header = text.slice(0, text.search(/^[^#]/m));
    if (/remote access/i.test(header)) continue;
    for (const m of text.matchAll(/^\s*host:\s*(\S+)/gm)) t.regex(m[1] as string, /^(127\.\d+\.\d+\.\d+|::1|localhost)$/, `docs/examples/${f}: host ${m[1]}`);
    t.regex(text, /^\s*host:/m, `docs/examples/${f} names its hosts`);
  }
});

// ── running them ─────────────────────────────────────────────────────────────

/** The files of the project as a fresh clone has them, plus the built dist/ and a link to node_modules. */
function freshCopy(t: ExecutionContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-docs-'));
  // PORTCULLIS_DOCS_KEEP=1 keeps the copy of a page that failed, to look at what its commands left.
  t.teardown(() => {
    if (process.env.PORTCULLIS_DOCS_KEEP === '1' && !t.passed) t.log(`kept ${dir}`);
    else fs.rmSync(dir, { recursive: true, force: true });
  });
  const listed = spawnSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: root, encoding: 'utf8' });
  if (listed.status !== 0) throw new Error(`git ls-files failed: ${listed.stderr}`);
  for (const f of listed.stdout.split('\0')) {
    if (f === '' || !fs.existsSync(path.join(root, f))) continue;
    fs.mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
    fs.copyFileSync(path.join(root, f), path.join(dir, f));
  }
  if (!fs.existsSync(path.join(root, 'dist', 'cli', 'main.js'))) throw new Error('dist/ is missing: npm test builds it (npm run build)');
  fs.cpSync(path.join(root, 'dist'), path.join(dir, 'dist'), { recursive: true });
  fs.symlinkSync(path.join(root, 'node_modules'), path.join(dir, 'node_modules'));
  return dir;
}

/** npx and npm, offline and quiet, with a cache of their own in the copy. */
function npmEnv(copy: string): NodeJS.ProcessEnv {
  return {
    ...process.env,
    npm_config_cache: path.join(copy, '.npm-cache'),
    npm_config_offline: 'true',
    npm_config_update_notifier: 'false',
    npm_config_fund: 'false',
    npm_config_audit: 'false',
    NODE_OPTIONS: '',
  };
}

/**
 * The first `npx portcullis` in a clone links the package into npx's cache and runs its `prepare`
 * script, which rebuilds dist/ (already built, as after `npm install`). Done here once, without
 * that redundant build: a page's first npx would otherwise rewrite dist/ under a running broker.
 */
function warmNpx(copy: string): void {
  const r = spawnSync('npx', ['portcullis', '--version'], { cwd: copy, env: { ...npmEnv(copy), npm_config_ignore_scripts: 'true' }, encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`npx portcullis --version failed in the copy: ${r.stdout}${r.stderr}`);
}

function runInCopy(copy: string, file: string, unit: number): Promise<{ report?: UnitReport; output: string }> {
  const env = npmEnv(copy);
  const node = [process.execPath, '--import', tsx, runner, copy, file, String(unit)].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const child = netns
    ? // bash stays process 1 of the namespace (`; exit` keeps it from exec'ing node), so it reaps
      // the processes a page orphans: a zombie would pass for a live broker holding the store lock.
      spawn('unshare', ['-rnpf', '--mount-proc', '--kill-child', 'bash', '-c', `ip link set lo up && ${node}; exit $?`], { cwd: copy, env, stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn('bash', ['-c', node], { cwd: copy, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  return new Promise((resolve) => {
    child.once('close', () => {
      const line = output.split('\n').reverse().find((l) => l.startsWith('{"file"'));
      resolve(line === undefined ? { output } : { report: JSON.parse(line) as UnitReport, output });
    });
  });
}

/** Four pages at a time: each starts brokers and CLI processes, and spends much of its time waiting for them. */
let free = netns ? 4 : 1;
const waiting: (() => void)[] = [];
async function slot(t: ExecutionContext): Promise<void> {
  if (free > 0) free--;
  else await new Promise<void>((resolve) => waiting.push(resolve));
  t.teardown(() => {
    const next = waiting.shift();
    if (next !== undefined) next();
    else free++;
  });
}

for (const [page, blocks] of blocksOf) {
  const units = [...new Set(blocks.filter((b) => b.role === 'run').map((b) => b.unit))];
  for (const unit of units) {
    const first = blocks.find((b) => b.unit === unit && b.role === 'run') as DocBlock;
    test(`${page}${units.length > 1 ? ` (from line ${first.line})` : ''}: every marked command runs as written and prints what the page shows`, async (t) => {
      t.timeout(180_000);
      if (missingTools.length > 0) return t.fail(`the docs' commands need the Debian packages ${missingTools.join(', ')}`);
      await slot(t);
      if (!netns) t.teardown(await lockDefaultPorts(120_000));
      const copy = freshCopy(t);
      warmNpx(copy);
      const { report, output } = await runInCopy(copy, page, unit);
      if (report === undefined) return t.fail(`the runner printed no report:\n${output}`);
      t.log(`${report.ran} blocks in ${report.seconds} s${netns ? '' : ' (no network namespace: run on this machine)'}`);
      if (report.failure !== undefined) t.fail(`${report.failure.file}:${report.failure.line}: ${report.failure.message}`);
      else t.true(report.ran > 0);
    });
  }
}
