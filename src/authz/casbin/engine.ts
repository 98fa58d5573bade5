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
import { conditionsHold, ruleMatches, type Effect, type MatchAction, type MatchRequest, type RequestIdentity } from './matcher.ts';
import { canonicalModelText, MATCHER_FUNCTIONS } from './model-file.ts';
import { PolicyError } from './policy-error.ts';
import type { PolicyRule, PolicySet } from './policy-file.ts';

/** What the policy says about one request, and the line that decided it. */
export interface Evaluation {
  /** `none`: no rule applies (the default, deny). */
  effect: Effect | 'none';
  rule?: PolicyRule;
  /** Rules whose placeholders expanded past the limit while this request was decided, with the count. */
  overflows: { rule: PolicyRule; count: number }[];
}

/** A rule that would have applied but for its QoS or retain condition. */
export interface NearMiss {
  rule: PolicyRule;
  /** `QoS condition 0-1 excludes QoS 2`, `retain condition false excludes a retained message`. */
  why: string;
}

export interface EngineOptions {
  /** Strict subscribe mode: a deny rule refuses every filter it overlaps (not only those it covers). */
  overlapRefuses: boolean;
}

interface SubjectIndex {
  enforcer: Enforcer;
  /** casbin hands back the rule array it matched; map it to our rule (with its file and line). */
  rules: Map<string[], PolicyRule>;
  list: PolicyRule[];
}

function asRequest(value: unknown): MatchRequest {
  return value as MatchRequest;
}

/** The custom functions the model's matcher calls, with casbin's untyped arguments narrowed here. */
function matcherFunctions(options: EngineOptions): Record<string, (...args: unknown[]) => boolean> {
  return {
    subjectMatch: (rSub: unknown, pSub: unknown): boolean => pSub === '*' || asRequest(rSub).who.subjects.has(String(pSub)),
    mqttMatch: (rSub: unknown, rAct: unknown, rObj: unknown, pSub: unknown, pObj: unknown, pAct: unknown, pEft: unknown): boolean =>
      ruleMatches(asRequest(rSub), rAct as MatchAction, String(rObj), String(pSub), String(pObj), String(pAct), pEft === 'deny' ? 'deny' : 'allow', options.overlapRefuses),
    conditionMatch: (rQos: unknown, rRetain: unknown, pQos: unknown, pRetain: unknown): boolean => conditionsHold(String(pQos), String(pRetain), Number(rQos), rRetain === true),
  };
}

/** What casbin loaded from a model text: `section.key -> value`, whitespace dropped. */
function loaded(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const [section, assertions] of newModelFromString(text).model) {
    for (const [key, assertion] of assertions) out.set(`${section}.${key}`, assertion.value.replace(/\s+/g, ''));
  }
  return out;
}

let canonical: Map<string, string> | undefined;

/**
 * The model validator reads the file as casbin's reader does; this asks casbin itself what it
 * loaded and compares it with the documented model, so a difference between the two readers
 * cannot let another matcher through.
 */
function checkLoadedModel(set: PolicySet, file: string): void {
  canonical ??= loaded(canonicalModelText());
  let got: Map<string, string>;
  try {
    got = loaded(set.modelText);
  } catch (err) {
    throw new PolicyError(file, undefined, `casbin cannot read the model: ${(err as Error).message}`);
  }
  for (const [key, value] of got) {
    if (canonical.get(key) !== value) throw new PolicyError(file, undefined, `casbin reads '${key.replace('.', ' ')} = ${value}', which is not the documented model`);
  }
  for (const key of canonical.keys()) if (!got.has(key)) throw new PolicyError(file, undefined, `casbin reads no '${key.replace('.', ' ')}' from the model`);
}

export class CasbinEngine {
  private constructor(
    readonly set: PolicySet,
    private readonly index: Map<string, SubjectIndex>,
    private readonly roleLinks: Map<string, string[]>,
    private readonly options: EngineOptions,
  ) {}

  /** Builds one enforcer per subject from a validated policy set. `modelFile` names the model in errors. */
  static async build(set: PolicySet, options: EngineOptions = { overlapRefuses: false }, modelFile = 'model'): Promise<CasbinEngine> {
    checkLoadedModel(set, modelFile);
    const functions = matcherFunctions(options);
    if (Object.keys(functions).join() !== MATCHER_FUNCTIONS.join()) throw new Error('the matcher functions and the model disagree');
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
      for (const [name, fn] of Object.entries(functions)) await enforcer.addFunction(name, fn);
      const model = enforcer.getModel();
      model.addPolicies('p', 'p', rules.map((r) => [r.sub, r.obj, r.act, r.eft, r.qos, r.retain]));
      const stored = model.model.get('p')?.get('p')?.policy ?? [];
      if (stored.length !== rules.length) throw new Error(`casbin kept ${stored.length} of ${rules.length} rules for ${subject}`);
      const map = new Map<string[], PolicyRule>();
      stored.forEach((fields, i) => map.set(fields, rules[i] as PolicyRule));
      index.set(subject, { enforcer, rules: map, list: rules });
    }
    const roleLinks = new Map<string, string[]>();
    for (const link of set.links) {
      let roles = roleLinks.get(link.member);
      if (roles === undefined) roleLinks.set(link.member, (roles = []));
      roles.push(link.role);
    }
    return new CasbinEngine(set, index, roleLinks, options);
  }

  /**
   * The subjects a principal speaks as: its user, client id and roles, with roles from `g` lines
   * followed transitively. On a listener that does not bind client ids (`clientIdBound` false),
   * the client id, and every role reached only through it, count for deny rules alone.
   */
  identify(principal: Principal, clientIdBound = true): RequestIdentity {
    const trusted = new Set<string>();
    const queue: string[] = [];
    if (principal.username !== undefined) queue.push(`user:${principal.username}`);
    for (const role of principal.roles) queue.push(`role:${role}`);
    if (clientIdBound) queue.push(`client:${principal.clientId}`);
    this.follow(queue, trusted, new Set());
    const denyOnly = new Set<string>();
    if (!clientIdBound) this.follow([`client:${principal.clientId}`], denyOnly, trusted);
    const subjects = new Set([...trusted, ...denyOnly]);
    const rolesOf = (set: Set<string>): string[] => [...set].filter((s) => s.startsWith('role:')).map((s) => s.slice(5));
    return {
      username: principal.username,
      clientId: principal.clientId,
      roles: rolesOf(trusted),
      allRoles: rolesOf(subjects),
      subjects,
      denyOnly,
      clientIdBound,
      attributes: principal.attributes,
    };
  }

  /** Adds `start` and the roles it links to, transitively, to `into`; stops at subjects in `known`. */
  private follow(start: string[], into: Set<string>, known: ReadonlySet<string>): void {
    const queue = [...start];
    while (queue.length > 0) {
      const s = queue.shift() as string;
      if (into.has(s) || known.has(s)) continue; // cycles in g lines end here
      into.add(s);
      for (const r of this.roleLinks.get(s) ?? []) queue.push(r);
    }
  }

  /** Deny-override over the enforcers of `*` and each of the requester's subjects; no rule means `none`. */
  evaluate(who: RequestIdentity, action: MatchAction, topic: string, qos: number, retain: boolean, shareGroup?: string): Evaluation {
    const request: MatchRequest = { who, shareGroup, overflows: [] };
    let allow: PolicyRule | undefined;
    let deny: PolicyRule | undefined;
    for (const subject of ['*', ...who.subjects]) {
      const entry = this.index.get(subject);
      if (entry === undefined) continue;
      const [, fields] = entry.enforcer.enforceExSync(request, topic, action, qos, retain) as [boolean, string[]];
      if (fields.length === 0) continue;
      const rule = entry.rules.get(fields);
      // Never guess: an answer we cannot trace to a line fails the request (the chain denies).
      if (rule === undefined) throw new Error(`casbin matched a rule that is not in the policy: ${fields.join(', ')}`);
      if (rule.eft === 'deny') {
        deny = rule;
        break;
      }
      allow ??= rule;
    }
    const overflows = request.overflows.length === 0 ? [] : this.traceOverflows(request, qos, retain);
    if (deny !== undefined) return { effect: 'deny', rule: deny, overflows };
    return allow === undefined ? { effect: 'none', overflows } : { effect: 'allow', rule: allow, overflows };
  }

  /** Maps the matcher's overflow notes back to policy lines (the first whose conditions hold). */
  private traceOverflows(request: MatchRequest, qos: number, retain: boolean): { rule: PolicyRule; count: number }[] {
    const out: { rule: PolicyRule; count: number }[] = [];
    for (const o of request.overflows) {
      const rule = this.index.get(o.sub)?.list.find((r) => r.obj === o.obj && r.act === o.act && r.eft === o.eft && conditionsHold(r.qos, r.retain, qos, retain));
      if (rule !== undefined && !out.some((x) => x.rule === rule)) out.push({ rule, count: o.count });
    }
    return out;
  }

  /**
   * Rules that speak about this request (subject, action, filter) but whose QoS or retain
   * condition excluded it: what `policy explain` names when nothing allowed.
   */
  nearMisses(who: RequestIdentity, action: MatchAction, topic: string, qos: number, retain: boolean, shareGroup?: string): NearMiss[] {
    const out: NearMiss[] = [];
    for (const subject of ['*', ...who.subjects]) {
      for (const rule of this.index.get(subject)?.list ?? []) {
        if (conditionsHold(rule.qos, rule.retain, qos, retain)) continue;
        const request: MatchRequest = { who, shareGroup, overflows: [] };
        if (!ruleMatches(request, action, topic, rule.sub, rule.obj, rule.act, rule.eft, this.options.overlapRefuses)) continue;
        const why: string[] = [];
        if (!conditionsHold(rule.qos, '*', qos, retain)) why.push(`its QoS condition ${rule.qos} excludes QoS ${qos}`);
        if (!conditionsHold('*', rule.retain, qos, retain)) why.push(`its retain condition ${rule.retain} excludes ${retain ? 'a retained message' : 'a message that is not retained'}`);
        out.push({ rule, why: why.join(' and ') });
      }
    }
    return out.sort((a, b) => order(a.rule) - order(b.rule));
  }

  get ruleCount(): number {
    return this.set.rules.length;
  }
}

const order = (rule: PolicyRule): number => Number(rule.source.slice(rule.source.lastIndexOf(':') + 1));
