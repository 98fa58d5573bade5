/**
 * authzDeadlineMs: an authorizer whose promise never settles (a remote policy service that hangs)
 * denies once the deadline passes, fail closed, for publishes, subscriptions and deliveries; the
 * broker goes on serving, the subscriber's queue is not wedged, and an answer that comes after the
 * deadline is ignored.
 */
import test from 'ava';
import type { Decision } from '../src/auth/types.ts';
import type { Authorizer } from '../src/authz/types.ts';
import { ReasonCode } from '../src/protocol/reason-codes.ts';
import { pubackCode } from './authz-support.ts';
import { connect, delay, startBroker, subackCode } from './helpers.ts';

const ALLOW: Decision = { kind: 'allow', value: undefined };
const never = (): Promise<Decision> => new Promise<Decision>(() => undefined);
const after = (d: Decision, ms: number): Promise<Decision> => new Promise((r) => setTimeout(() => r(d), ms));

/** Answers at once, except: `hang/...` never for `hangs`, and `slow/...` with an allow after 600 ms. */
function remote(hangs: string): Authorizer {
  return {
    id: 'remote',
    authorize: (_w, action, topic) => {
      if (action === hangs && topic.startsWith('hang/')) return never();
      if (action === hangs && topic.startsWith('slow/')) return after(ALLOW, 600);
      return ALLOW;
    },
  };
}

async function broker(t: { teardown(fn: () => unknown): void }, hangs: string) {
  const b = await startBroker({ authorizers: [], authzDeadlineMs: 250 }, { authorizers: [remote(hangs)] });
  t.teardown(() => b.stop());
  return b;
}

/** A subscriber to `filter` recording the topics it gets, and a publisher, both v5. */
async function subAndPub(t: { teardown(fn: () => unknown): void }, port: number, filter: string) {
  const sub = await connect(port, { protocolVersion: 5, clientId: 's' });
  t.teardown(() => sub.end(true));
  await sub.subscribeAsync(filter, { qos: 1 });
  const got: string[] = [];
  sub.on('message', (topic) => got.push(topic));
  const pub = await connect(port, { protocolVersion: 5, clientId: 'p' });
  t.teardown(() => pub.end(true));
  return { got, pub };
}

test('a publish whose authorizer never answers is refused 0x80 after authzDeadlineMs, audited as a denial; the next publish goes through', async (t) => {
  const b = await broker(t, 'publish');
  const c = await connect(b.port, { protocolVersion: 5, clientId: 'p' });
  t.teardown(() => c.end(true));
  const started = Date.now();
  t.is(await pubackCode(c, 'hang/a'), ReasonCode.UnspecifiedError);
  t.true(Date.now() - started >= 200, 'not before the deadline');
  t.is(await pubackCode(c, 'ok/a'), 0);
  const denial = b.audit.records.find((r) => r.event === 'publish' && r.decision === 'deny');
  t.like(denial, { topic: 'hang/a', reasonCode: ReasonCode.UnspecifiedError, decidedBy: 'remote' });
  t.regex(String(denial?.reason), /did not answer within 250 ms/);
});

test('a late answer is ignored: an allow that comes after the deadline does not let the publish through', async (t) => {
  const b = await broker(t, 'publish');
  const { got, pub } = await subAndPub(t, b.port, 'slow/#');
  t.is(await pubackCode(pub, 'slow/a'), ReasonCode.UnspecifiedError);
  await delay(600);
  t.deepEqual(got, []);
});

test('a subscription whose authorizer never answers gets SUBACK 0x80 after the deadline; the connection stays usable', async (t) => {
  const b = await broker(t, 'subscribe');
  const c = await connect(b.port, { protocolVersion: 5, clientId: 's' });
  t.teardown(() => c.end(true));
  t.is(await subackCode(c, 'hang/#'), ReasonCode.UnspecifiedError);
  t.is(await subackCode(c, 'ok/#'), 1);
  t.like(b.audit.records.find((r) => r.event === 'subscribe' && r.decision === 'deny'), { topic: 'hang/#', decidedBy: 'remote' });
});

test('a delivery whose authorizer never answers is withheld after the deadline, and the subscriber\'s queue goes on', async (t) => {
  const b = await broker(t, 'deliver');
  const { got, pub } = await subAndPub(t, b.port, '#');
  t.is(await pubackCode(pub, 'hang/a'), 0);
  t.is(await pubackCode(pub, 'ok/a'), 0); // queued behind the undecided one
  await delay(150);
  t.deepEqual(got, [], 'deliveries are decided one at a time: ok/a waits');
  await delay(500);
  t.deepEqual(got, ['ok/a']);
  t.like(b.audit.records.find((r) => r.event === 'deliver' && r.decision === 'deny'), { topic: 'hang/a', decidedBy: 'remote' });
});
