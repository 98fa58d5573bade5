/**
 * A real redis-server on loopback for tests (the Debian package; .ci/run installs it). Each call
 * starts its own server in its own temporary folder on a free port, so tests in parallel never
 * share one. `restart()` brings the same server back on the same port and data (a Redis outage
 * that ends); `command()` speaks RESP directly, for CLIENT PAUSE, FLUSHALL, INFO and the like.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export interface RedisServerOptions {
  /** Append-only file with fsync on every write (what a durable deployment runs). Default true. */
  appendOnly?: boolean;
  /** Extra `--name value` arguments. */
  args?: string[];
}

export interface RedisServer {
  readonly host: string;
  readonly port: number;
  readonly url: string;
  readonly dir: string;
  pid(): number | undefined;
  /** One command, answered as text (errors reject). */
  command(...args: string[]): Promise<string>;
  /** SIGSTOP / SIGCONT: a Redis that hangs without closing its sockets. */
  freeze(): void;
  thaw(): void;
  /** Stops it (SIGKILL when `hard`), keeping its data folder. */
  stop(hard?: boolean): Promise<void>;
  /** Starts it again on the same port and data. */
  restart(): Promise<void>;
  /** Stops it and removes its folder. */
  dispose(): Promise<void>;
}

function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** Sends one RESP command and returns the reply as text. */
export function redisCommand(host: string, port: number, args: string[], timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host, port });
    let buf = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`redis ${args[0]}: no reply in ${timeoutMs} ms`));
    }, timeoutMs);
    sock.on('connect', () => sock.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`));
    sock.on('data', (d) => {
      buf += d.toString('utf8');
      const reply = parseReply(buf);
      if (reply === null) return;
      clearTimeout(timer);
      sock.end();
      if (reply.error) reject(new Error(`redis ${args[0]}: ${reply.text}`));
      else resolve(reply.text);
    });
    sock.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/** A complete simple, error, integer or bulk reply; null while incomplete. Arrays are joined with newlines. */
function parseReply(buf: string): { error: boolean; text: string } | null {
  const end = buf.indexOf('\r\n');
  if (end < 0) return null;
  const kind = buf[0];
  const head = buf.slice(1, end);
  if (kind === '+' || kind === ':') return { error: false, text: head };
  if (kind === '-') return { error: true, text: head };
  if (kind === '$') {
    const n = Number(head);
    if (n < 0) return { error: false, text: '' };
    const body = Buffer.from(buf.slice(end + 2), 'utf8');
    if (body.length < n + 2) return null;
    return { error: false, text: body.subarray(0, n).toString('utf8') };
  }
  if (kind === '*') {
    // Good enough for tests: wait for the whole array, then return its raw lines without headers.
    const n = Number(head);
    const lines = buf.slice(end + 2).split('\r\n');
    const values: string[] = [];
    for (let i = 0; i < lines.length - 1 && values.length < n; i++) {
      const line = lines[i] as string;
      if (line.startsWith('$') || line.startsWith('*')) continue;
      values.push(line.replace(/^[+:]/, ''));
    }
    return values.length >= n ? { error: false, text: values.join('\n') } : null;
  }
  return { error: true, text: `unexpected reply ${JSON.stringify(buf.slice(0, 40))}` };
}

export async function startRedis(options: RedisServerOptions = {}): Promise<RedisServer> {
  const host = '127.0.0.1';
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-redis-'));
  const port = await freePort(host);
  const appendOnly = options.appendOnly ?? true;
  const args = [
    '--bind', host, '--port', String(port), '--dir', dir, '--save', '',
    '--appendonly', appendOnly ? 'yes' : 'no', '--appendfsync', 'always',
    '--protected-mode', 'yes', '--daemonize', 'no', '--logfile', path.join(dir, 'redis.log'),
    ...(options.args ?? []),
  ];
  let child: ChildProcess | null = null;

  const launch = async (): Promise<void> => {
    const c = spawn('redis-server', args, { stdio: 'ignore' });
    child = c;
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (c.exitCode !== null) throw new Error(`redis-server exited with ${c.exitCode} (log: ${dir}/redis.log)`);
      try {
        if ((await redisCommand(host, port, ['PING'], 1000)) === 'PONG') return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error('redis-server did not answer PING within 10 s');
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const stop = (hard = false): Promise<void> =>
    new Promise((resolve) => {
      const c = child;
      child = null;
      if (c === null || c.exitCode !== null || c.signalCode !== null) return resolve();
      c.once('exit', () => resolve());
      c.kill(hard ? 'SIGKILL' : 'SIGTERM');
    });

  await launch();
  return {
    host,
    port,
    url: `redis://${host}:${port}`,
    dir,
    pid: () => child?.pid,
    command: (...a) => redisCommand(host, port, a),
    freeze: () => child?.kill('SIGSTOP'),
    thaw: () => child?.kill('SIGCONT'),
    stop,
    restart: launch,
    dispose: async () => {
      child?.kill('SIGCONT');
      await stop(true);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
