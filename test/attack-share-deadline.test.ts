/**
 * Attacks on authzDeadlineMs (src/authz/chain.ts, docs/policies.md "Your own authorizer"): a
 * deadline longer than a Node.js timer can wait, and a deadline that passes for a question asked
 * for a connection that has since been replaced.
 */
import test from 'ava';
import type { Authenticator, Decision } from '../src/auth/types.ts';
import type { Authorizer } from '../src/authz/types.ts';
import { ReasonCode } from '../src/protocol/reason-codes.ts';
import { pubackCode } from './authz-support.ts';
import { connect, delay, startBroker, subackCode } from './helpers.ts';

const ALLOW: Decision = { kind: 'allow', value: undefined };
const after = (d: Decision, ms: number): Promise<Decision> => new Promise((r) => setTimeout(() => r(d), ms));

test('an authzDeadlineMs longer than a Node.js timer can wait (about 24.8 days) is not a deadline of 1 ms: an answer that takes 100 ms is used', async (t) => {
  // 30 days: an operator's "practically never". setTimeout fires after 1 ms for anything above 2^31 - 1.
  const remote: Authorizer = { id: 'remote', authorize: () => after(ALLOW, 100) };
  const b = await startBroker({ authorizers: [], authzDeadlineMs: 30 * 24 * 3600 * 1000 }, { authorizers: [remote] });
  t.teardown(() => b.stop());
  const c = await connect(b.port, { protocolVersion: 5, clientId: 'long-deadline' });
  t.teardown(() => c.end(true));
  t.is(await subackCode(c, 'slow/#'), 1);
  t.is(await pubackCode(c, 'slow/a'), 0);
  t.deepEqual(
    b.audit.records.filter((r) => r.decision === 'deny').map((r) => r.reason),
    [],
    'nothing denied as late',
  );
});

// Found by an attack: a deliver decision asked for a connection that has since been replaced was
// applied when it was a denial (the deadline's included) and withdrew the message, where
// docs/policies.md promises it is asked again for the next connection (src/broker/delivery.ts `decided`).
test('a persistent subscriber that reconnects while its delivery decision is out: the deadline that passes for the old connection does not withdraw the message; it is asked again for the new connection and delivered', async (t) => {
  const asked: string[] = [];
  let first = true;
  // The policy service hangs on its first question (a blip) and answers at once afterwards.
  const remote: Authorizer = {
    id: 'remote',
    authorize: (_w, action, topic) => {
      if (action !== 'deliver') return ALLOW;
      asked.push(topic);
      if (first) {
        first = false;
        return new Promise<Decision>(() => undefined);
      }
      return Promise.resolve(ALLOW);
    },
  };
  const b = await startBroker({ authorizers: [], authzDeadlineMs: 500 }, { authorizers: [remote] });
  t.teardown(() => b.stop());
  const opts = { protocolVersion: 5 as const, clientId: 'dl-sub', clean: false, properties: { sessionExpiryInterval: 600 } };
  const s1 = await connect(b.port, opts);
  await s1.subscribeAsync('dl/#', { qos: 1 });
  const p = await connect(b.port, { protocolVersion: 5, clientId: 'dl-pub' });
  t.teardown(() => p.end(true));
  t.is(await pubackCode(p, 'dl/x', 'kept'), 0);
  await delay(100); // the question for s1's connection is out
  s1.end(true);
  await delay(100);
  const got: string[] = [];
  const s2 = await connect(b.port, opts);
  t.teardown(() => s2.end(true));
  s2.on('message', (topic, payload) => got.push(`${topic} ${payload.toString()}`));
  await delay(1200); // the deadline passed for the old question; the new connection's answer comes at once
  t.deepEqual(got, ['dl/x kept'], `asked ${asked.length} time(s); a denial audited: ${JSON.stringify(b.audit.records.filter((r) => r.event === 'deliver' && r.decision === 'deny').map((r) => [r.reasonCode === ReasonCode.UnspecifiedError, r.reason]))}`);
});

test('an authDeadlineMs longer than a Node.js timer can wait is not a deadline of 1 ms either: a provider that answers in 100 ms admits the client', async (t) => {
  const slow: Authenticator = {
    id: 'slow',
    authenticate: async (req) => {
      await delay(100);
      return { kind: 'allow', value: { clientId: req.clientId, username: 'svc', method: 'password', provider: 'slow', roles: [], attributes: {} } };
    },
  };
  const b = await startBroker(
    { authDeadlineMs: 30 * 24 * 3600 * 1000, listeners: [{ name: 't', type: 'tcp', host: '127.0.0.1', port: 0, auth: [] }] },
    { authenticators: { t: [slow] } },
  );
  t.teardown(() => b.stop());
  const c = await connect(b.port, { protocolVersion: 5, clientId: 'slow-auth' });
  t.teardown(() => c.end(true));
  t.true(c.connected);
});
