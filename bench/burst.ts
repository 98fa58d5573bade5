/**
 * The burst scenario: one publisher writes 10,000 QoS 1 messages at once (a single socket write)
 * to a topic with one connected subscriber that acknowledges everything. Reports how many were
 * delivered of those sent (and of those the publisher saw acknowledged) and the time to drain
 * (first byte written → last delivery), for Portcullis, Aedes and Mosquitto side by side, each
 * on its defaults with security off. Runs rotate between the brokers; medians are reported.
 *
 *   npm run bench:burst                       # 5 runs of 10,000 messages per broker
 *   npm run bench:burst -- --runs 9 --messages 20000 --brokers portcullis,mosquitto
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { BROKERS, setupPinning, startBroker, type BrokerName, type RunningBrokerProcess } from './lib/brokers.ts';
import { BenchClient } from './lib/client.ts';
import { PublishTemplate } from './lib/mqtt.ts';
import { endpointFor, makeBenchFiles } from './lib/security.ts';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '5' },
    messages: { type: 'string', default: '10000' },
    brokers: { type: 'string', default: BROKERS.join(',') },
    idle: { type: 'string', default: '3' },
    out: { type: 'string', default: path.join(import.meta.dirname, 'results', 'burst.md') },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  console.log('Usage: npm run bench:burst -- [--runs 5] [--messages 10000] [--brokers portcullis,aedes,mosquitto] [--idle 3] [--out FILE]');
  process.exit(0);
}
const runs = Number(values.runs);
const N = Number(values.messages);
const idleMs = Number(values.idle) * 1000;
const names = values.brokers.split(',') as BrokerName[];
if (!(runs > 0) || !(N > 0 && N < 65535) || !(idleMs > 0) || names.some((n) => !BROKERS.includes(n))) {
  console.error('bad arguments (see --help)');
  process.exit(2);
}

interface Run {
  delivered: number;
  acked: number;
  drainMs: number;
}

async function burst(broker: RunningBrokerProcess, run: number): Promise<Run> {
  const ep = endpointFor(broker, 'tcp', files);
  const topic = `bench/burst/${run}`;
  const sub = await BenchClient.connect(ep, `burst-sub-${run}`);
  const pub = await BenchClient.connect(ep, `burst-pub-${run}`);
  const seen = new Uint8Array(N);
  let delivered = 0;
  let acked = 0;
  let last = 0;
  sub.callbacks = {
    onPublish: (p) => {
      if (p.seq < N && seen[p.seq] === 0) {
        seen[p.seq] = 1;
        delivered++;
        last = performance.now();
      }
    },
  };
  pub.callbacks = { onPuback: () => void acked++ };
  await sub.subscribe(1, topic, 1);
  const template = new PublishTemplate(topic, 1, 64);
  const buf = Buffer.allocUnsafe(template.packetSize * N);
  for (let i = 0, o = 0; i < N; i++) o = template.write(buf, o, 0, i, 0, i + 1);
  const start = performance.now();
  last = start;
  pub.socket.write(buf);
  // Done when everything arrived, or when nothing new arrived for `idle` seconds.
  for (;;) {
    await new Promise((r) => setTimeout(r, 50));
    if (delivered === N && acked === N) break;
    if (performance.now() - Math.max(last, start) > idleMs) break;
  }
  await Promise.all([sub.close(), pub.close()]);
  return { delivered, acked, drainMs: last - start };
}

const median = (a: number[]): number => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)] as number;

const pin = setupPinning(true);
console.log(pin.note);
const files = await makeBenchFiles();
const results = new Map<BrokerName, Run[]>();
const skipped: string[] = [];
const running = new Map<BrokerName, RunningBrokerProcess>();
try {
  for (const name of names) {
    try {
      running.set(name, await startBroker(name, 'off', files, pin));
      results.set(name, []);
    } catch (e) {
      skipped.push(`${name}: ${e instanceof Error ? e.message.split('\n')[0] : String(e)}`);
    }
  }
  for (let r = 0; r < runs; r++) {
    const order = [...running.keys()];
    for (let i = 0; i < r % order.length; i++) order.push(order.shift() as BrokerName);
    for (const name of order) {
      const x = await burst(running.get(name) as RunningBrokerProcess, r);
      results.get(name)?.push(x);
      console.log(`run ${r + 1}/${runs} ${name}: ${x.delivered}/${N} delivered, ${x.acked} acknowledged to the publisher, drained in ${x.drainMs.toFixed(0)} ms`);
    }
  }
} finally {
  for (const b of running.values()) await b.stop();
  files.cleanup();
}

const lines = [
  `# Burst: ${N} QoS 1 messages written at once, one subscriber that acks everything`,
  '',
  `Each broker on its defaults, security off, plain TCP; ${runs} runs rotated between brokers; medians. "Delivered" counts distinct messages the subscriber received; "acknowledged" the PUBACKs the publisher got. ${pin.note}.`,
  '',
  '| Broker | Delivered / sent | Acknowledged / sent | Time to drain (ms) | Runs (delivered) |',
  '|---|---|---|---|---|',
];
for (const [name, xs] of results) {
  lines.push(`| ${name} | ${median(xs.map((x) => x.delivered))} / ${N} | ${median(xs.map((x) => x.acked))} / ${N} | ${median(xs.map((x) => x.drainMs)).toFixed(0)} | ${xs.map((x) => x.delivered).join(', ')} |`);
}
for (const s of skipped) lines.push('', `Skipped ${s}`);
const report = `${lines.join('\n')}\n`;
console.log(`\n${report}`);
writeFileSync(values.out, report);
