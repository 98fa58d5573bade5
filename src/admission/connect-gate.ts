/**
 * One listener's authentication with admission control in front: client id and user name bans
 * are refused (0x8A; v3.1.1 return code 5) before failed-login protection or any provider runs.
 * Flapping is per identity and client id, so it is decided once the identity is known, and an
 * allowed connect is counted for it.
 *
 *   admission.checkConnect → ListenerAuthenticator (providers, the guard before guessable ones → identity) → admission.checkFlapping → admission.connected
 *
 * The failed-login guard keys a source address as admission control does: an IPv6 address by
 * its prefix (`admission.ipv6Prefix`), since one host usually holds a whole /64.
 */
import type { ChainResult } from '../auth/chain.ts';
import type { AuthGuard } from '../auth/guard.ts';
import { ListenerAuthenticator } from '../auth/listener-auth.ts';
import { ownerOf } from '../auth/owner.ts';
import type { Authenticator, ConnectRequest } from '../auth/types.ts';
import type { IdentityRules } from '../config/auth-schema.ts';
import { formatAddress, masked, peerAddress } from '../util/address.ts';
import type { Admission } from './admission.ts';

/** The guard's key for a source address: IPv4 as is, IPv6 by its first `prefix` bits. */
export function guardAddressKey(remoteAddress: string, ipv6Prefix: number): string {
  const { addr, text } = peerAddress(remoteAddress);
  if (addr === undefined || addr.family !== 6 || ipv6Prefix >= 128) return text;
  return `${formatAddress(masked({ ...addr, prefix: ipv6Prefix }))}/${ipv6Prefix}`;
}

export class AdmittingAuthenticator extends ListenerAuthenticator {
  constructor(
    providers: readonly Authenticator[],
    deadlineMs: number,
    private readonly listenerName: string,
    rules: IdentityRules,
    guard: AuthGuard | undefined,
    private readonly admission: Admission,
    ipv6Prefix = 64,
  ) {
    super(providers, deadlineMs, listenerName, rules, guard, (req) => guardAddressKey(req.peer.remoteAddress, ipv6Prefix));
  }

  override decide(req: ConnectRequest): ChainResult | Promise<ChainResult> {
    const ip = req.peer.remoteAddress;
    const refused = this.admission.checkConnect(req.clientId, req.username, ip);
    if (refused !== undefined) {
      return {
        decision: { kind: 'deny', reason: refused.reason, detail: refused.detail },
        decidedBy: refused.decidedBy,
        verdicts: [{ provider: refused.decidedBy, kind: 'deny', reason: refused.reason, detail: refused.detail }],
      };
    }
    const result = super.decide(req);
    return result instanceof Promise ? result.then((r) => this.admitted(r, req, ip)) : this.admitted(result, req, ip);
  }

  /** A late user name check on an allowed Principal, and the connect counted for flapping detection. */
  private admitted(result: ChainResult, req: ConnectRequest, ip: string): ChainResult {
    if (result.decision.kind !== 'allow') return result;
    // The user name a provider mapped (certificate CN, JWT claim) may differ from the one sent: check it too.
    const principal = result.decision.value;
    const late = principal.username !== req.username ? this.admission.checkUsername(principal.username) : undefined;
    if (late !== undefined) {
      return {
        decision: { kind: 'deny', reason: late.reason, detail: late.detail },
        decidedBy: late.decidedBy,
        verdicts: [...result.verdicts, { provider: late.decidedBy, kind: 'deny', reason: late.reason, detail: late.detail }],
      };
    }
    // Flapping is per identity and client id, so nobody gets someone else's client id banned.
    const owner = ownerOf(principal);
    const flapping = this.admission.checkFlapping(owner, req.clientId, this.listenerName);
    if (flapping !== undefined) {
      return {
        decision: { kind: 'deny', reason: flapping.reason, detail: flapping.detail },
        decidedBy: flapping.decidedBy,
        verdicts: [...result.verdicts, { provider: flapping.decidedBy, kind: 'deny', reason: flapping.reason, detail: flapping.detail }],
      };
    }
    this.admission.connected(req.peer, owner, req.clientId, principal.username, ip, this.listenerName);
    return result;
  }
}
