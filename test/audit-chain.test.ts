/**
 * The hash-chained audit file: continuity across restart and rotation, retention, signed
 * checkpoints, JSON escaping, and `verify` catching every kind of hand edit.
 */
import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { createAuditSink, type AuditSinkSettings } from '../src/audit/sinks.ts';
import { chainFiles, listRotatedFiles } from '../src/audit/file-output.ts';
import { GENESIS, parseRecord, serializeRecord } from '../src/audit/record.ts';
import { verifyAuditFiles } from '../src/audit/verify.ts';
import type { AuditSink } from '../src/audit/types.ts';
import { silentLogger } from '../src/log.ts';
import { auditSettings, readAuditLines, tempAuditDir } from './helpers.ts';

function tmp(t: ExecutionContext): string {
  return tempAuditDir(t);
}

async function writeRecords(sink: AuditSink, n: number, from = 0): Promise<void> {
  for (let i = from; i < from + n; i++) sink.record({ event: 'publish', decision: i % 2 ? 'allow' : 'deny', reasonCode: i % 2 ? 0 : 0x87, clientId: `dev-${i}`, topic: `plant/${i}/temp`, qos: 1, retain: false });
  await sink.flush();
}

test('each record links to the previous one and the chain verifies', async (t) => {
  const dir = tmp(t);
  const settings = auditSettings(path.join(dir, 'audit.jsonl'));
  const sink = createAuditSink(settings, silentLogger());
  await writeRecords(sink, 5);
  await sink.close();
  const lines = readAuditLines(settings.path);
  t.is(lines.length, 6, 'a start record and five decisions');
  const recs = lines.map((l) => parseRecord(l));
  t.is(recs[0]?.prev, GENESIS);
  for (let i = 1; i < recs.length; i++) {
    t.is(recs[i]?.seq, i + 1);
    t.is(recs[i]?.prev, recs[i - 1]?.hash);
  }
  t.regex(recs[1]?.time ?? '', /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, 'RFC 3339 UTC with milliseconds');
  const report = await verifyAuditFiles([settings.path]);
  t.true(report.ok, report.problem?.message);
  t.is(report.records, 6);
});

test('after a restart the chain continues from the last record of the file', async (t) => {
  const dir = tmp(t);
  const settings = auditSettings(path.join(dir, 'audit.jsonl'));
  const first = createAuditSink(settings, silentLogger());
  await writeRecords(first, 3);
  await first.close();
  const before = readAuditLines(settings.path);
  const lastBefore = parseRecord(before[before.length - 1] as string);
  const second = createAuditSink(settings, silentLogger());
  await writeRecords(second, 3, 3);
  await second.close();
  const after = readAuditLines(settings.path).map((l) => parseRecord(l));
  const resumed = after[before.length];
  t.is(resumed?.event, 'audit');
  t.is(resumed?.action, 'start');
  t.is(resumed?.seq, (lastBefore?.seq ?? 0) + 1);
  t.is(resumed?.prev, lastBefore?.hash);
  t.true((await verifyAuditFiles([settings.path])).ok);
});

test('size rotation keeps one chain across files; a restart continues from the newest rotated file; retention removes the oldest and says so', async (t) => {
  const dir = tmp(t);
  const settings: AuditSinkSettings = { ...auditSettings(path.join(dir, 'audit.jsonl')), rotate: { maxBytes: 1500, intervalSeconds: 0 }, retention: { maxFiles: 3, maxAgeDays: 0 } };
  const sink = createAuditSink(settings, silentLogger());
  for (let i = 0; i < 12; i++) await writeRecords(sink, 3, i * 3);
  await sink.close();
  const rotated = listRotatedFiles(settings.path);
  t.is(rotated.length, 3, 'retention keeps three rotated files');
  const all = chainFiles(settings.path);
  const report = await verifyAuditFiles(all);
  t.true(report.ok, report.problem?.message);
  t.truthy(report.startsAfter, 'the oldest files were removed, so the chain starts after a known record');
  const text = all.map((f) => fs.readFileSync(f, 'utf8')).join('');
  t.regex(text, /"action":"rotate"/);
  t.regex(text, /"action":"retention"/);

  // Restart with the live file removed (as after an operator moved it): continue from the newest rotated file.
  const newest = rotated[rotated.length - 1] as string;
  const newestLines = readAuditLines(newest);
  fs.renameSync(settings.path, path.join(dir, 'moved-away.jsonl'));
  const tip = parseRecord(newestLines[newestLines.length - 1] as string);
  const again = createAuditSink(settings, silentLogger());
  await again.close();
  const first = parseRecord(readAuditLines(settings.path)[0] as string);
  t.is(first?.prev, tip?.hash);
  t.is(first?.seq, (tip?.seq ?? 0) + 1);
});

async function tampered(t: ExecutionContext, edit: (lines: string[]) => string): Promise<Awaited<ReturnType<typeof verifyAuditFiles>>> {
  const dir = tmp(t);
  const file = path.join(dir, 'audit.jsonl');
  const sink = createAuditSink(auditSettings(file), silentLogger());
  await writeRecords(sink, 9);
  await sink.close();
  t.true((await verifyAuditFiles([file])).ok, 'intact before the edit');
  fs.writeFileSync(file, edit(readAuditLines(file)));
  return verifyAuditFiles([file]);
}

test('verify catches a changed field and names the record', async (t) => {
  const r = await tampered(t, (lines) => {
    t.regex(lines[4] as string, /"decision":"allow"/);
    lines[4] = (lines[4] as string).replace('"decision":"allow"', '"decision":"deny"');
    return lines.join('\n') + '\n';
  });
  t.false(r.ok);
  t.is(r.problem?.code, 'hash-mismatch');
  t.is(r.problem?.line, 5);
  t.is(r.problem?.seq, 5);
});

test('verify catches a deleted line: the records that are missing are named', async (t) => {
  const r = await tampered(t, (lines) => [...lines.slice(0, 3), ...lines.slice(4)].join('\n') + '\n');
  t.false(r.ok);
  t.is(r.problem?.code, 'missing');
  t.is(r.problem?.line, 4);
  t.regex(r.problem?.message ?? '', /records 4\.\.4 are missing/);
});

test('verify catches two records swapped', async (t) => {
  const r = await tampered(t, (lines) => {
    const [a, b] = [lines[5] as string, lines[6] as string];
    lines[5] = b;
    lines[6] = a;
    return lines.join('\n') + '\n';
  });
  t.false(r.ok);
  t.is(r.problem?.code, 'out-of-order');
  t.is(r.problem?.line, 6);
});

test('verify catches a truncation in the middle and a torn last record', async (t) => {
  const middle = await tampered(t, (lines) => {
    const text = lines.join('\n') + '\n';
    const at = text.indexOf(lines[3] as string) + 40;
    return text.slice(0, at) + text.slice(at + (lines[3] as string).length);
  });
  t.false(middle.ok);
  t.is(middle.problem?.code, 'malformed');
  t.is(middle.problem?.line, 4);

  const end = await tampered(t, (lines) => (lines.join('\n') + '\n').slice(0, -30));
  t.false(end.ok);
  t.is(end.problem?.code, 'malformed');
  t.regex(end.problem?.message ?? '', /truncated/);
});

test('a rewritten chain (every hash recomputed) still passes the hashes but fails the signed checkpoint', async (t) => {
  const dir = tmp(t);
  const file = path.join(dir, 'audit.jsonl');
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const keyFile = path.join(dir, 'signing.key');
  fs.writeFileSync(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  const sink = createAuditSink({ ...auditSettings(file), checkpoint: { keyFile, intervalSeconds: 3600 } }, silentLogger());
  await writeRecords(sink, 4);
  await sink.close(); // a final checkpoint is signed on close
  const lines = readAuditLines(file);
  const cp = parseRecord(lines[lines.length - 1] as string);
  t.is(cp?.event, 'checkpoint');
  t.regex(cp?.signature ?? '', /^[\w-]+\.[\w-]+\.[\w-]+$/, 'a compact JWS');
  const good = await verifyAuditFiles([file], { key: publicKey });
  t.true(good.ok, good.problem?.message);
  t.is(good.checkpoints.verified, 2, 'one signed at start (over the start record), one at close');
  t.is(good.lastSignedSeq, cp?.seq);

  // An attacker edits record 3 and recomputes every hash after it, keeping the old signature.
  let prev = GENESIS;
  const forged = lines.map((line) => {
    const rec = parseRecord(line);
    if (rec === null) throw new Error('unparseable');
    const { v: _v, time, seq, signature, prev: _p, hash: _h, ...event } = rec;
    if (seq === 3) event.decision = event.decision === 'allow' ? 'deny' : 'allow';
    const out = serializeRecord(event, seq, time, prev, signature);
    prev = out.hash;
    return out.line;
  });
  fs.writeFileSync(file, forged.join('\n') + '\n');
  t.true((await verifyAuditFiles([file])).ok, 'without the key a recomputed chain cannot be told apart');
  const bad = await verifyAuditFiles([file], { key: publicKey });
  t.false(bad.ok);
  // The signature is valid, over another chain: the edit is among the records it was the first signature for.
  t.is(bad.problem?.code, 'checkpoint-mismatch');
  t.is(bad.problem?.seq, cp?.seq);
  const range = bad.problem?.range;
  t.true(range !== undefined && range.from <= 3 && 3 <= range.to, `the edited record 3 is within the range named: ${JSON.stringify(range)}`);
});

test('a checkpoint key that is not Ed25519 is refused at start, naming audit.checkpoint.keyFile', (t) => {
  const dir = tmp(t);
  const keyFile = path.join(dir, 'rsa.key');
  fs.writeFileSync(keyFile, generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
  const err = t.throws(() => createAuditSink({ ...auditSettings(path.join(dir, 'a.jsonl')), checkpoint: { keyFile, intervalSeconds: 60 } }, silentLogger()));
  t.is((err as { key?: string }).key, 'audit.checkpoint.keyFile');
  t.regex(err?.message ?? '', /Ed25519/);
});

test('newlines, quotes and control characters in a client id or username stay inside one escaped record', async (t) => {
  const dir = tmp(t);
  const file = path.join(dir, 'audit.jsonl');
  const sink = createAuditSink(auditSettings(file), silentLogger());
  const clientId = 'evil\n{"v":2,"seq":99,"event":"connect","decision":"allow"}\r\u0000\u001b[31m\u0085\u2028';
  const username = 'u"\n\t';
  sink.record({ event: 'connect', decision: 'deny', reasonCode: 0x87, clientId, username });
  await sink.close();
  const text = fs.readFileSync(file, 'utf8');
  const lines = readAuditLines(file);
  t.is(lines.length, 2, 'start record + one record: nothing forged');
  t.is(text.split('\n').length, 3);
  t.false(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/.test(text.replace(/\n/g, '')), 'no raw control characters in the file');
  const rec = parseRecord(lines[1] as string);
  t.is(rec?.clientId, clientId, 'the value round-trips exactly');
  t.is(rec?.username, username);
  t.true((await verifyAuditFiles([file])).ok);
});
