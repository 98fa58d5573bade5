/**
 * The `portcullis` command, run as a child process: `node --import tsx src/cli/main.ts ...`
 * from the repository root. Serial: each start compiles the sources with tsx, which is slow
 * when several run at once.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import type { IDisconnectPacket } from 'mqtt';
import { connect, delay, freePort, nextMessages } from './helpers.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const main = path.join('src', 'cli', 'main.ts');
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string };

interface Cli {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves with the exit code (null when killed by a signal), or 'timeout' after `ms`. */
  exited(ms: number): Promise<number | null | 'timeout'>;
}

/** Starts the CLI; it is killed (by its pid) at teardown if still running. */
function cli(t: ExecutionContext, args: string[]): Cli {
  const child = spawn(process.execPath, ['--import', 'tsx', main, ...args], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  let code: number | null | undefined;
  const done = new Promise<number | null>((resolve) => {
    child.once('close', (c) => {
      code = c;
      resolve(c);
    });
  });
  t.teardown(() => {
    if (code === undefined && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited: (ms) => Promise.race([done, delay(ms).then(() => 'timeout' as const)]),
  };
}

function tempDir(t: ExecutionContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-cli-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}


async function waitFor(predicate: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > end) return false;
    await delay(20);
  }
  return true;
}

function runningConfig(port: number): string {
  return [
    'listeners:',
    '  - name: cli-tcp',
    '    type: tcp',
    '    host: 127.0.0.1',
    `    port: ${port}`,
    '    auth: [anonymous]',
    'authorizers: [allow-all]',
    'audit:',
    '  sink: none',
    'sys:',
    '  intervalSeconds: 0',
    // The tests run from the checkout: the default store would be its data/store.
    'store:',
    '  type: memory',
    'log:',
    '  level: info',
    '',
  ].join('\n');
}

/** Starts `portcullis start --config` on a free port and waits for its 'listening on' log line. */
async function startCli(t: ExecutionContext): Promise<{ proc: Cli; port: number }> {
  const dir = tempDir(t);
  const port = await freePort();
  const file = path.join(dir, 'broker.yaml');
  fs.writeFileSync(file, runningConfig(port));
  const proc = cli(t, ['start', '--config', file]);
  const listening = await waitFor(() => proc.stderr().includes('listening on') || proc.child.exitCode !== null, 15_000);
  if (!listening || !proc.stderr().includes('listening on')) throw new Error(`the CLI did not start listening:\n${proc.stderr()}`);
  return { proc, port };
}

for (const flag of ['--version', '-v']) {
  test.serial(`${flag} prints the package version`, async (t) => {
    const proc = cli(t, [flag]);
    t.is(await proc.exited(15_000), 0);
    t.is(proc.stdout().trim(), pkg.version);
  });
}

test.serial('start --config with an out-of-range value exits non-zero and names the key', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'bad-value.yaml');
  fs.writeFileSync(file, 'limits:\n  maxPacketSize: -1\n');
  const proc = cli(t, ['start', '--config', file]);
  const code = await proc.exited(15_000);
  t.not(code, 0);
  t.not(code, 'timeout');
  t.true(proc.stderr().includes('limits.maxPacketSize'), proc.stderr());
  t.true(proc.stderr().includes(file), 'the error names the file');
});

test.serial('start --config with an unknown key exits non-zero and names the key', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'unknown-key.yaml');
  fs.writeFileSync(file, 'limits:\n  maxPaketSize: 5000\n');
  const proc = cli(t, ['start', '--config', file]);
  const code = await proc.exited(15_000);
  t.not(code, 0);
  t.not(code, 'timeout');
  t.regex(proc.stderr(), /limits/);
  t.regex(proc.stderr(), /maxPaketSize/, 'the unknown key is named');
});

test.serial('start --config with a missing file exits non-zero and names the file', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'does-not-exist.yaml');
  const proc = cli(t, ['start', '--config', file]);
  const code = await proc.exited(15_000);
  t.not(code, 0);
  t.not(code, 'timeout');
  t.true(proc.stderr().includes(file), proc.stderr());
});

test.serial('start --config serves MQTT and exits 0 on SIGTERM when no client is connected', async (t) => {
  const { proc, port } = await startCli(t);
  t.regex(proc.stderr(), new RegExp(`listening on tcp://127\\.0\\.0\\.1:${port}`));
  const sub = await connect(port, { clientId: 'cli-sub' });
  await sub.subscribeAsync('cli/#', { qos: 1 });
  const pub = await connect(port, { clientId: 'cli-pub', protocolVersion: 5 });
  const got = nextMessages(sub, 1);
  await pub.publishAsync('cli/hello', 'from the CLI broker', { qos: 1 });
  const [m] = await got;
  t.is(m?.topic, 'cli/hello');
  t.is(m?.payload, 'from the CLI broker');
  await sub.endAsync();
  await pub.endAsync();

  proc.child.kill('SIGTERM');
  t.is(await proc.exited(5000), 0, 'exit code 0 within 5 s');
});

test.serial('on SIGTERM the CLI sends a connected v5 client DISCONNECT 0x8B and exits 0 within 5 s', async (t) => {
  const { proc, port } = await startCli(t);
  const v5 = await connect(port, { clientId: 'cli-v5', protocolVersion: 5 });
  const v3 = await connect(port, { clientId: 'cli-v3' });
  t.teardown(() => {
    v5.end(true);
    v3.end(true);
  });
  await v5.subscribeAsync('cli/#', { qos: 1 });
  const got = nextMessages(v5, 1);
  await v3.publishAsync('cli/x', 'before shutdown', { qos: 1 });
  t.is((await got)[0]?.payload, 'before shutdown');

  const disconnect = new Promise<IDisconnectPacket>((resolve) => v5.once('disconnect', resolve));
  const started = Date.now();
  proc.child.kill('SIGTERM');
  const code = await proc.exited(5000);
  t.is(code, 0, `exit code 0 within 5 s (got ${code} after ${Date.now() - started} ms)`);
  const packet = await Promise.race([disconnect, delay(100).then(() => null)]);
  t.is(packet?.reasonCode, 0x8b, 'DISCONNECT Server shutting down'); // [MQTT-3.14.2-1] reason 0x8B
});
