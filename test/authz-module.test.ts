/** Pluggable authorizers: the example module in docs/ loads from the configuration and decides, in a chain with Casbin. */
import test from 'ava';
import { createBroker } from '../src/index.ts';
import { silentLogger } from '../src/log.ts';
import { connect, messagesWithin, nextMessages, startBroker, writePolicyDir } from './helpers.ts';

test('the example authorizer module loads from the configuration and decides before Casbin', async (t) => {
  const files = writePolicyDir('p, *, plant/#, publish, allow\np, *, plant/#, read, allow\n');
  const b = await startBroker({
    listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users: [{ username: 'u', password: 'p' }] }] }],
    authorizers: [
      { type: 'module', path: 'docs/examples/authorizer-example.ts', options: { blockedPrefix: 'plant/line1/' } },
      { type: 'casbin', model: files.model, policy: files.policy, watch: false },
    ],
  });
  t.teardown(async () => {
    await b.stop();
    files.cleanup();
  });
  const c = await connect(b.port, { username: 'u', password: 'p', protocolVersion: 5 });
  await c.subscribeAsync('plant/#');
  const codes: number[] = [];
  c.on('packetreceive', (p) => {
    if (p.cmd === 'puback') codes.push(p.reasonCode ?? 0);
  });
  const got = nextMessages(c, 1);
  await c.publishAsync('plant/line1/x', 'paused', { qos: 1 }).catch(() => undefined);
  await c.publishAsync('plant/line2/x', 'fine', { qos: 1 });
  t.is(codes[0], 0x87);
  t.deepEqual((await got).map((m) => m.payload), ['fine']);
  t.deepEqual(await messagesWithin(c, 200), []);
  const denied = b.audit.records.find((r) => r.event === 'publish' && r.decision === 'deny');
  t.like(denied, { decidedBy: 'module:docs/examples/authorizer-example.ts', topic: 'plant/line1/x' });
  t.regex(denied?.reason ?? '', /paused for maintenance/);
  c.end(true);
});

test('a module that cannot be loaded or exports no factory stops the start with a clear error', async (t) => {
  for (const [path, message] of [
    ['docs/examples/no-such-module.ts', /cannot load authorizer module docs\/examples\/no-such-module\.ts/],
    ['package.json', /cannot load authorizer module|must export a factory/],
  ] as const) {
    const broker = createBroker(
      { listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }], authorizers: [{ type: 'module', path }], sys: { intervalSeconds: 0 }, audit: { sink: 'none' }, store: { type: 'memory' } },
      { logger: silentLogger() },
    );
    const err = await t.throwsAsync(broker.start());
    t.regex(err?.message ?? '', message);
    t.is((err as { code?: string }).code, 'ERR_PORTCULLIS_AUTHORIZER_MODULE');
    await broker.stop();
  }
});
