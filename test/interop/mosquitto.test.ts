/**
 * Eclipse Mosquitto's command-line clients (Debian's mosquitto-clients 2.0: mosquitto_pub,
 * mosquitto_sub, mosquitto_rr) against a broker process, with their default options, over TCP,
 * TLS (password or PSK) and mTLS, in MQTT 3.1, 3.1.1 and 5. (They have no WebSocket transport.)
 * Only host, port, credentials and TLS files are given, plus the option that asks for the
 * feature under test.
 */
import test, { type ExecutionContext } from 'ava';
import { delay, haveMosquittoClients, launch, MOSQUITTO_PUB, MOSQUITTO_RR, MOSQUITTO_SUB, run, type Running } from './clients.ts';
import { type Matrix, mosquittoArgs, requireTool, slots, startMatrix, type Transport } from './matrix.ts';

let m: (Matrix & { stop(): Promise<void> }) | undefined;
test.before(async () => {
  if (haveMosquittoClients) m = await startMatrix();
});
test.after.always(async () => {
  await m?.stop();
});

const slot = slots(6);

/** The file's broker once the clients are there and one of the file's slots is free. */
async function ready(t: ExecutionContext): Promise<Matrix | undefined> {
  if (!requireTool(t, haveMosquittoClients, 'mosquitto-clients')) return undefined;
  await slot(t);
  return m;
}

let unique = 0;
const prefix = (what: string) => `interop/mosq/${what}-${++unique}`;
const idOf = (p: string) => p.replace(/\//g, '-');

/** A mosquitto_sub that has its SUBACK (-d prints it). Messages are printed with `format`. */
async function sub(mx: Matrix, transport: Transport, args: string[], format = '%t|%q|%r|%p'): Promise<Running> {
  const s = launch(MOSQUITTO_SUB, [...mosquittoArgs(mx, transport), '-d', '-F', format, ...args], 20_000);
  if (!(await s.waitFor(/received SUBACK/))) throw new Error(`mosquitto_sub did not subscribe: ${s.stdout()} ${s.stderr()}`);
  return s;
}

/** The message lines a `sub` printed (the -d debug lines start with "Client " or "Subscribed"). */
const lines = (out: string) => out.split('\n').filter((l) => l !== '' && !l.startsWith('Client ') && !l.startsWith('Subscribed '));

async function pub(mx: Matrix, transport: Transport, args: string[]): Promise<void> {
  const r = await run(MOSQUITTO_PUB, [...mosquittoArgs(mx, transport), ...args]);
  if (r.code !== 0) throw new Error(`mosquitto_pub ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
}

async function until(predicate: () => boolean, ms = 10_000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > end) return false;
    await delay(20);
  }
  return true;
}

const versions = ['mqttv311', 'mqttv5'] as const;

for (const transport of ['tcp', 'tls', 'psk', 'mtls'] as const) {
  for (const version of transport === 'tcp' ? (['mqttv31', ...versions] as const) : versions) {
    test(`mosquitto ${version} over ${transport}: mosquitto_sub gets one message at each QoS 0, 1 and 2 from mosquitto_pub`, async (t) => {
      const mx = await ready(t);
      if (mx === undefined) return;
      const p = prefix(`${transport}-${version}`);
      const s = await sub(mx, transport, ['-V', version, '-i', `${idOf(p)}-sub`, '-t', `${p}/#`, '-q', '2', '-C', '3', '-W', '15']);
      for (const qos of [0, 1, 2]) await pub(mx, transport, ['-V', version, '-i', `${idOf(p)}-pub`, '-t', `${p}/q${qos}`, '-q', String(qos), '-m', `at qos ${qos}`]);
      const out = await s.exit;
      t.is(out.code, 0, out.stderr);
      t.deepEqual(lines(out.stdout), [0, 1, 2].map((q) => `${p}/q${q}|${q}|0|at qos ${q}`));
    });
  }
}

for (const version of versions) {
  test(`mosquitto ${version}: a retained message reaches later subscribers with RETAIN set, live ones without, and mosquitto_pub -r -n clears it`, async (t) => {
    const mx = await ready(t);
    if (mx === undefined) return;
    const p = prefix('retained');
    const live = await sub(mx, 'tcp', ['-V', version, '-t', `${p}/state`, '-q', '1', '-C', '1', '-W', '15']);
    await pub(mx, 'tcp', ['-V', version, '-t', `${p}/state`, '-q', '1', '-r', '-m', 'on']);
    t.deepEqual(lines((await live.exit).stdout), [`${p}/state|1|0|on`], 'live: RETAIN 0');
    const late = await run(MOSQUITTO_SUB, [...mosquittoArgs(mx, 'tcp'), '-V', version, '-t', `${p}/state`, '-q', '1', '-C', '1', '-W', '15', '-F', '%t|%q|%r|%p']);
    t.is(late.stdout.trim(), `${p}/state|1|1|on`, 'a later subscriber: RETAIN 1');
    await pub(mx, 'tcp', ['-V', version, '-t', `${p}/state`, '-r', '-n']);
    const cleared = await run(MOSQUITTO_SUB, [...mosquittoArgs(mx, 'tcp'), '-V', version, '-t', `${p}/state`, '-W', '1']);
    t.is(cleared.stdout, '', 'cleared');
  });

  test(`mosquitto ${version}: the will of a mosquitto_sub that is killed is published`, async (t) => {
    const mx = await ready(t);
    if (mx === undefined) return;
    const p = prefix('will');
    const watcher = await sub(mx, 'tcp', ['-V', version, '-t', `${p}/will`, '-q', '1', '-C', '1', '-W', '15']);
    const dying = await sub(mx, 'tcp', ['-V', version, '-i', `${idOf(p)}-dying`, '-t', `${p}/ignored`, '--will-topic', `${p}/will`, '--will-payload', 'gone', '--will-qos', '1']);
    dying.child.kill('SIGKILL');
    t.deepEqual(lines((await watcher.exit).stdout), [`${p}/will|1|0|gone`]);
  });

  test(`mosquitto ${version}: a persistent session (-c) keeps its subscription and gets the QoS 1 messages sent while it was offline`, async (t) => {
    const mx = await ready(t);
    if (mx === undefined) return;
    const p = prefix('session');
    const id = `${idOf(p)}-persistent`;
    // -E: exit once subscribed; without -c the session would end with the connection.
    const first = await run(MOSQUITTO_SUB, [...mosquittoArgs(mx, 'tcp'), '-V', version, '-c', '-i', id, '-t', `${p}/#`, '-q', '1', '-E']);
    t.is(first.code, 0, first.stderr);
    for (let i = 0; i < 3; i++) await pub(mx, 'tcp', ['-V', version, '-t', `${p}/q1`, '-q', '1', '-m', `queued ${i}`]);
    await pub(mx, 'tcp', ['-V', version, '-t', `${p}/q0`, '-q', '0', '-m', 'qos 0 is not queued']);
    const again = await run(MOSQUITTO_SUB, [...mosquittoArgs(mx, 'tcp'), '-V', version, '-c', '-i', id, '-t', `${p}/#`, '-q', '1', '-C', '3', '-W', '15', '-F', '%t|%q|%p']);
    t.deepEqual(lines(again.stdout), [0, 1, 2].map((i) => `${p}/q1|1|queued ${i}`));
  });

  test(`mosquitto ${version}: 100 mosquitto_pub runs with one client id in a row are all accepted (no flapping ban by default)`, async (t) => {
    const mx = await ready(t);
    if (mx === undefined) return;
    const p = prefix('reconnect');
    // Its own source address: the loop does not draw on the connect-rate budget of the other tests.
    const args = [...mosquittoArgs(mx, 'tcp'), '-A', version === 'mqttv5' ? '127.0.0.32' : '127.0.0.31', '-V', version, '-i', idOf(p), '-t', `${p}/x`, '-m', 'x'];
    const start = Date.now();
    const codes: (number | null)[] = [];
    for (let i = 0; i < 100; i++) codes.push((await run(MOSQUITTO_PUB, args)).code);
    t.deepEqual(codes, new Array(100).fill(0));
    t.true(Date.now() - start < 60_000);
    t.falsy(await mx.broker.waitForAudit((r) => r.event === 'ban' && r.clientId === idOf(p), 10), 'no ban recorded');
  });

  test(`mosquitto ${version}: what the policy denies gets the spec's answer (SUBACK ${version === 'mqttv5' ? '0x87, PUBACK 0x87, PUBREC 0x87' : '0x80'})`, async (t) => {
    const mx = await ready(t);
    if (mx === undefined) return;
    const subscribe = await run(MOSQUITTO_SUB, [...mosquittoArgs(mx, 'tcp'), '-V', version, '-t', 'interop/denied/x', '-d', '-W', '2']);
    t.regex(subscribe.stdout, version === 'mqttv5' ? /Subscribed \(mid: 1\): 135/ : /Subscribed \(mid: 1\): 128/);
    t.regex(subscribe.stderr, /All subscription requests were denied/);
    if (version === 'mqttv5') {
      const q1 = await run(MOSQUITTO_PUB, [...mosquittoArgs(mx, 'tcp'), '-V', version, '-t', 'interop/denied/x', '-q', '1', '-m', 'x', '-d']);
      t.regex(q1.stdout, /received PUBACK \(Mid: 1, RC:135\)/);
      t.regex(q1.stderr, /Publish 1 failed: Not authorized/);
      const q2 = await run(MOSQUITTO_PUB, [...mosquittoArgs(mx, 'tcp'), '-V', version, '-t', 'interop/denied/x', '-q', '2', '-m', 'x']);
      t.regex(q2.stderr, /Publish 1 failed: Not authorized/, 'PUBREC 0x87');
    }
  });

  test(`mosquitto ${version}: a wrong password is refused with ${version === 'mqttv5' ? 'CONNACK 0x86' : 'return code 4'} (mosquitto_pub exits with it)`, async (t) => {
    const mx = await ready(t);
    if (mx === undefined) return;
    const args = mosquittoArgs(mx, 'tls').map((a, i, all) => (all[i - 1] === '-P' ? 'not-the-password' : a));
    // From its own address: failed logins count per address (authGuard), and 127.0.0.1 serves the other tests.
    const r = await run(MOSQUITTO_PUB, [...args, '-A', version === 'mqttv5' ? '127.0.0.34' : '127.0.0.33', '-V', version, '-t', 'interop/x', '-m', 'x']);
    t.is(r.code, version === 'mqttv5' ? 0x86 : 4, r.stderr);
  });
}

test('mosquitto: a TLS client without a certificate is refused by the mTLS listener at the handshake, and one with an unknown PSK identity by the TLS listener', async (t) => {
  const mx = await ready(t);
  if (mx === undefined) return;
  const noCert = await run(MOSQUITTO_PUB, ['-h', '127.0.0.1', '-p', String(mx.broker.port('mtls')), '--cafile', mx.pki.ca, '-t', 'interop/x', '-m', 'x']);
  t.not(noCert.code, 0);
  const badPsk = await run(MOSQUITTO_PUB, ['-h', '127.0.0.1', '-p', String(mx.broker.port('tls')), '--psk-identity', 'nobody', '--psk', 'deadbeef', '-t', 'interop/x', '-m', 'x']);
  t.not(badPsk.code, 0);
  t.truthy(await mx.broker.waitForAudit((r) => r.event === 'tls' && r.decision === 'deny' && r.listener === 'mtls'), 'the mTLS refusal is audited');
  t.truthy(await mx.broker.waitForAudit((r) => r.event === 'tls' && r.decision === 'deny' && r.listener === 'tls'), 'the PSK refusal is audited');
});

// ── MQTT 5 ───────────────────────────────────────────────────────────────────

const V5 = ['-V', 'mqttv5'];

test('mosquitto 5: mosquitto_rr request / response (Response Topic and Correlation Data) with a mosquitto_sub + mosquitto_pub responder', async (t) => {
  const mx = await ready(t);
  if (mx === undefined) return;
  const p = prefix('rr');
  const responder = await sub(mx, 'tcp', [...V5, '-t', `${p}/requests`, '-C', '1', '-W', '15'], '%R|%D|%p');
  const requester = launch(MOSQUITTO_RR, [...mosquittoArgs(mx, 'tcp'), '-t', `${p}/requests`, '-e', `${p}/replies`, '-m', 'ping', '-D', 'publish', 'correlation-data', 'corr-7', '-W', '15']);
  const asked = lines((await responder.exit).stdout)[0] ?? '';
  t.is(asked, `${p}/replies|corr-7|ping`, 'the request carries the response topic and correlation data');
  const [replyTo, correlation] = asked.split('|');
  await pub(mx, 'tcp', [...V5, '-t', replyTo ?? '', '-D', 'publish', 'correlation-data', correlation ?? '', '-m', 'pong']);
  const answer = await requester.exit;
  t.is(answer.code, 0, answer.stderr);
  t.is(answer.stdout.trim(), 'pong');
});

test('mosquitto 5: mosquitto_pub -l with a topic alias sends the topic once, then the alias alone; subscribers get the full topic', async (t) => {
  const mx = await ready(t);
  if (mx === undefined) return;
  const p = prefix('alias');
  const s = await sub(mx, 'tcp', [...V5, '-t', `${p}/t`, '-q', '1', '-C', '3', '-W', '15'], '%t|%p');
  // mosquitto_pub -l reads lines from standard input: a shell pipe gives it three.
  const r = await run('/bin/sh', ['-c', `printf 'a\\nb\\nc\\n' | ${MOSQUITTO_PUB} ${mosquittoArgs(mx, 'tcp').join(' ')} -V mqttv5 -t ${p}/t -q 1 -D publish topic-alias 1 -l -d`]);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /sending PUBLISH \(d0, q1, r0, m2, '\(null\)'/, 'the second PUBLISH went without its topic');
  t.deepEqual(lines((await s.exit).stdout), ['a', 'b', 'c'].map((x) => `${p}/t|${x}`));
});

test('mosquitto 5: two mosquitto_sub in one $share group split the messages, each message to one of them', async (t) => {
  const mx = await ready(t);
  if (mx === undefined) return;
  const p = prefix('shared');
  const members = [await sub(mx, 'tcp', [...V5, '-t', `$share/g/${p}/#`, '-q', '1', '-W', '10'], '%p'), await sub(mx, 'tcp', [...V5, '-t', `$share/g/${p}/#`, '-q', '1', '-W', '10'], '%p')];
  const r = await run('/bin/sh', ['-c', `seq 1 10 | ${MOSQUITTO_PUB} ${mosquittoArgs(mx, 'tcp').join(' ')} -V mqttv5 -t ${p}/jobs -q 1 -l`]);
  t.is(r.code, 0, r.stderr);
  const got = () => members.flatMap((s) => lines(s.stdout()));
  t.true(await until(() => got().length >= 10), `got ${JSON.stringify(got())}`);
  await delay(300); // a duplicate would show up here
  t.deepEqual(got().map(Number).sort((a, b) => a - b), Array.from({ length: 10 }, (_, i) => i + 1), 'each message exactly once');
  t.true(members.every((s) => lines(s.stdout()).length > 0), 'both members got some');
  for (const s of members) s.child.kill('SIGTERM');
});

test('mosquitto 5: message expiry (a queued message past its interval is dropped, the other keeps its remaining interval) and session expiry (-x)', async (t) => {
  const mx = await ready(t);
  if (mx === undefined) return;
  const p = prefix('expiry');
  const id = `${idOf(p)}-sub`;
  t.is((await run(MOSQUITTO_SUB, [...mosquittoArgs(mx, 'tcp'), ...V5, '-c', '-i', id, '-t', `${p}/m`, '-q', '1', '-E'])).code, 0);
  await pub(mx, 'tcp', [...V5, '-t', `${p}/m`, '-q', '1', '-m', 'short-lived', '-D', 'publish', 'message-expiry-interval', '1']);
  await pub(mx, 'tcp', [...V5, '-t', `${p}/m`, '-q', '1', '-m', 'long-lived', '-D', 'publish', 'message-expiry-interval', '60']);
  // A session that expires 1 s after it disconnects.
  const brief = `${idOf(p)}-brief`;
  t.is((await run(MOSQUITTO_SUB, [...mosquittoArgs(mx, 'tcp'), ...V5, '-c', '-x', '1', '-i', brief, '-t', `${p}/s`, '-q', '1', '-E'])).code, 0);
  await delay(2200);
  await pub(mx, 'tcp', [...V5, '-t', `${p}/s`, '-q', '1', '-m', 'for an expired session']);

  const later = await run(MOSQUITTO_SUB, [...mosquittoArgs(mx, 'tcp'), ...V5, '-c', '-i', id, '-t', `${p}/m`, '-q', '1', '-W', '2', '-F', '%p|%E']);
  const got = lines(later.stdout);
  t.is(got.length, 1, `only the long-lived message: ${JSON.stringify(got)}`);
  const [payload, remaining] = (got[0] ?? '').split('|');
  t.is(payload, 'long-lived');
  t.true(Number(remaining) <= 58 && Number(remaining) >= 50, `its remaining expiry is counted down: ${remaining}`);
  const expired = await run(MOSQUITTO_SUB, [...mosquittoArgs(mx, 'tcp'), ...V5, '-c', '-x', '1', '-i', brief, '-t', `${p}/s`, '-q', '1', '-W', '1']);
  t.is(expired.stdout, '', 'the expired session queued nothing');
});

test('mosquitto 5: a keep-alive above limits.maxKeepAlive is accepted (the broker answers with Server Keep Alive instead of refusing)', async (t) => {
  const mx = await ready(t);
  if (mx === undefined) return;
  const big = await run(MOSQUITTO_PUB, [...mosquittoArgs(mx, 'tcp'), ...V5, '-k', '7200', '-t', 'interop/x', '-q', '1', '-m', 'x']);
  t.is(big.code, 0, big.stderr);
});

test('mosquitto 5: a QoS 1 publish that no subscription matches gets PUBACK 0x10 (No matching subscribers)', async (t) => {
  const mx = await ready(t);
  if (mx === undefined) return;
  const r = await run(MOSQUITTO_PUB, [...mosquittoArgs(mx, 'tcp'), ...V5, '-t', `${prefix('nobody')}/x`, '-q', '1', '-m', 'x', '-d']);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /received PUBACK \(Mid: 1, RC:16\)/);
});
