/**
 * Asynchronous deliver decisions (an authorizer answering with a promise) against the cases an
 * outside review found: the queue never wedges when the delivery being decided leaves the queue
 * (an overflow evicts it), an answer is never reused for a later connection after a revocation,
 * a shared-group denial is not handed back and forth between members, and a member that goes
 * away while its answer is out does not make a message arrive twice at another member.
 */
import test from 'ava';
import { createBroker, type ConfigInput } from '../src/index.ts';
import type { Authorizer } from '../src/authz/types.ts';
import type { Decision } from '../src/auth/types.ts';
import { silentLogger } from '../src/log.ts';
import { connectCollecting, delay } from './helpers.ts';

const ALLOW: Decision = { kind: 'allow', value: undefined };
const DENY: Decision = { kind: 'deny', reason: 0x87, detail: 'remote policy says no' };

async function start(t: { teardown(fn: () => unknown): void }, remote: Authorizer, extra: Partial<ConfigInput> = {}): Promise<number> {
  const config: ConfigInput = {
    listeners: [{ name: 't', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }],
    authorizers: [],
    sys: { intervalSeconds: 0 },
    audit: { sink: 'none' },
    store: { type: 'memory' },
    ...extra,
  };
  const broker = createBroker(config, { logger: silentLogger(), authorizers: [remote] });
  t.teardown(() => broker.stop());
  return (await broker.start()).listeners[0]?.port ?? 0;
}

const later = (d: Decision, ms: number): Promise<Decision> => new Promise((r) => setTimeout(() => r(d), ms));

async function until(done: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!done() && Date.now() < end) await delay(20);
}

test('the delivery being decided evicted by a full queue: the queue goes on (later QoS 1 messages arrive)', async (t) => {
  const remote: Authorizer = { id: 'remote', authorize: (_w, action) => (action === 'deliver' ? later(ALLOW, 200) : ALLOW) };
  const port = await start(t, remote, { limits: { maxQueuedMessages: 4 } } as Partial<ConfigInput>);
  const sub = await connectCollecting(port, { clientId: 'sub' });
  t.teardown(() => sub.client.end(true));
  await sub.client.subscribeAsync('q/#', { qos: 1 });
  const pub = await connectCollecting(port, { clientId: 'pub' });
  t.teardown(() => pub.client.end(true));
  for (let i = 0; i < 4; i++) pub.client.publish('q/x', `zero-${i}`, { qos: 0 });
  await delay(30);
  await pub.client.publishAsync('q/x', 'one-a', { qos: 1 }); // evicts the oldest QoS 0: the one being decided
  await delay(400);
  await pub.client.publishAsync('q/x', 'one-b', { qos: 1 });
  await until(() => sub.received.includes('one-a') && sub.received.includes('one-b'), 3000);
  t.true(sub.received.includes('one-a') && sub.received.includes('one-b'), `received ${JSON.stringify(sub.received)}`);
});

test('an answer asked for one connection is not used for the next one: a revoked topic is not delivered after a reconnect', async (t) => {
  let revoked = false;
  let secretAsked = 0;
  const remote: Authorizer = {
    id: 'remote',
    authorize: (_w, action, topic) => {
      if (action !== 'deliver') return ALLOW;
      if (topic === 't/secret') {
        secretAsked++;
        return later(revoked ? DENY : ALLOW, 10); // the answer as of the moment it was asked
      }
      return later(ALLOW, 300);
    },
  };
  const port = await start(t, remote, { limits: { queueQos0: true } } as Partial<ConfigInput>);
  const device = { clientId: 'dev', clean: false, properties: { sessionExpiryInterval: 600 } };
  const first = await connectCollecting(port, device);
  await first.client.subscribeAsync('t/#', { qos: 1 });
  const pub = await connectCollecting(port, { clientId: 'pub' });
  t.teardown(() => pub.client.end(true));
  await pub.client.publishAsync('t/h', 'h', { qos: 1 }); // its answer is pending
  pub.client.publish('t/secret', 'secret', { qos: 0 }); // queued behind it
  await delay(50);
  first.client.end(true);
  await delay(100);
  revoked = true;
  await delay(400);
  const second = await connectCollecting(port, device);
  t.teardown(() => second.client.end(true));
  await until(() => second.received.includes('h'), 3000);
  await delay(200);
  const all = [...first.received, ...second.received];
  t.true(all.includes('h'), `received ${JSON.stringify(all)}`);
  t.false(second.received.includes('secret'), `delivered after the revocation (asked ${secretAsked} times): ${JSON.stringify(second.received)}`);
});

test('a shared-group message every member is denied asynchronously is not handed back and forth', async (t) => {
  let asked = 0;
  const remote: Authorizer = {
    id: 'remote',
    authorize: (_w, action, topic) => {
      if (action === 'deliver' && topic === 'g/secret') {
        asked++;
        return later(DENY, 20);
      }
      return ALLOW;
    },
  };
  const port = await start(t, remote);
  const a = await connectCollecting(port, { clientId: 'a' });
  const b = await connectCollecting(port, { clientId: 'b' });
  t.teardown(() => a.client.end(true));
  t.teardown(() => b.client.end(true));
  await a.client.subscribeAsync('$share/g/g/#', { qos: 1 });
  await b.client.subscribeAsync('$share/g/g/#', { qos: 1 });
  const pub = await connectCollecting(port, { clientId: 'pub' });
  t.teardown(() => pub.client.end(true));
  await pub.client.publishAsync('g/secret', 'x', { qos: 1 });
  await delay(1000);
  t.true(asked <= 2, `asked ${asked} times in 1 s for one message`);
  t.deepEqual([...a.received, ...b.received], []);
});

test('a shared-group member that goes away while its answers are out: no message reaches another member twice', async (t) => {
  const remote: Authorizer = {
    id: 'remote',
    authorize: (who, action) => (action === 'deliver' && who.clientId === 'a' ? later(DENY, 300) : ALLOW),
  };
  const port = await start(t, remote);
  const a = await connectCollecting(port, { clientId: 'a' });
  const b = await connectCollecting(port, { clientId: 'b' });
  t.teardown(() => b.client.end(true));
  await a.client.subscribeAsync('$share/g/s/#', { qos: 1 });
  await b.client.subscribeAsync('$share/g/s/#', { qos: 1 });
  const pub = await connectCollecting(port, { clientId: 'pub' });
  t.teardown(() => pub.client.end(true));
  for (let i = 0; i < 6; i++) pub.client.publish('s/x', `m${i}`, { qos: 1 });
  await delay(30);
  a.client.end(true);
  await delay(800);
  const seen = b.received;
  t.is(new Set(seen).size, seen.length, `a message arrived twice: ${JSON.stringify(seen)}`);
});
