/**
 * The admin API's bad input and security cases, each over a real socket: a clear HTTP error
 * with a stable code, and an `admin` audit record of the refusal. No token, a wrong, malformed
 * or expired token; a read-only role calling a write endpoint; oversized, malformed and non-JSON
 * bodies; unknown routes; path traversal in the audit query; guessing throttled per address
 * and per token id (a valid token from a flooded address still served);
 * refusal to start without authentication on a non-loopback address; no secret ever returned.
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { ConfigError, createBroker, MemoryAuditSink, MemoryStore, parseConfig } from '../src/index.ts';
import { AuthThrottle } from '../src/http/throttle.ts';
import { silentLogger } from '../src/log.ts';
import { adminRecords, request, root, startOpsBroker, type OpsBroker, type Reply } from './ops-support.ts';

let b: OpsBroker;

test.before(async () => {
  b = await startOpsBroker(
    { audit: { sink: 'none' } },
    { http: { bodyLimit: 2048, allowedHosts: ['ops.example.com'], auth: { failures: { burst: 1000, perMinute: 1000 } } as never } },
  );
});
test.after.always(async () => {
  await b?.stop();
});

/** The admin record the request with this id wrote. */
function recordOf(r: Reply) {
  const id = (r.json as { requestId?: string } | undefined)?.requestId;
  return adminRecords(b.audit).find((x) => x.detail?.requestId === id);
}

async function refused(t: import('ava').ExecutionContext, r: Reply, status: number, code: string, match?: RegExp) {
  t.is(r.status, status, r.text);
  t.is(r.json?.code, code);
  if (match !== undefined) t.regex(r.json?.message ?? '', match);
  t.is(r.json?.statusCode, status);
  t.regex(r.headers['content-type'] ?? '', /application\/json/);
  // onResponse runs after the reply is written: give it a turn.
  await new Promise((res) => setTimeout(res, 20));
  const rec = recordOf(r);
  t.truthy(rec, 'the refusal is audited');
  t.is(rec?.decision, 'deny');
  t.is(rec?.detail?.status, status);
  t.is(rec?.detail?.code, code);
  return rec;
}

test('no token: 401 ERR_UNAUTHENTICATED with a Bearer challenge, audited', async (t) => {
  const r = await request(b.base, '/api/v1/clients');
  const rec = await refused(t, r, 401, 'ERR_UNAUTHENTICATED', /Authorization: Bearer/);
  t.is(r.headers['www-authenticate'], 'Bearer realm="portcullis"');
  t.is(rec?.action, 'api.clients.list');
  t.is(rec?.remoteAddress, '127.0.0.1');
});

test('a wrong token and a token with an unknown id get the same 401 ERR_TOKEN_INVALID, audited', async (t) => {
  const [, id] = b.tokens.admin.split('_');
  const wrongSecret = `pct_${id}_${'A'.repeat(43)}`;
  const unknownId = `pct_${'0'.repeat(16)}_${'A'.repeat(43)}`;
  const a = await request(b.base, '/api/v1/clients', { token: wrongSecret });
  const c = await request(b.base, '/api/v1/clients', { token: unknownId });
  await refused(t, a, 401, 'ERR_TOKEN_INVALID');
  await refused(t, c, 401, 'ERR_TOKEN_INVALID');
  t.is(a.json.message, c.json.message);
});

test('a malformed Authorization header or token: 401 ERR_TOKEN_MALFORMED, audited', async (t) => {
  await refused(t, await request(b.base, '/api/v1/clients', { headers: { authorization: 'Basic YWRtaW46YWRtaW4=' } }), 401, 'ERR_TOKEN_MALFORMED');
  await refused(t, await request(b.base, '/api/v1/clients', { token: 'not-a-token' }), 401, 'ERR_TOKEN_MALFORMED', /pct_/);
});

test('an expired token: 401 ERR_TOKEN_EXPIRED naming when, audited', async (t) => {
  const rec = await refused(t, await request(b.base, '/api/v1/clients', { token: b.tokens.expired }), 401, 'ERR_TOKEN_EXPIRED', /ops-old.*expired at/);
  t.is(rec?.username, undefined, 'no caller is named for a refused token');
});

test('a read-only role calling a write endpoint: 403 ERR_FORBIDDEN naming the object, audited with the policy decision', async (t) => {
  const ok = await request(b.base, '/api/v1/bans', { token: b.tokens.reader });
  t.is(ok.status, 200, 'reading is allowed');
  const r = await request(b.base, '/api/v1/reload/policy', { method: 'POST', token: b.tokens.reader });
  const rec = await refused(t, r, 403, 'ERR_FORBIDDEN', /'ops-reader' \(roles read-only\) may not change admin\/reload\/policy/);
  t.is(rec?.username, 'ops-reader');
  t.is(rec?.authMethod, 'token');
  t.is(rec?.decidedBy, 'admin-policy');
  t.truthy(rec?.policyVersion);
  const kick = await request(b.base, '/api/v1/clients/1/kick', { method: 'POST', token: b.tokens.reader, body: {} });
  await refused(t, kick, 403, 'ERR_FORBIDDEN', /admin\/clients\/kick/);
  const ban = await request(b.base, '/api/v1/bans', { method: 'POST', token: b.tokens.reader, body: { kind: 'client-id', value: 'x' } });
  await refused(t, ban, 403, 'ERR_FORBIDDEN');
});

test('an oversized body: 413 ERR_BODY_TOO_LARGE, audited', async (t) => {
  const body = JSON.stringify({ action: 'publish', topic: 'a'.repeat(4000), user: 'u' });
  await refused(t, await request(b.base, '/api/v1/policy/explain', { method: 'POST', token: b.tokens.admin, body }), 413, 'ERR_BODY_TOO_LARGE', /http\.bodyLimit/);
});

test('malformed JSON: 400 ERR_MALFORMED_JSON; not JSON: 415; unknown or missing fields: 400 ERR_BAD_REQUEST; all audited', async (t) => {
  await refused(t, await request(b.base, '/api/v1/policy/explain', { method: 'POST', token: b.tokens.admin, body: '{"action": "publish", "topic":' }), 400, 'ERR_MALFORMED_JSON');
  await refused(t, await request(b.base, '/api/v1/policy/explain', { method: 'POST', token: b.tokens.admin, body: 'action=publish', headers: { 'content-type': 'application/x-www-form-urlencoded' } }), 415, 'ERR_UNSUPPORTED_MEDIA_TYPE');
  await refused(t, await request(b.base, '/api/v1/policy/explain', { method: 'POST', token: b.tokens.admin, body: { action: 'publish', topic: 'a', user: 'u', evil: true } }), 400, 'ERR_BAD_REQUEST', /additional properties/);
  await refused(t, await request(b.base, '/api/v1/policy/explain', { method: 'POST', token: b.tokens.admin, body: { action: 'fly', topic: 'a', user: 'u' } }), 400, 'ERR_BAD_REQUEST', /body\/action/);
  await refused(t, await request(b.base, '/api/v1/clients?limit=100000', { token: b.tokens.admin }), 400, 'ERR_BAD_REQUEST', /querystring\/limit/);
  await refused(t, await request(b.base, '/api/v1/clients/abc', { token: b.tokens.admin }), 400, 'ERR_BAD_REQUEST', /params\/id/);
});

test('unknown routes: 404 ERR_NOT_FOUND for a caller, 401 for a stranger; both audited', async (t) => {
  const rec = await refused(t, await request(b.base, '/api/v1/nope', { token: b.tokens.reader }), 404, 'ERR_NOT_FOUND', /no route GET \/api\/v1\/nope/);
  t.is(rec?.action, 'api.unknown-route');
  t.is(rec?.username, 'ops-reader');
  await refused(t, await request(b.base, '/api/v1/nope', { method: 'DELETE' }), 401, 'ERR_UNAUTHENTICATED');
  await refused(t, await request(b.base, '/etc/passwd', { token: b.tokens.reader }), 404, 'ERR_NOT_FOUND');
});

test('path traversal in the audit query: 400 ERR_BAD_FILE, audited, nothing read outside the audit log', async (t) => {
  const dir = fs.mkdtempSync(path.join(b.dir, 'audit-'));
  const withFile = await startOpsBroker({ audit: { sink: 'file', path: path.join(dir, 'audit.jsonl'), fsyncIntervalMs: 0 } }, { configuredAudit: true });
  try {
    const secret = path.join(withFile.dir, 'secret.txt');
    fs.writeFileSync(secret, 'TOP-SECRET\n');
    for (const name of ['../secret.txt', '..%2Fsecret.txt', '%2e%2e%2fsecret.txt', '/etc/passwd', '..', 'audit.jsonl/../../secret.txt', 'nope.jsonl', '..%5Csecret.txt']) {
      const r = await request(withFile.base, `/api/v1/audit/records?file=${name}`, { token: withFile.tokens.admin });
      t.is(r.status, 400, name);
      t.is(r.json?.code, 'ERR_BAD_FILE', name);
      t.notRegex(r.text, /TOP-SECRET|root:/);
    }
    // The live file by its own name works.
    const ok = await request(withFile.base, '/api/v1/audit/records?file=audit.jsonl&event=admin', { token: withFile.tokens.admin });
    t.is(ok.status, 200, ok.text);
    t.true(ok.json.records.some((r: { detail?: { code?: string } }) => r.detail?.code === 'ERR_BAD_FILE'), 'the refusals are in the audit log itself');
  } finally {
    await withFile.stop();
  }
});

test('failed authentications are throttled by what was guessed: junk by address, a known token id by that token; a valid token from a flooded address gets 200', async (t) => {
  const small = await startOpsBroker({ audit: { sink: 'none' } }, { http: { auth: { failures: { burst: 3, perMinute: 1 } } as never } });
  let stopped = false;
  try {
    const from = (localAddress: string, token?: string) => request(small.base, '/api/v1/clients', { localAddress, ...(token !== undefined ? { token } : {}) });
    // The admin token is used from .7 before the flood: that pair is known good.
    t.is((await from('127.0.0.7', small.tokens.admin)).status, 200);
    for (let i = 0; i < 3; i++) t.is((await from('127.0.0.7', 'pct_bad')).status, 401);
    const junk = await from('127.0.0.7');
    t.is(junk.status, 429, 'requests without a known token id are judged on their address');
    t.is(junk.json.code, 'ERR_TOO_MANY_FAILURES');
    t.truthy(Number(junk.headers['retry-after']) > 0);
    t.is((await from('127.0.0.7', `pct_${'0'.repeat(16)}_${'A'.repeat(43)}`)).status, 429, 'an unknown token id too');
    // A valid token from the flooded address is judged on its own failures: none.
    const good = await from('127.0.0.7', small.tokens.reader);
    t.is(good.status, 200, good.text);

    // Wrong secrets for the admin token's id count against that token, not against the address.
    const [, id] = small.tokens.admin.split('_');
    const wrong = `pct_${id}_${'A'.repeat(43)}`;
    for (let i = 0; i < 3; i++) t.is((await from('127.0.0.9', wrong)).status, 401);
    const guessed = await from('127.0.0.9', wrong);
    t.is(guessed.status, 429);
    t.regex(guessed.json.message, new RegExp(`with the token ${id}`));
    t.is((await from('127.0.0.10', wrong)).status, 429, 'from every address: guessing one token is slowed wherever it comes from');
    t.is((await from('127.0.0.9')).status, 401, 'the address itself is not throttled by them');
    t.is((await from('127.0.0.9', small.tokens.reader)).status, 200, 'nor is another token');
    // The token's holder, known good from .7, is judged on that pair's own failures only: not locked out.
    t.is((await from('127.0.0.7', small.tokens.admin)).status, 200);

    // More 429s from .7: one full record per address and kind, the rest summarised when the interval ends (here: at stop).
    for (let i = 0; i < 5; i++) t.is((await from('127.0.0.7')).status, 429);
    await new Promise((res) => setTimeout(res, 20));
    t.is(adminRecords(small.audit).filter((x) => x.detail?.status === 429 && x.remoteAddress === '127.0.0.7').length, 1);
    await small.stop();
    stopped = true;
    const summary = adminRecords(small.audit).find((x) => x.action === 'http.refusals' && x.remoteAddress === '127.0.0.7');
    t.like(summary, { decision: 'deny', detail: { refusal: 'throttled', count: 6, status429: 6 } });
  } finally {
    if (!stopped) await small.stop();
  }
});

test('the throttle keeps every map bounded: a flood of addresses and token ids holds at most 10,000 entries each', (t) => {
  const th = new AuthThrottle(1, 1);
  for (let i = 0; i < 25_000; i++) {
    const address = `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
    th.failed({ kind: 'address', address });
    th.failed({ kind: 'token', id: i.toString(16).padStart(16, '0'), address });
    th.succeeded(i.toString(16).padStart(16, '0'), address);
    th.failed({ kind: 'token', id: i.toString(16).padStart(16, '0'), address });
  }
  const sizes = th.sizes;
  t.true(sizes.addresses <= 10_000 && sizes.tokens <= 10_000 && sizes.pairs <= 10_000 && sizes.knownGood <= 10_000, JSON.stringify(sizes));
  t.is(sizes.addresses, 10_000);
});

test('the throttle forgets the least recently touched entry first: an address that keeps trying stays blocked while 25,000 others fail once each', (t) => {
  const th = new AuthThrottle(1, 1);
  const attacker = { kind: 'address' as const, address: '10.255.255.255' };
  th.failed(attacker);
  t.true(th.blockedFor(attacker) > 0);
  for (let i = 0; i < 25_000; i++) {
    th.failed({ kind: 'address', address: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}` });
    // Its attempts keep coming (and are refused): each one reads its bucket.
    if (i % 1000 === 0) t.true(th.blockedFor(attacker) > 0, `still blocked after ${i} others`);
  }
  t.true(th.blockedFor(attacker) > 0);
});

test('a request for a host the listener does not serve (DNS rebinding) gets 421 on every path, audited once per address and then summarised', async (t) => {
  const port = b.httpPort;
  for (const p of ['/healthz', '/metrics', '/api/v1/whoami', '/console/']) {
    const r = await request(b.base, p, { token: b.tokens.admin, headers: { host: `rebind.evil.example:${port}` }, localAddress: '127.0.0.11' });
    t.is(r.status, 421, p);
    t.is(r.json?.code, 'ERR_HOST_NOT_ALLOWED');
    t.regex(r.json?.message ?? '', /rebind\.evil\.example.*http\.allowedHosts/);
  }
  await new Promise((res) => setTimeout(res, 20));
  const recs = adminRecords(b.audit).filter((x) => x.detail?.code === 'ERR_HOST_NOT_ALLOWED' && x.remoteAddress === '127.0.0.11');
  t.is(recs.length, 1, 'the first in full; the others are counted into a summary');
  t.like(recs[0], { decision: 'deny', detail: { status: 421 } });
  for (const host of [`localhost:${port}`, `127.0.0.1:${port}`, `[::1]:${port}`, 'LOCALHOST', `ops.example.com:${port}`, 'OPS.example.com.', '10.1.2.3:9234']) {
    const r = await request(b.base, '/api/v1/whoami', { token: b.tokens.admin, headers: { host } });
    t.is(r.status, 200, `${host}: ${r.text}`);
  }
  for (const host of ['localhost.evil.example', 'ops.example.com.evil.example', `127.0.0.1.nip.io:${port}`, 'a:b:c']) {
    t.is((await request(b.base, '/healthz', { headers: { host } })).status, 421, host);
  }
});

test('every request that is not a GET must say JSON (415 otherwise, audited); with that type an empty body is no body', async (t) => {
  const bare = await request(b.base, '/api/v1/reload/bans', { method: 'POST', token: b.tokens.admin, contentType: null });
  await refused(t, bare, 415, 'ERR_UNSUPPORTED_MEDIA_TYPE', /must have Content-Type: application\/json.*got none/);
  await refused(t, await request(b.base, '/api/v1/reload/bans', { method: 'POST', token: b.tokens.admin, contentType: 'text/plain', body: '' }), 415, 'ERR_UNSUPPORTED_MEDIA_TYPE', /got 'text\/plain'/);
  await refused(t, await request(b.base, '/api/v1/bans/ip/10.0.0.1', { method: 'DELETE', token: b.tokens.admin, contentType: 'text/plain' }), 415, 'ERR_UNSUPPORTED_MEDIA_TYPE');
  // No handler ran: a refused reload wrote no reload record.
  t.false(b.audit.records.some((x) => x.event === 'reload' && x.action === 'ban-file'));
  const reload = await request(b.base, '/api/v1/reload/bans', { method: 'POST', token: b.tokens.admin, contentType: 'application/json; charset=utf-8' });
  t.not(reload.status, 415, reload.text);
  t.not(reload.status, 400, reload.text);
  const kick = await request(b.base, '/api/v1/clients/999999/kick', { method: 'POST', token: b.tokens.admin });
  t.is(kick.status, 404, 'a kick without a body is still a kick (of nobody here)');
  await refused(t, await request(b.base, '/api/v1/policy/explain', { method: 'POST', token: b.tokens.admin }), 400, 'ERR_BAD_REQUEST', /body/);
});

test('an admin policy that is missing, or names a bare user, stops createBroker naming the file (and line)', (t) => {
  const dir = fs.mkdtempSync(path.join(b.dir, 'policy-'));
  const model = path.join(root, 'policies', 'model.conf');
  const make = (policy: string) => () => createBroker({ listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }], http: { auth: { policy, model } } }, { logger: silentLogger(), store: new MemoryStore(), audit: new MemoryAuditSink() });
  const missing = path.join(dir, 'no-such-admin-policy.csv');
  const e1 = t.throws(make(missing), { instanceOf: ConfigError });
  t.deepEqual(e1?.issues.map((i) => i.key), ['http.auth.policy']);
  t.regex(e1?.message ?? '', /no-such-admin-policy\.csv: cannot read the policy file \(ENOENT\)/);
  const old = path.join(dir, 'old.csv');
  fs.writeFileSync(old, 'p, role:admin, admin/#, read, allow\ng, user:ops-laptop, role:admin\n');
  const e2 = t.throws(make(old), { instanceOf: ConfigError });
  t.deepEqual(e2?.issues.map((i) => i.key), ['http.auth.policy']);
  t.regex(e2?.message ?? '', /old\.csv:2: 'user:ops-laptop' names no kind of caller: write user:token:ops-laptop .* or user:cert:ops-laptop/);
  fs.writeFileSync(old, 'p, user:alice, admin/#, read, allow\n');
  t.throws(make(old), { instanceOf: ConfigError, message: /old\.csv:1: 'user:alice'/ });
  // Namespaced subjects load; an empty file loads too (and denies every call, as documented).
  fs.writeFileSync(old, 'p, user:token:alice, admin/#, read, allow\ng, user:cert:ops-laptop, role:admin\n');
  t.notThrows(make(old));
  fs.writeFileSync(old, '');
  t.notThrows(make(old));
});

test('the operations listener refuses a non-loopback address without authentication (ConfigError naming http.auth)', (t) => {
  const err = t.throws(() => parseConfig({ http: { host: '0.0.0.0', port: 9234 } }), { instanceOf: ConfigError });
  t.deepEqual(err?.issues.map((i) => i.key), ['http.auth']);
  t.regex(err?.message ?? '', /needs authentication/);
  t.notThrows(() => parseConfig({ http: { host: '0.0.0.0', auth: { tokens: 'data/admin-tokens.jsonl' } } }));
  t.notThrows(() => parseConfig({ http: { host: '::', tls: { cert: 'c', key: 'k', ca: 'ca' } } }));
  t.notThrows(() => parseConfig({ http: { host: '127.0.0.1' } }));
  // A host name that only starts like a loopback address is a name, resolved anywhere.
  t.throws(() => parseConfig({ http: { host: '127.evil.example', port: 9234 } }), { instanceOf: ConfigError, message: /needs authentication/ });
});

test('a malformed token file, admin policy or TLS file stops createBroker naming its key; a port in use fails start', async (t) => {
  const dir = fs.mkdtempSync(path.join(b.dir, 'bad-'));
  const make = (http: Record<string, unknown>) => () => createBroker({ listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }], http }, { logger: silentLogger(), store: new MemoryStore(), audit: new MemoryAuditSink() });
  const tokens = path.join(dir, 'tokens.jsonl');
  fs.writeFileSync(tokens, '{"id":"0123456789abcdef","name":"x","roles":["admin"],"hash":"plain-text-password","created":"2026-01-01T00:00:00Z"}\n');
  const e1 = t.throws(make({ auth: { tokens } }), { instanceOf: ConfigError });
  t.deepEqual(e1?.issues.map((i) => i.key), ['http.auth.tokens']);
  t.regex(e1?.message ?? '', /tokens\.jsonl:1: "hash" must be an argon2id/);
  const policy = path.join(dir, 'admin.csv');
  fs.writeFileSync(policy, 'p, role:admin, admin/#, read, allow\np, role:admin, admin/#\n');
  const e2 = t.throws(make({ auth: { policy, model: path.join(root, 'policies', 'model.conf') } }), { instanceOf: ConfigError });
  t.deepEqual(e2?.issues.map((i) => i.key), ['http.auth.policy']);
  t.regex(e2?.message ?? '', /admin\.csv:2/);
  const e3 = t.throws(make({ tls: { cert: path.join(dir, 'missing.crt'), key: path.join(dir, 'missing.key') }, auth: { policy: path.join(root, 'policies', 'admin', 'policy.csv'), model: path.join(root, 'policies', 'model.conf') } }), { instanceOf: ConfigError });
  t.deepEqual(e3?.issues.map((i) => i.key), ['http.tls.cert']);
  // The operations port taken by another broker: start fails (and stops what it had started).
  const clash = createBroker(
    { listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }], http: { port: b.httpPort, auth: { policy: path.join(root, 'policies', 'admin', 'policy.csv'), model: path.join(root, 'policies', 'model.conf') } } },
    { logger: silentLogger(), store: new MemoryStore(), audit: new MemoryAuditSink() },
  );
  await t.throwsAsync(clash.start(), { message: /EADDRINUSE/ });
  await clash.stop();
  t.is((await request(b.base, '/healthz')).status, 200, 'the broker that holds the port is unharmed');
});

test('no secret is ever returned: no token, hash or key in any answer', async (t) => {
  const paths = ['/api/v1/whoami', '/api/v1/overview', '/api/v1/clients', '/api/v1/sessions', '/api/v1/bans', '/api/v1/certificates', '/api/v1/audit/denials', '/api/v1/openapi.json', '/metrics', '/readyz', '/healthz'];
  const secrets = [b.tokens.admin, b.tokens.reader, b.tokens.admin.split('_').slice(2).join('_'), ...fs.readFileSync(b.tokenFile, 'utf8').match(/\$argon2id\$[^"]+/g)!];
  for (const p of paths) {
    const r = await request(b.base, p, { token: b.tokens.admin });
    t.is(r.status, 200, p);
    for (const s of secrets) t.false(r.text.includes(s), `${p} holds a secret`);
    t.notRegex(r.text, /\$argon2id\$|PRIVATE KEY|pct_[0-9a-f]{16}_/, p);
  }
  // Refusals do not echo the token either.
  const r = await request(b.base, '/api/v1/clients', { token: `${b.tokens.admin}x` });
  t.false(r.text.includes(b.tokens.admin));
  t.false(JSON.stringify(b.audit.records).includes(b.tokens.admin.split('_').slice(2).join('_')), 'nor does the audit log');
});
