/** The MQTT matcher used by the Casbin model, and placeholder substitution: pure unit tests. */
import test from 'ava';
import { conditionsHold, expandPlaceholders, filterCovers, filtersOverlap, policyApplies, safePlaceholderValue, type RequestIdentity } from '../src/authz/casbin/matcher.ts';

const who = (over: Partial<RequestIdentity> = {}): RequestIdentity => ({
  username: 'alice',
  clientId: 'c1',
  roles: ['device', 'reader'],
  allRoles: ['device', 'reader'],
  subjects: new Set(['user:alice', 'client:c1', 'role:device', 'role:reader']),
  denyOnly: new Set(),
  clientIdBound: true,
  attributes: { cert: { cn: 'dev-7', san: { uri: ['urn:a', 'spiffe://x/y'] } }, jwt: { tenant: 'acme', bad: 'a/b', num: 5 } },
  ...over,
});

test('publish: the topic must match the policy filter', (t) => {
  t.true(policyApplies('devices/alice/#', 'publish', 'devices/alice/t/1', 'allow'));
  t.true(policyApplies('devices/+/t', 'publish', 'devices/bob/t', 'allow'));
  t.false(policyApplies('devices/alice/#', 'publish', 'devices/bob/t', 'allow'));
  t.false(policyApplies('devices/+', 'publish', 'devices/a/b', 'allow'));
});

test('subscribe allow: the policy filter must cover the whole requested filter', (t) => {
  const cases: [string, string, boolean][] = [
    ['a/+', 'a/b', true],
    ['a/+', 'a/+', true],
    ['a/+', 'a/#', false],
    ['+/x', '#', false],
    ['#', '#', true],
    ['#', '+/#', true],
    ['a/#', 'a', true],
    ['a/#', 'a/b/+/#', true],
    ['a/+/c', 'a/+/+', false],
    ['a/b', 'a/b/c', false],
    ['a/b/c', 'a/b', false],
    ['devices/alice/#', 'devices/+/secret', false],
    ['devices/alice/#', '+/#', false],
  ];
  for (const [policy, requested, expected] of cases) t.is(filterCovers(policy, requested), expected, `${policy} covers ${requested}`);
});

test('filtersOverlap: two filters overlap when one topic matches both', (t) => {
  const cases: [string, string, boolean][] = [
    ['devices/+/secret', 'devices/#', true],
    ['devices/+/secret', 'devices/alice/+', true],
    ['devices/+/secret', 'devices/alice/telemetry', false],
    ['a', 'a/#', true],
    ['a/#', 'a', true],
    ['a/b', 'a/b/c', false],
    ['+/+', '#', true],
    ['x/+', 'y/#', false],
  ];
  for (const [a, b, expected] of cases) {
    t.is(filtersOverlap(a, b), expected, `${a} overlaps ${b}`);
    t.is(filtersOverlap(b, a), expected, `${b} overlaps ${a}`);
  }
  t.false(policyApplies('devices/+/secret', 'subscribe', 'devices/#', 'allow'));
});

test('subscribe deny: refuses a filter it covers; one it only overlaps is refused only in the strict mode', (t) => {
  t.true(policyApplies('devices/+/secret', 'subscribe', 'devices/a/secret', 'deny'));
  t.true(policyApplies('devices/+/secret/#', 'subscribe', 'devices/+/secret/+', 'deny'));
  t.false(policyApplies('devices/+/secret', 'subscribe', 'devices/#', 'deny'));
  t.false(policyApplies('test/nosubscribe', 'subscribe', '#', 'deny'));
  t.false(policyApplies('test/nosubscribe', 'subscribe', '+/+', 'deny'));
  t.true(policyApplies('devices/+/secret', 'subscribe', 'devices/#', 'deny', undefined, true));
  t.true(policyApplies('test/nosubscribe', 'subscribe', '#', 'deny', undefined, true));
  t.true(policyApplies('test/nosubscribe', 'subscribe', '+/+', 'deny', undefined, true));
  // Unsubscribe deny rules keep the overlap test in both modes.
  t.true(policyApplies('devices/+/secret', 'unsubscribe', 'devices/#', 'deny'));
});

test('a leading + or # in a policy never grants a $ topic', (t) => {
  t.false(policyApplies('#', 'publish', '$SYS/x', 'allow'));
  t.false(policyApplies('+/x', 'deliver', '$SYS/x', 'allow'));
  t.false(policyApplies('#', 'subscribe', '$SYS/#', 'allow'));
  t.false(policyApplies('+/#', 'subscribe', '$SYS/broker/+', 'allow'));
  t.true(policyApplies('$SYS/#', 'subscribe', '$SYS/broker/+', 'allow'));
  t.true(policyApplies('#', 'subscribe', '#', 'allow')); // '#' itself never matches $ topics either
  t.false(filtersOverlap('#', '$SYS/#'));
});

test('$share/group/filter is decided on the filter; a $share policy restricts the group', (t) => {
  t.true(policyApplies('devices/#', 'subscribe', '$share/any/devices/a/#', 'allow'));
  t.false(policyApplies('devices/a/#', 'subscribe', '$share/g/#', 'allow'));
  t.true(policyApplies('$share/ingest/devices/#', 'subscribe', '$share/ingest/devices/+/t', 'allow'));
  t.false(policyApplies('$share/ingest/devices/#', 'subscribe', '$share/other/devices/+/t', 'allow'));
  t.false(policyApplies('$share/ingest/devices/#', 'subscribe', 'devices/+/t', 'allow'));
  t.true(policyApplies('$share/+/devices/#', 'subscribe', '$share/x/devices/a', 'allow'));
  t.false(policyApplies('$share/+/devices/#', 'subscribe', '$share/x/#', 'deny'));
  t.true(policyApplies('$share/+/devices/#', 'subscribe', '$share/x/#', 'deny', undefined, true));
  t.true(policyApplies('$share/+/devices/#', 'subscribe', '$share/x/devices/+/a', 'deny'));
  // Deliveries: a $share rule speaks only about its own group's shared subscriptions.
  t.true(policyApplies('$share/ingest/devices/#', 'deliver', 'devices/a/t', 'allow', 'ingest'));
  t.false(policyApplies('$share/ingest/devices/#', 'deliver', 'devices/a/t', 'allow', 'other'));
  t.false(policyApplies('$share/ingest/devices/#', 'deliver', 'devices/a/t', 'allow'));
  t.false(policyApplies('$share/g1/shared/#', 'deliver', 'shared/x', 'deny'), 'a g1 deny rule does not touch a plain subscriber');
  t.false(policyApplies('$share/g1/shared/#', 'deliver', 'shared/x', 'deny', 'g2'), 'nor another group');
  t.true(policyApplies('$share/g1/shared/#', 'deliver', 'shared/x', 'deny', 'g1'));
  t.true(policyApplies('$share/+/shared/#', 'deliver', 'shared/x', 'deny', 'g2'));
  t.true(policyApplies('shared/#', 'deliver', 'shared/x', 'deny', 'g2'), 'a plain rule covers every group');
  t.false(policyApplies('$share/ingest/devices/#', 'publish', 'devices/a/t', 'allow'));
});

test('placeholder values holding + # / or U+0000, or missing, are refused', (t) => {
  for (const bad of ['a/b', 'a+', '#', 'x\u0000', '', undefined, 5, null]) t.false(safePlaceholderValue(bad));
  t.true(safePlaceholderValue('alice'));
  t.true(safePlaceholderValue('dev-7.example'));
});

test('placeholders are substituted only with safe values; otherwise the rule does not apply', (t) => {
  t.deepEqual(expandPlaceholders('devices/%u/%c', who(), '*'), ['devices/alice/c1']);
  t.deepEqual(expandPlaceholders('devices/%u/#', who({ username: 'a/b' }), '*'), []);
  t.deepEqual(expandPlaceholders('devices/%u/#', who({ username: '+' }), '*'), []);
  t.deepEqual(expandPlaceholders('devices/%u/#', who({ username: undefined }), '*'), []);
  t.deepEqual(expandPlaceholders('roles/%r/#', who(), 'role:device'), ['roles/device/#']);
  t.deepEqual(expandPlaceholders('roles/%r/#', who(), 'user:alice'), ['roles/device/#', 'roles/reader/#']);
  t.deepEqual(expandPlaceholders('certs/%{cert.cn}', who(), '*'), ['certs/dev-7']);
  t.deepEqual(expandPlaceholders('uris/%{cert.san.uri}', who(), '*'), ['uris/urn:a']); // the URI with '/' is dropped
  t.deepEqual(expandPlaceholders('t/%{jwt.tenant}/#', who(), '*'), ['t/acme/#']);
  t.deepEqual(expandPlaceholders('t/%{jwt.bad}/#', who(), '*'), []);
  t.deepEqual(expandPlaceholders('t/%{jwt.num}/#', who(), '*'), []);
  t.deepEqual(expandPlaceholders('t/%{jwt.missing}/#', who(), '*'), []);
  t.deepEqual(expandPlaceholders('t/%{cert.cn}', who({ attributes: {} }), '*'), []);
});

test('QoS and retain conditions', (t) => {
  t.true(conditionsHold('*', '*', 2, true));
  t.true(conditionsHold('0-1', 'false', 1, false));
  t.false(conditionsHold('0-1', 'false', 2, false));
  t.false(conditionsHold('0-1', 'false', 0, true));
  t.true(conditionsHold('2', 'true', 2, true));
  t.false(conditionsHold('1-2', '*', 0, false));
});
