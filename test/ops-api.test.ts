/**
 * The admin API doing its job over real sockets, with real MQTT clients: clients listed, shown
 * and kicked (v5 DISCONNECT 0x98, will discarded); sessions and their subscriptions; bans added
 * (a live client cut off, a new CONNECT refused 0x8A), listed and removed; reloads; audit query
 * and tail; policy explain; the OpenAPI document; `portcullis token`; every call audited with
 * who made it.
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import type { IDisconnectPacket, MqttClient } from 'mqtt';
import { readTokenFile } from '../src/http/token-file.ts';
import { connect, delay, messagesWithin } from './helpers.ts';
import { request, root, startOpsBroker, tokenCli, type OpsBroker } from './ops-support.ts';

let b: OpsBroker;
let policyFile: string;
let banFile: string;

test.before(async () => {
  const dir = fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/tmp', 'portcullis-ops-api-'));
  policyFile = path.join(dir, 'acl.csv');
  banFile = path.join(dir, 'bans.jsonl');
  fs.writeFileSync(policyFile, 'p, *, public/#, *, allow\np, *, secret/#, *, deny\np, role:ops, secret/ops, publish, allow, 1, false\n');
  fs.writeFileSync(banFile, '');
  b = await startOpsBroker(
    {
      authorizers: [{ type: 'casbin', model: path.join(root, 'policies', 'model.conf'), policy: policyFile, watch: false }],
      admission: { bans: { file: banFile, watch: false } },
      audit: { sink: 'file', path: path.join(dir, 'audit.jsonl'), fsyncIntervalMs: 0 },
    },
    { configuredAudit: true },
  );
});
test.after.always(async () => {
  await b?.stop();
});

const get = (p: string, token = b.tokens.admin) => request(b.base, p, { token });
const post = (p: string, body?: object, token = b.tokens.admin) => request(b.base, p, { method: 'POST', token, ...(body !== undefined ? { body } : {}) });

test.serial('clients: list and show a connected client with its subscriptions', async (t) => {
  const c = await connect(b.mqttPort, { clientId: 'list-me', protocolVersion: 5 });
  await c.subscribeAsync('public/a/#', { qos: 1 });
  try {
    const list = await get('/api/v1/clients?clientId=list-me');
    t.is(list.status, 200, list.text);
    t.is(list.json.total, 1);
    const info = list.json.items[0];
    t.like(info, { clientId: 'list-me', listener: 'mqtt', protocol: '5.0', authMethod: 'anonymous', remoteAddress: '127.0.0.1', subscriptions: 1 });
    const one = await get(`/api/v1/clients/${info.id}`);
    t.is(one.status, 200);
    t.deepEqual(one.json.subscriptionList.map((s: { filter: string; qos: number }) => [s.filter, s.qos]), [['public/a/#', 1]]);
    t.is((await get('/api/v1/clients/999999')).json.code, 'ERR_NOT_FOUND');
  } finally {
    await c.endAsync();
  }
});

test.serial('clients: kick ends the connection with DISCONNECT 0x98, discards the will, and is audited twice (the disconnect and the admin call)', async (t) => {
  const watcher = await connect(b.mqttPort, { clientId: 'watcher' });
  await watcher.subscribeAsync('public/will');
  const victim = await connect(b.mqttPort, { clientId: 'victim', protocolVersion: 5, will: { topic: 'public/will', payload: Buffer.from('gone'), qos: 0, retain: false } });
  try {
    const id = (await get('/api/v1/clients?clientId=victim')).json.items[0].id as number;
    const disconnected = new Promise<IDisconnectPacket>((resolve) => victim.once('disconnect', resolve));
    const r = await post(`/api/v1/clients/${id}/kick`, { reason: 'maintenance' });
    t.is(r.status, 200, r.text);
    t.is(r.json.kicked.clientId, 'victim');
    const packet = await disconnected;
    t.is(packet.reasonCode, 0x98);
    const dis = await waitForRecordIn(b, (x) => x.event === 'disconnect' && x.clientId === 'victim');
    t.is(dis.action, 'kicked');
    t.is(dis.reasonCode, 0x98);
    t.regex(dis.reason ?? '', /kicked by ops-admin through the admin API: maintenance/);
    t.deepEqual(dis.detail, { willDiscarded: true });
    const admin = await waitForRecordIn(b, (x) => x.event === 'admin' && x.action === 'api.clients.kick');
    t.is(admin.decision, 'allow');
    t.is(admin.username, 'ops-admin');
    t.like(admin.detail, { status: 200, clientId: 'victim', connectionId: id });
    const wills = await messagesWithin(watcher, 300);
    t.deepEqual(wills, [], 'the will was discarded');
    t.is((await get('/api/v1/clients?clientId=victim')).json.total, 0);
  } finally {
    victim.end(true);
    await watcher.endAsync();
  }
});

test.serial('sessions: a persistent session and its subscriptions, connected and then offline', async (t) => {
  const c = await connect(b.mqttPort, { clientId: 'keeper', protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 300 } });
  await c.subscribeAsync({ 'public/x': { qos: 1 }, 'public/y/+': { qos: 0, nl: true } });
  await c.endAsync();
  await delay(50);
  const list = await get('/api/v1/sessions?clientId=keeper');
  t.is(list.status, 200);
  t.is(list.json.total, 1);
  const s = list.json.items[0];
  t.like(s, { clientId: 'keeper', connected: false, persistent: true, subscriptions: 2, protocol: '5.0' });
  const one = await get(`/api/v1/sessions/${encodeURIComponent(s.owner)}/keeper`);
  t.is(one.status, 200, one.text);
  t.deepEqual(
    one.json.subscriptionList.map((x: { filter: string; qos: number; noLocal: boolean }) => [x.filter, x.qos, x.noLocal]),
    [
      ['public/x', 1, false],
      ['public/y/+', 0, true],
    ],
  );
  t.is((await get('/api/v1/sessions?connected=true&clientId=keeper')).json.total, 0);
});

test.serial('bans: add cuts a live client off and refuses its CONNECT (0x8A), list shows it, remove lifts it; each change audited', async (t) => {
  const live = await connect(b.mqttPort, { clientId: 'banned-one', protocolVersion: 5 });
  const cut = new Promise<IDisconnectPacket>((resolve) => live.once('disconnect', resolve));
  const add = await post('/api/v1/bans', { kind: 'client-id', value: 'banned-one', for: '1h', reason: 'loop' });
  t.is(add.status, 201, add.text);
  t.like(add.json.ban, { kind: 'client-id', value: 'banned-one', reason: 'loop' });
  t.is((await cut).reasonCode, 0x98, 'a live client the new ban covers is cut off as an administrative action');
  const refused = await connect(b.mqttPort, { clientId: 'banned-one', protocolVersion: 5 }).then(
    () => 'connected',
    (err: { code?: number }) => err.code,
  );
  t.is(refused, 0x8a);
  const list = await get('/api/v1/bans', b.tokens.reader);
  t.deepEqual(list.json.items.map((x: { kind: string; value: string }) => `${x.kind}:${x.value}`), ['client-id:banned-one']);
  t.regex(fs.readFileSync(banFile, 'utf8'), /"banned-one"/);
  t.truthy(await waitForRecordIn(b, (x) => x.event === 'ban' && x.clientId === 'banned-one'));
  const bad = await post('/api/v1/bans', { kind: 'ip', value: '999.1.1.1' });
  t.is(bad.status, 400);
  t.regex(bad.json.message, /not an IPv4 or IPv6 address/);
  const del = await request(b.base, '/api/v1/bans/client-id/banned-one', { method: 'DELETE', token: b.tokens.admin });
  t.is(del.status, 200, del.text);
  t.truthy(await waitForRecordIn(b, (x) => x.event === 'unban' && x.clientId === 'banned-one'));
  const again = await connect(b.mqttPort, { clientId: 'banned-one' });
  await again.endAsync();
  t.is((await request(b.base, '/api/v1/bans/client-id/banned-one', { method: 'DELETE', token: b.tokens.admin })).status, 404);
  const cidr = await post('/api/v1/bans', { kind: 'cidr', value: '203.0.113.0/24' });
  t.is(cidr.status, 201);
  t.is((await request(b.base, `/api/v1/bans/cidr/${encodeURIComponent('203.0.113.0/24')}`, { method: 'DELETE', token: b.tokens.admin })).status, 200);
});

test.serial('reloads: policy (a bad file keeps the last good one and says so), passwords, certificates, bans; each audited', async (t) => {
  const good = await post('/api/v1/reload/policy');
  t.is(good.status, 200, good.text);
  t.true(good.json.ok);
  const before = fs.readFileSync(policyFile, 'utf8');
  fs.writeFileSync(policyFile, 'p, *, public/#, *, allow\np, bad line\n');
  try {
    const bad = await post('/api/v1/reload/policy');
    t.is(bad.status, 200);
    t.false(bad.json.ok);
    t.regex(JSON.stringify(bad.json.results), /acl\.csv:2/);
    t.truthy(await waitForRecordIn(b, (x) => x.event === 'reload' && x.decision === 'deny' && /acl\.csv:2/.test(x.reason ?? '')));
  } finally {
    fs.writeFileSync(policyFile, before);
  }
  for (const what of ['passwords', 'certificates', 'bans']) {
    const r = await post(`/api/v1/reload/${what}`);
    t.is(r.status, 200, `${what}: ${r.text}`);
    t.true(r.json.ok, what);
  }
  const rec = await waitForRecordIn(b, (x) => x.event === 'admin' && x.action === 'api.reload.bans');
  t.is(rec.username, 'ops-admin');
});

test.serial('audit: query filters records, tail follows new ones (waiting for them), and the latest denials come from memory', async (t) => {
  const c = await connect(b.mqttPort, { clientId: 'snoop', protocolVersion: 4 });
  try {
    t.deepEqual(await refusedSubscribe(c, 'secret/plans'), [0x80]);
    const q = await get('/api/v1/audit/records?event=subscribe&decision=deny&clientId=snoop&limit=5', b.tokens.reader);
    t.is(q.status, 200, q.text);
    t.is(q.json.records.length, 1);
    t.like(q.json.records[0], { event: 'subscribe', decision: 'deny', clientId: 'snoop', topic: 'secret/plans', reasonCode: 0x87 });
    const last = q.json.records[0].seq as number;
    const tail = get(`/api/v1/audit/tail?afterSeq=${last}&clientId=snoop&waitMs=5000`, b.tokens.reader);
    await delay(300);
    await refusedSubscribe(c, 'secret/other');
    const followed = await tail;
    t.is(followed.status, 200);
    t.true(followed.json.records.length >= 1);
    t.true(followed.json.records.every((r: { seq: number }) => r.seq > last));
    t.is(followed.json.records[0].topic, 'secret/other');
    const denials = await get('/api/v1/audit/denials?limit=5', b.tokens.reader);
    t.true(denials.json.items.some((d: { topic?: string; clientId?: string }) => d.topic === 'secret/other' && d.clientId === 'snoop'));
    // Every kind of record can be asked for, the store's own included (its open report).
    const store = await get('/api/v1/audit/records?event=store&limit=1', b.tokens.reader);
    t.is(store.status, 200, store.text);
    t.is(store.json.records[0]?.event, 'store');
    const files = await get('/api/v1/audit/files', b.tokens.reader);
    t.deepEqual(files.json.items.map((f: { name: string; live: boolean }) => [f.name, f.live]), [['audit.jsonl', true]]);
  } finally {
    await c.endAsync();
  }
});

test.serial("policy explain: the broker's own policy, with the deciding rule and the near misses", async (t) => {
  const allow = await post('/api/v1/policy/explain', { user: 'u', action: 'publish', topic: 'public/x' }, b.tokens.reader);
  t.is(allow.status, 200, allow.text);
  t.like(allow.json.results[0], { authorizer: 'casbin', decision: 'allow' });
  t.regex(allow.json.results[0].rule, /acl\.csv:1/);
  const deny = await post('/api/v1/policy/explain', { user: 'u', roles: ['ops'], action: 'publish', topic: 'secret/ops', qos: 2 }, b.tokens.reader);
  t.is(deny.json.results[0].decision, 'deny');
  t.regex(deny.json.results[0].rule, /acl\.csv:2/);
  const noWho = await post('/api/v1/policy/explain', { action: 'publish', topic: 'x' }, b.tokens.reader);
  t.is(noWho.status, 400);
  t.is(noWho.json.code, 'ERR_BAD_REQUEST');
});

test.serial('every admin API call is audited with its caller, also when it succeeds', async (t) => {
  const r = await get('/api/v1/overview', b.tokens.reader);
  t.is(r.status, 200);
  const id = String(r.headers['x-request-id'] ?? '');
  t.truthy(id);
  const rec = await waitForRecordIn(b, (x) => x.event === 'admin' && x.detail?.requestId === id);
  t.is(rec.action, 'api.overview');
  t.like(rec, { decision: 'allow', username: 'ops-reader', authMethod: 'token', listener: 'http', decidedBy: 'admin-policy' });
  t.regex(rec.rule ?? '', /admin\/policy\.csv:\d+/);
  t.like(rec.detail, { method: 'GET', route: '/api/v1/overview', status: 200 });
});

test.serial('the OpenAPI document lists every route with its policy object, and the console and health routes are public', async (t) => {
  const doc = (await get('/api/v1/openapi.json', b.tokens.reader)).json;
  t.is(doc.openapi, '3.1.0');
  for (const [p, method] of [
    ['/api/v1/clients', 'get'],
    ['/api/v1/clients/{id}/kick', 'post'],
    ['/api/v1/sessions/{owner}/{clientId}', 'get'],
    ['/api/v1/bans/{kind}/{value}', 'delete'],
    ['/api/v1/reload/certificates', 'post'],
    ['/api/v1/audit/tail', 'get'],
    ['/api/v1/policy/explain', 'post'],
    ['/metrics', 'get'],
    ['/readyz', 'get'],
  ] as const) {
    t.truthy(doc.paths[p]?.[method], `${method} ${p}`);
  }
  t.deepEqual(doc.paths['/api/v1/clients/{id}/kick'].post['x-portcullis-policy'], { object: 'admin/clients/kick', action: 'publish' });
  t.deepEqual(doc.paths['/readyz'].get.security, []);
  t.truthy(doc.components.securitySchemes.bearerToken);
  const page = await request(b.base, '/console/');
  t.is(page.status, 200);
  t.regex(String(page.headers['content-security-policy'] ?? ''), /script-src 'self'/);
  t.is((await request(b.base, '/healthz')).status, 200);
});

test.serial('portcullis token: add prints the token once and keeps only its hash; list shows no hash; remove stops it at once', async (t) => {
  const added = await tokenCli(['add', 'cli-user', '--roles', 'read-only', '--file', b.tokenFile]);
  t.is(added.code, 0, added.err);
  const token = added.out.trim();
  t.regex(token, /^pct_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/);
  const text = fs.readFileSync(b.tokenFile, 'utf8');
  t.false(text.includes(token.split('_').slice(2).join('_')), 'the file never holds the token');
  t.is(fs.statSync(b.tokenFile).mode & 0o777, 0o600);
  t.true(readTokenFile(b.tokenFile).some((e) => e.name === 'cli-user' && e.hash.startsWith('$argon2id$')));
  // The broker reads the changed file on its next request (at most a second later).
  await delay(1100);
  const me = await get('/api/v1/whoami', token);
  t.is(me.status, 200, me.text);
  t.deepEqual(me.json, { name: 'cli-user', method: 'token', roles: ['read-only'] });
  const listed = await tokenCli(['list', '--file', b.tokenFile]);
  t.regex(listed.out, /cli-user\troles=read-only/);
  t.notRegex(listed.out, /argon2|pct_/);
  t.is((await tokenCli(['add', 'cli-user', '--roles', 'admin', '--file', b.tokenFile])).code, 2, 'a second token needs --replace');
  t.is((await tokenCli(['add', 'bad name', '--roles', 'admin', '--file', b.tokenFile])).code, 2);
  t.is((await tokenCli(['add', 'x', '--roles', 'a b', '--file', b.tokenFile])).code, 2);
  t.is((await tokenCli(['remove', 'cli-user', '--file', b.tokenFile])).code, 0);
  await delay(1100);
  const gone = await get('/api/v1/whoami', token);
  t.is(gone.status, 401, 'a removed token stops working, remembered or not');
  t.is(gone.json.code, 'ERR_TOKEN_INVALID');
  t.truthy(await waitForRecordIn(b, (x) => x.event === 'reload' && x.action === 'admin-tokens' && x.decision === 'allow'));
});

/** A subscription the policy refuses: the SUBACK return codes (mqtt.js rejects such a SUBACK). */
async function refusedSubscribe(c: MqttClient, topic: string): Promise<number[]> {
  return c.subscribeAsync(topic).then(
    (granted) => granted.map((g) => g.qos as number),
    (err: { packet?: { granted?: number[] } }) => err.packet?.granted ?? [],
  );
}

/** The broker here writes its audit log to a file: read the records back from it. */
async function waitForRecordIn(ob: OpsBroker, pred: (r: Record<string, any>) => boolean, ms = 3000): Promise<Record<string, any>> {
  const file = ob.broker.config.audit.path;
  const end = Date.now() + ms;
  for (;;) {
    const lines = fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean) : [];
    const hit = lines.map((l) => JSON.parse(l) as Record<string, any>).find(pred);
    if (hit !== undefined) return hit;
    if (Date.now() > end) throw new Error('no such audit record in the file');
    await delay(30);
  }
}
