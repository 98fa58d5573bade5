/**
 * A real redis-server on loopback for tests (the Debian package; .ci/run installs it). Each call
 * starts its own server in its own temporary folder on a free port, so tests in parallel never
 * share one. `restart()` brings the same server back on the same port and data (a Redis outage
 * that ends); `command()` speaks RESP directly, for CLIENT PAUSE, FLUSHALL, INFO and the like.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export interface RedisServerOptions {
  /** Append-only file with fsync on every write (what a durable deployment runs). Default true. */
  appendOnly?: boolean;
  /** Extra `--name value` arguments. */
  args?: string[];
  /** requirepass (and masterauth, for a replica); `command()` logs in with it. */
  password?: string;
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

/** A port free on `host` now (redis cannot listen on port 0 and report the port it got). */
export function freePort(host = '127.0.0.1'): Promise<number> {
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
export function redisCommand(host: string, port: number, args: string[], timeoutMs = 5000, password?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host, port });
    let buf = '';
    let authorised = password === undefined;
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`redis ${args[0]}: no reply in ${timeoutMs} ms`));
    }, timeoutMs);
    const encode = (a: string[]) => `*${a.length}\r\n${a.map((x) => `$${Buffer.byteLength(x)}\r\n${x}\r\n`).join('')}`;
    sock.on('connect', () => sock.write((password !== undefined ? encode(['AUTH', password]) : '') + encode(args)));
    sock.on('data', (d) => {
      buf += d.toString('utf8');
      if (!authorised) {
        // The AUTH reply comes first: +OK, or an error that is the answer.
        if (buf.startsWith('+OK\r\n')) {
          authorised = true;
          buf = buf.slice(5);
        } else if (buf.includes('\r\n')) {
          authorised = true;
        } else return;
      }
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
    ...(options.password !== undefined ? ['--requirepass', options.password, '--masterauth', options.password] : []),
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
        if ((await redisCommand(host, port, ['PING'], 1000, options.password)) === 'PONG') return;
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
    command: (...a) => redisCommand(host, port, a, 5000, options.password),
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

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, check: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    if (await check().catch(() => false)) return;
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await delay(50);
  }
}

/** Without the default 5 s wait before a full sync, so a replica (and a failed-over old master) catches up at once. */
export const FAST_SYNC = ['--repl-diskless-sync-delay', '0'];

export interface SentinelGroup {
  readonly name: string;
  /** The servers, the master first at the start; `master()` says which is the master now. */
  readonly servers: RedisServer[];
  readonly sentinels: { host: string; port: number; pid: number | undefined }[];
  /** The master's port, as the (first) sentinel names it now. */
  masterPort(): Promise<number>;
  /** Asks a sentinel for a failover and waits until the sentinel names another master. */
  failover(): Promise<void>;
  /** A command to a sentinel. */
  sentinel(...args: string[]): Promise<string>;
  dispose(): Promise<void>;
}

/**
 * A master, `replicas` replicas and `sentinels` sentinels (quorum: a majority) on loopback, with
 * Sentinel timings short enough for a test (down after 1 s, failover timeout 3 s). Every process is
 * stopped by its own PID in `dispose()`.
 */
export async function startSentinelGroup(options: { replicas?: number; sentinels?: number; name?: string; args?: string[]; password?: string; sentinelPassword?: string } = {}): Promise<SentinelGroup> {
  const auth = options.password !== undefined ? { password: options.password } : {};
  const sentinelAuth = options.sentinelPassword;
  const name = options.name ?? 'mymaster';
  const host = '127.0.0.1';
  const servers: RedisServer[] = [];
  const sentinelProcs: ChildProcess[] = [];
  const sentinels: { host: string; port: number; pid: number | undefined }[] = [];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-sentinel-'));
  const dispose = async () => {
    await Promise.all(
      sentinelProcs.map(
        (c) =>
          new Promise<void>((resolve) => {
            if (c.exitCode !== null || c.signalCode !== null) return resolve();
            c.once('exit', () => resolve());
            c.kill('SIGKILL');
          }),
      ),
    );
    await Promise.all(servers.map((s) => s.dispose()));
    fs.rmSync(dir, { recursive: true, force: true });
  };
  try {
    const master = await startRedis({ ...auth, args: [...FAST_SYNC, ...(options.args ?? [])] });
    servers.push(master);
    for (let i = 0; i < (options.replicas ?? 1); i++) {
      const replica = await startRedis({ ...auth, args: ['--replicaof', host, String(master.port), ...FAST_SYNC, ...(options.args ?? [])] });
      servers.push(replica);
      await until('the replica syncs', async () => /master_link_status:up/.test(await replica.command('INFO', 'replication')));
    }
    const count = options.sentinels ?? 1;
    const quorum = Math.floor(count / 2) + 1;
    for (let i = 0; i < count; i++) {
      const port = await freePort(host);
      const conf = path.join(dir, `sentinel-${i}.conf`);
      fs.writeFileSync(
        conf,
        [
          `port ${port}`,
          `bind ${host}`,
          `dir ${dir}`,
          `logfile ${path.join(dir, `sentinel-${i}.log`)}`,
          `sentinel monitor ${name} ${host} ${master.port} ${quorum}`,
          ...servers.slice(1).map((r) => `sentinel known-replica ${name} ${host} ${r.port}`),
          `sentinel down-after-milliseconds ${name} 1000`,
          `sentinel failover-timeout ${name} 3000`,
          `sentinel parallel-syncs ${name} 1`,
          ...(options.password !== undefined ? [`sentinel auth-pass ${name} ${options.password}`] : []),
          ...(sentinelAuth !== undefined ? [`requirepass ${sentinelAuth}`] : []),
          '',
        ].join('\n'),
      );
      const child = spawn('redis-server', [conf, '--sentinel'], { stdio: 'ignore' });
      sentinelProcs.push(child);
      sentinels.push({ host, port, pid: child.pid });
      await until('the sentinel names the master', async () => (await redisCommand(host, port, ['SENTINEL', 'get-master-addr-by-name', name], 500, sentinelAuth)).includes(String(master.port)));
    }
    if (count > 1) {
      // Sentinels find each other through the master (hello messages every 2 s): wait until each knows the others.
      await until('the sentinels know each other', async () => {
        for (const s of sentinels) {
          const info = await redisCommand(host, s.port, ['INFO', 'sentinel'], 500, sentinelAuth);
          if (!new RegExp(`sentinels=${count}\\b`).test(info)) return false;
        }
        return true;
      }, 15_000);
    }
  } catch (err) {
    await dispose();
    throw err;
  }
  const first = sentinels[0] as { port: number };
  const sentinel = (...args: string[]) => redisCommand(host, first.port, args, 5000, sentinelAuth);
  const masterPort = async () => Number((await sentinel('SENTINEL', 'get-master-addr-by-name', name)).split('\n')[1]);
  return {
    name,
    servers,
    sentinels,
    masterPort,
    sentinel,
    failover: async () => {
      const before = await masterPort();
      // A replica is chosen only once the sentinel has its INFO: retried while it answers NOGOODSLAVE.
      await until('the sentinel accepts the failover', async () => (await sentinel('SENTINEL', 'FAILOVER', name)) === 'OK');
      await until('the sentinel names a new master', async () => (await masterPort()) !== before);
    },
    dispose,
  };
}

export interface RedisClusterServers {
  readonly nodes: RedisServer[];
  /** Seed nodes as the configuration lists them. */
  readonly seeds: { host: string; port: number }[];
  dispose(): Promise<void>;
}

/**
 * A Redis Cluster of `masters` masters (no replicas) on loopback, made with `redis-cli --cluster
 * create` (redis-tools, which the redis-server package depends on). Each node gets its cluster bus
 * port picked free too: the default (port + 10000) is out of range for ports above 55535.
 */
export async function startRedisCluster(masters = 3): Promise<RedisClusterServers> {
  const nodes: RedisServer[] = [];
  const dispose = async () => {
    await Promise.all(nodes.map((n) => n.dispose()));
  };
  try {
    for (let i = 0; i < masters; i++) {
      const busPort = await freePort();
      nodes.push(await startRedis({ appendOnly: false, args: ['--cluster-enabled', 'yes', '--cluster-node-timeout', '2000', '--cluster-port', String(busPort)] }));
    }
    const made = spawnSync('redis-cli', ['--cluster', 'create', ...nodes.map((n) => `${n.host}:${n.port}`), '--cluster-replicas', '0', '--cluster-yes'], { encoding: 'utf8', timeout: 20_000 });
    if (made.status !== 0) throw new Error(`redis-cli --cluster create failed: ${made.stderr || made.stdout}`);
    for (const n of nodes) await until('the cluster is ok on every node', async () => /cluster_state:ok/.test(await n.command('CLUSTER', 'INFO')));
  } catch (err) {
    await dispose();
    throw err;
  }
  return { nodes, seeds: nodes.map((n) => ({ host: n.host, port: n.port })), dispose };
}
