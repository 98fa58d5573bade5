import test from 'ava';
import { createBroker } from '../src/index.ts';
import { silentLogger } from '../src/log.ts';
import { connect, messagesWithin, nextMessages, startBroker } from './helpers.ts';

test('v5: DISCONNECT with an error reason (0x80) keeps the will and publishes it', async (t) => {
  const b = await startBroker();
  t.teardown(() => b.stop());
  const watcher = await connect(b.port, { protocolVersion: 5, clientId: 'watcher' });
  t.teardown(() => watcher.end(true));
  await watcher.subscribeAsync('wills/#', { qos: 1 });
  const dying = await connect(b.port, {
    protocolVersion: 5,
    clientId: 'dying',
    will: { topic: 'wills/dying', payload: Buffer.from('gone'), qos: 1, retain: false },
  });
  const got = nextMessages(watcher, 1);
  await new Promise<void>((resolve) => dying.end(false, { reasonCode: 0x80 }, () => resolve()));
  const [m] = await got;
  t.is(m?.topic, 'wills/dying');
  t.is(m?.payload, 'gone');
});

test('clients cannot publish to $SYS topics, even with allow-all: v5 PUBACK 0x87, nothing delivered, denial audited', async (t) => {
  const b = await startBroker();
  t.teardown(() => b.stop());
  const sub = await connect(b.port, { protocolVersion: 5, clientId: 'sys-watcher' });
  t.teardown(() => sub.end(true));
  await sub.subscribeAsync('$SYS/#', { qos: 1 });
  const pub = await connect(b.port, { protocolVersion: 5, clientId: 'forger' });
  t.teardown(() => pub.end(true));
  const quiet = messagesWithin(sub, 500);
  const ack = await new Promise<{ reasonCode?: number } | undefined>((resolve, reject) =>
    pub.publish('$SYS/broker/clients/connected', '9999', { qos: 1, retain: true }, (err, packet) => {
      if (err && (err as { code?: number }).code !== 0x87) reject(err);
      else resolve(err ? { reasonCode: (err as { code?: number }).code } : (packet as { reasonCode?: number } | undefined));
    }),
  );
  t.is(ack?.reasonCode, 0x87);
  t.deepEqual(await quiet, []);
  const denial = b.audit.records.find((r) => r.event === 'publish' && r.decision === 'deny' && r.topic === '$SYS/broker/clients/connected');
  t.truthy(denial);
  t.is(denial?.clientId, 'forger');
});

test('an audit path that cannot be opened is a configuration error naming audit.path', (t) => {
  const error = t.throws(() =>
    createBroker(
      { listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }], audit: { sink: 'file', path: '/dev/null/nope/audit.jsonl' } },
      { logger: silentLogger() },
    ),
  );
  t.is((error as { code?: string }).code, 'ERR_PORTCULLIS_CONFIG');
  t.regex(error?.message ?? '', /audit\.path/);
});

test('an audit path whose parent cannot be created fails fast with a configuration error, not a hang', (t) => {
  const started = Date.now();
  const error = t.throws(() =>
    createBroker(
      { listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }], audit: { sink: 'file', path: '/proc/portcullis-nope/audit.jsonl' } },
      { logger: silentLogger() },
    ),
  );
  t.is((error as { code?: string }).code, 'ERR_PORTCULLIS_CONFIG');
  t.regex(error?.message ?? '', /audit\.path/);
  t.true(Date.now() - started < 2000);
});
