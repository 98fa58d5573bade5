/**
 * The audit log of a running broker, written to a real file, with real clients: one record per
 * decision, no secrets, no forged records, and the failure modes when the disk fails.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import test, { type ExecutionContext } from 'ava';
import type { MqttClient } from 'mqtt';
import { createBroker, type Authenticator, type BrokerOptions, type ConfigInput, type RunningBroker } from '../src/index.ts';
import { createAuditSink, type AuditSinkSettings } from '../src/audit/sinks.ts';
import { nodeFileIO, type AuditFileIO } from '../src/audit/file-output.ts';
import { parseRecord, type AuditRecord } from '../src/audit/record.ts';
import { verifyAuditFiles } from '../src/audit/verify.ts';
import { createLogger, silentLogger } from '../src/log.ts';
import { ReasonCode } from '../src/protocol/reason-codes.ts';
import { auditSettings, connect, delay, messagesWithin, nextMessages, readAuditLines, tempAuditDir } from './helpers.ts';

const PASSWORD = 'correct-horse-S3cret!';
const WRONG = 'wrong-P4ssw0rd-guess';

/** A disk that can be made to fail: ENOSPC or EACCES on write, optionally after writing half the batch. */
class FlakyDisk implements AuditFileIO {
  failing: 'ENOSPC' | 'EACCES' | null = null;
  tearHalf = false;
  failures = 0;
  async write(fd: number, data: Buffer): Promise<void> {
    if (this.failing !== null) {
      this.failures++;
      if (this.tearHalf) fs.writeSync(fd, data.subarray(0, Math.floor(data.length / 2)));
      throw Object.assign(new Error(`${this.failing}: simulated`), { code: this.failing });
    }
    await nodeFileIO.write(fd, data);
  }
  fsync(fd: number): Promise<void> {
    return nodeFileIO.fsync(fd);
  }
}

interface AuditedBroker {
  broker: RunningBroker;
  port: number;
  file: string;
  logs: string[];
  records(): AuditRecord[];
}

async function start(t: ExecutionContext, config: Partial<ConfigInput> = {}, opts: { disk?: AuditFileIO; settings?: Partial<AuditSinkSettings>; options?: BrokerOptions } = {}): Promise<AuditedBroker> {
  const dir = tempAuditDir(t);
  const file = path.join(dir, 'audit.jsonl');
  const logs: string[] = [];
  const log = createLogger('warn', new Writable({ write: (chunk, _e, cb) => (logs.push(String(chunk)), cb()) }));
  const sink = createAuditSink({ ...auditSettings(file), ...opts.settings }, log, opts.disk);
  const broker = createBroker(
    {
      listeners: [{ name: 't', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users: [{ username: 'alice', password: PASSWORD }] }] }],
      authorizers: ['allow-all'],
      sys: { intervalSeconds: 0 },
      store: { type: 'memory' },
      ...config,
    },
    { logger: log, audit: sink, ...opts.options },
  );
  const { listeners } = await broker.start();
  let stopped = false;
  t.teardown(async () => {
    if (!stopped) await broker.stop();
  });
  const origStop = broker.stop.bind(broker);
  (broker as { stop: () => Promise<void> }).stop = async () => {
    stopped = true;
    await origStop();
  };
  return {
    broker,
    port: listeners[0]?.port ?? 0,
    file,
    logs,
    records: () => (fs.existsSync(file) ? readAuditLines(file).map((l) => parseRecord(l) as AuditRecord) : []),
  };
}

async function until(check: () => boolean, ms = 4000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (check()) return true;
    await delay(20);
  }
  return check();
}

function closeAll(t: ExecutionContext, ...clients: MqttClient[]): void {
  t.teardown(() => {
    for (const c of clients) c.end(true);
  });
}

test('every decision gets exactly one record; the log verifies and holds no password or payload', async (t) => {
  const b = await start(t, {}, { settings: {} });
  const alice = await connect(b.port, { protocolVersion: 5, clientId: 'alice-1', username: 'alice', password: PASSWORD });
  closeAll(t, alice);
  const refused = await connect(b.port, { protocolVersion: 5, clientId: 'mallory-1', username: 'alice', password: WRONG }).then(
    () => null,
    (err: { code?: number }) => err.code,
  );
  t.is(refused, ReasonCode.BadUserNameOrPassword);
  await alice.subscribeAsync('plant/#', { qos: 1 });
  const got = nextMessages(alice, 1);
  await alice.publishAsync('plant/1/temp', 'payload-secret-123', { qos: 1 });
  await got;
  await alice.publishAsync('$SYS/forged', 'x', { qos: 1 }).catch(() => undefined);
  await b.broker.stop();

  const text = fs.readFileSync(b.file, 'utf8');
  for (const secret of [PASSWORD, WRONG, 'payload-secret-123', Buffer.from(PASSWORD).toString('base64'), Buffer.from(PASSWORD).toString('hex')]) {
    t.false(text.includes(secret), `the audit log must not contain ${secret}`);
  }
  const recs = b.records();
  const connects = recs.filter((r) => r.event === 'connect');
  t.is(connects.length, 2, 'one record per connect decision');
  const ok = connects.find((r) => r.clientId === 'alice-1');
  t.is(ok?.decision, 'allow');
  t.is(ok?.username, 'alice');
  t.is(ok?.authMethod, 'password');
  t.is(ok?.decidedBy, 'static-users');
  t.is(ok?.listener, 't');
  t.is(ok?.remoteAddress, '127.0.0.1');
  t.is(typeof ok?.remotePort, 'number');
  const bad = connects.find((r) => r.clientId === 'mallory-1');
  t.is(bad?.decision, 'deny');
  t.is(bad?.reasonCode, ReasonCode.BadUserNameOrPassword);
  t.is(bad?.decidedBy, 'static-users');
  t.is(recs.filter((r) => r.event === 'subscribe').length, 1);
  t.is(recs.filter((r) => r.event === 'publish' && r.decision === 'allow').length, 0, 'allowed publishes are off by default');
  const sys = recs.filter((r) => r.event === 'publish' && r.decision === 'deny');
  t.is(sys.length, 1);
  t.is(sys[0]?.topic, '$SYS/forged');
  t.is(sys[0]?.qos, 1);
  t.is(sys[0]?.retain, false);
  const report = await verifyAuditFiles([b.file]);
  t.true(report.ok, report.problem?.message);
});

test('allowed publishes and deliveries are recorded when turned on', async (t) => {
  const b = await start(t, { audit: { allowed: { publish: true, deliver: true } } });
  const alice = await connect(b.port, { protocolVersion: 5, clientId: 'alice-2', username: 'alice', password: PASSWORD });
  closeAll(t, alice);
  await alice.subscribeAsync('a/b', { qos: 0 });
  const got = nextMessages(alice, 1);
  alice.publish('a/b', 'x', { qos: 0 });
  await got;
  await b.broker.stop();
  const recs = b.records();
  t.is(recs.filter((r) => r.event === 'publish' && r.decision === 'allow' && r.topic === 'a/b').length, 1);
  t.is(recs.filter((r) => r.event === 'deliver' && r.decision === 'allow' && r.topic === 'a/b').length, 1);
});

test('a client id or username with newlines cannot forge a record over MQTT', async (t) => {
  const b = await start(t, { listeners: [{ name: 't', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }] });
  const forged = 'x\n{"v":2,"seq":2,"event":"connect","decision":"allow","clientId":"root"}\r\n\u001b[2J';
  const c = await connect(b.port, { protocolVersion: 5, clientId: forged, username: 'bob\n"decision":"allow"' });
  closeAll(t, c);
  await b.broker.stop();
  const lines = readAuditLines(b.file);
  t.true(lines.every((l) => parseRecord(l) !== null), 'every line is one whole record');
  const connects = b.records().filter((r) => r.event === 'connect');
  t.is(connects.length, 1);
  t.is(connects[0]?.clientId, forged);
  t.false(b.records().some((r) => r.clientId === 'root'));
  t.true((await verifyAuditFiles([b.file])).ok);
});

test('fail-closed: while the disk fails (ENOSPC, torn write) new connects get 0x88 / v3 code 3 and publishes are denied; after recovery nothing is lost and the chain verifies', async (t) => {
  const disk = new FlakyDisk();
  const b = await start(t, {}, { disk });
  const alice = await connect(b.port, { protocolVersion: 5, clientId: 'alice-3', username: 'alice', password: PASSWORD });
  const watcher = await connect(b.port, { protocolVersion: 5, clientId: 'alice-watch', username: 'alice', password: PASSWORD });
  closeAll(t, alice, watcher);
  await watcher.subscribeAsync('plant/#', { qos: 1 });
  t.true(await until(() => b.broker.auditHealth().written >= 3));

  disk.failing = 'ENOSPC';
  disk.tearHalf = true;
  b.broker.recordReload('policy', { ok: true, version: 'v2' }); // any record: the failing write is noticed
  t.true(await until(() => !b.broker.auditHealth().ok), 'the sink reports the failure');
  t.is(b.broker.auditHealth().error, 'ENOSPC');

  const v5 = await connect(b.port, { protocolVersion: 5, clientId: 'late-5', username: 'alice', password: PASSWORD }).then(() => null, (e: { code?: number }) => e.code);
  t.is(v5, ReasonCode.ServerUnavailable);
  const v3 = await connect(b.port, { protocolVersion: 4, clientId: 'late-3', username: 'alice', password: PASSWORD }).then(() => null, (e: { code?: number }) => e.code);
  t.is(v3, 3, 'v3.1.1 CONNACK return code 3: server unavailable');

  const nothing = messagesWithin(watcher, 400);
  const denied = await alice.publishAsync('plant/1/temp', 'while failing', { qos: 1 }).then(() => null, (e: { code?: number }) => e.code);
  t.is(denied, ReasonCode.UnspecifiedError, 'PUBACK 0x80');
  t.deepEqual(await nothing, [], 'the denied publish is not delivered');
  t.true(b.logs.some((l) => l.includes('AUDIT LOG WRITE FAILED')), 'a loud log line');

  disk.failing = null;
  t.true(await until(() => b.broker.auditHealth().ok), 'recovers once writes succeed');
  const back = await connect(b.port, { protocolVersion: 5, clientId: 'after', username: 'alice', password: PASSWORD });
  closeAll(t, back);
  const got = nextMessages(watcher, 1);
  await alice.publishAsync('plant/1/temp', 'after recovery', { qos: 1 });
  t.is((await got)[0]?.payload, 'after recovery');
  await b.broker.stop();

  t.true(disk.failures > 0);
  const recs = b.records();
  t.true(recs.some((r) => r.event === 'reload' && r.action === 'policy' && r.policyVersion === 'v2'), 'the record held during the failure was written');
  const refusals = recs.filter((r) => r.event === 'connect' && r.decision === 'deny' && r.reasonCode === ReasonCode.ServerUnavailable);
  t.deepEqual(refusals.map((r) => r.clientId).sort(), ['late-3', 'late-5']);
  t.true(recs.some((r) => r.event === 'publish' && r.decision === 'deny' && r.decidedBy === 'audit'));
  const recovered = recs.find((r) => r.event === 'audit' && r.action === 'recovered');
  t.regex(recovered?.reason ?? '', /ENOSPC/);
  const report = await verifyAuditFiles([b.file]);
  t.true(report.ok, `the torn half-batch was rolled back: ${report.problem?.message}`);
});

test('fail-open: while the disk fails (EACCES) clients keep connecting and publishing; overflow is dropped, counted, logged, and recorded after recovery', async (t) => {
  const disk = new FlakyDisk();
  const b = await start(t, { audit: { failMode: 'fail-open' } }, { disk, settings: { maxQueue: 3 } });
  const alice = await connect(b.port, { protocolVersion: 5, clientId: 'alice-4', username: 'alice', password: PASSWORD });
  closeAll(t, alice);
  t.true(await until(() => b.broker.auditHealth().written >= 2));
  disk.failing = 'EACCES';
  b.broker.recordReload('password-file', { ok: false, detail: 'users.txt:3: bad hash' });
  t.true(await until(() => b.broker.auditHealth().error === 'EACCES'));

  const clients: MqttClient[] = [];
  for (let i = 0; i < 5; i++) clients.push(await connect(b.port, { protocolVersion: 5, clientId: `open-${i}`, username: 'alice', password: PASSWORD }));
  closeAll(t, ...clients);
  await alice.subscribeAsync('x/#', { qos: 0 });
  const got = nextMessages(alice, 1);
  clients[0]?.publish('x/1', 'still served');
  t.is((await got)[0]?.payload, 'still served');
  const health = b.broker.auditHealth();
  t.true(health.dropped > 0, 'the overflow is counted');
  t.true(b.logs.some((l) => l.includes('AUDIT RECORDS DROPPED')));

  disk.failing = null;
  t.true(await until(() => b.broker.auditHealth().ok && b.broker.auditHealth().pending === 0));
  await b.broker.stop();
  const recs = b.records();
  const inChain = recs.filter((r) => r.event === 'audit' && r.action === 'dropped').reduce((n, r) => n + Number(r.detail?.dropped ?? 0), 0);
  t.true(inChain >= health.dropped);
  t.is(inChain, b.broker.auditHealth().dropped, 'the chain says how many records were lost');
  t.true(recs.some((r) => r.event === 'reload' && r.decision === 'deny' && r.action === 'password-file'));
  t.true((await verifyAuditFiles([b.file])).ok);
});

test('a client whose credentials expire is disconnected (v5 0xA0) and the disconnect is audited', async (t) => {
  const expiring: Authenticator = {
    id: 'short-token',
    authenticate: async (req) => ({
      kind: 'allow',
      value: { clientId: req.clientId, username: 'svc', method: 'jwt', provider: 'short-token', roles: [], attributes: {}, expiresAt: Date.now() + 300 },
    }),
  };
  const b = await start(t, { listeners: [{ name: 't', type: 'tcp', host: '127.0.0.1', port: 0, auth: [] }] }, { options: { authenticators: { t: [expiring] } } });
  const c = await connect(b.port, { protocolVersion: 5, clientId: 'svc-1' });
  closeAll(t, c);
  const code = await new Promise<number | undefined>((resolve) => c.once('disconnect', (p) => resolve(p.reasonCode)));
  t.is(code, ReasonCode.MaximumConnectTime);
  await b.broker.stop();
  const rec = b.records().find((r) => r.event === 'disconnect');
  t.is(rec?.action, 'credentials-expired');
  t.is(rec?.clientId, 'svc-1');
  t.is(rec?.username, 'svc');
  t.is(rec?.decision, 'deny');
});

test('an unwritable audit path is a configuration error naming audit.path', (t) => {
  const dir = tempAuditDir(t);
  const blocker = path.join(dir, 'not-a-dir');
  fs.writeFileSync(blocker, '');
  const err = t.throws(() =>
    createBroker({ listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }], audit: { sink: 'file', path: path.join(blocker, 'audit.jsonl') } }, { logger: silentLogger() }),
  );
  t.is((err as { code?: string }).code, 'ERR_PORTCULLIS_CONFIG');
  t.regex(err?.message ?? '', /audit\.path: cannot open .*not-a-dir\/audit\.jsonl for writing \((ENOTDIR|EEXIST)\)/);
});

test('bad audit settings name the key', (t) => {
  const err = t.throws(() => createBroker({ audit: { failMode: 'sometimes' as never, rotate: { maxBytes: -1 } } }, { logger: silentLogger() }));
  t.regex(err?.message ?? '', /audit\.failMode/);
  t.regex(err?.message ?? '', /audit\.rotate\.maxBytes/);
});
