/**
 * Client stacks for the interoperability tests, each run as its own process with its default
 * options: Debian's mosquitto_pub / mosquitto_sub / mosquitto_rr and Python paho-mqtt (Debian's
 * /usr/bin/python3). Also the certificates and the broker configuration the matrix shares.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { pki } from '../tls-fixtures.ts';
import { delay, root } from './broker-process.ts';

export const MOSQUITTO_PUB = '/usr/bin/mosquitto_pub';
export const MOSQUITTO_SUB = '/usr/bin/mosquitto_sub';
export const MOSQUITTO_RR = '/usr/bin/mosquitto_rr';
export const MOSQUITTO = '/usr/sbin/mosquitto';
/** Debian's interpreter, which has python3-paho-mqtt (a `python3` earlier on PATH may not). */
export const PYTHON = '/usr/bin/python3';
export const PAHO_DIR = path.join(root, 'test', 'interop', 'paho');

export const haveMosquittoClients = fs.existsSync(MOSQUITTO_PUB) && fs.existsSync(MOSQUITTO_SUB);
export const haveMosquittoBroker = fs.existsSync(MOSQUITTO);
export const havePaho = fs.existsSync(PYTHON) && fs.existsSync('/usr/lib/python3/dist-packages/paho/mqtt/client.py');

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** A client process: its output so far, a way to wait for a line, its exit. */
export interface Running {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves true once stdout or stderr matches, false after `ms` or when the process exits without it. */
  waitFor(pattern: RegExp, ms?: number): Promise<boolean>;
  exit: Promise<Exit>;
}

const running = new Set<ChildProcess>();

/** Kills (by pid) every client process still running: for `test.after.always`. */
export function killClients(): void {
  for (const child of running) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  running.clear();
}

/** coreutils' stdbuf: C programs buffer stdout in blocks when it is a pipe; -oL makes each line arrive as printed. */
const STDBUF = '/usr/bin/stdbuf';

/**
 * Starts a client process; it is killed (SIGKILL, by its pid) if it outlives `timeoutMs`. Its
 * standard output is line-buffered (stdbuf execs the program, so the pid is the client's).
 */
export function launch(cmd: string, args: string[], timeoutMs = 15_000): Running {
  const lineBuffered = fs.existsSync(STDBUF);
  const child = spawn(lineBuffered ? STDBUF : cmd, lineBuffered ? ['-oL', cmd, ...args] : args, { stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  let stdout = '';
  let stderr = '';
  const watchers: (() => void)[] = [];
  const notify = () => watchers.forEach((w) => w());
  child.stdout?.on('data', (d: Buffer) => ((stdout += d.toString()), notify()));
  child.stderr?.on('data', (d: Buffer) => ((stderr += d.toString()), notify()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const exit = new Promise<Exit>((resolve) => {
    child.once('error', (err) => {
      stderr += String(err);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      running.delete(child);
      notify();
      resolve({ code, signal, stdout, stderr });
    });
  });
  return {
    child,
    stdout: () => stdout,
    stderr: () => stderr,
    exit,
    waitFor(pattern, ms = 15_000) {
      return new Promise((resolve) => {
        const check = () => {
          if (pattern.test(stdout) || pattern.test(stderr)) return done(true);
          if (child.exitCode !== null || child.signalCode !== null) return done(false);
        };
        const t = setTimeout(() => done(false), ms);
        const done = (v: boolean) => {
          clearTimeout(t);
          const i = watchers.indexOf(check);
          if (i >= 0) watchers.splice(i, 1);
          resolve(v);
        };
        watchers.push(check);
        check();
      });
    },
  };
}

export function run(cmd: string, args: string[], timeoutMs = 15_000): Promise<Exit> {
  return launch(cmd, args, timeoutMs).exit;
}

/** Runs test/interop/paho/SCRIPT with Debian's python3. */
export function paho(script: string, args: string[], timeoutMs = 20_000): Running {
  return launch(PYTHON, ['-u', path.join(PAHO_DIR, script), ...args], timeoutMs);
}

/** The JSON lines a paho script printed (one event or result per line). */
export function jsonLines(stdout: string): Record<string, unknown>[] {
  return stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** Runs the same command `n` times, one after another; resolves with every exit. */
export async function repeat(n: number, cmd: string, args: string[]): Promise<Exit[]> {
  const out: Exit[] = [];
  for (let i = 0; i < n; i++) out.push(await run(cmd, args));
  return out;
}

export { delay };

// ── certificates ─────────────────────────────────────────────────────────────

export interface InteropPki {
  dir: string;
  ca: string;
  chain: string;
  serverCert: string;
  serverKey: string;
  client(cn: string): { cert: string; key: string };
  pskFile: string;
  pskIdentity: string;
  pskKey: string;
}

/** A CA, a server certificate for localhost / 127.0.0.1, client certificates and a PSK file, made by `portcullis pki`. */
export async function makePki(dir: string, clients: string[] = ['device-1']): Promise<InteropPki> {
  const p = path.join(dir, 'pki');
  await pki(p, 'init', '--cn', 'Interop CA');
  await pki(p, 'server', '--dns', 'localhost', '--ip', '127.0.0.1');
  for (const cn of clients) await pki(p, 'client', '--cn', cn);
  const pskFile = path.join(p, 'private', 'psk.txt');
  await pki(p, 'psk', 'psk-device-1', '--file', pskFile);
  const [identity, key] = (fs.readFileSync(pskFile, 'utf8').split('\n').find((l) => l.startsWith('psk-device-1:')) ?? '').split(':');
  return {
    dir: p,
    ca: path.join(p, 'ca.crt'),
    chain: path.join(p, 'ca-chain.crt'),
    serverCert: path.join(p, 'server.crt'),
    serverKey: path.join(p, 'private', 'server.key'),
    client: (cn) => ({ cert: path.join(p, 'clients', `${cn}.crt`), key: path.join(p, 'clients', `${cn}.key`) }),
    pskFile,
    pskIdentity: identity ?? '',
    pskKey: key ?? '',
  };
}

// ── the matrix broker ────────────────────────────────────────────────────────

/** The password of the one static user of the TLS and WSS listeners. */
export const USER = { username: 'interop', password: 'interop-pw-1' };

/**
 * Allowed: everything under interop/. Denied: interop/denied/#, for the reason codes of denied
 * actions. (Test subscriptions never overlap the deny rule only in part: that case is issue 22's
 * item 3, built elsewhere.)
 */
export const POLICY = ['p, *, interop/#, *, allow', 'p, *, interop/denied/#, *, deny', ''].join('\n');

/**
 * The configuration every matrix file starts its broker with: the default limits, admission and
 * session settings, and one listener per transport. TCP and WS: anonymous (on loopback, as the
 * built-in defaults). TLS and WSS: the static user, or (TLS) a PSK. mTLS: a client certificate
 * whose CN is the user name.
 */
export function matrixConfig(dir: string, p: InteropPki): object {
  const policy = path.join(dir, 'policy.csv');
  fs.writeFileSync(policy, POLICY);
  const users = { provider: 'static-users', users: [{ username: USER.username, password: USER.password }] };
  const tls = { host: '127.0.0.1', port: 0, cert: p.serverCert, key: p.serverKey };
  return {
    listeners: [
      { name: 'tcp', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] },
      { name: 'tls', type: 'tls', ...tls, psk: { file: p.pskFile }, auth: ['psk', users] },
      { name: 'mtls', type: 'tls', ...tls, ca: p.chain, requireClientCert: true, auth: [{ provider: 'certificate', username: 'cn' }] },
      { name: 'ws', type: 'ws', host: '127.0.0.1', port: 0, auth: ['anonymous'] },
      { name: 'wss', type: 'wss', ...tls, auth: [users] },
    ],
    authorizers: [{ type: 'casbin', model: path.join(root, 'policies', 'model.conf'), policy, watch: false }],
    audit: { sink: 'file', path: path.join(dir, 'audit.jsonl') },
  };
}
