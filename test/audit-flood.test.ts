/**
 * An audit flood must not erase the audit history. One logged-in client sends subscribes whose
 * every filter is denied, as fast as the broker takes them, for a bounded time. Before the fix
 * each denial was a full record: 708,000 records (3.2 GB) in 20 s, and retention deleted what
 * came before. With repeated denials summarised per connection the log stays small, the record
 * written before the flood survives, `audit verify --key` passes, and every denial is accounted
 * for: written in full or counted in a summary.
 */
import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import test, { type ExecutionContext } from 'ava';
import { chainFiles } from '../src/audit/file-output.ts';
import { parseRecord, type AuditRecord } from '../src/audit/record.ts';
import { verifyAuditFiles } from '../src/audit/verify.ts';
import { createBroker } from '../src/index.ts';
import { createLogger } from '../src/log.ts';
import { connect, rawConnect, readAuditLines, tempAuditDir, writePolicyDir } from './helpers.ts';
import { encodeConnect, encodeSubscribe, PacketType, parsePackets, waitForType } from './raw-mqtt.ts';

const FLOOD_MS = 5000;
const FILTERS_PER_SUBSCRIBE = 50;

/** A broker where alice may use plant/#, writing its audit to `file` in small files, few kept (so a flood written in full rotates earlier records away); stopped at teardown unless `stop()` came first. */
async function floodBroker(t: ExecutionContext, file: string, audit: Record<string, unknown> = {}, logger = createLogger('error', new Writable({ write: (_c, _e, cb) => cb() }))) {
  const policy = writePolicyDir('p, user:alice, plant/#, *, allow\n');
  t.teardown(() => policy.cleanup());
  const broker = createBroker(
    {
      listeners: [{ name: 't', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users: [{ username: 'alice', password: 'alice-pw' }] }] }],
      authorizers: [{ type: 'casbin', model: policy.model, policy: policy.policy, watch: false }],
      sys: { intervalSeconds: 0 },
      store: { type: 'memory' },
      audit: { path: file, rotate: { maxBytes: 1_000_000, intervalSeconds: 0 }, retention: { maxFiles: 2 }, ...audit },
    },
    { logger },
  );
  const { listeners } = await broker.start();
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await broker.stop();
  };
  t.teardown(stop);
  return { port: listeners[0]?.port ?? 0, stop };
}

test(`a denial flood (${FLOOD_MS / 1000} s of denied subscribes) leaves a small log that keeps the history before it and verifies`, async (t) => {
  const dir = tempAuditDir(t);
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const keyFile = path.join(dir, 'signing.key');
  fs.writeFileSync(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  const file = path.join(dir, 'audit.jsonl');
  // The summaries alone are under test here, not the disconnect (the broker's business).
  const { port, stop } = await floodBroker(t, file, { checkpoint: { keyFile, intervalSeconds: 1 }, denials: { disconnectAfter: 0 } });

  // The history before the flood: a denial by another client.
  const witness = await connect(port, { protocolVersion: 5, clientId: 'witness', username: 'alice', password: 'alice-pw' });
  const refused = await witness.subscribeAsync('secret/before-the-flood', { qos: 1 }).then(
    () => null,
    (err: { packet?: { granted?: number[] } }) => err.packet?.granted?.[0],
  );
  t.is(refused, 0x87);
  await witness.endAsync();

  const raw = await rawConnect(port);
  t.teardown(() => raw.socket.destroy());
  raw.write(encodeConnect({ clientId: 'flooder', version: 5, username: 'alice', password: 'alice-pw' }));
  await waitForType(raw, PacketType.CONNACK);
  const pad = 'x'.repeat(200);
  let sent = 0;
  const end = Date.now() + FLOOD_MS;
  for (let id = 1; Date.now() < end; id = (id % 65535) + 1) {
    const filters = Array.from({ length: FILTERS_PER_SUBSCRIBE }, (_, k) => ({ topic: `secret/${sent + k}/${pad}`, qos: 1 as const }));
    sent += FILTERS_PER_SUBSCRIBE;
    if (!raw.socket.write(encodeSubscribe({ packetId: id, filters, version: 5 }))) await new Promise((r) => raw.socket.once('drain', r));
  }
  // Every SUBACK back: each filter's reason code.
  const expected = sent / FILTERS_PER_SUBSCRIBE;
  for (let i = 0; i < 500 && parsePackets(raw.received()).filter((p) => p.type === PacketType.SUBACK).length < expected; i++) await new Promise((r) => setTimeout(r, 20));
  const subacks = parsePackets(raw.received()).filter((p) => p.type === PacketType.SUBACK);
  t.is(subacks.length, expected, 'every subscribe answered');
  // v5 SUBACK: packet id, properties length (0), one reason code per filter.
  const denied = subacks.reduce((n, p) => n + [...p.body.subarray(3)].filter((c) => c === 0x87).length, 0);
  t.is(denied, sent, 'every filter denied');
  t.true(denied > 20_000, `a flood: ${denied} denials`);
  t.log(`${denied} denials`);
  raw.socket.destroy();
  await stop();

  const files = chainFiles(file);
  const bytes = files.reduce((n, f) => n + fs.statSync(f).size, 0);
  t.true(bytes < 2_000_000, `the audit log stays small: ${bytes} bytes for ${denied} denials`);
  t.log(`${bytes} bytes in ${files.length} file(s)`);
  const recs = files.flatMap((f) => readAuditLines(f).map((l) => parseRecord(l) as AuditRecord));
  t.true(
    recs.some((r) => r.clientId === 'witness' && r.topic === 'secret/before-the-flood' && r.decision === 'deny'),
    'the record from before the flood survives',
  );
  t.false(recs.some((r) => r.action === 'retention' || r.action === 'retention-alarm'), 'retention deleted nothing');
  const flood = recs.filter((r) => r.clientId === 'flooder' && r.event === 'subscribe');
  const summaries = flood.filter((r) => r.action === 'summary');
  t.true(summaries.length >= 1);
  const full = flood.filter((r) => r.action === undefined);
  const counted = summaries.reduce((n, r) => n + Number(r.detail?.count), 0);
  t.is(full.length + counted, denied, 'every denial is written in full or counted in a summary');
  const s = summaries[0] as AuditRecord;
  t.is(s.reasonCode, 0x87);
  t.regex(s.topic ?? '', /^secret\/\d+\//, 'the first topic of the window');
  t.regex(String(s.detail?.lastTopic), /^secret\/\d+\//, 'and the last');

  const report = await verifyAuditFiles(files, { key: publicKey });
  t.true(report.ok, report.problem?.message);
  t.is(report.startsAfter, undefined, 'the chain is whole, from its first record');
});

test('an allowed flood (re-subscribes the policy allows, in a loop) is summarised past audit.allowed.fullRecords: the history before it survives and every decision is accounted for', async (t) => {
  const dir = tempAuditDir(t);
  const file = path.join(dir, 'audit.jsonl');
  const { port, stop } = await floodBroker(t, file);
  const witness = await connect(port, { protocolVersion: 5, clientId: 'witness', username: 'alice', password: 'alice-pw' });
  await witness.subscribeAsync('plant/before-the-flood', { qos: 1 });
  await witness.endAsync();

  const raw = await rawConnect(port);
  t.teardown(() => raw.socket.destroy());
  raw.write(encodeConnect({ clientId: 'flooder', version: 5, username: 'alice', password: 'alice-pw' }));
  await waitForType(raw, PacketType.CONNACK);
  const pad = 'x'.repeat(200);
  // The same 50 filters again and again: each SUBSCRIBE replaces the subscriptions, and is allowed.
  const filters = Array.from({ length: FILTERS_PER_SUBSCRIBE }, (_, k) => ({ topic: `plant/${k}/${pad}`, qos: 1 as const }));
  let packets = 0;
  const end = Date.now() + 3000;
  for (let id = 1; Date.now() < end; id = (id % 65535) + 1) {
    packets++;
    if (!raw.socket.write(encodeSubscribe({ packetId: id, filters, version: 5 }))) await new Promise((r) => raw.socket.once('drain', r));
  }
  for (let i = 0; i < 500 && parsePackets(raw.received()).filter((p) => p.type === PacketType.SUBACK).length < packets; i++) await new Promise((r) => setTimeout(r, 20));
  const subacks = parsePackets(raw.received()).filter((p) => p.type === PacketType.SUBACK);
  t.is(subacks.length, packets, 'every subscribe answered');
  const granted = subacks.reduce((n, p) => n + [...p.body.subarray(3)].filter((c) => c === 0x01).length, 0);
  t.is(granted, packets * FILTERS_PER_SUBSCRIBE, 'every filter granted');
  t.true(granted > 10_000, `a flood: ${granted} allowed subscribes`);
  raw.socket.destroy();
  await stop();

  const files = chainFiles(file);
  const bytes = files.reduce((n, f) => n + fs.statSync(f).size, 0);
  t.true(bytes < 1_000_000, `the audit log stays small: ${bytes} bytes for ${granted} allowed subscribes`);
  const recs = files.flatMap((f) => readAuditLines(f).map((l) => parseRecord(l) as AuditRecord));
  t.true(recs.some((r) => r.clientId === 'witness' && r.topic === 'plant/before-the-flood' && r.decision === 'allow'), 'the record from before the flood survives');
  t.false(recs.some((r) => r.action === 'retention' || r.action === 'retention-alarm'), 'retention deleted nothing');
  const flood = recs.filter((r) => r.clientId === 'flooder' && r.event === 'subscribe');
  const full = flood.filter((r) => r.action === undefined);
  const summaries = flood.filter((r) => r.action === 'summary');
  t.true(full.length >= 100, `the first 100 of a window in full (${full.length})`);
  t.true(summaries.length >= 1 && summaries.every((s) => s.decision === 'allow'), 'summaries of allowed decisions say allow');
  t.is(full.length + summaries.reduce((n, r) => n + Number(r.detail?.count), 0), granted, 'every allowed subscribe is written in full or counted in a summary');
});

test('a flood of subscribes refused by a limit before any authorizer (a filter over limits.maxTopicLevels, a bad $share name) is summarised: the log stays small and every refusal is accounted for', async (t) => {
  const dir = tempAuditDir(t);
  const file = path.join(dir, 'audit.jsonl');
  const { port, stop } = await floodBroker(t, file);
  const raw = await rawConnect(port);
  t.teardown(() => raw.socket.destroy());
  raw.write(encodeConnect({ clientId: 'limit-flooder', version: 5, username: 'alice', password: 'alice-pw' }));
  await waitForType(raw, PacketType.CONNACK);
  const deep = `plant/${'a/'.repeat(70)}x`;
  const filters = Array.from({ length: FILTERS_PER_SUBSCRIBE }, (_, k) => ({ topic: k % 2 === 0 ? deep : `$share/g+${k}/plant/x`, qos: 1 as const }));
  const end = Date.now() + 3000;
  let sent = 0;
  for (let id = 1; Date.now() < end; id = (id % 65535) + 1) {
    sent++;
    if (!raw.socket.write(encodeSubscribe({ packetId: id, filters, version: 5 }))) await new Promise((r) => raw.socket.once('drain', r));
  }
  for (let i = 0; i < 500 && parsePackets(raw.received()).filter((p) => p.type === PacketType.SUBACK).length < sent; i++) await new Promise((r) => setTimeout(r, 20));
  const packets = parsePackets(raw.received());
  const subacks = packets.filter((p) => p.type === PacketType.SUBACK);
  const refused = subacks.reduce((n, p) => n + [...p.body.subarray(3)].filter((c) => c === 0x8f).length, 0);
  t.is(subacks.length, sent, 'every subscribe answered');
  t.is(refused, sent * FILTERS_PER_SUBSCRIBE, 'every filter refused with 0x8F');
  t.true(refused >= 10_000, `a flood: ${refused} refusals`);
  raw.socket.destroy();
  await stop();
  const files = chainFiles(file);
  const bytes = files.reduce((n, f) => n + fs.statSync(f).size, 0);
  t.true(bytes < 100_000, `the audit log stays small: ${bytes} bytes for ${refused} refusals`);
  const recs = files.flatMap((f) => readAuditLines(f).map((l) => parseRecord(l) as AuditRecord));
  const flood = recs.filter((r) => r.clientId === 'limit-flooder' && r.event === 'subscribe');
  const summaries = flood.filter((r) => r.action === 'summary');
  t.true(summaries.length >= 1 && summaries.every((r) => r.reasonCode === 0x8f && r.decision === 'deny'), 'the refusals are summarised');
  t.is(flood.filter((r) => r.action === undefined).length + summaries.reduce((n, r) => n + Number(r.detail?.count), 0), refused, 'every refusal is written in full or counted');
});
