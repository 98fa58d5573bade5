/**
 * `portcullis policy reload --pid`: it checks the policy the running broker uses (taken from the
 * broker's own command line and configuration), not `policies/`, before it sends SIGHUP; a
 * broken file is reported with its line and the broker is not signalled.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { childrenOf } from '../src/cli/policy-config.ts';
import { delay, freePort } from './helpers.ts';

const root = fileURLToPath(new URL('..', import.meta.url));

async function until(pred: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await delay(25);
  }
}

test('policy reload --pid checks the policy file of the running broker, refuses a broken one with its line, and reloads a good one', async (t) => {
  t.timeout(90_000);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-reload-pid-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const port = await freePort();
  // Relative paths: they are the broker's, resolved against its working directory.
  fs.copyFileSync(path.join(root, 'policies', 'model.conf'), path.join(dir, 'model.conf'));
  fs.writeFileSync(path.join(dir, 'site.csv'), 'p, *, a/#, read, allow\n');
  const auditFile = path.join(dir, 'audit.jsonl');
  fs.writeFileSync(
    path.join(dir, 'broker.yaml'),
    [
      'listeners:',
      `  - { name: plain, type: tcp, host: 127.0.0.1, port: ${port}, auth: [anonymous] }`,
      'authorizers:',
      '  - { type: casbin, model: model.conf, policy: site.csv, watch: false }',
      `audit: { sink: file, path: ${JSON.stringify(auditFile)}, fsyncIntervalMs: 0 }`,
      'sys: { intervalSeconds: 0 }',
      '',
    ].join('\n'),
  );
  // The broker runs in the temporary directory: tsx is named by its resolved location.
  const broker = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), path.join(root, 'src', 'cli', 'main.ts'), 'start', '--config', 'broker.yaml'], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  broker.stdout.on('data', (d: Buffer) => (out += d.toString()));
  broker.stderr.on('data', (d: Buffer) => (out += d.toString()));
  t.teardown(() => {
    if (broker.exitCode === null && broker.signalCode === null) broker.kill('SIGKILL');
  });
  await until(() => out.includes('listening on tcp://') || broker.exitCode !== null, 30_000, 'the broker to listen');
  t.true(out.includes('listening on tcp://'), out);
  const reloads = () => (fs.existsSync(auditFile) ? fs.readFileSync(auditFile, 'utf8').split('\n').filter((l) => l.includes('"event":"reload"')) : []);
  // The CLI runs from the project (whose policies/ are valid), as an operator would.
  const reload = (...args: string[]) => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', path.join('src', 'cli', 'main.ts'), '--audit-spool', path.join(dir, 'spool'), 'policy', 'reload', '--pid', String(broker.pid), ...args], { cwd: root, encoding: 'utf8' });
    return { code: r.status, out: r.stdout, err: r.stderr };
  };

  fs.writeFileSync(path.join(dir, 'site.csv'), 'p, *, a/#, read, allow\np, *, b/#, read, alow\n');
  const broken = reload();
  t.is(broken.code, 1, broken.out);
  t.true(broken.err.includes(`${path.join(dir, 'site.csv')}:2: unknown effect 'alow'`), broken.err);
  t.false(broken.out.includes('policies/fleet.csv'));
  await delay(300);
  t.deepEqual(reloads(), [], 'the broker was not signalled');

  fs.writeFileSync(path.join(dir, 'site.csv'), 'p, *, a/#, read, allow\np, *, b/#, read, allow\n');
  const good = reload();
  t.is(good.code, 0, good.err);
  t.true(good.out.includes(`policy ${path.join(dir, 'site.csv')} (authorizers[0]`), good.out);
  t.true(good.out.includes(`configuration ${path.join(dir, 'broker.yaml')}`), good.out);
  await until(() => reloads().some((l) => l.includes('SIGHUP') && l.includes('"decision":"allow"')), 15_000, 'the SIGHUP reload record');

  // Without --audit-spool, the action's admin record goes beside that broker's audit file, and the broker records it.
  const spoolFree = spawnSync(process.execPath, ['--import', 'tsx', path.join('src', 'cli', 'main.ts'), 'policy', 'reload', '--pid', String(broker.pid)], { cwd: root, encoding: 'utf8' });
  t.is(spoolFree.status, 0, spoolFree.stderr);
  await until(() => fs.readFileSync(auditFile, 'utf8').split('\n').some((l) => l.includes('"event":"admin"') && l.includes('policy reload')), 15_000, "the reload's admin record in the broker's audit log");

  // A --config that is not the broker's is refused.
  const other = path.join(dir, 'other.yaml');
  fs.copyFileSync(path.join(dir, 'broker.yaml'), other);
  const mismatch = reload('--config', other);
  t.is(mismatch.code, 1);
  t.regex(mismatch.err, /is not the configuration of process \d+, which runs with .*broker\.yaml/);

  broker.kill('SIGTERM');
  await until(() => broker.exitCode !== null || broker.signalCode !== null, 15_000, 'the broker to exit');
});

test('policy reload --pid refuses a process that is not portcullis start, and does not signal it', async (t) => {
  const sleeper = spawn('sleep', ['30'], { stdio: 'ignore' });
  t.teardown(() => sleeper.kill('SIGKILL'));
  const r = spawnSync(process.execPath, ['--import', 'tsx', path.join('src', 'cli', 'main.ts'), 'policy', 'reload', '--pid', String(sleeper.pid)], { cwd: root, encoding: 'utf8' });
  t.is(r.status, 1);
  t.regex(r.stderr, /is not 'portcullis start' \(sleep 30\): give --config/);
  await delay(100);
  t.is(sleeper.exitCode, null);
  t.is(sleeper.signalCode, null, 'still running: no SIGHUP was sent');
});

const launchedBy = test.macro(async (t, launcher: 'tsx' | 'npm') => {
  // npm start compiles the project first (prestart): on a loaded machine that alone can take half a minute.
  t.timeout(120_000);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-reload-tsx-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.copyFileSync(path.join(root, 'policies', 'model.conf'), path.join(dir, 'model.conf'));
  fs.writeFileSync(path.join(dir, 'p.csv'), 'p, *, a/#, read, allow\n');
  const auditFile = path.join(dir, 'audit.jsonl');
  const config = path.join(dir, 'broker.yaml');
  fs.writeFileSync(config, [
    'listeners: [{ name: plain, type: tcp, host: 127.0.0.1, port: 0, auth: [anonymous] }]',
    `authorizers: [{ type: casbin, model: ${JSON.stringify(path.join(dir, 'model.conf'))}, policy: ${JSON.stringify(path.join(dir, 'p.csv'))}, watch: false }]`,
    `audit: { sink: file, path: ${JSON.stringify(auditFile)}, fsyncIntervalMs: 0 }`,
    'sys: { intervalSeconds: 0 }',
    // It runs from the checkout: a durable store there would be the checkout's data/store.
    'store: { type: memory }',
    '',
  ].join('\n'));
  // tsx's wrapper with the broker as its child (`tsx src/cli/main.ts start`), or `npm start`
  // (npm, a shell, then the broker).
  const wrapper =
    launcher === 'tsx'
      ? spawn(process.execPath, [path.join(root, 'node_modules', '.bin', 'tsx'), path.join('src', 'cli', 'main.ts'), 'start', '--config', config], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn('npm', ['start', '--silent', '--', '--config', config], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  wrapper.stdout.on('data', (d: Buffer) => (out += d.toString()));
  wrapper.stderr.on('data', (d: Buffer) => (out += d.toString()));
  t.teardown(() => {
    if (wrapper.exitCode === null && wrapper.signalCode === null) wrapper.kill('SIGTERM');
  });
  await until(() => out.includes('listening on tcp://') || wrapper.exitCode !== null, 90_000, 'the broker to listen');
  // Should the wrapper die, its broker would live on: stop it too.
  const brokers = [...childrenOf(wrapper.pid as number), ...childrenOf(wrapper.pid as number).flatMap((c) => childrenOf(c))];
  t.teardown(() => {
    for (const pid of brokers) {
      try {
        // Only if that pid is still this test's broker (a pid may be reused once it exits).
        if (fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(config)) process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });
  const r = spawnSync(process.execPath, ['--import', 'tsx', path.join('src', 'cli', 'main.ts'), '--audit-spool', path.join(dir, 'spool'), 'policy', 'reload', '--pid', String(wrapper.pid)], { cwd: root, encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, new RegExp(`process ${wrapper.pid} is a launcher \\(.*\\): signalling the broker process \\d+ instead`));
  const reloaded = () => fs.existsSync(auditFile) && fs.readFileSync(auditFile, 'utf8').includes('"event":"reload"');
  await until(reloaded, 15_000, 'the reload record');
  await delay(200);
  t.is(wrapper.exitCode, null, 'the wrapper was not killed by SIGHUP');
  wrapper.kill('SIGTERM');
  await until(() => wrapper.exitCode !== null || wrapper.signalCode !== null, 15_000, 'the broker to exit');
});

test('policy reload --pid given the tsx wrapper of npm start signals the broker under it, which reloads; the wrapper lives on', launchedBy, 'tsx');
test('policy reload --pid given the npm process of npm start signals the broker two levels under it, which reloads; npm lives on', launchedBy, 'npm');
