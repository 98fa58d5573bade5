/**
 * The provider chain answers synchronously while providers answer at once (decideNow), and falls
 * back to authenticate() with its deadline for the rest; verdicts and their order are the same
 * either way.
 */
import test from 'ava';
import { AuthenticatorChain } from '../src/auth/chain.ts';
import type { Authenticator, ConnectRequest, Decision, Principal } from '../src/auth/types.ts';
import { ReasonCode } from '../src/protocol/reason-codes.ts';

const req: ConnectRequest = { clientId: 'c1', username: 'u', protocolVersion: 4, peer: { listener: 'tcp', transport: 'tcp', remoteAddress: '127.0.0.1', remotePort: 1 } };
const allow = (id: string): Decision<Principal> => ({ kind: 'allow', value: { clientId: 'c1', method: 'test', provider: id, roles: [], attributes: {} } });

function provider(id: string, now: Decision<Principal> | undefined | 'throw' | 'none', later: Decision<Principal> | 'hang' = { kind: 'abstain' }): Authenticator & { asked: number } {
  const p = {
    id,
    asked: 0,
    authenticate(): Promise<Decision<Principal>> {
      p.asked++;
      return later === 'hang' ? new Promise<Decision<Principal>>(() => {}) : Promise.resolve(later);
    },
    ...(now === 'none'
      ? {}
      : {
          decideNow(): Decision<Principal> | undefined {
            if (now === 'throw') throw new Error('boom');
            return now;
          },
        }),
  };
  return p;
}

test('answers synchronously when every provider asked answers at once', (t) => {
  const a = provider('a', { kind: 'abstain' });
  const b = provider('b', allow('b'));
  const r = new AuthenticatorChain([a, b], 1000).decide(req);
  if (r instanceof Promise) return t.fail('a promise');
  t.is(r.decidedBy, 'b');
  t.deepEqual(r.verdicts.map((v) => `${v.provider}:${v.kind}`), ['a:abstain', 'b:allow']);
  t.is(a.asked + b.asked, 0, 'authenticate() was not called');
});

test('a provider that cannot answer at once is asked through authenticate(), and the rest follow', async (t) => {
  const a = provider('a', undefined, { kind: 'abstain' });
  const b = provider('b', 'none', { kind: 'abstain' });
  const c = provider('c', allow('c'));
  const r = new AuthenticatorChain([a, b, c], 1000).decide(req);
  t.true(r instanceof Promise);
  const result = await r;
  t.is(result.decidedBy, 'c');
  t.deepEqual(result.verdicts.map((v) => `${v.provider}:${v.kind}`), ['a:abstain', 'b:abstain', 'c:allow']);
  t.is(a.asked, 1);
  t.is(b.asked, 1);
  t.is(c.asked, 0, 'c answered at once even after waiting for a and b');
});

test('a throwing decideNow denies with ServerUnavailable; a provider that never answers misses its deadline', async (t) => {
  const thrown = new AuthenticatorChain([provider('x', 'throw'), provider('y', allow('y'))], 1000).decide(req);
  if (thrown instanceof Promise) return t.fail('a promise');
  const d = thrown.decision;
  if (d.kind !== 'deny') return t.fail(d.kind);
  t.is(d.reason, ReasonCode.ServerUnavailable);
  t.regex(d.detail, /provider x failed: boom/);
  const slow = await new AuthenticatorChain([provider('s', undefined, 'hang')], 50).decide(req);
  if (slow.decision.kind !== 'deny') return t.fail(slow.decision.kind);
  t.regex(slow.decision.detail, /missed its deadline/);
});

test('no provider: every client is refused; all abstain: refused', async (t) => {
  t.is((await new AuthenticatorChain([], 1000).authenticate(req)).decision.kind, 'deny');
  const all = await new AuthenticatorChain([provider('a', { kind: 'abstain' }), provider('b', 'none')], 1000).authenticate(req);
  if (all.decision.kind !== 'deny') return t.fail(all.decision.kind);
  t.is(all.decision.detail, 'every provider abstained');
});
