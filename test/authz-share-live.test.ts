/**
 * `$share/GROUP/...` policy lines on a live broker: the broker tells the authorizer which group a
 * delivery goes out on, so a rule scoped to one group grants (or withholds) deliveries of that
 * group only, and a plain rule still covers every group.
 */
import test from 'ava';
import { connect, messagesWithin, nextMessages } from './helpers.ts';
import { casbinBroker, subscribeCodes } from './authz-support.ts';

const as = (user: string) => ({ username: user, password: `${user}-pw`, clientId: `${user}-${Math.random().toString(16).slice(2, 8)}`, protocolVersion: 5 as const });

test('a reader granted only $share/ingest/... gets its deliveries through that group, and nothing through a plain subscription or another group', async (t) => {
  const policy = [
    'p, user:worker, $share/ingest/telemetry/#, read, allow',
    'p, user:dev, telemetry/#, publish, allow',
  ].join('\n');
  const b = await casbinBroker(t, `${policy}\n`, { users: [{ username: 'worker' }, { username: 'dev' }] });
  const worker = await connect(b.port, as('worker'));
  t.deepEqual(await subscribeCodes(worker, ['$share/ingest/telemetry/#', 'telemetry/#', '$share/other/telemetry/#'], 1), [1, 0x87, 0x87]);
  const got = nextMessages(worker, 3);
  const dev = await connect(b.port, as('dev'));
  for (let i = 0; i < 3; i++) await dev.publishAsync(`telemetry/d${i}`, `m${i}`, { qos: 1 });
  t.deepEqual((await got).map((m) => m.payload).sort(), ['m0', 'm1', 'm2'], 'delivered through the ingest group');
  worker.end(true);
  dev.end(true);
});

test('a deny rule on $share/g1/shared/# withholds deliveries from group g1 only: plain subscribers and group g2 get them', async (t) => {
  const policy = [
    'p, *, shared/#, *, allow',
    'p, *, $share/+/shared/#, read, allow',
    'p, *, $share/g1/shared/#, read, deny',
  ].join('\n');
  const b = await casbinBroker(t, `${policy}\n`, { users: [{ username: 'a' }, { username: 'b' }, { username: 'c' }, { username: 'p' }] });
  const plain = await connect(b.port, as('a'));
  const g2 = await connect(b.port, as('b'));
  const g1 = await connect(b.port, as('c'));
  t.deepEqual(await subscribeCodes(plain, ['shared/#'], 1), [1]);
  t.deepEqual(await subscribeCodes(g2, ['$share/g2/shared/#'], 1), [1]);
  t.deepEqual(await subscribeCodes(g1, ['$share/g1/shared/#'], 1), [0x87], 'the deny covers the whole g1 filter');
  const plainGot = nextMessages(plain, 1);
  const g2Got = nextMessages(g2, 1);
  const g1Got = messagesWithin(g1, 500);
  const pub = await connect(b.port, as('p'));
  await pub.publishAsync('shared/x', 'hello', { qos: 1 });
  t.is((await plainGot)[0]?.payload, 'hello');
  t.is((await g2Got)[0]?.payload, 'hello');
  t.deepEqual(await g1Got, []);
  for (const c of [plain, g2, g1, pub]) c.end(true);
});
