/**
 * Refusals a default setting can cause, seen from both sides: the client gets the spec's answer
 * (MQTT 5 reason code, MQTT 3 return code, or a closed connection where MQTT 3 has no code), and
 * the broker's log has a line that names the setting that refused it. The broker runs as a
 * process with the default limits; the clients are mosquitto_pub / mosquitto_sub, paho
 * (test/interop/paho/refused.py), openssl s_client and raw TCP sockets.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { type BrokerProcess, type LogLine, startBrokerProcess, tempDir } from './broker-process.ts';
import { haveMosquittoClients, havePaho, jsonLines, killClients, makePki, MOSQUITTO_PUB, MOSQUITTO_SUB, paho, run, USER } from './clients.ts';
import { requireTool } from './matrix.ts';

let dir = '';
/** Default limits, allow-all; listeners: anonymous TCP, one with no provider, users, TLS. */
let main: BrokerProcess | undefined;
/** No `authorizers` key at all (the schema default: none). */
let noAuthorizer: BrokerProcess | undefined;

test.before(async () => {
  dir = tempDir();
  const pki = await makePki(dir);
  [main, noAuthorizer] = await Promise.all([
    startBrokerProcess({
      cwd: fs.mkdtempSync(path.join(dir, 'main-')),
      config: {
        listeners: [
          { name: 'open', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] },
          { name: 'noauth', type: 'tcp', host: '127.0.0.1', port: 0 },
          { name: 'users', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users: [USER] }] },
          { name: 'tls', type: 'tls', host: '127.0.0.1', port: 0, cert: pki.serverCert, key: pki.serverKey, auth: ['anonymous'] },
        ],
        authorizers: ['allow-all'],
      },
    }),
    startBrokerProcess({
      cwd: fs.mkdtempSync(path.join(dir, 'no-authorizer-')),
      config: { listeners: [{ name: 'open', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }] },
    }),
  ]);
});

test.after.always(async () => {
  killClients();
  await Promise.all([main?.stop(), noAuthorizer?.stop()]);
  if (dir !== '') fs.rmSync(dir, { recursive: true, force: true });
});

let unique = 0;
const id = (what: string) => `refused-${what}-${++unique}`;
const at = (b: BrokerProcess, listener = 'open') => ['-h', '127.0.0.1', '-p', String(b.port(listener))];

function mosquitto(t: ExecutionContext): BrokerProcess | undefined {
  return requireTool(t, haveMosquittoClients, 'mosquitto-clients') ? main : undefined;
}

/** The broker's 'connect refused' line for a client id. */
const refusedLine = (b: BrokerProcess, clientId: string) => b.waitForLog((l) => l.msg === 'connect refused' && l.clientId === clientId);
/** The broker's 'client disconnected' line for a client id. */
const closedLine = (b: BrokerProcess, clientId: string) => b.waitForLog((l) => l.msg === 'client disconnected' && l.clientId === clientId);
const text = (l: LogLine | undefined) => JSON.stringify(l ?? null);

/** Runs refused.py (paho) against the anonymous listener; returns its result line. */
async function pahoRefused(version: '3.1.1' | '5', clientId: string, action: string[]): Promise<Record<string, unknown>> {
  const b = main as BrokerProcess;
  const r = await paho('refused.py', ['--port', String(b.port('open')), '--version', version, '--prefix', `refused/${clientId}`, '--client-id', clientId, ...action]).exit;
  const lines = jsonLines(r.stdout);
  if (lines.length === 0) throw new Error(`refused.py failed: ${r.stdout}${r.stderr}`);
  return lines[lines.length - 1] as Record<string, unknown>;
}

// ── at CONNECT ───────────────────────────────────────────────────────────────

for (const version of ['mqttv31', 'mqttv311'] as const) {
  test(`${version}: a keep-alive above limits.maxKeepAlive (3600 s) is refused with return code 2, and the log names the setting`, async (t) => {
    const b = mosquitto(t);
    if (b === undefined) return;
    const clientId = id('keepalive');
    const r = await run(MOSQUITTO_PUB, [...at(b), '-V', version, '-k', '7200', '-i', clientId, '-t', 'x', '-m', 'x']);
    t.is(r.code, 2, r.stderr);
    t.regex(text(await refusedLine(b, clientId)), /keep-alive 7200s is above limits\.maxKeepAlive \(3600s\); raise limits\.maxKeepAlive/);
  });
}

for (const [version, code] of [['mqttv311', 2], ['mqttv5', 0x85]] as const) {
  test(`${version}: a client id longer than limits.maxClientIdLength (256 bytes) is refused with ${code === 2 ? 'return code 2' : 'CONNACK 0x85'}, and the log names the setting`, async (t) => {
    const b = mosquitto(t);
    if (b === undefined) return;
    const clientId = `${id('long')}-${'x'.repeat(300)}`;
    const r = await run(MOSQUITTO_PUB, [...at(b), '-V', version, '-i', clientId, '-t', 'x', '-m', 'x']);
    t.is(r.code, code, r.stderr);
    t.regex(text(await refusedLine(b, clientId)), /client id of \d+ bytes is longer than limits\.maxClientIdLength \(256\)/);
  });
}

for (const [version, code] of [['mqttv311', 5], ['mqttv5', 0x87]] as const) {
  test(`${version}: a listener with no authentication provider (auth left out) refuses every client with ${code === 5 ? 'return code 5' : 'CONNACK 0x87'}, and the log says so`, async (t) => {
    const b = mosquitto(t);
    if (b === undefined) return;
    const clientId = id('noauth');
    const r = await run(MOSQUITTO_PUB, [...at(b, 'noauth'), '-V', version, '-i', clientId, '-t', 'x', '-m', 'x']);
    t.is(r.code, code, r.stderr);
    const line = await refusedLine(b, clientId);
    t.like(line, { listener: 'noauth' });
    t.regex(text(line), /no authentication provider is configured on this listener/);
    t.truthy(b.logs().find((l) => l.msg.startsWith('listener has no authentication provider') && l.listener === 'noauth'), 'and a warning at start');
  });
}

test('mqttv311: a CONNECT larger than limits.maxConnectSize (64 KiB, here a big will) is closed before CONNACK', async (t) => {
  const b = mosquitto(t);
  if (b === undefined) return;
  const r = await run(MOSQUITTO_PUB, [...at(b), '-i', id('big-connect'), '--will-topic', 'w', '--will-payload', 'w'.repeat(70_000), '-t', 'x', '-m', 'x', '-d']);
  t.not(r.code, 0);
  t.notRegex(r.stdout, /received CONNACK/);
});

// A refusal before CONNACK closes the connection without any log line today (broker.ts logs
// closes of connected clients only): see the change request in the interop report.
test('mqttv311: the closed oversized CONNECT has a log line naming limits.maxConnectSize', async (t) => {
  const b = mosquitto(t);
  if (b === undefined) return;
  await run(MOSQUITTO_PUB, [...at(b), '-i', id('big-connect-log'), '--will-topic', 'w', '--will-payload', 'w'.repeat(70_000), '-t', 'x', '-m', 'x']);
  t.truthy(await b.waitForLog((l) => JSON.stringify(l).includes('limits.maxConnectSize'), 2000));
});

test('authGuard: after 5 wrong passwords for one user from one address, more guesses for that pair are throttled (0x9F) and the log names authGuard.pair', async (t) => {
  const b = mosquitto(t);
  if (b === undefined) return;
  const from = ['-A', '127.0.0.61'];
  for (let i = 0; i < 5; i++) {
    const wrong = await run(MOSQUITTO_PUB, [...at(b, 'users'), ...from, '-V', 'mqttv5', '-i', id('guess'), '-u', USER.username, '-P', 'wrong', '-t', 'x', '-m', 'x']);
    t.is(wrong.code, 0x86);
  }
  // Keep guessing: the pair is throttled, so an attempt is held and then refused before any check.
  let throttled: { code: number | null } = { code: 0 };
  let clientId = '';
  for (let i = 0; i < 4 && throttled.code !== 0x9f; i++) {
    clientId = id(`more-guesses-${i}`);
    throttled = await run(MOSQUITTO_PUB, [...at(b, 'users'), ...from, '-V', 'mqttv5', '-i', clientId, '-u', USER.username, '-P', 'wrong', '-t', 'x', '-m', 'x']);
  }
  t.is(throttled.code, 0x9f, 'throttled guess');
  t.regex(text(await refusedLine(b, clientId)), /throttled by authGuard\.pair/);
});

// ── after CONNACK ────────────────────────────────────────────────────────────

test('mqttv311: a PUBLISH larger than limits.maxPacketSize (1 MiB) closes the connection, and the log names the setting', async (t) => {
  const b = mosquitto(t);
  if (b === undefined) return;
  const clientId = id('big-v3');
  const file = path.join(dir, `${clientId}.bin`);
  fs.writeFileSync(file, Buffer.alloc(1024 * 1024 + 1, 0x61));
  const r = await run(MOSQUITTO_PUB, [...at(b), '-i', clientId, '-t', 'x', '-q', '1', '-f', file]);
  t.not(r.code, 0, 'mosquitto_pub sees the connection close before its PUBACK');
  t.regex(text(await closedLine(b, clientId)), /exceeds limits\.maxPacketSize \(1048576 bytes\).*packet too large/);
});

const v5Cases: { name: string; action: string[]; code: number; setting: RegExp }[] = [
  { name: 'a PUBLISH larger than limits.maxPacketSize (1 MiB)', action: ['--publish-bytes', String(1024 * 1024 + 100)], code: 0x95, setting: /limits\.maxPacketSize \(1048576 bytes\)/ },
  { name: 'a topic with more than limits.maxTopicLevels (64) levels', action: ['--topic-levels', '65'], code: 0x90, setting: /more than limits\.maxTopicLevels \(64\) topic levels/ },
  { name: 'more than limits.maxUserProperties (32) user properties', action: ['--user-properties', '33'], code: 0x83, setting: /more than limits\.maxUserProperties \(32\) user properties/ },
  { name: 'a topic alias above limits.topicAliasMaximum (32)', action: ['--topic-alias', '33'], code: 0x94, setting: /outside 1\.\.limits\.topicAliasMaximum \(32\)/ },
];

for (const c of v5Cases) {
  test(`paho 5: ${c.name} gets DISCONNECT 0x${c.code.toString(16)}, and the log names the setting`, async (t) => {
    if (!requireTool(t, havePaho, 'python3-paho-mqtt') || main === undefined) return;
    const clientId = id('v5');
    const r = await pahoRefused('5', clientId, c.action);
    t.like(r, { connack: 0, disconnect: c.code });
    t.regex(text(await closedLine(main, clientId)), c.setting);
  });
}

for (const [version, code] of [['3.1.1', 0x80], ['5', 0x8f]] as const) {
  test(`paho ${version}: a filter with more than limits.maxTopicLevels (64) levels gets SUBACK 0x${code.toString(16)}; the connection stays; the log names the setting`, async (t) => {
    if (!requireTool(t, havePaho, 'python3-paho-mqtt') || main === undefined) return;
    const clientId = id('deep-filter');
    const r = await pahoRefused(version, clientId, ['--filter-levels', '65']);
    t.like(r, { connack: 0, suback: [code], connected: true });
    t.regex(text(await main.waitForLog((l) => l.msg.startsWith('subscription refused') && l.clientId === clientId)), /limits\.maxTopicLevels \(64\)/);
  });
}

for (const [version, code] of [['3.1.1', 0x80], ['5', 0x97]] as const) {
  test(`paho ${version}: the subscription past limits.maxSubscriptionsPerClient (1000) gets SUBACK 0x${code.toString(16)}, and the log names the setting`, async (t) => {
    if (!requireTool(t, havePaho, 'python3-paho-mqtt') || main === undefined) return;
    const clientId = id('many-subs');
    const r = await pahoRefused(version, clientId, ['--subscriptions', '1001']);
    t.like(r, { connack: 0, connected: true, last_suback: [code] });
    t.regex(text(await main.waitForLog((l) => l.msg.startsWith('subscription refused') && l.clientId === clientId)), /limits\.maxSubscriptionsPerClient \(1000\)/);
  });
}

// ── no authorizer ────────────────────────────────────────────────────────────

for (const version of ['mqttv311', 'mqttv5'] as const) {
  test(`${version}: with no authorizer configured every publish and subscribe is denied (${version === 'mqttv5' ? 'PUBACK 0x87, SUBACK 0x87' : 'SUBACK 0x80'}), and the log warned at start`, async (t) => {
    if (!requireTool(t, haveMosquittoClients, 'mosquitto-clients') || noAuthorizer === undefined) return;
    const b = noAuthorizer;
    const s = await run(MOSQUITTO_SUB, [...at(b), '-V', version, '-t', 'a/b', '-d', '-W', '2']);
    t.regex(s.stdout, version === 'mqttv5' ? /Subscribed \(mid: 1\): 135/ : /Subscribed \(mid: 1\): 128/);
    if (version === 'mqttv5') {
      const p = await run(MOSQUITTO_PUB, [...at(b), '-V', version, '-t', 'a/b', '-q', '1', '-m', 'x']);
      t.regex(p.stderr, /Publish 1 failed: Not authorized/);
    }
    t.truthy(b.logs().find((l) => l.level === 40 && l.msg.startsWith('authorizers is empty: every publish and subscribe is denied')));
  });
}

// ── before MQTT: accept time and TLS ─────────────────────────────────────────

test('more connections from one address than limits.connectRate allows (50/s, bursts of 100) are closed at accept time, unanswered, and the log names the setting', async (t) => {
  const b = mosquitto(t);
  if (b === undefined) return;
  // Waves of 150 MQTT 3.1.1 clients at once from 127.0.0.50, each sending its CONNECT: the burst
  // of 100 gets CONNACKs, the rest are closed before a byte is read. (On a loaded machine the
  // sockets of one wave may trickle in slowly enough for the bucket to refill: then another wave.)
  const wave = (n: number) =>
    Promise.all(
      Array.from(
        { length: n },
        (_, i) =>
          new Promise<'connack' | 'closed unanswered' | 'other'>((resolve) => {
            const socket = net.connect({ host: '127.0.0.1', port: b.port('open'), localAddress: '127.0.0.50' });
            let got = Buffer.alloc(0);
            socket.on('error', () => {});
            socket.once('connect', () => socket.write(rawConnect(`flood-${i}`)));
            socket.on('data', (d: Buffer) => {
              got = Buffer.concat([got, d]);
              if (got.length >= 4) {
                socket.destroy();
                resolve(got[0] === 0x20 && got[3] === 0 ? 'connack' : 'other');
              }
            });
            socket.once('close', () => resolve(got.length === 0 ? 'closed unanswered' : 'other'));
            setTimeout(() => (socket.destroy(), resolve('other')), 10_000).unref();
          }),
      ),
    );
  const answers: string[] = [];
  for (let i = 0; i < 4 && !answers.includes('closed unanswered'); i++) answers.push(...(await wave(150)));
  const count = (a: string) => answers.filter((x) => x === a).length;
  t.true(count('connack') >= 100, `${count('connack')} CONNACKs`);
  t.true(count('closed unanswered') >= 1, `${count('closed unanswered')} closed unanswered`);
  t.is(count('other'), 0);
  t.regex(text(await b.waitForLog((l) => l.msg.startsWith('connections refused at accept time'), 4000)), /rate: limits\.connectRate/);
});

/** A minimal MQTT 3.1.1 CONNECT (clean session, keep-alive 60). */
function rawConnect(clientId: string): Buffer {
  const idBytes = Buffer.from(clientId);
  const body = Buffer.concat([Buffer.from([0, 4, 0x4d, 0x51, 0x54, 0x54, 4, 0x02, 0, 60, idBytes.length >> 8, idBytes.length & 0xff]), idBytes]);
  return Buffer.concat([Buffer.from([0x10, body.length]), body]);
}

test('a TLS 1.1 client is refused by a TLS listener (minVersion TLSv1.2 by default), and the log names the setting', async (t) => {
  const b = mosquitto(t);
  if (b === undefined) return;
  const r = await run('/usr/bin/openssl', ['s_client', '-connect', `127.0.0.1:${b.port('tls')}`, '-tls1_1', '-cipher', 'DEFAULT@SECLEVEL=0'], 8000);
  t.not(r.code, 0);
  t.regex(r.stderr, /alert protocol version/);
  t.regex(text(await b.waitForLog((l) => l.msg.startsWith('TLS connection refused') && l.refusal === 'protocol-version')), /minVersion, TLSv1\.2 by default/);
});

test('a TLS client that sends no CONNECT is closed after limits.connectTimeoutMs (10 s), and the log says so', async (t) => {
  const b = mosquitto(t);
  if (b === undefined) return;
  const start = Date.now();
  // -quiet implies -ign_eof: s_client completes the handshake, sends nothing and waits for the server.
  const r = await run('/usr/bin/openssl', ['s_client', '-connect', `127.0.0.1:${b.port('tls')}`, '-quiet'], 20_000);
  const waited = Date.now() - start;
  t.true(waited >= 9_500 && waited < 15_000, `closed after ${waited} ms`);
  t.is(r.signal, null, 'closed by the broker, not by the test timeout');
  t.truthy(await b.waitForLog((l) => l.msg.startsWith('no CONNECT within limits.connectTimeoutMs (10000 ms)') && l.listener === 'tls'));
});
