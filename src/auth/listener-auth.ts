/**
 * One listener's authentication: the provider chain, with the failed-login guard in front of
 * every provider that checks a guessable secret (see login-gate.ts), then the listener's
 * identity rules on the Principal that was allowed.
 *
 *   providers in order (guessable ones: guard → hold → check queue → check)
 *   → identity checks (wildcards, client id binding) → the guard settles (success / failure / neither)
 */
import type { IdentityRules } from '../config/auth-schema.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';
import { AuthenticatorChain, type ChainResult } from './chain.ts';
import type { AuthGuard } from './guard.ts';
import { GuardedAuthenticator, LoginGate } from './login-gate.ts';
import { GENERIC_PASSWORD_DENIAL } from './password/provider.ts';
import type { Authenticator, ConnectRequest, Principal } from './types.ts';

/** + and # widen %u / %c placeholders into wildcards; U+0000 truncates strings in C-based tools. */
const WILDCARD_OR_NUL = /[+#\u0000]/;

export class ListenerAuthenticator extends AuthenticatorChain {
  private readonly gate: LoginGate | undefined;

  /**
   * `addressOf` gives the source address as the guard keys it (admission control passes one that
   * counts an IPv6 address by its prefix); by default the remote address as the socket reports it.
   */
  constructor(
    providers: readonly Authenticator[],
    deadlineMs: number,
    listener: string,
    private readonly rules: IdentityRules,
    guard: AuthGuard | undefined,
    addressOf: (req: ConnectRequest) => string = (req) => req.peer.remoteAddress,
  ) {
    const gate = guard !== undefined ? new LoginGate(guard, listener, deadlineMs, addressOf) : undefined;
    super(gate !== undefined ? providers.map((p) => new GuardedAuthenticator(p, gate)) : providers, deadlineMs);
    this.gate = gate;
  }

  override decide(req: ConnectRequest): ChainResult | Promise<ChainResult> {
    const result = super.decide(req);
    return result instanceof Promise ? result.then((r) => this.finish(r, req)) : this.finish(result, req);
  }

  /** Identity checks on an allowed Principal, and the guard's bookkeeping (which may hold a refusal). */
  private finish(chained: ChainResult, req: ConnectRequest): ChainResult | Promise<ChainResult> {
    let result = chained;
    let identityRefused = false;
    const d = result.decision;
    if (d.kind === 'allow') {
      const problem = this.checkIdentity(d.value, req);
      if (problem !== undefined) {
        result.verdicts.push({ provider: 'identity', kind: 'deny', reason: problem.reason, detail: problem.detail });
        result = { decision: { kind: 'deny', ...problem }, decidedBy: 'identity', verdicts: result.verdicts };
        identityRefused = true;
      }
    }
    if (this.gate === undefined) return generic(result);
    const settled = this.gate.settle(req, result, identityRefused);
    return settled instanceof Promise ? settled.then(generic) : generic(settled);
  }

  private checkIdentity(p: Principal, req: ConnectRequest): { reason: ReasonCode; detail: string } | undefined {
    if (this.rules.refuseWildcards) {
      if (p.username !== undefined && WILDCARD_OR_NUL.test(p.username)) return { reason: ReasonCode.BadUserNameOrPassword, detail: 'user name contains + # or U+0000 (identity.refuseWildcards)' };
      if (WILDCARD_OR_NUL.test(req.clientId)) return { reason: ReasonCode.ClientIdentifierNotValid, detail: 'client id contains + # or U+0000 (identity.refuseWildcards)' };
    }
    if (this.rules.clientIdBinding === 'none') return undefined;
    const identity = this.rules.bindTo === 'username' ? p.username : certCn(p);
    if (identity === undefined || identity === '') {
      return { reason: ReasonCode.ClientIdentifierNotValid, detail: `client id binding: the identity has no ${this.rules.bindTo}` };
    }
    // A prefix needs its separator: user `dev` must not pass as `device-2` and take its %c rules.
    const sep = this.rules.clientIdSeparator;
    const ok = req.clientId === identity || (this.rules.clientIdBinding === 'prefix' && req.clientId.length > identity.length + sep.length && req.clientId.startsWith(identity + sep));
    if (!ok) {
      const must = this.rules.clientIdBinding === 'equals' ? 'equal' : `equal or start with '${identity}${sep}': the`;
      return { reason: ReasonCode.ClientIdentifierNotValid, detail: `client id must ${must} ${this.rules.bindTo} '${identity}' (identity.clientIdBinding)` };
    }
    return undefined;
  }
}

/** The client is told nothing that tells a wrong password from an unknown user; the verdict keeps the cause. */
function generic(result: ChainResult): ChainResult {
  const d = result.decision;
  if (d.kind === 'deny' && result.decidedBy === 'password' && d.reason === ReasonCode.BadUserNameOrPassword) {
    return { ...result, decision: { kind: 'deny', reason: d.reason, detail: GENERIC_PASSWORD_DENIAL } };
  }
  return result;
}

function certCn(p: Principal): string | undefined {
  const cert = p.attributes.cert;
  if (cert === null || typeof cert !== 'object') return undefined;
  const cn = (cert as { cn?: unknown }).cn;
  return typeof cn === 'string' ? cn : undefined;
}
