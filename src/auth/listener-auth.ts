/**
 * One listener's authentication: failed-login protection around the provider chain, then the
 * listener's identity rules on the Principal that was allowed.
 *
 *   guard.check (banned / backing off: refused before any provider runs)
 *   → provider chain → identity checks (wildcards, client id binding) → guard.failure / success
 */
import type { IdentityRules } from '../config/auth-schema.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';
import { AuthenticatorChain, type ChainResult } from './chain.ts';
import type { AuthGuard } from './guard.ts';
import { GENERIC_PASSWORD_DENIAL } from './password/provider.ts';
import type { Authenticator, ConnectRequest, Principal } from './types.ts';

/** + and # widen %u / %c placeholders into wildcards; U+0000 truncates strings in C-based tools. */
const WILDCARD_OR_NUL = /[+#\u0000]/;

/** Failures that count towards backoff: bad credentials, not outages. */
const COUNTED = new Set<number>([ReasonCode.BadUserNameOrPassword, ReasonCode.NotAuthorized]);

export class ListenerAuthenticator extends AuthenticatorChain {
  constructor(
    providers: readonly Authenticator[],
    deadlineMs: number,
    private readonly listener: string,
    private readonly rules: IdentityRules,
    private readonly guard: AuthGuard | undefined,
  ) {
    super(providers, deadlineMs);
  }

  override decide(req: ConnectRequest): ChainResult | Promise<ChainResult> {
    const ip = req.peer.remoteAddress;
    const refused = this.guard?.check(ip, req.username);
    if (refused !== undefined) {
      // Hammering during a backoff counts towards the ban; attempts while banned do not extend it.
      if (refused.reason === ReasonCode.ConnectionRateExceeded) this.guard?.failure(ip, req.username, this.listener);
      return {
        decision: { kind: 'deny', reason: refused.reason, detail: refused.detail },
        decidedBy: 'guard',
        verdicts: [{ provider: 'guard', kind: 'deny', reason: refused.reason, detail: refused.detail }],
      };
    }
    const result = super.decide(req);
    return result instanceof Promise ? result.then((r) => this.finish(r, req, ip)) : this.finish(result, req, ip);
  }

  /** Identity checks on an allowed Principal, and the failed-login protection's bookkeeping. */
  private finish(result: ChainResult, req: ConnectRequest, ip: string): ChainResult {
    const d = result.decision;
    if (d.kind === 'allow') {
      const problem = this.checkIdentity(d.value, req);
      if (problem !== undefined) {
        result.verdicts.push({ provider: 'identity', kind: 'deny', reason: problem.reason, detail: problem.detail });
        return { decision: { kind: 'deny', ...problem }, decidedBy: 'identity', verdicts: result.verdicts };
      }
      this.guard?.success(d.value.username);
      return result;
    }
    if (d.kind === 'deny') {
      if (COUNTED.has(d.reason)) this.guard?.failure(ip, req.username, this.listener);
      if (result.decidedBy === 'password' && d.reason === ReasonCode.BadUserNameOrPassword) {
        // The client is told nothing that tells a wrong password from an unknown user; the verdict keeps the cause.
        return { ...result, decision: { kind: 'deny', reason: d.reason, detail: GENERIC_PASSWORD_DENIAL } };
      }
    }
    return result;
  }

  private checkIdentity(p: Principal, req: ConnectRequest): { reason: ReasonCode; detail: string } | undefined {
    if (this.rules.refuseWildcards) {
      if (p.username !== undefined && WILDCARD_OR_NUL.test(p.username)) return { reason: ReasonCode.BadUserNameOrPassword, detail: 'user name contains + # or U+0000' };
      if (WILDCARD_OR_NUL.test(req.clientId)) return { reason: ReasonCode.ClientIdentifierNotValid, detail: 'client id contains + # or U+0000' };
    }
    if (this.rules.clientIdBinding === 'none') return undefined;
    const identity = this.rules.bindTo === 'username' ? p.username : certCn(p);
    if (identity === undefined || identity === '') {
      return { reason: ReasonCode.ClientIdentifierNotValid, detail: `client id binding: the identity has no ${this.rules.bindTo}` };
    }
    // A prefix needs its separator: user `dev` must not pass as `device-2` and take its %c rules.
    const sep = this.rules.clientIdSeparator;
    const ok = req.clientId === identity || (this.rules.clientIdBinding === 'prefix' && req.clientId.startsWith(identity + sep));
    if (!ok) {
      const must = this.rules.clientIdBinding === 'equals' ? 'equal' : `equal or start with '${identity}${sep}': the`;
      return { reason: ReasonCode.ClientIdentifierNotValid, detail: `client id must ${must} ${this.rules.bindTo} '${identity}' (identity.clientIdBinding)` };
    }
    return undefined;
  }
}

function certCn(p: Principal): string | undefined {
  const cert = p.attributes.cert;
  if (cert === null || typeof cert !== 'object') return undefined;
  const cn = (cert as { cn?: unknown }).cn;
  return typeof cn === 'string' ? cn : undefined;
}
