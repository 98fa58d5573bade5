/**
 * The admin API's bad input and security cases, each over a real socket: a clear HTTP error
 * with a stable code, and an `admin` audit record of the refusal. No token, a wrong, malformed
 * or expired token; a read-only role calling a write endpoint; oversized, malformed and non-JSON
 * bodies; unknown routes; path traversal in the audit query; guessing throttled per address;
 * refusal to start without authentication on a non-loopback address; no secret ever returned.
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { ConfigError, createBroker, MemoryAuditSink, MemoryStore, parseConfig } from '../src/index.ts';
import { silentLogger } from '../src/log.ts';
import { adminRecords, request, root, startOpsBroker, type OpsBroker, type Reply } from './ops-support.ts';

let b: OpsBroker;

test.before(async () => {
  b = await startOpsBroker(
    { audit: { sink: 'none' } },
    { http: { bodyLimit: 2048, auth: { failures: { burst: 1000, perMinute: 1000 } } as never } },
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

test('failed authentications are throttled per source address: 429 with Retry-After, audited; other addresses unaffected', async (t) => {
  const small = await startOpsBroker({ audit: { sink: 'none' } }, { http: { auth: { failures: { burst: 3, perMinute: 1 } } as never } });
  try {
    for (let i = 0; i < 3; i++) t.is((await request(small.base, '/api/v1/clients', { token: 'pct_bad', localAddress: '127.0.0.7' })).status, 401);
    const r = await request(small.base, '/api/v1/clients', { token: small.tokens.admin, localAddress: '127.0.0.7' });
    t.is(r.status, 429, 'even a good token waits: the address is throttled before any token is checked');
    t.is(r.json.code, 'ERR_TOO_MANY_FAILURES');
    t.truthy(Number(r.headers['retry-after']) > 0);
    // More refused requests: one 429 record per address per 10 s, not one each.
    for (let i = 0; i < 5; i++) t.is((await request(small.base, '/api/v1/clients', { localAddress: '127.0.0.7' })).status, 429);
    await new Promise((res) => setTimeout(res, 20));
    t.is(adminRecords(small.audit).filter((x) => x.detail?.status === 429 && x.remoteAddress === '127.0.0.7').length, 1);
    t.is((await request(small.base, '/api/v1/clients', { token: small.tokens.admin, localAddress: '127.0.0.8' })).status, 200);
  } finally {
    await small.stop();
  }
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
