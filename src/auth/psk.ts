/**
 * The `psk` provider: the TLS-PSK identity that the handshake proved becomes the username.
 * Abstains on connections that did not use a PSK. The key itself never reaches this layer:
 * possession was proven by the TLS handshake (its Finished MAC), inside OpenSSL.
 */
import type { PskProviderConfig } from '../config/tls-schema.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';
import type { Authenticator, ConnectRequest, Decision, Principal } from './types.ts';

export class PskAuthenticator implements Authenticator {
  readonly id = 'psk';

  /** The TLS handshake proved the key: nothing here can be guessed. */
  checksGuessableSecret(): boolean {
    return false;
  }

  constructor(private readonly config: PskProviderConfig) {}

  async authenticate(req: ConnectRequest): Promise<Decision<Principal>> {
    const identity = req.peer.tls?.pskIdentity;
    if (identity === undefined) return { kind: 'abstain' };
    if (/[#+/\u0000-\u001f\u007f]/.test(identity)) {
      return { kind: 'deny', reason: ReasonCode.BadUserNameOrPassword, detail: 'the PSK identity contains a character not allowed in an identity (# + / or a control character)' };
    }
    if (this.config.bindClientId && req.clientId !== identity) {
      return { kind: 'deny', reason: ReasonCode.ClientIdentifierNotValid, detail: `client id must be the PSK identity '${identity}'` };
    }
    return {
      kind: 'allow',
      value: {
        clientId: req.clientId,
        username: identity,
        method: 'psk',
        provider: this.id,
        roles: [...this.config.roles],
        attributes: { psk: { identity }, ...(req.username !== undefined ? { claimedUsername: req.username } : {}) },
      },
    };
  }
}
