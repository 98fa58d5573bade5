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
 * allowed is denied; an empty policy denies everything. The policy file is watched.
 *
 * Callers are named by how they authenticated, in namespaces of their own: a token is the user
 * `token:NAME`, a client certificate the user `cert:CN` (`g, user:cert:ops-laptop, role:admin`).
 * A token named like an admin certificate's CN is not that certificate. A bare `user:NAME` in
 * the admin policy would be ambiguous: it stops the start (naming the line), and a reload that
 * brings one in is reported; such a line matches no caller.
 *
 * The file must exist at start (a configured policy that is missing is a typo or a lost file,
 * not a wish to deny everything): its absence stops the start, naming the file.
 */
import type { Principal } from '../auth/types.ts';
import { CasbinAuthorizer } from '../authz/casbin/authorizer.ts';
import { loadPolicySet, PolicyError } from '../authz/casbin/policy-file.ts';
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

  /** Reads and validates the files now: throws PolicyError naming the file and line (or the missing file). */
  constructor(
    private readonly model: string,
    private readonly policy: string,
  ) {
    const problem = bareSubjects(model, policy, true)[0];
    if (problem !== undefined) throw problem;
    // No listener binds client ids here: `client:` lines and %c are refused at load.
    this.casbin = new CasbinAuthorizer({ model, policy, watch: true, cacheSize: 0, listeners: [] }, 'admin-policy');
  }

  /** The lines of the policy file as it is now that name a user without a namespace (each matches no caller). */
  bareSubjectLines(): string[] {
    try {
      return bareSubjects(this.model, this.policy, false).map((e) => e.message);
    } catch {
      return []; // a file that does not load is reported by the reload itself
    }
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
      const user = subjectName(who);
      p = { clientId: user, username: user, method: who.method, provider: who.method, roles: who.roles, attributes: {} };
      this.principals.set(who, p);
    }
    return this.casbin.authorize(p, access === 'read' ? 'subscribe' : 'publish', `admin/${resource}`, this.ctx);
  }
}

/** The caller's user name in the admin policy: `token:NAME` or `cert:CN`, never a bare name. */
export function subjectName(who: AdminPrincipal): string {
  return `${who.method === 'token' ? 'token' : 'cert'}:${who.name}`;
}

/**
 * Every `user:` subject or member of the policy without the `token:` or `cert:` namespace, as a
 * PolicyError naming its line. With `requireFile`, a missing policy file is an error too.
 */
function bareSubjects(model: string, policy: string, requireFile: boolean): PolicyError[] {
  const set = loadPolicySet(model, policy, { requirePolicy: requireFile });
  const out: PolicyError[] = [];
  const check = (subject: string, source: string): void => {
    if (!subject.startsWith('user:') || /^user:(token|cert):./.test(subject)) return;
    const name = subject.slice(5);
    const line = Number(source.slice(source.lastIndexOf(':') + 1));
    out.push(new PolicyError(policy, Number.isInteger(line) ? line : undefined, `'${subject}' names no kind of caller: write user:token:${name} for a token or user:cert:${name} for a client certificate's CN (token names and certificate CNs are kept apart)`));
  };
  for (const r of set.rules) check(r.sub, r.source);
  for (const l of set.links) check(l.member, l.source);
  return out;
}
