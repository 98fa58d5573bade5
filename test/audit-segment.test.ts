/**
 * Records chained off the broker's thread: the access fast path writes exactly what the
 * serializer writes for the same event, the worker thread and the calling thread chain the
 * same bytes, the definition table starts over without mixing pieces up, and a chaining thread
 * that dies loses nothing silently.
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { inlineChainer, type Chainer } from '../src/audit/chain-segment.ts';
import { ChainedAuditSink, type AuditOutput } from '../src/audit/chained-sink.ts';
import { GENESIS, parseRecord, serializeRecord } from '../src/audit/record.ts';
import type { AuditEvent, AuditEventName, AuditWho } from '../src/audit/types.ts';
import { verifyAuditFiles } from '../src/audit/verify.ts';
import { silentLogger } from '../src/log.ts';
import { tempAuditDir } from './helpers.ts';

/** An output that keeps what it is given. */
function memoryOutput(): AuditOutput & { text(): string } {
  const chunks: Buffer[] = [];
  return {
    name: 'memory',
    write: async (data) => void chunks.push(Buffer.from(data)),
    close: async () => {},
    text: () => Buffer.concat(chunks).toString('utf8'),
  };
}

const HOSTILE = ['plain', 'new\nline', 'quote " and \\ backslash', 'tab\tnul\u0000', 'del\u007f c1\u0085', 'sep\u2028\u2029', 'é ü 漢字 🚀', 'lone \ud800 surrogate', ''];

interface Access {
  who: AuditWho;
  event: AuditEventName;
  decision: 'allow' | 'deny';
  reasonCode: number;
  reason: string | undefined;
  decidedBy: string | undefined;
  rule: string | undefined;
  policyVersion: string | undefined;
  topic: string;
  qos: number;
  retain: boolean;
}

function accesses(): Access[] {
  const out: Access[] = [];
  const events: AuditEventName[] = ['publish', 'deliver', 'subscribe', 'unsubscribe', 'will'];
  HOSTILE.forEach((s, i) => {
    const who: AuditWho =
      i % 3 === 0
        ? { listener: 'tls', remoteAddress: '127.0.0.1', remotePort: 50000 + i, clientId: `dev-${s}`, username: s, authMethod: 'certificate', certFingerprint: 'AB:CD', certSubject: `CN=${s}` }
        : i % 3 === 1
          ? { listener: 'tcp', remoteAddress: '::1', remotePort: 1883, clientId: s }
          : { clientId: '' };
    for (let k = 0; k < 4; k++) {
      const deny = k % 2 === 1;
      out.push({
        who,
        event: events[(i + k) % events.length] as AuditEventName,
        decision: deny ? 'deny' : 'allow',
        reasonCode: deny ? 0x87 : 0,
        reason: deny ? `denied: ${s}` : k === 2 ? 'no authorizer allowed it' : undefined,
        decidedBy: k === 3 ? undefined : 'casbin',
        rule: k % 2 === 0 ? `p, ${s}, a/+, publish, allow` : undefined,
        policyVersion: k === 1 ? undefined : `v-${i}`,
        topic: `plant/${s}/${k}`,
        qos: k % 3,
        retain: k === 2,
      });
    }
    // A connection's decisions that repeat all but the topic (the sink reuses the last one's
    // pieces), then differ in one field only: each must still be written as it is.
    const last = out[out.length - 1] as Access;
    out.push({ ...last, topic: `again/${s}` });
    out.push({ ...last, topic: `again/${s}`, retain: !last.retain });
    out.push({ ...last, topic: `again/${s}`, retain: !last.retain, policyVersion: 'v-other' });
    out.push({ ...last, topic: `again/${s}`, retain: !last.retain, policyVersion: 'v-other', reason: 'changed' });
    out.push({ ...last, topic: `again/${s}` });
  });
  return out;
}

function asEvent(a: Access): AuditEvent {
  const e: AuditEvent = { event: a.event, decision: a.decision, reasonCode: a.reasonCode };
  if (a.reason !== undefined) e.reason = a.reason;
  Object.assign(e, a.who);
  if (a.decidedBy !== undefined) e.decidedBy = a.decidedBy;
  if (a.rule !== undefined) e.rule = a.rule;
  e.topic = a.topic;
  e.qos = a.qos;
  e.retain = a.retain;
  if (a.policyVersion !== undefined) e.policyVersion = a.policyVersion;
  return e;
}

function send(sink: ChainedAuditSink, a: Access): void {
  sink.recordAccess(a.who, a.event, a.decision, a.reasonCode, a.reason, a.decidedBy, a.rule, a.policyVersion, a.topic, a.qos, a.retain);
}

for (const chainInWorker of [true, false]) {
  test(`access records from the fast path are byte for byte what the serializer writes for the same event (${chainInWorker ? 'worker thread' : 'calling thread'})`, async (t) => {
    const out = memoryOutput();
    const sink = new ChainedAuditSink(out, { maxQueue: 10_000, log: silentLogger(), chainInWorker });
    const list = accesses();
    for (const a of list) send(sink, a);
    await sink.close();
    const lines = out.text().split('\n').filter((l) => l !== '');
    t.is(lines.length, list.length + 1, 'a start record and one record per decision');
    let prev = GENESIS;
    lines.forEach((line, i) => {
      const rec = parseRecord(line);
      if (rec === null) return t.fail(`line ${i + 1} does not parse`);
      t.is(rec.seq, i + 1);
      t.is(rec.prev, prev);
      if (i > 0) {
        const event = asEvent(list[i - 1] as Access);
        const expected = serializeRecord(event, rec.seq, rec.time, prev);
        t.is(line, expected.line, `record ${i + 1}`);
      }
      prev = rec.hash;
    });
  });
}

// Serial: these replace Date.now, which the tests running beside them would see.
test.serial('the worker thread and the calling thread chain the same bytes, across a restart of the definition table', async (t) => {
  const realNow = Date.now;
  let clock = 1_764_000_000_000;
  Date.now = () => clock;
  try {
    const run = async (chainInWorker: boolean): Promise<string> => {
      clock = 1_764_000_000_000;
      const out = memoryOutput();
      // The clock is read for every record: where event-loop turns begin differs between the two runs.
      const sink = new ChainedAuditSink(out, { maxQueue: 100_000, log: silentLogger(), chainInWorker, clockReuse: 1, tip: { seq: 41, hash: 'f'.repeat(64) } });
      const list = accesses();
      // More distinct rules than the table holds: ids are reused and defined again.
      for (let i = 0; i < 9000; i++) {
        clock += i % 7 === 0 ? 1 : 0;
        const a = { ...(list[i % list.length] as Access), rule: `p, user-${i % 5000}, t/${i}, publish, allow` };
        send(sink, a);
        if (i % 1000 === 0) sink.record({ event: 'connect', decision: 'deny', reasonCode: 0x86, clientId: `c-${i}`, reason: 'bad user name or password' });
        if (i % 2500 === 0) await new Promise((r) => setImmediate(r));
      }
      await sink.close();
      return out.text();
    };
    const inWorker = await run(true);
    const inline = await run(false);
    t.is(inWorker.split('\n').length, 9000 + 9 + 1 + 1);
    t.true(inWorker === inline, 'identical output');
    const rules = inline
      .split('\n')
      .filter((l) => l.includes('"event":"'))
      .map((l) => parseRecord(l))
      .filter((r) => r?.rule !== undefined)
      .map((r) => r?.rule);
    const parsed = inline.split('\n').filter((l) => l !== '');
    const bad = parsed.filter((l) => parseRecord(l) === null);
    t.deepEqual(bad, []);
    t.is(rules.length, 9000);
    t.true(
      rules.every((r, i) => r === `p, user-${i % 5000}, t/${i}, publish, allow`),
      'each record names its own rule after the table restarted',
    );
  } finally {
    Date.now = realNow;
  }
});

test('when the chaining thread dies, the records it held are counted, logged and recorded as dropped; later records are chained and the log verifies', async (t) => {
  const dir = tempAuditDir(t);
  const file = path.join(dir, 'audit.jsonl');
  const fd = fs.openSync(file, 'a');
  const output: AuditOutput = {
    name: file,
    write: async (data) => void fs.writeSync(fd, data),
    close: async () => fs.closeSync(fd),
  };
  let calls = 0;
  const createChainer = (tip: { seq: number; hash: string }, prefix: string): Chainer => {
    const inner = inlineChainer(tip, prefix);
    return {
      chain: (nums, n, text) => (++calls === 2 ? Promise.reject(new Error('chaining thread exited (code 1)')) : inner.chain(nums, n, text)),
      recycle: (b) => inner.recycle(b),
      close: () => inner.close(),
    };
  };
  const errors: string[] = [];
  const log = { ...silentLogger(), error: (_o: unknown, msg?: string) => void errors.push(String(msg)) } as ReturnType<typeof silentLogger>;
  const sink = new ChainedAuditSink(output, { maxQueue: 1000, log, createChainer });
  const who: AuditWho = { clientId: 'dev-1', username: 'fleet' };
  for (let i = 0; i < 5; i++) sink.recordAccess(who, 'publish', 'allow', 0, undefined, 'allow-all', undefined, undefined, `a/${i}`, 0, false);
  await sink.flush();
  for (let i = 5; i < 12; i++) sink.recordAccess(who, 'publish', 'allow', 0, undefined, 'allow-all', undefined, undefined, `a/${i}`, 0, false);
  await sink.flush();
  for (let i = 12; i < 15; i++) sink.recordAccess(who, 'publish', 'allow', 0, undefined, 'allow-all', undefined, undefined, `a/${i}`, 0, false);
  await sink.close();
  t.is(sink.dropped, 7);
  t.true(errors.some((m) => m.includes('AUDIT CHAINING FAILED')));
  t.true(errors.some((m) => m.includes('AUDIT RECORDS DROPPED')));
  const recs = fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => parseRecord(l));
  const topics = recs.filter((r) => r?.event === 'publish').map((r) => r?.topic);
  t.deepEqual(topics, ['a/0', 'a/1', 'a/2', 'a/3', 'a/4', 'a/12', 'a/13', 'a/14']);
  const dropped = recs.find((r) => r?.event === 'audit' && r.action === 'dropped');
  t.is(dropped?.detail?.dropped, 7);
  const report = await verifyAuditFiles([file]);
  t.true(report.ok, report.problem?.message);
});

test('the stdout sink writes every record, in order, one batch per write, while chained batches pile up behind a slow reader', async (t) => {
  const { Writable } = await import('node:stream');
  const { stdoutOutput } = await import('../src/audit/sinks.ts');
  const chunks: Buffer[] = [];
  // A slow reader (a pipe to a busy log shipper): chained batches pile up while a write is pending.
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      // Kept as given, not copied: the sink must not reuse a buffer a stream may still hold.
      chunks.push(chunk);
      setTimeout(cb, 100);
    },
  });
  const output = stdoutOutput(stream, 'test-stdout');
  t.is(output.writev, undefined, 'no rollback, so no multi-batch writes: a retry must not write lines twice');
  const sink = new ChainedAuditSink(output, { maxQueue: 100_000, log: silentLogger(), fsyncIntervalMs: 1000 });
  const who: AuditWho = { listener: 'tcp', clientId: 'dev-1' };
  // More than a segment's worth in one turn: several segments are chained before the first write.
  for (let i = 0; i < 20_000; i++) sink.recordAccess(who, 'publish', 'allow', 0, undefined, 'allow-all', undefined, undefined, `t/${i}`, 0, false);
  await sink.close();
  const dir = tempAuditDir(t);
  const file = path.join(dir, 'stdout.jsonl');
  fs.writeFileSync(file, Buffer.concat(chunks));
  const report = await verifyAuditFiles([file]);
  t.true(report.ok, report.problem?.message);
  t.is(report.records, 20_001);
  const topics = Buffer.concat(chunks)
    .toString('utf8')
    .split('\n')
    .filter((l) => l.includes('"event":"publish"'))
    .map((l) => parseRecord(l)?.topic);
  t.deepEqual(topics, Array.from({ length: 20_000 }, (_, i) => `t/${i}`));
  t.true(chunks.length >= 3, `${chunks.length} writes`);
});

test('an empty topic (an UNSUBSCRIBE filter is checked after it is audited) still makes a well-formed record, the same as the serializer\'s', async (t) => {
  const out = memoryOutput();
  const sink = new ChainedAuditSink(out, { maxQueue: 100, log: silentLogger() });
  const a: Access = { who: { clientId: 'c' }, event: 'unsubscribe', decision: 'deny', reasonCode: 0x87, reason: 'no', decidedBy: 'casbin', rule: undefined, policyVersion: undefined, topic: '', qos: 0, retain: false };
  send(sink, a);
  send(sink, { ...a, topic: 'after' });
  await sink.close();
  const lines = out.text().split('\n').filter((l) => l !== '');
  const rec = parseRecord(lines[1] as string);
  t.is(rec?.topic, '');
  t.is(lines[1], serializeRecord(asEvent(a), 2, rec?.time ?? '', rec?.prev ?? '').line);
  t.is(parseRecord(lines[2] as string)?.prev, rec?.hash);
});

test('an fsync that fails once, with nothing left to write, recovers: the sink is healthy again and later records are written', async (t) => {
  const lines: string[] = [];
  let failSync = false;
  const output: AuditOutput = {
    name: 'flaky-fsync',
    write: async (data) => void lines.push(...data.toString('utf8').split('\n').filter((l) => l !== '')),
    sync: async () => {
      if (failSync) {
        failSync = false;
        throw Object.assign(new Error('EIO: simulated'), { code: 'EIO' });
      }
    },
    close: async () => {},
  };
  const sink = new ChainedAuditSink(output, { maxQueue: 100, log: silentLogger(), fsyncIntervalMs: 0, retryMs: 20 });
  const who: AuditWho = { clientId: 'c' };
  failSync = true;
  sink.recordAccess(who, 'publish', 'allow', 0, undefined, 'allow-all', undefined, undefined, 'before', 0, false);
  await sink.flush();
  t.false(sink.healthy(), 'the failed fsync is reported');
  await new Promise((r) => setTimeout(r, 100));
  t.true(sink.healthy(), 'the retried fsync succeeded');
  sink.recordAccess(who, 'publish', 'allow', 0, undefined, 'allow-all', undefined, undefined, 'after', 0, false);
  await sink.close();
  const recs = lines.map((l) => parseRecord(l));
  t.deepEqual(
    recs.filter((r) => r?.event === 'publish').map((r) => r?.topic),
    ['before', 'after'],
  );
  t.truthy(recs.find((r) => r?.action === 'recovered'), 'the recovery is recorded');
  for (let i = 1; i < recs.length; i++) t.is(recs[i]?.prev, recs[i - 1]?.hash);
});

test('closing while every write fails counts the unwritten records once, as lost at close, not as dropped by the chaining thread', async (t) => {
  const errors: string[] = [];
  const log = { ...silentLogger(), error: (_o: unknown, msg?: string) => void errors.push(String(msg)) } as ReturnType<typeof silentLogger>;
  const output: AuditOutput = {
    name: 'full-disk',
    write: async () => {
      throw Object.assign(new Error('ENOSPC: simulated'), { code: 'ENOSPC' });
    },
    close: async () => {},
  };
  const sink = new ChainedAuditSink(output, { maxQueue: 100_000, log, retryMs: 10_000 });
  const who: AuditWho = { clientId: 'c' };
  for (let i = 0; i < 10_000; i++) sink.recordAccess(who, 'publish', 'allow', 0, undefined, 'allow-all', undefined, undefined, `t/${i}`, 0, false);
  await sink.close();
  t.is(sink.dropped, 0);
  t.false(errors.some((m) => m.includes('AUDIT CHAINING FAILED')));
  t.true(errors.some((m) => m.includes('audit log closed with 10001 records that could not be written')), errors.join(' | '));
});

test.serial('access records read the clock again after every run of synchronous code (however it ends), and at least every 16 records within one', async (t) => {
  const realNow = Date.now;
  let clock = 1_764_000_000_000;
  Date.now = () => clock;
  try {
    const out = memoryOutput();
    const sink = new ChainedAuditSink(out, { maxQueue: 1000, log: silentLogger(), chainInWorker: false });
    const who: AuditWho = { clientId: 'dev-1', username: 'fleet' };
    const publish = (topic: string) => sink.recordAccess(who, 'publish', 'allow', 0, undefined, 'allow-all', undefined, undefined, topic, 0, false);
    // One turn: the clock moves 1 ms between records; a reading serves 16 records at most.
    for (let i = 0; i < 20; i++) {
      publish(`same-turn/${i}`);
      clock += 1;
    }
    // Later turns read it again, however few records came before.
    await new Promise((r) => setImmediate(r));
    clock += 5000;
    publish('next-turn');
    await new Promise((r) => setTimeout(r, 5));
    clock += 5000;
    publish('later');
    // A record made in an immediate (the check phase), then an idle wait: the next record, in a
    // timer, reads the clock again.
    await new Promise<void>((resolve) => setImmediate(() => (publish('in-immediate'), resolve())));
    clock += 7000;
    await new Promise<void>((resolve) => setTimeout(() => (publish('after-idle'), resolve()), 20));
    await sink.close();
    const times = new Map(
      out
        .text()
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => parseRecord(l))
        .filter((r) => r?.event === 'publish')
        .map((r) => [r?.topic, Date.parse(r?.time as string)]),
    );
    const base = 1_764_000_000_000;
    t.is(times.get('same-turn/0'), base);
    t.is(times.get('same-turn/15'), base, 'the 16th record still uses the first reading');
    t.is(times.get('same-turn/16'), base + 16, 'the 17th reads the clock again');
    t.is(times.get('next-turn'), base + 20 + 5000);
    t.is(times.get('later'), base + 20 + 10000);
    t.is(times.get('in-immediate'), base + 20 + 10000);
    t.is(times.get('after-idle'), base + 20 + 17000, 'a reading from an earlier run is never reused');
  } finally {
    Date.now = realNow;
  }
});
