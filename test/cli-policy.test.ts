/** `portcullis policy check | test | explain | diff`, run as the real command. */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { writePolicyDir } from './helpers.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const policy = (...args: string[]) => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', path.join('src', 'cli', 'main.ts'), 'policy', ...args], { cwd: root, encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
};

test('policy check passes the shipped policies and fails a bad file with file and line', (t) => {
  const good = policy('check', 'policies');
  t.is(good.code, 0, good.err);
  t.regex(good.out, /ok policies\/fleet\.csv: \d+ rules/);
  const dir = writePolicyDir('p, user:a, a/#, publish, allow\n\np, user:a, a/#/b, publish, allow\n');
  t.teardown(dir.cleanup);
  const bad = policy('check', dir.dir);
  t.is(bad.code, 1);
  t.true(bad.err.includes(`${dir.policy}:3: invalid topic filter 'a/#/b'`), bad.err);
});

test('policy test prints a pass/fail table and exits 1 when a case fails', (t) => {
  const ok = policy('test', 'policies', 'policies/cases.yaml');
  t.is(ok.code, 0, ok.out + ok.err);
  t.regex(ok.out, /^RESULT\s+EXPECT\s+GOT/m);
  t.regex(ok.out, /\d+ passed, 0 failed/);
  const dir = writePolicyDir('p, user:alice, a/#, publish, allow\n');
  t.teardown(dir.cleanup);
  fs.writeFileSync(path.join(dir.dir, 'cases.yaml'), '- { user: alice, action: publish, topic: a/b, expect: allow }\n- { user: alice, action: publish, topic: b, expect: allow }\n');
  const failing = policy('test', dir.dir, path.join(dir.dir, 'cases.yaml'));
  t.is(failing.code, 1);
  t.regex(failing.out, /^PASS\s+allow\s+allow\s+user:alice\s+publish\s+a\/b/m);
  t.regex(failing.out, /^FAIL\s+allow\s+deny\s+user:alice\s+publish\s+b/m);
  t.regex(failing.out, /1 passed, 1 failed/);
});

test('policy explain prints the decision and the deciding rule', (t) => {
  const r = policy('explain', '--user', 'alice', '--client', 'c1', '--roles', 'r1', 'publish', 'devices/bob/x');
  t.is(r.code, 0, r.err);
  t.regex(r.out, /^DENY: publish devices\/bob\/x/m);
  t.regex(r.out, /rule: \(none: default deny\)/);
  const d = policy('explain', '--user', 'ops', 'deliver', 'devices/alice/secret/key');
  t.regex(d.out, /^DENY/m);
  t.regex(d.out, /rule: policies\/fleet\.csv:\d+ \(p, \*, devices\/\+\/secret\/#, \*, deny, \*, \*\)/);
  const a = policy('explain', '--user', 'alice', '--qos', '1', 'publish', 'devices/alice/telemetry/t');
  t.regex(a.out, /^ALLOW/m);
});

test('policy diff shows the decisions a change flips, and fails when one breaks an expectation', (t) => {
  const before = writePolicyDir('p, user:alice, a/#, publish, allow\np, user:bob, b/#, publish, allow\n');
  const after = writePolicyDir('p, user:alice, a/#, publish, allow\np, user:alice, b/#, publish, allow\n');
  t.teardown(() => {
    before.cleanup();
    after.cleanup();
  });
  const cases = path.join(before.dir, 'cases.yaml');
  fs.writeFileSync(cases, '- { user: alice, action: publish, topic: a/1, expect: allow }\n- { user: bob, action: publish, topic: b/1, expect: allow }\n- { user: alice, action: publish, topic: b/1, expect: deny }\n');
  const r = policy('diff', before.dir, after.dir, cases);
  t.is(r.code, 1);
  t.regex(r.out, /^BROKEN\s+allow\s+allow\s+deny\s+user:bob/m);
  t.regex(r.out, /^BROKEN\s+deny\s+deny\s+allow\s+user:alice\s+publish\s+b\/1/m);
  t.regex(r.out, /2 of 3 decisions flip, 2 against the expectation/);
  const same = policy('diff', before.dir, before.dir, cases);
  t.is(same.code, 0);
  t.regex(same.out, /no decision flips across 3 cases/);
});

test('policy check prints each rule with its line and refuses a deny rule hidden behind a lone CR, naming the line', (t) => {
  const good = policy('check', 'policies');
  t.regex(good.out, /ok policies\/fleet\.csv: 10 rules, 5 role links/);
  t.regex(good.out, /^ {2}line 32: p, \*, devices\/\+\/secret\/#, \*, deny, \*, \*$/m);
  t.regex(good.out, /^ {2}line 35: g, user:alice, role:device$/m);
  const dir = writePolicyDir('p, *, devices/#, *, allow\n# secrets are off limits\rp, *, devices/+/secret/#, *, deny\n');
  t.teardown(dir.cleanup);
  const bad = policy('check', dir.dir);
  t.is(bad.code, 1);
  t.true(bad.err.includes(`${dir.policy}:2: U+000D CARRIAGE RETURN at column 25`), bad.err);
});

test('policy check refuses client-id lines unless the configuration binds client ids on every listener, and checks the configured files', (t) => {
  const dir = writePolicyDir('p, *, plant/status, read, allow\np, client:plc-controller, plant/valves/#, *, allow\n');
  t.teardown(dir.cleanup);
  const config = (identity: string) => {
    const file = path.join(dir.dir, `broker-${identity}.yaml`);
    fs.writeFileSync(file, [
      'listeners:',
      `  - { name: plant, type: tcp, port: 0, auth: [anonymous], identity: { clientIdBinding: ${identity} } }`,
      `authorizers: [{ type: casbin, model: ${JSON.stringify(dir.model)}, policy: ${JSON.stringify(dir.policy)} }]`,
      '',
    ].join('\n'));
    return file;
  };
  const none = policy('check', dir.dir);
  t.is(none.code, 1);
  t.true(none.err.includes(`${dir.policy}:2: the subject 'client:plc-controller' depends on the client id, but no listener is known to bind client ids`), none.err);
  t.regex(none.err, /Give --config FILE/);
  const unbound = policy('check', '--config', config('none'));
  t.is(unbound.code, 1);
  t.true(unbound.err.includes(`${dir.policy}:2: the subject 'client:plc-controller' depends on the client id, but listener 'plant' does not bind client ids`), unbound.err);
  const bound = policy('check', '--config', config('equals'));
  t.is(bound.code, 0, bound.err);
  t.regex(bound.out, /^ok authorizers\[0\] .*policy\.csv: 2 rules/m);
  t.regex(bound.out, /client-id lines \(every listener binds client ids\): line 2 \(the subject 'client:plc-controller'\)/);
});

test('policy explain names the near miss: the rule whose QoS or retain condition excluded the request', (t) => {
  const r = policy('explain', '--user', 'alice', '--qos', '2', 'publish', 'devices/alice/telemetry/t');
  t.is(r.code, 0, r.err);
  t.regex(r.out, /^DENY: publish devices\/alice\/telemetry\/t$/m);
  t.regex(r.out, /^near miss: policies\/fleet\.csv:10 \(p, role:device, devices\/%u\/telemetry\/#, publish, allow, 0-1, false\) would allow it, but its QoS condition 0-1 excludes QoS 2$/m);
  const g = policy('explain', '--user', 'worker', '--share-group', 'ingest', 'deliver', 'devices/a/telemetry/t');
  t.regex(g.out, /^ALLOW/m);
  t.regex(policy('explain', '--user', 'worker', 'deliver', 'devices/a/telemetry/t').out, /^DENY/m);
});
