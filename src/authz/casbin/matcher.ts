/**
 * The MQTT topic matcher used by the Casbin model, and placeholder substitution.
 *
 * - publish / deliver: the topic name must match the policy filter.
 * - subscribe, allow rule: the policy filter must cover the whole requested filter
 *   (`a/+` does not cover `a/#`, `+/x` does not cover `#`).
 * - subscribe, deny rule: it refuses the filter only when it covers the whole filter; where it
 *   only overlaps, the subscription is granted and the deliveries it covers are withheld (a
 *   `subscribe` deny rule also speaks about `deliver`). The strict mode refuses any overlap.
 * - unsubscribe, deny rule: it applies when the two filters overlap at all.
 * - a leading `+` or `#` in a policy never grants a `$` topic [MQTT-4.7.2-1].
 * - `$share/group/filter` is decided on `filter`; a policy filter written as
 *   `$share/GROUP/filter` speaks only about that group (`+` for any group), for subscribe and
 *   for the deliveries of that group's shared subscriptions.
 *
 * Pure functions with no dependency on casbin, so they are unit-tested on their own.
 */
import { parseShared, topicMatches } from '../../protocol/topic.ts';

/** What a rule is about to be checked against: the identity of the requester, precomputed once per principal and listener. */
export interface RequestIdentity {
  username: string | undefined;
  clientId: string;
  /** Roles that count for every rule: from the principal, and from `g` lines of subjects that count. */
  roles: readonly string[];
  /** Every role, with those reached only through a client id the listener does not bind: for deny rules. */
  allRoles: readonly string[];
  /** `user:NAME`, `client:ID`, `role:NAME` for each role (every one, allow-only or not). */
  subjects: ReadonlySet<string>;
  /** Subjects that count only for deny rules: the client id, and roles linked to it, on a listener that does not bind it. */
  denyOnly: ReadonlySet<string>;
  /** False on a listener where the client id is not bound to the identity: then nothing keyed on it allows. */
  clientIdBound: boolean;
  attributes: Record<string, unknown>;
}

/** One request as the casbin matcher sees it (`r.sub`): who asks, and what only this request says. */
export interface MatchRequest {
  who: RequestIdentity;
  /** For `deliver`: the group of the shared subscription the message goes out on; undefined for a plain one. */
  shareGroup: string | undefined;
  /** Notes left by the matcher for the audit: rules whose placeholder expansion passed its limit. */
  overflows: Overflow[];
}

/** A rule whose placeholders would expand to more concrete filters than {@link MAX_EXPANSIONS}. */
export interface Overflow {
  sub: string;
  obj: string;
  act: string;
  eft: Effect;
  count: number;
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
    // `#` covers the rest, and the parent level too [MQTT-4.7.1-2].
    if (pl === '#') return true;
    if (i === f.length) return false;
    const fl = f[i] as string;
    if (fl === '#') {
      // The request's `#` at level i matches every deeper topic, and its parent (i levels): only
      // a `#` here covers the parent. Where the parent is no topic name (at the first level, or
      // the empty topic under a leading empty level, [MQTT-4.7.3-1]), `+/#` covers it as well.
      const noParent = i === 0 || (i === 1 && f[0] === '');
      return noParent && pl === '+' && p.length === i + 2 && p[i + 1] === '#';
    }
    if (pl === '+') continue;
    if (fl === '+' || pl !== fl) return false;
  }
}

/** True when at least one (valid, non-empty) topic name is matched by both filters. */
export function filtersOverlap(a: string, b: string): boolean {
  const x = a.split('/');
  const y = b.split('/');
  const x0 = x[0] as string;
  const y0 = y[0] as string;
  if ((isDollar(x0) && isWild(y0)) || (isDollar(y0) && isWild(x0))) return false;
  for (let i = 0; ; i++) {
    const xl = x[i];
    const yl = y[i];
    if (xl === '#' || yl === '#') {
      // The other filter goes on: its topics reach into the `#`.
      if ((xl === '#' ? yl : xl) !== undefined) return true;
      // The other filter ended here: the only common topic is the parent of `#`, i levels long.
      // With one level, a literal empty level makes it the empty topic, which is no topic name
      // [MQTT-4.7.3-1]: `/#` and `+` share nothing.
      return !(i === 1 && (x0 === '' || y0 === ''));
    }
    // Both ended: equal length. One ended: no common topic.
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
 * `shareGroup` is the shared subscription a delivery goes out on. `overlapRefuses` is the strict
 * subscribe mode: a deny rule refuses every filter it overlaps.
 */
export function policyApplies(policyFilter: string, action: MatchAction, topic: string, effect: Effect, shareGroup?: string, overlapRefuses = false): boolean {
  const policyShared = parsePolicyShared(policyFilter);
  if (policyShared !== null && 'error' in policyShared) return false;
  if (action === 'publish' || action === 'deliver') {
    if (policyShared === null) return topicMatches(policyFilter, topic);
    // A $share rule speaks only about the deliveries of its own group's shared subscriptions.
    if (action === 'publish' || shareGroup === undefined) return false;
    if (policyShared.group !== '+' && policyShared.group !== shareGroup) return false;
    return topicMatches(policyShared.filter, topic);
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
  if (effect === 'allow') return filterCovers(inner, requestedFilter);
  // Unsubscribing only removes access: a deny rule for it speaks about any overlap.
  if (action === 'unsubscribe' || overlapRefuses) return filtersOverlap(inner, requestedFilter);
  // A deny rule refuses only what it covers; where it overlaps, deliver withholds its topics.
  return filterCovers(inner, requestedFilter);
}

/** Like parseShared, but a policy may name the group `+` (any group). */
export function parsePolicyShared(filter: string): { group: string; filter: string } | null | { error: string } {
  if (!filter.startsWith('$share/+/')) return parseShared(filter);
  const inner = filter.slice(9);
  return inner.length === 0 ? { error: 'shared subscription has an empty filter' } : { group: '+', filter: inner };
}

// ── placeholders ───────────────────────────────────────────────────────────────

const PLACEHOLDER = /%(?:([ucr])|\{([A-Za-z0-9_.-]+)\})/g;

/**
 * A value may stand in for a placeholder only if it cannot widen the filter: a non-empty string
 * without `+ # /` or U+0000, that does not start with `$` (it would start a level with `$` and
 * could reach a reserved tree such as `$SYS` or `$share`).
 */
export function safePlaceholderValue(value: unknown): value is string {
  if (typeof value !== 'string' || value.length === 0) return false;
  if (value.charCodeAt(0) === 0x24) return false; // $
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

/** True when the filter's value depends on the client id (`%c`). */
export function usesClientId(filter: string): boolean {
  for (const m of filter.matchAll(PLACEHOLDER)) if (m[1] === 'c') return true;
  return false;
}

/**
 * True when a placeholder sits in a first level that starts with `$` (`$%u/#`): its value would
 * choose a reserved tree (`$SYS`, `$share`, ...). Such a filter is refused at load and never matches.
 */
export function placeholderInDollarRoot(filter: string): boolean {
  if (filter.charCodeAt(0) !== 0x24) return false;
  const slash = filter.indexOf('/');
  return (slash === -1 ? filter : filter.slice(0, slash)).includes('%');
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
function values(who: RequestIdentity, ruleSubject: string, effect: Effect, short: string | undefined, name: string | undefined): unknown[] {
  if (short === 'u') return [who.username];
  // A client id the listener does not bind is the client's own choice: it never allows anything.
  if (short === 'c') return effect === 'allow' && !who.clientIdBound ? [] : [who.clientId];
  if (short === 'r') return ruleSubject.startsWith('role:') ? [ruleSubject.slice(5)] : [...(effect === 'allow' ? who.roles : who.allRoles)];
  const path = (name as string).split('.');
  const v = lookup(who.attributes, path);
  return Array.isArray(v) ? v : [v];
}

/** The most concrete filters one rule may expand to for one principal. */
export const MAX_EXPANSIONS = 64;

/** A rule's concrete filters, or, past {@link MAX_EXPANSIONS}, how many there would have been. */
export type Expansion = string[] | { overflow: number };

/**
 * Substitutes the placeholders of a policy filter. Each value is checked first: one that is
 * missing is dropped; one that fails {@link safePlaceholderValue} is dropped from an allow rule
 * and, in a deny rule, turns its level into `+`. Returns every concrete filter; an empty
 * list means the rule does not apply (fail closed). When the values would multiply past
 * {@link MAX_EXPANSIONS}, nothing is expanded and the count is returned: the caller fails closed
 * (a deny rule applies, an allow rule does not).
 */
export function expandPlaceholders(filter: string, who: RequestIdentity, ruleSubject: string, effect: Effect = 'allow'): Expansion {
  if (!filter.includes('%')) return [filter];
  if (placeholderInDollarRoot(filter)) return [];
  const literals: string[] = [];
  const choices: string[][] = [];
  let last = 0;
  let count = 1;
  for (const m of filter.matchAll(PLACEHOLDER)) {
    literals.push(filter.slice(last, m.index));
    const raw = values(who, ruleSubject, effect, m[1], m[2]);
    const candidates: string[] = raw.filter(safePlaceholderValue);
    // Fail closed: for a deny rule, a value that is present but unusable (a number, `a/b`,
    // `$SYS`, `+`...) makes its whole level a `+`, so the rule still denies; skipping it denied
    // nothing and let a crafted claim slip past the rule.
    if (effect === 'deny' && candidates.length < raw.length && raw.some((v) => v !== undefined && !safePlaceholderValue(v))) candidates.push(WILD_LEVEL);
    if (candidates.length === 0) return [];
    choices.push(candidates);
    count *= candidates.length;
    last = m.index + m[0].length;
  }
  const tail = filter.slice(last);
  if (tail.includes('%')) return []; // a stray `%` (refused by validation) never matches
  if (count > MAX_EXPANSIONS) return { overflow: count };
  let results = [''];
  for (let i = 0; i < choices.length; i++) {
    const next: string[] = [];
    for (const prefix of results) for (const v of choices[i] as string[]) next.push(prefix + (literals[i] as string) + v);
    results = next;
  }
  return results.map((r) => (r.includes(WILD_LEVEL) ? wildLevels(r + tail) : r + tail));
}

/** Stands for an unusable value in a deny rule (U+0000 never survives safePlaceholderValue). */
const WILD_LEVEL = '\u0000';

function wildLevels(filter: string): string {
  return filter
    .split('/')
    .map((level) => (level.includes(WILD_LEVEL) ? '+' : level))
    .join('/');
}

/** Policy action names: the broker's four, plus `read` (subscribe and deliver) and `*`. */
export const POLICY_ACTIONS = ['publish', 'subscribe', 'deliver', 'unsubscribe', 'read', '*'] as const;
export type PolicyAction = (typeof POLICY_ACTIONS)[number];

/**
 * Does a rule's action cover the request's? A `subscribe` deny rule covers `deliver` too: a
 * subscription it only overlaps is granted, and the deliveries it covers are withheld.
 */
export function actionApplies(policyAction: string, action: MatchAction, effect: Effect = 'allow'): boolean {
  if (policyAction === action || policyAction === '*') return true;
  if (action === 'subscribe') return policyAction === 'read';
  if (action === 'deliver') return policyAction === 'read' || (effect === 'deny' && policyAction === 'subscribe');
  return false;
}

/** The full rule test used by the Casbin matcher: subject trust, action, then the filter after placeholders. */
export function ruleMatches(
  request: MatchRequest,
  action: MatchAction,
  topic: string,
  ruleSubject: string,
  ruleFilter: string,
  ruleAction: string,
  effect: Effect,
  overlapRefuses = false,
): boolean {
  const who = request.who;
  if (!actionApplies(ruleAction, action, effect)) return false;
  // A subject reached only through an unbound client id counts for deny rules, never for allow.
  if (effect === 'allow' && who.denyOnly.has(ruleSubject)) return false;
  const expansion = expandPlaceholders(ruleFilter, who, ruleSubject, effect);
  if (!Array.isArray(expansion)) {
    request.overflows.push({ sub: ruleSubject, obj: ruleFilter, act: ruleAction, eft: effect, count: expansion.overflow });
    // Fail closed: a deny rule we cannot expand denies; an allow rule does not allow.
    return effect === 'deny';
  }
  for (const concrete of expansion) {
    if (policyApplies(concrete, action, topic, effect, request.shareGroup, overlapRefuses)) return true;
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
