/**
 * The login guard's own cost on a warm password connect, this tree against a base tree, in one
 * process: each tree's listener authenticator (failed-login guard, password provider with the
 * credential cache warm, identity rules) decides the same CONNECT requests, in alternating
 * rounds, and the CPU time per decision is compared. This isolates the guard from the rest of a
 * connect, whose noise on a shared machine is larger than the guard (bench/connect-ab.ts measures
 * the whole connect in broker processes).
 *
 *   npx tsx bench/guard-ab.ts --base ../portcullis-before [--rounds 15] [--n 200000]
 *
 * Two client-id patterns: a fresh client id on every connect (as bench/connect-ab.ts sends), and
 * a device that reconnects with its own client id.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const args = process.argv.slice(2);
const opt = (name: string, def: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? (args[i + 1] as string) : def;
};
const base = opt('base', '');
if (base === '') {
  console.log('Usage: npx tsx bench/guard-ab.ts --base DIR [--rounds 15] [--n 200000]');
  process.exit(2);
}
const rounds = Number(opt('rounds', '15'));
const n = Number(opt('n', '200000'));
const here = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

interface Decider {
  decide(req: unknown): unknown;
}

/** A tree's password listener with its default guard and a warm credential cache. */
async function build(tree: string, passwords: string): Promise<Decider> {
  const imp = (p: string) => import(pathToFileURL(path.join(tree, 'src', p)).href);
  const { parseConfig } = (await imp('config/schema.ts')) as typeof import('../src/config/schema.ts');
  const { AuthGuard } = (await imp('auth/guard.ts')) as typeof import('../src/auth/guard.ts');
  const { ListenerAuthenticator } = (await imp('auth/listener-auth.ts')) as typeof import('../src/auth/listener-auth.ts');
  const { PasswordAuthenticator } = (await imp('auth/password/provider.ts')) as typeof import('../src/auth/password/provider.ts');
  const config = parseConfig({ listeners: [{ name: 'l', type: 'tcp', auth: [{ provider: 'password', file: passwords, watch: false }] }], credentialCache: { enabled: true } });
  const listener = config.listeners[0] as (typeof config.listeners)[number];
  const provider = new PasswordAuthenticator(listener.auth[0] as never, config.credentialCache);
  await provider.init();
  const Guard = AuthGuard as unknown as new (...a: unknown[]) => { close(): void };
  const guard = new Guard(config.authGuard, () => {});
  const Listener = ListenerAuthenticator as unknown as new (...a: unknown[]) => Decider;
  const auth = new Listener([provider], config.authDeadlineMs, 'l', listener.identity, guard);
  // Warm the credential cache (one argon2 check).
  const first = auth.decide(request('warm-up'));
  if (first instanceof Promise) await first;
  return auth;
}

const peer = { listener: 'l', remoteAddress: '127.0.0.1', remotePort: 50000 };
const password = Buffer.from('bench-password-0123456789');
function request(clientId: string) {
  return { clientId, protocolVersion: 4, peer, username: 'bench', password };
}

/** CPU µs per decision over `n` decisions; every one must be a synchronous allow (a cache hit). */
function measure(auth: Decider, fresh: boolean, round: number): number {
  const ids = Array.from({ length: fresh ? n : 64 }, (_, i) => (fresh ? `bench-${round}-${i}` : `device-${i}`));
  const c0 = process.cpuUsage();
  for (let i = 0; i < n; i++) {
    const r = auth.decide(request(ids[fresh ? i : i & 63] as string)) as { decision?: { kind: string } };
    if (r instanceof Promise || r.decision?.kind !== 'allow') throw new Error('not a synchronous allow');
  }
  const c1 = process.cpuUsage(c0);
  return (c1.user + c1.system) / n;
}

const { hashPassword } = await import('../src/auth/password/hash.ts');
const { ARGON2_FLOOR } = await import('../src/config/auth-schema.ts');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-guard-ab-'));
try {
  const passwords = path.join(dir, 'passwords');
  fs.writeFileSync(passwords, `bench:${await hashPassword(password, ARGON2_FLOOR)}\n`, { mode: 0o600 });
  const sides = [
    { name: 'base', auth: await build(path.resolve(base), passwords) },
    { name: 'this tree', auth: await build(here, passwords) },
  ];
  const median = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1] as number;
  for (const fresh of [true, false]) {
    const us: number[][] = [[], []];
    for (let r = 0; r < rounds; r++) for (let s = 0; s < 2; s++) us[s]!.push(measure(sides[(s + r) % 2 === 0 ? 0 : 1]!.auth, fresh, r * 2 + s) * 1);
    // Rounds alternate which side goes first; us[0] and us[1] are by position, so sort them back by side.
    const bySide: number[][] = [[], []];
    for (let r = 0; r < rounds; r++) for (let s = 0; s < 2; s++) bySide[(s + r) % 2 === 0 ? 0 : 1]!.push(us[s]![r]!);
    const [a, b] = [median(bySide[0]!), median(bySide[1]!)];
    console.log(
      `${fresh ? 'a fresh client id on every connect' : 'a device reconnecting with its client id'}: ` +
        `base ${a.toFixed(2)} µs, this tree ${b.toFixed(2)} µs per decision (medians of ${rounds} rounds of ${n}); difference ${(b - a).toFixed(2)} µs`,
    );
  }
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
