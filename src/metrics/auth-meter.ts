/**
 * Authentication measured where the broker asks for it: each listener's chain (admission checks,
 * failed-login guard, providers, identity rules) is this subclass when metrics are on, so every
 * CONNECT and re-authentication is timed and each provider's verdict counted, whatever the audit
 * settings record.
 */
import { AdmittingAuthenticator } from '../admission/connect-gate.ts';
import type { ChainResult } from '../auth/chain.ts';
import type { ConnectRequest } from '../auth/types.ts';
import { AUTH_BUCKETS, Buckets, LabeledCounts } from './counts.ts';

export class AuthMeter {
  /** Each provider's verdict (allow, deny, abstain): provider ids come from the configuration. */
  readonly verdicts = new LabeledCounts(['provider', 'result'], 48);
  /** The chain's decision time, by the chain's result. */
  readonly durations = { allow: new Buckets(AUTH_BUCKETS), deny: new Buckets(AUTH_BUCKETS) };

  observe(result: ChainResult, startedAt: number): ChainResult {
    const seconds = (performance.now() - startedAt) / 1000;
    this.durations[result.decision.kind === 'allow' ? 'allow' : 'deny'].observe(seconds);
    for (const v of result.verdicts) this.verdicts.add([v.provider, v.kind]);
    // Every provider abstained: the chain denied with no provider's verdict saying so.
    if (result.decision.kind !== 'allow' && result.decidedBy === undefined && result.verdicts.every((v) => v.kind === 'abstain')) this.verdicts.add(['(none)', 'deny']);
    return result;
  }
}

export class MeteredAuthenticator extends AdmittingAuthenticator {
  constructor(
    private readonly meter: AuthMeter,
    ...args: ConstructorParameters<typeof AdmittingAuthenticator>
  ) {
    super(...args);
  }

  override decide(req: ConnectRequest): ChainResult | Promise<ChainResult> {
    const startedAt = performance.now();
    const result = super.decide(req);
    return result instanceof Promise ? result.then((r) => this.meter.observe(r, startedAt)) : this.meter.observe(result, startedAt);
  }
}
