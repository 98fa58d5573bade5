/**
 * /metrics over real sockets: what real MQTT clients did shows up in the right series (connects
 * by result and reason code, authentication by provider, authorization by action, messages and
 * payload bytes by QoS, sessions and subscriptions, latency histograms, store and audit health);
 * label values never carry a client id, user or topic; who may scrape; /readyz naming what is
 * not ready.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { createBroker, MemoryAuditSink, MemoryStore, VERSION, type AuditHealth, type AuditSink } from '../src/index.ts';
import mqtt from 'mqtt';
import { LabeledCounts, OVERFLOW_LABEL } from '../src/metrics/counts.ts';
import { silentLogger } from '../src/log.ts';
import { connect, delay, nextMessages, writePolicyDir } from './helpers.ts';
import { metric, parseMetrics, request, startOpsBroker, type OpsBroker } from './ops-support.ts';

const users = [
  { username: 'alice', password: 'alice-pw', roles: [] },
  { username: 'bob', password: 'bob-pw', roles: [] },
];

async function scrape(b: OpsBroker, token?: string) {
  const r = await request(b.base, '/metrics', token !== undefined ? { token } : {});
  if (r.status !== 200) throw new Error(`/metrics: ${r.status} ${r.text}`);
  return { ...parseMetrics(r.text), text: r.text, contentType: String(r.headers['content-type']) };
}

test('what clients do shows up by result, reason code, provider, action and QoS', async (t) => {
  const policy = writePolicyDir('p, *, data/#, *, allow\np, *, forbidden/#, *, deny\n');
  const b = await startOpsBroker(
    {
      listeners: [{ name: 'mqtt', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users }] }],
      authorizers: [{ type: 'casbin', model: policy.model, policy: policy.policy, watch: false }],
    },
    { http: { metrics: { latencySampleEvery: 1, public: true } } as never },
  );
  try {
    const refused = await connect(b.mqttPort, { clientId: 'intruder', username: 'alice', password: 'wrong', protocolVersion: 5 }).then(
      () => 'connected',
      (err: { code?: number }) => err.code,
    );
    t.is(refused, 0x86);
    const sub = await connect(b.mqttPort, { clientId: 'sub', username: 'bob', password: 'bob-pw', protocolVersion: 5 });
    const pub = await connect(b.mqttPort, { clientId: 'pub', username: 'alice', password: 'alice-pw', protocolVersion: 4 });
    await sub.subscribeAsync('data/#', { qos: 2 });
    await sub.subscribeAsync('forbidden/x').catch(() => undefined);
    const got = nextMessages(sub, 6);
    for (let i = 0; i < 3; i++) await pub.publishAsync('data/q0', Buffer.alloc(10), { qos: 0 });
    for (let i = 0; i < 2; i++) await pub.publishAsync('data/q1', Buffer.alloc(100), { qos: 1 });
    await pub.publishAsync('data/q2', Buffer.alloc(1000), { qos: 2 });
    await got;
    await pub.publishAsync('forbidden/x', Buffer.alloc(7), { qos: 1 });
    await delay(100);

    const { samples, types, contentType } = await scrape(b);
    t.regex(contentType, /^text\/plain; version=0\.0\.4/);
    t.is(metric(samples, 'portcullis_connects_total', { result: 'accepted', reason_code: '0x00' }), 2);
    t.is(metric(samples, 'portcullis_connects_total', { result: 'refused', reason_code: '0x86' }), 1);
    t.is(metric(samples, 'portcullis_authentication_decisions_total', { provider: 'static-users', result: 'allow' }), 2);
    t.is(metric(samples, 'portcullis_authentication_decisions_total', { provider: 'static-users', result: 'deny' }), 1);
    t.is(metric(samples, 'portcullis_authentication_duration_seconds_count', { result: 'allow' }), 2);
    t.is(metric(samples, 'portcullis_authentication_duration_seconds_count', { result: 'deny' }), 1);
    t.is(metric(samples, 'portcullis_authorization_decisions_total', { action: 'subscribe', result: 'allow' }), 1);
    t.is(metric(samples, 'portcullis_authorization_decisions_total', { action: 'subscribe', result: 'deny' }), 1);
    t.is(metric(samples, 'portcullis_authorization_decisions_total', { action: 'publish', result: 'deny' }), 1);
    // Received: every PUBLISH that reached its handler's end, the denied one too.
    t.is(metric(samples, 'portcullis_messages_received_total', { qos: '0' }), 3);
    t.is(metric(samples, 'portcullis_messages_received_total', { qos: '1' }), 3);
    t.is(metric(samples, 'portcullis_messages_received_total', { qos: '2' }), 1);
    t.is(metric(samples, 'portcullis_received_payload_bytes_total', { qos: '0' }), 30);
    t.is(metric(samples, 'portcullis_received_payload_bytes_total', { qos: '1' }), 207);
    t.is(metric(samples, 'portcullis_received_payload_bytes_total', { qos: '2' }), 1000);
    t.is(metric(samples, 'portcullis_messages_sent_total', { qos: '0' }), 3);
    t.is(metric(samples, 'portcullis_messages_sent_total', { qos: '1' }), 2);
    t.is(metric(samples, 'portcullis_messages_sent_total', { qos: '2' }), 1);
    t.is(metric(samples, 'portcullis_sent_payload_bytes_total', { qos: '2' }), 1000);
    t.is(metric(samples, 'portcullis_publish_to_deliver_seconds_count'), 6, 'every delivery timed (latencySampleEvery: 1)');
    t.true((metric(samples, 'portcullis_publish_to_deliver_seconds_sum') ?? -1) >= 0);
    t.is(metric(samples, 'portcullis_publish_to_deliver_seconds_bucket', { le: '+Inf' }), 6);
    t.is(metric(samples, 'portcullis_connections', { listener: 'mqtt', protocol: '5.0' }), 1);
    t.is(metric(samples, 'portcullis_connections', { listener: 'mqtt', protocol: '3.1.1' }), 1);
    t.is(metric(samples, 'portcullis_sessions', { state: 'connected' }), 2);
    t.is(metric(samples, 'portcullis_subscriptions'), 1);
    t.is(metric(samples, 'portcullis_audit_records_total', { event: 'connect', decision: 'deny' }), 1);
    t.is(metric(samples, 'portcullis_audit_sink_healthy'), 1);
    t.is(metric(samples, 'portcullis_store_up'), 1);
    t.is(metric(samples, 'portcullis_store_info', { type: 'memory', durable: 'false', durability: 'none' }), 1);
    t.is(metric(samples, 'portcullis_store_operation_duration_seconds_count', { operation: 'open' }), 1);
    t.is(metric(samples, 'portcullis_info', { version: VERSION }), 1);
    // The process series, and the Redis placeholders declared without samples.
    t.is(types.get('nodejs_eventloop_lag_seconds'), 'gauge');
    t.is(types.get('nodejs_gc_duration_seconds'), 'histogram');
    t.is(types.get('portcullis_redis_up'), 'gauge');
    t.false(samples.some((s) => s.name.startsWith('portcullis_redis_')));
    await sub.endAsync();
    await pub.endAsync();
  } finally {
    await b.stop();
    policy.cleanup();
  }
});

test('with audit.allowed publish and deliver on, every allowed publish and delivery is counted exactly, past the full-record limit', async (t) => {
  const policy = writePolicyDir('p, *, data/#, *, allow\np, *, forbidden/#, *, deny\n');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-metrics-allowed-'));
  // The file sink: the tee's fast path (recordAccess) is the one the broker takes with it.
  const b = await startOpsBroker(
    {
      listeners: [{ name: 'mqtt', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users }] }],
      authorizers: [{ type: 'casbin', model: policy.model, policy: policy.policy, watch: false }],
      audit: { sink: 'file', path: path.join(dir, 'audit.jsonl'), allowed: { publish: true, deliver: true, fullRecords: 10 } },
    },
    { http: { metrics: { public: true } } as never, configuredAudit: true },
  );
  try {
    const sub = await connect(b.mqttPort, { clientId: 'sub', username: 'bob', password: 'bob-pw', protocolVersion: 5 });
    const pub = await connect(b.mqttPort, { clientId: 'pub', username: 'alice', password: 'alice-pw', protocolVersion: 5 });
    await sub.subscribeAsync('data/#', { qos: 0 });
    const n = 150;
    const got = nextMessages(sub, n);
    for (let i = 0; i < n; i++) pub.publish('data/x', `m${i}`, { qos: 0 });
    await got;
    for (let i = 0; i < 4; i++) await pub.publishAsync('forbidden/x', 'no', { qos: 1 }).catch(() => undefined);
    await delay(100);
    const { samples } = await scrape(b);
    t.is(metric(samples, 'portcullis_authorization_decisions_total', { action: 'publish', result: 'allow' }), n);
    t.is(metric(samples, 'portcullis_authorization_decisions_total', { action: 'deliver', result: 'allow' }), n);
    t.is(metric(samples, 'portcullis_authorization_decisions_total', { action: 'publish', result: 'deny' }), 4);
    t.is(metric(samples, 'portcullis_authorization_decisions_total', { action: 'deliver', result: 'deny' }), 0);
    t.is(metric(samples, 'portcullis_audit_records_total', { event: 'publish', decision: 'allow' }), n);
    t.is(metric(samples, 'portcullis_audit_records_total', { event: 'publish', decision: 'deny' }), 4);
    t.is(metric(samples, 'portcullis_messages_received_total', { qos: '0' }), n);
    t.is(metric(samples, 'portcullis_messages_sent_total', { qos: '0' }), n);
    await sub.endAsync();
    await pub.endAsync();
  } finally {
    await b.stop();
    policy.cleanup();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('publish-to-deliver latency counts the time a delivery waited in an offline session queue', async (t) => {
  const b = await startOpsBroker({}, { http: { metrics: { latencySampleEvery: 1, public: true } } as never });
  try {
    const sub = await connect(b.mqttPort, { clientId: 'sleeper', clean: false, protocolVersion: 5, properties: { sessionExpiryInterval: 60 } });
    await sub.subscribeAsync('q/#', { qos: 1 });
    await sub.endAsync();
    const pub = await connect(b.mqttPort, { clientId: 'waker' });
    for (let i = 0; i < 3; i++) await pub.publishAsync('q/m', `m${i}`, { qos: 1 });
    const before = parseMetrics((await request(b.base, '/metrics')).text).samples;
    t.is(metric(before, 'portcullis_publish_to_deliver_seconds_count'), 0, 'nothing delivered yet');
    await delay(400);
    // Listening before CONNACK: the queue is sent right behind it.
    const back = mqtt.connect({ host: '127.0.0.1', port: b.mqttPort, clientId: 'sleeper', clean: false, protocolVersion: 5, properties: { sessionExpiryInterval: 60 }, reconnectPeriod: 0 });
    await nextMessages(back, 3);
    const after = parseMetrics((await request(b.base, '/metrics')).text).samples;
    t.is(metric(after, 'portcullis_publish_to_deliver_seconds_count'), 3);
    t.true((metric(after, 'portcullis_publish_to_deliver_seconds_sum') ?? 0) >= 3 * 0.4, 'each waited at least the 400 ms the subscriber was away');
    t.is(metric(after, 'portcullis_publish_to_deliver_seconds_bucket', { le: '0.25' }), 0);
    await back.endAsync();
    await pub.endAsync();
  } finally {
    await b.stop();
  }
});

test('label values never carry a client id, user or topic: 40 clients make no new series', async (t) => {
  const b = await startOpsBroker({}, { http: { metrics: { public: true } } as never });
  try {
    const series = async () => (await scrape(b)).samples.filter((s) => s.name.startsWith('portcullis_') && !s.name.startsWith('portcullis_http_'));
    const one = await connect(b.mqttPort, { clientId: 'warm-up' });
    await one.publishAsync('warm/up', 'x');
    await one.subscribeAsync('warm/up');
    await delay(50);
    const before = (await series()).map((s) => `${s.name}${JSON.stringify(s.labels)}`).sort();
    const clients = [];
    for (let i = 0; i < 40; i++) {
      const c = await connect(b.mqttPort, { clientId: `device-${i}-${'x'.repeat(i)}` });
      await c.subscribeAsync(`fleet/${i}/cmd`);
      await c.publishAsync(`fleet/${i}/telemetry/${'t'.repeat(i)}`, 'v');
      clients.push(c);
    }
    await delay(50);
    const after = await series();
    t.deepEqual(after.map((s) => `${s.name}${JSON.stringify(s.labels)}`).sort(), before, 'the same series, only their values moved');
    for (const s of after) for (const v of Object.values(s.labels)) t.notRegex(v, /device-|fleet\//);
    t.is(metric(after, 'portcullis_connections', { listener: 'mqtt', protocol: '3.1.1' }), 41);
    await Promise.all([one, ...clients].map((c) => c.endAsync()));
  } finally {
    await b.stop();
  }
});

test('a label family takes at most its bound of values; the rest count as "other"', (t) => {
  const c = new LabeledCounts(['reason'], 3);
  for (const r of ['a', 'b', 'c', 'd', 'e', 'a']) c.add([r]);
  t.deepEqual(
    c.samples().map((s) => [s.labels.reason, s.value]),
    [
      ['a', 2],
      ['b', 1],
      ['c', 1],
      [OVERFLOW_LABEL, 2],
    ],
  );
});

test('who may scrape: a token allowed admin/metrics when authentication is on, anyone with metrics.public, nobody when metrics are off', async (t) => {
  const b = await startOpsBroker();
  try {
    const anon = await request(b.base, '/metrics');
    t.is(anon.status, 401);
    t.is(anon.json.code, 'ERR_UNAUTHENTICATED');
    t.is((await request(b.base, '/metrics', { token: b.tokens.reader })).status, 200);
  } finally {
    await b.stop();
  }
  const open = await startOpsBroker({}, { http: { metrics: { public: true } } as never });
  try {
    t.is((await request(open.base, '/metrics')).status, 200);
  } finally {
    await open.stop();
  }
  const off = await startOpsBroker({}, { http: { metrics: { enabled: false } } as never });
  try {
    const r = await request(off.base, '/metrics', { token: off.tokens.admin });
    t.is(r.status, 404);
    t.is((await request(off.base, '/healthz')).status, 200);
  } finally {
    await off.stop();
  }
  // Without `http` there is no listener at all.
  const none = createBroker({ listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }] }, { logger: silentLogger(), store: new MemoryStore(), audit: new MemoryAuditSink() });
  const started = await none.start();
  t.is(started.http, undefined);
  await none.stop();
});

/** A store whose writes can be made to fail, and an audit sink whose health can be set. */
class FlakyStore extends MemoryStore {
  failing = false;
  override async putSubscription(key: string, sub: Parameters<MemoryStore['putSubscription']>[1]): Promise<void> {
    if (this.failing) throw new Error('disk full (test)');
    return super.putSubscription(key, sub);
  }
}

class SickSink extends MemoryAuditSink implements AuditSink {
  ok = true;
  health(): AuditHealth {
    return { ok: this.ok, pending: 3, dropped: 0, written: this.records.length, ...(this.ok ? {} : { error: 'EACCES (test)' }) };
  }
}

test('/readyz: 200 when ready; 503 naming the store whose writes fail and the audit sink that cannot write; store errors counted', async (t) => {
  const store = new FlakyStore();
  const audit = new SickSink();
  const b = await startOpsBroker({ audit: { failMode: 'fail-open' } }, { store, audit, http: { metrics: { public: true } } as never });
  try {
    const ready = await request(b.base, '/readyz');
    t.is(ready.status, 200);
    t.is(ready.json.status, 'ready');
    t.deepEqual(ready.json.checks.map((c: { name: string }) => c.name), ['listeners', 'store', 'audit', 'redis']);
    store.failing = true;
    audit.ok = false;
    const c = await connect(b.mqttPort, { clientId: 'persist', clean: false });
    await c.subscribeAsync('a/b');
    await delay(50);
    const r = await request(b.base, '/readyz');
    t.is(r.status, 503);
    t.is(r.json.status, 'not-ready');
    const byName = Object.fromEntries(r.json.checks.map((x: { name: string; ok: boolean; detail: string }) => [x.name, x]));
    t.false(byName.store.ok);
    t.regex(byName.store.detail, /putSubscription failed: disk full/);
    t.false(byName.audit.ok);
    t.regex(byName.audit.detail, /EACCES/);
    t.true(byName.listeners.ok);
    const { samples } = await scrape(b);
    t.is(metric(samples, 'portcullis_store_errors_total', { operation: 'putSubscription' }), 1);
    t.is(metric(samples, 'portcullis_store_up'), 0);
    t.is(metric(samples, 'portcullis_audit_sink_healthy'), 0);
    t.is(metric(samples, 'portcullis_audit_backlog_records'), 3);
    // A later good write makes the store healthy again.
    store.failing = false;
    await c.subscribeAsync('a/c');
    await delay(50);
    t.is(metric((await scrape(b)).samples, 'portcullis_store_up'), 1);
    await c.endAsync();
  } finally {
    await b.stop();
  }
  const stopped = await request(b.base, '/healthz').then(
    () => 'answered',
    () => 'closed',
  );
  t.is(stopped, 'closed', 'the listener stops with the broker');
});
