/**
 * The MQTT topic matcher used by the Casbin model, and placeholder substitution.
 *
 * - publish / deliver: the topic name must match the policy filter.
 * - subscribe, allow rule: the policy filter must cover the whole requested filter
 *   (`a/+` does not cover `a/#`, `+/x` does not cover `#`).
 * - subscribe / unsubscribe, deny rule: it applies when the two filters overlap at all.
 * - a leading `+` or `#` in a policy never grants a `$` topic [MQTT-4.7.2-1].
 * - `$share/group/filter` is decided on `filter`; a policy filter written as
 *   `$share/GROUP/filter` grants only that group (`+` for any group).
 *
 * Pure functions with no dependency on casbin, so they are unit-tested on their own.
 */
import { parseShared, topicMatches } from '../../protocol/topic.ts';

/** What a rule is about to be checked against: the identity of the requester, precomputed once per principal. */
export interface RequestIdentity {
  username: string | undefined;
  clientId: string;
  /** Every role, from the principal and from `g` lines, transitively. */
  roles: readonly string[];
  /** `user:NAME`, `client:ID`, `role:NAME` for each role. */
  subjects: ReadonlySet<string>;
  attributes: Record<string, unknown>;
}

const isDollar = (level: string): boolean => level.charCodeAt(0) === 0x24;
const isWild = (level: string | undefined): boolean => level === '+' || level === '#';

/** True when every topic matched by `filter` is also matched by `policy`. */
export function filterCovers(policy: string, filter: string): boolean {
  const p = policy.split('/');
  const f = filter.split('/');
  // A `$` first level is only reachable through a literal first level [MQTT-4.7.2-1].
  if (isDollar(f[0] as string) && isWild(p[0])) return false;
  for (let i = 0; ; i++) {
    if (i === p.length) return i === f.length;
    const pl = p[i] as string;
    if (pl === '#') return true;
    if (i === f.length) return false;
    const fl = f[i] as string;
    if (fl === '#') return false;
    if (pl === '+') continue;
    if (fl === '+' || pl !== fl) return false;
  }
}

/** True when at least one topic name is matched by both filters. */
export function filtersOverlap(a: string, b: string): boolean {
  const x = a.split('/');
  const y = b.split('/');
  const x0 = x[0] as string;
  const y0 = y[0] as string;
  if ((isDollar(x0) && isWild(y0)) || (isDollar(y0) && isWild(x0))) return false;
  for (let i = 0; ; i++) {
    const xl = x[i];
    const yl = y[i];
    if (xl === '#' || yl === '#') return true;
    // Both ended: equal length. One ended: only a `#` (checked above) would reach on (`a` and `a/#`).
    if (xl === undefined || yl === undefined) return xl === yl;
    if (xl === '+' || yl === '+') continue;
    if (xl !== yl) return false;
  }
}

export type MatchAction = 'publish' | 'subscribe' | 'unsubscribe' | 'deliver';
export type Effect = 'allow' | 'deny';

/**
 * Does a (substituted) policy filter apply to the requested topic or filter?
 * `topic` is a topic name for publish/deliver and a topic filter (maybe `$share/...`) otherwise.
 */
export function policyApplies(policyFilter: string, action: MatchAction, topic: string, effect: Effect): boolean {
  const policyShared = parsePolicyShared(policyFilter);
  if (policyShared !== null && 'error' in policyShared) return false;
  if (action === 'publish' || action === 'deliver') {
    // Deliver of a shared subscription's message is decided on the inner filter; publish never on a $share rule.
    if (policyShared !== null) return action === 'deliver' && topicMatches(policyShared.filter, topic);
    return topicMatches(policyFilter, topic);
  }
  const requested = parseShared(topic);
  if (requested !== null && 'error' in requested) return false;
  const requestedFilter = requested === null ? topic : requested.filter;
  if (policyShared !== null) {
    // A $share rule only speaks about shared subscriptions, and about the named group (`+`: any).
    if (requested === null) return false;
    if (policyShared.group !== '+' && policyShared.group !== requested.group) return false;
  }
  const inner = policyShared === null ? policyFilter : policyShared.filter;
  return effect === 'allow' ? filterCovers(inner, requestedFilter) : filtersOverlap(inner, requestedFilter);
}

/** Like parseShared, but a policy may name the group `+` (any group). */
export function parsePolicyShared(filter: string): { group: string; filter: string } | null | { error: string } {
  if (!filter.startsWith('$share/+/')) return parseShared(filter);
  const inner = filter.slice(9);
  return inner.length === 0 ? { error: 'shared subscription has an empty filter' } : { group: '+', filter: inner };
}

// ── placeholders ───────────────────────────────────────────────────────────────

const PLACEHOLDER = /%(?:([ucr])|\{([A-Za-z0-9_.-]+)\})/g;

/** A value may stand in for a placeholder only if it cannot widen the filter. */
export function safePlaceholderValue(value: unknown): value is string {
  if (typeof value !== 'string' || value.length === 0) return false;
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c === 0x2b || c === 0x23 || c === 0x2f || c === 0) return false; // + # / U+0000
  }
  return true;
}

/** The placeholder names a policy may use. `%{jwt.<claim>}` takes any claim name. */
export function isKnownPlaceholder(name: string): boolean {
  return name === 'cert.cn' || name === 'cert.san.uri' || /^jwt\.[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/.test(name);
}

/** Lists the placeholders in a filter that are not known, for validation. */
export function unknownPlaceholders(filter: string): string[] {
  const bad: string[] = [];
  for (const m of filter.matchAll(PLACEHOLDER)) {
    const name = m[2];
    if (name !== undefined && !isKnownPlaceholder(name)) bad.push(m[0]);
  }
  // A `%` that starts no placeholder at all.
  const stripped = filter.replace(PLACEHOLDER, '');
  if (stripped.includes('%')) bad.push('%');
  return bad;
}

function lookup(attributes: Record<string, unknown>, path: string[]): unknown {
  let value: unknown = attributes;
  for (const key of path) {
    if (value === null || typeof value !== 'object' || !Object.hasOwn(value, key)) return undefined;
    value = (value as Record<string, unknown>)[key];
  }
  return value;
}

/** Candidate values of one placeholder; an array attribute (several SAN URIs, several roles) gives several. */
function values(who: RequestIdentity, ruleSubject: string, short: string | undefined, name: string | undefined): unknown[] {
  if (short === 'u') return [who.username];
  if (short === 'c') return [who.clientId];
  if (short === 'r') return ruleSubject.startsWith('role:') ? [ruleSubject.slice(5)] : [...who.roles];
  const path = (name as string).split('.');
  const v = lookup(who.attributes, path);
  return Array.isArray(v) ? v : [v];
}

const MAX_EXPANSIONS = 64;

/**
 * Substitutes the placeholders of a policy filter. Each value is checked first: one holding
 * `+ # /` or U+0000 (or missing) is dropped. Returns every concrete filter; an empty list means
 * the rule does not apply (fail closed).
 */
export function expandPlaceholders(filter: string, who: RequestIdentity, ruleSubject: string): string[] {
  if (!filter.includes('%')) return [filter];
  let results = [''];
  let last = 0;
  for (const m of filter.matchAll(PLACEHOLDER)) {
    const literal = filter.slice(last, m.index);
    const candidates = values(who, ruleSubject, m[1], m[2]).filter(safePlaceholderValue);
    if (candidates.length === 0) return [];
    const next: string[] = [];
    for (const prefix of results) {
      for (const v of candidates) {
        if (next.length >= MAX_EXPANSIONS) break;
        next.push(prefix + literal + v);
      }
    }
    results = next;
    last = m.index + m[0].length;
  }
  const tail = filter.slice(last);
  if (tail.includes('%')) return []; // a stray `%` (refused by validation) never matches
  return results.map((r) => r + tail);
}

/** Policy action names: the broker's four, plus `read` (subscribe and deliver) and `*`. */
export const POLICY_ACTIONS = ['publish', 'subscribe', 'deliver', 'unsubscribe', 'read', '*'] as const;
export type PolicyAction = (typeof POLICY_ACTIONS)[number];

export function actionApplies(policyAction: string, action: MatchAction): boolean {
  return policyAction === action || policyAction === '*' || (policyAction === 'read' && (action === 'subscribe' || action === 'deliver'));
}

/** The full rule test used by the Casbin matcher: action, then the filter after placeholders. */
export function ruleMatches(who: RequestIdentity, action: MatchAction, topic: string, ruleSubject: string, ruleFilter: string, ruleAction: string, effect: Effect): boolean {
  if (!actionApplies(ruleAction, action)) return false;
  for (const concrete of expandPlaceholders(ruleFilter, who, ruleSubject)) {
    if (policyApplies(concrete, action, topic, effect)) return true;
  }
  return false;
}

/** QoS condition: `*`, a single level or a range `0-1`. Retain condition: `*`, `true`, `false`. */
export function conditionsHold(qosCondition: string, retainCondition: string, qos: number, retain: boolean): boolean {
  if (qosCondition !== '*') {
    const lo = qosCondition.charCodeAt(0) - 48;
    const hi = qosCondition.length === 3 ? qosCondition.charCodeAt(2) - 48 : lo;
    if (qos < lo || qos > hi) return false;
  }
  if (retainCondition === '*') return true;
  return retainCondition === 'true' ? retain : !retain;
}
