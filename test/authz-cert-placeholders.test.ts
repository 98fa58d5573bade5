/**
 * `%{cert.cn}` and `%{cert.san.uri}` policy placeholders, with real client certificates issued
 * by `portcullis pki` and presented over an mTLS listener: each device reaches only its own
 * subtree, and a certificate value that fails the placeholder check grants nothing.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import type { MqttClient } from 'mqtt';
import { messagesWithin, nextMessages, subackCode, writePolicyDir } from './helpers.ts';
import { connectTls, pki, startTlsBroker, type Fleet } from './tls-fixtures.ts';

const POLICY = [
  'p, *, cn/%{cert.cn}/#, publish, allow',
  'p, *, cn/%{cert.cn}/#, read, allow',
  'p, *, uri/%{cert.san.uri}/#, publish, allow',
  'p, *, uri/%{cert.san.uri}/#, read, allow',
  'p, user:watcher, #, read, allow',
  '',
].join('\n');

async function setup(t: { teardown(fn: () => unknown): void }) {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-certph-'));
  const dir = path.join(root, 'pki');
  await pki(dir, 'init', '--cn', 'Placeholder CA');
  await pki(dir, 'server', '--dns', 'localhost', '--ip', '127.0.0.1');
  // Two URIs without '/' (they substitute), and one SPIFFE id (it holds '/', so it never does).
  await pki(dir, 'client', '--cn', 'dev-a', '--san', 'uri:urn:fleet:dev-a', '--san', 'uri:urn:fleet:alias-a');
  await pki(dir, 'client', '--cn', 'dev-b', '--san', 'uri:spiffe://fleet.example/dev-b');
  await pki(dir, 'client', '--cn', 'watcher');
  const client = (name: string) => ({ cert: path.join(dir, 'clients', `${name}.crt`), key: path.join(dir, 'clients', `${name}.key`) });
  const fleet = { chain: path.join(dir, 'ca-chain.crt'), client } as unknown as Fleet;
  const files = writePolicyDir(POLICY);
  const b = await startTlsBroker(
    [
      {
        name: 'mtls',
        type: 'tls',
        host: '127.0.0.1',
        port: 0,
        cert: path.join(dir, 'server.crt'),
        key: path.join(dir, 'private', 'server.key'),
        ca: path.join(dir, 'ca-chain.crt'),
        requireClientCert: true,
        auth: [{ provider: 'certificate', username: 'cn', clientId: 'cn', bindClientId: true }],
      },
    ],
    { authorizers: [{ type: 'casbin', model: files.model, policy: files.policy, watch: false }] },
  );
  const clients: MqttClient[] = [];
  t.teardown(async () => {
    for (const c of clients) c.end(true);
    await b.stop();
    files.cleanup();
    fs.rmSync(root, { recursive: true, force: true });
  });
  const open = async (device: string) => {
    const c = await connectTls(b.ports.mtls as number, fleet, { device, protocolVersion: 5 });
    clients.push(c);
    return c;
  };
  return { b, open };
}

const puback = (c: MqttClient, topic: string) =>
  new Promise<number>((resolve) =>
    c.publish(topic, 'x', { qos: 1 }, (err, packet) => resolve(err ? ((err as Error & { code?: number }).code ?? -1) : ((packet as { reasonCode?: number } | undefined)?.reasonCode ?? 0))),
  );

test('%{cert.cn} grants a device its own subtree and nothing of another device', async (t) => {
  const { b, open } = await setup(t);
  const a = await open('dev-a');
  const bdev = await open('dev-b');
  const watcher = await open('watcher');
  t.is(await subackCode(watcher, 'cn/#'), 1);

  t.is(await subackCode(a, 'cn/dev-a/#'), 1);
  t.is(await subackCode(a, 'cn/dev-b/#'), 0x87, 'a device may not subscribe to another CN subtree');
  t.is(await subackCode(a, 'cn/+/#'), 0x87, 'nor to every device');

  const got = nextMessages(watcher, 1);
  t.is(await puback(a, 'cn/dev-a/t'), 0);
  t.is((await got)[0]?.topic, 'cn/dev-a/t');
  t.is(await puback(a, 'cn/dev-b/t'), 0x87, 'publishing into another CN subtree is refused with 0x87');
  t.is(await puback(bdev, 'cn/dev-b/t'), 0);

  // dev-a's own subscription sees its own message only.
  const seen = messagesWithin(a, 400);
  await puback(a, 'cn/dev-a/again');
  t.deepEqual((await seen).map((m) => m.topic), ['cn/dev-a/again']);
  t.true(b.audit.records.some((r) => r.event === 'publish' && r.decision === 'deny' && r.topic === 'cn/dev-b/t' && r.username === 'dev-a'));
});

test('%{cert.san.uri} substitutes each URI SAN of the real certificate; a SPIFFE id with / grants nothing', async (t) => {
  const { b, open } = await setup(t);
  const a = await open('dev-a');
  const bdev = await open('dev-b');
  t.is(await subackCode(a, 'uri/urn:fleet:dev-a/#'), 1);
  t.is(await subackCode(a, 'uri/urn:fleet:alias-a/#'), 1, 'the second URI SAN substitutes too');
  t.is(await subackCode(a, 'uri/urn:fleet:dev-b/#'), 0x87);
  t.is(await puback(a, 'uri/urn:fleet:alias-a/x'), 0);

  // dev-b's URI is spiffe://fleet.example/dev-b: it holds '/', so no rule with %{cert.san.uri} applies.
  t.is(await subackCode(bdev, 'uri/spiffe:/#'), 0x87);
  t.is(await subackCode(bdev, 'uri/#'), 0x87);
  t.is(await puback(bdev, 'uri/spiffe://fleet.example/dev-b/x'), 0x87);
  t.true(b.audit.records.some((r) => r.event === 'subscribe' && r.decision === 'deny' && r.username === 'dev-b'));
});
