import type { Principal } from '../auth/types.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';
import { reservedRoot } from '../protocol/topic.ts';
import { timerDelay } from '../util/timers.ts';
import type { AccessContext, Action, AuthzResult, Authorizer } from './types.ts';

const NO_AUTHORIZER: AuthzResult = {
  kind: 'deny',
  reason: ReasonCode.NotAuthorized,
  detail: 'no authorizer is configured: every action is denied',
};
const ALL_ABSTAINED: AuthzResult = { kind: 'deny', reason: ReasonCode.NotAuthorized, detail: 'no authorizer allowed it' };

/** The id that names the reserved-topic check in audit records. */
export const RESERVED_TOPIC_CHECK = 'reserved-topic';

const RESERVED: Record<string, AuthzResult> = {};

/**
 * A client's publish into a tree that belongs to the broker, denied whatever the authorizers
 * say; undefined for any other topic. Every way a client's message enters the broker asks the
 * chain with `publish` (PUBLISH, the will at CONNECT and again when it is published, and so
 * every retained message), so this is the one place the check lives [MQTT-4.7.2-1].
 */
export function reservedPublish(topic: string): AuthzResult | undefined {
  const root = reservedRoot(topic);
  if (root === undefined) return undefined;
  return (RESERVED[root] ??= { kind: 'deny', reason: ReasonCode.NotAuthorized, detail: `${root} topics are reserved for the broker`, decidedBy: RESERVED_TOPIC_CHECK });
}

/** How long an authorizer's promise may stay unsettled by default (`authzDeadlineMs`). */
export const DEFAULT_AUTHZ_DEADLINE_MS = 5000;

/**
 * Asks authorizers in order; the first answer that is not abstain wins, all abstain means deny,
 * and an authorizer that throws denies. Synchronous authorizers get a synchronous answer. A
 * publish into a broker-reserved tree ($SYS, $portcullis) is denied before any authorizer is asked.
 * An answer that is a promise must settle within `deadlineMs`, or the request is denied (fail
 * closed): a remote policy service that hangs would otherwise hold a publisher's acknowledgement,
 * a SUBACK, or a subscriber's queue (deliveries are decided one at a time per subscriber) forever.
 */
export class AuthorizerChain {
  constructor(
    readonly authorizers: readonly Authorizer[],
    readonly deadlineMs = DEFAULT_AUTHZ_DEADLINE_MS,
  ) {}

  authorize(who: Principal, action: Action, topic: string, ctx: AccessContext): AuthzResult | Promise<AuthzResult> {
    if (action === 'publish' && topic.charCodeAt(0) === 0x24) {
      const reserved = reservedPublish(topic);
      if (reserved !== undefined) return reserved;
    }
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
        return withDeadline(answer, authorizer, this.deadlineMs).then((d): AuthzResult | Promise<AuthzResult> =>
          d.kind === 'abstain' ? this.from(i + 1, who, action, topic, saved) : { ...d, decidedBy: authorizer.id },
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

/** The answer, or a denial when it rejects or has not settled within `ms` (what it says later is ignored). */
function withDeadline(answer: Promise<AuthzResult>, authorizer: Authorizer, ms: number): Promise<AuthzResult> {
  return new Promise<AuthzResult>((resolve) => {
    const timer = setTimeout(() => resolve(late(authorizer, ms)), timerDelay(ms)); // capped: a longer timer fires after 1 ms, denying everything
    // A pending decision must not keep a stopping process alive.
    timer.unref();
    answer.then(
      (d) => {
        clearTimeout(timer);
        resolve(d);
      },
      (err: unknown) => {
        clearTimeout(timer);
        resolve(failed(authorizer, err));
      },
    );
  });
}

function late(authorizer: Authorizer, ms: number): AuthzResult {
  return { kind: 'deny', reason: ReasonCode.UnspecifiedError, detail: `authorizer ${authorizer.id} did not answer within ${ms} ms`, decidedBy: authorizer.id };
}

function failed(authorizer: Authorizer, err: unknown): AuthzResult {
  return {
    kind: 'deny',
    reason: ReasonCode.UnspecifiedError,
    detail: `authorizer ${authorizer.id} failed: ${(err as Error)?.message ?? String(err)}`,
    decidedBy: authorizer.id,
  };
}
