import { createHash, timingSafeEqual } from 'node:crypto';
import { ReasonCode } from '../protocol/reason-codes.ts';
import type { Authenticator, ConnectRequest, Decision, Principal } from './types.ts';

export interface StaticUser {
  username: string;
  password: string;
  roles?: string[];
}

const digest = (value: Buffer | string): Buffer => createHash('sha256').update(value).digest();

/**
 * A development-only list of users with plain passwords from the configuration. Passwords are
 * compared in constant time over their SHA-256 digests, so neither content nor length leaks.
 * Unknown users and clients without a user name abstain, so a later provider may decide.
 */
export class StaticUsersAuthenticator implements Authenticator {
  readonly id = 'static-users';
  private readonly users = new Map<string, { digest: Buffer; roles: string[] }>();

  constructor(users: readonly StaticUser[]) {
    for (const user of users) this.users.set(user.username, { digest: digest(user.password), roles: user.roles ?? [] });
  }

  checksGuessableSecret(req: ConnectRequest): boolean {
    return req.username !== undefined;
  }

  async authenticate(req: ConnectRequest): Promise<Decision<Principal>> {
    if (req.username === undefined) return { kind: 'abstain' };
    const user = this.users.get(req.username);
    if (user === undefined) return { kind: 'abstain' };
    const given = digest(req.password ?? Buffer.alloc(0));
    if (req.password === undefined || req.password.length === 0 || !timingSafeEqual(given, user.digest)) {
      return { kind: 'deny', reason: ReasonCode.BadUserNameOrPassword, detail: 'wrong password' };
    }
    return {
      kind: 'allow',
      value: {
        clientId: req.clientId,
        username: req.username,
        method: 'password',
        provider: this.id,
        roles: [...user.roles],
        attributes: {},
      },
    };
  }
}
