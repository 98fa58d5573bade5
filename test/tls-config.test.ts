/**
 * Bad TLS configuration and files at start, the `portcullis pki` command as users run it, and
 * the built-in defaults on a fresh machine.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { createBroker, ConfigError } from '../src/index.ts';
import { silentLogger } from '../src/log.ts';
import { type Fleet, connectTls, makeFleet, run } from './tls-fixtures.ts';
import { DEFAULT_PORTS, defaultPortsFree, lockDefaultPorts } from './default-ports.ts';

const root = path.resolve(import.meta.dirname, '..');
const bin = path.join(root, 'bin', 'portcullis.js');
let fleet: Fleet;

test.before(async () => {
  fleet = await makeFleet();
});

function configError(t: import('ava').ExecutionContext, listener: Record<string, unknown>): ConfigError {
  const err = t.throws(() => createBroker({ listeners: [{ name: 'l', type: 'tls', host: '127.0.0.1', port: 0, auth: ['certificate'], ...listener } as never] }, { logger: silentLogger() }));
  t.true(err instanceof ConfigError, String(err));
  return err as ConfigError;
}

test('a missing key file at start is a configuration error naming the key and the file', (t) => {
  const err = configError(t, { cert: fleet.serverCert, key: '/nonexistent/server.key' });
  t.deepEqual(err.issues.map((i) => i.key), ['listeners[0].key']);
  t.regex(err.message, /cannot read \/nonexistent\/server\.key: ENOENT/);
});

test('a missing or broken CA file at start is a configuration error naming the file', (t) => {
  const missing = configError(t, { cert: fleet.serverCert, key: fleet.serverKey, ca: '/nonexistent/ca.crt' });
  t.deepEqual(missing.issues.map((i) => i.key), ['listeners[0].ca']);
  t.regex(missing.message, /\/nonexistent\/ca\.crt/);
  const broken = path.join(path.dirname(fleet.dir), 'broken-ca.crt');
  fs.writeFileSync(broken, 'hello\n');
  const bad = configError(t, { cert: fleet.serverCert, key: fleet.serverKey, ca: broken });
  t.regex(bad.message, /broken-ca\.crt holds no PEM certificate/);
});

test('a key that does not match the certificate, a broken CRL or PSK file at start are errors naming the file', (t) => {
  const mismatch = configError(t, { cert: fleet.serverCert, key: fleet.client('device-1').key });
  t.regex(mismatch.message, /server\.crt/);
  const badCrl = path.join(path.dirname(fleet.dir), 'bad-crl.pem');
  fs.writeFileSync(badCrl, '-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n');
  const crl = configError(t, { cert: fleet.serverCert, key: fleet.serverKey, ca: fleet.chain, crl: { files: [badCrl] } });
  t.deepEqual(crl.issues.map((i) => i.key), ['listeners[0].crl.files']);
  t.regex(crl.message, /bad-crl\.pem/);
  const otherCrl = path.join(path.dirname(fleet.dir), 'other-crl.pem');
  fs.copyFileSync(fleet.crl, otherCrl);
  const foreign = configError(t, { cert: fleet.serverCert, key: fleet.serverKey, ca: path.join(fleet.otherDir, 'ca.crt'), crl: { files: [otherCrl] } });
  t.regex(foreign.message, /not signed by any CA in the CA bundle/);
  const badPsk = path.join(path.dirname(fleet.dir), 'bad-psk.txt');
  fs.writeFileSync(badPsk, '# keys\nok-id:00112233445566778899aabbccddeeff\nshort:abcd\n');
  const psk = configError(t, { cert: fleet.serverCert, key: fleet.serverKey, psk: { file: badPsk } });
  t.regex(psk.message, /bad-psk\.txt:3: the key must be 16 to 64 bytes of hex/);
  t.false(psk.message.includes('00112233445566778899aabbccddeeff'));
});

test('schema: mTLS without a CA, TLS 1.1, and a PSK listener whose first TLS 1.3 suite is not SHA-256 are refused naming the key', (t) => {
  const noCa = configError(t, { cert: 'a', key: 'b', requireClientCert: true });
  t.deepEqual(noCa.issues.map((i) => i.key), ['listeners[0].ca']);
  const v11 = configError(t, { cert: 'a', key: 'b', minVersion: 'TLSv1.1' });
  t.deepEqual(v11.issues.map((i) => i.key), ['listeners[0].minVersion']);
  const ciphers = configError(t, { cert: 'a', key: 'b', psk: { file: 'x' }, ciphers: 'TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256' });
  t.deepEqual(ciphers.issues.map((i) => i.key), ['listeners[0].ciphers']);
});

test('schema: sessionTickets must be a boolean; the error names the key', (t) => {
  const err = configError(t, { cert: 'a', key: 'b', sessionTickets: 'yes' });
  t.deepEqual(err.issues.map((i) => i.key), ['listeners[0].sessionTickets']);
  t.regex(err.message, /listeners\[0\]\.sessionTickets: .*boolean/);
});

test.serial('portcullis pki: init, client, list, revoke, crl as a user runs them; private keys are 0600; bad input exits 2 naming the file and line', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-pki-cli-'));
  const pkiDir = path.join(dir, 'pki');
  const cli = (...args: string[]) => run(process.execPath, [bin, 'pki', '--dir', pkiDir, ...args], undefined, 30_000);
  t.is((await cli('init')).status, 0);
  const again = await cli('init');
  t.is(again.status, 2);
  t.regex(again.stderr, /a CA already exists/);
  const issued = await cli('client', '--cn', 'device-9', '--san', 'uri:spiffe://x/device/9');
  t.is(issued.status, 0, issued.stderr);
  const serial = /serial ([0-9a-f]+)/.exec(issued.stdout)?.[1] as string;
  t.is(fs.statSync(path.join(pkiDir, 'clients', 'device-9.key')).mode & 0o777, 0o600);
  t.is(fs.statSync(path.join(pkiDir, 'private', 'ca.key')).mode & 0o777, 0o600);
  const verify = await run('openssl', ['verify', '-CAfile', path.join(pkiDir, 'ca-chain.crt'), path.join(pkiDir, 'clients', 'device-9.crt')]);
  t.is(verify.status, 0, verify.stderr);
  t.is((await cli('revoke', serial)).status, 0);
  const crl = await cli('crl', '--days', '3');
  t.is(crl.status, 0, crl.stderr);
  const text = await run('openssl', ['crl', '-in', path.join(pkiDir, 'crl.pem'), '-noout', '-text']);
  t.regex(text.stdout, new RegExp(`Serial Number: ${serial.toUpperCase()}`));
  const list = await cli('list');
  t.regex(list.stdout, new RegExp(`revoked\\t${serial}\\tclient`));
  t.regex(list.stdout, /valid\t[0-9a-f]+\troot/);
  const index = fs.readFileSync(path.join(pkiDir, 'index.txt'), 'utf8');
  t.regex(index, new RegExp(`^R\\t${serial}\\tclient`, 'm'));
  const csv = path.join(dir, 'devices.csv');
  fs.writeFileSync(csv, 'device-a\ndevice-b,bogus:value\n');
  const batch = await cli('client', '--batch', csv);
  t.is(batch.status, 2);
  t.regex(batch.stderr, /devices\.csv:2: --san bogus:value/);
  const unknown = await cli('revoke', 'deadbeef');
  t.is(unknown.status, 2);
  t.regex(unknown.stderr, /serial deadbeef is not in/);
});

test.serial('npm start on a fresh machine: the built-in defaults create a development CA and serve TLS on 8883 and mTLS on 8884', async (t) => {
  t.timeout(120_000);
  const unlock = await lockDefaultPorts(60_000);
  t.teardown(unlock);
  t.true(await defaultPortsFree(45_000), `127.0.0.1:${DEFAULT_PORTS.join(', ')} stay busy: another broker runs on the defaults`);
  const cwd = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-fresh-'));
  // It holds the development CA's private key.
  t.teardown(() => fs.rmSync(cwd, { recursive: true, force: true }));
  const child = spawn(process.execPath, [bin, 'start'], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  try {
    const end = Date.now() + 30_000;
    while (!stderr.includes('tls://127.0.0.1:8884') && Date.now() < end && child.exitCode === null) await new Promise((r) => setTimeout(r, 100));
    t.regex(stderr, /created a DEVELOPMENT CA and server certificate/);
    t.regex(stderr, /listening on tls:\/\/127\.0\.0\.1:8883/);
    const devFleet: Fleet = { ...fleet, dir: path.join(cwd, 'pki'), chain: path.join(cwd, 'pki', 'ca-chain.crt') };
    const { pki } = await import('./tls-fixtures.ts');
    await pki(devFleet.dir, 'client', '--cn', 'dev-device');
    const device = { cert: path.join(cwd, 'pki', 'clients', 'dev-device.crt'), key: path.join(cwd, 'pki', 'clients', 'dev-device.key') };
    const mtls = await connectTls(8884, devFleet, { device, clientId: 'dev-device' });
    t.true(mtls.connected);
    mtls.end();
    await t.throwsAsync(connectTls(8884, devFleet, { clientId: 'no-cert' }), undefined, 'mTLS needs a certificate');
    await t.throwsAsync(connectTls(8883, devFleet, { clientId: 'no-cert' }), undefined, 'the TLS listener is not anonymous');
    const tlsCert = await connectTls(8883, devFleet, { device, clientId: 'dev-device' });
    t.true(tlsCert.connected);
    tlsCert.end();
    // The built-in defaults keep sessions durably under data/store: a folder and files only the broker's user can use.
    const store = path.join(cwd, 'data', 'store');
    t.is(fs.statSync(store).mode & 0o777, 0o700);
    for (const f of ['data.mdb', 'lock.mdb', 'portcullis-store.json', 'portcullis.lock']) t.is(fs.statSync(path.join(store, f)).mode & 0o777, 0o600, f);
  } finally {
    child.kill('SIGTERM');
    t.is(await exited, 0);
    t.false(fs.existsSync(path.join(cwd, 'data', 'store', 'portcullis.lock')), 'a clean stop releases the store lock');
    fs.rmSync(cwd, { recursive: true, force: true });
  }
});

test('docs/examples/mtls-fleet.yaml is a valid configuration: mTLS on 8884 with a CRL, CN as username and client id, binding on', async (t) => {
  const { loadConfigFile } = await import('../src/config/load.ts');
  const config = loadConfigFile(path.join(root, 'docs', 'examples', 'mtls-fleet.yaml'));
  const fleetListener = config.listeners.find((l) => l.name === 'fleet');
  t.like(fleetListener, { type: 'tls', port: 8884, requireClientCert: true, ca: 'pki/ca-chain.crt', crl: { files: ['pki/crl.pem'] } });
  t.like(fleetListener?.auth[0], { provider: 'certificate', username: 'cn', clientId: 'cn', bindClientId: true });
});
