/**
 * Audit flood control, piece by piece: repeated denials of one connection summarised per window
 * (first topics in full, then one record with the count and the first and last topic), topics
 * cut to `audit.maxTopicLength`, the denial limit the broker disconnects on, the retention alarm,
 * and `audit stats` counting a summary for the denials it stands for.
 */
import path from 'node:path';
import { Writable } from 'node:stream';
import test from 'ava';
import { ChainedAuditSink } from '../src/audit/chained-sink.ts';
import { DenialLimiter } from '../src/audit/denial-limit.ts';
import { DenialSummarizer, IDENTITY_FULL_RECORDS } from '../src/audit/denial-summary.ts';
import { chainFiles } from '../src/audit/file-output.ts';
import { StatsCollector } from '../src/audit/query.ts';
import { parseRecord, sha256, type AuditRecord } from '../src/audit/record.ts';
import { createAuditSink } from '../src/audit/sinks.ts';
import { cutTopic } from '../src/audit/topic-cap.ts';
import type { AuditEvent, AuditWho } from '../src/audit/types.ts';
import { verifyAuditFiles } from '../src/audit/verify.ts';
import { configSchema } from '../src/config/schema.ts';
import { createLogger, silentLogger } from '../src/log.ts';
import { auditSettings, delay, memoryAuditOutput, readAuditLines, tempAuditDir } from './helpers.ts';

const who = (clientId: string): AuditWho => ({ listener: 't', remoteAddress: '127.0.0.2', remotePort: 50000, clientId, username: 'mallory', authMethod: 'password' });

function summarizingSink(intervalMs = 60_000, fullRecords = 3, maxTopicLength?: number) {
  const out = memoryAuditOutput();
  const sink = new ChainedAuditSink(out, {
    maxQueue: 10_000,
    log: silentLogger(),
    fsyncIntervalMs: 0,
    chainInWorker: false,
    denialSummary: { intervalMs, fullRecords },
    ...(maxTopicLength !== undefined ? { maxTopicLength } : {}),
  });
  const records = () => out.lines().map((l) => parseRecord(l) as AuditRecord);
  return { sink, records };
}

const deny = (sink: ChainedAuditSink, w: AuditWho, topic: string, reason = 'no rule allows it', event: 'subscribe' | 'publish' = 'subscribe') =>
  sink.recordAccess(w, event, 'deny', 0x87, reason, 'casbin', undefined, 'v1', topic, 1, false);

test('repeated denials of one connection: the first ones in full, the rest as one summary with the count and the first and last topic', async (t) => {
  const { sink, records } = summarizingSink();
  const mallory = who('m1');
  const before = Date.now();
  for (let i = 0; i < 10; i++) deny(sink, mallory, `secret/${i}`);
  await sink.close();
  const recs = records().filter((r) => r.clientId === 'm1');
  t.deepEqual(
    recs.map((r) => [r.action, r.topic]),
    [
      [undefined, 'secret/0'],
      [undefined, 'secret/1'],
      [undefined, 'secret/2'],
      ['summary', 'secret/3'],
    ],
  );
  const s = recs[3] as AuditRecord;
  t.like(s, { event: 'subscribe', decision: 'deny', reasonCode: 0x87, reason: 'no rule allows it', decidedBy: 'casbin', policyVersion: 'v1', username: 'mallory', remoteAddress: '127.0.0.2' });
  t.like(s.detail, { count: 7, lastTopic: 'secret/9', windowSeconds: 60 });
  t.true(Date.parse(String(s.detail?.first)) >= before - 1 && Date.parse(String(s.detail?.last)) >= Date.parse(String(s.detail?.first)));
  t.is(sink.summarized, 7);
});

test('each connection and each kind of denial (action, reason) is summarised on its own; allowed decisions never are', async (t) => {
  const { sink, records } = summarizingSink(60_000, 1);
  const a = who('a');
  const b = who('b');
  for (let i = 0; i < 4; i++) {
    deny(sink, a, `x/${i}`);
    deny(sink, a, `x/${i}`, 'denied by rule 7');
    deny(sink, a, `p/${i}`, 'no rule allows it', 'publish');
    deny(sink, b, `x/${i}`);
    sink.recordAccess(a, 'subscribe', 'allow', 1, undefined, 'casbin', undefined, 'v1', `ok/${i}`, 1, false);
  }
  await sink.close();
  const recs = records();
  const of = (clientId: string, event: string, reason: string) => recs.filter((r) => r.clientId === clientId && r.event === event && r.reason === reason && r.decision === 'deny');
  for (const [c, e, r] of [
    ['a', 'subscribe', 'no rule allows it'],
    ['a', 'subscribe', 'denied by rule 7'],
    ['a', 'publish', 'no rule allows it'],
    ['b', 'subscribe', 'no rule allows it'],
  ] as const) {
    const list = of(c, e, r);
    t.deepEqual(
      list.map((x) => [x.action, x.detail?.count]),
      [
        [undefined, undefined],
        ['summary', 3],
      ],
      `${c} ${e} ${r}`,
    );
  }
  t.is(recs.filter((r) => r.decision === 'allow' && r.event === 'subscribe').length, 4, 'every allowed subscribe recorded');
});

test('a window ends: its summary is written while the broker runs, and the next denial opens a new window in full', async (t) => {
  const { sink, records } = summarizingSink(200, 1);
  const m = who('m');
  for (let i = 0; i < 5; i++) deny(sink, m, `s/${i}`);
  await delay(500);
  await sink.flush();
  t.deepEqual(
    records()
      .filter((r) => r.clientId === 'm')
      .map((r) => [r.action, r.topic, r.detail?.count]),
    [
      [undefined, 's/0', undefined],
      ['summary', 's/1', 4],
    ],
  );
  deny(sink, m, 's/5');
  deny(sink, m, 's/6');
  await sink.close();
  t.deepEqual(
    records()
      .filter((r) => r.clientId === 'm')
      .slice(2)
      .map((r) => [r.action, r.topic, r.detail?.count]),
    [
      [undefined, 's/5', undefined],
      ['summary', 's/6', 1],
    ],
  );
});

test('allowed decisions are summarised only past their own budget (fullAllowed), in summaries that say allow; denials keep theirs', async (t) => {
  const out = memoryAuditOutput();
  const sink = new ChainedAuditSink(out, { maxQueue: 10_000, log: silentLogger(), fsyncIntervalMs: 0, chainInWorker: false, denialSummary: { intervalMs: 60_000, fullRecords: 2, fullAllowed: 5 } });
  const a = who('a');
  for (let i = 0; i < 20; i++) {
    sink.recordAccess(a, 'subscribe', 'allow', 1, undefined, 'casbin', undefined, 'v1', `ok/${i}`, 1, false);
    deny(sink, a, `x/${i}`);
  }
  await sink.close();
  const recs = out.lines().map((l) => parseRecord(l) as AuditRecord).filter((r) => r.clientId === 'a');
  const allowed = recs.filter((r) => r.decision === 'allow');
  t.deepEqual(allowed.map((r) => [r.action, r.topic, r.detail?.count]), [
    [undefined, 'ok/0', undefined],
    [undefined, 'ok/1', undefined],
    [undefined, 'ok/2', undefined],
    [undefined, 'ok/3', undefined],
    [undefined, 'ok/4', undefined],
    ['summary', 'ok/5', 15],
  ]);
  t.like(allowed[5]?.detail, { lastTopic: 'ok/19' });
  t.deepEqual(recs.filter((r) => r.decision === 'deny').map((r) => [r.action, r.detail?.count]), [
    [undefined, undefined],
    [undefined, undefined],
    ['summary', 18],
  ]);
});

test('one identity over many connections gets at most IDENTITY_FULL_RECORDS full records per window; the rest are counted in each connection\'s summary; another identity keeps its own', async (t) => {
  const out = memoryAuditOutput();
  const sink = new ChainedAuditSink(out, { maxQueue: 100_000, log: silentLogger(), fsyncIntervalMs: 0, chainInWorker: false, denialSummary: { intervalMs: 60_000, fullRecords: 3, fullAllowed: 100 } });
  const conns = Array.from({ length: 20 }, (_, i) => ({ ...who(`m-${i}`), remotePort: 40000 + i }));
  for (const c of conns) for (let i = 0; i < 200; i++) sink.recordAccess(c, 'subscribe', 'allow', 1, undefined, 'casbin', undefined, 'v1', `ok/${i}`, 1, false);
  const other = { ...who('o'), username: 'olivia' };
  for (let i = 0; i < 150; i++) sink.recordAccess(other, 'subscribe', 'allow', 1, undefined, 'casbin', undefined, 'v1', `ok/${i}`, 1, false);
  await sink.close();
  const recs = out.lines().map((l) => parseRecord(l) as AuditRecord).filter((r) => r.event === 'subscribe');
  const mine = recs.filter((r) => r.username === 'mallory');
  const full = mine.filter((r) => r.action === undefined).length;
  const counted = mine.filter((r) => r.action === 'summary').reduce((n, r) => n + Number(r.detail?.count), 0);
  t.is(full, IDENTITY_FULL_RECORDS, 'the identity\'s full records across its 20 connections');
  t.is(full + counted, 20 * 200, 'every decision written in full or counted');
  const hers = recs.filter((r) => r.username === 'olivia');
  t.is(hers.filter((r) => r.action === undefined).length, 100, 'another identity has its own budget');
});

test('the summariser remembers a bounded number of kinds per connection; past it, denials are written in full', (t) => {
  const emitted: AuditEvent[] = [];
  const s = new DenialSummarizer({ intervalMs: 60_000, fullRecords: 1, maxTopicLength: 512 }, (e) => emitted.push(e));
  const w = who('w');
  let full = 0;
  for (let k = 0; k < 40; k++) for (let i = 0; i < 3; i++) if (s.admit(w, 'publish', 'deny', 0x87, `reason ${k}`, 'casbin', undefined, undefined, 't', 1000)) full++;
  t.is(full, 32 * 1 + 8 * 3, '32 kinds summarised (1 in full each), the other 8 written in full');
  s.sweep(1000 + 60_000);
  t.is(emitted.length, 32);
  t.is(s.tracked, 0, 'quiet connections are forgotten');
});

test('topics longer than audit.maxTopicLength are cut in records, with their length and SHA-256; the fast path writes what record() writes', async (t) => {
  const long = `$share/g/${'a'.repeat(100)}/\u{1F600}${'b'.repeat(60_000)}`;
  const cut = cutTopic(long, 111);
  t.is(cut?.topic, long.slice(0, 110), 'a surrogate pair is never split');
  t.is(cut?.length, long.length);
  t.is(cut?.sha256, sha256(long));
  t.is(cutTopic('short', 111), null);

  const { sink, records } = summarizingSink(60_000, 5, 64);
  const w = who('c');
  const w2 = { ...w };
  deny(sink, w, long);
  sink.record({ event: 'subscribe', decision: 'deny', reasonCode: 0x87, reason: 'no rule allows it', ...w2, decidedBy: 'casbin', topic: long, qos: 1, retain: false, policyVersion: 'v1' });
  await sink.close();
  const [fast, slow] = records().filter((r) => r.clientId === 'c');
  t.is(fast?.topic?.length, 64);
  t.like(fast?.detail, { topicLength: long.length, topicSha256: sha256(long) });
  const strip = (r: AuditRecord | undefined) => {
    const { time: _t, seq: _s, prev: _p, hash: _h, ...rest } = r as AuditRecord;
    return rest;
  };
  t.deepEqual(strip(fast), strip(slow));
  t.true(records().every((r) => JSON.stringify(r).length < 1000), 'no record carries the 60 KB topic');
});

test('the denial limit: the denial that reaches it answers true, once per window; a new window starts over; 0 turns it off', (t) => {
  t.is(DenialLimiter.create({ disconnectAfter: 0, disconnectWindowSeconds: 10 }), null);
  const limiter = DenialLimiter.create({ disconnectAfter: 3, disconnectWindowSeconds: 10 }) as DenialLimiter;
  const conn = {};
  const other = {};
  const answers = [0, 1, 2, 3, 4].map((ms) => limiter.deny(conn, 1000 + ms));
  t.deepEqual(answers, [false, false, true, false, false]);
  t.false(limiter.deny(other, 1005), 'counted per connection');
  t.is(limiter.count(conn, 1005), 5);
  t.is(limiter.count(conn, 11_000), 0, 'the window is over');
  t.deepEqual([limiter.deny(conn, 11_000), limiter.deny(conn, 11_001), limiter.deny(conn, 11_002)], [false, false, true]);
  t.is(limiter.tripped, 2);
  t.is(limiter.reason(), '3 requests denied within 10 s');
});

test('retention deleting a file younger than audit.retention.alarmMinAgeHours raises an alarm in the log and in the chain', async (t) => {
  const dir = tempAuditDir(t);
  const logLines: string[] = [];
  const log = createLogger('warn', new Writable({ write: (c, _e, cb) => (logLines.push(String(c)), cb()) }));
  const file = path.join(dir, 'audit.jsonl');
  const sink = createAuditSink({ ...auditSettings(file), rotate: { maxBytes: 2000, intervalSeconds: 0 }, retention: { maxFiles: 1, maxAgeDays: 0, alarmMinAgeHours: 24 } }, log);
  for (let i = 0; i < 40; i++) {
    sink.record({ event: 'subscribe', decision: 'deny', reasonCode: 0x87, clientId: `c${i}`, topic: `t/${i}` });
    await sink.flush();
  }
  await sink.close();
  const recs = chainFiles(file).flatMap((f) => readAuditLines(f).map((l) => parseRecord(l) as AuditRecord));
  const alarms = recs.filter((r) => r.action === 'retention-alarm');
  t.true(alarms.length > 0);
  t.like(alarms[0], { event: 'audit', decision: 'deny' });
  t.like(alarms[0]?.detail, { alarmMinAgeHours: 24 });
  t.regex(String(alarms[0]?.detail?.file), /^audit\.\d{8}T\d{9}Z(-\d+)?\.jsonl$/);
  t.true(logLines.some((l) => l.includes('AUDIT RETENTION ALARM')));
  t.true((await verifyAuditFiles(chainFiles(file))).ok);

  const quiet = tempAuditDir(t);
  const calm = createAuditSink({ ...auditSettings(path.join(quiet, 'audit.jsonl')), rotate: { maxBytes: 2000, intervalSeconds: 0 }, retention: { maxFiles: 1, maxAgeDays: 0, alarmMinAgeHours: 0 } }, silentLogger());
  for (let i = 0; i < 40; i++) {
    calm.record({ event: 'subscribe', decision: 'deny', reasonCode: 0x87, clientId: `c${i}`, topic: `t/${i}` });
    await calm.flush();
  }
  await calm.close();
  const calmRecs = chainFiles(path.join(quiet, 'audit.jsonl')).flatMap((f) => readAuditLines(f).map((l) => parseRecord(l) as AuditRecord));
  t.true(calmRecs.some((r) => r.action === 'retention'));
  t.false(calmRecs.some((r) => r.action === 'retention-alarm'), 'alarm off: plain retention records');
});

test('the configuration summarises by default (3 in full per 10 s), caps topics at 512 and disconnects after 1000 denials in 10 s', async (t) => {
  const audit = configSchema.parse({ audit: { path: path.join(tempAuditDir(t), 'audit.jsonl'), fsyncIntervalMs: 0 } }).audit;
  t.like(audit.denials, { summarize: true, intervalSeconds: 10, fullRecords: 3, disconnectAfter: 1000, disconnectWindowSeconds: 10 });
  t.is(audit.allowed.fullRecords, 100, 'allowed decisions: 100 in full per connection, kind and window');
  t.is(audit.maxTopicLength, 512);
  t.is(audit.retention.alarmMinAgeHours, 24);
  t.like(audit.anchor, { log: false, timeoutMs: 2000, attempts: 3 });
  const sink = createAuditSink(audit, silentLogger());
  const w = who('d');
  for (let i = 0; i < 50; i++) sink.recordAccess?.(w, 'publish', 'deny', 0x87, 'x', 'casbin', undefined, undefined, `t/${i}`, 0, false);
  await sink.close();
  const recs = readAuditLines(audit.path).map((l) => parseRecord(l) as AuditRecord);
  t.is(recs.filter((r) => r.clientId === 'd').length, 4);

  const stats = new StatsCollector();
  for (const l of readAuditLines(audit.path)) stats.addLine(l);
  const r = stats.result();
  t.deepEqual(r.byEvent.publish, { allow: 0, deny: 50 }, 'audit stats counts a summary for the denials it stands for');
  t.is(r.summarized, 47);
  t.deepEqual(r.topDeniedClients[0], ['d', 50]);
});
