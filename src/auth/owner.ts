import type { Principal } from './types.ts';

/**
 * The identity that owns a session. With the client id it names the session (`sessionKey` in
 * src/store/types.ts): the same client id used by two identities is two sessions, so no identity
 * can resume, take over, read or lock out another's session, whatever the client id binding.
 *
 * - a user name (password, JWT, or a certificate or PSK mapped to one): `user:NAME`;
 * - a certificate without one: its subject (`cert:CN=dev-1, O=acme`), which survives renewal;
 * - a PSK identity without one: `psk:IDENTITY`;
 * - anything else (anonymous): the method, so all anonymous clients are one identity.
 */
export function ownerOf(principal: Principal): string {
  if (principal.username !== undefined) return `user:${principal.username}`;
  const attributes = principal.attributes;
  const cert = attributes['cert'] as { subject?: unknown } | undefined;
  if (principal.method === 'certificate' && typeof cert?.subject === 'string') return `cert:${cert.subject}`;
  const psk = attributes['psk'] as { identity?: unknown } | undefined;
  if (typeof psk?.identity === 'string') return `psk:${psk.identity}`;
  return `${principal.method}:`;
}
