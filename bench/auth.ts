/**
 * Authentication benchmark (`npm run bench:auth`): MQTT connects per second over loopback for
 * each provider (anonymous as the baseline, static-users, password without and with the
 * credential cache, JWT with a static key without and with the verified-token cache), and the
 * cost of one JWT verification in isolation. Rows are interleaved over BENCH_RUNS rounds (default
 * 3) and reported as medians with min–max. Writes bench/results/auth.md.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { exportSPKI, generateKeyPair, SignJWT } from 'jose';
import mqtt from 'mqtt';
import { createBroker, MemoryAuditSink } from '../src/index.ts';
import { hashPassword } from '../src/auth/password/hash.ts';
import { JwtAuthenticator } from '../src/auth/jwt/provider.ts';
import { parseConfig } from '../src/config/schema.ts';
import { silentLogger } from '../src/log.ts';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const PARALLEL = Number(process.env.BENCH_PARALLEL ?? 8);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-bench-auth-'));

async function connectsPerSecond(auth: unknown[], creds: { username?: string; password?: string | Buffer }, extra: Record<string, unknown> = {}): Promise<number> {
  const broker = createBroker(
    { listeners: [{ name: 'b', type: 'tcp', host: '127.0.0.1', port: 0, auth: auth as never }], authorizers: ['allow-all'], sys: { intervalSeconds: 0 }, store: { type: 'memory' }, authGuard: { enabled: false }, admission: { exempt: ['127.0.0.1/32'] }, ...extra },
    { logger: silentLogger(), audit: new MemoryAuditSink() },
  );
  const { listeners } = await broker.start();
  const port = listeners[0]!.port;
  let n = 0;
  let i = 0;
  const end = Date.now() + SECONDS * 1000;
  const worker = async () => {
    while (Date.now() < end) {
      await new Promise<void>((resolve, reject) => {
        const c = mqtt.connect({ host: '127.0.0.1', port, clientId: `b-${i++}`, reconnectPeriod: 0, protocolVersion: 5, ...creds });
        c.once('connect', () => {
          n++;
          c.end(true, () => resolve());
        });
        c.once('error', reject);
      });
    }
  };
  // No separate warm-up: with the credential cache on, only the first connect pays argon2.
  await Promise.all(Array.from({ length: PARALLEL }, worker));
  await broker.stop();
  return n / SECONDS;
}

async function main() {
  const pwFile = path.join(dir, 'passwords');
  fs.writeFileSync(pwFile, `bench:${await hashPassword('bench-pw', { memoryKiB: 19456, timeCost: 2, parallelism: 1 })}\n`);
  const { publicKey, privateKey } = await generateKeyPair('RS256');
  const pem = path.join(dir, 'k.pem');
  fs.writeFileSync(pem, await exportSPKI(publicKey));
  const token = await new SignJWT({ sub: 'bench' }).setProtectedHeader({ alg: 'RS256' }).setIssuer('iss').setAudience('aud').setExpirationTime('1h').sign(privateKey);
  const jwtConf = { provider: 'jwt', algorithms: ['RS256'], issuer: 'iss', audience: 'aud', keyFiles: [pem] };

  const scenarios: [string, () => Promise<number>][] = [
    ['anonymous (baseline)', () => connectsPerSecond(['anonymous'], {})],
    ['static-users', () => connectsPerSecond([{ provider: 'static-users', users: [{ username: 'bench', password: 'bench-pw' }] }], { username: 'bench', password: 'bench-pw' })],
    ['password (argon2id m=19 MiB t=2 p=1), no cache', () => connectsPerSecond([{ provider: 'password', file: pwFile, watch: false }], { username: 'bench', password: 'bench-pw' })],
    ['password, credential cache on (warm)', () => connectsPerSecond([{ provider: 'password', file: pwFile, watch: false }], { username: 'bench', password: 'bench-pw' }, { credentialCache: { enabled: true } })],
    ['jwt (RS256, static key), token cache off (default)', () => connectsPerSecond([jwtConf], { username: 'bench', password: token })],
    ['jwt (RS256, static key), token cache on (warm)', () => connectsPerSecond([{ ...jwtConf, cache: { enabled: true } }], { username: 'bench', password: token })],
  ];
  const samples = scenarios.map(() => [] as number[]);
  for (let r = 0; r < RUNS; r++) {
    for (let k = 0; k < scenarios.length; k++) samples[k]!.push(await (scenarios[k]![1])());
  }
  const rows: [string, number, number[]][] = scenarios.map(([name], k) => [name, median(samples[k]!), samples[k]!]);

  const jwt = new JwtAuthenticator(parseConfig({ listeners: [{ type: 'tcp', auth: [{ ...jwtConf, cache: { enabled: true } } as never] }] }).listeners[0]!.auth[0] as never);
  await jwt.init();
  const req = { clientId: 'c', username: 'bench', password: Buffer.from(token), protocolVersion: 5 as const, peer: { listener: 'b', transport: 'tcp' as const, remoteAddress: '127.0.0.1', remotePort: 1 } };
  const N = 2000;
  const cold = new JwtAuthenticator(parseConfig({ listeners: [{ type: 'tcp', auth: [jwtConf as never] }] }).listeners[0]!.auth[0] as never);
  await cold.init();
  let s = performance.now();
  for (let k = 0; k < N; k++) await cold.authenticate(req);
  const verifyUs = ((performance.now() - s) / N) * 1000;
  await jwt.authenticate(req);
  s = performance.now();
  for (let k = 0; k < N * 10; k++) await jwt.authenticate(req);
  const hitUs = ((performance.now() - s) / (N * 10)) * 1000;
  const s2 = performance.now();
  const { verifyPassword } = await import('../src/auth/password/hash.ts');
  const h = fs.readFileSync(pwFile, 'utf8').split(':')[1]!.trim();
  for (let k = 0; k < 10; k++) await verifyPassword(h, 'bench-pw');
  const argonMs = (performance.now() - s2) / 10;

  const base = rows[0]![1];
  let md = `# Authentication benchmark\n\n${new Date().toISOString().slice(0, 10)}, Node ${process.version}, ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? '?'}), ${SECONDS} s per row, ${PARALLEL} clients connecting in parallel over loopback (mqtt.js, MQTT 5, connect + CONNACK + close). Failed-login guard off; the loopback load generator exempt from admission control (per-address connect rate); audit to memory.\n\n`;
  md += `Medians of ${RUNS} interleaved rounds, with min–max.\n\n`;
  md += '| Provider | connects/s (median) | min–max | vs anonymous |\n|---|---:|---:|---:|\n';
  for (const [name, v, all] of rows) md += `| ${name} | ${v.toFixed(0)} | ${Math.min(...all).toFixed(0)}–${Math.max(...all).toFixed(0)} | ${(v / base).toFixed(2)}× |\n`;
  md += `\nIn isolation: one JWT verification (RS256, static key, claims mapping) costs **${verifyUs.toFixed(0)} µs**; a verified-token cache hit (SHA-256 of the token, exp re-check, claims mapping) costs **${hitUs.toFixed(1)} µs**; one argon2id verification at the OWASP floor costs **${argonMs.toFixed(1)} ms** (libuv thread pool, default 4 threads).\n`;
  fs.writeFileSync(new URL('./results/auth.md', import.meta.url), md);
  process.stdout.write(md);
  fs.rmSync(dir, { recursive: true, force: true });
}

await main();
setTimeout(() => process.exit(0), 100).unref();
