/**
 * Policy lines keyed on the client id, and the listeners that make them trustworthy.
 *
 * A client chooses its own client id. Unless the listener binds the client id to the identity
 * that authenticated (`identity.clientIdBinding`, or a provider that checks it against the
 * certificate, the PSK identity or a JWT claim), anyone who can log in can claim any client id,
 * and with it every `client:ID` rule, every `g, client:ID, role:...` line and every `%c`
 * substitution. So such lines fail closed:
 *
 * - `require-binding` (the default): they are refused at policy load, with the file, the line
 *   and the listeners that do not bind, unless every listener binds client ids.
 * - `bound-listeners`: they are accepted, and allow only on listeners that bind client ids. On
 *   the others they still deny (a deny rule keyed on a client id narrows nothing the client
 *   could not also escape by choosing another id, but it never widens anything either).
 */
import type { Config, ListenerConfig } from '../../config/schema.ts';
import { PolicyError } from './policy-error.ts';
import { clientIdLines, type PolicySet } from './policy-file.ts';

/** One listener, and whether the client ids on it are bound to the identity. */
export interface ListenerBinding {
  name: string;
  clientIdBound: boolean;
  /** Why it binds or does not, for error messages: `identity.clientIdBinding: none`. */
  why?: string;
}

export type ClientIdRules = 'require-binding' | 'bound-listeners';

/**
 * Whether a configured listener binds client ids to the identity: its identity rules do
 * (`identity.clientIdBinding: equals | prefix`), or every provider of its chain checks the
 * client id itself (certificate or PSK with `bindClientId`, JWT with `claims.clientId`).
 * Extra providers given in code (`extraProviders`) are not known to bind.
 */
export function listenerBinding(l: ListenerConfig, extraProviders = 0): ListenerBinding {
  const name = l.name as string;
  // A listener from the schema's own default is not parsed, so it may lack identity rules: none.
  const binding = (l.identity as ListenerConfig['identity'] | undefined)?.clientIdBinding ?? 'none';
  if (binding !== 'none') return { name, clientIdBound: true, why: `identity.clientIdBinding: ${binding}` };
  const binds = l.auth.length > 0 && extraProviders === 0 && l.auth.every((p) => (p.provider === 'certificate' && p.bindClientId && p.clientId !== 'none') || (p.provider === 'psk' && p.bindClientId) || (p.provider === 'jwt' && p.claims.clientId !== undefined));
  if (binds) return { name, clientIdBound: true, why: 'every provider checks the client id' };
  return { name, clientIdBound: false, why: 'identity.clientIdBinding: none' };
}

/** Every listener of a configuration, with its binding. `extra` counts providers added in code per listener. */
export function listenerBindings(config: Pick<Config, 'listeners'>, extra: Record<string, unknown[]> = {}): ListenerBinding[] {
  return config.listeners.map((l) => listenerBinding(l, extra[l.name as string]?.length ?? 0));
}

/**
 * Refuses a policy whose client-id lines are not backed by every listener (in
 * `require-binding` mode). Throws {@link PolicyError} at the first such line, naming the file,
 * the line, what in it names the client id, and the listeners that do not bind.
 */
export function checkClientIdBinding(set: Pick<PolicySet, 'rules' | 'links'>, listeners: readonly ListenerBinding[] | undefined, mode: ClientIdRules): void {
  if (mode === 'bound-listeners') return;
  const unbound = listeners === undefined ? undefined : listeners.filter((l) => !l.clientIdBound);
  if (unbound !== undefined && unbound.length === 0 && listeners !== undefined && listeners.length > 0) return;
  const first = clientIdLines(set)[0];
  if (first === undefined) return;
  const at = first.source.lastIndexOf(':');
  const file = first.source.slice(0, at);
  const line = Number(first.source.slice(at + 1));
  const where =
    unbound === undefined || listeners === undefined || listeners.length === 0
      ? 'no listener is known to bind client ids to the identity (the authorizer was given no listeners)'
      : `${unbound.length === 1 ? 'listener' : 'listeners'} ${unbound.map((l) => `'${l.name}'`).join(', ')} ${unbound.length === 1 ? 'does' : 'do'} not bind client ids to the identity (${unbound[0]?.why ?? 'identity.clientIdBinding: none'})`;
  throw new PolicyError(
    file,
    line,
    `${first.what} depends on the client id, but ${where}: any client that logs in there can choose this client id and claim the line. ` +
      `Bind client ids on every listener (identity.clientIdBinding: equals), name a user or a role instead, or set clientIdRules: bound-listeners on the casbin authorizer so that such lines allow only on listeners that bind`,
  );
}
