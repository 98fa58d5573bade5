/**
 * The Casbin authorizer: validated policy files, a per-subject index, a bounded LRU decision
 * cache, JWT topic claims, and atomic reloads (file change, SIGHUP, CLI).
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Decision, Principal } from '../../auth/types.ts';
import { ReasonCode } from '../../protocol/reason-codes.ts';
import type { AccessContext, Action, Authorizer, ReloadReport } from '../types.ts';
import { CasbinEngine, type Evaluation } from './engine.ts';
import { checkTopicFilter } from '../../protocol/topic.ts';
import { policyApplies, type RequestIdentity } from './matcher.ts';
import { loadPolicySet, type PolicyRule, type PolicySet } from './policy-file.ts';

export type JwtTopicMode = 'intersection' | 'union' | 'ignore';

export interface CasbinAuthorizerOptions {
  model: string;
  policy: string;
  /** Reload when either file changes. */
  watch?: boolean;
  /** Most cached decisions (all principals together). 0 disables the cache. */
  cacheSize?: number;
  /** How a JWT topic claim (`principal.attributes.jwt[claim]`) combines with the file policy. */
  jwtTopics?: { claim?: string; mode?: JwtTopicMode };
}

/** What a reload did, for the broker's audit record. */
export interface PolicyReloadReport extends ReloadReport {
  authorizer: string;
  trigger: string;
  warnings: string[];
}

/** A decision with the reasoning behind it, for `policy explain` and tests. */
export interface Explanation {
  decision: 'allow' | 'deny';
  /** The policy line that decided, when one did. */
  rule?: PolicyRule;
  detail: string;
}

const NOT_READY: Decision = { kind: 'deny', reason: ReasonCode.NotAuthorized, detail: 'casbin authorizer: policy not loaded yet' };

/** A Map used as an LRU: a hit moves the entry to the end; the first entry is the oldest. */
class DecisionCache {
  private map = new Map<string, Decision>();
  constructor(private readonly max: number) {}
  get(key: string): Decision | undefined {
    const hit = this.map.get(key);
    if (hit !== undefined) {
      this.map.delete(key);
      this.map.set(key, hit);
    }
    return hit;
  }
  set(key: string, value: Decision): void {
    if (this.max === 0) return;
    if (this.map.size >= this.max) this.map.delete(this.map.keys().next().value as string);
    this.map.set(key, value);
  }
  clear(): void {
    this.map = new Map();
  }
  get size(): number {
    return this.map.size;
  }
}

export class CasbinAuthorizer implements Authorizer {
  readonly id: string;
  private set: PolicySet;
  private engine: CasbinEngine | null = null;
  private readonly cache: DecisionCache;
  /** Each principal gets a number: the cache key is JSON of (number, action, topic, qos, retain), so keys cannot collide. */
  private readonly principals = new WeakMap<Principal, { n: number; generation: number; who: RequestIdentity }>();
  private nextPrincipal = 1;
  private generation = 0;
  private readonly listeners: ((report: PolicyReloadReport) => void)[] = [];
  private watchers: fs.FSWatcher[] = [];
  private debounce: NodeJS.Timeout | null = null;
  private reloading: Promise<PolicyReloadReport> = Promise.resolve({ ok: true, authorizer: '', trigger: '', warnings: [] });
  private readonly claim: string;
  private readonly mode: JwtTopicMode;

  /** Reads and validates the files now; throws PolicyError naming the file and line. Call {@link init} before use. */
  constructor(
    private readonly options: CasbinAuthorizerOptions,
    id = 'casbin',
  ) {
    this.id = id;
    this.set = loadPolicySet(options.model, options.policy);
    this.cache = new DecisionCache(options.cacheSize ?? 100_000);
    this.claim = options.jwtTopics?.claim ?? 'topics';
    this.mode = options.jwtTopics?.mode ?? 'intersection';
  }

  /** Builds the enforcers and starts watching the files. Until it resolves, every request is denied. */
  async init(): Promise<void> {
    if (this.engine !== null) return;
    this.engine = await CasbinEngine.build(this.set);
    if (this.options.watch === true) this.watch();
  }

  /** The loaded policy's version (a hash of the model and policy text). */
  get version(): string {
    return this.set.version;
  }

  get warnings(): readonly string[] {
    return this.set.warnings;
  }

  get cachedDecisions(): number {
    return this.cache.size;
  }

  /** Called after every reload attempt, good or bad. */
  onReload(listener: (report: PolicyReloadReport) => void): void {
    this.listeners.push(listener);
  }

  authorize(who: Principal, action: Action, topic: string, ctx: AccessContext): Decision {
    const engine = this.engine;
    if (engine === null) return NOT_READY;
    let entry = this.principals.get(who);
    if (entry === undefined || entry.generation !== this.generation) {
      entry = { n: entry?.n ?? this.nextPrincipal++, generation: this.generation, who: engine.identify(who) };
      this.principals.set(who, entry);
    }
    const key = JSON.stringify([entry.n, action, topic, ctx.qos, ctx.retain]);
    const cached = this.cache.get(key);
    if (cached !== undefined) return cached;
    const decision = toDecision(this.decide(engine, entry.who, action, topic, ctx.qos, ctx.retain));
    this.cache.set(key, decision);
    return decision;
  }

  /** The decision and the rule behind it, without the cache. */
  explain(who: Principal, action: Action, topic: string, qos: 0 | 1 | 2 = 0, retain = false): Explanation {
    const engine = this.engine;
    if (engine === null) return { decision: 'deny', detail: NOT_READY.kind === 'deny' ? NOT_READY.detail : '' };
    return this.decide(engine, engine.identify(who), action, topic, qos, retain);
  }

  private decide(engine: CasbinEngine, who: RequestIdentity, action: Action, topic: string, qos: number, retain: boolean): Explanation {
    const result: Evaluation = engine.evaluate(who, action, topic, qos, retain);
    if (result.effect === 'deny') return { decision: 'deny', rule: result.rule as PolicyRule, detail: `denied by ${describe(result.rule as PolicyRule)}` };
    // Unsubscribing only ever removes access: allowed unless a deny rule speaks about it.
    if (action === 'unsubscribe') return { decision: 'allow', detail: 'unsubscribe is allowed unless a deny rule matches' };
    const claim = this.mode === 'ignore' ? undefined : jwtTopicClaim(who.attributes, this.claim);
    if (claim !== undefined) {
      const claimAllows = claimGrants(claim, action, topic);
      if (this.mode === 'intersection') {
        if (result.effect !== 'allow') return { decision: 'deny', detail: 'no policy rule allows it' };
        if (!claimAllows) return { decision: 'deny', rule: result.rule as PolicyRule, detail: `the JWT claim '${this.claim}' does not allow it (policy allowed by ${describe(result.rule as PolicyRule)})` };
        return { decision: 'allow', rule: result.rule as PolicyRule, detail: `allowed by ${describe(result.rule as PolicyRule)} and the JWT claim '${this.claim}'` };
      }
      if (claimAllows) return { decision: 'allow', ...(result.rule ? { rule: result.rule } : {}), detail: `allowed by the JWT claim '${this.claim}'` };
    }
    if (result.effect === 'allow') return { decision: 'allow', rule: result.rule as PolicyRule, detail: `allowed by ${describe(result.rule as PolicyRule)}` };
    return { decision: 'deny', detail: this.set.rules.length === 0 ? 'the policy is empty: everything is denied' : 'no policy rule allows it' };
  }

  /**
   * Re-reads and validates both files and swaps them in atomically. A bad file keeps the last
   * good policy. A good reload clears the decision cache. Reloads run one at a time.
   */
  reload(trigger = 'api'): Promise<PolicyReloadReport> {
    this.reloading = this.reloading.then(() => this.reloadNow(trigger));
    return this.reloading;
  }

  private async reloadNow(trigger: string): Promise<PolicyReloadReport> {
    let report: PolicyReloadReport;
    try {
      const set = loadPolicySet(this.options.model, this.options.policy);
      const engine = await CasbinEngine.build(set);
      this.set = set;
      this.engine = engine;
      this.generation++;
      this.cache.clear();
      report = { ok: true, version: set.version, authorizer: this.id, trigger, warnings: set.warnings, detail: `${set.rules.length} rules, ${set.links.length} role links` };
    } catch (err) {
      report = { ok: false, version: this.set.version, authorizer: this.id, trigger, warnings: [], detail: (err as Error).message };
    }
    for (const listener of this.listeners) {
      try {
        listener(report);
      } catch {
        // a listener's failure must not undo the reload
      }
    }
    return report;
  }

  private watch(): void {
    const files = new Set([path.resolve(this.options.model), path.resolve(this.options.policy)]);
    const dirs = new Set([...files].map((f) => path.dirname(f)));
    for (const dir of dirs) {
      try {
        const watcher = fs.watch(dir, (_event, name) => {
          if (name === null || !files.has(path.join(dir, name.toString()))) return;
          // Editors write in several steps: wait for the file to settle.
          if (this.debounce !== null) clearTimeout(this.debounce);
          this.debounce = setTimeout(() => {
            this.debounce = null;
            const before = this.set.version;
            void this.reloadIfChanged(before);
          }, 150);
          this.debounce.unref();
        });
        watcher.unref();
        this.watchers.push(watcher);
      } catch {
        // A directory that cannot be watched: SIGHUP and the CLI still reload.
      }
    }
  }

  private async reloadIfChanged(before: string): Promise<void> {
    let changed = true;
    try {
      changed = loadPolicySet(this.options.model, this.options.policy).version !== before;
    } catch {
      changed = true; // a bad file is reported by the reload itself
    }
    if (changed) await this.reload('file change');
  }

  async close(): Promise<void> {
    if (this.debounce !== null) clearTimeout(this.debounce);
    for (const w of this.watchers) w.close();
    this.watchers = [];
  }
}

function toDecision(e: Explanation): Decision {
  return e.decision === 'allow' ? { kind: 'allow', value: undefined } : { kind: 'deny', reason: ReasonCode.NotAuthorized, detail: e.detail };
}

/** `file:line (p, sub, obj, act, eft, qos, retain)`: how a rule is named in audit records and explain. */
export function describe(rule: PolicyRule): string {
  return `${rule.source} (p, ${rule.sub}, ${rule.obj}, ${rule.act}, ${rule.eft}, ${rule.qos}, ${rule.retain})`;
}

/** A topic claim: a list of filters for every action, or `{ publish: [...], subscribe: [...] }`. */
const CLAIM_LIMITS = { maxTopicLength: 65535, maxTopicLevels: 1024 };
type TopicClaim = { publish: string[]; subscribe: string[] };

function jwtTopicClaim(attributes: Record<string, unknown>, claim: string): TopicClaim | undefined {
  const jwt = attributes.jwt;
  if (jwt === null || typeof jwt !== 'object' || !Object.hasOwn(jwt, claim)) return undefined;
  const value = (jwt as Record<string, unknown>)[claim];
  // Only well-formed filters count; anything else in the claim grants nothing.
  const strings = (v: unknown): string[] =>
    Array.isArray(v) ? v.filter((s): s is string => typeof s === 'string' && checkTopicFilter(s.startsWith('$share/') ? s.replace(/^\$share\/[^/]+\//, '') : s, CLAIM_LIMITS).ok) : [];
  if (Array.isArray(value)) return { publish: strings(value), subscribe: strings(value) };
  if (value !== null && typeof value === 'object') {
    const o = value as Record<string, unknown>;
    return { publish: strings(o.publish), subscribe: strings(o.subscribe) };
  }
  return { publish: [], subscribe: [] }; // a claim of the wrong shape grants nothing
}

function claimGrants(claim: TopicClaim, action: Action, topic: string): boolean {
  const list = action === 'publish' ? claim.publish : claim.subscribe;
  return list.some((filter) => policyApplies(filter, action, topic, 'allow'));
}
