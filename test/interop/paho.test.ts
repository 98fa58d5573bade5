/**
 * Python paho-mqtt (Debian's python3-paho-mqtt, 1.6) against a broker process, over TCP, TLS,
 * mTLS, WebSocket and secure WebSocket, in MQTT 3.1, 3.1.1 and 5. The scripts under
 * test/interop/paho/ use paho's defaults and set only host, port, credentials and TLS files; each
 * prints what it saw as JSON, which the tests check.
 */
import test, { type ExecutionContext } from 'ava';
import { delay, havePaho, jsonLines, paho, type Running } from './clients.ts';
import { type Matrix, pahoArgs, requireTool, slots, startMatrix, type Transport } from './matrix.ts';

let m: (Matrix & { stop(): Promise<void> }) | undefined;
test.before(async () => {
  if (havePaho) m = await startMatrix();
});
test.after.always(async () => {
  await m?.stop();
});

let unique = 0;
const prefix = (what: string) => `interop/paho/${what}-${++unique}`;

/** Runs a script to its end; returns the last JSON line it printed (its result). */
async function script(name: string, args: string[], timeoutMs = 20_000): Promise<Record<string, unknown>> {
  const r = await paho(name, args, timeoutMs).exit;
  const lines = jsonLines(r.stdout);
  if (r.code !== 0 || lines.length === 0) throw new Error(`${name} failed (exit ${r.code}): ${r.stdout}${r.stderr}`);
  return lines[lines.length - 1] as Record<string, unknown>;
}

const slot = slots(4);

/** The file's broker once paho is there and one of the file's slots is free. */
async function ready(t: ExecutionContext): Promise<Matrix | undefined> {
  if (!requireTool(t, havePaho, 'python3-paho-mqtt')) return undefined;
  await slot(t);
  return m;
}

const versions = ['3.1.1', '5'] as const;
const transports: Transport[] = ['tcp', 'tls', 'mtls', 'ws', 'wss'];

for (const transport of transports) {
  for (const version of versions) {
    test(`paho ${version} over ${transport}: connect, subscribe and publish at QoS 0, 1 and 2, each message once at its QoS, disconnect`, async (t) => {
      const mx = await ready(t);
      if (mx === undefined) return;
      const p = prefix(`${transport}-${version}`);
      const r = await script('pubsub.py', [...pahoArgs(mx, transport), '--version', version, '--prefix', p]);
      t.deepEqual(r, {
        connack: [0, 0],
        suback: [0, 1, 2],
        acked: [true, true, true],
        received: [0, 1, 2].map((q) => [`${p}/q${q}`, q, `at qos ${q}`]),
      });
    });
  }
}

test('paho 3.1 (MQIsdp, level 3) over tcp: connect, QoS 0, 1 and 2, disconnect', async (t) => {
  const mx = await ready(t);
  if (mx === undefined) return;
  const p = prefix('v31');
  const r = await script('pubsub.py', [...pahoArgs(mx, 'tcp'), '--version', '3.1', '--prefix', p]);
  t.like(r, { connack: [0, 0], suback: [0, 1, 2], received: [0, 1, 2].map((q) => [`${p}/q${q}`, q, `at qos ${q}`]) });
});

for (const version of versions) {
  test(`paho ${version}: a retained message reaches a later subscriber with RETAIN set, live subscribers without it, and an empty retained message clears it`, async (t) => {
    const mx = await ready(t);
    if (mx === undefined) return;
    const r = await script('retained.py', [...pahoArgs(mx, 'tcp'), '--version', version, '--prefix', prefix('retained')]);
    t.deepEqual(r, { live: [['on', false]], late: [['on', true, 1]], after_clear: [] });
  });

  test(`paho ${version}: a persistent session keeps its subscriptions and queues QoS 1 and 2 messages while offline (not QoS 0); a clean ${version === '5' ? 'start' : 'session'} discards it`, async (t) => {
    const mx = await ready(t);
    if (mx === undefined) return;
    const r = await script('session.py', [...pahoArgs(mx, 'tcp'), '--version', version, '--prefix', prefix('session')]);
    t.deepEqual(r, {
      first: false,
      resumed: true,
      queued: [['q1', 'q1 #0', 1], ['q1', 'q1 #1', 1], ['q1', 'q1 #2', 1], ['q2', 'q2', 2]],
      after_clean: false,
    });
  });

  test(`paho ${version}: 100 connects of one client id in a row are all accepted (no flapping ban by default)`, async (t) => {
    const mx = await ready(t);
    if (mx === undefined) return;
    // Its own source address: the loop does not draw on the connect-rate budget of the other tests.
    const bind = version === '5' ? '127.0.0.22' : '127.0.0.21';
    const r = await script('reconnect.py', [...pahoArgs(mx, 'tcp'), '--version', version, '--prefix', prefix('reconnect'), '--bind', bind, '--times', '100'], 60_000);
    t.deepEqual(r.codes, new Array(100).fill(0));
    t.true((r.seconds as number) < 60, 'within a minute');
  });

  test(`paho ${version}: shared subscriptions split messages between members, each message to one member`, async (t) => {
    const mx = await ready(t);
    if (mx === undefined) return;
    const r = await script('shared.py', [...pahoArgs(mx, 'tcp'), '--version', version, '--prefix', prefix('shared')]);
    t.deepEqual(r.suback, [1, 1]);
    t.is(r.watcher, 10, 'a plain subscriber gets every message');
    t.deepEqual(r.all, Array.from({ length: 10 }, (_, i) => `job ${i}`), 'every message went to exactly one member');
    t.true((r.per_member as number[]).every((n) => n > 0), `both members got some: ${JSON.stringify(r.per_member)}`);
  });

  test(`paho ${version}: what the policy denies is refused with the spec's code (SUBACK ${version === '5' ? '0x87, UNSUBACK 0x87' : '0x80'}) and the connection stays usable`, async (t) => {
    const mx = await ready(t);
    if (mx === undefined) return;
    const r = await script('denied.py', [...pahoArgs(mx, 'tcp'), '--version', version, '--prefix', prefix('denied')]);
    t.deepEqual(r, { connack: 0, suback: [1, version === '5' ? 0x87 : 0x80], ...(version === '5' ? { unsuback: [0x87] } : {}), after: ['still here'] });
  });
}

// ── wills ────────────────────────────────────────────────────────────────────

/** A subscriber to `topic` that has its SUBACK. */
async function willWatcher(mx: Matrix, version: string, topic: string, seconds = 8): Promise<Running> {
  const sub = paho('subscribe.py', [...pahoArgs(mx, 'tcp'), '--version', version, '--prefix', topic, '--topic', topic, '--count', '1', '--seconds', String(seconds)]);
  if (!(await sub.waitFor(/"suback"/))) throw new Error(`subscriber failed: ${sub.stdout()}${sub.stderr()}`);
  return sub;
}

async function holder(mx: Matrix, version: string, p: string, id: string, extra: string[] = []): Promise<Running> {
  const h = paho('hold.py', [...pahoArgs(mx, 'tcp'), '--version', version, '--prefix', p, '--client-id', id, ...extra], 30_000);
  if (!(await h.waitFor(/"connected": 0/))) throw new Error(`hold.py did not connect: ${h.stdout()}${h.stderr()}`);
  return h;
}

const willsOf = (r: { stdout: string }) => jsonLines(r.stdout).flatMap((l) => (l.message !== undefined ? [l.message as { topic: string; payload: string; retain: boolean }] : []));

for (const version of versions) {
  test(`paho ${version}: the will is published when the client process dies without DISCONNECT`, async (t) => {
    const mx = await ready(t);
    if (mx === undefined) return;
    const p = prefix('will');
    const watcher = await willWatcher(mx, version, `${p}/will`);
    const id = `${p.replace(/\//g, '-')}-dying`;
    const h = await holder(mx, version, p, id);
    h.child.kill('SIGKILL');
    const [will] = willsOf(await watcher.exit);
    t.like(will, { topic: `${p}/will`, payload: `${id} is gone` });
  });

  test(`paho ${version}: a client that stops sending PINGREQ is ended after 1.5 x its keep-alive and its will is published`, async (t) => {
    const mx = await ready(t);
    if (mx === undefined) return;
    const p = prefix('keepalive');
    const watcher = await willWatcher(mx, version, `${p}/will`);
    const id = `${p.replace(/\//g, '-')}-silent`;
    const start = Date.now();
    const h = await holder(mx, version, p, id, ['--keepalive', '1', '--silent']);
    t.teardown(() => h.child.kill('SIGKILL'));
    const [will] = willsOf(await watcher.exit);
    t.like(will, { payload: `${id} is gone` });
    t.true(Date.now() - start >= 1400, 'not before 1.5 x the keep-alive');
  });
}

test('paho 5: a will with a Will Delay Interval is published after the delay; DISCONNECT 0x04 publishes the will; DISCONNECT 0x00 does not', async (t) => {
  const mx = await ready(t);
  if (mx === undefined) return;
  const p = prefix('will-v5');
  // Will delay: 2 s after the connection is lost (the session lives 10 s).
  const delayed = await willWatcher(mx, '5', `${p}/will`);
  const h = await holder(mx, '5', p, 'will-delayed', ['--will-delay', '2', '--session-expiry', '10']);
  const lost = Date.now();
  h.child.kill('SIGKILL');
  const [will] = willsOf(await delayed.exit);
  t.like(will, { payload: 'will-delayed is gone' });
  t.true(Date.now() - lost >= 1900, `published ${Date.now() - lost} ms after the connection was lost, not before the 2 s delay`);

  // A normal DISCONNECT discards the will.
  const p2 = prefix('will-v5-normal');
  const quiet = await willWatcher(mx, '5', `${p2}/will`, 1.5);
  const r = await paho('hold.py', [...pahoArgs(mx, 'tcp'), '--version', '5', '--prefix', p2, '--client-id', 'will-normal', '--then', 'disconnect']).exit;
  t.is(r.code, 0, r.stderr);
  t.deepEqual(willsOf(await quiet.exit), [], 'no will after DISCONNECT 0x00');

  // DISCONNECT with reason 0x04 keeps it.
  const p3 = prefix('will-v5-0x04');
  const kept = await willWatcher(mx, '5', `${p3}/will`);
  const r3 = await paho('hold.py', [...pahoArgs(mx, 'tcp'), '--version', '5', '--prefix', p3, '--client-id', 'will-0x04', '--then', 'disconnect-with-will']).exit;
  t.is(r3.code, 0, r3.stderr);
  t.like(willsOf(await kept.exit)[0], { payload: 'will-0x04 is gone' });
});

// ── MQTT 5 ───────────────────────────────────────────────────────────────────

test('paho 5: request / response with Response Topic and Correlation Data (Content Type and User Properties pass through)', async (t) => {
  const mx = await ready(t);
  if (mx === undefined) return;
  const p = prefix('rr');
  const r = await script('request_response.py', [...pahoArgs(mx, 'tcp'), '--version', '5', '--prefix', p]);
  const replyTo = `${p}/replies/${p.replace(/\//g, '-')}`;
  t.like(r, {
    request: { payload: 'what time is it?', properties: { ResponseTopic: replyTo, CorrelationData: Buffer.from('req-42').toString('hex'), ContentType: 'text/plain', UserProperty: [['tenant', 'acme']] } },
    response: { topic: replyTo, payload: 'noon', properties: { CorrelationData: Buffer.from('req-42').toString('hex') } },
  });
});

test('paho 5: topic aliases both ways (the broker resolves the aliases paho sends, and sends its own when paho allows them)', async (t) => {
  const mx = await ready(t);
  if (mx === undefined) return;
  const p = prefix('alias');
  const r = await script('topic_alias.py', [...pahoArgs(mx, 'tcp'), '--version', '5', '--prefix', p]);
  t.is(r.server_alias_maximum, 32, 'CONNACK advertises limits.topicAliasMaximum');
  // Inbound: "two" and "three" were sent with the alias only and routed to the full topic.
  // Outbound: the first delivery sets alias 1 with the topic, the next ones carry the alias alone.
  t.deepEqual(r.received, [
    [`${p}/aliased/topic`, 'one', 1],
    ['', 'two', 1],
    ['', 'three', 1],
  ]);
});

test('paho 5: message expiry (an expired queued message is not delivered; the other carries its remaining interval) and session expiry', async (t) => {
  const mx = await ready(t);
  if (mx === undefined) return;
  const r = await script('expiry.py', [...pahoArgs(mx, 'tcp'), '--version', '5', '--prefix', prefix('expiry')]);
  t.is(r.message_session_present, true);
  const delivered = r.delivered as [string, number][];
  t.deepEqual(delivered.map(([payload]) => payload), ['long-lived'], 'the short-lived message expired in the queue');
  const remaining = delivered[0]?.[1] ?? 0;
  t.true(remaining <= 58 && remaining >= 50, `the remaining interval is counted down: ${remaining}`);
  t.is(r.short_first, false);
  t.is(r.short_after_expiry, false, 'a session with a 1 s expiry is gone 2 s after its disconnect');
});

for (const version of ['3.1', ...versions]) {
  test(`paho ${version}: keep-alive 0 (off) is accepted and the connection stays up`, async (t) => {
    const mx = await ready(t);
    if (mx === undefined) return;
    const h = paho('hold.py', [...pahoArgs(mx, 'tcp'), '--version', version, '--prefix', prefix('ka0'), '--client-id', `ka0-${version}`, '--keepalive', '0']);
    t.teardown(() => h.child.kill('SIGKILL'));
    t.true(await h.waitFor(/"connected": 0/), h.stdout() + h.stderr());
    await delay(1000);
    t.is(h.child.exitCode, null, 'still connected a second later');
    t.truthy(mx.broker.logs().find((l) => l.msg === 'client connected' && l.clientId === `ka0-${version}`));
    t.falsy(mx.broker.logs().find((l) => l.msg === 'client disconnected' && l.clientId === `ka0-${version}`));
  });
}

test('paho 5: CONNACK carries the broker\'s properties; a keep-alive above limits.maxKeepAlive is answered with Server Keep Alive', async (t) => {
  const mx = await ready(t);
  if (mx === undefined) return;
  const h = paho('hold.py', [...pahoArgs(mx, 'tcp'), '--version', '5', '--prefix', prefix('ska'), '--client-id', 'ska', '--keepalive', '7200']);
  t.true(await h.waitFor(/"connected"/), h.stderr());
  h.child.kill('SIGKILL');
  const [line] = jsonLines(h.stdout());
  t.like(line, {
    connected: 0,
    properties: { ServerKeepAlive: 3600, ReceiveMaximum: 64, TopicAliasMaximum: 32, MaximumPacketSize: 1024 * 1024, RetainAvailable: 1, SharedSubscriptionAvailable: 1, WildcardSubscriptionAvailable: 1, SubscriptionIdentifierAvailable: 1 },
  });
});

// ── subscriptions, CONNACK, takeover, delivery ───────────────────────────────

for (const version of versions) {
  test(`paho ${version}: overlapping subscriptions deliver once at the highest QoS${version === '5' ? ' with every Subscription Identifier' : ''}; '#' matches the parent; re-subscribing replaces the QoS${version === '5' ? '; Retain Handling 0/1/2; No Local; UNSUBACK 0x00 and 0x11' : ''}`, async (t) => {
    const mx = await ready(t);
    if (mx === undefined) return;
    const r = await script('subscriptions.py', [...pahoArgs(mx, 'tcp'), '--version', version, '--prefix', prefix('subs')]);
    if (version === '5') {
      t.deepEqual(r.overlap, [['overlap', 2, [1, 2]]]);
      t.deepEqual(r.resubscribed, [['resubscribed', 0, [3]]]);
      t.deepEqual(r.retain_handling, { 0: [['kept'], ['kept']], 1: [['kept'], []], 2: [[], []] });
      t.deepEqual(r.no_local, ['other']);
      t.deepEqual(r.unsuback, [0x00, 0x11]);
    } else {
      t.deepEqual(r.overlap, [['overlap', 2, []]]);
      t.deepEqual(r.resubscribed, [['resubscribed', 0, null]]);
    }
    t.deepEqual(r.parent, ['parent']);
  });

  test(`paho ${version}: a message bigger than the subscriber's Maximum Packet Size is not sent to it (MQTT 5); a new shared subscription gets no retained message`, async (t) => {
    const mx = await ready(t);
    if (mx === undefined) return;
    const r = await script('delivery.py', [...pahoArgs(mx, 'tcp'), '--version', version, '--prefix', prefix('delivery')]);
    t.deepEqual(r.sized, version === '5' ? [[4, [['origin', 'paho'], ['unit', 'celsius']]]] : [[500, null], [4, null]]);
    t.deepEqual(r.shared_retained, []);
  });
}

/** Runs connack.py and returns its lines: { connack } and, with --hold, { ended }. */
async function connack(mx: Matrix, transport: Transport, version: string, args: string[]): Promise<Record<string, any>[]> {
  const r = await paho('connack.py', [...pahoArgs(mx, transport), '--version', version, '--prefix', prefix('connack'), ...args]).exit;
  const lines = jsonLines(r.stdout);
  if (lines.length === 0) throw new Error(`connack.py failed: ${r.stdout}${r.stderr}`);
  return lines;
}

test('paho 5: an empty client id gets an Assigned Client Identifier; a Session Expiry Interval above limits.maxSessionExpiry is capped and the CONNACK says so', async (t) => {
  const mx = await ready(t);
  if (mx === undefined) return;
  const [assigned] = await connack(mx, 'tcp', '5', []);
  t.regex(assigned?.connack.properties.AssignedClientIdentifier ?? '', /^auto-[0-9a-f-]{36}$/);
  const [capped] = await connack(mx, 'tcp', '5', ['--client-id', 'capped', '--session-expiry', '4294967295']);
  t.is(capped?.connack.properties.SessionExpiryInterval, 7 * 24 * 3600);
});

test('paho 5: a refused CONNACK carries a reason string, unless the client asked for no problem information', async (t) => {
  const mx = await ready(t);
  if (mx === undefined) return;
  const wrong = (args: string[]) => [...args.map((a, i) => (args[i - 1] === '--password' ? 'not-the-password' : a))];
  const tls = wrong(pahoArgs(mx, 'tls'));
  const run1 = await paho('connack.py', [...tls, '--bind', '127.0.0.35', '--version', '5', '--prefix', prefix('pi'), '--client-id', 'pi-1']).exit;
  const run2 = await paho('connack.py', [...tls, '--bind', '127.0.0.35', '--version', '5', '--prefix', prefix('pi'), '--client-id', 'pi-2', '--no-problem-information']).exit;
  const [withInfo] = jsonLines(run1.stdout) as Record<string, any>[];
  const [without] = jsonLines(run2.stdout) as Record<string, any>[];
  t.is(withInfo?.connack.rc, 0x86);
  t.is(typeof withInfo?.connack.properties.ReasonString, 'string');
  t.is(without?.connack.rc, 0x86);
  t.is(without?.connack.properties.ReasonString, undefined);
});

for (const [version, notAuthorized] of [['3.1.1', 5], ['5', 0x87]] as const) {
  test(`paho ${version}: a will the policy denies is refused at CONNECT (${version === '5' ? '0x87' : 'return code 5'}); a client id in use by another identity is that identity's session, never handed over`, async (t) => {
    const mx = await ready(t);
    if (mx === undefined) return;
    const [will] = await connack(mx, 'tcp', version, ['--client-id', `will-denied-${version}`, '--will-topic', 'interop/denied/will']);
    t.is(will?.connack.rc, notAuthorized);
    // An anonymous client holds the id with a persistent session; the TLS listener's user connects
    // with the same id: it gets in, with a session of its own (session present 0), and the holder stays.
    const id = `owned-${version}`;
    const holder = paho('connack.py', [...pahoArgs(mx, 'tcp'), '--version', version, '--prefix', prefix('owned'), '--client-id', id, '--clean', 'no', '--session-expiry', '60', '--hold', '4']);
    t.true(await holder.waitFor(/"connack"/), holder.stderr());
    const [other] = await connack(mx, 'tls', version, ['--client-id', id, '--clean', 'no', '--session-expiry', '60']);
    t.like(other, { connack: { rc: 0, session_present: false } });
    const ended = jsonLines((await holder.exit).stdout).find((l) => 'ended' in l) as { ended: { rc: number } | null } | undefined;
    t.falsy(ended?.ended, 'the holder was not taken over by the other identity');
  });

  test(`paho ${version}: a second connection with the same client id and identity takes the session over; the first ${version === '5' ? 'gets DISCONNECT 0x8E' : 'is closed'}`, async (t) => {
    const mx = await ready(t);
    if (mx === undefined) return;
    const id = `takeover-${version}`;
    const first = paho('connack.py', [...pahoArgs(mx, 'tcp'), '--version', version, '--prefix', prefix('takeover'), '--client-id', id, '--clean', 'no', '--session-expiry', '60', '--hold', '8']);
    t.true(await first.waitFor(/"connack"/), first.stderr());
    const [second] = await connack(mx, 'tcp', version, ['--client-id', id, '--clean', 'no', '--session-expiry', '60']);
    t.like(second, { connack: { rc: 0, session_present: true } });
    const ended = jsonLines((await first.exit).stdout).find((l) => 'ended' in l) as { ended: { rc: number } | null } | undefined;
    t.truthy(ended?.ended, 'the first connection was ended by the broker');
    if (version === '5') t.is(ended?.ended?.rc, 0x8e);
  });
}

test('paho 5: a reconnect within the Will Delay Interval cancels the will; a retained will is kept as a retained message', async (t) => {
  const mx = await ready(t);
  if (mx === undefined) return;
  const p = prefix('will-cancel');
  const watcher = await willWatcher(mx, '5', `${p}/will`, 4);
  const h = await holder(mx, '5', p, 'will-cancelled', ['--will-delay', '2', '--session-expiry', '30']);
  h.child.kill('SIGKILL');
  // Clean start 0: the session goes on. (A clean start would end it, and the will would go out at once.)
  const back = await holder(mx, '5', p, 'will-cancelled', ['--session-expiry', '30', '--resume']);
  t.teardown(() => back.child.kill('SIGKILL'));
  t.deepEqual(willsOf(await watcher.exit), [], 'no will: the client came back within the delay');

  const p2 = prefix('will-retained');
  const dying = await holder(mx, '5', p2, 'will-retained', ['--will-retain']);
  dying.child.kill('SIGKILL');
  await mx.broker.waitForLog((l) => l.msg === 'will published' && l.clientId === 'will-retained');
  const late = await willWatcher(mx, '5', `${p2}/will`);
  t.like(willsOf(await late.exit)[0], { payload: 'will-retained is gone', retain: true });
});
