import type { Principal } from '../auth/types.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';
import type { AccessContext, Action, AuthzResult, Authorizer } from './types.ts';

const NO_AUTHORIZER: AuthzResult = {
  kind: 'deny',
  reason: ReasonCode.NotAuthorized,
  detail: 'no authorizer is configured: every action is denied',
};
const ALL_ABSTAINED: AuthzResult = { kind: 'deny', reason: ReasonCode.NotAuthorized, detail: 'no authorizer allowed it' };

/**
 * Asks authorizers in order; the first answer that is not abstain wins, all abstain means deny,
 * and an authorizer that throws denies. Synchronous authorizers get a synchronous answer.
 */
export class AuthorizerChain {
  constructor(readonly authorizers: readonly Authorizer[]) {}

  authorize(who: Principal, action: Action, topic: string, ctx: AccessContext): AuthzResult | Promise<AuthzResult> {
    return this.from(0, who, action, topic, ctx);
  }

  private from(start: number, who: Principal, action: Action, topic: string, ctx: AccessContext): AuthzResult | Promise<AuthzResult> {
    if (this.authorizers.length === 0) return NO_AUTHORIZER;
    for (let i = start; i < this.authorizers.length; i++) {
      const authorizer = this.authorizers[i] as Authorizer;
      let answer;
      try {
        answer = authorizer.authorize(who, action, topic, ctx);
      } catch (err) {
        return failed(authorizer, err);
      }
      if (answer instanceof Promise) {
        // The broker reuses its context object between calls: keep a copy for the rest of the chain.
        const saved = { ...ctx };
        return answer.then(
          (d): AuthzResult | Promise<AuthzResult> =>
            d.kind === 'abstain' ? this.from(i + 1, who, action, topic, saved) : { ...d, decidedBy: authorizer.id },
          (err: unknown) => failed(authorizer, err),
        );
      }
      if (answer.kind !== 'abstain') {
        if (this.authorizers.length === 1) return answer as AuthzResult;
        return { ...answer, decidedBy: authorizer.id };
      }
    }
    return ALL_ABSTAINED;
  }

  async close(): Promise<void> {
    for (const a of this.authorizers) await a.close?.();
  }
}

function failed(authorizer: Authorizer, err: unknown): AuthzResult {
  return {
    kind: 'deny',
    reason: ReasonCode.UnspecifiedError,
    detail: `authorizer ${authorizer.id} failed: ${(err as Error)?.message ?? String(err)}`,
    decidedBy: authorizer.id,
  };
}
