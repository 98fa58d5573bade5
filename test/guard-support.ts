/**
 * Helpers for the login-guard scenarios over real broker processes: start `portcullis start`
 * with a configuration, connect raw MQTT clients (plain, TLS with a certificate, TLS-PSK) from a
 * chosen loopback source address, read the broker's audit file, log and CPU time.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import mqttPacket from 'mqtt-packet';
import WebSocket from 'ws';
import { delay } from './helpers.ts';

export const root = fileURLToPath(new URL('..', import.meta.url));

export interface BrokerProcess {
  child: ChildProcess;
  /** Everything the process wrote to stdout and stderr (its JSON log lines). */
  output(): string;
  /** The audit records written so far. */
  audit(): Record<string, unknown>[];
  /** CPU seconds the process has used (all threads: the event loop and libuv's pool). */
  cpuSeconds(): number;
  stop(): Promise<void>;
}

/** Starts `portcullis start --config FILE` and waits until every port accepts connections. */
export async function startBrokerProcess(dir: string, config: Record<string, unknown>, ports: number[], env: NodeJS.ProcessEnv = {}): Promise<BrokerProcess> {
  const file = path.join(dir, 'config.json');
  const auditFile = path.join(dir, 'audit.jsonl');
  // The audit file and the log level are the test's, whatever the configuration says.
  const audit = { ...(config.audit as Record<string, unknown> | undefined), sink: 'file', path: auditFile, fsyncIntervalMs: 0 };
  // A memory store unless the test asks for one: processes started from the checkout would otherwise share data/store.
  fs.writeFileSync(file, JSON.stringify({ sys: { intervalSeconds: 0 }, store: { type: 'memory' }, ...config, log: { level: 'info' }, audit }));
  const child = spawn(process.execPath, ['--import', 'tsx', path.join('src', 'cli', 'main.ts'), 'start', '--config', file], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await Promise.race([exited, delay(5000)]);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  const until = Date.now() + 30_000;
  for (const port of ports) {
    while (!(await portOpen(port))) {
      if (child.exitCode !== null || Date.now() > until) {
        await stop();
        throw new Error(`broker did not start (exit ${child.exitCode}):\n${out}`);
      }
      await delay(100);
    }
  }
  return {
    child,
    output: () => out,
    audit: () => readAudit(auditFile),
    cpuSeconds: () => processCpuSeconds(child.pid as number),
    stop,
  };
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export function readAudit(file: string): Record<string, unknown>[] {
  if (!fs.existsSync(file)) return [];
  const out: Record<string, unknown>[] = [];
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    if (line.trim() === '') continue;
    try {
      out.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // a line being written
    }
  }
  return out;
}

/** utime + stime of a process from /proc (Linux), in seconds. */
export function processCpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // clock ticks, USER_HZ = 100 on Linux
}

/** Ephemeral ports that are free now (bound to port 0 and released). */
export async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: n }, () => new Promise<net.Server>((resolve) => {
      const s = net.createServer();
      s.listen(0, '127.0.0.1', () => resolve(s));
    })),
  );
  const ports = servers.map((s) => (s.address() as net.AddressInfo).port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

export function tempDir(t: { teardown(fn: () => void): void }, prefix = 'portcullis-guard-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export interface ConnectOptions {
  port: number;
  /** The loopback source address to bind. */
  from: string;
  clientId: string;
  username?: string;
  password?: string;
  version?: 4 | 5;
  /** MQTT over WebSocket at this path (plain ws://). */
  ws?: string;
  /** TLS: the CA to verify the server, and a client certificate or a PSK. */
  tls?: { ca: Buffer; cert?: Buffer; key?: Buffer; psk?: { identity: string; key: Buffer } };
  timeoutMs?: number;
}

/**
 * One CONNECT; resolves with the CONNACK code (0: accepted; v3.1.1 return codes for version 4),
 * -1 when the connection closed without one, and how long the answer took. The connection is
 * closed right after (a DISCONNECT first when accepted).
 */
export function mqttConnect(o: ConnectOptions): Promise<{ code: number; ms: number }> {
  const version = o.version ?? 5;
  const packet = mqttPacket.generate(
    {
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion: version,
      clean: true,
      keepalive: 60,
      clientId: o.clientId,
      ...(o.username !== undefined ? { username: o.username } : {}),
      ...(o.password !== undefined ? { password: Buffer.from(o.password) } : {}),
    } as mqttPacket.IConnectPacket,
    { protocolVersion: version },
  );
  const t0 = Date.now();
  if (o.ws !== undefined) return wsConnect(o, packet, t0);
  return new Promise((resolve) => {
    const socket: net.Socket = o.tls ? tls.connect(tlsOptions(o, o.tls)) : net.connect({ host: '127.0.0.1', port: o.port, localAddress: o.from });
    let buf = Buffer.alloc(0);
    let done = false;
    const finish = (code: number) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (code === 0) socket.end(Buffer.from([0xe0, 0x00]));
      else socket.destroy();
      resolve({ code, ms: Date.now() - t0 });
    };
    const timer = setTimeout(() => finish(-1), o.timeoutMs ?? 10_000);
    socket.once(o.tls ? 'secureConnect' : 'connect', () => socket.write(packet));
    socket.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      const code = connackCode(buf);
      if (code !== undefined) finish(code);
    });
    socket.on('error', () => finish(-1));
    socket.on('close', () => finish(-1));
  });
}

/** The CONNACK's code in `buf` (0x20, remaining length, flags, code), undefined while incomplete, -1 for anything else. */
function connackCode(buf: Buffer): number | undefined {
  if (buf.length === 0) return undefined;
  if (buf[0] !== 0x20) return -1;
  let i = 1;
  let len = 0;
  let mult = 1;
  for (; i < buf.length && i < 5; i++) {
    const b = buf[i] as number;
    len += (b & 0x7f) * mult;
    mult *= 128;
    if ((b & 0x80) === 0) break;
  }
  if (i >= buf.length || buf.length < i + 1 + len || len < 2) return undefined;
  return buf[i + 2] as number;
}

function wsConnect(o: ConnectOptions, packet: Buffer, t0: number): Promise<{ code: number; ms: number }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${o.port}${o.ws}`, ['mqtt'], { localAddress: o.from });
    let buf = Buffer.alloc(0);
    let done = false;
    const finish = (code: number) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      ws.terminate();
      resolve({ code, ms: Date.now() - t0 });
    };
    const timer = setTimeout(() => finish(-1), o.timeoutMs ?? 10_000);
    ws.on('open', () => ws.send(packet));
    ws.on('message', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      const code = connackCode(buf);
      if (code !== undefined) finish(code);
    });
    ws.on('error', () => finish(-1));
    ws.on('close', () => finish(-1));
  });
}

function tlsOptions(o: ConnectOptions, t: NonNullable<ConnectOptions['tls']>): tls.ConnectionOptions {
  const options: tls.ConnectionOptions = { host: '127.0.0.1', port: o.port, ca: t.ca, servername: 'localhost' };
  Object.assign(options, { localAddress: o.from }); // passed on to net.connect (not in tls.ConnectionOptions' type)
  if (t.cert !== undefined && t.key !== undefined) Object.assign(options, { cert: t.cert, key: t.key });
  const psk = t.psk;
  if (psk !== undefined) {
    // TLS 1.2 with a plain PSK suite: Node's client offers external PSKs there.
    Object.assign(options, { pskCallback: () => ({ identity: psk.identity, psk: psk.key }), ciphers: 'PSK-AES128-GCM-SHA256', maxVersion: 'TLSv1.2', checkServerIdentity: () => undefined });
  }
  return options;
}

/** Runs `fn` in `n` parallel loops until `ms` have passed; each loop starts its next call when the last one answered. */
export async function loops(n: number, ms: number, fn: (worker: number, i: number) => Promise<unknown>): Promise<number> {
  const end = Date.now() + ms;
  let calls = 0;
  await Promise.all(
    Array.from({ length: n }, async (_, w) => {
      for (let i = 0; Date.now() < end; i++) {
        await fn(w, i);
        calls++;
      }
    }),
  );
  return calls;
}

/** Calls `fn` once a second for `ms`; resolves with every result. */
export async function everySecond<T>(ms: number, fn: (i: number) => Promise<T>): Promise<T[]> {
  const out: Promise<T>[] = [];
  const start = Date.now();
  for (let i = 0; Date.now() - start < ms; i++) {
    out.push(fn(i));
    await delay(Math.max(0, start + (i + 1) * 1000 - Date.now()));
  }
  return Promise.all(out);
}

/** Connect records whose credential check ran (the provider allowed or found the credential wrong). */
export function checksRun(records: Record<string, unknown>[], provider = 'password', username?: string): Record<string, unknown>[] {
  return records.filter((r) => {
    if (r.event !== 'connect' || (username !== undefined && r.username !== username)) return false;
    const verdicts = (r.verdicts ?? []) as { provider: string; kind: string; reason?: number }[];
    return verdicts.some((v) => v.provider === provider && (v.kind === 'allow' || v.reason === 0x86));
  });
}
