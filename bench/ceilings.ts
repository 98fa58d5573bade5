/**
 * Memory ceilings on the defaults: how much one identity can make a broker hold, each flood
 * pushed until the broker refuses it (limits.quotas), on a fresh broker process each, with the
 * growth of its anonymous memory (RssAnon: the heap and buffers; LMDB's mapped file pages are
 * RssFile and are the kernel's to drop) and of its whole RSS read from /proc.
 *
 *   npm run bench:ceilings                 # 3 runs of each flood, medians
 *   npm run bench:ceilings -- --runs 5
 *
 * Floods (one identity, `flood`; a second identity publishes where one is needed):
 * - retained: retained QoS 1 messages of 64 KiB on new topics until PUBACK 0x97;
 * - sessions: persistent sessions each subscribed to its own topic until CONNACK 0x97, left
 *   offline, then 64 KiB messages to each in turn until nothing more is queued;
 * - subscriptions: 4000-byte filters over sessions of 1000 each until SUBACK 0x97.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    out: { type: 'string', default: path.join(import.meta.dirname, 'results', 'ceilings.md') },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  console.log('Usage: npm run bench:ceilings -- [--runs 3] [--out FILE]');
  process.exit(0);
}
const runs = Number(values.runs);
const ROOT = path.resolve(import.meta.dirname, '..');

interface Broker {
  port: number;
  mem(): { rssKb: number; anonKb: number };
  stop(): Promise<void>;
}

async function startBroker(): Promise<Broker> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-ceilings-'));
  const users = ['flood', 'pub'].map((u) => ({ username: u, password: `${u}-pw` }));
  // The defaults, except who may connect: every limit and quota at its default, the durable store.
  const config = { listeners: [{ name: 'tcp', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users }] }], authorizers: ['allow-all'], sys: { intervalSeconds: 0 } };
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  const child = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), path.join(ROOT, 'src', 'cli', 'main.ts'), 'start', '--config', 'config.json'], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stderr.on('data', (d: Buffer) => (log += d.toString()));
  child.stdout.resume();
  const end = Date.now() + 20_000;
  let m: RegExpExecArray | null = null;
  while ((m = /listening on tcp:\/\/127\.0\.0\.1:(\d+)/.exec(log)) === null) {
    if (Date.now() > end || child.exitCode !== null) throw new Error(`broker did not start: ${log}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const pid = child.pid as number;
  const field = (status: string, name: string) => Number(new RegExp(`${name}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
  return {
    port: Number(m[1]),
    mem: () => {
      const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
      return { rssKb: field(status, 'VmRSS'), anonKb: field(status, 'RssAnon') };
    },
    stop: async () => {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

function connect(port: number, user: string, extra: IClientOptions = {}): Promise<{ c: MqttClient; code: number }> {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect({ host: '127.0.0.1', port, username: user, password: `${user}-pw`, protocolVersion: 5, reconnectPeriod: 0, ...extra });
    c.once('connect', () => resolve({ c, code: 0 }));
    c.once('error', (err) => {
      c.end(true);
      const code = (err as { code?: number }).code;
      if (typeof code === 'number') resolve({ c, code });
      else reject(err);
    });
  });
}

async function pubackCode(c: MqttClient, topic: string, payload: Buffer, retain: boolean): Promise<number> {
  let code = -1;
  const on = (p: mqtt.Packet) => {
    if (p.cmd === 'puback') code = (p as { reasonCode?: number }).reasonCode ?? 0;
  };
  c.on('packetreceive', on);
  await c.publishAsync(topic, payload, { qos: 1, retain }).catch(() => undefined);
  c.off('packetreceive', on);
  return code;
}

/** Lets the broker settle and collect garbage-able buffers, then reads its memory. */
async function settled(b: Broker): Promise<{ rssKb: number; anonKb: number }> {
  await new Promise((r) => setTimeout(r, 1500));
  return b.mem();
}

interface Result {
  held: string;
  anonMiB: number;
  rssMiB: number;
}

const PAYLOAD = Buffer.alloc(64 * 1024, 0x61);

async function retainedFlood(b: Broker): Promise<Result> {
  const { c } = await connect(b.port, 'flood');
  const before = await settled(b);
  let n = 0;
  while ((await pubackCode(c, `r/${n}`, PAYLOAD, true)) < 0x80 && n < 100_000) n++;
  const after = await settled(b);
  c.end(true);
  return { held: `${n} retained (${((n * PAYLOAD.length) / 2 ** 20).toFixed(0)} MiB payload)`, anonMiB: (after.anonKb - before.anonKb) / 1024, rssMiB: (after.rssKb - before.rssKb) / 1024 };
}

async function sessionsFlood(b: Broker): Promise<Result> {
  const before = await settled(b);
  let sessions = 0;
  for (;;) {
    const { c, code } = await connect(b.port, 'flood', { clientId: `flood-${sessions}`, clean: false, properties: { sessionExpiryInterval: 3600 } });
    if (code !== 0) break;
    await c.subscribeAsync(`q/${sessions}`, { qos: 1 });
    await c.endAsync();
    sessions++;
    if (sessions > 10_000) break;
  }
  const { c: pub } = await connect(b.port, 'pub');
  // Each message matches one session: distinct messages, the worst case for memory (a message
  // queued for many sessions is kept once). Stop once a full round queues nothing more.
  let sent = 0;
  for (let round = 0; round < 40; round++) for (let s = 0; s < sessions; s++, sent++) await pubackCode(pub, `q/${s}`, PAYLOAD, false);
  const after = await settled(b);
  pub.end(true);
  return { held: `${sessions} offline sessions, ${sent} messages of 64 KiB sent to them`, anonMiB: (after.anonKb - before.anonKb) / 1024, rssMiB: (after.rssKb - before.rssKb) / 1024 };
}

async function subscriptionsFlood(b: Broker): Promise<Result> {
  const before = await settled(b);
  let total = 0;
  let refused = false;
  const clients: MqttClient[] = [];
  for (let s = 0; !refused && s < 100; s++) {
    const { c } = await connect(b.port, 'flood', { clientId: `subs-${s}` });
    clients.push(c);
    for (let i = 0; i < 1000; i++) {
      const filter = `s/${s}/${i}/${'f'.repeat(4000 - 20)}`;
      // mqtt.js rejects a SUBACK failure code (0x97 Quota exceeded past the quota).
      const granted = await c.subscribeAsync(filter, { qos: 1 }).catch(() => null);
      if (granted === null || (granted[0]?.qos ?? 0x80) >= 0x80) {
        refused = true;
        break;
      }
      total++;
    }
  }
  const after = await settled(b);
  for (const c of clients) c.end(true);
  return { held: `${total} subscriptions of 4000-byte filters over ${clients.length} sessions`, anonMiB: (after.anonKb - before.anonKb) / 1024, rssMiB: (after.rssKb - before.rssKb) / 1024 };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

const floods = { retained: retainedFlood, sessions: sessionsFlood, subscriptions: subscriptionsFlood };
const results: Record<string, Result[]> = {};
for (let r = 0; r < runs; r++) {
  for (const [name, flood] of Object.entries(floods)) {
    const b = await startBroker();
    try {
      const res = await flood(b);
      (results[name] ??= []).push(res);
      console.log(`run ${r + 1} ${name}: ${res.held}; RssAnon +${res.anonMiB.toFixed(1)} MiB, RSS +${res.rssMiB.toFixed(1)} MiB`);
    } finally {
      await b.stop();
    }
  }
}
const lines = [
  `# Memory ceilings per identity, on the defaults (${new Date().toISOString().slice(0, 10)}, ${runs} runs, medians)`,
  '',
  '| Flood by one identity | What it could make the broker hold | RssAnon growth (MiB) | RSS growth (MiB) |',
  '|---|---|---|---|',
];
let sumAnon = 0;
for (const [name, rs] of Object.entries(results)) {
  const anon = median(rs.map((x) => x.anonMiB));
  sumAnon += anon;
  lines.push(`| ${name} | ${rs[0]?.held} | ${anon.toFixed(1)} | ${median(rs.map((x) => x.rssMiB)).toFixed(1)} |`);
}
lines.push(`| **all three** | | **${sumAnon.toFixed(1)}** | |`);
lines.push('');
fs.mkdirSync(path.dirname(values.out), { recursive: true });
fs.writeFileSync(values.out, lines.join('\n'));
console.log(lines.join('\n'));
