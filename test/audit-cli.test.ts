/**
 * `portcullis audit verify | tail | stats | keygen`, run as child processes on files written by
 * the real sink.
 */
import { spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import { createAuditSink } from '../src/audit/sinks.ts';
import { verifyCommand } from '../src/cli/audit.ts';
import { silentLogger } from '../src/log.ts';
import { auditSettings, delay, readAuditLines, tempAuditDir } from './helpers.ts';

const root = fileURLToPath(new URL('..', import.meta.url));

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function portcullis(t: ExecutionContext, args: string[], opts: { untilStdout?: RegExp; timeoutMs?: number; onStderr?: (text: string) => void } = {}): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', path.join('src', 'cli', 'main.ts'), ...args], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 20_000);
    t.teardown(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (opts.untilStdout?.test(stdout)) child.kill('SIGTERM');
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      opts.onStderr?.(stderr);
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

async function sampleLog(t: ExecutionContext): Promise<string> {
  const dir = tempAuditDir(t);
  const file = path.join(dir, 'audit.jsonl');
  const sink = createAuditSink(auditSettings(file), silentLogger());
  sink.record({ event: 'connect', decision: 'allow', reasonCode: 0, clientId: 'c1', username: 'alice' });
  sink.record({ event: 'publish', decision: 'deny', reasonCode: 0x87, clientId: 'c1', username: 'alice', topic: 'plant/1/temp', qos: 1 });
  sink.record({ event: 'publish', decision: 'deny', reasonCode: 0x87, clientId: 'c2', username: 'bob', topic: 'plant/2/temp', qos: 0 });
  sink.record({ event: 'subscribe', decision: 'allow', reasonCode: 1, clientId: 'c2', username: 'bob', topic: 'office/#', qos: 1 });
  await sink.close();
  return file;
}

test('audit verify exits 0 on an intact log and 1 naming the line of an edited one', async (t) => {
  const file = await sampleLog(t);
  const ok = await portcullis(t, ['audit', 'verify', file]);
  t.is(ok.code, 0, ok.stderr);
  t.regex(ok.stdout, /OK: 5 records/);
  const lines = readAuditLines(file);
  lines[2] = (lines[2] as string).replace('"clientId":"c1"', '"clientId":"c9"');
  fs.writeFileSync(file, lines.join('\n') + '\n');
  const bad = await portcullis(t, ['audit', 'verify', file]);
  t.is(bad.code, 1);
  t.regex(bad.stderr, new RegExp(`FAILED: ${file.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:3: record seq 3 was changed`));
});

test('audit keygen writes an Ed25519 pair (private key 0600) that verify accepts; a wrong key fails verify', async (t) => {
  const dir = tempAuditDir(t);
  const gen = await portcullis(t, ['audit', 'keygen', '--out', dir]);
  t.is(gen.code, 0, gen.stderr);
  const key = path.join(dir, 'audit-signing.key');
  t.is(fs.statSync(key).mode & 0o777, 0o600);
  const file = path.join(dir, 'audit.jsonl');
  const sink = createAuditSink({ ...auditSettings(file), checkpoint: { keyFile: key, intervalSeconds: 60 } }, silentLogger());
  sink.record({ event: 'connect', decision: 'deny', clientId: 'x' });
  await sink.close();
  let errors = '';
  const ok = await portcullis(t, ['audit', 'verify', '--key', path.join(dir, 'audit-signing.pub'), '--require-checkpoint', file]);
  t.is(ok.code, 0, ok.stderr);
  t.regex(ok.stdout, /2 signed checkpoint\(s\) verified/, 'one at start, one at close');
  const other = path.join(dir, 'other.pub');
  fs.writeFileSync(other, generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' }));
  const wrong = await verifyCommand([file], { key: other }, { out: () => {}, err: (e) => (errors += e) });
  t.is(wrong, 1);
  t.regex(errors, /invalid signature/);
});

test('audit tail filters by --deny-only, --user and --topic; audit stats counts decisions', async (t) => {
  const file = await sampleLog(t);
  const tail = await portcullis(t, ['audit', 'tail', '--file', file, '--deny-only', '--user', 'bob', '--topic', 'plant/+/temp']);
  t.is(tail.code, 0, tail.stderr);
  const out = tail.stdout.trim().split('\n');
  t.is(out.length, 1);
  t.is(JSON.parse(out[0] as string).clientId, 'c2');
  const stats = await portcullis(t, ['audit', 'stats', '--json', file]);
  t.is(stats.code, 0, stats.stderr);
  const s = JSON.parse(stats.stdout) as { records: number; byEvent: Record<string, { allow: number; deny: number }>; denyReasons: Record<string, number> };
  t.is(s.records, 5);
  t.deepEqual(s.byEvent.publish, { allow: 0, deny: 2 });
  t.deepEqual(s.byEvent.connect, { allow: 1, deny: 0 });
  t.is(s.denyReasons['0x87'], 2);
});

test('audit tail --follow prints records appended after it started', async (t) => {
  const file = await sampleLog(t);
  let following!: () => void;
  const ready = new Promise<void>((resolve) => (following = resolve));
  const running = portcullis(t, ['audit', 'tail', '--follow', '--file', file, '-n', '0', '--deny-only', '--text'], {
    untilStdout: /late-client/,
    onStderr: (text) => /following/.test(text) && following(),
  });
  await ready;
  await delay(100);
  const sink = createAuditSink(auditSettings(file), silentLogger());
  sink.record({ event: 'subscribe', decision: 'allow', clientId: 'ignored-allow' });
  sink.record({ event: 'connect', decision: 'deny', reasonCode: 0x86, clientId: 'late-client' });
  await sink.close();
  const r = await running;
  t.regex(r.stdout, /DENY connect 0x86 client="late-client"/);
  t.notRegex(r.stdout, /ignored-allow/);
});
