/**
 * The hand-written record serializer and the batched writer: the serializer writes exactly the
 * bytes the JSON.stringify-based one wrote (so old and new records verify alike), hostile strings
 * round-trip through JSON.parse and never break a line, and batches written in one go, across
 * rotation and after a failed write, keep the chain in order.
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { nodeFileIO, chainFiles, type AuditFileIO } from '../src/audit/file-output.ts';
import { createTimeFormatter, GENESIS, jsonString, parseRecord, serializeBody, serializeBodyWithJson, serializeRecord, sha256, splitHash } from '../src/audit/record.ts';
import { createAuditSink } from '../src/audit/sinks.ts';
import type { AuditEvent } from '../src/audit/types.ts';
import { verifyAuditFiles } from '../src/audit/verify.ts';
import { silentLogger } from '../src/log.ts';
import { auditSettings, readAuditLines, tempAuditDir } from './helpers.ts';

const HOSTILE = [
  '',
  'plain-ascii_01',
  'quote " and backslash \\ and both \\"',
  'new\nline and \r\n and tab\t',
  'x\n{"v":2,"seq":2,"event":"connect","decision":"allow","clientId":"root"}',
  Array.from({ length: 32 }, (_, i) => String.fromCharCode(i)).join(''),
  'del \u007f and C1 \u0080 \u0085 \u009b \u009f',
  'line sep \u2028 para sep \u2029',
  'lone high \ud800 end',
  'lone low \udfff end',
  '\udc00\ud800 reversed pair',
  'trailing high \udbff',
  'emoji 🔐 pair and é 中文 ü',
  '\u001b[2J terminal escape',
  '</script><!-- -->',
  'nul \u0000 inside',
  'a'.repeat(10_000),
];

function hostileEvent(s: string): AuditEvent {
  return {
    event: 'publish',
    action: s,
    decision: 'deny',
    reasonCode: 0x87,
    reason: s,
    listener: s,
    remoteAddress: s,
    remotePort: 1883,
    clientId: s,
    username: s,
    authMethod: s,
    decidedBy: s,
    rule: s,
    verdicts: [{ provider: s, kind: 'deny', reason: 0x87, detail: s }],
    certFingerprint: s,
    certSubject: s,
    topic: s,
    qos: 1,
    retain: true,
    policyVersion: s,
    detail: { [s]: s, n: 1, b: false },
  };
}

test('the hand-written serializer writes the same bytes as JSON.stringify with the extra escapes, for hostile strings in every field', (t) => {
  for (const s of HOSTILE) {
    const event = hostileEvent(s);
    const fast = serializeBody(event, 42, '2025-11-25T21:52:00.123Z', GENESIS, s);
    t.is(fast, serializeBodyWithJson(event, 42, '2025-11-25T21:52:00.123Z', GENESIS, s), JSON.stringify(s));
    t.false(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/.test(fast), 'no raw control or separator characters');
    t.false(/[\ud800-\udfff]/.test(fast.replace(/[\ud800-\udbff][\udc00-\udfff]/g, '')), 'no lone surrogates');
    // Lone surrogates are written as \u escapes and parse back to the same code units.
    const back = JSON.parse(fast) as Record<string, unknown>;
    for (const f of ['action', 'reason', 'listener', 'remoteAddress', 'clientId', 'username', 'authMethod', 'decidedBy', 'rule', 'certFingerprint', 'certSubject', 'topic', 'policyVersion', 'signature']) t.is(back[f], s, f);
    t.deepEqual(back.detail, { [s]: s, n: 1, b: false });
    t.deepEqual(back.verdicts, [{ provider: s, kind: 'deny', reason: 0x87, detail: s }]);
  }
});

test('random strings of any UTF-16 code units serialize the same way both ways and parse back', (t) => {
  let seed = 0x2545f491;
  const rand = (n: number) => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) % n;
  };
  const pool = [0, 0x0a, 0x0d, 0x1f, 0x20, 0x22, 0x2f, 0x5c, 0x7e, 0x7f, 0x80, 0x9f, 0xa0, 0x2028, 0x2029, 0xd800, 0xdbff, 0xdc00, 0xdfff, 0xfeff, 0xffff];
  for (let i = 0; i < 3000; i++) {
    const len = rand(24);
    let s = '';
    for (let j = 0; j < len; j++) s += String.fromCharCode(rand(3) === 0 ? (pool[rand(pool.length)] as number) : rand(3) === 0 ? rand(0x10000) : 0x20 + rand(0x5f));
    const event: AuditEvent = { event: 'connect', decision: 'allow', clientId: s, username: s, topic: s };
    const fast = serializeBody(event, i, '2025-11-25T21:52:00.123Z', GENESIS);
    if (fast !== serializeBodyWithJson(event, i, '2025-11-25T21:52:00.123Z', GENESIS)) {
      t.fail(`differs for ${JSON.stringify(s)}`);
      return;
    }
    const back = JSON.parse(fast) as { clientId: string };
    if (back.clientId !== s) {
      t.fail(`does not round-trip: ${JSON.stringify(s)}`);
      return;
    }
  }
  t.pass();
});

test('odd values are written as JSON writes them: fields left undefined are omitted, NaN and Infinity become null', (t) => {
  const event = { event: 'publish', decision: 'allow', reasonCode: Number.NaN, remotePort: Number.POSITIVE_INFINITY, qos: -0, clientId: undefined, topic: 'a/b' } as unknown as AuditEvent;
  const body = serializeBody(event, 1, '2025-11-25T21:52:00.123Z', GENESIS);
  t.is(body, serializeBodyWithJson(event, 1, '2025-11-25T21:52:00.123Z', GENESIS));
  t.regex(body, /"reasonCode":null,"remotePort":null/);
  t.false(body.includes('clientId'));
});

test('jsonString takes the fast path only for printable ASCII without quotes or backslashes', (t) => {
  t.is(jsonString('plant/1/temp'), '"plant/1/temp"');
  t.is(jsonString('a"b'), '"a\\"b"');
  t.is(jsonString('a\u2028b'), '"a\\u2028b"');
  t.is(jsonString('\ud800'), '"\\ud800"');
});

test('the record hash covers the line as written, and the one-shot SHA-256 matches over text and bytes', (t) => {
  const { line, hash } = serializeRecord(hostileEvent('x\ny "\u2028'), 7, '2025-11-25T21:52:00.123Z', GENESIS);
  const parts = splitHash(line);
  t.truthy(parts);
  t.is(parts?.hash, hash);
  t.is(sha256(parts?.body ?? ''), hash);
  t.is(sha256(Buffer.from(parts?.body ?? '', 'utf8')), hash);
  t.is(sha256('abc'), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
});

test('the time is formatted once per millisecond and matches toISOString', (t) => {
  const format = createTimeFormatter();
  for (const ms of [0, 1, 1, 1_732_580_000_123, 1_732_580_000_123, 1_732_580_000_124, 253_402_300_799_999]) {
    t.is(format(ms), new Date(ms).toISOString());
  }
});

/** A disk whose writes can be made to fail, keeping count of the writes that reached it. */
class SwitchableDisk implements AuditFileIO {
  failing = false;
  writes = 0;
  async write(fd: number, data: Buffer): Promise<void> {
    if (this.failing) throw Object.assign(new Error('ENOSPC: simulated'), { code: 'ENOSPC' });
    this.writes++;
    await nodeFileIO.write(fd, data);
  }
  fsync(fd: number): Promise<void> {
    return nodeFileIO.fsync(fd);
  }
}

test('many records in one turn go out in few writes, in order, and the chain verifies across size rotation', async (t) => {
  const dir = tempAuditDir(t);
  const disk = new SwitchableDisk();
  const settings = { ...auditSettings(path.join(dir, 'audit.jsonl')), maxQueue: 100_000, rotate: { maxBytes: 2 * 1024 * 1024, intervalSeconds: 0 } };
  const sink = createAuditSink(settings, silentLogger(), disk);
  const n = 30_000;
  for (let i = 0; i < n; i++) sink.record({ event: 'publish', decision: 'allow', reasonCode: 0, clientId: `device-${i}`, topic: `plant/${i % 7}/temp`, qos: 0, retain: false });
  await sink.flush();
  await sink.close();
  t.true(disk.writes < 200, `${disk.writes} writes for ${n} records`);
  const files = chainFiles(settings.path);
  t.true(files.length > 2, 'rotated at least twice');
  const report = await verifyAuditFiles(files);
  t.true(report.ok, report.problem?.message);
  const published = files.flatMap((f) => readAuditLines(f)).map((l) => parseRecord(l)).filter((r) => r?.event === 'publish');
  t.is(published.length, n);
  t.true(published.every((r, i) => r?.clientId === `device-${i}`), 'in the order recorded');
});

test('batches serialized while writes fail, some too big for the shared buffer, are written once, in order, after recovery', async (t) => {
  const dir = tempAuditDir(t);
  const disk = new SwitchableDisk();
  const settings = { ...auditSettings(path.join(dir, 'audit.jsonl')), maxQueue: 100_000 };
  const sink = createAuditSink(settings, silentLogger(), disk);
  await sink.flush();
  const huge = 'h'.repeat(600_000);
  let expected = 0;
  const turn = async (count: number, big: boolean) => {
    for (let i = 0; i < count; i++) sink.record({ event: 'publish', decision: 'deny', reasonCode: 0x87, clientId: big && i === 0 ? `${huge}-${expected}` : `c-${expected}`, topic: 't', qos: 1, retain: false, detail: { n: expected++ } });
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
  };
  // The first batch fails to write; the ones serialized before the failure is seen wait behind it.
  disk.failing = true;
  for (let k = 0; k < 6; k++) await turn(500, k % 2 === 0);
  t.false(sink.health?.().ok ?? true, 'the failure is reported');
  disk.failing = false;
  await new Promise((r) => setTimeout(r, 150)); // the retry
  for (let k = 0; k < 3; k++) await turn(300, k === 1);
  await sink.flush();
  await sink.close();
  const report = await verifyAuditFiles([settings.path]);
  t.true(report.ok, report.problem?.message);
  const ns = readAuditLines(settings.path)
    .map((l) => parseRecord(l))
    .filter((r) => r?.event === 'publish')
    .map((r) => r?.detail?.n);
  t.is(ns.length, expected, 'nothing lost');
  t.deepEqual(ns, Array.from({ length: expected }, (_, i) => i), 'nothing duplicated or reordered');
  t.is(fs.readFileSync(settings.path, 'utf8').split('\n').filter((l) => l.includes('"action":"recovered"')).length, 1);
});

test('a slow disk pauses serializing once 64 MiB wait to be written; the rest follows in order and the chain verifies', async (t) => {
  const dir = tempAuditDir(t);
  let writes = 0;
  const slow: AuditFileIO = {
    async write(fd, data) {
      writes++;
      await new Promise((r) => setTimeout(r, 100));
      await nodeFileIO.write(fd, data);
    },
    fsync: (fd) => nodeFileIO.fsync(fd),
  };
  // The 500 KB topics carry the bulk: not cut to audit.maxTopicLength here.
  const settings = { ...auditSettings(path.join(dir, 'audit.jsonl')), maxQueue: 100_000, maxTopicLength: 1_000_000 };
  const sink = createAuditSink(settings, silentLogger(), slow);
  const big = 'b'.repeat(500_000);
  const n = 200; // about 100 MB serialized
  for (let i = 0; i < n; i++) sink.record({ event: 'publish', decision: 'deny', reasonCode: 0x87, clientId: `c-${i}`, topic: big, qos: 0, retain: false, detail: { n: i } });
  await sink.flush();
  await sink.close();
  t.true(writes >= 3, `${writes} writes: serializing paused for the disk`);
  const report = await verifyAuditFiles([settings.path]);
  t.true(report.ok, report.problem?.message);
  t.is(report.records, n + 1);
  const ns = readAuditLines(settings.path)
    .map((l) => parseRecord(l))
    .filter((r) => r?.event === 'publish')
    .map((r) => r?.detail?.n);
  t.deepEqual(ns, Array.from({ length: n }, (_, i) => i));
});
