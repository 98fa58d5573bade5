/**
 * The operations listener over HTTPS with client certificates (mTLS): a good certificate is a
 * caller named by its CN (roles from the admin policy's g lines); an expired one, one from an
 * unknown CA, one without the clientAuth usage and none at all get 401 with a clear code, each
 * audited. The TLS series: handshake failures by reason on an MQTT mTLS listener, certificate,
 * CA and CRL dates, and certificates near expiry for the console.
 */
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import test from 'ava';
import { MemoryAuditSink } from '../src/index.ts';
import { createBroker, MemoryStore, type RunningBroker } from '../src/index.ts';
import { silentLogger } from '../src/log.ts';
import { addToken } from '../src/cli/token.ts';
import { connectTls, pki, type Fleet } from './tls-fixtures.ts';
import { metric, parseMetrics, request, root, tempDir, type Reply } from './ops-support.ts';

const DAY = 86_400_000;
let dir: string;
let files: { ca: string; serverCert: string; serverKey: string; crl: string; client(name: string): { cert: Buffer; key: Buffer }; other: { cert: Buffer; key: Buffer } };
let broker: RunningBroker;
let audit: MemoryAuditSink;
let base: string;
let mqttPort: number;
/** A token named exactly like the admin certificate's CN, read-only by its own role. */
let namesake: string;

test.before(async () => {
  dir = tempDir('portcullis-ops-mtls-');
  const ca = path.join(dir, 'pki');
  const other = path.join(dir, 'other');
  await pki(ca, 'init', '--cn', 'Ops Root', '--key-type', 'ec');
  await pki(ca, 'server', '--dns', 'localhost', '--ip', '127.0.0.1', '--days', '90');
  await pki(ca, 'client', '--cn', 'ops-admin-cert');
  await pki(ca, 'client', '--cn', 'ops-viewer');
  await pki(ca, 'client', '--cn', 'device-soon', '--days', '5');
  await pki(ca, 'client', '--cn', 'expired-ops', '--not-before', new Date(Date.now() - 10 * DAY).toISOString(), '--not-after', new Date(Date.now() - DAY).toISOString());
  await pki(ca, 'client', '--cn', 'no-eku-ops', '--no-client-auth-eku');
  await pki(ca, 'crl', '--days', '7');
  await pki(other, 'init', '--cn', 'Other CA', '--key-type', 'ec');
  await pki(other, 'client', '--cn', 'ops-admin-cert');
  const read = (d: string, name: string) => ({ cert: fs.readFileSync(path.join(d, 'clients', `${name}.crt`)), key: fs.readFileSync(path.join(d, 'clients', `${name}.key`)) });
  files = {
    ca: path.join(ca, 'ca.crt'),
    serverCert: path.join(ca, 'server.crt'),
    serverKey: path.join(ca, 'private', 'server.key'),
    crl: path.join(ca, 'crl.pem'),
    client: (name) => read(ca, name),
    other: read(other, 'ops-admin-cert'),
  };
  const policy = path.join(dir, 'admin.csv');
  fs.writeFileSync(policy, `${fs.readFileSync(path.join(root, 'policies', 'admin', 'policy.csv'), 'utf8')}\ng, user:cert:ops-admin-cert, role:admin\ng, user:cert:ops-viewer, role:read-only\n`);
  const tokens = path.join(dir, 'admin-tokens.jsonl');
  namesake = (await addToken('ops-admin-cert', { roles: 'read-only', file: tokens })).token;
  audit = new MemoryAuditSink();
  const tlsFiles = { cert: files.serverCert, key: files.serverKey, ca: files.ca };
  broker = createBroker(
    {
      listeners: [{ name: 'mqtts', type: 'tls', host: '127.0.0.1', port: 0, ...tlsFiles, crl: { files: [files.crl] }, requireClientCert: true, auth: ['certificate'] }],
      authorizers: ['allow-all'],
      sys: { intervalSeconds: 0 },
      http: { host: '127.0.0.1', port: 0, tls: { ...tlsFiles, crl: files.crl }, auth: { tokens, model: path.join(root, 'policies', 'model.conf'), policy }, metrics: { public: false } },
    },
    { logger: silentLogger(), store: new MemoryStore(), audit },
  );
  const started = await broker.start();
  t0check(started.http?.protocol === 'https');
  base = `https://127.0.0.1:${started.http?.port}`;
  mqttPort = started.listeners[0]?.port ?? 0;
});

function t0check(ok: boolean): void {
  if (!ok) throw new Error('the operations listener did not start with TLS');
}

test.after.always(async () => {
  await broker?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const as = (who: { cert: Buffer; key: Buffer } | undefined, p: string, method = 'GET', extra: Partial<Parameters<typeof request>[2]> = {}) =>
  request(base, p, { method, tls: { ca: fs.readFileSync(files.ca), ...(who ?? {}) }, ...extra });

async function audited(r: Reply): Promise<MemoryAuditSink['records'][number] | undefined> {
  await new Promise((res) => setTimeout(res, 20));
  return audit.records.find((x) => x.event === 'admin' && x.detail?.requestId === r.json?.requestId);
}

test('a client certificate from the CA is a caller named by its CN; the admin policy gives it its role', async (t) => {
  const me = await as(files.client('ops-admin-cert'), '/api/v1/whoami');
  t.is(me.status, 200, me.text);
  t.like(me.json, { name: 'ops-admin-cert', method: 'certificate', roles: [] });
  t.regex(me.json.certSubject, /CN=ops-admin-cert/);
  t.regex(String(me.headers['strict-transport-security']), /max-age/);
  const reload = await as(files.client('ops-admin-cert'), '/api/v1/reload/certificates', 'POST');
  t.is(reload.status, 200, reload.text);
  t.deepEqual(reload.json.results, [
    { listener: 'mqtts', ok: true },
    { listener: 'http', ok: true },
  ]);
  const viewer = await as(files.client('ops-viewer'), '/api/v1/reload/certificates', 'POST');
  t.is(viewer.status, 403);
  const rec = await audited(viewer);
  t.like(rec, { username: 'ops-viewer', authMethod: 'certificate', decision: 'deny' });
  t.truthy(rec?.certFingerprint);
});

test('a token named like an admin certificate CN is not that certificate: token and cert callers are apart in the admin policy', async (t) => {
  const me = await as(undefined, '/api/v1/whoami', 'GET', { token: namesake });
  t.is(me.status, 200, me.text);
  t.like(me.json, { name: 'ops-admin-cert', method: 'token', roles: ['read-only'] });
  const r = await as(undefined, '/api/v1/reload/certificates', 'POST', { token: namesake });
  t.is(r.status, 403, 'user:cert:ops-admin-cert is admin; the token is user:token:ops-admin-cert');
  t.is(r.json.code, 'ERR_FORBIDDEN');
  t.like(await audited(r), { username: 'ops-admin-cert', authMethod: 'token', decision: 'deny' });
  t.is((await as(files.client('ops-admin-cert'), '/api/v1/reload/certificates', 'POST')).status, 200, 'the certificate still is');
});

test('a cross-site POST with the operator certificate and a text/plain body is refused (415) before the handler, audited; JSON is served', async (t) => {
  for (const contentType of ['text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', null]) {
    const r = await as(files.client('ops-admin-cert'), '/api/v1/reload/certificates', 'POST', { contentType, ...(contentType !== null ? { body: 'x=1' } : {}) });
    t.is(r.status, 415, `${contentType}: ${r.text}`);
    t.is(r.json.code, 'ERR_UNSUPPORTED_MEDIA_TYPE');
    t.regex(r.json.message, /Content-Type: application\/json/);
  }
  const rec = audit.records.find((x) => x.event === 'admin' && x.detail?.code === 'ERR_UNSUPPORTED_MEDIA_TYPE');
  t.like(rec, { decision: 'deny', action: 'api.reload.certificates', detail: { status: 415 } });
  const ok = await as(files.client('ops-admin-cert'), '/api/v1/reload/certificates', 'POST', { contentType: 'application/json' });
  t.is(ok.status, 200, 'the JSON type with no body is a reload');
});

test('a client certificate is judged after the handshake: junk from its address that exhausts the address throttle does not refuse it', async (t) => {
  const from = { localAddress: '127.0.0.5' };
  let last = 0;
  for (let i = 0; i < 21; i++) last = (await as(undefined, '/api/v1/whoami', 'GET', { ...from, token: 'pct_junk' })).status;
  t.is(last, 429, 'the address is throttled (burst 20)');
  t.is((await as(undefined, '/api/v1/whoami', 'GET', from)).status, 429);
  const me = await as(files.client('ops-viewer'), '/api/v1/whoami', 'GET', from);
  t.is(me.status, 200, me.text);
  // A bad certificate from that address is one more failure of the address: 429.
  t.is((await as(files.client('expired-ops'), '/api/v1/whoami', 'GET', from)).status, 429);
});

test('over HTTPS the per-address cap closes extra sockets before the TLS handshake; other callers are served', async (t) => {
  const port = Number(new URL(base).port);
  let closed = 0;
  const sockets = await Promise.all(
    Array.from({ length: 40 }, () => new Promise<net.Socket>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port, localAddress: '127.0.0.12' }, () => resolve(s));
      s.on('close', () => closed++);
      s.on('error', () => {});
    })),
  );
  // The 8 over the cap are closed; wait for them (a loaded machine is slow), then a little more
  // to see that no other socket is closed.
  for (const end = Date.now() + 10_000; closed < 40 - 32 && Date.now() < end; ) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 300));
  t.is(closed, 40 - 32);
  t.is((await as(files.client('ops-viewer'), '/api/v1/whoami', 'GET', { localAddress: '127.0.0.13' })).status, 200);
  for (const s of sockets) s.destroy();
  t.true(audit.records.some((r) => r.action === 'http.connection-refused' && r.remoteAddress === '127.0.0.12'));
});

test('an expired client certificate: 401 ERR_CERTIFICATE_EXPIRED, audited', async (t) => {
  const r = await as(files.client('expired-ops'), '/api/v1/whoami');
  t.is(r.status, 401);
  t.is(r.json.code, 'ERR_CERTIFICATE_EXPIRED');
  t.is(r.json.message, 'client certificate expired');
  const rec = await audited(r);
  t.like(rec, { decision: 'deny', action: 'api.whoami' });
  t.like(rec?.detail, { status: 401, code: 'ERR_CERTIFICATE_EXPIRED' });
});

test('a certificate from another CA, one without clientAuth, and none at all: 401 each, audited', async (t) => {
  const other = await as(files.other, '/api/v1/whoami');
  t.is(other.status, 401);
  t.is(other.json.code, 'ERR_CERTIFICATE_INVALID');
  t.regex(other.json.message, /unknown CA|self-signed/);
  const noEku = await as(files.client('no-eku-ops'), '/api/v1/whoami');
  t.is(noEku.status, 401);
  t.regex(noEku.json.message, /clientAuth/);
  const none = await as(undefined, '/api/v1/whoami');
  t.is(none.status, 401);
  t.is(none.json.code, 'ERR_UNAUTHENTICATED');
  t.regex(none.json.message, /present a client certificate/);
  for (const r of [other, noEku, none]) t.truthy(await audited(r));
  // /metrics needs a caller too (metrics.public: false).
  t.is((await as(undefined, '/metrics')).status, 401);
});

test('TLS series: refused handshakes by reason, and the certificate, CA and CRL dates as Unix times', async (t) => {
  const fleet = { chain: files.ca } as unknown as Fleet;
  const write = (name: string, f: { cert: Buffer; key: Buffer }) => {
    const p = { cert: path.join(dir, `${name}.crt`), key: path.join(dir, `${name}.key`) };
    fs.writeFileSync(p.cert, f.cert);
    fs.writeFileSync(p.key, f.key);
    return p;
  };
  const refused = await connectTls(mqttPort, fleet, { device: write('expired', files.client('expired-ops')) }).then(
    (c) => (c.end(true), 'connected'),
    () => 'refused',
  );
  t.is(refused, 'refused');
  const ok = await connectTls(mqttPort, fleet, { device: write('soon', files.client('device-soon')), clientId: 'device-soon' });
  try {
    const m = await as(files.client('ops-viewer'), '/metrics');
    t.is(m.status, 200);
    const { samples } = parseMetrics(m.text);
    t.is(metric(samples, 'portcullis_tls_handshake_failures_total', { listener: 'mqtts', reason: 'expired' }), 1);
    const notAfter = (file: string) => Date.parse(new X509Certificate(fs.readFileSync(file)).validTo) / 1000;
    t.is(metric(samples, 'portcullis_tls_certificate_expiry_timestamp_seconds', { listener: 'mqtts', kind: 'server' }), notAfter(files.serverCert));
    t.is(metric(samples, 'portcullis_tls_certificate_expiry_timestamp_seconds', { listener: 'http', kind: 'server' }), notAfter(files.serverCert));
    t.is(metric(samples, 'portcullis_tls_certificate_expiry_timestamp_seconds', { listener: 'mqtts', kind: 'ca' }), notAfter(files.ca));
    const crl = metric(samples, 'portcullis_tls_crl_next_update_timestamp_seconds', { listener: 'mqtts' }) ?? 0;
    t.true(Math.abs(crl - (Date.now() + 7 * DAY) / 1000) < 120, 'the CRL was made with --days 7');
    // The console's list: the listener files with days left, and the client whose certificate runs out in 5 days.
    const c = await as(files.client('ops-viewer'), '/api/v1/certificates?withinDays=30');
    t.is(c.status, 200);
    const server = c.json.files.find((f: { listener: string; kind: string }) => f.listener === 'mqtts' && f.kind === 'server');
    t.true(server.daysLeft > 88 && server.daysLeft <= 90);
    t.false(server.nearExpiry);
    t.true(c.json.files.find((f: { kind: string }) => f.kind === 'crl').nearExpiry);
    const soon = c.json.clients.find((x: { clientId: string }) => x.clientId === 'device-soon');
    t.truthy(soon, JSON.stringify(c.json.clients));
    t.true(soon.daysLeft > 4 && soon.daysLeft <= 5);
    t.regex(soon.certSubject, /CN=device-soon/);
  } finally {
    await ok.endAsync();
  }
});
