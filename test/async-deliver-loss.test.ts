/**
 * An authorizer that answers `deliver` asynchronously (a module authorizer calling a policy
 * service): a queued QoS 1 message of a persistent session stays first in the queue, and in the
 * store, until its decision comes back, so a subscriber that disconnects meanwhile gets it on its
 * next connection (it was once taken off the queue before the decision and lost).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { createBroker, type ConfigInput } from '../src/index.ts';
import type { Authorizer } from '../src/authz/types.ts';
import type { Decision } from '../src/auth/types.ts';
import { silentLogger } from '../src/log.ts';
import { connectCollecting, delay } from './helpers.ts';

async function scenario(t: ExecutionContext, asyncDeliver: boolean): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-async-deliver-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  let slow = false;
  // Allows everything; `deliver` answers after 300 ms while `slow` is on (a remote policy service).
  const remote: Authorizer = {
    id: 'remote',
    authorize: (_who, action): Decision | Promise<Decision> =>
      action === 'deliver' && asyncDeliver && slow ? new Promise<Decision>((r) => setTimeout(() => r({ kind: 'allow', value: undefined }), 300)) : { kind: 'allow', value: undefined },
  };
  const config: ConfigInput = {
    listeners: [{ name: 't', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }],
    authorizers: [],
    sys: { intervalSeconds: 0 },
    audit: { sink: 'none' },
    store: { path: path.join(dir, 'store') },
  };
  const broker = createBroker(config, { logger: silentLogger(), authorizers: [remote] });
  t.teardown(() => broker.stop());
  const port = (await broker.start()).listeners[0]?.port ?? 0;
  const device = { clientId: 'dev-1', clean: false, properties: { sessionExpiryInterval: 3600 } };
  const first = await connectCollecting(port, device);
  await first.client.subscribeAsync('cmd/#', { qos: 1 });
  await first.client.endAsync();
  const ops = (await connectCollecting(port, { clientId: 'ops' })).client;
  for (const m of ['m1', 'm2', 'm3']) await ops.publishAsync('cmd/dev-1', m, { qos: 1 });
  await ops.endAsync();

  // The device comes back; its queue is pumped with the decisions pending; the link drops at once.
  slow = true;
  const second = await connectCollecting(port, device);
  second.client.end(true);
  await delay(600);
  slow = false;

  const third = await connectCollecting(port, device);
  const end = Date.now() + 3000;
  while (new Set([...second.received, ...third.received]).size < 3 && Date.now() < end) await delay(20);
  await third.client.endAsync();
  const all = new Set([...second.received, ...third.received]);
  t.deepEqual([...all].sort(), ['m1', 'm2', 'm3'], `QoS 1 messages lost: received ${JSON.stringify(third.received)} after the reconnect`);
}

test('control: with a synchronous deliver decision the same disconnect loses nothing', (t) => scenario(t, false));

test('a queued QoS 1 message survives a disconnect while its asynchronous deliver decision is pending', (t) => scenario(t, true));
