import { ReasonCode } from '../protocol/reason-codes.ts';
import { timerDelay } from '../util/timers.ts';
import type { Authenticator, ConnectRequest, Decision, Principal, ProviderVerdict } from './types.ts';

export interface ChainResult {
  decision: Decision<Principal>;
  /** The provider whose answer decided, or undefined when every provider abstained. */
  decidedBy?: string;
  verdicts: ProviderVerdict[];
}

/**
 * Runs providers in order. The first answer that is not `abstain` wins; all abstain means deny.
 * A provider that throws or misses its deadline denies, with a reason.
 */
export class AuthenticatorChain {
  constructor(
    readonly providers: readonly Authenticator[],
    private readonly deadlineMs: number,
  ) {}

  /** True when some provider in the chain offers this MQTT 5 authentication method. */
  supportsMethod(method: string): boolean {
    return this.providers.some((p) => p.methods?.includes(method) === true);
  }

  authenticate(req: ConnectRequest): Promise<ChainResult> {
    return Promise.resolve(this.decide(req));
  }

  /**
   * The chain's answer: synchronous while every provider asked answers at once (decideNow), a
   * promise from the first provider that has to wait. Subclasses wrap this, not authenticate().
   */
  decide(req: ConnectRequest): ChainResult | Promise<ChainResult> {
    const verdicts: ProviderVerdict[] = [];
    if (this.providers.length === 0) {
      const detail = "no authentication provider is configured on this listener: every client is refused (add providers under the listener's auth)";
      return { decision: { kind: 'deny', reason: ReasonCode.NotAuthorized, detail }, verdicts };
    }
    for (let i = 0; i < this.providers.length; i++) {
      const provider = this.providers[i]!;
      const now = decideNow(provider, req);
      if (now === undefined) return this.decideLater(req, i, verdicts);
      const done = answer(provider, now, verdicts);
      if (done !== undefined) return done;
    }
    return allAbstained(verdicts);
  }

  private async decideLater(req: ConnectRequest, from: number, verdicts: ProviderVerdict[]): Promise<ChainResult> {
    for (let i = from; i < this.providers.length; i++) {
      const provider = this.providers[i]!;
      const now = i === from ? undefined : decideNow(provider, req);
      const done = answer(provider, now ?? (await this.ask(provider, req)), verdicts);
      if (done !== undefined) return done;
    }
    return allAbstained(verdicts);
  }

  private async ask(provider: Authenticator, req: ConnectRequest): Promise<Decision<Principal>> {
    const controller = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<Decision<Principal>>((resolve) => {
      timer = setTimeout(() => {
        controller.abort();
        resolve({ kind: 'deny', reason: ReasonCode.ServerUnavailable, detail: `provider ${provider.id} missed its deadline` });
      }, timerDelay(this.deadlineMs));
    });
    try {
      return await Promise.race([provider.authenticate(req, controller.signal), deadline]);
    } catch (err) {
      return {
        kind: 'deny',
        reason: ReasonCode.ServerUnavailable,
        detail: `provider ${provider.id} failed: ${(err as Error).message ?? String(err)}`,
      };
    } finally {
      clearTimeout(timer);
    }
  }
}

/** A provider's immediate answer, or undefined when it has to be asked (and waited for). A throw denies. */
function decideNow(provider: Authenticator, req: ConnectRequest): Decision<Principal> | undefined {
  if (provider.decideNow === undefined) return undefined;
  try {
    return provider.decideNow(req);
  } catch (err) {
    return { kind: 'deny', reason: ReasonCode.ServerUnavailable, detail: `provider ${provider.id} failed: ${(err as Error).message ?? String(err)}` };
  }
}

/** Records a provider's verdict; the chain's result when that verdict decides (anything but abstain). */
function answer(provider: Authenticator, decision: Decision<Principal>, verdicts: ProviderVerdict[]): ChainResult | undefined {
  verdicts.push(
    decision.kind === 'deny'
      ? { provider: provider.id, kind: 'deny', reason: decision.reason, detail: decision.detail }
      : { provider: provider.id, kind: decision.kind },
  );
  return decision.kind === 'abstain' ? undefined : { decision, decidedBy: provider.id, verdicts };
}

function allAbstained(verdicts: ProviderVerdict[]): ChainResult {
  return { decision: { kind: 'deny', reason: ReasonCode.NotAuthorized, detail: 'every provider abstained' }, verdicts };
}
