/**
 * mTLS benchmark, Portcullis vs Mosquitto (`require_certificate true`), both in child processes
 * on loopback with the same certificates from `portcullis pki`:
 *  1. handshakes: full TLS handshake with a client certificate (no session resumption) +
 *     CONNECT/CONNACK, then close, from C concurrent loops for D seconds. Reported per broker as
 *     handshakes per second and as broker CPU milliseconds per handshake (user+system time from
 *     /proc/<pid>/stat), which is much less sensitive to other load on the machine than the rate.
 *     The brokers run alternately, R runs each; medians with min–max.
 *  2. memory per idle mTLS connection: broker RSS (from /proc) before and after N connections.
 *
 *   npm run bench:tls -- [--runs 5] [--seconds 5] [--concurrency 16] [--connections 5000]
 *                        [--key-type ec|rsa] [--no-pin] [--no-memory] [--profile DIR] [--baseline DIR [--baseline-label TEXT]]
 *                        [--out bench/results/tls.md]
 *
 * --baseline DIR also runs the Portcullis in another checkout (with its node_modules), alternately
 * with this one and with the same certificates, so before/after figures share the same conditions.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { DEFAULT_KEY_TYPE, type KeyType, initPki, issueClient, issueServer } from '../src/pki/ca.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const opt = (name: string, def: number) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : def;
};
const optString = (name: string, def: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? (args[i + 1] as string) : def;
};
const outFile = optString('out', path.join(root, 'bench', 'results', 'tls.md'));
const RUNS = opt('runs', 5);
const SECONDS = opt('seconds', 5);
const CONCURRENCY = opt('concurrency', 16);
const CONNECTIONS = opt('connections', 5000);
const KEY_TYPE = optString('key-type', DEFAULT_KEY_TYPE) as KeyType;
const PIN = !args.includes('--no-pin');
const MEMORY = !args.includes('--no-memory');
/** Another Portcullis checkout (e.g. the previous commit) run alternately with this one, for before/after figures. */
const BASELINE = optString('baseline', '');
const BASELINE_LABEL = optString('baseline-label', 'baseline');
/** Writes a V8 CPU profile of the Portcullis broker into this directory (`node --cpu-prof`). */
const PROFILE = optString('profile', '');
const MOSQUITTO = process.env.MOSQUITTO ?? '/usr/sbin/mosquitto';
const TICKS = 100; // USER_HZ: /proc/<pid>/stat counts CPU time in 1/100 s on Linux
if (KEY_TYPE !== 'ec' && KEY_TYPE !== 'rsa') throw new Error('--key-type must be ec or rsa');

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-bench-tls-'));
const pkiDir = path.join(work, 'pki');
initPki({ dir: pkiDir, keyType: KEY_TYPE });
issueServer({ dir: pkiDir, dns: ['localhost'], ip: ['127.0.0.1'] });
const client = issueClient({ dir: pkiDir, cn: 'bench-device' });
const files = {
  ca: path.join(pkiDir, 'ca-chain.crt'),
  cert: path.join(pkiDir, 'server.crt'),
  key: path.join(pkiDir, 'private', 'server.key'),
};
const clientTls = { ca: fs.readFileSync(files.ca), cert: fs.readFileSync(client.cert), key: fs.readFileSync(client.key), servername: 'localhost' };
// One client secure context for every connection, as a device would have: the generator then
// spends its CPU on the handshake, not on parsing PEM files for each connection.
const clientContext = tls.createSecureContext(clientTls);

/** Broker on CPU 0, this process (the load generator) on CPU 1, when taskset and 2 CPUs exist. */
function pinGenerator(): string {
  if (!PIN) return 'not pinned (--no-pin)';
  if (os.availableParallelism() < 2 || spawnSync('taskset', ['-V']).status !== 0) return 'not pinned (needs taskset and 2 CPUs)';
  const r = spawnSync('taskset', ['-a', '-p', '-c', '1', String(process.pid)]);
  return r.status === 0 ? 'broker pinned to CPU 0, load generator to CPU 1 (taskset)' : 'not pinned (taskset failed)';
}
const pinning = pinGenerator();
const pinned = (cmd: string, argv: string[]): [string, string[]] => (pinning.startsWith('broker pinned') ? ['taskset', ['-c', '0', cmd, ...argv]] : [cmd, argv]);

function connectPacket(clientId: string): Buffer {
  const id = Buffer.from(clientId);
  const body = Buffer.concat([Buffer.from([0, 4, 0x4d, 0x51, 0x54, 0x54, 4, 0x02, 0, 60]), Buffer.from([id.length >> 8, id.length & 0xff]), id]);
  return Buffer.concat([Buffer.from([0x10, body.length]), body]);
}

let seq = 0;
let lastProtocol = '';
/** TLS handshake with a client certificate, CONNECT, wait for a successful CONNACK. */
function mqttsConnect(port: number): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, secureContext: clientContext, servername: 'localhost' }, () => {
      lastProtocol = socket.getProtocol() ?? '';
      socket.write(connectPacket(`b${process.pid}-${++seq}`));
    });
    socket.once('data', (d: Buffer) => {
      if (d[0] === 0x20 && d[3] === 0) resolve(socket);
      else reject(new Error(`CONNACK refused: ${d.toString('hex')}`));
    });
    socket.once('error', reject);
    socket.once('close', () => reject(new Error('closed before CONNACK')));
    socket.setTimeout(30_000, () => socket.destroy(new Error('no CONNACK within 30 s')));
  });
}

/** CPU seconds (user+system) of a process so far. */
function cpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / TICKS; // utime, stime (fields 14 and 15)
}

interface RateRun {
  rate: number;
  /** Connections that failed (reset, refused, timed out) instead of reaching CONNACK. */
  failed: number;
  brokerMsPerHandshake: number;
  brokerCpu: number;
  generatorCpu: number;
}

async function handshakeRun(port: number, pid: number, seconds: number): Promise<RateRun> {
  let done = 0;
  let failed = 0;
  const cpu0 = cpuSeconds(pid);
  const gen0 = process.cpuUsage();
  const t0 = performance.now();
  const end = Date.now() + seconds * 1000;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (Date.now() < end) {
        try {
          const s = await mqttsConnect(port);
          done++;
          s.destroy();
        } catch {
          failed++;
        }
      }
    }),
  );
  const elapsed = (performance.now() - t0) / 1000;
  const broker = cpuSeconds(pid) - cpu0;
  const gen = process.cpuUsage(gen0);
  return { rate: done / elapsed, failed, brokerMsPerHandshake: (broker * 1000) / done, brokerCpu: broker / elapsed, generatorCpu: (gen.user + gen.system) / 1e6 / elapsed };
}

function rssKb(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
}

async function idleMemory(port: number, pid: number): Promise<{ perConnKb: number; opened: number; beforeMb: number; afterMb: number }> {
  await new Promise((r) => setTimeout(r, 1000));
  const before = rssKb(pid);
  const sockets: tls.TLSSocket[] = [];
  for (let i = 0; i < CONNECTIONS; i += 50) {
    const batch = await Promise.all(Array.from({ length: Math.min(50, CONNECTIONS - i) }, () => mqttsConnect(port)));
    sockets.push(...batch);
  }
  await new Promise((r) => setTimeout(r, 2000));
  const after = rssKb(pid);
  for (const s of sockets) s.destroy();
  await new Promise((r) => setTimeout(r, 1000));
  return { perConnKb: (after - before) / sockets.length, opened: sockets.length, beforeMb: before / 1024, afterMb: after / 1024 };
}

function waitForPort(port: number, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve();
      });
      s.once('error', () => (Date.now() > end ? reject(new Error(`port ${port} never opened`)) : setTimeout(attempt, 100)));
    };
    attempt();
  });
}

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

async function startPortcullis(port: number, tree = root): Promise<ChildProcess> {
  const config = path.join(work, `portcullis-${port}.yaml`);
  fs.writeFileSync(
    config,
    JSON.stringify({
      listeners: [{ name: 'mtls', type: 'tls', host: '127.0.0.1', port, cert: files.cert, key: files.key, ca: files.ca, requireClientCert: true, auth: ['certificate'] }],
      authorizers: ['allow-all'],
      audit: { sink: 'none' },
      log: { level: 'warn' },
      limits: { maxSessionExpiry: 0 },
      // The generator is one loopback address opening hundreds of connections per second:
      // exempt it from the per-address connect rate and caps (Mosquitto has none by default).
      ...(fs.existsSync(path.join(tree, 'src', 'admission')) ? { admission: { exempt: ['127.0.0.1/32'] } } : {}),
    }),
  );
  const [cmd, argv] = pinned(process.execPath, [...(PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${PROFILE}`] : []), path.join(tree, 'bin', 'portcullis.js'), 'start', '--config', config]);
  const child = spawn(cmd, argv, { stdio: ['ignore', 'ignore', 'inherit'] });
  await waitForPort(port);
  return child;
}

async function startMosquitto(port: number): Promise<ChildProcess> {
  const config = path.join(work, 'mosquitto.conf');
  fs.writeFileSync(
    config,
    [
      'per_listener_settings false',
      ...(process.getuid?.() === 0 ? ['user root'] : []), // as root, mosquitto would drop to a user that cannot read the 0600 key
      'allow_anonymous true',
      'persistence false',
      'log_type none',
      `listener ${port} 127.0.0.1`,
      `cafile ${files.ca}`,
      `certfile ${files.cert}`,
      `keyfile ${files.key}`,
      'require_certificate true',
      'tls_version tlsv1.2', // Mosquitto 2.0: TLS 1.2 or newer, as Portcullis
      '',
    ].join('\n'),
  );
  const [cmd, argv] = pinned(MOSQUITTO, ['-c', config]);
  const child = spawn(cmd, argv, { stdio: ['ignore', 'ignore', 'inherit'] });
  await waitForPort(port);
  return child;
}

interface Running {
  name: string;
  port: number;
  child: ChildProcess;
  runs: RateRun[];
  protocol: string;
  mem: Awaited<ReturnType<typeof idleMemory>> | undefined;
}

async function start(name: string, starter: (port: number) => Promise<ChildProcess>): Promise<Running> {
  const port = await freePort();
  const child = await starter(port);
  children.add(child);
  process.stderr.write(`${name}: pid ${child.pid}, port ${port}\n`);
  // Memory first, on the fresh process: after thousands of handshakes the allocators hold freed
  // memory that new connections reuse, which would hide part of their cost.
  await handshakeRun(port, child.pid as number, 1); // warm-up (JIT, caches)
  const mem = MEMORY ? await idleMemory(port, child.pid as number) : undefined;
  if (mem) process.stderr.write(`${name}: ${mem.perConnKb.toFixed(1)} KiB per idle connection (${mem.opened} open)\n`);
  await handshakeRun(port, child.pid as number, 2); // warm-up (JIT, caches)
  return { name, port, child, runs: [], protocol: lastProtocol, mem };
}

async function stop(b: Running): Promise<void> {
  b.child.kill('SIGTERM');
  await new Promise((r) => b.child.once('exit', r));
  children.delete(b.child);
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};
const stats = (xs: number[]) => ({ median: median(xs), min: Math.min(...xs), max: Math.max(...xs) });

const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});
const brokers: Running[] = [await start('portcullis', startPortcullis)];
if (BASELINE) brokers.push(await start(`portcullis (${BASELINE_LABEL})`, (port) => startPortcullis(port, path.resolve(BASELINE))));
if (fs.existsSync(MOSQUITTO)) brokers.push(await start('mosquitto', startMosquitto));
else process.stderr.write(`${MOSQUITTO} not found: no comparison\n`);

// Alternate the brokers run by run, each round starting with the next one, so a burst of
// other load on the machine (or the cost of following another broker) hits all of them.
for (let i = 0; i < RUNS; i++) {
  for (const b of [...brokers.slice(i % brokers.length), ...brokers.slice(0, i % brokers.length)]) {
    const r = await handshakeRun(b.port, b.child.pid as number, SECONDS);
    b.runs.push(r);
    process.stderr.write(
      `${b.name} run ${i + 1}: ${r.rate.toFixed(0)} handshakes/s${r.failed ? ` (${r.failed} failed)` : ''}, broker ${r.brokerMsPerHandshake.toFixed(2)} ms CPU per handshake ` +
        `(broker ${(r.brokerCpu * 100).toFixed(0)} %, generator ${(r.generatorCpu * 100).toFixed(0)} % of a CPU)\n`,
    );
  }
}
for (const b of brokers) await stop(b);

const range = (s: { median: number; min: number; max: number }, digits: number) => `${s.median.toFixed(digits)} (${s.min.toFixed(digits)}–${s.max.toFixed(digits)})`;
const summary = brokers.map((b) => ({
  name: b.name,
  protocol: b.protocol,
  rate: stats(b.runs.map((r) => r.rate)),
  ms: stats(b.runs.map((r) => r.brokerMsPerHandshake)),
  brokerCpu: stats(b.runs.map((r) => r.brokerCpu * 100)),
  generatorCpu: stats(b.runs.map((r) => r.generatorCpu * 100)),
  mem: b.mem,
}));
const p = summary.find((s) => s.name === 'portcullis');
const m = summary.find((s) => s.name === 'mosquitto');
const line = (s: (typeof summary)[number]) =>
  `| ${s.name} | ${range(s.rate, 0)} | ${range(s.ms, 2)} | ${range(s.brokerCpu, 0)} | ${range(s.generatorCpu, 0)} | ${s.mem ? s.mem.perConnKb.toFixed(1) : '–'} | ${s.mem ? `${s.mem.beforeMb.toFixed(0)} → ${s.mem.afterMb.toFixed(0)}` : '–'} |`;
const ratios =
  p && m
    ? [
        `Portcullis / Mosquitto: broker CPU per handshake ${(p.ms.median / m.ms.median).toFixed(2)}× (target ≤ 1.25×), ` +
          `handshake rate ${(p.rate.median / m.rate.median).toFixed(2)}× (target ≥ 0.8×)` +
          (p.mem && m.mem ? `, memory per idle connection ${(p.mem.perConnKb / m.mem.perConnKb).toFixed(2)}× (target ≤ 3×, later ≤ 2×).` : '.'),
      ]
    : ['Mosquitto not found: no comparison.'];
const md = [
  '# mTLS benchmark',
  '',
  `Run: ${new Date().toISOString()}, Node ${process.version}, ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? 'unknown'}), loopback; ${pinning}.`,
  `Certificates: one \`portcullis pki\` CA, server and client certificate with ${KEY_TYPE === 'ec' ? 'ECDSA P-256' : 'RSA-2048'} keys, the same files for both brokers.`,
  `Handshakes: ${p?.protocol ?? '?'} full handshakes (the client never resumes a session) with a client certificate, CONNECT/CONNACK (MQTT 3.1.1), close; ` +
    `${CONCURRENCY} concurrent loops for ${SECONDS} s, ${RUNS} runs per broker, alternating between brokers (each round starts with the next one), after a 2 s warm-up. ` +
    'Median (min–max) of the runs. Broker CPU per handshake is user+system time of the broker process (/proc/<pid>/stat) divided by completed handshakes.',
  ...(MEMORY ? [`Memory: broker RSS before and after ${CONNECTIONS} idle mTLS connections (MQTT 3.1.1, keep-alive 60 s), measured once per broker on the freshly started process after a 1 s warm-up.`] : []),
  '',
  '| Broker | handshakes + CONNACK / s | broker CPU ms / handshake | broker CPU % | generator CPU % | KiB per idle mTLS connection | RSS MiB |',
  '|---|---|---|---|---|---|---|',
  ...summary.map(line),
  '',
  ...ratios,
  '',
];
fs.mkdirSync(path.dirname(outFile), { recursive: true });
fs.writeFileSync(outFile, md.join('\n'));
process.stdout.write(md.join('\n'));
fs.rmSync(work, { recursive: true, force: true });
