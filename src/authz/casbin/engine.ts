/**
 * The casbin adapter: the only file that knows casbin. It turns a validated {@link PolicySet}
 * into enforcers and answers typed questions about one request.
 *
 * Casbin scans every policy line on each enforce, so the policy is indexed by subject: one
 * enforcer per subject (`*`, `user:alice`, `role:reader`, ...). A request asks only the
 * enforcers of its own subjects. Effects combine deny-override across them, exactly as they
 * would in one enforcer holding every line.
 */
import { newEnforcer, newModelFromString, type Enforcer } from 'casbin';
import type { Principal } from '../../auth/types.ts';
import { conditionsHold, ruleMatches, type Effect, type MatchAction, type RequestIdentity } from './matcher.ts';
import type { PolicyRule, PolicySet } from './policy-file.ts';

/** What the policy says about one request, and the line that decided it. */
export interface Evaluation {
  /** `none`: no rule applies (the default, deny). */
  effect: Effect | 'none';
  rule?: PolicyRule;
}

interface SubjectIndex {
  enforcer: Enforcer;
  /** casbin hands back the rule array it matched; map it to our rule (with its file and line). */
  rules: Map<string[], PolicyRule>;
}

function asIdentity(value: unknown): RequestIdentity {
  return value as RequestIdentity;
}

/** The custom functions the model's matcher calls, with casbin's untyped arguments narrowed here. */
const FUNCTIONS = {
  subjectMatch: (rSub: unknown, pSub: unknown): boolean => pSub === '*' || asIdentity(rSub).subjects.has(String(pSub)),
  mqttMatch: (rSub: unknown, rAct: unknown, rObj: unknown, pSub: unknown, pObj: unknown, pAct: unknown, pEft: unknown): boolean =>
    ruleMatches(asIdentity(rSub), rAct as MatchAction, String(rObj), String(pSub), String(pObj), String(pAct), pEft === 'deny' ? 'deny' : 'allow'),
  conditionMatch: (rQos: unknown, rRetain: unknown, pQos: unknown, pRetain: unknown): boolean =>
    conditionsHold(String(pQos), String(pRetain), Number(rQos), rRetain === true),
};

export class CasbinEngine {
  private constructor(
    readonly set: PolicySet,
    private readonly index: Map<string, SubjectIndex>,
    private readonly roleLinks: Map<string, string[]>,
  ) {}

  /** Builds one enforcer per subject from a validated policy set. */
  static async build(set: PolicySet): Promise<CasbinEngine> {
    const bySubject = new Map<string, PolicyRule[]>();
    const seen = new Set<string>();
    for (const rule of set.rules) {
      const key = JSON.stringify([rule.sub, rule.obj, rule.act, rule.eft, rule.qos, rule.retain]);
      if (seen.has(key)) continue; // casbin drops duplicates; the first line keeps the credit
      seen.add(key);
      let list = bySubject.get(rule.sub);
      if (list === undefined) bySubject.set(rule.sub, (list = []));
      list.push(rule);
    }
    const index = new Map<string, SubjectIndex>();
    for (const [subject, rules] of bySubject) {
      const enforcer = await newEnforcer(newModelFromString(set.modelText));
      for (const [name, fn] of Object.entries(FUNCTIONS)) await enforcer.addFunction(name, fn as (...args: unknown[]) => boolean);
      const model = enforcer.getModel();
      model.addPolicies('p', 'p', rules.map((r) => [r.sub, r.obj, r.act, r.eft, r.qos, r.retain]));
      const stored = model.model.get('p')?.get('p')?.policy ?? [];
      if (stored.length !== rules.length) throw new Error(`casbin kept ${stored.length} of ${rules.length} rules for ${subject}`);
      const map = new Map<string[], PolicyRule>();
      stored.forEach((fields, i) => map.set(fields, rules[i] as PolicyRule));
      index.set(subject, { enforcer, rules: map });
    }
    const roleLinks = new Map<string, string[]>();
    for (const link of set.links) {
      let roles = roleLinks.get(link.member);
      if (roles === undefined) roleLinks.set(link.member, (roles = []));
      roles.push(link.role);
    }
    return new CasbinEngine(set, index, roleLinks);
  }

  /** The subjects a principal speaks as: its user, client id and roles, with roles from `g` lines followed transitively. */
  identify(principal: Principal): RequestIdentity {
    const subjects = new Set<string>();
    const queue: string[] = [`client:${principal.clientId}`];
    if (principal.username !== undefined) queue.push(`user:${principal.username}`);
    for (const role of principal.roles) queue.push(`role:${role}`);
    while (queue.length > 0) {
      const s = queue.shift() as string;
      if (subjects.has(s)) continue; // cycles in g lines end here
      subjects.add(s);
      for (const r of this.roleLinks.get(s) ?? []) queue.push(r);
    }
    const roles = [...subjects].filter((s) => s.startsWith('role:')).map((s) => s.slice(5));
    return { username: principal.username, clientId: principal.clientId, roles, subjects, attributes: principal.attributes };
  }

  /** Deny-override over the enforcers of `*` and each of the requester's subjects; no rule means `none`. */
  evaluate(who: RequestIdentity, action: MatchAction, topic: string, qos: number, retain: boolean): Evaluation {
    let allow: PolicyRule | undefined;
    for (const subject of ['*', ...who.subjects]) {
      const entry = this.index.get(subject);
      if (entry === undefined) continue;
      const [, fields] = entry.enforcer.enforceExSync(who, topic, action, qos, retain) as [boolean, string[]];
      if (fields.length === 0) continue;
      const rule = entry.rules.get(fields);
      // Never guess: an answer we cannot trace to a line fails the request (the chain denies).
      if (rule === undefined) throw new Error(`casbin matched a rule that is not in the policy: ${fields.join(', ')}`);
      if (rule.eft === 'deny') return { effect: 'deny', rule };
      allow ??= rule;
    }
    return allow === undefined ? { effect: 'none' } : { effect: 'allow', rule: allow };
  }

  get ruleCount(): number {
    return this.set.rules.length;
  }
}
