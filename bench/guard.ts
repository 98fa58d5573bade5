/**
 * The login guard on its defaults: how many guesses per second reach a real password check when
 * one address, and when 20 addresses, guess one user name; and what the guard's state costs in
 * memory per tracked key.
 *
 *   npx tsx bench/guard.ts                       # both floods (120 s each) and the memory figures
 *   npx tsx bench/guard.ts --duration 30         # shorter floods
 *   npx tsx bench/guard.ts --only memory         # or: one, twenty
 *
 * The broker runs as `portcullis start` in its own process with a password listener and the
 * default authGuard (only the connect rate of admission control is lifted, so the guard is what
 * is measured: with the default 50 connects/s per address the flood would be slower still).
 * Guessers are raw MQTT clients bound to 127.0.1.x, each loop sending its next wrong password as
 * soon as it has an answer. The checks that ran are counted from the audit file (a connect record
 * with the password provider's verdict `wrong password`). Results go to stdout and
 * bench/results/guard.md.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import v8 from 'node:v8';
import vm from 'node:vm';
import mqttPacket from 'mqtt-packet';
import { AuthGuard } from '../src/auth/guard.ts';
import { hashPassword } from '../src/auth/password/hash.ts';
import { ARGON2_FLOOR } from '../src/config/auth-schema.ts';
import { parseConfig } from '../src/config/schema.ts';
import { freePort } from './lib/brokers.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const opt = (name: string, def: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? (args[i + 1] as string) : def;
};
const durationS = Number(opt('duration', '120'));
const only = opt('only', 'all');
const out: string[] = [`# Login guard (bench/guard.ts), ${new Date().toISOString().slice(0, 10)}`, '', `${os.availableParallelism()} CPUs, Node ${process.version}, load average ${os.loadavg()[0]?.toFixed(1)} at start.`, ''];
const say = (line = '') => {
  console.log(line);
  out.push(line);
};


/** One CONNECT from `from`; resolves with the CONNACK code, or -1. */
function attempt(port: number, from: string, clientId: string, username: string, password: string): Promise<number> {
  const packet = mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clean: true, keepalive: 60, clientId, username, password: Buffer.from(password) } as mqttPacket.IConnectPacket, { protocolVersion: 5 });
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port, localAddress: from });
    let done = false;
    const finish = (code: number) => {
      if (done) return;
      done = true;
      s.destroy();
      resolve(code);
    };
    s.once('connect', () => s.write(packet));
    s.on('data', (d: Buffer) => finish(connackCode(d)));
    s.on('error', () => finish(-1));
    s.on('close', () => finish(-1));
    setTimeout(() => finish(-1), 15_000);
  });
}

/** The code of a CONNACK that arrived in one chunk: after the remaining length (1 or 2 bytes with a v5 reason string) and the flags. */
function connackCode(d: Buffer): number {
  if (d[0] !== 0x20 || d.length < 4) return -1;
  const lengthBytes = ((d[1] as number) & 0x80) === 0 ? 1 : 2;
  return (d[2 + lengthBytes] as number | undefined) ?? -1;
}

async function flood(label: string, addresses: number, loopsPerAddress: number): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-bench-guard-'));
  try {
    const port = await freePort();
    const passwords = path.join(dir, 'passwords');
    fs.writeFileSync(passwords, `alice:${await hashPassword('alice-secret', ARGON2_FLOOR)}\n`, { mode: 0o600 });
    const auditFile = path.join(dir, 'audit.jsonl');
    const config = {
      listeners: [{ name: 'pw', type: 'tcp', host: '127.0.0.1', port, auth: [{ provider: 'password', file: passwords, watch: false }] }],
      authorizers: ['allow-all'],
      log: { level: 'warn' },
      sys: { intervalSeconds: 0 },
      audit: { sink: 'file', path: auditFile },
      limits: { connectRate: { perSecond: 0, burst: 1 } },
    };
    parseConfig(config);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
    const child = spawn(process.execPath, ['--import', 'tsx', path.join('src', 'cli', 'main.ts'), 'start', '--config', path.join(dir, 'config.json')], { cwd: root, stdio: 'ignore' });
    try {
      for (let i = 0; i < 300; i++) {
        if ((await attempt(port, '127.0.0.1', 'probe', 'nobody-probe', 'x')) !== -1) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      const t0 = Date.now();
      const end = t0 + durationS * 1000;
      const codes = new Map<number, number>();
      let n = 0;
      await Promise.all(
        Array.from({ length: addresses * loopsPerAddress }, async (_, w) => {
          const from = `127.0.1.${(w % addresses) + 1}`;
          while (Date.now() < end) {
            const c = await attempt(port, from, `g-${w}-${n++}`, 'alice', `guess-${n}`);
            codes.set(c, (codes.get(c) ?? 0) + 1);
          }
        }),
      );
      const secs = (Date.now() - t0) / 1000;
      await new Promise((r) => setTimeout(r, 1500)); // the last records reach the file
      const checks: number[] = [];
      for (const line of fs.readFileSync(auditFile, 'utf8').split('\n')) {
        if (!line.includes('"wrong password"') || !line.includes('"username":"alice"')) continue;
        const rec = JSON.parse(line) as { time: string };
        checks.push((Date.parse(rec.time) - t0) / 1000);
      }
      const attempts = [...codes.values()].reduce((a, b) => a + b, 0);
      const firstMinute = checks.filter((s) => s < 60).length;
      const lastHalf = checks.filter((s) => s >= secs / 2).length;
      const steady = lastHalf / (secs / 2);
      say(`## ${label}`);
      say();
      say(`${addresses} address${addresses > 1 ? 'es' : ''} × ${loopsPerAddress} loops for ${secs.toFixed(0)} s: ${attempts} attempts (${(attempts / secs).toFixed(1)}/s; answers ${JSON.stringify(Object.fromEntries(codes))}).`);
      say();
      say(`| | guesses checked | per second |`);
      say(`|---|---|---|`);
      say(`| whole run | ${checks.length} | ${(checks.length / secs).toFixed(3)} |`);
      say(`| first ${Math.min(60, secs).toFixed(0)} s | ${firstMinute} | ${(firstMinute / Math.min(60, secs)).toFixed(3)} |`);
      say(`| second half (steady state) | ${lastHalf} | ${steady.toFixed(3)} |`);
      say();
      if (steady > 0) say(`At the steady rate, 10^6 guesses take ${(1e6 / steady / 86400).toFixed(0)} days.`);
      else say('No check in the second half: the steady rate is below one per half run.');
      say();
    } finally {
      child.kill('SIGTERM');
      await new Promise((r) => setTimeout(r, 500));
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function heapAfterGc(): number {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  gc();
  gc();
  return process.memoryUsage().heapUsed;
}

/**
 * The guard's state per tracked key: fill the maps and weigh the heap. Each map keeps between half
 * and all of its bound (two generations: the older half is dropped whole when the younger fills),
 * so the figures are per entry actually held.
 */
function memory(): void {
  const n = 99_000; // just under two generations' worth: every entry is still held
  const config = parseConfig({ authGuard: { maxEntries: 2 * n, knownGood: { maxEntries: 2 * n } } }).authGuard;
  let t = Date.now();
  const now = () => t;
  say('## Memory per tracked key');
  say();
  say('| what | entries held | heap |');
  say('|---|---|---|');
  // Spraying: one failure per user name, each from its own address (a pair, a user name and an address bucket each).
  let guard = new AuthGuard(config, () => {}, undefined, now);
  let base = heapAfterGc();
  for (let i = 0; i < n; i++) {
    const a = guard.admit({ address: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, username: `user-${i}`, clientId: `c-${i}`, listener: 'l' });
    if (a.kind === 'check') guard.settle(a.ticket, 'failure');
    t += 1;
  }
  const s1 = guard.sizes;
  const perFailure = (heapAfterGc() - base) / s1.pairs;
  say(`| a failed login from a new address for a new user name: its pair, user name and address bucket | ${s1.pairs} + ${s1.usernames} + ${s1.addresses} | ${perFailure.toFixed(0)} bytes for the three |`);
  guard.close();
  // New clients logging in: the same three entries (without failures), and a known-good record.
  guard = new AuthGuard(config, () => {}, undefined, now);
  base = heapAfterGc();
  for (let i = 0; i < n; i++) {
    const a = guard.admit({ address: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, username: `device-${i}`, clientId: `device-${i}`, listener: 'l' });
    if (a.kind === 'check') guard.settle(a.ticket, 'success');
    t += 1;
  }
  const s2 = guard.sizes;
  const perSuccess = (heapAfterGc() - base) / s2.knownGood;
  const perGood = perSuccess - perFailure;
  say(`| a successful login of a new client from a new address: the same three entries and its known-good record | ${s2.knownGood} known-good pairs | ${perSuccess.toFixed(0)} bytes, of which about ${perGood.toFixed(0)} for the known-good record |`);
  guard.close();
  say();
  const defaults = parseConfig({}).authGuard;
  const full = (defaults.maxEntries * perFailure + defaults.knownGood.maxEntries * perGood) / 1024 / 1024;
  say(`With the defaults (\`maxEntries\` ${defaults.maxEntries.toLocaleString('en')} of each kind, \`knownGood.maxEntries\` ${defaults.knownGood.maxEntries.toLocaleString('en')}) and every map full: about ${full.toFixed(0)} MiB.`);
  say();
}

if (only === 'all' || only === 'memory') memory();
if (only === 'all' || only === 'one') await flood('One address guessing one user name (defaults)', 1, 16);
if (only === 'all' || only === 'twenty') await flood('20 addresses guessing one user name (defaults)', 20, 4);
fs.writeFileSync(path.join(root, 'bench', 'results', 'guard.md'), out.join('\n') + '\n');
