/**
 * The npm package as a user gets it. The project is packed with `npm pack` (which builds dist/
 * through `prepare`) and the tarball is installed into an empty project, offline: a lockfile
 * pins every dependency to the version this checkout uses, so npm takes them from its cache.
 * Then, on plain node (no tsx anywhere in that project):
 *
 * 1. the README's Embed example runs as an .mjs file and a real client round-trips a message;
 * 2. a TypeScript consumer, with its own authentication provider, type-checks against the
 *    shipped declarations (and a wrong one does not);
 * 3. `npx portcullis start` on the built-in defaults serves mosquitto_pub / mosquitto_sub;
 * 4. the tarball holds no test, bench or fixture file and no private key;
 *
 * and module plug-ins load from the installed package: `.js` on plain node, `.ts` through tsx
 * when it is installed, refused with a clear message when it is not. The systemd unit in
 * docs/deploy/ passes `systemd-analyze verify` where that command exists.
 *
 * The packing happens in a copy of the working tree, so that the build never rewrites the
 * checkout's dist/ while other test files run bin/portcullis.js from it.
 *
 * The defaults listen on fixed ports (127.0.0.1:1883, 8883, 8884), which breaks the rule that tests
 * use ephemeral ports, because the issue asks for exactly that start. The tests in this file run
 * serially; the one on the defaults holds a lock file in the temporary folder (DEFAULT_PORTS_LOCK,
 * which any other test on the defaults should take too), waits until the three ports are free,
 * and starts again if another process took one in between. Ephemeral ports are never below
 * 32768 on Linux, so the other tests' brokers cannot hold them.
 */
import { spawn, type SpawnOptions } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import { loadConfigFile } from '../src/config/load.ts';
import { DEFAULT_PORTS, defaultPortsFree, lockDefaultPorts } from './default-ports.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const tsc = path.join(root, 'node_modules', '.bin', 'tsc');
const SUB = '/usr/bin/mosquitto_sub';
const PUB = '/usr/bin/mosquitto_pub';

/**
 * The child processes run on a plain node (no NODE_OPTIONS) and without the variables `npm test`
 * sets for its scripts (npm_config_local_prefix would point npm at this checkout), except where
 * npm's cache and configuration are.
 */
const KEPT_NPM_SETTINGS = /^npm_config_(cache|userconfig|globalconfig|registry|cafile)$/i;
const plainEnv: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => (!/^npm_/i.test(k) || KEPT_NPM_SETTINGS.test(k)) && k !== 'NODE_OPTIONS'));

interface Exit {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to its end (killed, by its pid, after `ms`). */
function run(cmd: string, args: string[], options: SpawnOptions & { ms?: number } = {}): Promise<Exit> {
  const { ms = 60_000, ...spawnOptions } = options;
  const child = spawn(cmd, args, { env: plainEnv, ...spawnOptions, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), ms);
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function waitFor(predicate: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > end) return false;
    await delay(20);
  }
  return true;
}

/** What a copy of the project needs: everything but installed, built and runtime files. */
const NOT_COPIED = new Set(['node_modules', '.git', 'dist', 'data', 'audit', '.tmp']);

interface Packed {
  dir: string;
  app: string;
  tarball: string;
  files: string[];
}

/**
 * Packs a copy of the working tree (untracked files included: a stray key in pki/ must not be
 * shipped either) and installs the tarball into `app/` with a lockfile built from the checkout's:
 * the package's production dependencies, and mqtt and @types/node for the consumer.
 */
async function packAndInstall(): Promise<Packed> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-package-'));
  const project = path.join(dir, 'project');
  fs.cpSync(root, project, { recursive: true, filter: (src) => !NOT_COPIED.has(path.relative(root, src).split(path.sep)[0] as string) });
  fs.symlinkSync(path.join(root, 'node_modules'), path.join(project, 'node_modules'), 'dir');
  const app = path.join(dir, 'app');
  fs.mkdirSync(app);
  const packed = await run('npm', ['pack', '--json', '--pack-destination', app], { cwd: project });
  if (packed.code !== 0) throw new Error(`npm pack failed: ${packed.stderr}`);
  const [info] = JSON.parse(packed.stdout) as { filename: string; files: { path: string }[] }[];
  if (info === undefined) throw new Error('npm pack printed no package');
  const tarball = path.join(app, info.filename);

  const lock = JSON.parse(fs.readFileSync(path.join(root, 'package-lock.json'), 'utf8')) as { packages: Record<string, LockEntry> };
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as Record<string, unknown> & { dependencies: Record<string, string> };
  const extra = { mqtt: versionIn(lock, 'mqtt'), '@types/node': versionIn(lock, '@types/node') };
  const dependencies = { portcullis: `file:${info.filename}`, ...extra };
  const entries: Record<string, LockEntry> = {};
  addClosure(lock.packages, entries, 'node_modules/portcullis', pkg.dependencies);
  addClosure(lock.packages, entries, '', extra);
  const integrity = `sha512-${createHash('sha512').update(fs.readFileSync(tarball)).digest('base64')}`;
  const appLock = {
    name: 'app',
    lockfileVersion: 3,
    requires: true,
    packages: {
      '': { name: 'app', dependencies },
      'node_modules/portcullis': { version: pkg.version, resolved: `file:${info.filename}`, integrity, license: pkg.license, dependencies: pkg.dependencies, bin: pkg.bin, engines: pkg.engines },
      ...entries,
    },
  };
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module', dependencies }, null, 2));
  fs.writeFileSync(path.join(app, 'package-lock.json'), JSON.stringify(appLock, null, 2));
  const installed = await run('npm', ['ci', '--offline', '--no-audit', '--no-fund'], { cwd: app });
  if (installed.code !== 0) throw new Error(`npm ci of the tarball failed: ${installed.stderr}`);
  return { dir, app, tarball, files: info.files.map((f) => f.path) };
}

type LockEntry = Record<string, unknown> & { version?: string; dependencies?: Record<string, string>; optionalDependencies?: Record<string, string> };

function versionIn(lock: { packages: Record<string, LockEntry> }, name: string): string {
  const version = lock.packages[`node_modules/${name}`]?.version;
  if (version === undefined) throw new Error(`${name} is not in package-lock.json`);
  return version;
}

/** Adds the lock entries that `deps`, required from `from`, resolve to (node's lookup: nearest node_modules first), and theirs. */
function addClosure(all: Record<string, LockEntry>, out: Record<string, LockEntry>, from: string, deps: Record<string, string> | undefined): void {
  for (const name of Object.keys(deps ?? {})) {
    let key: string | undefined;
    for (let dir = from; ; dir = dir.slice(0, Math.max(0, dir.lastIndexOf('/node_modules/')))) {
      const candidate = `${dir === '' ? '' : `${dir}/`}node_modules/${name}`;
      if (all[candidate] !== undefined) {
        key = candidate;
        break;
      }
      if (dir === '') break;
    }
    if (key === undefined || out[key] !== undefined) continue; // an optional dependency not installed here, or seen
    const { dev: _dev, devOptional: _devOptional, peer: _peer, ...entry } = all[key] as LockEntry;
    out[key] = entry;
    addClosure(all, out, key, { ...entry.dependencies, ...entry.optionalDependencies });
  }
}

let packed: Packed | undefined;
let packError: unknown;

test.before(async () => {
  try {
    packed = await packAndInstall();
  } catch (err) {
    packError = err; // reported by every test rather than as a hook failure without context
  }
});

test.after.always(() => {
  if (packed !== undefined) fs.rmSync(packed.dir, { recursive: true, force: true });
});

function installed(t: ExecutionContext): Packed {
  if (packed === undefined) throw packError instanceof Error ? packError : new Error(String(packError));
  t.false(fs.existsSync(path.join(packed.app, 'node_modules', 'tsx')), 'tsx is not installed in the consumer project');
  return packed;
}

/** Spawns node on a script in the consumer project and waits for it to end. */
function node(app: string, args: string[], ms = 30_000): Promise<Exit> {
  return run(process.execPath, args, { cwd: app, ms });
}

test.serial('the tarball holds the compiled package and no test, bench, fixture, TypeScript source or private key', (t) => {
  const { files, app } = installed(t);
  for (const required of ['package.json', 'LICENSE', 'README.md', 'SECURITY.md', 'bin/portcullis.js', 'dist/index.js', 'dist/index.d.ts', 'dist/index.js.map', 'dist/cli/main.js', 'dist/auth/module.d.ts', 'dist/authz/module.d.ts', 'policies/model.conf', 'docs/examples/mtls-fleet.yaml', 'docs/deploy/portcullis.service']) {
    t.true(files.includes(required), `ships ${required}`);
  }
  const forbidden = files.filter(
    (f) =>
      /(^|\/)(test|tests|bench|fixtures?|src)\//.test(f) ||
      /\.(test|spec)\.[cm]?[jt]s$/.test(f) ||
      (/\.[cm]?ts$/.test(f) && !/\.d\.[cm]?ts$/.test(f)) ||
      /\.(key|p12|pfx|jks)$/i.test(f) ||
      /^pki\//.test(f) || // where `portcullis pki` and the first start write the CA and keys
      /(^|\/)private\//.test(f) ||
      /^tsconfig/.test(f),
  );
  t.deepEqual(forbidden, []);
  // The content too: no PEM private key in any file, whatever its name.
  const withKey = files.filter((f) => /-----BEGIN ([A-Z]+ )?PRIVATE KEY-----/.test(fs.readFileSync(path.join(app, 'node_modules', 'portcullis', f), 'latin1')));
  t.deepEqual(withKey, []);
  const manifest = JSON.parse(fs.readFileSync(path.join(app, 'node_modules', 'portcullis', 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
  t.false('tsx' in manifest.dependencies, 'tsx is not a run-time dependency');
});

test.serial("the README's Embed example runs on plain node: the broker starts and mqtt.js round-trips a message", async (t) => {
  const { app } = installed(t);
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  const example = /## Embed\s+```js[^\n]*\n([\s\S]*?)```/.exec(readme)?.[1];
  if (example === undefined) {
    t.fail('README.md has no ```js block under "## Embed"');
    return;
  }
  t.regex(example, /from 'portcullis'/);
  t.regex(example, /port: 1883/);
  // The one change: an ephemeral port, as every test here uses (the example reads the bound port back).
  fs.writeFileSync(path.join(app, 'embed.mjs'), example.replace('port: 1883', 'port: 0'));
  const r = await node(app, ['embed.mjs']);
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout.trim(), 'demo/hello hi');
  t.regex(r.stderr + r.stdout, /client connected/);
});

const consumer = `import { createBroker, ReasonCode, type ConfigInput, type RunningBroker } from 'portcullis';
import type { Authenticator, AuthenticatorFactory, ConnectRequest, Decision, Principal } from 'portcullis/auth';
import { ReasonCode as AuthzCode, type AuthorizerFactory } from 'portcullis/authz';

/** A provider of the consumer's own: a shared PIN as the password. */
class PinProvider implements Authenticator {
  readonly id = 'pin';
  constructor(private readonly pin: string) {}
  async authenticate(req: ConnectRequest, signal: AbortSignal): Promise<Decision<Principal>> {
    if (signal.aborted || req.password === undefined) return { kind: 'abstain' };
    if (req.password.toString('utf8') !== this.pin) return { kind: 'deny', reason: ReasonCode.BadUserNameOrPassword, detail: 'wrong pin' };
    return { kind: 'allow', value: { clientId: req.clientId, username: req.username, method: 'pin', provider: this.id, roles: ['device'], attributes: { listener: req.peer.listener } } };
  }
}
export const createAuthenticator: AuthenticatorFactory = (options) => new PinProvider(String(options.pin));
export const readOnly: AuthorizerFactory = () => ({
  id: 'read-only',
  authorize: (_who, action) => (action === 'publish' ? { kind: 'deny', reason: AuthzCode.NotAuthorized, detail: 'read-only' } : { kind: 'abstain' }),
});
const config: ConfigInput = { listeners: [{ name: 'pins', type: 'tcp', host: '127.0.0.1', port: 0, auth: [] }], authorizers: ['allow-all'] };
const broker: RunningBroker = createBroker(config, { authenticators: { pins: [new PinProvider('1234')] } });
const { listeners } = await broker.start();
const port: number = listeners[0]?.port ?? 0;
console.log(port);
await broker.stop();
`;

test.serial('a TypeScript consumer with its own authentication provider type-checks against the shipped declarations', async (t) => {
  const { app } = installed(t);
  const tsconfig = {
    compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true, skipLibCheck: false, types: ['node'] },
    files: ['consumer.ts'],
  };
  fs.writeFileSync(path.join(app, 'tsconfig.json'), JSON.stringify(tsconfig));
  fs.writeFileSync(path.join(app, 'consumer.ts'), consumer);
  const good = await run(tsc, ['-p', 'tsconfig.json'], { cwd: app });
  t.is(good.code, 0, good.stdout + good.stderr);
  // The declarations are really checked: an allow without a principal and an unknown reason code fail.
  const wrong = consumer
    .replace("{ kind: 'allow', value: { clientId: req.clientId,", "{ kind: 'allow', principal: { clientId: req.clientId,")
    .replace('AuthzCode.NotAuthorized', 'AuthzCode.NoSuchReason');
  t.not(wrong, consumer);
  fs.writeFileSync(path.join(app, 'consumer.ts'), wrong);
  const bad = await run(tsc, ['-p', 'tsconfig.json'], { cwd: app });
  t.not(bad.code, 0);
  t.regex(bad.stdout, /consumer\.ts\(12,/, 'the allow without value is refused');
  t.regex(bad.stdout, /NoSuchReason/, 'the unknown reason code is refused');
});

const pinProvider = `import { ReasonCode } from 'portcullis/auth';
export default function createAuthenticator(options) {
  return {
    id: 'pin',
    async authenticate(req) {
      if (req.password === undefined) return { kind: 'abstain' };
      return req.password.toString() === options.pin
        ? { kind: 'allow', value: { clientId: req.clientId, username: req.username, method: 'pin', provider: 'pin', roles: [], attributes: {} } }
        : { kind: 'deny', reason: ReasonCode.BadUserNameOrPassword, detail: 'wrong pin' };
    },
  };
}
`;

/** Starts a broker on plain node from the installed package, with one module provider; prints the CONNACK codes of a right and a wrong PIN. */
const pluginRunner = (provider: string) => `import mqtt from 'mqtt';
import { createBroker } from 'portcullis';
const broker = createBroker({
  listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'module', path: ${JSON.stringify(provider)}, options: { pin: '1234' } }] }],
  authorizers: ['allow-all'],
  audit: { sink: 'none' },
  log: { level: 'silent' },
});
try {
  const { listeners } = await broker.start();
  const codes = [];
  for (const password of ['1234', '9999']) {
    const client = mqtt.connect({ host: '127.0.0.1', port: listeners[0].port, protocolVersion: 5, username: 'dev', password, reconnectPeriod: 0 });
    codes.push(await new Promise((resolve) => {
      client.once('connect', (ack) => resolve(ack.reasonCode ?? 0));
      client.once('error', (err) => resolve(err.code));
    }));
    client.end(true);
  }
  console.log(codes.join(','));
} catch (err) {
  console.log('start failed:', err.message);
} finally {
  await broker.stop();
}
`;

test.serial('module plug-ins load from the installed package: .js on plain node; .ts through tsx when installed, refused with advice otherwise', async (t) => {
  const { app } = installed(t);
  fs.writeFileSync(path.join(app, 'pin-provider.mjs'), pinProvider);
  fs.writeFileSync(path.join(app, 'pin-provider.ts'), pinProvider.replace('createAuthenticator(options)', 'createAuthenticator(options: Record<string, unknown>)').replace('authenticate(req)', 'authenticate(req: any)'));
  fs.writeFileSync(path.join(app, 'plugin-js.mjs'), pluginRunner('pin-provider.mjs'));
  fs.writeFileSync(path.join(app, 'plugin-ts.mjs'), pluginRunner('pin-provider.ts'));

  const js = await node(app, ['plugin-js.mjs']);
  t.is(js.stdout.trim(), '0,134', `right PIN: CONNACK 0; wrong PIN: 0x86 (${js.stderr})`);

  const noTsx = await node(app, ['plugin-ts.mjs']);
  t.regex(noTsx.stdout, /start failed: cannot load authentication module pin-provider\.ts: .*compile the module to \.js, install tsx/);

  // `npm install tsx` beside the package, as a checkout has it.
  const tsxLink = path.join(app, 'node_modules', 'tsx');
  fs.symlinkSync(path.join(root, 'node_modules', 'tsx'), tsxLink, 'dir');
  try {
    const withTsx = await node(app, ['plugin-ts.mjs']);
    t.is(withTsx.stdout.trim(), '0,134', withTsx.stderr);
  } finally {
    fs.unlinkSync(tsxLink);
  }
});

test.serial('npx portcullis start on the built-in defaults: mosquitto_pub and mosquitto_sub round-trip a message on 127.0.0.1:1883', async (t) => {
  const { app } = installed(t);
  if (!fs.existsSync(SUB) || !fs.existsSync(PUB)) {
    t.log(`${SUB} or ${PUB} is missing: install mosquitto-clients to run this test`);
    t.pass();
    return;
  }
  t.timeout(120_000);
  const unlock = await lockDefaultPorts(60_000);
  t.teardown(unlock);
  let broker: { child: ReturnType<typeof spawn>; stderr: () => string; closed: Promise<void> } | undefined;
  for (let attempt = 1; broker === undefined; attempt++) {
    t.true(await defaultPortsFree(45_000), `127.0.0.1:${DEFAULT_PORTS.join(', ')} stay busy: another broker runs on the defaults`);
    // npx runs the bin through a shell and does not pass SIGTERM on to node: the three get their
    // own process group, stopped together by its id.
    const child = spawn('npx', ['--offline', 'portcullis', 'start'], { cwd: app, env: plainEnv, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout?.resume();
    // 'close' comes once every process holding the pipes (the broker too) has ended.
    const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
    const group = child.pid as number;
    t.teardown(async () => {
      try {
        process.kill(-group, 'SIGTERM');
      } catch {
        // already gone
      }
      await closed;
    });
    await waitFor(() => stderr.includes('listening on tls://127.0.0.1:8884') || child.exitCode !== null, 30_000);
    if (stderr.includes('listening on tls://127.0.0.1:8884')) broker = { child, stderr: () => stderr, closed };
    else if (/EADDRINUSE/.test(stderr) && attempt < 3) await closed; // another broker took a port in between: wait for it again
    else {
      t.fail(`the broker did not start on the defaults: ${stderr}`);
      return;
    }
  }
  t.regex(broker.stderr(), /no --config given: using built-in defaults/);
  t.regex(broker.stderr(), /listening on tcp:\/\/127\.0\.0\.1:1883/);
  t.regex(broker.stderr(), /listening on tls:\/\/127\.0\.0\.1:8883/);

  const sub = spawn(SUB, ['-h', '127.0.0.1', '-p', '1883', '-i', 'package-sub', '-t', 'demo/#', '-q', '1', '-C', '1', '-W', '10', '-F', 'MESSAGE %t %p'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let subOut = '';
  sub.stdout.on('data', (d: Buffer) => (subOut += d.toString()));
  const subDone = new Promise<number | null>((resolve) => sub.once('exit', (code) => resolve(code)));
  t.teardown(() => {
    if (sub.exitCode === null && sub.signalCode === null) sub.kill('SIGKILL');
  });
  // mosquitto_sub's output is block-buffered in a pipe: the broker's audit log says when the subscription is in place.
  const auditFile = path.join(app, 'data', 'audit.jsonl');
  const subscribed = () =>
    fs.existsSync(auditFile) &&
    fs
      .readFileSync(auditFile, 'utf8')
      .split('\n')
      .some((line) => /"event":"subscribe","decision":"allow"/.test(line) && line.includes('"clientId":"package-sub"'));
  t.true(await waitFor(subscribed, 10_000), 'the subscription is granted and audited');
  const pub = await run(PUB, ['-h', '127.0.0.1', '-p', '1883', '-i', 'package-pub', '-t', 'demo/hello', '-m', 'hi from the package', '-q', '1', '-V', 'mqttv5'], { ms: 10_000 });
  t.is(pub.code, 0, pub.stderr);
  t.is(await subDone, 0, subOut);
  t.regex(subOut, /^MESSAGE demo\/hello hi from the package$/m);

  // A graceful stop on SIGTERM.
  process.kill(-(broker.child.pid as number), 'SIGTERM');
  await broker.closed;
  t.regex(broker.stderr(), /"msg":"stopped"/);
});

test.serial('docs/deploy: the configuration is valid, and the systemd unit passes systemd-analyze verify with a low exposure score', async (t) => {
  t.notThrows(() => loadConfigFile(path.join(root, 'docs', 'deploy', 'portcullis.yaml')));
  const unitFile = path.join(root, 'docs', 'deploy', 'portcullis.service');
  const text = fs.readFileSync(unitFile, 'utf8');
  for (const line of ['User=portcullis', 'NoNewPrivileges=yes', 'ProtectSystem=strict', 'ExecReload=/bin/kill -HUP $MAINPID', 'StateDirectory=portcullis/data portcullis/pki', 'LogsDirectory=portcullis/audit']) {
    t.true(text.split('\n').includes(line), `the unit has ${line}`);
  }
  t.false(/^(ReadWritePaths|ReadWriteDirectories)=/m.test(text), 'no other folder is writable');
  const analyze = await run('systemd-analyze', ['--version'], { ms: 10_000 }).catch(() => null);
  if (analyze === null || analyze.code !== 0) {
    t.log('systemd-analyze is not installed here: the unit was not verified (install systemd to verify it)');
    return;
  }
  // verify checks that ExecStart's program exists: point it at this node when /usr/bin/node is not one.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-unit-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const unit = path.join(dir, 'portcullis.service');
  fs.writeFileSync(unit, fs.existsSync('/usr/bin/node') ? text : text.replace('ExecStart=/usr/bin/node ', `ExecStart=${process.execPath} `));
  const verify = await run('systemd-analyze', ['verify', unit], { ms: 30_000 });
  t.is(verify.code, 0, verify.stderr);
  t.is(verify.stderr.trim(), '', 'no warning: every directive is known and valid');
  // Exposure 0.0 (sandboxed) to 10.0 (exposed); the unit scores about 1.3. 2.0 is the upper end of "OK".
  const security = await run('systemd-analyze', ['security', '--offline=true', '--threshold=20', unit], { ms: 30_000 });
  if (/unrecognized option|unknown option/i.test(security.stderr)) {
    t.log(`this systemd-analyze cannot score a unit file offline (systemd 250 or newer can): ${security.stderr.trim()}`);
    return;
  }
  t.is(security.code, 0, security.stdout + security.stderr);
  t.regex(security.stdout, /Overall exposure level for portcullis\.service: [01]\.\d OK/);
});
