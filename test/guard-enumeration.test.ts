/**
 * No user enumeration, with the login guard on and off: an unknown user name and a known one
 * with a wrong password get the same answer, are throttled alike, and take the same time. The
 * times are compared with a Mann-Whitney U test (two-sided, no assumption about their
 * distribution); a control shows the same test does tell apart a refusal without argon2.
 */
import fs from 'node:fs';
import path from 'node:path';
import anyTest, { type TestFn } from 'ava';
import { hashPassword } from '../src/auth/password/hash.ts';
import { ARGON2_FLOOR } from '../src/config/auth-schema.ts';
import { startBroker } from './helpers.ts';
import { refusalCode, tempDir } from './auth-support.ts';

const test = anyTest as TestFn;
const N = 30;

/** Two-sided p-value of the Mann-Whitney U test (normal approximation, ties averaged). */
function mannWhitneyP(a: number[], b: number[]): number {
  const all = [...a.map((v) => ({ v, g: 0 })), ...b.map((v) => ({ v, g: 1 }))].sort((x, y) => x.v - y.v);
  const ranks = new Array<number>(all.length);
  for (let i = 0; i < all.length; ) {
    let j = i;
    while (j + 1 < all.length && all[j + 1]!.v === all[i]!.v) j++;
    for (let k = i; k <= j; k++) ranks[k] = (i + j) / 2 + 1;
    i = j + 1;
  }
  let r1 = 0;
  all.forEach((x, i) => {
    if (x.g === 0) r1 += ranks[i] as number;
  });
  const n1 = a.length;
  const n2 = b.length;
  const u = r1 - (n1 * (n1 + 1)) / 2;
  const z = (u - (n1 * n2) / 2) / Math.sqrt((n1 * n2 * (n1 + n2 + 1)) / 12);
  return 2 * (1 - phi(Math.abs(z)));
}

/** The standard normal CDF (Abramowitz and Stegun 7.1.26 for erf). */
function phi(z: number): number {
  const x = z / Math.SQRT2;
  const t = 1 / (1 + 0.3275911 * x);
  const erf = 1 - ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * Math.exp(-x * x);
  return 0.5 * (1 + erf);
}

async function timed(port: number, from: string, username: string, password: string): Promise<{ code: number; message: string; ms: number }> {
  const t0 = process.hrtime.bigint();
  const r = await refusalCode(port, { protocolVersion: 5, clientId: `e-${Math.random().toString(16).slice(2)}`, username, password, localAddress: from });
  return { ...r, ms: Number(process.hrtime.bigint() - t0) / 1e6 };
}

async function broker(t: { teardown(fn: () => unknown): void }, authGuard: Record<string, unknown>) {
  const file = path.join(tempDir(t), 'passwords');
  const lines = await Promise.all(Array.from({ length: N + 1 }, async (_, i) => `known-${i}:${await hashPassword(`right-${i}`, ARGON2_FLOOR)}\n`));
  fs.writeFileSync(file, lines.join(''), { mode: 0o600 });
  const tb = await startBroker({ listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: [{ provider: 'password', file }] }], authGuard });
  t.teardown(() => tb.stop());
  return tb;
}

for (const [label, authGuard] of [
  ['guard on (defaults)', {}],
  ['guard off', { enabled: false }],
] as const) {
  test.serial(`${label}: an unknown user name and a wrong password for a known one get the same answer in the same time`, async (t) => {
    const tb = await broker(t, authGuard);
    await timed(tb.port, '127.0.5.1', 'warm-up', 'x'); // the dummy hash and the JIT
    const known: number[] = [];
    const unknown: number[] = [];
    const answers = new Set<string>();
    // Interleaved, one attempt per user name and source address, so no throttle engages and drift hits both alike.
    for (let i = 0; i < N; i++) {
      const k = await timed(tb.port, `127.0.5.${2 * i + 2}`, `known-${i}`, 'wrong');
      const u = await timed(tb.port, `127.0.5.${2 * i + 3}`, `nobody-${i}`, 'wrong');
      known.push(k.ms);
      unknown.push(u.ms);
      answers.add(`${k.code} ${k.message}`).add(`${u.code} ${u.message}`);
    }
    t.deepEqual([...answers], [`134 Connection refused: Bad User Name or Password`], 'one answer for both');
    const p = mannWhitneyP(known, unknown);
    const med = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1]!.toFixed(1);
    t.log(`median ${med(known)} ms (known, wrong password) vs ${med(unknown)} ms (unknown), Mann-Whitney p = ${p.toFixed(3)}`);
    t.true(p > 0.001, `the two timings differ (p = ${p})`);
    // Control: a refusal that skips argon2 (an empty password) is told apart by the same test.
    const empty: number[] = [];
    for (let i = 0; i < N; i++) empty.push((await timed(tb.port, `127.0.6.${i + 2}`, `known-${i}`, '')).ms);
    t.true(mannWhitneyP(known, empty) < 0.001, `the test has the power to see a difference (median empty ${med(empty)} ms)`);
  });
}

test.serial('guard on: a known and an unknown user name are throttled alike', async (t) => {
  const tb = await broker(t, { pair: { backoffAfter: 3, baseDelayMs: 5000 }, tarpit: { maxHoldMs: 0 } });
  const codes = async (from: string, username: string) => {
    const out: number[] = [];
    for (let i = 0; i < 6; i++) out.push((await timed(tb.port, from, username, `wrong-${i}`)).code);
    return out;
  };
  const k = await codes('127.0.7.1', `known-${N}`);
  const u = await codes('127.0.7.2', 'nobody-at-all');
  t.deepEqual(k, [0x86, 0x86, 0x86, 0x9f, 0x9f, 0x9f]);
  t.deepEqual(u, k);
});
