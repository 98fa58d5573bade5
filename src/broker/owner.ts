import type { Principal } from '../auth/types.ts';

/** The identity that owns a session: a client id cannot be resumed or taken over by another identity. */
export function ownerOf(principal: Principal): string {
  return principal.username !== undefined ? `user:${principal.username}` : `${principal.method}:`;
}
