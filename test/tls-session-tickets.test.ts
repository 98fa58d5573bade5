/**
 * TLS session resumption over real loopback sockets. By default a listener issues no usable
 * session tickets, so a client that offers the session it was given gets a full handshake (with
 * its certificate) again, on TLS 1.3 and 1.2. With `sessionTickets: true` the session resumes,
 * and the gate still decides on the session's certificate: identity, audit record and the CRL.
 */
import fs from 'node:fs';
import tls from 'node:tls';
import test from 'ava';
import type { ConfigInput } from '../src/index.ts';
import { rawConnectPacket } from './helpers.ts';
import { type Fleet, type TlsTestBroker, fleetMtlsListener, makeFleet, pki, startTlsBroker, waitForAudit } from './tls-fixtures.ts';

let fleet: Fleet;
let b: TlsTestBroker;

test.before(async () => {
  fleet = await makeFleet('portcullis-tickets-');
  await pki(fleet.dir, 'revoke', fleet.client('device-4').cert);
  await pki(fleet.dir, 'crl');
  b = await startTlsBroker([
    fleetMtlsListener(fleet),
    { ...fleetMtlsListener(fleet), name: 'mtls-tickets', sessionTickets: true } as NonNullable<ConfigInput['listeners']>[number],
    { name: 'tls', type: 'tls', host: '127.0.0.1', port: 0, cert: fleet.serverCert, key: fleet.serverKey, auth: ['anonymous'] },
  ]);
});

test.after.always(async () => {
  await b?.stop();
});

interface Outcome {
  /** The handshake resumed the offered session. */
  reused: boolean;
  /** CONNACK return code, or null when the broker closed the connection first. */
  connack: number | null;
  /** The last session the server gave this connection (undefined: none). */
  session: Buffer | undefined;
}

/** One TLS connection: handshake (offering `session`), MQTT 3.1.1 CONNECT, CONNACK or close. */
function connectOnce(port: number, opts: { device?: string; clientId: string; session?: Buffer | undefined; maxVersion?: tls.SecureVersion }): Promise<Outcome> {
  const files = opts.device === undefined ? undefined : fleet.client(opts.device);
  return new Promise((resolve, reject) => {
    let session: Buffer | undefined;
    let reused = false;
    let got = Buffer.alloc(0);
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      servername: 'localhost',
      ca: fs.readFileSync(fleet.chain),
      ...(files ? { cert: fs.readFileSync(files.cert), key: fs.readFileSync(files.key) } : {}),
      ...(opts.session ? { session: opts.session } : {}),
      ...(opts.maxVersion ? { maxVersion: opts.maxVersion } : {}),
    });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error('no CONNACK or close within 5 s'));
    }, 5000);
    const done = (connack: number | null) => {
      clearTimeout(timer);
      socket.destroy();
      resolve({ reused, connack, session });
    };
    socket.on('session', (s: Buffer) => (session = s));
    socket.once('secureConnect', () => {
      reused = socket.isSessionReused();
      socket.write(rawConnectPacket(opts.clientId));
    });
    socket.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      // 3.1.1 CONNACK: 0x20 0x02 flags code. TLS 1.3 tickets arrive before it, so `session` is set.
      if (got.length >= 4 && got[0] === 0x20) done(got[3] as number);
    });
    socket.once('close', () => done(null));
    socket.once('error', () => done(null));
  });
}

test.serial('default: a TLS 1.3 client offering its session gets a full handshake, with its certificate checked again', async (t) => {
  const first = await connectOnce(b.ports.mtls as number, { device: 'device-1', clientId: 'device-1' });
  t.is(first.connack, 0);
  t.false(first.reused);
  // Without tickets, OpenSSL still sends TLS 1.3 "stateful" tickets, so the client has a session
  // to offer; offering it must not resume.
  t.truthy(first.session, 'the client got a session to offer');
  const second = await connectOnce(b.ports.mtls as number, { device: 'device-1', clientId: 'device-1', session: first.session });
  t.is(second.connack, 0);
  t.false(second.reused, 'the session was resumed although sessionTickets is off');
});

test.serial('default: TLS 1.2 issues no session ticket and does not resume a session id either', async (t) => {
  const first = await connectOnce(b.ports.tls as number, { clientId: 'tls12-a', maxVersion: 'TLSv1.2' });
  t.is(first.connack, 0);
  t.truthy(first.session, 'Node reports the TLS 1.2 session (its id) to the client');
  const second = await connectOnce(b.ports.tls as number, { clientId: 'tls12-b', session: first.session, maxVersion: 'TLSv1.2' });
  t.is(second.connack, 0);
  t.false(second.reused);
});

test.serial('sessionTickets: true resumes the session, and the gate still maps the certificate to the identity and audits it', async (t) => {
  const port = b.ports['mtls-tickets'] as number;
  const first = await connectOnce(port, { device: 'device-2', clientId: 'device-2' });
  t.is(first.connack, 0);
  t.truthy(first.session, 'a ticket was issued');
  const before = b.audit.records.length;
  const second = await connectOnce(port, { device: 'device-2', clientId: 'device-2', session: first.session });
  t.true(second.reused, 'the session was not resumed');
  t.is(second.connack, 0);
  const rec = await waitForAudit(b.audit, (r) => r.seq > before && r.event === 'connect' && r.decision === 'allow' && r.clientId === 'device-2');
  t.is(rec.username, 'device-2');
  t.is(rec.authMethod, 'certificate');
  t.regex(rec.certFingerprint ?? '', /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
  // The resumed session carries device-2's certificate, so binding still refuses another client id.
  const third = await connectOnce(port, { device: 'device-2', clientId: 'device-1', session: first.session });
  t.true(third.reused);
  t.is(third.connack, 2, '3.1.1 identifier rejected');
});

test.serial('sessionTickets: true: a certificate revoked after its session was issued is refused on resumption', async (t) => {
  const port = b.ports['mtls-tickets'] as number;
  const first = await connectOnce(port, { device: 'device-3', clientId: 'device-3' });
  t.is(first.connack, 0);
  t.truthy(first.session);
  // The device is revoked, the CRL republished and reloaded (SIGHUP), while its ticket is still valid.
  await pki(fleet.dir, 'revoke', fleet.client('device-3').cert);
  await pki(fleet.dir, 'crl');
  const before = b.audit.records.length;
  process.kill(process.pid, 'SIGHUP');
  await waitForAudit(b.audit, (r) => r.seq > before && r.event === 'reload' && r.decision === 'allow' && r.listener === 'mtls-tickets', 5000);
  const second = await connectOnce(port, { device: 'device-3', clientId: 'device-3', session: first.session });
  t.is(second.connack, null, 'a revoked device must not get a CONNACK, resumed or not');
  const rec = await waitForAudit(b.audit, (r) => r.seq > before && r.event === 'tls' && r.decision === 'deny' && r.listener === 'mtls-tickets');
  t.is(rec.detail?.refusal, 'revoked');
  t.false(b.audit.records.some((r) => r.seq > before && r.event === 'connect' && r.decision === 'allow' && r.clientId === 'device-3'));
});
