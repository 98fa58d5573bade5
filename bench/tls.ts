/**
 * mTLS benchmark, Portcullis vs Mosquitto (`require_certificate true`), both in child processes
 * on loopback with certificates from `portcullis pki`:
 *  1. handshakes per second: TLS handshake with a client certificate + CONNECT/CONNACK, then close,
 *     from C concurrent loops for D seconds;
 *  2. memory per idle mTLS connection: broker RSS (from /proc) before and after N connections.
 *
 *   npm run bench:tls -- [--seconds 5] [--concurrency 16] [--connections 5000] [--out bench/results/tls.md]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { initPki, issueClient, issueServer } from '../src/pki/ca.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const opt = (name: string, def: number) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : def;
};
const outIndex = args.indexOf('--out');
const outFile = outIndex >= 0 ? (args[outIndex + 1] as string) : path.join(root, 'bench', 'results', 'tls.md');
const SECONDS = opt('seconds', 5);
const CONCURRENCY = opt('concurrency', 16);
const CONNECTIONS = opt('connections', 5000);
const MOSQUITTO = process.env.MOSQUITTO ?? '/usr/sbin/mosquitto';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-bench-tls-'));
const pkiDir = path.join(work, 'pki');
initPki({ dir: pkiDir });
issueServer({ dir: pkiDir, dns: ['localhost'], ip: ['127.0.0.1'] });
const client = issueClient({ dir: pkiDir, cn: 'bench-device' });
const files = {
  ca: path.join(pkiDir, 'ca-chain.crt'),
  cert: path.join(pkiDir, 'server.crt'),
  key: path.join(pkiDir, 'private', 'server.key'),
};
const clientTls = { ca: fs.readFileSync(files.ca), cert: fs.readFileSync(client.cert), key: fs.readFileSync(client.key), servername: 'localhost' };

function connectPacket(clientId: string): Buffer {
  const id = Buffer.from(clientId);
  const body = Buffer.concat([Buffer.from([0, 4, 0x4d, 0x51, 0x54, 0x54, 4, 0x02, 0, 60]), Buffer.from([id.length >> 8, id.length & 0xff]), id]);
  return Buffer.concat([Buffer.from([0x10, body.length]), body]);
}

let seq = 0;
/** TLS handshake with a client certificate, CONNECT, wait for a successful CONNACK. */
function mqttsConnect(port: number): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ...clientTls }, () => socket.write(connectPacket(`b${process.pid}-${++seq}`)));
    socket.once('data', (d: Buffer) => {
      if (d[0] === 0x20 && d[3] === 0) resolve(socket);
      else reject(new Error(`CONNACK refused: ${d.toString('hex')}`));
    });
    socket.once('error', reject);
    socket.once('close', () => reject(new Error('closed before CONNACK')));
  });
}

async function handshakeRate(port: number): Promise<number> {
  let done = 0;
  const end = Date.now() + SECONDS * 1000;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (Date.now() < end) {
        const s = await mqttsConnect(port);
        done++;
        s.destroy();
      }
    }),
  );
  return done / SECONDS;
}

function rssKb(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
}

async function idleMemory(port: number, pid: number): Promise<{ perConnKb: number; opened: number; beforeMb: number; afterMb: number }> {
  await new Promise((r) => setTimeout(r, 500));
  const before = rssKb(pid);
  const sockets: tls.TLSSocket[] = [];
  for (let i = 0; i < CONNECTIONS; i += 50) {
    const batch = await Promise.all(Array.from({ length: Math.min(50, CONNECTIONS - i) }, () => mqttsConnect(port)));
    sockets.push(...batch);
  }
  await new Promise((r) => setTimeout(r, 2000));
  const after = rssKb(pid);
  for (const s of sockets) s.destroy();
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

async function startPortcullis(port: number): Promise<ChildProcess> {
  const config = path.join(work, 'portcullis.yaml');
  fs.writeFileSync(
    config,
    JSON.stringify({
      listeners: [{ name: 'mtls', type: 'tls', host: '127.0.0.1', port, cert: files.cert, key: files.key, ca: files.ca, requireClientCert: true, auth: ['certificate'] }],
      authorizers: ['allow-all'],
      audit: { sink: 'none' },
      log: { level: 'warn' },
      limits: { maxSessionExpiry: 0 },
    }),
  );
  const child = spawn(process.execPath, [path.join(root, 'bin', 'portcullis.js'), 'start', '--config', config], { stdio: ['ignore', 'ignore', 'inherit'] });
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
      'tls_version tlsv1.2',
      '',
    ].join('\n'),
  );
  const child = spawn(MOSQUITTO, ['-c', config], { stdio: ['ignore', 'ignore', 'inherit'] });
  await waitForPort(port);
  return child;
}

async function measure(name: string, start: (port: number) => Promise<ChildProcess>) {
  const port = await freePort();
  const child = await start(port);
  try {
    await handshakeRate(port); // warm-up
    const rate = await handshakeRate(port);
    const mem = await idleMemory(port, child.pid as number);
    process.stderr.write(`${name}: ${rate.toFixed(0)} handshakes/s, ${mem.perConnKb.toFixed(1)} KiB per idle connection (${mem.opened} open)\n`);
    return { name, rate, ...mem };
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
  }
}

const portcullis = await measure('portcullis', startPortcullis);
const mosquitto = fs.existsSync(MOSQUITTO) ? await measure('mosquitto', startMosquitto) : null;
const ratio = mosquitto ? portcullis.rate / mosquitto.rate : NaN;
const memRatio = mosquitto ? portcullis.perConnKb / mosquitto.perConnKb : NaN;
const fmt = (r: typeof portcullis) => `| ${r.name} | ${r.rate.toFixed(0)} | ${r.perConnKb.toFixed(1)} | ${r.opened} | ${r.beforeMb.toFixed(0)} → ${r.afterMb.toFixed(0)} |`;
const md = [
  '# mTLS benchmark',
  '',
  `Run: ${new Date().toISOString()}, Node ${process.version}, ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? 'unknown'}), loopback.`,
  `Handshakes: TLS 1.3 with an RSA-2048 client certificate, CONNECT/CONNACK, close; ${CONCURRENCY} concurrent loops for ${SECONDS} s after a warm-up.`,
  `Memory: broker RSS before and after ${CONNECTIONS} idle mTLS connections (MQTT 3.1.1, keep-alive 60 s). The load generator shares the machine's CPUs.`,
  '',
  '| Broker | mTLS handshakes + CONNACK per second | KiB per idle mTLS connection | connections | RSS MiB |',
  '|---|---|---|---|---|',
  fmt(portcullis),
  ...(mosquitto ? [fmt(mosquitto)] : ['| mosquitto | not installed | | | |']),
  '',
  mosquitto
    ? `Portcullis / Mosquitto: handshake rate ${ratio.toFixed(2)}× (target ≥ 0.8×), memory per connection ${memRatio.toFixed(2)}× (target ≤ 3×).`
    : 'Mosquitto not found: no comparison.',
  '',
];
fs.mkdirSync(path.dirname(outFile), { recursive: true });
fs.writeFileSync(outFile, md.join('\n'));
process.stdout.write(md.join('\n'));
fs.rmSync(work, { recursive: true, force: true });
