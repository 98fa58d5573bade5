/**
 * `portcullis pki init --key-type ec|rsa`: the CA, server and client certificates get keys of
 * that type, chain for openssl, and work end to end over mTLS with mqtt.js and mosquitto_pub,
 * including a CRL signed with the CA's own algorithm.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { type Fleet, connectTls, fleetMtlsListener, pki, run, startTlsBroker, waitForAudit } from './tls-fixtures.ts';

async function makePki(keyType: 'ec' | 'rsa' | undefined, intermediate: boolean): Promise<Fleet> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), `portcullis-pki-${keyType ?? 'default'}-`));
  const dir = path.join(root, 'pki');
  await pki(dir, 'init', ...(keyType ? ['--key-type', keyType] : []), ...(intermediate ? ['--intermediate'] : []));
  await pki(dir, 'server', '--dns', 'localhost', '--ip', '127.0.0.1');
  await pki(dir, 'client', '--cn', 'dev-1');
  await pki(dir, 'client', '--cn', 'dev-2');
  await pki(dir, 'revoke', path.join(dir, 'clients', 'dev-2.crt'));
  await pki(dir, 'crl');
  const client = (name: string) => ({ cert: path.join(dir, 'clients', `${name}.crt`), key: path.join(dir, 'clients', `${name}.key`) });
  return {
    dir,
    otherDir: '',
    ca: path.join(dir, 'ca.crt'),
    chain: path.join(dir, 'ca-chain.crt'),
    serverCert: path.join(dir, 'server.crt'),
    serverKey: path.join(dir, 'private', 'server.key'),
    client,
    other: client('dev-1'),
    pskFile: '',
    psk: {},
    crl: path.join(dir, 'crl.pem'),
  };
}

const leaf = (file: string) => new X509Certificate(fs.readFileSync(file));

test('pki init --key-type dsa is refused and creates nothing', async (t) => {
  const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-pki-bad-')), 'pki');
  await t.throwsAsync(pki(dir, 'init', '--key-type', 'dsa'), { message: /ec or rsa/ });
  t.false(fs.existsSync(path.join(dir, 'ca.crt')));
});

for (const [keyType, intermediate] of [
  [undefined, false],
  ['ec', false],
  ['ec', true],
  ['rsa', true],
] as const) {
  const kind = keyType ?? 'rsa'; // the default for new PKIs
  test.serial(`pki init ${keyType ? `--key-type ${keyType}` : '(default)'}${intermediate ? ' --intermediate' : ''}: ${kind} keys everywhere; mqtt.js and mosquitto_pub connect over mTLS; the CRL refuses a revoked device`, async (t) => {
    const fleet = await makePki(keyType, intermediate);
    for (const [file, keyFile] of [
      [fleet.ca, path.join(fleet.dir, 'private', 'ca.key')],
      [fleet.serverCert, fleet.serverKey],
      [fleet.client('dev-1').cert, fleet.client('dev-1').key],
    ] as const) {
      const cert = leaf(file);
      t.is(cert.publicKey.asymmetricKeyType, kind, file);
      t.is(createPrivateKey(fs.readFileSync(keyFile)).asymmetricKeyType, kind, keyFile);
      if (kind === 'ec') t.is(cert.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
      else t.is(cert.publicKey.asymmetricKeyDetails?.modulusLength, 2048);
    }
    const text = await run('openssl', ['x509', '-in', fleet.client('dev-1').cert, '-noout', '-text']);
    t.regex(text.stdout, kind === 'ec' ? /Signature Algorithm: ecdsa-with-SHA256/ : /Signature Algorithm: sha256WithRSAEncryption/);
    // An ECDSA key only signs: keyEncipherment belongs to RSA key transport.
    if (kind === 'ec') t.notRegex(text.stdout, /Key Encipherment/);
    // Key identifiers: each certificate's SKI is the SHA-1 of its own key (RFC 5280 method 1), and a
    // leaf's AKI is its issuer's SKI, as openssl reads them; no two keys share one.
    const ext = async (f: string, name: string) => (await run('openssl', ['x509', '-in', f, '-noout', '-ext', name])).stdout.split('\n')[1]?.trim().replace(/^keyid:/, '') ?? '';
    const caSki = await ext(fleet.ca, 'subjectKeyIdentifier');
    const serverSki = await ext(fleet.serverCert, 'subjectKeyIdentifier');
    const clientSki = await ext(fleet.client('dev-1').cert, 'subjectKeyIdentifier');
    t.not(caSki, '');
    t.is(new Set([caSki, serverSki, clientSki]).size, 3, 'every key has its own identifier');
    t.not(clientSki, 'DA:39:A3:EE:5E:6B:4B:0D:32:55:BF:EF:95:60:18:90:AF:D8:07:09', 'not the SHA-1 of nothing');
    if (!intermediate) t.is(await ext(fleet.client('dev-1').cert, 'authorityKeyIdentifier'), caSki);
    const verified = await run('openssl', ['verify', '-CAfile', fleet.chain, fleet.serverCert, fleet.client('dev-1').cert]);
    t.is(verified.status, 0, verified.stdout + verified.stderr);

    const b = await startTlsBroker([
      fleetMtlsListener(fleet),
    ]);
    t.teardown(() => b.stop());
    const port = b.ports.mtls as number;
    const client = await connectTls(port, fleet, { device: 'dev-1' });
    await client.publishAsync('keys/x', 'from mqtt.js', { qos: 1 });
    await client.endAsync();
    const mosq = await run('mosquitto_pub', ['-h', 'localhost', '-p', String(port), '--cafile', fleet.chain, '--cert', fleet.client('dev-1').cert, '--key', fleet.client('dev-1').key, '-i', 'dev-1', '-t', 'keys/y', '-m', 'from mosquitto_pub', '-q', '1']);
    t.is(mosq.status, 0, mosq.stderr);
    await t.throwsAsync(connectTls(port, fleet, { device: 'dev-2' }));
    const refusal = await waitForAudit(b.audit, (r) => r.event === 'tls' && r.decision === 'deny');
    t.is((refusal.detail as { refusal?: string } | undefined)?.refusal, 'revoked');
  });
}
