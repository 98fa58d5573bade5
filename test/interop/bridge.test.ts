/**
 * An edge Mosquitto (Debian's mosquitto, its own process and configuration) bridges to a
 * Portcullis process over mTLS, as in docs/bridge.md. The bridge logs in with its client
 * certificate (CN = user name) and is authorized like any client: messages flow both ways under
 * its principal, and what the policy denies it does not pass.
 *
 * try_private true sends protocol level 0x84 (the bridge bit): Portcullis then reads the
 * bridge's subscriptions as no-local and retain-as-published, as Mosquitto does, so a message
 * on a topic bridged both ways is not echoed back to the edge, and a retained message reaches
 * the edge retained. try_private false: an ordinary client, with neither. An MQTT 5 bridge asks
 * for both with its subscription options, and behaves as the bridge-bit bridge.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { freePort } from '../helpers.ts';
import { type BrokerProcess, root, startBrokerProcess, tempDir } from './broker-process.ts';
import { requireTool } from './matrix.ts';
import { delay, haveMosquittoBroker, haveMosquittoClients, type InteropPki, killClients, launch, makePki, MOSQUITTO, MOSQUITTO_PUB, MOSQUITTO_SUB, run, type Running } from './clients.ts';

const CENTRAL = { username: 'central', password: 'central-pw-1' };

/** The recipe's policy: each edge bridge owns edges/<its CN>/...; one topic each way is denied. */
const POLICY = `
g, user:bridge-edge-1, role:edge-bridge
g, user:bridge-edge-2, role:edge-bridge
g, user:bridge-edge-3, role:edge-bridge
# up: the edge publishes; down: the edge reads; sync: both ways; status: the bridge's notification
p, role:edge-bridge, edges/%u/up/#, publish, allow
p, role:edge-bridge, edges/%u/status, publish, allow
p, role:edge-bridge, edges/%u/down/#, read, allow
p, role:edge-bridge, edges/%u/sync/#, *, allow
# never forwarded: an edge's secrets do not go up, and down/secret does not go down
p, role:edge-bridge, edges/+/up/secret/#, publish, deny
p, role:edge-bridge, edges/+/down/secret, deliver, deny
# central applications
p, user:central, edges/#, *, allow
`;

let dir = '';
let pki: InteropPki;
let central: BrokerProcess | undefined;
const skip = !haveMosquittoBroker || !haveMosquittoClients;

test.before(async () => {
  if (skip) return;
  dir = tempDir();
  pki = await makePki(dir, ['bridge-edge-1', 'bridge-edge-2', 'bridge-edge-3']);
  fs.writeFileSync(path.join(dir, 'policy.csv'), POLICY);
  central = await startBrokerProcess({
    cwd: dir,
    config: {
      listeners: [
        { name: 'apps', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'static-users', users: [CENTRAL] }] },
        {
          name: 'bridges',
          type: 'tls',
          host: '127.0.0.1',
          port: 0,
          cert: pki.serverCert,
          key: pki.serverKey,
          ca: pki.chain,
          requireClientCert: true,
          auth: [{ provider: 'certificate', username: 'cn', clientId: 'cn', bindClientId: true }],
        },
      ],
      authorizers: [{ type: 'casbin', model: path.join(root, 'policies', 'model.conf'), policy: path.join(dir, 'policy.csv'), watch: false }],
      audit: { sink: 'file', path: 'audit.jsonl' },
    },
  });
});

test.after.always(async () => {
  killClients();
  await central?.stop();
  if (dir !== '') fs.rmSync(dir, { recursive: true, force: true });
});

/** The edge Mosquitto's configuration: docs/bridge.md's recipe with this test's ports and files. */
function edgeConfig(port: number, cn: string, tryPrivate: boolean, version: string): string {
  const cert = pki.client(cn);
  return [
    // Mosquitto started as root drops to the user 'mosquitto', which cannot read the test's files.
    `user ${os.userInfo().username}`,
    'persistence false',
    'log_dest stderr',
    'log_type error',
    'log_type warning',
    'log_type notice',
    `listener ${port} 127.0.0.1`,
    'allow_anonymous true',
    '',
    'connection central',
    `address 127.0.0.1:${central?.port('bridges')}`,
    `bridge_cafile ${pki.ca}`,
    `bridge_certfile ${cert.cert}`,
    `bridge_keyfile ${cert.key}`,
    `remote_clientid ${cn}`,
    `try_private ${tryPrivate}`,
    `bridge_protocol_version ${version}`,
    'cleansession false',
    `notification_topic edges/${cn}/status`,
    'restart_timeout 1 5',
    `topic # out 1 up/ edges/${cn}/up/`,
    `topic # in 1 down/ edges/${cn}/down/`,
    `topic # both 1 sync/ edges/${cn}/sync/`,
    '',
  ].join('\n');
}

/** A mosquitto_sub that has its SUBACK (-d prints it); `-v` lines are "topic payload". */
async function subscriber(port: number, topics: string[], extra: string[] = []): Promise<Running> {
  const args = ['-h', '127.0.0.1', '-p', String(port), '-q', '1', '-v', '-d', ...extra];
  for (const t of topics) args.push('-t', t);
  const sub = launch(MOSQUITTO_SUB, args, 30_000);
  if (!(await sub.waitFor(/received SUBACK/))) throw new Error(`mosquitto_sub did not subscribe: ${sub.stdout()} ${sub.stderr()}`);
  return sub;
}

/** The "topic payload" lines a mosquitto_sub -v -d printed (the debug lines start with "Client"). */
const received = (sub: Running) =>
  sub
    .stdout()
    .split('\n')
    .filter((l) => l !== '' && !l.startsWith('Client '));

async function publish(port: number, topic: string, message: string, extra: string[] = []): Promise<void> {
  const r = await run(MOSQUITTO_PUB, ['-h', '127.0.0.1', '-p', String(port), '-q', '1', '-t', topic, '-m', message, ...extra]);
  if (r.code !== 0) throw new Error(`mosquitto_pub ${topic} failed: ${r.stderr}`);
}

async function until(predicate: () => boolean, ms = 10_000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > end) return false;
    await delay(20);
  }
  return true;
}

const bridges = [
  { cn: 'bridge-edge-1', tryPrivate: true, version: 'mqttv311', what: 'protocol level 0x84, the bridge bit' },
  { cn: 'bridge-edge-2', tryPrivate: false, version: 'mqttv311', what: 'an ordinary MQTT 3.1.1 client' },
  { cn: 'bridge-edge-3', tryPrivate: true, version: 'mqttv50', what: 'MQTT 5: No Local and Retain As Published per subscription' },
] as const;

for (const { cn, tryPrivate, version, what } of bridges) {
  // An MQTT 5 bridge asks for both options itself, so it behaves as a bridge-bit bridge.
  const asBridge = tryPrivate;
  test(`a Mosquitto ${version} bridge with try_private ${tryPrivate} (${what}) carries messages both ways over mTLS under its certificate's principal, and the policy stops what it denies`, async (t) => {
    if (!requireTool(t, !skip, 'mosquitto and mosquitto-clients') || central === undefined) return;
    const b = central;
    const edgeDir = fs.mkdtempSync(path.join(dir, `${cn}-`));
    const edgePort = await freePort();
    fs.writeFileSync(path.join(edgeDir, 'mosquitto.conf'), edgeConfig(edgePort, cn, tryPrivate, version));
    const edge = launch(MOSQUITTO, ['-c', path.join(edgeDir, 'mosquitto.conf')], 50_000);
    t.teardown(() => {
      if (edge.child.exitCode === null) edge.child.kill('SIGTERM');
    });

    // The bridge is connected and subscribed once Portcullis has audited its two remote subscriptions.
    for (const filter of [`edges/${cn}/down/#`, `edges/${cn}/sync/#`]) {
      const sub = await b.waitForAudit((r) => r.event === 'subscribe' && r.clientId === cn && r.topic === filter, 15_000);
      t.like(sub, { decision: 'allow', username: cn }, `the bridge subscribed to ${filter}: ${edge.stderr()}`);
    }
    const connect = b.audit().find((r) => r.event === 'connect' && r.clientId === cn && r.decision === 'allow');
    t.like(connect, { username: cn, authMethod: 'certificate', listener: 'bridges' }, 'the bridge is the principal of its certificate');

    const credentials = ['-u', CENTRAL.username, '-P', CENTRAL.password];
    const atEdge = await subscriber(edgePort, ['down/#', 'sync/#']);
    const atCentral = await subscriber(b.port('apps'), [`edges/${cn}/#`], credentials);

    // Edge → central. The denied topic goes first: had it passed, it would arrive before the rest.
    await publish(edgePort, 'up/secret/key', 'must stay at the edge');
    await publish(edgePort, 'up/telemetry', '21.5');
    await publish(edgePort, 'sync/from-edge', 'e');
    // Central → edge, likewise.
    await publish(b.port('apps'), `edges/${cn}/down/secret`, 'must stay central', credentials);
    await publish(b.port('apps'), `edges/${cn}/down/command`, 'reboot', credentials);
    await publish(b.port('apps'), `edges/${cn}/sync/from-central`, 'c', credentials);

    const upDone = await until(() => received(atCentral).includes(`edges/${cn}/sync/from-edge e`));
    const downDone = await until(() => received(atEdge).includes('sync/from-central c'));
    t.true(upDone && downDone, `edge saw ${JSON.stringify(received(atEdge))}, central saw ${JSON.stringify(received(atCentral))}`);
    await delay(500); // room for an echo or a stray message to show up

    t.true(received(atCentral).includes(`edges/${cn}/up/telemetry 21.5`), 'edge → central, through the bridge');
    t.true(received(atEdge).includes('down/command reboot'), 'central → edge, through the bridge');
    t.false(received(atCentral).some((l) => l.startsWith(`edges/${cn}/up/secret`)), 'the bridge may not publish edges/+/up/secret/#');
    t.false(received(atEdge).some((l) => l.startsWith('down/secret')), 'nothing on edges/+/down/secret is delivered to the bridge');
    t.like(await b.waitForAudit((r) => r.event === 'publish' && r.clientId === cn && r.decision === 'deny'), { topic: `edges/${cn}/up/secret/key`, reasonCode: 0x87, username: cn });
    t.like(await b.waitForAudit((r) => r.event === 'deliver' && r.clientId === cn && r.decision === 'deny'), { topic: `edges/${cn}/down/secret`, reasonCode: 0x87 });

    // A message on a topic bridged both ways, published at the edge, comes back from Portcullis
    // only when the bridge's subscription is not no-local: once with the bridge bit, twice without.
    const echoes = received(atEdge).filter((l) => l === 'sync/from-edge e').length;
    t.is(echoes, asBridge ? 1 : 2, asBridge ? 'no-local: the edge\'s own message is not echoed back' : 'an ordinary client gets its own message back');

    // A retained message published centrally while the bridge is subscribed reaches the edge with
    // RETAIN set only with retain-as-published (the bridge bit), so only then does the edge keep it.
    await publish(b.port('apps'), `edges/${cn}/down/config`, 'v2', [...credentials, '-r']);
    t.true(await until(() => received(atEdge).includes('down/config v2')), 'the live message reaches the edge');
    const late = await run(MOSQUITTO_SUB, ['-h', '127.0.0.1', '-p', String(edgePort), '-t', 'down/config', '-C', '1', '-W', '2', '-v']);
    t.is(late.stdout.trim(), asBridge ? 'down/config v2' : '', asBridge ? 'the edge kept it as retained' : 'the edge did not see it as retained');

    edge.child.kill('SIGTERM');
    await edge.exit;
    atEdge.child.kill('SIGTERM');
    atCentral.child.kill('SIGTERM');
  });
}
