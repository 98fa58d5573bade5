import { ReasonCode } from '../protocol/reason-codes.ts';
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

  async authenticate(req: ConnectRequest): Promise<ChainResult> {
    const verdicts: ProviderVerdict[] = [];
    if (this.providers.length === 0) {
      const detail = 'no authentication provider is configured on this listener: every client is refused';
      return { decision: { kind: 'deny', reason: ReasonCode.NotAuthorized, detail }, verdicts };
    }
    for (const provider of this.providers) {
      const decision = await this.ask(provider, req);
      verdicts.push(
        decision.kind === 'deny'
          ? { provider: provider.id, kind: 'deny', reason: decision.reason, detail: decision.detail }
          : { provider: provider.id, kind: decision.kind },
      );
      if (decision.kind !== 'abstain') return { decision, decidedBy: provider.id, verdicts };
    }
    return {
      decision: { kind: 'deny', reason: ReasonCode.NotAuthorized, detail: 'every provider abstained' },
      verdicts,
    };
  }

  private async ask(provider: Authenticator, req: ConnectRequest): Promise<Decision<Principal>> {
    const controller = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<Decision<Principal>>((resolve) => {
      timer = setTimeout(() => {
        controller.abort();
        resolve({ kind: 'deny', reason: ReasonCode.ServerUnavailable, detail: `provider ${provider.id} missed its deadline` });
      }, this.deadlineMs);
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
