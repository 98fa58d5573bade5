/**
 * Who may call what on the admin API: the same Casbin engine, model and policy validation as
 * MQTT access, over a policy of its own (http.auth.policy, default policies/admin/policy.csv). Each
 * operation is an object under `admin/` (`admin/clients`, `admin/clients/kick`, `admin/bans`,
 * ...); reading it is the `read` action (subscribe), changing state is `publish`. So
 *
 *   p, role:read-only, admin/#, read, allow
 *   p, role:admin, admin/#, read, allow
 *   p, role:admin, admin/#, publish, allow
 *
 * gives read-only operators every GET and admins everything, and a finer line
 * (`p, role:support, admin/clients/kick, publish, allow`) grants one change. Anything not
 * allowed is denied; a missing or empty policy denies everything. The policy file is watched.
 */
import type { Principal } from '../auth/types.ts';
import { CasbinAuthorizer } from '../authz/casbin/authorizer.ts';
import type { AccessContext, AuthzResult } from '../authz/types.ts';

/** Who called, once authenticated. */
export interface AdminPrincipal {
  /** The token's name, or the client certificate's CN. */
  name: string;
  method: 'token' | 'certificate';
  roles: string[];
  tokenId?: string;
  certSubject?: string;
  certFingerprint?: string;
}

export type Access = 'read' | 'change';

export class AdminAuthorizer {
  private readonly casbin: CasbinAuthorizer;
  private readonly principals = new WeakMap<AdminPrincipal, Principal>();
  private readonly ctx: AccessContext = { qos: 0, retain: false, listener: 'http', will: false, shareGroup: undefined };

  /** Reads and validates the files now: throws PolicyError naming the file and line. */
  constructor(model: string, policy: string) {
    // No listener binds client ids here: `client:` lines and %c are refused at load.
    this.casbin = new CasbinAuthorizer({ model, policy, watch: true, cacheSize: 0, listeners: [] }, 'admin-policy');
  }

  init(): Promise<void> {
    return this.casbin.init();
  }

  close(): Promise<void> {
    return this.casbin.close?.() ?? Promise.resolve();
  }

  get version(): string {
    return this.casbin.version;
  }

  onReload(fn: (report: { ok: boolean; version?: string; detail?: string }) => void): void {
    this.casbin.onReload(fn);
  }

  decide(who: AdminPrincipal, resource: string, access: Access): AuthzResult {
    let p = this.principals.get(who);
    if (p === undefined) {
      p = { clientId: who.name, username: who.name, method: who.method, provider: who.method, roles: who.roles, attributes: {} };
      this.principals.set(who, p);
    }
    return this.casbin.authorize(p, access === 'read' ? 'subscribe' : 'publish', `admin/${resource}`, this.ctx);
  }
}
