/**
 * PSK, hot reload of certificates, keys, CRLs and PSK files, CRL expiry policies, wss, and the
 * certificate identity mapping, over real loopback sockets.
 */
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import test from 'ava';
import { delay, nextMessages } from './helpers.ts';
import type { CertificateAttributes } from '../src/auth/certificate.ts';
import type { Principal } from '../src/index.ts';
import { type Fleet, connectTls, makeFleet, pki, run, startTlsBroker, waitForAudit } from './tls-fixtures.ts';

let fleet: Fleet;

test.before(async () => {
  fleet = await makeFleet();
});

const serverFiles = () => ({ cert: fleet.serverCert, key: fleet.serverKey });

/** A private copy of the server files, CRL and PSK file that a test may change. */
function copyFiles(name: string): { cert: string; key: string; crl: string; psk: string; dir: string } {
  const dir = fs.mkdtempSync(path.join(path.dirname(fleet.dir), `${name}-`));
  const out = { cert: path.join(dir, 'server.crt'), key: path.join(dir, 'server.key'), crl: path.join(dir, 'crl.pem'), psk: path.join(dir, 'psk.txt'), dir };
  fs.copyFileSync(fleet.serverCert, out.cert);
  fs.copyFileSync(fleet.serverKey, out.key);
  fs.copyFileSync(fleet.crl, out.crl);
  fs.copyFileSync(fleet.pskFile, out.psk);
  return out;
}

function serverSerial(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, ca: fs.readFileSync(fleet.chain), servername: 'localhost' }, () => {
      resolve(s.getPeerCertificate().serialNumber.toLowerCase());
      s.destroy();
    });
    s.once('error', reject);
  });
}

const mosqPsk = (port: number, identity: string, key: string, extra: string[] = []) =>
  run('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(port), '--psk', key, '--psk-identity', identity, '-i', identity, '-t', `psk/${identity}`, '-m', 'hello', '-q', '1', ...extra]);

test('PSK: mosquitto_pub with --psk --psk-identity on TLS 1.3 and 1.2; the identity becomes the username; certificate clients share the listener', async (t) => {
  const b = await startTlsBroker([
    { name: 'mixed', type: 'tls', host: '127.0.0.1', port: 0, ...serverFiles(), ca: fleet.chain, requireClientCert: true, psk: { file: fleet.pskFile }, auth: ['certificate', { provider: 'psk', bindClientId: true }] },
  ]);
  const port = b.ports.mixed as number;
  const sub = await connectTls(port, fleet, { device: 'device-1' });
  await new Promise<void>((r) => sub.subscribe('psk/#', { qos: 1 }, () => r()));
  const got = nextMessages(sub, 2, 10_000);
  const v13 = await mosqPsk(port, 'sensor-psk-1', fleet.psk['sensor-psk-1'] as string, ['--tls-version', 'tlsv1.3']);
  t.is(v13.status, 0, v13.stderr);
  const v12 = await mosqPsk(port, 'sensor-psk-2', fleet.psk['sensor-psk-2'] as string, ['--tls-version', 'tlsv1.2']);
  t.is(v12.status, 0, v12.stderr);
  t.deepEqual((await got).map((m) => m.topic).sort(), ['psk/sensor-psk-1', 'psk/sensor-psk-2']);
  const allowed = b.audit.records.filter((r) => r.event === 'connect' && r.decision === 'allow' && r.authMethod === 'psk');
  t.deepEqual(allowed.map((r) => r.username).sort(), ['sensor-psk-1', 'sensor-psk-2']);
  // Keys are never logged or audited.
  const all = JSON.stringify(b.audit.records);
  t.false(all.includes(fleet.psk['sensor-psk-1'] as string));
  sub.end();
  await b.stop();
});

test('PSK: a wrong key and an unknown identity are refused and audited; a client id other than the identity is refused when bound', async (t) => {
  const b = await startTlsBroker([
    { name: 'psk', type: 'tls', host: '127.0.0.1', port: 0, ...serverFiles(), psk: { file: fleet.pskFile }, auth: [{ provider: 'psk', bindClientId: true }] },
  ]);
  const port = b.ports.psk as number;
  const wrong = await mosqPsk(port, 'sensor-psk-1', '00112233445566778899aabbccddeeff');
  t.not(wrong.status, 0);
  const w = await waitForAudit(b.audit, (r) => r.event === 'tls' && r.detail?.refusal === 'psk-failed');
  t.is(w.detail?.pskIdentity, 'sensor-psk-1');
  t.false(JSON.stringify(w).includes('00112233445566778899aabbccddeeff'));
  for (const version of ['tlsv1.3', 'tlsv1.2']) {
    const before = b.audit.records.length;
    const unknown = await mosqPsk(port, 'nobody', '00112233445566778899aabbccddeeff', ['--tls-version', version]);
    t.not(unknown.status, 0, version);
    await waitForAudit(b.audit, (r) => r.seq > before && r.event === 'tls' && r.detail?.refusal === 'psk-unknown-identity');
  }
  const mismatch = await run('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(port), '--psk', fleet.psk['sensor-psk-1'] as string, '--psk-identity', 'sensor-psk-1', '-i', 'someone-else', '-t', 'x', '-m', 'y']);
  t.not(mismatch.status, 0);
  const rec = await waitForAudit(b.audit, (r) => r.event === 'connect' && r.decision === 'deny' && r.clientId === 'someone-else');
  t.regex(rec.reason ?? '', /client id must be the PSK identity/);
  t.is(b.audit.records.filter((r) => r.event === 'connect' && r.decision === 'allow').length, 0);
  await b.stop();
});

test('PSK file reload: a new identity works after the file changes; a broken file keeps the last good keys', async (t) => {
  const files = copyFiles('psk-reload');
  const b = await startTlsBroker([
    { name: 'psk', type: 'tls', host: '127.0.0.1', port: 0, ...serverFiles(), psk: { file: files.psk }, reload: { intervalMs: 100 }, auth: ['psk'] },
  ]);
  const port = b.ports.psk as number;
  const key = 'a1'.repeat(32);
  t.not((await mosqPsk(port, 'late-1', key)).status, 0);
  fs.appendFileSync(files.psk, `late-1:${key}\n`);
  await waitForAudit(b.audit, (r) => r.event === 'reload' && r.decision === 'allow', 5000);
  t.is((await mosqPsk(port, 'late-1', key)).status, 0);
  fs.writeFileSync(files.psk, 'this line has no key\n');
  const bad = await waitForAudit(b.audit, (r) => r.event === 'reload' && r.decision === 'deny', 5000);
  t.regex(bad.reason ?? '', /psk\.txt:1: expected identity:hexkey/);
  t.is((await mosqPsk(port, 'late-1', key)).status, 0, 'the last good PSK file is kept');
  await b.stop();
});

test('hot reload: a new server certificate is served to new connections; a revoked client is refused on its next handshake while others stay up', async (t) => {
  const files = copyFiles('reload');
  const b = await startTlsBroker([
    {
      name: 'mtls',
      type: 'tls',
      host: '127.0.0.1',
      port: 0,
      cert: files.cert,
      key: files.key,
      ca: fleet.chain,
      requireClientCert: true,
      crl: { files: [files.crl], disconnectRevoked: false },
      reload: { intervalMs: 100 },
      auth: ['certificate'],
    },
  ]);
  const port = b.ports.mtls as number;
  const oldSerial = await serverSerial(port);
  const d1 = await connectTls(port, fleet, { device: 'device-1' });
  const d2 = await connectTls(port, fleet, { device: 'device-2' });
  await new Promise<void>((r) => d1.subscribe('up/#', () => r()));

  // A new server certificate, written in place.
  const out = await pki(fleet.dir, 'server', '--dns', 'localhost', '--ip', '127.0.0.1', '--out', path.join(files.dir, 'next'));
  const newSerial = /serial ([0-9a-f]+)/.exec(out)?.[1] as string;
  fs.copyFileSync(path.join(files.dir, 'next.key'), files.key);
  fs.copyFileSync(path.join(files.dir, 'next.crt'), files.cert);
  await waitForAudit(b.audit, (r) => r.event === 'reload' && r.decision === 'allow', 5000);
  t.not(newSerial, oldSerial);
  t.is((await serverSerial(port)).replace(/^0+/, ''), newSerial.replace(/^0+/, ''));

  // Revoke device-2 and publish the CRL; signal a reload.
  const before = b.audit.records.length;
  await pki(fleet.dir, 'revoke', fleet.client('device-2').cert);
  await pki(fleet.dir, 'crl', '--out', files.crl);
  process.kill(process.pid, 'SIGHUP');
  await waitForAudit(b.audit, (r) => r.seq > before && r.event === 'reload' && r.decision === 'allow', 5000);
  await t.throwsAsync(connectTls(port, fleet, { device: 'device-2' }));
  await waitForAudit(b.audit, (r) => r.seq > before && r.event === 'tls' && r.detail?.refusal === 'revoked');

  // Live connections were untouched (disconnectRevoked: false), including the revoked one.
  t.true(d1.connected);
  t.true(d2.connected);
  const got = nextMessages(d1, 1);
  d2.publish('up/still', 'alive');
  t.is((await got)[0]?.payload, 'alive');
  const d3 = await connectTls(port, fleet, { device: 'device-3' });
  t.true(d3.connected);
  for (const c of [d1, d2, d3]) c.end();
  await b.stop();
});

test('disconnectRevoked: a CRL reload closes the live session of a just-revoked certificate and audits it', async (t) => {
  const files = copyFiles('revoke-live');
  await pki(fleet.dir, 'crl', '--out', files.crl);
  const b = await startTlsBroker([
    { name: 'mtls', type: 'tls', host: '127.0.0.1', port: 0, ...serverFiles(), ca: fleet.chain, requireClientCert: true, crl: { files: [files.crl] }, reload: { intervalMs: 100 }, auth: ['certificate'] },
  ]);
  const port = b.ports.mtls as number;
  await pki(fleet.dir, 'client', '--cn', 'live-victim');
  const victim = await connectTls(port, fleet, { device: 'live-victim' });
  const bystander = await connectTls(port, fleet, { device: 'device-1' });
  const closed = new Promise<void>((r) => victim.once('close', () => r()));
  await pki(fleet.dir, 'revoke', fleet.client('live-victim').cert);
  await pki(fleet.dir, 'crl', '--out', files.crl);
  await closed;
  const rec = await waitForAudit(b.audit, (r) => r.event === 'disconnect' && r.action === 'revoked');
  t.is(rec.certSubject, 'CN=live-victim');
  t.true(bystander.connected);
  bystander.end();
  await b.stop();
});

test('bad files on reload keep the old context: a mismatched key and a broken CRL are logged and audited, clients keep connecting', async (t) => {
  const files = copyFiles('bad-reload');
  const b = await startTlsBroker([
    { name: 'mtls', type: 'tls', host: '127.0.0.1', port: 0, cert: files.cert, key: files.key, ca: fleet.chain, requireClientCert: true, crl: { files: [files.crl], onExpired: 'keep-last-good' }, reload: { intervalMs: 100 }, auth: ['certificate'] },
  ]);
  const port = b.ports.mtls as number;
  const serial = await serverSerial(port);
  fs.copyFileSync(fleet.client('device-3').key, files.key); // a key that does not match the certificate
  fs.writeFileSync(files.crl, 'not a crl\n');
  const deny = await waitForAudit(b.audit, (r) => r.event === 'reload' && r.decision === 'deny' && r.action === 'tls', 5000);
  t.regex(deny.reason ?? '', /keeping the last good/);
  await waitForAudit(b.audit, (r) => r.event === 'reload' && r.decision === 'deny' && r.action === 'crl', 5000);
  t.is(await serverSerial(port), serial);
  const c = await connectTls(port, fleet, { device: 'device-1' });
  t.true(c.connected);
  c.end();
  await b.stop();
});

test('crl.onExpired: deny refuses certificate clients with a loud audit; keep-last-good admits unrevoked ones and still refuses revoked ones', async (t) => {
  const files = copyFiles('crl-expired');
  // A CRL whose nextUpdate passes in two seconds.
  await pki(fleet.dir, 'revoke', fleet.client('device-4').cert).catch(() => undefined);
  await pki(fleet.dir, 'crl', '--out', files.crl, '--next-update', new Date(Date.now() + 2000).toISOString());
  const common = { type: 'tls' as const, host: '127.0.0.1', port: 0, ...serverFiles(), ca: fleet.chain, requireClientCert: true, reload: { watch: false, sighup: false }, auth: ['certificate' as const] };
  const b = await startTlsBroker([
    { ...common, name: 'deny', crl: { files: [files.crl], onExpired: 'deny' } },
    { ...common, name: 'keep', crl: { files: [files.crl], onExpired: 'keep-last-good' } },
  ]);
  await delay(2500);
  await t.throwsAsync(connectTls(b.ports.deny as number, fleet, { device: 'device-1' }));
  const denied = await waitForAudit(b.audit, (r) => r.event === 'tls' && r.detail?.refusal === 'crl-expired');
  t.is(denied.listener, 'deny');
  const ok = await connectTls(b.ports.keep as number, fleet, { device: 'device-1' });
  t.true(ok.connected);
  const loud = await waitForAudit(b.audit, (r) => r.event === 'reload' && r.action === 'crl' && r.listener === 'keep');
  t.regex(loud.reason ?? '', /expired .*keeping the last good CRL/);
  await t.throwsAsync(connectTls(b.ports.keep as number, fleet, { device: 'device-4' }));
  await waitForAudit(b.audit, (r) => r.listener === 'keep' && r.event === 'tls' && r.detail?.refusal === 'revoked');
  ok.end();
  await b.stop();
});

const principals: Principal[] = [];

test('identity mapping: a spiffe:// URI SAN as username and bound client id; certificate attributes on the Principal; disconnect at notAfter', async (t) => {
  const b = await startTlsBroker([
    {
      name: 'spiffe',
      type: 'tls',
      host: '127.0.0.1',
      port: 0,
      ...serverFiles(),
      ca: fleet.chain,
      requireClientCert: true,
      auth: [{ provider: 'certificate', username: 'san-uri', clientId: 'san-uri', uriPrefix: 'spiffe://fleet.example/', bindClientId: true }],
    },
    { name: 'fp', type: 'tls', host: '127.0.0.1', port: 0, ...serverFiles(), ca: fleet.chain, requireClientCert: true, auth: [{ provider: 'certificate', username: 'fingerprint', clientId: 'san-email', bindClientId: true }] },
  ], { authorizers: [] }, { authorizers: [{ id: 'capture', authorize: (who) => { principals.push(who); return { kind: 'abstain' }; } }] });
  const spiffeId = 'spiffe://fleet.example/device/3';
  const c = await connectTls(b.ports.spiffe as number, fleet, { device: fleet.client('device-3'), clientId: spiffeId });
  const rec = await waitForAudit(b.audit, (r) => r.event === 'connect' && r.decision === 'allow' && r.clientId === spiffeId);
  t.is(rec.username, spiffeId);
  await new Promise<void>((r) => c.subscribe('attrs/check', () => r()));
  const p = principals.find((x) => x.clientId === spiffeId) as Principal;
  const cert = p.attributes.cert as CertificateAttributes;
  t.is(cert.cn, 'device-3');
  t.deepEqual(cert.uris, [spiffeId]);
  t.deepEqual(cert.emails, ['d3@fleet.example']);
  t.deepEqual(cert.dns, ['d3.fleet.example']);
  t.regex(cert.issuer, /CN=Fleet Root Intermediate/);
  t.regex(cert.serial, /^[0-9a-f]+$/);
  t.regex(cert.fingerprint, /^[0-9a-f]{64}$/);
  t.is(p.expiresAt, Date.parse(cert.notAfter));
  t.is(p.method, 'certificate');
  c.end();
  const fpClient = await connectTls(b.ports.fp as number, fleet, { device: fleet.client('device-3'), clientId: 'd3@fleet.example' });
  const fpRec = await waitForAudit(b.audit, (r) => r.event === 'connect' && r.decision === 'allow' && r.clientId === 'd3@fleet.example');
  t.regex(fpRec.username ?? '', /^[0-9a-f]{64}$/);
  t.is(fpRec.username, (fpRec.certFingerprint ?? '').replace(/:/g, '').toLowerCase());
  fpClient.end();
  // A device without a URI SAN has no identity on the spiffe listener.
  await t.throwsAsync(connectTls(b.ports.spiffe as number, fleet, { device: 'device-1' }));

  // A certificate that expires while connected is disconnected at notAfter.
  await pki(fleet.dir, 'client', '--cn', 'short-lived', '--san', 'uri:spiffe://fleet.example/short', '--not-after', new Date(Date.now() + 4000).toISOString());
  const short = await connectTls(b.ports.spiffe as number, fleet, { device: fleet.client('short-lived'), clientId: 'spiffe://fleet.example/short', protocolVersion: 5 });
  const start = Date.now();
  await new Promise<void>((r) => short.once('close', () => r()));
  t.true(Date.now() - start < 8000);
  await b.stop();
});

test('wss: MQTT over secure WebSocket with a client certificate', async (t) => {
  const b = await startTlsBroker([
    { name: 'wss', type: 'wss', host: '127.0.0.1', port: 0, ...serverFiles(), ca: fleet.chain, requireClientCert: true, auth: ['certificate'] },
  ]);
  const port = b.ports.wss as number;
  const c = await connectTls(port, fleet, { device: 'device-1', protocol: 'wss', path: '/mqtt' });
  t.true(c.connected);
  const got = nextMessages(c, 1);
  await new Promise<void>((r) => c.subscribe('w/#', () => r()));
  c.publish('w/1', 'over-wss');
  t.is((await got)[0]?.payload, 'over-wss');
  c.end();
  await t.throwsAsync(connectTls(port, fleet, { protocol: 'wss', path: '/mqtt', clientId: 'nocert' }));
  await waitForAudit(b.audit, (r) => r.event === 'tls' && r.detail?.refusal === 'no-certificate' && r.listener === 'wss');
  await b.stop();
});
