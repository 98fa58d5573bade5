/**
 * The shared Authenticator conformance suite. Every provider runs it with a request it must
 * allow and one it must refuse. It checks the contract the broker relies on: a stable id, three
 * outcomes only, a Principal for the request's client id naming the provider, no secret in the
 * Principal, deny carrying a failure reason code and a detail, no answer without credentials
 * that allows, and consistent answers under concurrency.
 */
import type { TestFn } from 'ava';
import type { Authenticator, ConnectRequest } from '../src/auth/types.ts';

export interface ConformanceSubject {
  /** Builds the provider (and whatever it needs) plus a request it must allow and one it must refuse. */
  setup(): Promise<{ auth: Authenticator; good: ConnectRequest; bad: ConnectRequest }>;
  /** anonymous allows everyone: it skips the refusal checks and must allow a request without credentials. */
  allowsEveryone?: boolean;
  /** The secret in `good` that must not appear in the Principal. */
  secret?: string;
}

export const peer = { listener: 'conformance', transport: 'tcp' as const, remoteAddress: '127.0.0.1', remotePort: 40000 };

export function authenticatorConformance(test: TestFn, name: string, subject: ConformanceSubject): void {
  const signal = () => new AbortController().signal;

  test(`[conformance] ${name}: has a stable non-empty id`, async (t) => {
    const { auth: a, good } = await subject.setup();
    t.is(typeof a.id, 'string');
    t.true(a.id.length > 0);
    const id = a.id;
    await a.authenticate(good, signal());
    t.is(a.id, id);
    await a.close?.();
  });

  test(`[conformance] ${name}: allows the good request with a Principal for that client id, naming the provider, without secrets`, async (t) => {
    const { auth: a, good } = await subject.setup();
    const copy = JSON.stringify(good);
    const d = await a.authenticate(good, signal());
    t.is(d.kind, 'allow');
    if (d.kind !== 'allow') return;
    t.is(d.value.clientId, good.clientId);
    t.is(d.value.provider, a.id);
    t.is(typeof d.value.method, 'string');
    t.true(Array.isArray(d.value.roles));
    t.is(typeof d.value.attributes, 'object');
    if (d.value.expiresAt !== undefined) t.true(Number.isFinite(d.value.expiresAt));
    if (subject.secret !== undefined) t.false(JSON.stringify(d.value).includes(subject.secret), 'no secret in the Principal');
    t.is(JSON.stringify(good), copy, 'the request is not mutated');
    await a.close?.();
  });

  if (!subject.allowsEveryone) test(`[conformance] ${name}: refuses the bad request with a failure reason code and a detail, or abstains`, async (t) => {
    const { auth: a, bad } = await subject.setup();
    const d = await a.authenticate(bad, signal());
    t.not(d.kind, 'allow');
    if (d.kind === 'deny') {
      t.true(d.reason >= 0x80 && d.reason <= 0xff);
      t.true(d.detail.length > 0);
      if (subject.secret !== undefined) t.false(d.detail.includes(subject.secret));
    }
    await a.close?.();
  });

  test(`[conformance] ${name}: a request without credentials is never allowed (unless the provider is anonymous)`, async (t) => {
    const { auth: a, good } = await subject.setup();
    const { username: _u, password: _p, ...bare } = good;
    const d = await a.authenticate({ ...bare, peer }, signal());
    if (subject.allowsEveryone) t.is(d.kind, 'allow');
    else t.not(d.kind, 'allow');
    await a.close?.();
  });

  test(`[conformance] ${name}: concurrent calls answer consistently`, async (t) => {
    const { auth: a, good, bad } = await subject.setup();
    const results = await Promise.all([good, bad, good, bad].map((r) => a.authenticate(r, signal())));
    t.deepEqual(
      results.map((r) => r.kind === 'allow'),
      subject.allowsEveryone ? [true, true, true, true] : [true, false, true, false],
    );
    await a.close?.();
  });
}
