/**
 * Start-up time: from spawning `portcullis start` to the first listener accepting a TCP
 * connection, for the ways the command has been run:
 *
 * - before, `bin/portcullis.js` as it was up to 0.1.0: node registers tsx and compiles src/ at
 *   run time (tsx's transform cache warm, as on a machine that has started it before);
 * - the same with tsx's cache off (TSX_DISABLE_CACHE=1), as on a first start, or under systemd's
 *   PrivateTmp where the cache in /tmp starts empty every time;
 * - before, `npm start`'s command: the tsx CLI (a parent process that starts node with tsx);
 * - after, `bin/portcullis.js` running dist/ on plain node;
 * - after, with `--enable-source-maps` (stack traces that name src/ lines; docs/deploy.md).
 *
 * The configuration is the built-in defaults (TCP, TLS and mTLS listeners, allow-all, the file
 * audit sink) on free loopback ports, in a temporary folder with a development PKI made once.
 * Runs are interleaved (one of each variant per round, the order rotated), so each comparison is
 * made within seconds. The result is the median, with the range, over the rounds, and the median
 * of the per-round ratios to the dist/ start.
 *
 *   npm run bench:startup                   # 11 rounds (builds dist/ first when it is missing)
 *   npm run bench:startup -- --rounds 21
 *
 * Writes bench/results/startup.md.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { builtInDefaults } from '../src/config/defaults.ts';
import { createLogger } from '../src/log.ts';
import { ensureDevelopmentPki } from '../src/pki/bootstrap.ts';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '11' },
    out: { type: 'string', default: path.join(import.meta.dirname, 'results', 'startup.md') },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  console.log('Usage: npm run bench:startup -- [--rounds 11] [--out FILE]');
  process.exit(0);
}
const rounds = Number(values.rounds);
if (!(rounds >= 1)) {
  console.error('bad arguments (see --help)');
  process.exit(2);
}

const root = path.resolve(import.meta.dirname, '..');
const median = (a: number[]): number => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)] as number;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

if (!existsSync(path.join(root, 'dist', 'cli', 'main.js'))) {
  const build = spawnSync('npm', ['run', 'build'], { cwd: root, stdio: 'inherit' });
  if (build.status !== 0) process.exit(1);
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

// The built-in defaults, moved to free ports; the folder holds pki/ and data/ as a fresh start would.
const dir = mkdtempSync(path.join(os.tmpdir(), 'portcullis-startup-'));
const ports = [await freePort(), await freePort(), await freePort()];
const listeners = (builtInDefaults.listeners ?? []).map((l, i) => ({ ...l, port: ports[i] }));
const config = path.join(dir, 'config.json');
writeFileSync(config, JSON.stringify({ ...builtInDefaults, listeners, log: { level: 'warn' } }));
ensureDevelopmentPki(path.join(dir, 'pki'), createLogger('silent'));
mkdirSync(path.join(dir, 'data'), { recursive: true });
// bin/portcullis.js as it was before the package was compiled.
const oldBin = path.join(dir, 'old-bin.mjs');
writeFileSync(
  oldBin,
  `import { register } from ${JSON.stringify(pathToFileURL(path.join(root, 'node_modules', 'tsx', 'dist', 'esm', 'api', 'index.mjs')).href)};\n` +
    `register();\nawait import(${JSON.stringify(pathToFileURL(path.join(root, 'src', 'cli', 'main.ts')).href)});\n`,
);

interface Variant {
  label: string;
  command: string[];
  env?: Record<string, string>;
  ms: number[];
}
const start = ['start', '--config', config];
const variants: Variant[] = [
  { label: 'before: node + tsx (bin/portcullis.js of 0.1.0), tsx cache warm', command: [process.execPath, oldBin, ...start], ms: [] },
  { label: 'before: node + tsx, tsx cache off (first start, PrivateTmp)', command: [process.execPath, oldBin, ...start], env: { TSX_DISABLE_CACHE: '1' }, ms: [] },
  { label: 'before: `npm start` command (tsx CLI), cache warm', command: [path.join(root, 'node_modules', '.bin', 'tsx'), path.join(root, 'src', 'cli', 'main.ts'), ...start], ms: [] },
  { label: 'after: plain node, dist/ (bin/portcullis.js)', command: [process.execPath, path.join(root, 'bin', 'portcullis.js'), ...start], ms: [] },
  { label: 'after: plain node, dist/, --enable-source-maps', command: [process.execPath, '--enable-source-maps', path.join(root, 'bin', 'portcullis.js'), ...start], ms: [] },
];

/** Spawns the command and returns the milliseconds until the first listener accepts a connection. */
async function timeStart(v: Variant): Promise<number> {
  const t0 = performance.now();
  const child = spawn(v.command[0] as string, v.command.slice(1), { cwd: dir, env: { ...process.env, ...v.env }, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  try {
    for (;;) {
      if (child.exitCode !== null) throw new Error(`${v.label}: exited with ${child.exitCode}: ${stderr}`);
      if (performance.now() - t0 > 30_000) throw new Error(`${v.label}: no listener after 30 s: ${stderr}`);
      const accepted = await new Promise<boolean>((resolve) => {
        const socket = net.connect({ host: '127.0.0.1', port: ports[0] as number });
        socket.once('connect', () => {
          socket.destroy();
          resolve(true);
        });
        socket.once('error', () => resolve(false));
      });
      if (accepted) return performance.now() - t0;
      await sleep(2);
    }
  } finally {
    child.kill('SIGTERM');
    await exited;
  }
}

try {
  for (const v of variants) await timeStart(v); // warm-up: disk cache, tsx's transform cache
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < variants.length; i++) {
      const v = variants[(i + r) % variants.length] as Variant;
      const ms = await timeStart(v);
      v.ms.push(ms);
      console.log(`round ${r + 1}/${rounds}  ${v.label.padEnd(66)} ${ms.toFixed(0)} ms`);
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

const dist = variants[3] as Variant;
/** Median of the per-round ratios to dist/: each compares two starts seconds apart. */
const pairedRatio = (v: Variant): number => median(v.ms.map((ms, r) => ms / (dist.ms[r] as number)));
const lines = [
  '# Start-up: `portcullis start` to the first listener accepting',
  '',
  `- Date: ${new Date().toISOString()}; ${os.cpus()[0]?.model.trim() ?? 'unknown CPU'}, ${os.cpus().length} CPUs, Node ${process.version}`,
  `- The built-in defaults (TCP, TLS and mTLS listeners) on free loopback ports; ${rounds} rounds, one start of each variant per round in rotated order, after one warm-up start each.`,
  '- Time from spawning the process to the first TCP connection accepted on the first listener.',
  '',
  '| Variant | Median | Range | Time / dist (median of the rounds) |',
  '|---|---:|---:|---:|',
  ...variants.map((v) => `| ${v.label} | ${median(v.ms).toFixed(0)} ms | ${Math.min(...v.ms).toFixed(0)}–${Math.max(...v.ms).toFixed(0)} ms | ${pairedRatio(v).toFixed(2)}x |`),
  '',
];
const report = lines.join('\n');
console.log(`\n${report}`);
mkdirSync(path.dirname(values.out), { recursive: true });
writeFileSync(values.out, report);
