/**
 * The Casbin authorizer: validated policy files, a per-subject index, a bounded LRU decision
 * cache, JWT topic claims, and atomic reloads (file change, SIGHUP, CLI).
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Decision, Principal } from '../../auth/types.ts';
import { ReasonCode } from '../../protocol/reason-codes.ts';
import type { AccessContext, Action, Authorizer, AuthzResult, ReloadReport } from '../types.ts';
import { CasbinEngine, type Evaluation, type NearMiss } from './engine.ts';
import { checkTopicFilter } from '../../protocol/topic.ts';
import { MAX_EXPANSIONS, policyApplies, type RequestIdentity } from './matcher.ts';
import { checkClientIdBinding, type ClientIdRules, type ListenerBinding } from './client-id.ts';
import { loadPolicySet, type PolicyRule, type PolicySet } from './policy-file.ts';
import { Generations } from '../../util/generations.ts';

export type JwtTopicMode = 'intersection' | 'union' | 'ignore';
export type { ClientIdRules, ListenerBinding } from './client-id.ts';

/** How a subscribe deny rule treats a filter it only overlaps: withhold the deliveries it covers, or refuse the filter. */
export type SubscribeDenyMode = 'withhold' | 'refuse';

export interface CasbinAuthorizerOptions {
  model: string;
  policy: string;
  /** Reload when either file changes. */
  watch?: boolean;
  /** Most cached decisions (all principals together). 0 disables the cache. */
  cacheSize?: number;
  /** How a JWT topic claim (`principal.attributes.jwt[claim]`) combines with the file policy. */
  jwtTopics?: { claim?: string; mode?: JwtTopicMode };
  /**
   * A subscribe deny rule that overlaps a filter without covering all of it: `withhold` (the
   * default) grants the subscription and withholds every delivery the rule covers; `refuse`
   * refuses the filter (the strict mode).
   */
  subscribeDenyOverlap?: SubscribeDenyMode;
  /**
   * The broker's listeners and whether each binds client ids to the identity. Without it, no
   * listener is known to bind them. Filled from the configuration by createBroker.
   */
  listeners?: readonly ListenerBinding[];
  /**
   * Policy lines keyed on the client id (`client:` subjects and members, `%c`): `require-binding`
   * (the default) refuses them at load unless every listener binds client ids; `bound-listeners`
   * accepts them and lets them allow only on listeners that bind (they still deny everywhere).
   */
  clientIdRules?: ClientIdRules;
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
  /** Rules that would have applied but for their QoS or retain condition (explain only). */
  nearMisses?: NearMiss[];
}

/** Optional parts of a request, for {@link CasbinAuthorizer.explain}. */
export interface ExplainOptions {
  listener?: string;
  shareGroup?: string;
}

const NOT_READY: Decision = { kind: 'deny', reason: ReasonCode.NotAuthorized, detail: 'casbin authorizer: policy not loaded yet' };

/**
 * The decision cache: bounded by two generations, so a client publishing to ever new topics
 * costs O(1) per miss; a hit in the young generation is two Map lookups and writes nothing.
 *
 * Keyed by topic, then by a number: the principal's number, the action, the QoS and the retain
 * flag. A fan-out asks it once per subscriber with the same topic string, whose hash V8 computes
 * once and keeps; the number needs no string at all. (A string key built per question, JSON of the
 * five values, was half of the broker's CPU in a QoS 0 fan-out to 50 subscribers with security on:
 * an array, its JSON and a fresh hash per delivery.) A delivery through a shared subscription
 * names its group too; those few go to a map of their own with JSON keys, so no key of one kind
 * can equal a key of the other.
 *
 * Not a Map reordered on every hit (delete + set), the textbook LRU: each delete leaves a hole in
 * V8's hash table and each set appends, so every few dozen hits V8 copies the table into a new
 * one, and V8 allocates the new table in the generation of the one it replaces. Once a garbage
 * collection has moved the table to the old generation (a start-up burst or a full collection
 * is enough, and then it stays there), every copy is old-generation garbage: with the hundred or
 * so decisions a busy broker asks again and again, about 1 MB per young collection, a
 * mark-compact every few seconds and 5-10 % of QoS 0 throughput with security on
 * (docs/performance.md, "Metrics on against off"). And evicting its first key rescanned the holes
 * that deletes left: about 25 µs per miss at 100,000 entries.
 */
// The same two-generation scheme as util/generations.ts, kept here because it counts decisions,
// not keys: one topic holds many (a Generations of per-topic maps would bound topics only).
class DecisionCache {
  /** topic → (slot → decision); the young generation holds at most `half` decisions, as does the old. */
  private young = new Map<string, Map<number, AuthzResult>>();
  private old = new Map<string, Map<number, AuthzResult>>();
  private youngCount = 0;
  private oldCount = 0;
  private readonly half: number;
  private readonly keepOld: boolean;
  private readonly enabled: boolean;
  /** Deliveries through a shared subscription: JSON of (slot, topic, group). */
  private readonly grouped: Generations<AuthzResult> | null;

  /** At most `max` decisions in all: a quarter of them for shared-subscription deliveries. */
  constructor(max: number) {
    const grouped = Math.floor(max / 4);
    const plain = max - grouped;
    this.enabled = plain > 0;
    this.half = Math.max(1, Math.floor(plain / 2));
    this.keepOld = plain >= 2;
    this.grouped = grouped === 0 ? null : new Generations(grouped);
  }

  /** The decision for (topic, slot), touched: one found in the old generation moves to the young one. */
  get(topic: string, slot: number): AuthzResult | undefined {
    const y = this.young.get(topic);
    if (y !== undefined) {
      const d = y.get(slot);
      if (d !== undefined) return d;
    }
    const o = this.old.get(topic);
    const d = o?.get(slot);
    if (d === undefined) return undefined;
    this.dropOld(topic, o as Map<number, AuthzResult>, slot);
    this.put(topic, slot, d);
    return d;
  }

  set(topic: string, slot: number, decision: AuthzResult): void {
    if (!this.enabled) return;
    const o = this.old.get(topic);
    if (o !== undefined && o.has(slot)) this.dropOld(topic, o, slot);
    this.put(topic, slot, decision);
  }

  getGrouped(key: string): AuthzResult | undefined {
    return this.grouped?.use(key);
  }

  setGrouped(key: string, decision: AuthzResult): void {
    this.grouped?.set(key, decision);
  }

  clear(): void {
    this.young = new Map();
    this.old = new Map();
    this.youngCount = this.oldCount = 0;
    this.grouped?.clear();
  }

  get size(): number {
    return this.youngCount + this.oldCount + (this.grouped?.size ?? 0);
  }

  private dropOld(topic: string, o: Map<number, AuthzResult>, slot: number): void {
    o.delete(slot);
    this.oldCount--;
    if (o.size === 0) this.old.delete(topic);
  }

  /** Swaps before a new decision would make the young generation exceed `half`. */
  private put(topic: string, slot: number, decision: AuthzResult): void {
    let y = this.young.get(topic);
    if (y === undefined || !y.has(slot)) {
      if (this.youngCount >= this.half) {
        this.old = this.keepOld ? this.young : new Map();
        this.oldCount = this.keepOld ? this.youngCount : 0;
        this.young = new Map();
        this.youngCount = 0;
        y = undefined;
      }
      if (y === undefined) this.young.set(topic, (y = new Map()));
      this.youngCount++;
    }
    y.set(slot, decision);
  }
}

const ACTION_SLOT: Record<Action, number> = { publish: 0, subscribe: 1, unsubscribe: 2, deliver: 3 };

/** A question's number within its topic: the principal's number, the action, the QoS and the retain flag (8 slots per action). */
function slotOf(n: number, action: Action, qos: number, retain: boolean): number {
  return n * 32 + ACTION_SLOT[action] * 8 + qos * 2 + (retain ? 1 : 0);
}

export class CasbinAuthorizer implements Authorizer {
  readonly id: string;
  private set: PolicySet;
  private engine: CasbinEngine | null = null;
  private readonly cache: DecisionCache;
  /**
   * Each principal gets a number, and a new one when the client-id binding of its listener
   * differs: the cache is keyed by topic and a number made of it, the action, the QoS and the
   * retain flag (see slotOf), so keys cannot collide.
   */
  private readonly principals = new WeakMap<Principal, { n: number; generation: number; bound: boolean; who: RequestIdentity }>();
  private nextPrincipal = 1;
  private generation = 0;
  /** The last reload failed: a file change back to the last good content must still reload (and say so). */
  private lastReloadFailed = false;
  private readonly listeners: ((report: PolicyReloadReport) => void)[] = [];
  private watchers: fs.FSWatcher[] = [];
  private debounce: NodeJS.Timeout | null = null;
  private reloading: Promise<PolicyReloadReport> = Promise.resolve({ ok: true, authorizer: '', trigger: '', warnings: [] });
  private readonly claim: string;
  private readonly mode: JwtTopicMode;
  private readonly overlapRefuses: boolean;
  /** Listeners that bind client ids to the identity; any other listener does not. */
  private readonly boundListeners: ReadonlySet<string>;

  /** Reads and validates the files now; throws PolicyError naming the file and line. Call {@link init} before use. */
  constructor(
    private readonly options: CasbinAuthorizerOptions,
    id = 'casbin',
  ) {
    this.id = id;
    this.boundListeners = new Set((options.listeners ?? []).filter((l) => l.clientIdBound).map((l) => l.name));
    this.set = this.load();
    this.cache = new DecisionCache(options.cacheSize ?? 100_000);
    this.claim = options.jwtTopics?.claim ?? 'topics';
    this.mode = options.jwtTopics?.mode ?? 'intersection';
    this.overlapRefuses = options.subscribeDenyOverlap === 'refuse';
  }

  /** Reads and validates both files, and the policy's client-id lines against the listeners. */
  private load(): PolicySet {
    const set = loadPolicySet(this.options.model, this.options.policy);
    checkClientIdBinding(set, this.options.listeners, this.options.clientIdRules ?? 'require-binding');
    return set;
  }

  /** Builds the enforcers and starts watching the files. Until it resolves, every request is denied. */
  async init(): Promise<void> {
    if (this.engine !== null) return;
    this.engine = await CasbinEngine.build(this.set, { overlapRefuses: this.overlapRefuses }, this.options.model);
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

  /** True when the listener binds client ids to the identity (the configuration says so). */
  clientIdBound(listener: string): boolean {
    return this.boundListeners.has(listener);
  }

  /**
   * Decides, from the cache when it can. Every decision, allow or deny, names this authorizer
   * (`decidedBy`), the deciding policy line (`rule`, `file:line`) when one decided, and the
   * policy version, for the audit record.
   */
  authorize(who: Principal, action: Action, topic: string, ctx: AccessContext): AuthzResult {
    const engine = this.engine;
    if (engine === null) return NOT_READY;
    const bound = this.boundListeners.has(ctx.listener);
    let entry = this.principals.get(who);
    if (entry === undefined || entry.generation !== this.generation || entry.bound !== bound) {
      const n = entry !== undefined && entry.bound === bound ? entry.n : this.nextPrincipal++;
      entry = { n, generation: this.generation, bound, who: engine.identify(who, bound) };
      this.principals.set(who, entry);
    }
    const slot = slotOf(entry.n, action, ctx.qos, ctx.retain);
    // Only a delivery on a shared subscription names a group.
    const group = action === 'deliver' ? ctx.shareGroup : undefined;
    if (group !== undefined) {
      const key = JSON.stringify([slot, topic, group]);
      const cached = this.cache.getGrouped(key);
      if (cached !== undefined) return cached;
      const decision = this.toDecision(this.decide(engine, entry.who, action, topic, ctx.qos, ctx.retain, group));
      this.cache.setGrouped(key, decision);
      return decision;
    }
    const cached = this.cache.get(topic, slot);
    if (cached !== undefined) return cached;
    const decision = this.toDecision(this.decide(engine, entry.who, action, topic, ctx.qos, ctx.retain));
    this.cache.set(topic, slot, decision);
    return decision;
  }

  /** The decision and the rule behind it, without the cache; a denial names the rules its QoS or retain condition excluded. */
  explain(who: Principal, action: Action, topic: string, qos: 0 | 1 | 2 = 0, retain = false, options: ExplainOptions = {}): Explanation {
    const engine = this.engine;
    if (engine === null) return { decision: 'deny', detail: NOT_READY.kind === 'deny' ? NOT_READY.detail : '' };
    // Without a listener, explain answers for a listener that binds client ids when one does.
    const bound = options.listener !== undefined ? this.clientIdBound(options.listener) : this.boundListeners.size > 0;
    const identity = engine.identify(who, bound);
    const group = action === 'deliver' ? options.shareGroup : undefined;
    const e = this.decide(engine, identity, action, topic, qos, retain, group);
    if (e.decision === 'allow') return e;
    const nearMisses = engine.nearMisses(identity, action, topic, qos, retain, group).filter((m) => m.rule.eft === 'allow');
    return nearMisses.length === 0 ? e : { ...e, nearMisses };
  }

  private decide(engine: CasbinEngine, who: RequestIdentity, action: Action, topic: string, qos: number, retain: boolean, shareGroup?: string): Explanation {
    const result: Evaluation = engine.evaluate(who, action, topic, qos, retain, shareGroup);
    if (result.effect === 'deny') {
      const rule = result.rule as PolicyRule;
      const overflow = result.overflows.find((o) => o.rule === rule);
      const why = overflow !== undefined ? `: its placeholders expand to ${overflow.count} filters, over the limit of ${MAX_EXPANSIONS}, so the deny rule applies to every topic (fail closed)` : '';
      return { decision: 'deny', rule, detail: `denied by ${describe(rule)}${why}` };
    }
    const e = this.allowOrNot(result, who, action, topic, shareGroup);
    if (e.decision === 'allow' || result.overflows.length === 0) return e;
    // An allow rule that could not be expanded did not allow: say so, with the count.
    const skipped = result.overflows.filter((o) => o.rule.eft === 'allow');
    const first = skipped[0];
    if (first === undefined) return e;
    const notes = skipped.map((o) => `${o.rule.source} was not applied: its placeholders expand to ${o.count} filters, over the limit of ${MAX_EXPANSIONS}`);
    // The audit record names the rule that could not be applied (and the count is in the detail).
    return { ...e, rule: e.rule ?? first.rule, detail: `${e.detail} (${notes.join('; ')})` };
  }

  /** After no deny rule matched: the policy's allow, the JWT claim, or the default deny. */
  private allowOrNot(result: Evaluation, who: RequestIdentity, action: Action, topic: string, shareGroup: string | undefined): Explanation {
    // Unsubscribing only ever removes access: allowed unless a deny rule speaks about it.
    if (action === 'unsubscribe') return { decision: 'allow', detail: 'unsubscribe is allowed unless a deny rule matches' };
    const claim = this.mode === 'ignore' ? undefined : jwtTopicClaim(who.attributes, this.claim);
    if (claim !== undefined) {
      const claimAllows = claimGrants(claim, action, topic, shareGroup);
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

  private toDecision(e: Explanation): AuthzResult {
    const by = { decidedBy: this.id, ...(e.rule !== undefined ? { rule: e.rule.source } : {}), policyVersion: this.set.version };
    return e.decision === 'allow' ? { kind: 'allow', value: undefined, ...by } : { kind: 'deny', reason: ReasonCode.NotAuthorized, detail: e.detail, ...by };
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
      const set = this.load();
      const engine = await CasbinEngine.build(set, { overlapRefuses: this.overlapRefuses }, this.options.model);
      this.set = set;
      this.engine = engine;
      this.generation++;
      this.cache.clear();
      report = { ok: true, version: set.version, authorizer: this.id, trigger, warnings: set.warnings, detail: `${set.rules.length} rules, ${set.links.length} role links` };
    } catch (err) {
      report = { ok: false, version: this.set.version, authorizer: this.id, trigger, warnings: [], detail: (err as Error).message };
    }
    this.lastReloadFailed = !report.ok;
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
    if (changed || this.lastReloadFailed) await this.reload('file change');
  }

  async close(): Promise<void> {
    if (this.debounce !== null) clearTimeout(this.debounce);
    for (const w of this.watchers) w.close();
    this.watchers = [];
  }
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

function claimGrants(claim: TopicClaim, action: Action, topic: string, shareGroup: string | undefined): boolean {
  const list = action === 'publish' ? claim.publish : claim.subscribe;
  return list.some((filter) => policyApplies(filter, action, topic, 'allow', shareGroup));
}
