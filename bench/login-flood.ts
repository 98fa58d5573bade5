/**
 * A login flood against the audit log. argon2 and the audit file's writes share libuv's thread
 * pool (4 threads unless UV_THREADPOOL_SIZE says otherwise), whose queue is first come, first
 * served. This measures, under a flood of wrong passwords from several addresses, how long a
 * decision takes to reach the audit file, how many records wait, and how much memory the broker
 * takes; for this tree and a base tree (before/after), with the login guard on (defaults) and off.
 *
 *   npx tsx bench/login-flood.ts --base ../portcullis-before
 *   npx tsx bench/login-flood.ts --base DIR --duration 20 --addresses 20 --rate 50 --modes defaults,off
 *
 * The flood: `--addresses` source addresses (127.0.1.x), each opening `--rate` connections a
 * second (the default connect rate admission control allows per address), each sending one
 * CONNECT with a wrong password for a new user name, and closing after 100 ms whether or not it
 * was answered: an attacker does not wait for answers. A probe client connects to an anonymous
 * listener every 200 ms (from 127.0.0.9) and measures its CONNACK time and the time from its
 * CONNACK until its connect record is in the audit file ("decision to disk"). The broker runs in
 * its own process (this file with --server) from the tree under test and reports its audit
 * sink's backlog and its memory every 100 ms. Results go to stdout and bench/results/login-flood.md.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import mqttPacket from 'mqtt-packet';
import { freePort } from './lib/brokers.ts';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opt = (name: string, def: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? (args[i + 1] as string) : def;
};

// ── the broker process ───────────────────────────────────────────────────────
if (args[0] === '--server') {
  const tree = args[1] as string;
  const config = JSON.parse(fs.readFileSync(args[2] as string, 'utf8')) as Record<string, unknown>;
  const api = (await import(pathToFileURL(path.join(tree, 'src', 'index.ts')).href)) as typeof import('../src/index.ts');
  const broker = api.createBroker(config as never);
  await broker.start();
  const timer = setInterval(() => {
    const h = broker.auditHealth();
    const m = process.memoryUsage();
    process.stdout.write(`${JSON.stringify({ t: Date.now(), pending: h.pending, written: h.written, dropped: h.dropped, rss: m.rss })}\n`);
  }, 100);
  process.stdout.write('ready\n');
  process.on('SIGTERM', () => {
    clearInterval(timer);
    void broker.stop().then(() => process.exit(0));
  });
  await new Promise(() => {});
}

// ── the load generator ───────────────────────────────────────────────────────
const base = opt('base', '');
if (base === '') {
  console.log('Usage: npx tsx bench/login-flood.ts --base DIR [--duration 20] [--addresses 20] [--rate 50] [--modes defaults,off]');
  process.exit(2);
}
const durationMs = Number(opt('duration', '20')) * 1000;
const addresses = Number(opt('addresses', '20'));
const rate = Number(opt('rate', '50'));
const modes = opt('modes', 'defaults,off').split(',') as ('defaults' | 'off')[];
const { hashPassword } = await import('../src/auth/password/hash.ts');
const { ARGON2_FLOOR } = await import('../src/config/auth-schema.ts');

const out: string[] = [];
const say = (line = '') => {
  console.log(line);
  out.push(line);
};


const connect = (clientId: string, username?: string, password?: string) =>
  mqttPacket.generate(
    { cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clean: true, keepalive: 60, clientId, ...(username !== undefined ? { username, password: Buffer.from(password ?? '') } : {}) } as mqttPacket.IConnectPacket,
    { protocolVersion: 5 },
  );

/** Sends a CONNECT from `from` and resolves with the CONNACK code (-1: none) once answered or after `waitMs`. */
function send(port: number, from: string, packet: Buffer, waitMs: number): Promise<{ code: number; at: number }> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port, localAddress: from });
    let done = false;
    const finish = (code: number) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ code, at: performance.now() });
    };
    const timer = setTimeout(() => finish(-1), waitMs);
    s.once('connect', () => s.write(packet));
    s.on('data', (d: Buffer) => finish(connackCode(d)));
    s.on('error', () => finish(-1));
    s.on('close', () => finish(-1));
  });
}

/** The code of a CONNACK that arrived in one chunk: after the remaining length (1 or 2 bytes with a v5 reason string) and the flags. */
function connackCode(d: Buffer): number {
  if (d[0] !== 0x20 || d.length < 4) return -1;
  const lengthBytes = ((d[1] as number) & 0x80) === 0 ? 1 : 2;
  return (d[2 + lengthBytes] as number | undefined) ?? -1;
}

const pct = (a: number[], p: number) => (a.length === 0 ? NaN : ([...a].sort((x, y) => x - y)[Math.min(a.length - 1, Math.floor(a.length * p))] as number));
const f0 = (x: number) => (Number.isFinite(x) ? x.toFixed(0) : '–');

interface Result {
  tree: string;
  mode: string;
  answers: Record<string, number>;
  sent: number;
  probeConnack: number[];
  probeToDisk: number[];
  probeLost: number;
  /** Decision to disk before the flood, for comparison. */
  quietToDisk: number[];
  maxPending: number;
  maxRssMb: number;
  drainS: number;
}

async function run(treeName: string, tree: string, mode: 'defaults' | 'off'): Promise<Result> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-login-flood-'));
  const [pw, probe] = [await freePort(), await freePort()];
  const passwords = path.join(dir, 'passwords');
  fs.writeFileSync(passwords, `alice:${await hashPassword('alice-secret', ARGON2_FLOOR)}\n`, { mode: 0o600 });
  const auditFile = path.join(dir, 'audit.jsonl');
  const config = {
    listeners: [
      { name: 'pw', type: 'tcp', host: '127.0.0.1', port: pw, auth: [{ provider: 'password', file: passwords, watch: false }] },
      { name: 'probe', type: 'tcp', host: '127.0.0.1', port: probe, auth: ['anonymous'] },
    ],
    authorizers: ['allow-all'],
    store: { type: 'memory' },
    log: { level: 'silent' },
    sys: { intervalSeconds: 0 },
    audit: { sink: 'file', path: auditFile },
    ...(mode === 'off' ? { authGuard: { enabled: false } } : {}),
  };
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--server', tree, path.join(dir, 'config.json')], { cwd: tree, stdio: ['ignore', 'pipe', 'inherit'] });
  const health: { t: number; pending: number; rss: number }[] = [];
  let buf = '';
  const ready = new Promise<void>((resolve) => {
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line === 'ready') resolve();
        else if (line.startsWith('{')) health.push(JSON.parse(line) as { t: number; pending: number; rss: number });
      }
    });
  });
  await ready;
  // The probe: its connect record's arrival in the file, by client id.
  const seen = new Map<string, number>();
  let fd: number | undefined;
  let offset = 0;
  let tail = '';
  const poll = setInterval(() => {
    try {
      fd ??= fs.openSync(auditFile, 'r');
      const chunk = Buffer.alloc(1 << 20);
      let n: number;
      while ((n = fs.readSync(fd, chunk, 0, chunk.length, offset)) > 0) {
        offset += n;
        tail += chunk.subarray(0, n).toString();
        const lines = tail.split('\n');
        tail = lines.pop() ?? '';
        const now = performance.now();
        for (const l of lines) {
          const m = /"clientId":"(probe-\d+)"/.exec(l);
          if (m !== null && !seen.has(m[1] as string)) seen.set(m[1] as string, now);
        }
      }
    } catch {
      // not there yet
    }
  }, 5);
  const probes: { id: string; connack: number; sent: number }[] = [];
  let probing = true;
  let probeN = 0;
  const prober = (async () => {
    while (probing) {
      const id = `probe-${probeN++}`;
      const t0 = performance.now();
      const r = await send(probe, '127.0.0.9', connect(id), 10_000);
      if (r.code === 0) probes.push({ id, connack: r.at - t0, sent: r.at });
      await new Promise((res) => setTimeout(res, 200));
    }
  })();
  await new Promise((r) => setTimeout(r, 2000));
  // The flood.
  const answers = new Map<number, number>();
  let sent = 0;
  const start = performance.now();
  const inflight: Promise<unknown>[] = [];
  const floodProbeFrom = probes.length;
  for (let a = 0; a < addresses; a++) {
    inflight.push(
      (async () => {
        const from = `127.0.1.${a + 1}`;
        for (let i = 0; performance.now() - start < durationMs; i++) {
          const due = start + (i * 1000) / rate;
          const wait = due - performance.now();
          if (wait > 0) await new Promise((r) => setTimeout(r, wait));
          sent++;
          void send(pw, from, connect(`f-${a}-${i}`, `user-${a}-${i}`, 'Winter2025!'), 100).then((r) => answers.set(r.code, (answers.get(r.code) ?? 0) + 1));
        }
      })(),
    );
  }
  await Promise.all(inflight);
  const floodEnd = performance.now();
  const floodProbes = probes.length;
  // After the flood: probe until the audit backlog has drained (at most 60 s).
  const endBy = Date.now() + 60_000;
  while (Date.now() < endBy && ((health.at(-1)?.pending ?? 0) > 0 || probes.some((p) => !seen.has(p.id)))) await new Promise((r) => setTimeout(r, 200));
  const drainS = (performance.now() - floodEnd) / 1000;
  probing = false;
  await prober;
  await new Promise((r) => setTimeout(r, 300));
  clearInterval(poll);
  if (fd !== undefined) fs.closeSync(fd);
  child.kill('SIGTERM');
  await new Promise((r) => child.once('exit', r));
  fs.rmSync(dir, { recursive: true, force: true });
  const during = probes.slice(floodProbeFrom, floodProbes);
  const quiet = probes.slice(0, floodProbeFrom).filter((p) => seen.has(p.id));
  return {
    tree: treeName,
    mode,
    answers: Object.fromEntries([...answers].map(([k, v]) => [k === -1 ? 'none' : `0x${k.toString(16)}`, v])),
    sent,
    probeConnack: during.map((p) => p.connack),
    probeToDisk: during.filter((p) => seen.has(p.id)).map((p) => (seen.get(p.id) as number) - p.sent),
    probeLost: during.filter((p) => !seen.has(p.id)).length,
    quietToDisk: quiet.map((p) => (seen.get(p.id) as number) - p.sent),
    maxPending: Math.max(0, ...health.map((h) => h.pending)),
    maxRssMb: Math.max(0, ...health.map((h) => h.rss)) / 1024 / 1024,
    drainS,
  };
}

say(`# Login flood against the audit log (bench/login-flood.ts), ${new Date().toISOString().slice(0, 10)}`);
say();
say(`${os.availableParallelism()} CPUs, UV_THREADPOOL_SIZE ${process.env.UV_THREADPOOL_SIZE ?? 'unset (4)'}, Node ${process.version}. Flood: ${addresses} addresses × ${rate} connects/s for ${durationMs / 1000} s, one wrong password for a new user name each, not waiting for answers. Base: ${base}.`);
say();
say('| tree | authGuard | CONNECTs sent | answers within 100 ms | probe CONNACK median / max ms | decision to disk before the flood, median ms | during the flood, median / p95 / max ms | records waiting, max | RSS max MiB | after the flood, until the backlog is gone |');
say('|---|---|---|---|---|---|---|---|---|---|');
for (const mode of modes) {
  for (const [name, tree] of [
    ['base', path.resolve(base)],
    ['this tree', path.resolve(here, '..')],
  ] as const) {
    const r = await run(name, tree, mode);
    say(
      `| ${r.tree} | ${r.mode} | ${r.sent} | ${JSON.stringify(r.answers)} | ${f0(pct(r.probeConnack, 0.5))} / ${f0(Math.max(...r.probeConnack))} | ${f0(pct(r.quietToDisk, 0.5))} | ${f0(pct(r.probeToDisk, 0.5))} / ${f0(pct(r.probeToDisk, 0.95))} / ${f0(Math.max(...r.probeToDisk))}${r.probeLost > 0 ? ` (${r.probeLost} not there by the end)` : ''} | ${r.maxPending} | ${r.maxRssMb.toFixed(0)} | ${r.drainS >= 60 ? 'over 60 s (measuring stopped)' : `${r.drainS.toFixed(1)} s`} |`,
    );
  }
}
fs.writeFileSync(path.join(here, 'results', 'login-flood.md'), out.join('\n') + '\n');
