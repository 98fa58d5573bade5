/**
 * A provider from a module of the user's own: `{ provider: 'module', path, options }`. The module
 * exports a factory (default export or `createAuthenticator`) returning an {@link Authenticator}
 * or a promise of one. Until it has loaded, and if it fails to, every client it is asked about
 * is denied. See docs/examples/http-auth-provider.mjs.
 *
 * This file is also the package's `portcullis/auth` entry point: what a provider's author needs.
 *
 * @example
 * import { ReasonCode, type AuthenticatorFactory } from 'portcullis/auth';
 * const factory: AuthenticatorFactory = () => ({
 *   id: 'deny-guests',
 *   async authenticate(req) {
 *     return req.username === 'guest' ? { kind: 'deny', reason: ReasonCode.NotAuthorized, detail: 'no guests' } : { kind: 'abstain' };
 *   },
 * });
 * export default factory;
 */
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { ReasonCode } from '../protocol/reason-codes.ts';
import { carriesSecret } from './login-gate.ts';
import type { Authenticator, ConnectRequest, Decision, Principal } from './types.ts';

export { ReasonCode } from '../protocol/reason-codes.ts';
export type { Authenticator, ConnectRequest, Decision, Principal } from './types.ts';
export type { PeerInfo } from '../transport/types.ts';

/** What a provider module exports. */
export type AuthenticatorFactory = (options: Record<string, unknown>) => Authenticator | Promise<Authenticator>;

const TYPESCRIPT_FILE = /\.[cm]?ts$/;

/**
 * Imports a plug-in module (a provider or an authorizer) by its path, relative to the working
 * directory. JavaScript loads on plain node. A TypeScript file loads where node itself can run
 * it (under tsx, or a node that strips types); otherwise through tsx's scoped loader when tsx is
 * installed beside Portcullis, so that `npm start` in a checkout keeps loading the `.ts`
 * examples. Without tsx it fails with a message that says what to do.
 */
export async function importPluginModule(file: string): Promise<Record<string, unknown>> {
  const url = pathToFileURL(path.resolve(file)).href;
  try {
    return (await import(url)) as Record<string, unknown>;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ERR_UNKNOWN_FILE_EXTENSION' || !TYPESCRIPT_FILE.test(file)) throw err;
  }
  let tsx: { tsImport: (specifier: string, parentURL: string) => Promise<unknown> };
  try {
    tsx = await import('tsx/esm/api');
  } catch {
    throw new Error('this node cannot run TypeScript: compile the module to .js, install tsx beside portcullis (npm install tsx), or start node with --import tsx');
  }
  return (await tsx.tsImport(url, import.meta.url)) as Record<string, unknown>;
}

export class AuthenticatorModuleError extends Error {
  readonly code = 'ERR_PORTCULLIS_AUTHENTICATOR_MODULE';
}

export class ModuleAuthenticator implements Authenticator {
  private inner: Authenticator | null = null;
  id: string;

  constructor(
    readonly modulePath: string,
    private readonly options: Record<string, unknown> = {},
  ) {
    this.id = `module:${modulePath}`;
  }

  get methods(): readonly string[] | undefined {
    return this.inner?.methods;
  }

  /** What the module says it checks; by default, any password or authentication data (see login-gate.ts). */
  checksGuessableSecret(req: ConnectRequest): boolean {
    const inner = this.inner;
    return inner?.checksGuessableSecret !== undefined ? inner.checksGuessableSecret(req) : carriesSecret(req);
  }

  /** Imports the module and builds the provider. Throws {@link AuthenticatorModuleError} naming the module. */
  async init(): Promise<void> {
    if (this.inner !== null) return;
    let mod: Record<string, unknown>;
    try {
      mod = await importPluginModule(this.modulePath);
    } catch (err) {
      throw new AuthenticatorModuleError(`cannot load authentication module ${this.modulePath}: ${(err as Error).message}`);
    }
    const factory = typeof mod.createAuthenticator === 'function' ? mod.createAuthenticator : mod.default;
    if (typeof factory !== 'function') {
      throw new AuthenticatorModuleError(`authentication module ${this.modulePath} must export a factory function (default export or createAuthenticator)`);
    }
    const made: unknown = await (factory as AuthenticatorFactory)(this.options);
    if (made === null || typeof made !== 'object' || typeof (made as Authenticator).authenticate !== 'function' || typeof (made as Authenticator).id !== 'string') {
      throw new AuthenticatorModuleError(`the factory of authentication module ${this.modulePath} did not return an object with id and authenticate()`);
    }
    this.inner = made as Authenticator;
    this.id = this.inner.id;
    await this.inner.init?.();
  }

  async authenticate(req: ConnectRequest, signal: AbortSignal): Promise<Decision<Principal>> {
    if (this.inner === null) return { kind: 'deny', reason: ReasonCode.ServerUnavailable, detail: `authentication module ${this.modulePath} not loaded` };
    const d = await this.inner.authenticate(req, signal);
    // A module cannot claim to be another provider in the audit trail.
    if (d.kind === 'allow') return { kind: 'allow', value: { ...d.value, provider: this.id } };
    return d;
  }

  async close(): Promise<void> {
    await this.inner?.close?.();
  }
}
