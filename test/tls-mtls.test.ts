/**
 * mTLS over real loopback sockets: mqtt.js, mosquitto_pub and openssl s_client against a
 * broker whose certificates were made by `portcullis pki`. Every refusal is audited with its
 * exact reason.
 */
import fs from 'node:fs';
import net from 'node:net';
import test from 'ava';
import type { MqttClient } from 'mqtt';
import { nextMessages } from './helpers.ts';
import { type Fleet, type TlsTestBroker, connectTls, fleetMtlsListener, handshake, makeFleet, run, startTlsBroker, waitForAudit } from './tls-fixtures.ts';

let fleet: Fleet;
let b: TlsTestBroker;
let port: number;
let tlsPort: number;

test.before(async () => {
  fleet = await makeFleet();
  await import('./tls-fixtures.ts').then(({ pki }) => pki(fleet.dir, 'revoke', fleet.client('device-4').cert));
  await import('./tls-fixtures.ts').then(({ pki }) => pki(fleet.dir, 'crl'));
  b = await startTlsBroker([
    fleetMtlsListener(fleet),
    { name: 'tls', type: 'tls', host: '127.0.0.1', port: 0, cert: fleet.serverCert, key: fleet.serverKey, auth: ['anonymous'] },
  ]);
  port = b.ports.mtls as number;
  tlsPort = b.ports.tls as number;
});

test.after.always(async () => {
  await b?.stop();
});

const refusal = (r: { event: string; detail?: Record<string, unknown> }, code: string) => r.event === 'tls' && r.detail?.refusal === code;

async function refused(t: import('ava').ExecutionContext, device: string | { cert: string; key: string } | undefined, code: string): Promise<void> {
  const before = b.audit.records.length;
  await t.throwsAsync(connectTls(port, fleet, { device, clientId: 'x' }));
  const rec = await waitForAudit(b.audit, (r) => r.seq > before && refusal(r, code));
  t.is(rec.decision, 'deny');
  t.is(rec.listener, 'mtls');
  t.is(rec.remoteAddress, '127.0.0.1');
  t.false(b.audit.records.some((r) => r.seq > before && r.event === 'connect' && r.decision === 'allow'));
}

test.serial('a device certificate from the CA chain connects; the CN becomes username and the Principal carries the certificate', async (t) => {
  const sub = await connectTls(port, fleet, { device: 'device-1' });
  await new Promise<void>((r) => sub.subscribe('fleet/#', { qos: 1 }, () => r()));
  const pub = await connectTls(port, fleet, { device: 'device-2' });
  const got = nextMessages(sub, 1);
  pub.publish('fleet/device-2/temp', '21.5', { qos: 1 });
  t.is((await got)[0]?.payload, '21.5');
  const rec = b.audit.records.find((r) => r.event === 'connect' && r.decision === 'allow' && r.clientId === 'device-1');
  t.is(rec?.username, 'device-1');
  t.is(rec?.authMethod, 'certificate');
  t.regex(rec?.certFingerprint ?? '', /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
  sub.end();
  pub.end();
});

test.serial('binding: a client id other than the certificate CN is refused with 0x85', async (t) => {
  const err = await t.throwsAsync(connectTls(port, fleet, { device: 'device-1', clientId: 'device-2', protocolVersion: 5 }));
  t.regex(err.message, /Client Identifier not valid/i);
  const rec = await waitForAudit(b.audit, (r) => r.event === 'connect' && r.decision === 'deny' && r.clientId === 'device-2');
  t.is(rec.reasonCode, 0x85);
  t.regex(rec.reason ?? '', /client id must be the certificate cn 'device-1'/);
});

test.serial('a client without a certificate is refused and audited (no-certificate)', async (t) => {
  await refused(t, undefined, 'no-certificate');
});

test.serial('a certificate from another CA is refused and audited (unknown-ca)', async (t) => {
  await refused(t, fleet.other, 'unknown-ca');
});

test.serial('an expired certificate is refused and audited (expired)', async (t) => {
  await refused(t, 'expired-1', 'expired');
});

test.serial('a certificate that is not yet valid is refused and audited (not-yet-valid)', async (t) => {
  await refused(t, 'future-1', 'not-yet-valid');
});

test.serial('a revoked certificate is refused and audited (revoked)', async (t) => {
  await refused(t, 'device-4', 'revoked');
});

test.serial('a certificate without the clientAuth extended key usage is refused when it is required', async (t) => {
  await refused(t, 'no-eku', 'no-client-auth-eku');
});

for (const cn of ['bad#cn', 'bad+cn', 'bad/cn']) {
  test.serial(`a CN containing a wildcard or level separator is refused as an identity: ${cn}`, async (t) => {
    const files = fleet.client(cn.replace(/[#+/]/g, '_'));
    const err = await t.throwsAsync(connectTls(port, fleet, { device: files, clientId: cn, protocolVersion: 5 }));
    t.regex(err.message, /Bad User Name or Password/i);
    const rec = await waitForAudit(b.audit, (r) => r.event === 'connect' && r.decision === 'deny' && r.clientId === cn);
    t.is(rec.reasonCode, 0x86);
    t.regex(rec.reason ?? '', /not allowed in an identity/);
  });
}

test.serial('mosquitto_pub with --cafile --cert --key publishes over mTLS; without a certificate it is refused', async (t) => {
  const sub = await connectTls(port, fleet, { device: 'device-3' });
  await new Promise<void>((r) => sub.subscribe('mosq/#', () => r()));
  const got = nextMessages(sub, 1, 10_000);
  const d = fleet.client('device-2');
  const ok = await run('mosquitto_pub', ['-h', 'localhost', '-p', String(port), '--cafile', fleet.chain, '--cert', d.cert, '--key', d.key, '-i', 'device-2', '-t', 'mosq/x', '-m', 'from-mosquitto']);
  t.is(ok.status, 0, ok.stderr);
  t.is((await got)[0]?.payload, 'from-mosquitto');
  const before = b.audit.records.length;
  const bad = await run('mosquitto_pub', ['-h', 'localhost', '-p', String(port), '--cafile', fleet.chain, '-i', 'device-2', '-t', 'mosq/x', '-m', 'nope']);
  t.not(bad.status, 0);
  await waitForAudit(b.audit, (r) => r.seq > before && refusal(r, 'no-certificate'));
  sub.end();
});

test.serial('openssl s_client: TLS 1.0 and 1.1 are refused, TLS 1.2 and 1.3 are accepted', async (t) => {
  const d = fleet.client('device-1');
  const base = ['s_client', '-connect', `127.0.0.1:${tlsPort}`, '-CAfile', fleet.chain, '-cert', d.cert, '-key', d.key, '-verify_return_error'];
  const tls10 = await run('openssl', [...base, '-tls1']);
  const tls11 = await run('openssl', [...base, '-tls1_1']);
  const tls12 = await run('openssl', [...base, '-tls1_2']);
  const tls13 = await run('openssl', [...base, '-tls1_3']);
  t.not(tls10.status, 0);
  t.not(tls11.status, 0);
  t.regex(tls10.stderr + tls10.stdout, /protocol version|no protocols available|unsupported/i);
  t.is(tls12.status, 0, tls12.stderr);
  t.regex(tls12.stdout, /TLSv1\.2/);
  t.is(tls13.status, 0, tls13.stderr);
  t.regex(tls13.stdout, /TLSv1\.3/);
  const versions = b.audit.records.filter((r) => refusal(r, 'protocol-version') && r.listener === 'tls');
  t.true(versions.length >= 2);
});

test.serial('Node clients limited to TLS 1.1 cannot connect; TLS 1.2 clients can', async (t) => {
  const ca = fs.readFileSync(fleet.chain);
  const old = await handshake(tlsPort, { ca, minVersion: 'TLSv1', maxVersion: 'TLSv1.1' });
  t.false(old.ok);
  const v12 = await handshake(tlsPort, { ca, maxVersion: 'TLSv1.2' });
  t.deepEqual(v12, { ok: true, protocol: 'TLSv1.2' });
});

test.serial('a garbage ClientHello is refused, audited, and the broker keeps serving', async (t) => {
  const before = b.audit.records.length;
  const socket = net.connect(port, '127.0.0.1');
  await new Promise((r) => socket.once('connect', r));
  socket.write(Buffer.from('\x16\x03\x01\x00\x05garbage-that-is-not-a-client-hello\r\n\r\n'));
  const closed = await new Promise<boolean>((resolve) => {
    socket.once('close', () => resolve(true));
    socket.on('error', () => {});
    socket.resume();
    setTimeout(() => resolve(false), 5000);
  });
  t.true(closed);
  const rec = await waitForAudit(b.audit, (r) => r.seq > before && r.event === 'tls' && r.decision === 'deny');
  t.is(rec.detail?.refusal, 'handshake-failed');
  const c: MqttClient = await connectTls(port, fleet, { device: 'device-1' });
  t.true(c.connected);
  c.end();
});

test.serial('an anonymous TLS listener without a CA does not ask for certificates and serves plain MQTT over TLS', async (t) => {
  const c = await connectTls(tlsPort, fleet, { clientId: 'anon-tls' });
  t.true(c.connected);
  c.end();
});
