/**
 * A password-file reload during a running argon2 check: the cache is cleared by the reload, and
 * the check that was already hashing must not write the old password back into it (nor pass
 * with it): the old password is refused 0x86 after the reload, the new one connects.
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { connect, delay, startBroker } from './helpers.ts';
import { passwd, refusalCode, tempDir } from './auth-support.ts';

test('a password changed by a reload during an in-flight verification is not kept valid by the credential cache', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'passwords');
  const rotated = path.join(dir, 'passwords.new');
  // A slow hash (about a few hundred ms) so the reload lands while the old password is being checked.
  t.is(passwd(['add', file, 'alice', '--memory', '65536', '--time', '6'], 'old-secret\n').code, 0);
  t.is(passwd(['add', rotated, 'alice'], 'new-secret\n').code, 0);
  const tb = await startBroker(
    {
      listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'password', file, watch: false }] }],
      credentialCache: { enabled: true, ttlMs: 60_000 },
      authGuard: { enabled: false },
    },
  );
  t.teardown(() => tb.stop());

  // The CONNECT with the old password starts its argon2 verification...
  const inFlight = connect(tb.port, { protocolVersion: 5, clientId: 'old-1', username: 'alice', password: 'old-secret', connectTimeout: 10_000 }).then(
    (c) => (c.end(true), 'connected'),
    (e: { code?: number }) => `refused ${e.code}`,
  );
  await delay(60);
  // ...and the password is rotated (the operator revokes the old one) while it runs.
  fs.copyFileSync(rotated, file);
  const [report] = await tb.broker.reloadCredentials('SIGHUP');
  t.true(report?.ok, 'the rotated file loaded');
  t.log('connect that straddled the reload:', await inFlight);

  // After the reload, the old password must be refused, and the new one accepted.
  const old = await refusalCode(tb.port, { protocolVersion: 5, clientId: 'old-2', username: 'alice', password: 'old-secret' });
  t.is(old.code, 0x86, `the revoked password still connects after the reload (${old.message})`);
  const fresh = await refusalCode(tb.port, { protocolVersion: 5, clientId: 'new-1', username: 'alice', password: 'new-secret' });
  t.is(fresh.code, 0, 'the new password connects');
});

test('control: the same rotation after the verification finished revokes the old password', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'passwords');
  const rotated = path.join(dir, 'passwords.new');
  t.is(passwd(['add', file, 'alice'], 'old-secret\n').code, 0);
  t.is(passwd(['add', rotated, 'alice'], 'new-secret\n').code, 0);
  const tb = await startBroker({
    listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'password', file, watch: false }] }],
    credentialCache: { enabled: true, ttlMs: 60_000 },
    authGuard: { enabled: false },
  });
  t.teardown(() => tb.stop());
  const c = await connect(tb.port, { protocolVersion: 5, clientId: 'old-1', username: 'alice', password: 'old-secret' });
  c.end(true);
  fs.copyFileSync(rotated, file);
  t.true((await tb.broker.reloadCredentials('SIGHUP'))[0]?.ok);
  t.is((await refusalCode(tb.port, { protocolVersion: 5, clientId: 'old-2', username: 'alice', password: 'old-secret' })).code, 0x86);
});
