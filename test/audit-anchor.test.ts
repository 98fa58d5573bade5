/**
 * The outside witness (`audit.anchor`): each signed checkpoint's digest goes to the operational
 * log, to syslog over UDP or TCP and to an HTTP endpoint (real servers on loopback), with a
 * deadline and a bounded number of attempts; a delivery given up is logged and recorded in the
 * chain; `audit verify --anchors` reads what each of them received.
 */
import { generateKeyPairSync } from 'node:crypto';
import dgram from 'node:dgram';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { Writable } from 'node:stream';
import test, { type ExecutionContext } from 'ava';
import { parseAnchors } from '../src/audit/anchor-file.ts';
import { createAuditSink, AuditSetupError, type AuditSinkSettings } from '../src/audit/sinks.ts';
import { parseRecord } from '../src/audit/record.ts';
import { verifyAuditFiles } from '../src/audit/verify.ts';
import { verifyCommand } from '../src/cli/audit.ts';
import { createLogger, silentLogger } from '../src/log.ts';
import { auditSettings, readAuditLines, tempAuditDir } from './helpers.ts';

const ANCHOR_DEFAULTS = { log: false, timeoutMs: 500, attempts: 3, retryDelayMs: 50 };

function signedSettings(t: ExecutionContext, anchor: Partial<NonNullable<AuditSinkSettings['anchor']>>): { settings: AuditSinkSettings; dir: string; pub: string } {
  const dir = tempAuditDir(t);
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const keyFile = path.join(dir, 'signing.key');
  fs.writeFileSync(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  const pub = path.join(dir, 'signing.pub');
  fs.writeFileSync(pub, publicKey.export({ type: 'spki', format: 'pem' }));
  return { dir, pub, settings: { ...auditSettings(path.join(dir, 'audit.jsonl')), checkpoint: { keyFile, intervalSeconds: 60 }, anchor: { name: 'broker-1', ...ANCHOR_DEFAULTS, ...anchor } } };
}

async function writeSome(settings: AuditSinkSettings, log = silentLogger()): Promise<void> {
  const sink = createAuditSink(settings, log);
  sink.record({ event: 'publish', decision: 'deny', reasonCode: 0x87, clientId: 'c1', topic: 'a/b' });
  await sink.close();
}

function checkpointsOf(file: string): { seq: number; hash: string }[] {
  return readAuditLines(file)
    .map((l) => parseRecord(l))
    .filter((r) => r?.event === 'checkpoint')
    .map((r) => ({ seq: r?.seq as number, hash: r?.hash as string }));
}

test('anchors in the operational log: one JSON line per checkpoint, at info whatever the log level; verify --anchors reads the log as it is', async (t) => {
  const { settings, dir, pub } = signedSettings(t, { log: true });
  const lines: string[] = [];
  const log = createLogger('error', new Writable({ write: (c, _e, cb) => (lines.push(String(c)), cb()) }));
  await writeSome(settings, log);
  const opsLog = path.join(dir, 'portcullis.log');
  fs.writeFileSync(opsLog, lines.join(''));
  const anchors = parseAnchors(lines.join(''), opsLog).anchors;
  t.deepEqual(
    anchors.map((a) => ({ seq: a.seq, hash: a.hash })),
    checkpointsOf(settings.path),
    'the checkpoint at start and the one at close, each with its record hash',
  );
  t.true(anchors.every((a) => a.name === 'broker-1'));
  let out = '';
  t.is(await verifyCommand([settings.path], { key: pub, anchors: [opsLog] }, { out: (x) => (out += x), err: () => {} }), 0);
  t.regex(out, /anchors: 2 of 2 matched; seq 4 and every record before it are as they were when its digest was sent out/);
});

test('anchors to syslog over UDP and over TCP (RFC 5424, octet counting)', async (t) => {
  const udp = dgram.createSocket('udp4');
  const got: string[] = [];
  udp.on('message', (m) => got.push(m.toString()));
  await new Promise<void>((r) => udp.bind(0, '127.0.0.1', r));
  t.teardown(() => udp.close());
  let tcpText = '';
  const tcp = net.createServer((s) => s.on('data', (d) => (tcpText += d.toString())));
  await new Promise<void>((r) => tcp.listen(0, '127.0.0.1', r));
  t.teardown(() => tcp.close());

  const viaUdp = signedSettings(t, { syslog: { host: '127.0.0.1', port: udp.address().port, transport: 'udp', facility: 16, appName: 'portcullis' } });
  await writeSome(viaUdp.settings);
  const viaTcp = signedSettings(t, { syslog: { host: '127.0.0.1', port: (tcp.address() as net.AddressInfo).port, transport: 'tcp', facility: 23, appName: 'pc-audit' } });
  await writeSome(viaTcp.settings);
  for (let i = 0; i < 50 && (got.length < 2 || tcpText.split('audit-anchor').length < 3); i++) await new Promise((r) => setTimeout(r, 20));

  t.is(got.length, 2);
  t.regex(got[0] as string, /^<133>1 \d{4}-\d\d-\d\dT[\d:.]+Z \S+ portcullis \d+ audit-anchor - \{"auditAnchor":/, 'local0.notice');
  t.deepEqual(parseAnchors(got.join('\n'), 'udp').anchors.map((a) => a.seq), checkpointsOf(viaUdp.settings.path).map((c) => c.seq));
  // Octet counting: "<length> <message>" back to back.
  const frames: string[] = [];
  for (let rest = tcpText; rest.length > 0; ) {
    const m = /^(\d+) /.exec(rest);
    if (m === null) break;
    const len = Number(m[1]);
    frames.push(Buffer.from(rest.slice(m[0].length)).subarray(0, len).toString());
    rest = Buffer.from(rest.slice(m[0].length)).subarray(len).toString();
  }
  t.is(frames.length, 2);
  t.regex(frames[0] as string, /^<189>1 .* pc-audit \d+ audit-anchor - /, 'local7.notice');
  const r = await verifyAuditFiles([viaTcp.settings.path], { anchors: parseAnchors(frames.join('\n'), 'tcp').anchors });
  t.true(r.ok, r.problem?.message);
  t.is(r.anchors?.matched, 2);
});

test('anchors to an HTTP endpoint: retried after a failure, within the deadline; verify reads the bodies it received', async (t) => {
  const bodies: string[] = [];
  let calls = 0;
  const server = http.createServer((req, res) => {
    calls++;
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      if (calls === 1) {
        res.writeHead(503).end();
        return;
      }
      t.is(req.headers.authorization, 'Bearer anchor-token');
      t.is(req.headers['content-type'], 'application/json');
      bodies.push(body);
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => server.close());
  const { settings } = signedSettings(t, { http: { url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/anchors`, headers: { authorization: 'Bearer anchor-token' } } });
  await writeSome(settings);
  t.is(calls, 3, 'the first attempt got 503 and was retried; then the second checkpoint');
  t.is(bodies.length, 2);
  const r = await verifyAuditFiles([settings.path], { anchors: parseAnchors(bodies.join('\n'), 'received').anchors });
  t.true(r.ok, r.problem?.message);
  t.is(r.anchors?.matched, 2);
});

test('an endpoint that never answers: each attempt ends at the deadline, the anchor is given up after the attempts, logged and recorded in the chain', async (t) => {
  let calls = 0;
  // Never answers. On a busy machine a request can reach the server after its client's deadline
  // aborted it, and then no request event fires: the attempts are counted in the records below.
  const hanging = http.createServer(() => calls++);
  await new Promise<void>((r) => hanging.listen(0, '127.0.0.1', r));
  t.teardown(() => {
    hanging.closeAllConnections();
    hanging.close();
  });
  const lines: string[] = [];
  const log = createLogger('warn', new Writable({ write: (c, _e, cb) => (lines.push(String(c)), cb()) }));
  const { settings } = signedSettings(t, { http: { url: `http://127.0.0.1:${(hanging.address() as net.AddressInfo).port}/`, headers: {} }, timeoutMs: 150, attempts: 2, retryDelayMs: 10 });
  const sink = createAuditSink(settings, log);
  const started = Date.now();
  // The checkpoint at start is given up while the sink runs: the failure goes into the chain.
  for (let i = 0; i < 250 && !lines.some((l) => l.includes('AUDIT ANCHOR NOT DELIVERED')); i++) await new Promise((r) => setTimeout(r, 20));
  const tookMs = Date.now() - started;
  await sink.close();
  t.true(calls >= 1 && calls <= 4, `at most two attempts for the checkpoint at start, two for the one at close (${calls} reached the server)`);
  t.true(tookMs >= 2 * 150 && tookMs < 5000, `given up after the attempts (${tookMs} ms)`);
  const failed = readAuditLines(settings.path)
    .map((l) => parseRecord(l))
    .filter((r) => r?.action === 'anchor-failed');
  t.is(failed.length, 1, 'the one at close is only logged: the chain is closed by then');
  t.regex(failed[0]?.reason ?? '', /checkpoint seq 2 could not be sent to http .*: 2 attempt\(s\) failed: deadline passed/);
  t.is(lines.filter((l) => l.includes('AUDIT ANCHOR NOT DELIVERED')).length, 2);
});

test('anchors need a signing key; verify --anchors picks the log by name and refuses a file without anchors', async (t) => {
  const dir = tempAuditDir(t);
  const err = t.throws(() => createAuditSink({ ...auditSettings(path.join(dir, 'a.jsonl')), anchor: { ...ANCHOR_DEFAULTS, log: true } }, silentLogger()));
  t.true(err instanceof AuditSetupError);
  t.is((err as AuditSetupError).key, 'audit.anchor');

  const one = signedSettings(t, { log: true, name: 'one' });
  const two = signedSettings(t, { log: true, name: 'two' });
  const lines: string[] = [];
  const log = createLogger('info', new Writable({ write: (c, _e, cb) => (lines.push(String(c)), cb()) }));
  await writeSome(one.settings, log);
  await writeSome(two.settings, log);
  const both = path.join(one.dir, 'both.log');
  fs.writeFileSync(both, lines.join(''));
  let errText = '';
  const io = { out: () => {}, err: (x: string) => (errText += x) };
  t.is(await verifyCommand([one.settings.path], { anchors: [both] }, io), 2);
  t.regex(errText, /anchors of several logs; choose one with --anchor-name: "one", "two"/);
  t.is(await verifyCommand([one.settings.path], { anchors: [both], anchorName: 'one' }, io), 0);
  t.is(await verifyCommand([one.settings.path], { anchors: [both], anchorName: 'two' }, io), 1, "the other log's anchors do not match this one");
  const empty = path.join(one.dir, 'empty.log');
  fs.writeFileSync(empty, '{"level":30,"msg":"hello"}\n');
  t.is(await verifyCommand([one.settings.path], { anchors: [empty] }, io), 2);
  t.regex(errText, /no audit anchors found/);
});
