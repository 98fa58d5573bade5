/**
 * Differential property tests (fast-check) of the authorization core against the independent
 * reference in test/authz-reference.ts: the topic matcher, the Casbin authorizer over random
 * policies, principals and requests (placeholder values holding `$ / + # % {`, Unicode lookalikes
 * and bidi marks, value lists past the expansion limit, both listener bindings, both subscribe
 * modes, shared subscriptions), and the policy parser over files with every line-terminator
 * variant and invisible characters. Seeded; set AUTHZ_SEED to replay a failure.
 */
import fs from 'node:fs';
import test from 'ava';
import fc from 'fast-check';
import type { Principal } from '../src/auth/types.ts';
import { CasbinAuthorizer } from '../src/authz/casbin/authorizer.ts';
import { filterCovers, filtersOverlap } from '../src/authz/casbin/matcher.ts';
import { parsePolicy, PolicyError } from '../src/authz/casbin/policy-file.ts';
import { topicMatches } from '../src/protocol/topic.ts';
import { refCovers, refDecide, refValidFilter, refFirstUnreadableLine, refMatches, refOverlaps, type RefRequest, type RefRule } from './authz-reference.ts';
import { writePolicyDir } from './helpers.ts';

const SEED = Number(process.env.AUTHZ_SEED ?? 20261131);

// ── generators ─────────────────────────────────────────────────────────────────

const filterLevel = fc.constantFrom('a', 'b', '', '$SYS', '+');
const filter = fc
  .tuple(fc.array(filterLevel, { minLength: 1, maxLength: 3 }), fc.boolean())
  .map(([levels, hash]) => (hash && levels.length < 3 ? [...levels, '#'] : levels).join('/'))
  .filter((f) => f !== '') // the empty filter is no filter [MQTT-4.7.3-1]
  .chain((f) => fc.constantFrom(f, '#'));
const topicName = fc
  .array(fc.constantFrom('a', 'b', '', '$SYS', 'zz'), { minLength: 1, maxLength: 4 })
  .map((l) => l.join('/'))
  .filter((t) => t !== '');

/** Placeholder values a client or an identity provider could choose. */
const WEIRD = ['alice', 'c1', 'r1', '$SYS', '$share', 'a/b', '+', '#', '%u', '%c', '{x}', '%{jwt.t}', '\uFF33YS', '\uFF04SYS', '\u202Ealice', 'al\u200Bice', 'g', ''];
const weird = fc.constantFrom(...WEIRD);

const jwtValue = fc.oneof(
  weird,
  fc.array(weird, { maxLength: 8 }),
  // At, past and (multiplied by a second placeholder) far past the limit of 64.
  { arbitrary: fc.constantFrom(9, 64, 65, 70).map((n) => Array.from({ length: n }, (_, i) => `v${i}`)), weight: 3 },
);

const principal = fc.record({
  username: fc.option(weird, { nil: undefined }),
  clientId: fc.constantFrom('c1', 'alice', '$SYS', 'a/b', '+', '\u202Ealice', 'g'),
  roles: fc.subarray(['r1', 'r2', '$SYS', 'r3']),
  jwt: fc.record({ t: jwtValue }),
});

const firstLevel = fc.constantFrom('a', '+', '%u', '%c', '%c', '%r', '%{jwt.t}', '%{jwt.t}', '$SYS', '$share/g1', '$share/+', 'x%u', 'a');
const laterLevel = fc.constantFrom('a', 'b', '+', '%u', '%c', '%c', '%r', '%{jwt.t}', '%{jwt.t}', 'x%c');
const ruleFilter = fc
  .tuple(firstLevel, fc.array(laterLevel, { maxLength: 2 }), fc.boolean())
  .map(([first, rest, hash]) => {
    const levels = [first, ...rest, ...(hash ? ['#'] : [])];
    // `$share/GROUP` needs a filter after it.
    if (first.startsWith('$share') && levels.length === 1) levels.push('a');
    return levels.join('/');
  });
/** A filter without placeholders: broad allow rules and narrow deny rules meet here. */
const plainRuleFilter = fc
  .tuple(fc.constantFrom('', '', '', '$share/g1/', '$share/+/'), fc.array(fc.constantFrom('a', 'b', '+', '$SYS', ''), { minLength: 1, maxLength: 3 }), fc.boolean())
  .map(([share, levels, hash]) => share + [...levels, ...(hash ? ['#'] : [])].join('/'))
  .chain((f) => fc.constantFrom(f, f, '#', '+/#'))
  .filter((f) => f !== '' && !/^\$share\/[^/]+\/$/.test(f));
const rule: fc.Arbitrary<RefRule> = fc.record({
  sub: fc.constantFrom('*', '*', '*', 'user:alice', 'user:$SYS', 'role:r1', 'role:r2', 'role:$SYS', 'client:c1', 'client:$SYS', 'client:alice'),
  obj: fc.oneof({ arbitrary: plainRuleFilter, weight: 3 }, { arbitrary: ruleFilter, weight: 2 }),
  act: fc.constantFrom('publish', 'subscribe', 'deliver', 'unsubscribe', 'read', '*'),
  eft: fc.constantFrom('allow' as const, 'deny' as const),
  qos: fc.constantFrom('*', '*', '*', '0', '1', '2', '0-1', '1-2'),
  retain: fc.constantFrom('*', '*', '*', 'true', 'false'),
});
/** A broad allow under which deny rules show what they take away. */
const baseline = fc.option(
  fc.constantFrom<RefRule>(
    { sub: '*', obj: '#', act: '*', eft: 'allow', qos: '*', retain: '*' },
    { sub: '*', obj: '+/#', act: 'read', eft: 'allow', qos: '*', retain: '*' },
    { sub: '*', obj: 'a/#', act: '*', eft: 'allow', qos: '*', retain: '*' },
    { sub: 'role:r1', obj: '#', act: 'read', eft: 'allow', qos: '*', retain: '*' },
  ),
  { freq: 2 },
);
const policyRules = fc.tuple(baseline, fc.array(rule, { minLength: 1, maxLength: 6 })).map(([base, rest]) => (base === null ? rest : [base, ...rest]));
const links = fc.subarray<[string, string]>([
  ['user:alice', 'role:r1'],
  ['client:c1', 'role:r2'],
  ['client:alice', 'role:r1'],
  ['role:r1', 'role:r2'],
  ['user:$SYS', 'role:r2'],
]);

const requestLevel = fc.constantFrom('a', 'b', '$SYS', '$share', 'alice', 'c1', 'r1', 'r2', 'v1', 'v65', 'g', '\uFF33YS', '\u202Ealice', 'xalice', 'xc1');
const requestTopic = fc
  .array(requestLevel, { minLength: 1, maxLength: 3 })
  .map((l) => l.join('/'));
const requestFilter = fc
  .tuple(fc.constantFrom('', '', '$share/g1/', '$share/g2/'), fc.array(fc.oneof(requestLevel, fc.constant('+')), { minLength: 1, maxLength: 3 }), fc.boolean())
  .map(([share, levels, hash]) => share + [...levels, ...(hash ? ['#'] : [])].join('/'));

type Who = { username?: string | undefined; clientId: string; roles: string[]; jwt: { t: unknown } };
type Action = 'publish' | 'subscribe' | 'unsubscribe' | 'deliver';

/**
 * A request aimed at a rule: its filter with the principal's own values put in, even those that
 * must never substitute (`$SYS`, `a/b`, ...), and its wildcards filled in or kept. Random
 * requests alone rarely meet a rule; these sit on its edges.
 */
function aimed(rule: RefRule, who: Who, action: Action, picks: number[], levels: string[]): string {
  let k = 0;
  const pick = <T>(xs: readonly T[]): T => xs[(picks[k++ % picks.length] as number) % xs.length] as T;
  const valueOf = (ph: string): string => {
    if (ph === '%u') return who.username ?? 'x';
    if (ph === '%c') return who.clientId;
    if (ph === '%r') return pick(['r1', 'r2', '$SYS']);
    const v = who.jwt.t;
    return String(Array.isArray(v) ? pick(v as unknown[]) : v);
  };
  const name = action === 'publish' || action === 'deliver';
  let obj = rule.obj;
  if (obj.startsWith('$share/')) {
    const rest = obj.split('/').slice(2).join('/');
    obj = name || pick([true, false]) ? rest : `$share/${pick(['g1', 'g2'])}/${rest}`;
  }
  const out = obj.split('/').flatMap((level) => {
    const l = level.replace(/%[ucr]|%\{[^}]*\}/g, valueOf);
    if (level === '+') return name || pick([true, false, false]) ? [pick(levels)] : ['+'];
    if (level === '#') return name ? pick([[], [pick(levels)], [pick(levels), pick(levels)]]) : pick([['#'], ['#'], [pick(levels)], ['+', '#']]);
    return [l];
  });
  let topic = out.join('/');
  if (name) topic = topic.replace(/[+#]/g, 'x'); // a topic name never holds a wildcard
  return topic === '' ? 'a' : topic;
}

const requestShape = fc.record({
  action: fc.constantFrom('publish' as const, 'deliver' as const, 'subscribe' as const, 'unsubscribe' as const, 'deliver' as const, 'subscribe' as const),
  qos: fc.constantFrom(0 as const, 1 as const, 2 as const),
  retain: fc.boolean(),
  shareGroup: fc.constantFrom(undefined, 'g1', 'g2'),
  listener: fc.constantFrom('bound', 'open'),
  rule: fc.nat(),
  picks: fc.array(fc.nat(), { minLength: 1, maxLength: 6 }),
  levels: fc.array(requestLevel, { minLength: 1, maxLength: 3 }),
  random: fc.option(fc.oneof(requestTopic, requestFilter), { freq: 4 }),
});

type RequestShape = typeof requestShape extends fc.Arbitrary<infer T> ? T : never;

/** The requests of one run: mostly aimed at its rules, some at random. */
function requestsFor(rules: RefRule[], who: Who, shapes: RequestShape[]) {
  return shapes.map((sh) => {
    const name = sh.action === 'publish' || sh.action === 'deliver';
    let topic = sh.random !== null ? sh.random : aimed(rules[sh.rule % rules.length] as RefRule, who, sh.action, sh.picks, sh.levels);
    if (name) topic = topic.replace(/^\$share\/[^/]+\//, '').replace(/[+#]/g, 'x');
    // The broker validates a filter before it asks: only valid ones reach the authorizer.
    else if (!refValidFilter(topic)) topic = 'a/+';
    return {
      action: sh.action,
      topic,
      qos: sh.qos,
      retain: name ? sh.retain : false,
      shareGroup: sh.action === 'deliver' ? sh.shareGroup : undefined,
      listener: sh.listener,
    };
  });
}

// ── properties ─────────────────────────────────────────────────────────────────

test('the topic matcher agrees with the reference: match, cover and overlap, $ topics and the parent of #', (t) => {
  // The two cases that once disagreed: allow +/# covers #; /# and + share no topic name.
  t.is(filterCovers('+/#', '#'), refCovers('+/#', '#'));
  t.true(filterCovers('+/#', '#'));
  t.is(filtersOverlap('/#', '+'), refOverlaps('/#', '+'));
  t.false(filtersOverlap('/#', '+'));
  fc.assert(
    fc.property(filter, filter, topicName, (a, b, topic) => {
      if (filterCovers(a, b) !== refCovers(a, b)) throw new Error(`covers(${a}, ${b}): ${filterCovers(a, b)}, reference ${refCovers(a, b)}`);
      if (filtersOverlap(a, b) !== refOverlaps(a, b)) throw new Error(`overlaps(${a}, ${b}): ${filtersOverlap(a, b)}, reference ${refOverlaps(a, b)}`);
      if (topicMatches(a, topic) !== refMatches(a, topic)) throw new Error(`matches(${a}, ${topic}): ${topicMatches(a, topic)}, reference ${refMatches(a, topic)}`);
    }),
    { seed: SEED, numRuns: 1500 },
  );
  t.pass();
});

test('the Casbin authorizer agrees with the reference on random policies, principals and requests', async (t) => {
  t.timeout(50_000);
  const dir = writePolicyDir('');
  t.teardown(dir.cleanup);
  let decisions = 0;
  let allowed = 0;
  await fc.assert(
    fc.asyncProperty(policyRules, links, principal, fc.boolean(), fc.array(requestShape, { minLength: 4, maxLength: 12 }), async (rules, g, who, strict, shapes) => {
      const requests = requestsFor(rules, who, shapes);
      const text = [...rules.map((r) => `p, ${r.sub}, ${r.obj}, ${r.act}, ${r.eft}, ${r.qos}, ${r.retain}`), ...g.map(([m, r]) => `g, ${m}, ${r}`)].join('\n') + '\n';
      fs.writeFileSync(dir.policy, text);
      const a = new CasbinAuthorizer({
        model: dir.model,
        policy: dir.policy,
        cacheSize: 16,
        subscribeDenyOverlap: strict ? 'refuse' : 'withhold',
        clientIdRules: 'bound-listeners',
        listeners: [
          { name: 'bound', clientIdBound: true },
          { name: 'open', clientIdBound: false },
        ],
      });
      await a.init();
      const p: Principal = { clientId: who.clientId, ...(who.username !== undefined ? { username: who.username } : {}), method: 'test', provider: 'test', roles: who.roles, attributes: { jwt: who.jwt } };
      // Twice through: the second answer comes from the decision cache.
      for (const r of [...requests, ...requests]) {
        const ctx = { qos: r.qos, retain: r.retain, listener: r.listener, ...(r.shareGroup !== undefined ? { shareGroup: r.shareGroup } : {}) };
        const got = a.authorize(p, r.action, r.topic, ctx).kind;
        const ref: RefRequest = { action: r.action, topic: r.topic, qos: r.qos, retain: r.retain, bound: r.listener === 'bound', strict, ...(r.shareGroup !== undefined ? { shareGroup: r.shareGroup } : {}) };
        const want = refDecide(rules, g, { ...who, roles: who.roles }, ref);
        decisions++;
        if (want === 'allow') allowed++;
        if (got !== want) throw new Error(`${r.action} ${JSON.stringify(r.topic)} on ${r.listener}${r.shareGroup !== undefined ? ` group ${r.shareGroup}` : ''} (strict ${strict}) by ${JSON.stringify(who)}: got ${got}, reference ${want}\n${text}`);
      }
    }),
    { seed: SEED, numRuns: 600 },
  );
  t.log(`${decisions} decisions, ${allowed} allowed`);
  t.true(allowed > decisions / 10 && allowed < decisions * 0.9, 'the generators reach both answers');
});

const TERMINATORS = ['\n', '\n', '\n', '\r\n', '\r\n', '\r', '\u2028', '\u2029', '\u0085'];
const INVISIBLE = ['\u200B', '\u200C', '\u200D', '\u200E', '\u200F', '\u202A', '\u202E', '\u2066', '\u2069', '\u061C', '\u00AD', '\u2060', '\uFEFF', '\uFE0F', '\u{E0041}', '\u0007', '\u000B', '\u000C', '\u007F', '\u0085', '\u2028'];
const LINES = ['p, user:alice, devices/+/secret/#, *, deny', 'p, *, devices/#, read, allow', '# a comment', '', 'g, user:alice, role:device', 'p, role:device, devices/%u/#, publish, allow, 0-1, false'];

test('the policy parser reads files as an editor shows them: every line terminator, invisible and bidi characters', (t) => {
  let refused = 0;
  fc.assert(
    fc.property(
      fc.array(fc.tuple(fc.constantFrom(...LINES), fc.constantFrom(...TERMINATORS), fc.option(fc.tuple(fc.constantFrom(...INVISIBLE), fc.nat()), { freq: 6 })), { minLength: 1, maxLength: 8 }),
      fc.boolean(),
      fc.boolean(),
      (lines, bom, lookalike) => {
        let text = bom ? '\uFEFF' : '';
        for (const [line, end, inject] of lines) {
          let l = lookalike ? line.replace('user:alice', 'user:\u0430lice') : line; // Cyrillic a: visible, accepted with a warning
          if (inject !== null) {
            const at = inject[1] % (l.length + 1);
            l = l.slice(0, at) + inject[0] + l.slice(at);
          }
          text += l + end;
        }
        const badLine = refFirstUnreadableLine(text);
        let result: ReturnType<typeof parsePolicy> | PolicyError;
        try {
          result = parsePolicy(text, 'acl.csv');
        } catch (err) {
          if (!(err instanceof PolicyError)) throw err;
          result = err;
        }
        if (badLine !== undefined) {
          refused++;
          if (!(result instanceof PolicyError)) throw new Error(`accepted a file with an unreadable character on line ${badLine}: ${JSON.stringify(text)}`);
          if (result.line !== badLine) throw new Error(`refused at line ${result.line}, the reference says ${badLine}: ${result.message}`);
          return;
        }
        if (result instanceof PolicyError) throw new Error(`refused a readable file: ${result.message} ${JSON.stringify(text)}`);
        // Every p line is where an editor shows it.
        const expected = (text.startsWith('\uFEFF') ? text.slice(1) : text).split(/\r?\n/).flatMap((l, i) => (l.trim().startsWith('p,') ? [i + 1] : []));
        const got = result.rules.map((r) => Number(r.source.split(':')[1]));
        if (JSON.stringify(got) !== JSON.stringify(expected)) throw new Error(`rules at lines ${got.join(',')}, expected ${expected.join(',')}`);
        if (lookalike && text.includes('user:\u0430lice') && !result.warnings.some((w) => w.includes('U+0430'))) throw new Error('no warning for a lookalike subject');
      },
    ),
    { seed: SEED, numRuns: 2000 },
  );
  t.true(refused > 100, `refused ${refused} files`);
});
