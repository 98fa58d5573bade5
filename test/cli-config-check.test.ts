/**
 * `portcullis config check FILE` validates a configuration without starting anything: each thing
 * that would stop the start (or fail at bind time, such as two listeners on one address) is a
 * problem naming its key, exit 1; a good configuration exits 0; usage errors exit 2. The refusals
 * are checked through checkConfigFile (what the command prints); the command itself runs for the
 * exit codes and its output.
 */
import { spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import YAML from 'yaml';
import { hashPassword } from '../src/auth/password/hash.ts';
import { checkConfigFile, type ConfigReport } from '../src/cli/config.ts';
import { ARGON2_FLOOR } from '../src/config/auth-schema.ts';
import { writeTokenFile } from '../src/http/token-file.ts';
import { pki } from './tls-fixtures.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const main = path.join(root, 'src', 'cli', 'main.ts');
const tsx = import.meta.resolve('tsx');

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-config-check-'));
const p = (...parts: string[]) => path.join(dir, ...parts);
let n = 0;

test.before(async () => {
  await pki(p('pki'), 'init');
  await pki(p('pki'), 'server', '--dns', 'localhost', '--ip', '127.0.0.1');
  await pki(p('pki'), 'crl');
  await pki(p('other'), 'init', '--cn', 'Another CA');
  await pki(p('other'), 'crl');
  fs.writeFileSync(p('passwords'), `alice:${await hashPassword('alice-pw', ARGON2_FLOOR)}\n`, { mode: 0o600 });
  fs.writeFileSync(p('psk.txt'), `sensor-1:${'ab'.repeat(32)}\n`, { mode: 0o600 });
  fs.copyFileSync(path.join(root, 'policies', 'model.conf'), p('model.conf'));
  fs.copyFileSync(path.join(root, 'policies', 'fleet.csv'), p('fleet.csv'));
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  fs.writeFileSync(p('idp.pem'), rsa.publicKey.export({ type: 'spki', format: 'pem' }));
  fs.writeFileSync(p('idp-private.pem'), rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }));
  const ed = generateKeyPairSync('ed25519');
  fs.writeFileSync(p('audit.key'), ed.privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  fs.writeFileSync(p('store.keys'), `k1 ${Buffer.alloc(32, 7).toString('base64')}\n`, { mode: 0o600 });
  fs.writeFileSync(p('bans.jsonl'), '{"kind":"ip","value":"203.0.113.7"}\n');
  fs.writeFileSync(p('a-file'), 'not a folder');
});
test.after.always(() => fs.rmSync(dir, { recursive: true, force: true }));

const tls = (extra: object = {}) => ({ type: 'tls', host: '127.0.0.1', port: 8883, cert: p('pki', 'server.crt'), key: p('pki', 'private', 'server.key'), ca: p('pki', 'ca-chain.crt'), auth: ['certificate'], ...extra });

/** Everything the check reads, all good: each test spoils one part of it. */
function good(): Record<string, unknown> {
  return {
    listeners: [
      { name: 'local', type: 'tcp', host: '127.0.0.1', port: 1883, auth: ['anonymous'] },
      { name: 'fleet', ...tls({ crl: { files: [p('pki', 'crl.pem')] }, psk: { file: p('psk.txt') }, auth: ['certificate', 'psk', { provider: 'password', file: p('passwords') }, { provider: 'jwt', algorithms: ['RS256'], issuer: 'i', audience: 'a', keyFiles: [p('idp.pem')] }] }) },
    ],
    authorizers: [{ type: 'casbin', model: p('model.conf'), policy: p('fleet.csv') }],
    audit: { path: p('data', 'audit.jsonl'), checkpoint: { keyFile: p('audit.key') } },
    store: { path: p('data', 'store'), encryption: { keyFile: p('store.keys') } },
    admission: { bans: { file: p('bans.jsonl') } },
  };
}

function write(config: unknown): string {
  const file = p(`config-${++n}.yaml`);
  fs.writeFileSync(file, YAML.stringify(config));
  return file;
}

async function check(config: unknown): Promise<ConfigReport> {
  return checkConfigFile(write(config));
}

/** The keys of the problems, and the report for the message. */
const keys = (r: ConfigReport) => r.problems.map((x) => x.key);

function spoil(change: (c: Record<string, any>) => void): Record<string, unknown> {
  const c = good() as Record<string, any>;
  change(c);
  return c;
}

function cli(...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', tsx, main, ...args], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

test('a good configuration: no problems; every file it names was read; nothing was created or bound', async (t) => {
  const r = await check(good());
  t.deepEqual(r.problems, []);
  const read = r.checked.join('\n');
  for (const f of ['server.crt', 'crl.pem', 'psk.txt', 'passwords (1 users)', 'idp.pem (1 keys)', 'fleet.csv (10 rules, 5 role links', 'audit.key (Ed25519)', 'store.keys (1 keys)', 'bans.jsonl (1 bans)']) t.true(read.includes(f), `${f} in\n${read}`);
  t.false(fs.existsSync(p('data')), 'no audit file, no store folder');
});

test('the command: exit 0 and a summary for a good file; exit 1 with each problem and its key; exit 2 for usage', async (t) => {
  const ok = await cli('config', 'check', write(good()));
  t.is(ok.code, 0, ok.stderr);
  t.regex(ok.stdout, /^ok .*config-\d+\.yaml\n {2}listener local: tcp 127\.0\.0\.1:1883, auth anonymous\n {2}listener fleet: tls 127\.0\.0\.1:8883, auth certificate, psk, password, jwt\n {2}authorizers: casbin /);
  const bad = await cli('config', 'check', write(spoil((c) => {
    c.listeners[1].port = 1883;
    c.listeners[1].host = '0.0.0.0';
    c.authorizers[0].policy = p('missing.csv');
  })));
  t.is(bad.code, 1);
  t.regex(bad.stderr, /portcullis config: .*: 2 problems:\n {2}- listeners\[1\]\.port: 0\.0\.0\.0:1883 clashes with listeners\[0\] \('local', 127\.0\.0\.1:1883\)/);
  t.regex(bad.stderr, /- authorizers\[0\]\.policy: .*missing\.csv: cannot read the policy file \(ENOENT\)/);
  t.is((await cli('config', 'check')).code, 2, 'no file');
  t.is((await cli('config', 'check', 'x.yaml', '--bogus')).code, 2, 'unknown option');
  const schema = await cli('config', 'check', write({ listners: [] }));
  t.is(schema.code, 1);
  t.regex(schema.stderr, /- \(root\): Unrecognized key: "listners"/);
  const missing = await cli('config', 'check', 'nope.yaml');
  t.is(missing.code, 1);
  t.regex(missing.stderr, /cannot read configuration file nope\.yaml: ENOENT/);
});

test('clashing addresses: the same host and port, a wildcard over a specific address, :: over IPv4; distinct addresses and port 0 pass', async (t) => {
  const two = (a: [string, number], b: [string, number]) => ({ listeners: [{ type: 'tcp', host: a[0], port: a[1], auth: ['anonymous'] }, { type: 'ws', host: b[0], port: b[1], auth: ['anonymous'] }], authorizers: ['allow-all'], audit: { sink: 'none' }, store: { type: 'memory' } });
  t.deepEqual(keys(await check(two(['127.0.0.1', 1883], ['127.0.0.1', 1883]))), ['listeners[1].port']);
  t.deepEqual(keys(await check(two(['127.0.0.1', 1883], ['0.0.0.0', 1883]))), ['listeners[1].port']);
  t.deepEqual(keys(await check(two(['::', 1883], ['127.0.0.1', 1883]))), ['listeners[1].port']);
  t.deepEqual(keys(await check(two(['localhost', 1883], ['127.0.0.1', 1883]))), ['listeners[1].port']);
  t.deepEqual(keys(await check(two(['127.0.0.1', 1883], ['127.0.0.2', 1883]))), []);
  t.deepEqual(keys(await check(two(['0.0.0.0', 1883], ['::1', 1883]))), [], 'an IPv4 wildcard does not cover IPv6');
  t.deepEqual(keys(await check(two(['127.0.0.1', 1883], ['127.0.0.1', 8080]))), []);
  t.deepEqual(keys(await check(two(['127.0.0.1', 0], ['127.0.0.1', 0]))), [], 'port 0 picks a free port each time');
});

test('TLS material: a missing certificate or key, a key that does not match, a CA bundle with no certificate', async (t) => {
  t.deepEqual(keys(await check(spoil((c) => (c.listeners[1].cert = p('nope.crt'))))), ['listeners[1].cert']);
  t.deepEqual(keys(await check(spoil((c) => (c.listeners[1].key = p('nope.key'))))), ['listeners[1].key']);
  const mismatch = await check(spoil((c) => (c.listeners[1].key = p('pki', 'private', 'ca.key'))));
  t.deepEqual(keys(mismatch), ['listeners[1].key']);
  t.regex(mismatch.problems[0]?.message ?? '', /key values mismatch/);
  t.deepEqual(keys(await check(spoil((c) => (c.listeners[1].ca = p('passwords'))))), ['listeners[1].ca']);
});

test('CRLs: a missing CRL file, a CRL from another CA', async (t) => {
  t.deepEqual(keys(await check(spoil((c) => (c.listeners[1].crl.files = [p('pki', 'crl.pem'), p('nope.pem')])))), ['listeners[1].crl.files[1]']);
  t.deepEqual(keys(await check(spoil((c) => {
    c.listeners[1].cert = p('nope.crt');
    c.listeners[1].crl.files = [p('nope.pem')];
  }))), ['listeners[1].cert', 'listeners[1].crl.files[0]'], 'every file that cannot be read, not only the first');
  const foreign = await check(spoil((c) => (c.listeners[1].crl.files = [p('other', 'crl.pem')])));
  t.deepEqual(keys(foreign), ['listeners[1].crl.files']);
});

test('PSK file: missing, or a line that is not identity:hexkey', async (t) => {
  t.deepEqual(keys(await check(spoil((c) => (c.listeners[1].psk.file = p('nope-psk.txt'))))), ['listeners[1].psk.file']);
  fs.writeFileSync(p('bad-psk.txt'), 'sensor-1:not-hex\n');
  const r = await check(spoil((c) => (c.listeners[1].psk.file = p('bad-psk.txt'))));
  t.deepEqual(keys(r), ['listeners[1].psk.file']);
  t.regex(r.problems[0]?.message ?? '', /bad-psk\.txt:1: the key must be 16 to 64 bytes of hex/);
});

test('password file: missing, or a line without a hash (file:line)', async (t) => {
  t.deepEqual(keys(await check(spoil((c) => (c.listeners[1].auth[2].file = p('nope-passwords'))))), ['listeners[1].auth[2].file']);
  fs.writeFileSync(p('bad-passwords'), 'bob\n');
  const r = await check(spoil((c) => (c.listeners[1].auth[2].file = p('bad-passwords'))));
  t.deepEqual(keys(r), ['listeners[1].auth[2].file']);
  t.regex(r.problems[0]?.message ?? '', /bad-passwords:1: /);
});

test('JWT key files: missing, or a private key where a public key belongs', async (t) => {
  t.deepEqual(keys(await check(spoil((c) => (c.listeners[1].auth[3].keyFiles = [p('idp.pem'), p('nope.pem')])))), ['listeners[1].auth[3].keyFiles[1]']);
  const r = await check(spoil((c) => (c.listeners[1].auth[3].keyFiles = [p('idp-private.pem')])));
  t.deepEqual(keys(r), ['listeners[1].auth[3].keyFiles[0]']);
  t.regex(r.problems[0]?.message ?? '', /holds a private key/);
});

test('policies: a missing policy or model file, an invalid policy line (file:line); a module that is not there', async (t) => {
  t.deepEqual(keys(await check(spoil((c) => (c.authorizers[0].policy = p('nope.csv'))))), ['authorizers[0].policy']);
  t.deepEqual(keys(await check(spoil((c) => (c.authorizers[0].model = p('nope.conf'))))), ['authorizers[0].model']);
  fs.writeFileSync(p('bad.csv'), 'p, *, a/#, publish, allow\np, *, a/#/b, publish, allow\n');
  const r = await check(spoil((c) => (c.authorizers[0].policy = p('bad.csv'))));
  t.deepEqual(keys(r), ['authorizers[0].policy']);
  t.regex(r.problems[0]?.message ?? '', /bad\.csv:2: /);
  t.deepEqual(keys(await check(spoil((c) => c.authorizers.push({ type: 'module', path: p('nope.mjs') })))), ['authorizers[1].path']);
  t.deepEqual(keys(await check(spoil((c) => c.listeners[0].auth.push({ provider: 'module', path: p('nope.mjs') })))), ['listeners[0].auth[1].path']);
});

test('audit: a path that cannot be created, a signing key that is not Ed25519, anchors without a signing key', async (t) => {
  const r = await check(spoil((c) => (c.audit.path = p('a-file', 'audit.jsonl'))));
  t.deepEqual(keys(r), ['audit.path']);
  t.regex(r.problems[0]?.message ?? '', /is not a folder/);
  t.deepEqual(keys(await check(spoil((c) => (c.audit.checkpoint.keyFile = p('idp-private.pem'))))), ['audit.checkpoint.keyFile']);
  t.deepEqual(keys(await check(spoil((c) => (c.audit = { path: p('data', 'audit.jsonl'), anchor: { log: true } })))), ['audit.anchor']);
});

test('store: a key file others can read, a missing key file, a store folder others can write', async (t) => {
  fs.writeFileSync(p('open.keys'), `k1 ${Buffer.alloc(32, 7).toString('base64')}\n`);
  fs.chmodSync(p('open.keys'), 0o644);
  const r = await check(spoil((c) => (c.store.encryption.keyFile = p('open.keys'))));
  t.deepEqual(keys(r), ['store.encryption.keyFile']);
  t.regex(r.problems[0]?.message ?? '', /chmod 600/);
  t.deepEqual(keys(await check(spoil((c) => (c.store.encryption.keyFile = p('nope.keys'))))), ['store.encryption.keyFile']);
  fs.mkdirSync(p('open-store'), { mode: 0o777 });
  fs.chmodSync(p('open-store'), 0o777);
  t.deepEqual(keys(await check(spoil((c) => (c.store.path = p('open-store'))))), ['store.path']);
});

test('ban file: a malformed line (file:line); a missing ban file is an empty list', async (t) => {
  fs.writeFileSync(p('bad-bans.jsonl'), '{"kind":"ip","value":"203.0.113.7"}\n{"kind":"planet","value":"mars"}\n');
  const r = await check(spoil((c) => (c.admission.bans.file = p('bad-bans.jsonl'))));
  t.deepEqual(keys(r), ['admission.bans.file']);
  t.regex(r.problems[0]?.message ?? '', /bad-bans\.jsonl:2: /);
  t.deepEqual(keys(await check(spoil((c) => (c.admission.bans.file = p('no-bans-yet.jsonl'))))), []);
});

test('warnings do not fail the check: a listener without providers, no authorizer, anonymous beyond loopback', async (t) => {
  const r = await check({ listeners: [{ name: 'a', type: 'tcp', host: '0.0.0.0', port: 0, auth: ['anonymous'] }, { name: 'b', type: 'tcp', port: 0, auth: [] }], audit: { sink: 'none' }, store: { type: 'memory' } });
  t.deepEqual(r.problems, []);
  t.true(r.warnings.some((w) => /anonymous access on 0\.0\.0\.0/.test(w)));
  t.true(r.warnings.some((w) => /no authentication provider: every client will be refused/.test(w)));
  t.true(r.warnings.some((w) => /authorizers: none/.test(w)));
});

test('the operations listener: its token file, admin policy and TLS files are read; a bad one, or its port on an MQTT listener, is a problem naming the key', async (t) => {
  fs.mkdirSync(p('admin'), { recursive: true });
  fs.copyFileSync(path.join(root, 'policies', 'admin', 'policy.csv'), p('admin', 'policy.csv'));
  writeTokenFile(p('tokens.jsonl'), [{ id: 'a1b2c3d4e5f60718', name: 'alice', roles: ['admin'], hash: await hashPassword('not-a-real-token', ARGON2_FLOOR), created: Date.now(), line: 1 }]);
  const http = () => ({ host: '127.0.0.1', port: 9234, tls: { cert: p('pki', 'server.crt'), key: p('pki', 'private', 'server.key'), ca: p('pki', 'ca-chain.crt'), crl: p('pki', 'crl.pem') }, auth: { tokens: p('tokens.jsonl'), model: p('model.conf'), policy: p('admin', 'policy.csv') } });
  const withHttp = (change: (h: Record<string, any>) => void = () => {}) =>
    spoil((c) => {
      const h = http() as Record<string, any>;
      change(h);
      c.http = h;
    });
  const ok = await check(withHttp());
  t.deepEqual(ok.problems, []);
  const read = ok.checked.join('\n');
  for (const f of ['tokens.jsonl (1 tokens)', 'policy.csv (version', 'server.crt', 'crl.pem (1 CRLs)']) t.true(read.includes(f), `${f} in\n${read}`);
  fs.writeFileSync(p('bad-tokens.jsonl'), 'not json\n');
  t.deepEqual(keys(await check(withHttp((h) => (h.auth.tokens = p('bad-tokens.jsonl'))))), ['http.auth.tokens']);
  fs.writeFileSync(p('admin', 'bad.csv'), 'p, role:admin, admin/#, read\n');
  const bad = await check(withHttp((h) => (h.auth.policy = p('admin', 'bad.csv'))));
  t.deepEqual(keys(bad), ['http.auth.policy']);
  t.regex(bad.problems[0]?.message ?? '', /bad\.csv:1/);
  t.deepEqual(keys(await check(withHttp((h) => (h.tls.cert = p('nope.crt'))))), ['http.tls.cert']);
  t.deepEqual(keys(await check(withHttp((h) => (h.tls.key = p('idp-private.pem'))))), ['http.tls.key']);
  t.deepEqual(keys(await check(withHttp((h) => (h.tls.crl = p('other', 'crl.pem'))))), ['http.tls.crl']);
  const clash = await check(withHttp((h) => (h.port = 1883)));
  t.deepEqual(keys(clash), ['http.port']);
  t.regex(clash.problems[0]?.message ?? '', /clashes with listeners\[0\] \('local'/);
});
