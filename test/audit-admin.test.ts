/**
 * CLI actions that change state become `admin` audit records: the `portcullis` command spools
 * them, the broker writes them into its hash-chained log (at start for actions taken while it
 * was down, and within seconds while it runs), and an unreadable spool file is recorded as a
 * denial, never dropped.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { spoolDirFor } from '../src/audit/admin-spool.ts';
import { createBroker, verifyAuditFiles } from '../src/index.ts';
import { silentLogger } from '../src/log.ts';
import { delay } from './helpers.ts';

const root = fileURLToPath(new URL('..', import.meta.url));

function cli(args: string[], input = ''): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', path.join('src', 'cli', 'main.ts'), ...args], { cwd: root, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(input);
  });
}

interface Rec {
  event: string;
  action?: string;
  decision: string;
  reason?: string;
  detail?: Record<string, unknown>;
}
const records = (file: string): Rec[] =>
  fs.existsSync(file)
    ? fs
        .readFileSync(file, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Rec)
    : [];

async function until(pred: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) return false;
    await delay(50);
  }
  return true;
}

function auditedBroker(dir: string) {
  const auditFile = path.join(dir, 'audit', 'audit.jsonl');
  const broker = createBroker(
    {
      listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }],
      authorizers: ['allow-all'],
      sys: { intervalSeconds: 0 },
      audit: { sink: 'file', path: auditFile, fsyncIntervalMs: 0 },
      store: { type: 'memory' },
    },
    { logger: silentLogger() },
  );
  return { broker, auditFile, spool: spoolDirFor(auditFile) };
}

test('actions taken while the broker is down are written at its next start, in order; secrets never appear', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-admin-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { broker, auditFile, spool } = auditedBroker(dir);
  const pw = path.join(dir, 'passwords');
  const add = await cli(['--audit-spool', spool, 'passwd', 'add', pw, 'alice'], 'Sup3r-Secret-pw\n');
  t.is(add.code, 0, add.stderr);
  const pki = path.join(dir, 'pki');
  t.is((await cli(['--audit-spool', spool, 'pki', '--dir', pki, 'init'])).code, 0);
  // A failed command changes nothing and records nothing.
  const bad = await cli(['--audit-spool', spool, 'pki', '--dir', pki, 'revoke', 'ffff0000']);
  t.not(bad.code, 0);
  // Read-only commands record nothing either.
  t.is((await cli(['--audit-spool', spool, 'passwd', 'list', pw])).code, 0);
  t.is(fs.readdirSync(spool).filter((n) => n.endsWith('.json')).length, 2);

  await broker.start();
  t.teardown(() => broker.stop());
  t.true(await until(() => records(auditFile).filter((r) => r.event === 'admin').length >= 2, 5000));
  const admin = records(auditFile).filter((r) => r.event === 'admin');
  t.deepEqual(
    admin.map((r) => r.action),
    ['passwd add', 'pki init'],
  );
  t.regex(admin[0]?.reason ?? '', /^portcullis passwd add .*passwords alice/);
  t.is(admin[0]?.decision, 'allow');
  t.is(typeof admin[0]?.detail?.osUser, 'string');
  t.is(fs.readdirSync(spool).filter((n) => n.endsWith('.json')).length, 0, 'the spool is emptied');
  await broker.stop();
  t.false(fs.readFileSync(auditFile, 'utf8').includes('Sup3r-Secret-pw'));
  const verdict = await verifyAuditFiles([auditFile]);
  t.true(verdict.ok, JSON.stringify(verdict));
});

test('while the broker runs, a CLI action is audited within seconds; an unreadable spool file is recorded as a denial and kept', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-admin-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { broker, auditFile, spool } = auditedBroker(dir);
  await broker.start();
  t.teardown(() => broker.stop());
  const pki = path.join(dir, 'pki');
  t.is((await cli(['--audit-spool', spool, 'pki', '--dir', pki, 'init'])).code, 0);
  const issued = await cli(['--audit-spool', spool, 'pki', '--dir', pki, 'client', '--cn', 'device-9']);
  t.is(issued.code, 0, issued.stderr);
  t.true(await until(() => records(auditFile).some((r) => r.event === 'admin' && r.action === 'pki client'), 8000));
  t.regex(records(auditFile).find((r) => r.action === 'pki client')?.reason ?? '', /--cn=device-9/);

  fs.writeFileSync(path.join(spool, '000000000000001-1-deadbeef.json'), '{"command": 42');
  t.true(await until(() => records(auditFile).some((r) => r.event === 'admin' && r.decision === 'deny'), 8000));
  const denied = records(auditFile).find((r) => r.event === 'admin' && r.decision === 'deny');
  t.regex(denied?.reason ?? '', /unreadable admin spool file/);
  t.true(fs.existsSync(path.join(spool, '000000000000001-1-deadbeef.json.bad')), 'kept for inspection, not deleted');
});

test('the spool keeps its files while the audit sink cannot write, deletes them only after a flush, and never records one twice', async (t) => {
  const { AdminSpool, spoolAdminAction } = await import('../src/audit/admin-spool.ts');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-spool-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = spoolAdminAction(dir, { command: 'pki revoke', args: ['ab12'] });
  const recorded: string[] = [];
  const sink = { ok: false, flushFails: true, healthy() { return this.ok; }, async flush() { if (this.flushFails) throw new Error('disk full'); } };
  const warnings: string[] = [];
  const spool = new AdminSpool(dir, (e) => recorded.push(e.action ?? ''), (m) => warnings.push(m), sink, 60_000);

  await spool.drain();
  t.deepEqual(recorded, [], 'nothing is taken while the sink is failing');
  t.true(fs.existsSync(file));

  sink.ok = true;
  await spool.drain();
  t.deepEqual(recorded, ['pki revoke']);
  t.true(fs.existsSync(file), 'kept: the flush failed, so the record may not be on disk');
  t.regex(warnings.join('\n'), /disk full/);

  sink.flushFails = false;
  await spool.drain();
  t.deepEqual(recorded, ['pki revoke'], 'not recorded a second time');
});
