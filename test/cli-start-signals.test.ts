/**
 * `portcullis start` stops gracefully however many times it is told to. Under `npx portcullis
 * start` or `npm start`, one Ctrl-C at a terminal (or one SIGTERM to the process group) reaches
 * the broker twice: directly, and passed on by npm. The second signal must not kill it in the
 * middle of its stop, which would leave the store locked for the next start and the audit log
 * without its last signed checkpoint.
 */
import { spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { encodeConnect } from './raw-mqtt.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const main = path.join(root, 'src', 'cli', 'main.ts');
const tsx = import.meta.resolve('tsx');

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  test(`two ${signal}s in a row: the broker still stops gracefully, releases the store and signs its last checkpoint (exit 0)`, async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-signals-'));
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const key = generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' });
    fs.writeFileSync(path.join(dir, 'audit.key'), key, { mode: 0o600 });
    fs.writeFileSync(
      path.join(dir, 'broker.json'),
      JSON.stringify({
        listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }],
        authorizers: ['allow-all'],
        store: { path: 'data/store' },
        audit: { path: 'data/audit.jsonl', checkpoint: { keyFile: 'audit.key' } },
        shutdown: { graceMs: 1500 },
      }),
    );
    const child = spawn(process.execPath, ['--import', tsx, main, 'start', '--config', 'broker.json'], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    child.stderr.on('data', (d: Buffer) => (log += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
    const killer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    const end = Date.now() + 15_000;
    while (!log.includes('listening on') && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    t.regex(log, /listening on/);
    // An MQTT 5 client that ignores DISCONNECT 0x8B keeps the stop busy for shutdown.graceMs, so
    // the second signal arrives while the broker is stopping.
    const port = Number(/"port":(\d+)/.exec(log)?.[1]);
    const client = net.connect(port, '127.0.0.1');
    t.teardown(() => client.destroy());
    client.on('error', () => undefined);
    await new Promise<void>((resolve) => client.once('connect', () => resolve()));
    client.write(encodeConnect({ clientId: 'stubborn', version: 5 }));
    await new Promise((r) => setTimeout(r, 300));
    child.kill(signal);
    while (!log.includes('shutting down') && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 100));
    child.kill(signal);
    const code = await exited;
    clearTimeout(killer);
    t.is(code, 0, log);
    t.regex(log, /"msg":"stopped"/);
    t.false(fs.existsSync(path.join(dir, 'data', 'store', 'portcullis.lock')), 'the store lock is released');
    const last = fs.readFileSync(path.join(dir, 'data', 'audit.jsonl'), 'utf8').trim().split('\n').pop() ?? '';
    t.regex(last, /"event":"checkpoint"/, 'the last record is the signed checkpoint of the stop');
  });
}
