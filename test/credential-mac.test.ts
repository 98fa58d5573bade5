/**
 * The credential cache's key: HMAC-SHA256 built from two one-shot hashes must equal Node's own
 * HMAC for every input, whatever was hashed before, and must not keep the password around.
 */
import { createHmac, randomBytes } from 'node:crypto';
import test from 'ava';
import { CredentialMac } from '../src/auth/credential-cache.ts';

function reference(key: Buffer, username: string, password: Buffer): string {
  const u = Buffer.from(username, 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32BE(u.length);
  return createHmac('sha256', key).update(len).update(u).update(password).digest('base64');
}

test('equals HMAC-SHA256 of len(user) ‖ user ‖ password for short, long, empty and multibyte inputs, in any order', (t) => {
  const key = randomBytes(32);
  const mac = new CredentialMac(key);
  const cases: [string, Buffer][] = [
    ['bench', Buffer.from('bench-password-0123456789')],
    ['', Buffer.alloc(0)],
    ['ü‍👩‍💻-device', Buffer.from('pässwörd', 'utf8')],
    ['a', randomBytes(300)], // longer than the first scratch buffer: it grows
    ['short', Buffer.from('x')], // after growing, a short input must not see the old tail
    ['x'.repeat(5000), randomBytes(70_000)],
    ['bench', Buffer.from('bench-password-0123456789')],
  ];
  for (let round = 0; round < 3; round++) {
    for (const [u, p] of round === 1 ? [...cases].reverse() : cases) t.is(mac.of(u, p), reference(key, u, p), `user ${u.slice(0, 20)}, ${p.length} password bytes`);
  }
  for (let i = 0; i < 200; i++) {
    const u = randomBytes(i % 40).toString('latin1');
    const p = randomBytes((i * 7) % 90);
    t.is(mac.of(u, p), reference(key, u, p));
  }
});

test('moving bytes between user name and password changes the key; another process key gives other keys', (t) => {
  const mac = new CredentialMac(Buffer.alloc(32, 1));
  t.not(mac.of('ab', Buffer.from('c')), mac.of('a', Buffer.from('bc')));
  t.not(new CredentialMac(Buffer.alloc(32, 2)).of('ab', Buffer.from('c')), mac.of('ab', Buffer.from('c')));
  t.throws(() => new CredentialMac(Buffer.alloc(65)), { message: /longer than one block/ });
});

test('the password is not left in the scratch buffer', (t) => {
  const mac = new CredentialMac();
  const password = Buffer.from('a-secret-that-must-not-linger');
  mac.of('device-7', password);
  const scratch = (mac as unknown as { inner: Buffer }).inner;
  t.is(scratch.indexOf(password), -1);
  t.is(scratch.indexOf(password.subarray(0, 8)), -1);
});
