/**
 * The tamper matrix: a real broker writes a signed, rotated audit log (checkpoints every second,
 * their digests anchored in the operational log); each test makes one change to a copy of it, as
 * someone who can write the files would, and `audit verify --key` must fail naming the record.
 *
 * "Chain recomputed" means the attacker also renumbers the records and recomputes every `prev`
 * and `hash` after the change (plain SHA-256: no key needed), keeping the signatures; without
 * that step every change already breaks a hash or a link.
 *
 * What cannot be detected without an outside witness, stated here and in docs/audit.md:
 * - the tail: records after the last signed checkpoint, cut off or rewritten (and, the same
 *   thing, a log cut back at a record boundary to an earlier checkpoint: what remains is a
 *   shorter log that was once whole);
 * - the whole log rewritten and signed again by someone who holds the signing key.
 * The last tests show both pass `verify --key` and fail `verify --anchors`.
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import test, { type ExecutionContext } from 'ava';
import { CompactSign } from 'jose';
import { parseAnchors, type AnchorEntry } from '../src/audit/anchor-file.ts';
import { chainFiles } from '../src/audit/file-output.ts';
import { parseRecord, serializeRecord, type AuditRecord } from '../src/audit/record.ts';
import { verifyAuditFiles, type VerifyOptions, type VerifyProblemCode, type VerifyReport } from '../src/audit/verify.ts';
import { verifyCommand } from '../src/cli/audit.ts';
import { createBroker } from '../src/index.ts';
import { createLogger } from '../src/log.ts';
import { connect, delay, readAuditLines, writePolicyDir } from './helpers.ts';

const PASSWORD = 'tamper-test-pw';
/** The broker signs every second; a record may wait 2.5 s for a signature (with room for a loaded host). */
const GAP_MS = 2500;

interface BrokerLog {
  dir: string;
  /** The log's files in chain order (rotated, then live), each as its lines. */
  files: string[][];
  /** Every line of the chain, in order. */
  all: string[];
  /** The operational log (holding the anchors). */
  opsLog: string;
}

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-tamper-'));
const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const keyFile = path.join(root, 'signing.key');
fs.writeFileSync(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
const pubFile = path.join(root, 'signing.pub');
fs.writeFileSync(pubFile, publicKey.export({ type: 'spki', format: 'pem' }));
const policy = writePolicyDir('p, user:alice, plant/#, *, allow\n');

/** Runs a broker for `ms` with clients connecting, publishing (one denial each) and subscribing. */
async function brokerLog(name: string, ms: number): Promise<BrokerLog> {
  const dir = path.join(root, name);
  fs.mkdirSync(dir);
  const file = path.join(dir, 'audit.jsonl');
  const ops: string[] = [];
  const log = createLogger('warn', new Writable({ write: (chunk, _e, cb) => (ops.push(String(chunk)), cb()) }));
  const broker = createBroker(
    {
      listeners: [{ name: 't', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users: [{ username: 'alice', password: PASSWORD }] }] }],
      authorizers: [{ type: 'casbin', model: policy.model, policy: policy.policy, watch: false }],
      sys: { intervalSeconds: 0 },
      store: { type: 'memory' },
      audit: {
        path: file,
        fsyncIntervalMs: 0,
        rotate: { maxBytes: 12_000, intervalSeconds: 0 },
        retention: { maxFiles: 0 },
        checkpoint: { keyFile, keyId: 'audit-2026', intervalSeconds: 1 },
        anchor: { name, log: true },
      },
    },
    { logger: log },
  );
  const { listeners } = await broker.start();
  const port = listeners[0]?.port ?? 0;
  const end = Date.now() + ms;
  for (let i = 0; Date.now() < end; i++) {
    const c = await connect(port, { protocolVersion: 5, clientId: `${name}-dev-${i}`, username: 'alice', password: PASSWORD });
    await c.publishAsync('plant/1/temp', 'x', { qos: 1 });
    await c.publishAsync('office/door', 'x', { qos: 1 }).catch(() => undefined); // denied: 0x87
    await c.subscribeAsync(`plant/${i}/#`, { qos: 1 });
    await c.endAsync();
    await delay(120);
  }
  await broker.stop();
  const files = chainFiles(file).map((f) => readAuditLines(f));
  return { dir, files, all: files.flat(), opsLog: ops.join('') };
}

let logs: Promise<{ a: BrokerLog; b: BrokerLog }>;
test.before(() => {
  logs = Promise.all([brokerLog('a', 4500), brokerLog('b', 1200)]).then(([a, b]) => ({ a, b }));
});
test.after.always(() => {
  fs.rmSync(root, { recursive: true, force: true });
  policy.cleanup();
});

// ── the attacker's tools ─────────────────────────────────────────────────────

const rec = (line: string): AuditRecord => parseRecord(line) as AuditRecord;
const indexOf = (lines: string[], seq: number) => lines.findIndex((l) => rec(l).seq === seq);
const checkpointIndexes = (lines: string[]) => lines.flatMap((l, i) => (rec(l).event === 'checkpoint' ? [i] : []));

/** A record's line with its fields changed; its own hash recomputed, its seq and prev kept. */
function rewrite(line: string, change: (r: AuditRecord) => void): string {
  const r = rec(line);
  change(r);
  const { v: _v, time, seq, signature, prev, hash: _h, ...event } = r;
  return serializeRecord(event, seq, time, prev, signature).line;
}

/**
 * Renumbers the lines from `from` on and recomputes every `prev` and `hash`, keeping signatures
 * (or signing each checkpoint again with `resign`, given the payload it would need).
 */
async function rechain(lines: string[], from: number, resign?: (payload: Record<string, unknown>) => Promise<string>): Promise<string[]> {
  const out = lines.slice(0, from);
  const before = from > 0 ? rec(out[from - 1] as string) : null;
  const first = rec(lines[from] as string);
  let seq = before !== null ? before.seq : first.seq - 1;
  let prev = before !== null ? before.hash : first.prev;
  for (const line of lines.slice(from)) {
    const { v: _v, time, seq: _s, signature, prev: _p, hash: _h, ...event } = rec(line);
    seq++;
    let sig = signature;
    if (resign !== undefined && event.event === 'checkpoint' && signature !== undefined) {
      sig = await resign({ ...payloadOf(signature), seq, prev, time });
    }
    const r = serializeRecord(event, seq, time, prev, sig);
    out.push(r.line);
    prev = r.hash;
  }
  return out;
}

function payloadOf(jws: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(jws.split('.')[1] as string, 'base64url').toString()) as Record<string, unknown>;
}

const signWith = (key: KeyObject, kid?: string) => (payload: Record<string, unknown>) =>
  new CompactSign(new TextEncoder().encode(JSON.stringify(payload))).setProtectedHeader({ alg: 'EdDSA', ...(kid ? { kid } : {}) }).sign(key);

let n = 0;
function writeFiles(files: string[][]): string[] {
  const dir = path.join(root, `case-${n++}`);
  fs.mkdirSync(dir);
  return files.map((lines, i) => {
    const f = path.join(dir, `part-${i}.jsonl`);
    fs.writeFileSync(f, lines.length > 0 ? lines.join('\n') + '\n' : '');
    return f;
  });
}

function anchorsOf(log: BrokerLog): AnchorEntry[] {
  return parseAnchors(log.opsLog, 'ops.log').anchors;
}

async function verify(files: string[][], options: Omit<VerifyOptions, 'key'> = {}): Promise<VerifyReport> {
  return verifyAuditFiles(writeFiles(files), { key: publicKey, maxUnsignedGapMs: GAP_MS, ...options });
}

function fails(t: ExecutionContext, r: VerifyReport, code: VerifyProblemCode, seq: number): void {
  t.false(r.ok, 'verify --key must fail');
  t.is(r.problem?.code, code, r.problem?.message);
  t.is(r.problem?.seq, seq, `the record named: ${r.problem?.message}`);
}

/** A denied publish between the third and fourth checkpoints, with a record (not the checkpoint) just before it, so that swapping the two moves no checkpoint. */
function signedDenial(lines: string[]): number {
  const cps = checkpointIndexes(lines);
  const i = lines.findIndex((l, k) => k > (cps[2] as number) + 1 && k < (cps[3] as number) && rec(l).event === 'publish' && rec(l).decision === 'deny');
  if (i < 0) throw new Error('no denial between the third and fourth checkpoints');
  return i;
}

/** The first checkpoint after line index `i`. */
const checkpointAfter = (lines: string[], i: number) => checkpointIndexes(lines).find((c) => c > i) as number;

// ── the log as written ───────────────────────────────────────────────────────

test('the broker log verifies: signed at start, every second and at stop, anchored, rotated, every record covered', async (t) => {
  const { a } = await logs;
  t.true(a.files.length >= 3, `rotated into several files (${a.files.length})`);
  const r = await verifyAuditFiles(chainFiles(path.join(a.dir, 'audit.jsonl')), { key: publicKey, maxUnsignedGapMs: GAP_MS, anchors: anchorsOf(a) });
  t.true(r.ok, r.problem?.message);
  t.true(r.checkpoints.verified >= 5, `checkpoints: ${r.checkpoints.verified}`);
  t.is(r.lastSignedSeq, r.last?.seq, 'stopped cleanly: the last record is a checkpoint');
  t.is(r.tail, undefined);
  t.is(r.anchors?.matched, r.checkpoints.verified, 'every checkpoint was anchored');
  t.true(a.all.some((l) => rec(l).event === 'publish' && rec(l).decision === 'deny'));
});

// ── delete, insert, alter, reorder ───────────────────────────────────────────

test('delete a record: the records missing are named', async (t) => {
  const { a } = await logs;
  const i = signedDenial(a.all);
  const seq = rec(a.all[i] as string).seq;
  const r = await verify([[...a.all.slice(0, i), ...a.all.slice(i + 1)]]);
  fails(t, r, 'missing', seq + 1);
  t.deepEqual(r.problem?.range, { from: seq, to: seq });
});

test('delete a record, chain recomputed: the next checkpoint carries the signature of a later seq', async (t) => {
  const { a } = await logs;
  const i = signedDenial(a.all);
  const cp = checkpointAfter(a.all, i);
  const forged = await rechain([...a.all.slice(0, i), ...a.all.slice(i + 1)], i);
  const r = await verify([forged]);
  fails(t, r, 'checkpoint-mismatch', rec(a.all[cp] as string).seq - 1);
  t.regex(r.problem?.message ?? '', /1 record\(s\) before it were deleted/);
});

test('insert a record: the record after it is out of sequence', async (t) => {
  const { a } = await logs;
  const i = signedDenial(a.all);
  const before = rec(a.all[i - 1] as string);
  const fake = serializeRecord({ event: 'connect', decision: 'allow', reasonCode: 0, clientId: 'ghost', username: 'alice' }, before.seq + 1, before.time, before.hash).line;
  const r = await verify([[...a.all.slice(0, i), fake, ...a.all.slice(i)]]);
  fails(t, r, 'out-of-order', before.seq + 1);
});

test('insert a record, chain recomputed: the next checkpoint carries the signature of an earlier seq', async (t) => {
  const { a } = await logs;
  const i = signedDenial(a.all);
  const cp = checkpointAfter(a.all, i);
  const fake = serializeRecord({ event: 'connect', decision: 'allow', reasonCode: 0, clientId: 'ghost' }, 0, rec(a.all[i] as string).time, '0'.repeat(64)).line;
  const forged = await rechain([...a.all.slice(0, i), fake, ...a.all.slice(i)], i);
  const r = await verify([forged]);
  fails(t, r, 'checkpoint-mismatch', rec(a.all[cp] as string).seq + 1);
  t.regex(r.problem?.message ?? '', /1 record\(s\) were inserted before it/);
});

test('alter a record: its hash names it', async (t) => {
  const { a } = await logs;
  const i = signedDenial(a.all);
  const lines = [...a.all];
  lines[i] = (lines[i] as string).replace('"decision":"deny"', '"decision":"allow"');
  fails(t, await verify([lines]), 'hash-mismatch', rec(a.all[i] as string).seq);
});

test('alter a record, chain recomputed: the next checkpoint fails, naming the records the change is among', async (t) => {
  const { a } = await logs;
  const i = signedDenial(a.all);
  const seq = rec(a.all[i] as string).seq;
  const cp = checkpointAfter(a.all, i);
  const lines = [...a.all];
  lines[i] = rewrite(lines[i] as string, (r) => {
    r.decision = 'allow';
    r.reasonCode = 0;
  });
  const r = await verify([await rechain(lines, i)]);
  fails(t, r, 'checkpoint-mismatch', rec(a.all[cp] as string).seq);
  const range = r.problem?.range;
  t.true(range !== undefined && range.from <= seq && seq <= range.to, `record ${seq} is within ${JSON.stringify(range)}`);
});

test('reorder two records: the first out of place is named', async (t) => {
  const { a } = await logs;
  const i = signedDenial(a.all);
  const lines = [...a.all];
  [lines[i - 1], lines[i]] = [lines[i] as string, lines[i - 1] as string];
  fails(t, await verify([lines]), 'out-of-order', rec(a.all[i] as string).seq);
});

test('reorder two records, renumbered and chain recomputed: the next checkpoint fails', async (t) => {
  const { a } = await logs;
  const i = signedDenial(a.all);
  const cp = checkpointAfter(a.all, i);
  const lines = [...a.all];
  [lines[i - 1], lines[i]] = [lines[i] as string, lines[i - 1] as string];
  fails(t, await verify([await rechain(lines, i - 1)]), 'checkpoint-mismatch', rec(a.all[cp] as string).seq);
});

// ── signatures and checkpoints ───────────────────────────────────────────────

test("strip one checkpoint's signature: its hash breaks; with its hash or the chain recomputed, the unsigned checkpoint is named", async (t) => {
  const { a } = await logs;
  const cp = checkpointIndexes(a.all)[3] as number;
  const seq = rec(a.all[cp] as string).seq;
  const raw = [...a.all];
  raw[cp] = (raw[cp] as string).replace(/,"signature":"[^"]*"/, '');
  fails(t, await verify([raw]), 'hash-mismatch', seq);
  const lines = [...a.all];
  lines[cp] = rewrite(lines[cp] as string, (r) => delete r.signature);
  fails(t, await verify([lines]), 'unsigned-checkpoint', seq);
  fails(t, await verify([await rechain(lines, cp)]), 'unsigned-checkpoint', seq);
});

test('strip every signature, chain recomputed: the first checkpoint is named', async (t) => {
  const { a } = await logs;
  const lines = a.all.map((l) => (rec(l).event === 'checkpoint' ? rewrite(l, (r) => delete r.signature) : l));
  const first = checkpointIndexes(a.all)[0] as number;
  fails(t, await verify([await rechain(lines, first)]), 'unsigned-checkpoint', rec(a.all[first] as string).seq);
});

test('delete a checkpoint: the gap is named; with the chain recomputed, the next checkpoint fails', async (t) => {
  const { a } = await logs;
  const cps = checkpointIndexes(a.all);
  const cp = cps[3] as number;
  const seq = rec(a.all[cp] as string).seq;
  const without = [...a.all.slice(0, cp), ...a.all.slice(cp + 1)];
  fails(t, await verify([without]), 'missing', seq + 1);
  fails(t, await verify([await rechain(without, cp)]), 'checkpoint-mismatch', rec(a.all[cps[4] as number] as string).seq - 1);
});

test('delete every checkpoint after the first, chain recomputed: the unsigned records are longer than the cadence', async (t) => {
  const { a } = await logs;
  const first = checkpointIndexes(a.all)[0] as number;
  const lines = a.all.filter((l, i) => i <= first || rec(l).event !== 'checkpoint');
  const r = await verify([await rechain(lines, first + 1)]);
  fails(t, r, 'unsigned-tail', rec(a.all[first] as string).seq + 1);
  t.true((r.tail?.spanMs ?? 0) > GAP_MS);
  t.is(r.tail?.records, lines.length - first - 1, 'the tail is reported with its length');
});

test('delete every checkpoint, chain recomputed: nothing is signed, and the whole log is longer than the cadence', async (t) => {
  const { a } = await logs;
  const lines = a.all.filter((l) => rec(l).event !== 'checkpoint');
  fails(t, await verify([await rechain(lines, 0)]), 'unsigned-tail', 1);
});

test('re-sign with another key: the first checkpoint signed with it is named', async (t) => {
  const { a } = await logs;
  const mallory = generateKeyPairSync('ed25519').privateKey;
  const i = signedDenial(a.all);
  const lines = [...a.all];
  lines[i] = rewrite(lines[i] as string, (r) => (r.topic = 'plant/9/temp'));
  const forged = await rechain(lines, i, signWith(mallory, 'audit-2026'));
  const r = await verify([forged]);
  fails(t, r, 'bad-signature', rec(a.all[checkpointAfter(a.all, i)] as string).seq);
  t.regex(r.problem?.message ?? '', /key id "audit-2026"/);
});

test("change a checkpoint's key id: its signature no longer verifies", async (t) => {
  const { a } = await logs;
  const cp = checkpointIndexes(a.all)[2] as number;
  const seq = rec(a.all[cp] as string).seq;
  const header = Buffer.from(JSON.stringify({ alg: 'EdDSA', kid: 'audit-2027' })).toString('base64url');
  const raw = [...a.all];
  raw[cp] = (raw[cp] as string).replace(/"signature":"[^.]*\./, `"signature":"${header}.`);
  fails(t, await verify([raw]), 'hash-mismatch', seq);
  const lines = [...a.all];
  lines[cp] = rewrite(lines[cp] as string, (r) => {
    const [, payload, sig] = (r.signature as string).split('.');
    r.signature = `${header}.${payload}.${sig}`;
  });
  const r = await verify([await rechain(lines, cp)]);
  fails(t, r, 'bad-signature', seq);
  t.regex(r.problem?.message ?? '', /key id "audit-2027"/);
});

test("change a checkpoint's time, chain recomputed: the signed time is not the record's", async (t) => {
  const { a } = await logs;
  const cp = checkpointIndexes(a.all)[2] as number;
  const lines = [...a.all];
  lines[cp] = rewrite(lines[cp] as string, (r) => (r.time = new Date(Date.parse(r.time) + 60_000).toISOString()));
  const r = await verify([await rechain(lines, cp)]);
  fails(t, r, 'checkpoint-mismatch', rec(a.all[cp] as string).seq);
  t.regex(r.problem?.message ?? '', /was signed at/);
});

// ── splicing, rotated files, truncation ──────────────────────────────────────

test('splice two logs: the second one goes back to seq 1', async (t) => {
  const { a, b } = await logs;
  fails(t, await verify([a.all, b.all]), 'out-of-order', 1);
  fails(t, await verify([b.all, a.all]), 'out-of-order', 1);
});

test("splice two logs, the second renumbered onto the first: its first checkpoint signs another seq", async (t) => {
  const { a, b } = await logs;
  const forged = await rechain([...a.all, ...b.all], a.all.length);
  const bFirstCp = checkpointIndexes(b.all)[0] as number;
  fails(t, await verify([forged]), 'checkpoint-mismatch', rec(a.all[a.all.length - 1] as string).seq + 1 + bFirstCp);
});

test('rotated files in the wrong order, or one left out: the first record out of place is named', async (t) => {
  const { a } = await logs;
  const [f0, f1, ...rest] = a.files as [string[], string[], ...string[][]];
  fails(t, await verify([f1, f0, ...rest]), 'out-of-order', rec(f0[0] as string).seq);
  fails(t, await verify([f0, ...rest, f1]), 'missing', rec(rest[0]?.[0] as string).seq);
});

test('truncate inside a signed range: bytes cut from the middle, or the file cut inside a record', async (t) => {
  const { a } = await logs;
  const i = signedDenial(a.all);
  const text = a.all.join('\n') + '\n';
  const at = text.indexOf(a.all[i] as string);
  const seq = rec(a.all[i] as string).seq;
  // 200 bytes from inside record i to inside record i+1.
  const middle = writeFiles([[]])[0] as string;
  fs.writeFileSync(middle, text.slice(0, at + 100) + text.slice(at + 300));
  const r1 = await verifyAuditFiles([middle], { key: publicKey, maxUnsignedGapMs: GAP_MS });
  fails(t, r1, 'malformed', seq);
  const cut = writeFiles([[]])[0] as string;
  fs.writeFileSync(cut, text.slice(0, at + 100));
  const r2 = await verifyAuditFiles([cut], { key: publicKey, maxUnsignedGapMs: GAP_MS });
  fails(t, r2, 'malformed', seq);
  t.regex(r2.problem?.message ?? '', /truncated/);
});

// ── what only an outside witness catches ─────────────────────────────────────

test('NOT detectable without a witness: the log cut back to an earlier checkpoint (the tail and what followed removed); the anchors name the missing checkpoint', async (t) => {
  const { a } = await logs;
  const cps = checkpointIndexes(a.all);
  const keep = cps[3] as number;
  const cutLines = a.all.slice(0, keep + 1);
  const alone = await verify([cutLines]);
  t.true(alone.ok, 'a log cut at a checkpoint is a valid shorter log: verify --key alone cannot tell');
  const r = await verify([cutLines], { anchors: anchorsOf(a) });
  fails(t, r, 'anchor-missing', rec(a.all[cps[4] as number] as string).seq);
  t.regex(r.problem?.message ?? '', /cut off the end/);
});

test('NOT detectable without a witness: the tail after the last checkpoint rewritten (the broker crashed before signing it); the anchors name the checkpoint that was there', async (t) => {
  const { a } = await logs;
  const cps = checkpointIndexes(a.all);
  // Cut just before the fifth checkpoint (a crash), then rewrite a record of the now unsigned tail.
  const end = cps[4] as number;
  const lines = a.all.slice(0, end);
  const victim = lines.findIndex((l, i) => i > (cps[3] as number) && rec(l).decision === 'deny');
  t.true(victim > 0, 'a denial in the tail');
  lines[victim] = rewrite(lines[victim] as string, (r) => (r.decision = 'allow'));
  const forged = await rechain(lines, victim);
  const alone = await verify([forged]);
  t.true(alone.ok, alone.problem?.message);
  t.true((alone.tail?.records ?? 0) > 0, 'reported as an unsigned tail, with its length and age');
  t.true((alone.tail?.ageMs ?? 0) >= (alone.tail?.spanMs ?? 0));
  fails(t, await verify([forged], { anchors: anchorsOf(a) }), 'anchor-missing', rec(a.all[end] as string).seq);
});

test('NOT detectable without a witness: the whole log rewritten and signed again with the real key; the anchors name the first checkpoint that differs', async (t) => {
  const { a } = await logs;
  const i = signedDenial(a.all);
  const lines = [...a.all];
  lines[i] = rewrite(lines[i] as string, (r) => (r.decision = 'allow'));
  const forged = await rechain(lines, i, signWith(privateKey, 'audit-2026'));
  const alone = await verify([forged]);
  t.true(alone.ok, 'whoever holds the signing key can sign anything');
  fails(t, await verify([forged], { anchors: anchorsOf(a) }), 'anchor-mismatch', rec(a.all[checkpointAfter(a.all, i)] as string).seq);
});

test('audit verify (the command) exits 1 naming the record, and 0 with a report of what it proved', async (t) => {
  const { a } = await logs;
  const i = signedDenial(a.all);
  const lines = [...a.all];
  lines[i] = rewrite(lines[i] as string, (r) => (r.decision = 'allow'));
  const files = writeFiles([await rechain(lines, i)]);
  let err = '';
  const code = await verifyCommand(files, { key: pubFile, maxUnsignedGap: '2.5' }, { out: () => {}, err: (s) => (err += s) });
  t.is(code, 1);
  t.regex(err, new RegExp(`FAILED: .*checkpoint seq ${rec(a.all[checkpointAfter(a.all, i)] as string).seq} signed another chain`));

  const opsFile = path.join(root, 'ops.log');
  fs.writeFileSync(opsFile, a.opsLog);
  let out = '';
  const ok = await verifyCommand(chainFiles(path.join(a.dir, 'audit.jsonl')), { key: pubFile, maxUnsignedGap: '2.5', anchors: [opsFile] }, { out: (s) => (out += s), err: (s) => (err += s) });
  t.is(ok, 0, err);
  t.regex(out, /signed checkpoint\(s\) verified; seq \d+ and every record before it are covered by a signature/);
  t.regex(out, /anchors: (\d+) of \1 matched/);
});
