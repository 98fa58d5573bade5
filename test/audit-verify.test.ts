/**
 * `audit verify --key` across runs of the sink: a checkpoint signed at start marks where each
 * run began, so the tail of a run that crashed is told apart from checkpoints removed by hand;
 * a run that signed nothing fails the cadence; checkpoints of earlier versions still verify.
 */
import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { signCheckpoint } from '../src/audit/checkpoint.ts';
import { createAuditSink, type AuditSinkSettings } from '../src/audit/sinks.ts';
import { GENESIS, parseRecord, serializeRecord } from '../src/audit/record.ts';
import { verifyAuditFiles } from '../src/audit/verify.ts';
import { unsignedGapLimitMs } from '../src/audit/verify-signatures.ts';
import { verifyCommand } from '../src/cli/audit.ts';
import { silentLogger } from '../src/log.ts';
import { auditSettings, delay, readAuditLines, tempAuditDir } from './helpers.ts';

function setup(t: ExecutionContext) {
  const dir = tempAuditDir(t);
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const keyFile = path.join(dir, 'signing.key');
  fs.writeFileSync(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  const file = path.join(dir, 'audit.jsonl');
  const signed: AuditSinkSettings = { ...auditSettings(file), checkpoint: { keyFile, intervalSeconds: 60 } };
  return { dir, file, privateKey, publicKey, keyFile, signed, unsigned: auditSettings(file) };
}

/** A run of the sink: records `count` denials `gapMs` apart, then stops cleanly or "crashes" (its last checkpoint never written). */
async function run(settings: AuditSinkSettings, count: number, gapMs: number, end: 'close' | 'crash'): Promise<void> {
  const sink = createAuditSink(settings, silentLogger());
  for (let i = 0; i < count; i++) {
    if (i > 0) await delay(gapMs);
    sink.record({ event: 'subscribe', decision: 'deny', reasonCode: 0x87, clientId: `c${i}`, topic: `t/${i}` });
  }
  await sink.close();
  if (end === 'crash' && settings.checkpoint.keyFile !== undefined) {
    // The file as a crash leaves it: everything but the checkpoint signed on the way out.
    const lines = readAuditLines(settings.path);
    const last = parseRecord(lines[lines.length - 1] as string);
    if (last?.event !== 'checkpoint') throw new Error('expected a closing checkpoint');
    fs.writeFileSync(settings.path, lines.slice(0, -1).join('\n') + '\n');
  }
}

test('each run signs a checkpoint at start over its start record, and one at close; both sign how many records they cover', async (t) => {
  const s = setup(t);
  await run(s.signed, 3, 0, 'close');
  const recs = readAuditLines(s.file).map((l) => parseRecord(l));
  t.deepEqual(
    recs.map((r) => r?.event),
    ['audit', 'checkpoint', 'subscribe', 'subscribe', 'subscribe', 'checkpoint'],
  );
  const payload = (jws: string) => JSON.parse(Buffer.from(jws.split('.')[1] as string, 'base64url').toString()) as { count: number; interval: number; seq: number };
  t.like(payload(recs[1]?.signature as string), { seq: 2, count: 1, interval: 60 });
  t.like(payload(recs[5]?.signature as string), { seq: 6, count: 3, interval: 60 });
  const r = await verifyAuditFiles([s.file], { key: s.publicKey });
  t.true(r.ok, r.problem?.message);
  t.is(r.checkpoints.verified, 2);
});

test('a clean restart continues the signed chain; a crash leaves a tail that the next run signs at start, reported with the downtime', async (t) => {
  const s = setup(t);
  await run(s.signed, 2, 0, 'close');
  await run(s.signed, 3, 0, 'crash');
  const crashedLast = parseRecord(readAuditLines(s.file).at(-1) as string);
  await delay(300);
  await run(s.signed, 1, 0, 'close');
  const r = await verifyAuditFiles([s.file], { key: s.publicKey, maxUnsignedGapMs: 2000 });
  t.true(r.ok, r.problem?.message);
  t.is(r.restarts?.length, 1, 'one crash');
  t.is(r.restarts?.[0]?.toSeq, crashedLast?.seq);
  t.is(r.restarts?.[0]?.records, 3, "the crashed run's three denials, after its opening checkpoint");
  t.true((r.restarts?.[0]?.downtimeMs ?? 0) >= 250);
  let out = '';
  t.is(await verifyCommand([s.file], { key: path.join(s.dir, 'signing.key'), maxUnsignedGap: '2' }, { out: (x) => (out += x), err: () => {} }), 0);
  t.regex(out, /written before a restart without a last checkpoint \(a crash\?\) and signed only after it/);
});

test('the tail of a crashed run that had gone unsigned longer than the cadence fails, naming its first record', async (t) => {
  const s = setup(t);
  await run(s.signed, 3, 250, 'crash');
  await run(s.signed, 1, 0, 'close');
  const first = readAuditLines(s.file).map((l) => parseRecord(l)).find((r) => r?.event === 'subscribe');
  const r = await verifyAuditFiles([s.file], { key: s.publicKey, maxUnsignedGapMs: 300 });
  t.false(r.ok);
  t.is(r.problem?.code, 'unsigned-gap');
  t.is(r.problem?.seq, first?.seq);
  t.regex(r.problem?.message ?? '', /before the broker stopped/);
});

test('a run without a signing key, followed by one with it: the unsigned run fails the cadence', async (t) => {
  const s = setup(t);
  await run(s.unsigned, 3, 250, 'close');
  await run(s.signed, 1, 0, 'close');
  const r = await verifyAuditFiles([s.file], { key: s.publicKey, maxUnsignedGapMs: 300 });
  t.false(r.ok);
  t.is(r.problem?.code, 'unsigned-gap');
  t.is(r.problem?.seq, 1);
  t.true((await verifyAuditFiles([s.file], { key: s.publicKey, maxUnsignedGapMs: 5000 })).ok, 'within a longer cadence it passes');
});

test('a log that ends with a run without a key: its records are an unsigned tail, failed when longer than the cadence', async (t) => {
  const s = setup(t);
  await run(s.signed, 1, 0, 'close');
  await run(s.unsigned, 3, 250, 'close');
  const r = await verifyAuditFiles([s.file], { key: s.publicKey, maxUnsignedGapMs: 300 });
  t.false(r.ok);
  t.is(r.problem?.code, 'unsigned-tail');
  t.is(r.tail?.records, 4, 'the start record and three denials');
  const lenient = await verifyAuditFiles([s.file], { key: s.publicKey, maxUnsignedGapMs: 5000 });
  t.true(lenient.ok);
  t.is(lenient.tail?.records, 4);
  t.true((lenient.tail?.ageMs ?? 0) >= (lenient.tail?.spanMs ?? 1));
});

test('the default cadence is the interval the checkpoints signed, plus a quarter of it (at least 1 s)', (t) => {
  t.is(unsignedGapLimitMs(60), 75_000);
  t.is(unsignedGapLimitMs(1), 2000);
  t.is(unsignedGapLimitMs(3600), 4_500_000);
});

test('checkpoints written before they signed a count and interval still verify', async (t) => {
  const s = setup(t);
  const lines: string[] = [];
  let prev = GENESIS;
  const t0 = Date.now();
  for (let seq = 1; seq <= 4; seq++) {
    const time = new Date(t0 + seq).toISOString();
    const signature = seq === 4 ? await signCheckpoint({ seq, prev, time }, s.privateKey) : undefined;
    const r = serializeRecord(seq === 4 ? { event: 'checkpoint', decision: 'allow', reason: 'signed checkpoint' } : { event: 'connect', decision: 'allow', clientId: `c${seq}` }, seq, time, prev, signature);
    lines.push(r.line);
    prev = r.hash;
  }
  fs.writeFileSync(s.file, lines.join('\n') + '\n');
  const r = await verifyAuditFiles([s.file], { key: s.publicKey });
  t.true(r.ok, r.problem?.message);
  t.is(r.checkpoints.verified, 1);
});

test('verify --max-unsigned-gap needs --key and a number; --require-checkpoint needs --key', async (t) => {
  const s = setup(t);
  await run(s.unsigned, 1, 0, 'close');
  let err = '';
  const io = { out: () => {}, err: (x: string) => (err += x) };
  t.is(await verifyCommand([s.file], { maxUnsignedGap: '5' }, io), 2);
  t.regex(err, /--max-unsigned-gap needs --key/);
  t.is(await verifyCommand([s.file], { key: s.keyFile, maxUnsignedGap: 'soon' }, io), 2);
  t.regex(err, /must be a number of seconds/);
  t.is(await verifyCommand([s.file], { requireCheckpoint: true }, io), 2);
});
