/**
 * A small, slow, independent reference for the authorization core, written from the MQTT 5.0
 * specification (section 4.7) and docs/policies.md, sharing no code with src/authz: topic
 * matching level by level, "covers" and "overlaps" by brute force over every topic that could
 * tell two filters apart, placeholder substitution, deny-override decisions, and the policy
 * file's line reading. test/authz-differential.test.ts checks the broker against it.
 */

// ── topics ─────────────────────────────────────────────────────────────────────

/** MQTT 5.0 4.7: does a topic filter match a topic name? */
export function refMatches(filter: string, topic: string): boolean {
  if (topic === '') return false; // [MQTT-4.7.3-1] a topic name has at least one character
  const f = filter.split('/');
  const t = topic.split('/');
  // [MQTT-4.7.2-1] a filter starting with a wildcard does not match a topic starting with $
  if (topic.startsWith('$') && (f[0] === '+' || f[0] === '#')) return false;
  const walk = (i: number): boolean => {
    if (i === f.length) return i === t.length;
    if (f[i] === '#') return i === f.length - 1 && (i >= 1 ? t.length >= i : t.length >= 1); // the parent level counts, [MQTT-4.7.1-2]
    if (i === t.length) return false;
    if (f[i] === '+') return walk(i + 1);
    return f[i] === t[i] && walk(i + 1);
  };
  return walk(0);
}

/**
 * Every topic name that could tell the two filters apart. Matching compares level i of a topic
 * only with level i of a filter, so each level needs only the literals at that level in either
 * filter, a fresh one, an empty one, and at the first level a fresh `$` one; and one level more
 * than the longer filter.
 */
function universe(a: string, b: string): string[] {
  const x = a.split('/');
  const y = b.split('/');
  const depth = Math.max(x.length, y.length) + 1;
  const options = (i: number): string[] => {
    const set = new Set<string>(['', 'zq', ...(i === 0 ? ['$zq'] : [])]);
    for (const l of [x[i], y[i]]) if (l !== undefined && l !== '+' && l !== '#') set.add(l);
    return [...set];
  };
  const out: string[] = [];
  const grow = (prefix: string[]): void => {
    if (prefix.length > 0) out.push(prefix.join('/'));
    if (prefix.length === depth) return;
    for (const l of options(prefix.length)) grow([...prefix, l]);
  };
  grow([]);
  return out.filter((t) => t !== '');
}

/** MQTT 5.0 4.7.1, 4.8.2: a valid topic filter (shared or not). The broker refuses others before it asks. */
export function refValidFilter(f: string): boolean {
  if (f.startsWith('$share/')) {
    const m = /^\$share\/([^/]+)\/(.+)$/.exec(f);
    return m !== null && !/[+#]/.test(m[1] as string) && refValidFilter(m[2] as string);
  }
  if (f === '') return false;
  const levels = f.split('/');
  return levels.every((l, i) => (!l.includes('#') || (l === '#' && i === levels.length - 1)) && (!l.includes('+') || l === '+'));
}

const coverMemo = new Map<string, boolean>();
const overlapMemo = new Map<string, boolean>();

/** Every topic that `filter` matches is matched by `policy`. */
export function refCovers(policy: string, filter: string): boolean {
  const key = JSON.stringify([policy, filter]);
  let v = coverMemo.get(key);
  if (v === undefined) {
    v = universe(policy, filter).every((t) => !refMatches(filter, t) || refMatches(policy, t));
    coverMemo.set(key, v);
  }
  return v;
}

/** Some topic is matched by both. */
export function refOverlaps(a: string, b: string): boolean {
  const key = JSON.stringify([a, b].sort());
  let v = overlapMemo.get(key);
  if (v === undefined) {
    v = universe(a, b).some((t) => refMatches(a, t) && refMatches(b, t));
    overlapMemo.set(key, v);
  }
  return v;
}

// ── policies ───────────────────────────────────────────────────────────────────

export interface RefRule {
  sub: string;
  obj: string;
  act: string;
  eft: 'allow' | 'deny';
  qos: string;
  retain: string;
}

export interface RefPrincipal {
  username?: string;
  clientId: string;
  roles: string[];
  jwt: Record<string, unknown>;
}

export interface RefRequest {
  action: 'publish' | 'subscribe' | 'unsubscribe' | 'deliver';
  topic: string;
  qos: 0 | 1 | 2;
  retain: boolean;
  shareGroup?: string;
  /** The listener binds client ids to the identity. */
  bound: boolean;
  /** The strict subscribe mode. */
  strict: boolean;
}

/** docs/policies.md: a value is substituted only if it is a non-empty string without + # / U+0000 that does not start with $. */
/** An unusable value in a deny rule: its whole level becomes `+`. */
const ANY = '\u0000';

function safe(v: unknown): v is string {
  return typeof v === 'string' && v !== '' && !v.startsWith('$') && !/[+#/\u0000]/.test(v);
}

const LIMIT = 64;

function closure(start: string[], links: [string, string][], stop: Set<string>): Set<string> {
  const out = new Set<string>();
  const todo = [...start];
  while (todo.length > 0) {
    const s = todo.pop() as string;
    if (out.has(s) || stop.has(s)) continue;
    out.add(s);
    for (const [m, r] of links) if (m === s) todo.push(r);
  }
  return out;
}

/** Concrete filters of a rule, or 'overflow'. */
function expand(rule: RefRule, p: RefPrincipal, trustedRoles: string[], allRoles: string[], bound: boolean): string[] | 'overflow' {
  const parts = rule.obj.split(/(%[ucr]|%\{[^}]*\})/);
  let results = [''];
  let count = 1;
  const choices: string[][] = [];
  for (const part of parts) {
    if (!part.startsWith('%')) {
      choices.push([part]);
      continue;
    }
    let vals: unknown[];
    if (part === '%u') vals = [p.username];
    else if (part === '%c') vals = rule.eft === 'allow' && !bound ? [] : [p.clientId];
    else if (part === '%r') vals = rule.sub.startsWith('role:') ? [rule.sub.slice(5)] : rule.eft === 'allow' ? trustedRoles : allRoles;
    else {
      const v = p.jwt[part.slice(6, -1)];
      vals = Array.isArray(v) ? v : [v];
    }
    const ok: string[] = vals.filter(safe);
    // A deny rule fails closed: a present value it cannot use stands for any value of its level.
    if (rule.eft === 'deny' && vals.some((v) => v !== undefined && !safe(v))) ok.push(ANY);
    if (ok.length === 0) return [];
    count *= ok.length;
    choices.push(ok);
  }
  if (count > LIMIT) return 'overflow';
  for (const c of choices) results = results.flatMap((r) => c.map((v) => r + v));
  return results.map((r) => (r.includes(ANY) ? r.split('/').map((l) => (l.includes(ANY) ? '+' : l)).join('/') : r));
}

function splitShared(f: string): { group: string; filter: string } | null {
  const m = /^\$share\/([^/]+)\/(.+)$/.exec(f);
  return m === null ? null : { group: m[1] as string, filter: m[2] as string };
}

function filterApplies(concrete: string, eft: 'allow' | 'deny', r: RefRequest): boolean {
  const ruleShared = splitShared(concrete);
  if (r.action === 'publish' || r.action === 'deliver') {
    if (ruleShared === null) return refMatches(concrete, r.topic);
    return r.action === 'deliver' && r.shareGroup !== undefined && (ruleShared.group === '+' || ruleShared.group === r.shareGroup) && refMatches(ruleShared.filter, r.topic);
  }
  const reqShared = splitShared(r.topic);
  // [MQTT-4.8.2-2] a share name holds no wildcard: such a request is no subscription, no rule speaks about it.
  if (r.topic.startsWith('$share/') && (reqShared === null || /[+#]/.test(reqShared.group))) return false;
  if (ruleShared !== null && (reqShared === null || (ruleShared.group !== '+' && ruleShared.group !== reqShared.group))) return false;
  const ruleFilter = ruleShared?.filter ?? concrete;
  const reqFilter = reqShared?.filter ?? r.topic;
  if (eft === 'allow') return refCovers(ruleFilter, reqFilter);
  if (r.action === 'unsubscribe' || r.strict) return refOverlaps(ruleFilter, reqFilter);
  return refCovers(ruleFilter, reqFilter);
}

function actionApplies(act: string, eft: 'allow' | 'deny', action: RefRequest['action']): boolean {
  if (act === '*' || act === action) return true;
  if (act === 'read') return action === 'subscribe' || action === 'deliver';
  return eft === 'deny' && act === 'subscribe' && action === 'deliver';
}

function conditions(rule: RefRule, qos: number, retain: boolean): boolean {
  const q = rule.qos === '*' ? [0, 1, 2] : rule.qos.includes('-') ? [Number(rule.qos[0]), Number(rule.qos[2])] : [Number(rule.qos), Number(rule.qos)];
  const qosOk = rule.qos === '*' || (qos >= (q[0] as number) && qos <= (q[1] as number));
  const retainOk = rule.retain === '*' || (rule.retain === 'true') === retain;
  return qosOk && retainOk;
}

/** Deny-override over every rule; no allow means deny; unsubscribe is allowed unless a deny applies. */
export function refDecide(rules: RefRule[], links: [string, string][], p: RefPrincipal, r: RefRequest): 'allow' | 'deny' {
  const start = [...(p.username !== undefined ? [`user:${p.username}`] : []), ...p.roles.map((x) => `role:${x}`), ...(r.bound ? [`client:${p.clientId}`] : [])];
  const trusted = closure(start, links, new Set());
  const denyOnly = r.bound ? new Set<string>() : closure([`client:${p.clientId}`], links, trusted);
  const roles = (s: Set<string>) => [...s].filter((x) => x.startsWith('role:')).map((x) => x.slice(5));
  const trustedRoles = roles(trusted);
  const allRoles = roles(new Set([...trusted, ...denyOnly]));
  const applies = (rule: RefRule): boolean => {
    const subjectOk = rule.sub === '*' || trusted.has(rule.sub) || (rule.eft === 'deny' && denyOnly.has(rule.sub));
    if (!subjectOk || !actionApplies(rule.act, rule.eft, r.action) || !conditions(rule, r.qos, r.retain)) return false;
    const concrete = expand(rule, p, trustedRoles, allRoles, r.bound);
    if (concrete === 'overflow') return rule.eft === 'deny';
    return concrete.some((c) => filterApplies(c, rule.eft, r));
  };
  if (rules.some((rule) => rule.eft === 'deny' && applies(rule))) return 'deny';
  if (r.action === 'unsubscribe') return 'allow';
  return rules.some((rule) => rule.eft === 'allow' && applies(rule)) ? 'allow' : 'deny';
}

// ── policy text ────────────────────────────────────────────────────────────────

/**
 * The line (counted in LF) of the first character a reader would not see as the parser reads
 * it: a line end other than LF or CRLF, or a listed invisible or bidi character. undefined when
 * there is none.
 */
export function refFirstUnreadableLine(text: string): number | undefined {
  const body = text.startsWith('\uFEFF') ? text.slice(1) : text;
  const bad = /\r(?!\n)|[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F\u00AD\u034F\u061C\u115F\u1160\u180E\u200B-\u200F\u2028-\u202E\u2060-\u2064\u2066-\u2069\u3164\uFE00-\uFE0F\uFEFF\uFFA0\u{E0000}-\u{E007F}\u{E0100}-\u{E01EF}]/u;
  const m = bad.exec(body);
  if (m === null) return undefined;
  return body.slice(0, m.index).split('\n').length;
}
