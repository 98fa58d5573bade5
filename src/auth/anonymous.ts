import type { Authenticator, ConnectRequest, Decision, Principal } from './types.ts';

/**
 * Allows every client without checking anything. Only ever active when a listener names it;
 * not for production. The claimed user name is kept as an attribute, never as the identity.
 */
export class AnonymousAuthenticator implements Authenticator {
  readonly id = 'anonymous';

  /** Nothing is checked. */
  checksGuessableSecret(): boolean {
    return false;
  }

  async authenticate(req: ConnectRequest): Promise<Decision<Principal>> {
    return this.decideNow(req);
  }

  decideNow(req: ConnectRequest): Decision<Principal> {
    const attributes: Record<string, unknown> = {};
    if (req.username !== undefined) attributes.claimedUsername = req.username;
    return {
      kind: 'allow',
      value: { clientId: req.clientId, method: 'anonymous', provider: this.id, roles: [], attributes },
    };
  }
}
