/**
 * An authorizer from a module of the user's own: `{ type: 'module', path, options }`. The module
 * exports a factory, as its default export or as `createAuthorizer`, that returns an
 * {@link Authorizer} (or a promise of one). Until it has loaded, and if it fails to, every
 * request is denied. JavaScript and TypeScript modules load as providers do (see
 * importPluginModule in src/auth/module.ts).
 *
 * This file is also the package's `portcullis/authz` entry point: what an authorizer's author needs.
 *
 * @example
 * import { ReasonCode, type AuthorizerFactory } from 'portcullis/authz';
 * const factory: AuthorizerFactory = () => ({
 *   id: 'read-only',
 *   authorize: (_who, action) => (action === 'publish' ? { kind: 'deny', reason: ReasonCode.NotAuthorized, detail: 'read-only' } : { kind: 'abstain' }),
 * });
 * export default factory;
 */
import { importPluginModule } from '../auth/module.ts';
import type { Decision, Principal } from '../auth/types.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';
import type { AccessContext, Action, Authorizer, ReloadReport } from './types.ts';

export { ReasonCode } from '../protocol/reason-codes.ts';
export type { Decision, Principal } from '../auth/types.ts';
export type { AccessContext, Action, Authorizer, ReloadReport } from './types.ts';

/** What a plug-in module exports. */
export type AuthorizerFactory = (options: Record<string, unknown>) => Authorizer | Promise<Authorizer>;

/** A module that cannot be used as an authorizer. */
export class AuthorizerModuleError extends Error {
  readonly code = 'ERR_PORTCULLIS_AUTHORIZER_MODULE';
}

const NOT_LOADED: Decision = { kind: 'deny', reason: ReasonCode.NotAuthorized, detail: 'authorizer module not loaded' };

export class ModuleAuthorizer implements Authorizer {
  readonly id: string;
  private inner: Authorizer | null = null;

  constructor(
    readonly modulePath: string,
    private readonly options: Record<string, unknown> = {},
  ) {
    this.id = `module:${modulePath}`;
  }

  /** Imports the module and builds the authorizer. Throws {@link AuthorizerModuleError} naming the module. */
  async init(): Promise<void> {
    if (this.inner !== null) return;
    let mod: Record<string, unknown>;
    try {
      mod = await importPluginModule(this.modulePath);
    } catch (err) {
      throw new AuthorizerModuleError(`cannot load authorizer module ${this.modulePath}: ${(err as Error).message}`);
    }
    const factory = typeof mod.createAuthorizer === 'function' ? mod.createAuthorizer : mod.default;
    if (typeof factory !== 'function') {
      throw new AuthorizerModuleError(`authorizer module ${this.modulePath} must export a factory function (default export or createAuthorizer)`);
    }
    const made: unknown = await (factory as AuthorizerFactory)(this.options);
    if (made === null || typeof made !== 'object' || typeof (made as Authorizer).authorize !== 'function') {
      throw new AuthorizerModuleError(`the factory of authorizer module ${this.modulePath} did not return an object with authorize()`);
    }
    this.inner = made as Authorizer;
  }

  authorize(who: Principal, action: Action, topic: string, ctx: AccessContext): Decision | Promise<Decision> {
    return this.inner === null ? NOT_LOADED : this.inner.authorize(who, action, topic, ctx);
  }

  async reload(): Promise<ReloadReport> {
    return this.inner?.reload !== undefined ? this.inner.reload() : { ok: true, detail: 'nothing to reload' };
  }

  async close(): Promise<void> {
    await this.inner?.close?.();
  }
}
