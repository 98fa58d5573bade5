/**
 * `portcullis policy check | test | explain | diff | reload`: the tools ops run in CI before they
 * ship a policy, and to reload a running broker.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import YAML from 'yaml';
import type { Principal } from '../auth/types.ts';
import { CasbinAuthorizer, describe, type Explanation } from '../authz/casbin/authorizer.ts';
import { loadPolicySet, PolicyError } from '../authz/casbin/policy-file.ts';
import type { Action } from '../authz/types.ts';

const ACTIONS: readonly Action[] = ['publish', 'subscribe', 'unsubscribe', 'deliver'];

/** A policy location: a directory holding model.conf and one .csv, or a .csv file beside model.conf. */
export function resolvePolicy(location: string, policyOverride?: string): { model: string; policy: string } {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(location);
  } catch {
    throw new PolicyError(location, undefined, 'no such file or directory');
  }
  if (!stat.isDirectory()) return { model: path.join(path.dirname(location), 'model.conf'), policy: location };
  const model = path.join(location, 'model.conf');
  if (policyOverride !== undefined) return { model, policy: policyOverride };
  const csv = fs.readdirSync(location).filter((f) => f.endsWith('.csv')).sort();
  if (csv.length !== 1) throw new PolicyError(location, undefined, csv.length === 0 ? 'no policy (.csv) file in the directory' : `several policy files (${csv.join(', ')}): name one with --policy`);
  return { model, policy: path.join(location, csv[0] as string) };
}

interface Case {
  user?: string;
  client?: string;
  roles: string[];
  attributes: Record<string, unknown>;
  action: Action;
  topic: string;
  qos: 0 | 1 | 2;
  retain: boolean;
  expect: 'allow' | 'deny';
}

/** Reads a cases file; every problem names the file and the case number. */
export function loadCases(file: string): Case[] {
  let raw: unknown;
  try {
    raw = YAML.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new PolicyError(file, undefined, `cannot read the cases: ${(err as Error).message}`);
  }
  if (!Array.isArray(raw)) throw new PolicyError(file, undefined, 'the cases file must be a list');
  return raw.map((c: unknown, i): Case => {
    const where = `case ${i + 1}`;
    if (c === null || typeof c !== 'object') throw new PolicyError(file, undefined, `${where}: not a mapping`);
    const o = c as Record<string, unknown>;
    const known = ['user', 'client', 'roles', 'attributes', 'action', 'topic', 'qos', 'retain', 'expect'];
    const extra = Object.keys(o).find((k) => !known.includes(k));
    if (extra !== undefined) throw new PolicyError(file, undefined, `${where}: unknown key '${extra}'`);
    if (!ACTIONS.includes(o.action as Action)) throw new PolicyError(file, undefined, `${where}: action must be one of ${ACTIONS.join(', ')}`);
    if (typeof o.topic !== 'string' || o.topic === '') throw new PolicyError(file, undefined, `${where}: topic is required`);
    if (o.expect !== 'allow' && o.expect !== 'deny') throw new PolicyError(file, undefined, `${where}: expect must be allow or deny`);
    if (o.user === undefined && o.client === undefined) throw new PolicyError(file, undefined, `${where}: give a user or a client`);
    const qos = o.qos ?? 0;
    if (qos !== 0 && qos !== 1 && qos !== 2) throw new PolicyError(file, undefined, `${where}: qos must be 0, 1 or 2`);
    return {
      ...(o.user !== undefined ? { user: String(o.user) } : {}),
      ...(o.client !== undefined ? { client: String(o.client) } : {}),
      roles: Array.isArray(o.roles) ? o.roles.map(String) : typeof o.roles === 'string' ? [o.roles] : [],
      attributes: o.attributes !== null && typeof o.attributes === 'object' ? (o.attributes as Record<string, unknown>) : {},
      action: o.action as Action,
      topic: o.topic,
      qos,
      retain: o.retain === true,
      expect: o.expect,
    };
  });
}

function principalOf(c: { user?: string; client?: string; roles: string[]; attributes: Record<string, unknown> }): Principal {
  return {
    clientId: c.client ?? c.user ?? '',
    ...(c.user !== undefined ? { username: c.user } : {}),
    method: 'policy-test',
    provider: 'policy-test',
    roles: c.roles,
    attributes: c.attributes,
  };
}

async function authorizerFor(location: string, policy?: string): Promise<CasbinAuthorizer> {
  const files = resolvePolicy(location, policy);
  loadPolicySet(files.model, files.policy, { requirePolicy: true }); // a missing file is an error here
  const a = new CasbinAuthorizer({ model: files.model, policy: files.policy, cacheSize: 0 });
  await a.init();
  return a;
}

const who = (c: Case): string => [c.user !== undefined ? `user:${c.user}` : '', c.client !== undefined ? `client:${c.client}` : '', ...c.roles.map((r) => `role:${r}`)].filter(Boolean).join(' ');
const ruleOf = (e: Explanation): string => (e.rule !== undefined ? e.rule.source : '-');
const pad = (s: string, n: number): string => (s.length >= n ? s : s + ' '.repeat(n - s.length));

function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  return rows.map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : pad(cell, widths[i] ?? 0))).join('  ')).join('\n') + '\n';
}

/** Runs one subcommand, printing errors as `file:line: problem` and turning them into exit code 1. */
async function run(body: () => Promise<number>): Promise<void> {
  let code: number;
  try {
    code = await body();
  } catch (err) {
    process.stderr.write(`portcullis policy: ${(err as Error).message}\n`);
    code = 1;
  }
  process.exitCode = code;
}

export function registerPolicyCommand(program: Command): void {
  const policy = program.command('policy').description('check, test, explain, diff and reload Casbin policies');

  policy
    .command('check')
    .argument('[dir]', 'directory with model.conf and the policy .csv files', 'policies')
    .description('validate the model and every policy file; exit 1 at the first error, with file and line')
    .action((dir: string) =>
      run(async () => {
        const model = path.join(dir, 'model.conf');
        const csv = fs.existsSync(dir) && fs.statSync(dir).isDirectory() ? fs.readdirSync(dir).filter((f) => f.endsWith('.csv')).sort() : [];
        if (csv.length === 0) throw new PolicyError(dir, undefined, 'no policy (.csv) file to check');
        for (const file of csv) {
          const set = loadPolicySet(model, path.join(dir, file), { requirePolicy: true });
          for (const w of set.warnings) process.stderr.write(`warning: ${w}\n`);
          process.stdout.write(`ok ${path.join(dir, file)}: ${set.rules.length} rules, ${set.links.length} role links, version ${set.version}\n`);
        }
        return 0;
      }),
    );

  policy
    .command('test')
    .argument('<dir>', 'policy directory (model.conf and one .csv) or a policy .csv file')
    .argument('<cases>', 'YAML list of { user, client, roles, action, topic, qos, retain, expect }')
    .option('--policy <file>', 'the policy file, when the directory holds several')
    .description('evaluate expected decisions; print a pass/fail table; exit 1 if any fails')
    .action((dir: string, casesFile: string, opts: { policy?: string }) =>
      run(async () => {
        const a = await authorizerFor(dir, opts.policy);
        const cases = loadCases(casesFile);
        const rows = [['RESULT', 'EXPECT', 'GOT', 'WHO', 'ACTION', 'TOPIC', 'RULE']];
        let failed = 0;
        for (const c of cases) {
          const e = a.explain(principalOf(c), c.action, c.topic, c.qos, c.retain);
          const pass = e.decision === c.expect;
          if (!pass) failed++;
          rows.push([pass ? 'PASS' : 'FAIL', c.expect, e.decision, who(c), c.action + (c.qos > 0 ? ` q${c.qos}` : '') + (c.retain ? ' r' : ''), c.topic, ruleOf(e)]);
        }
        process.stdout.write(table(rows));
        process.stdout.write(`${cases.length - failed} passed, ${failed} failed\n`);
        return failed === 0 ? 0 : 1;
      }),
    );

  policy
    .command('explain')
    .argument('<action>', ACTIONS.join(' | '))
    .argument('<topic>', 'topic name (publish, deliver) or filter (subscribe, unsubscribe)')
    .option('-d, --dir <dir>', 'policy directory or .csv file', 'policies')
    .option('--policy <file>', 'the policy file, when the directory holds several')
    .option('-u, --user <name>', 'user name')
    .option('-c, --client <id>', 'client id')
    .option('-r, --roles <roles>', 'comma-separated roles', '')
    .option('-q, --qos <n>', 'QoS', '0')
    .option('--retain', 'the retain flag')
    .description('print the decision and the rule that decided it')
    .action((action: string, topic: string, opts: { dir: string; policy?: string; user?: string; client?: string; roles: string; qos: string; retain?: boolean }) =>
      run(async () => {
        if (!ACTIONS.includes(action as Action)) throw new Error(`unknown action '${action}' (expected ${ACTIONS.join(', ')})`);
        const qos = Number(opts.qos);
        if (qos !== 0 && qos !== 1 && qos !== 2) throw new Error('--qos must be 0, 1 or 2');
        if (opts.user === undefined && opts.client === undefined) throw new Error('give --user or --client');
        const a = await authorizerFor(opts.dir, opts.policy);
        const roles = opts.roles.split(',').map((r) => r.trim()).filter(Boolean);
        const p = principalOf({ ...(opts.user !== undefined ? { user: opts.user } : {}), ...(opts.client !== undefined ? { client: opts.client } : {}), roles, attributes: {} });
        const e = a.explain(p, action as Action, topic, qos, opts.retain === true);
        process.stdout.write(`${e.decision.toUpperCase()}: ${action} ${topic}\n`);
        process.stdout.write(`rule: ${e.rule !== undefined ? describe(e.rule) : '(none: default deny)'}\n`);
        process.stdout.write(`why: ${e.detail}\n`);
        process.stdout.write(`policy version: ${a.version}\n`);
        return 0;
      }),
    );

  policy
    .command('diff')
    .argument('<old>', 'the current policy (directory or .csv)')
    .argument('<new>', 'the proposed policy (directory or .csv)')
    .argument('<cases>', 'the cases file')
    .description('show which decisions the change flips; exit 1 if a flip breaks an expected decision')
    .action((oldLoc: string, newLoc: string, casesFile: string) =>
      run(async () => {
        const before = await authorizerFor(oldLoc);
        const after = await authorizerFor(newLoc);
        const cases = loadCases(casesFile);
        const rows = [['FLIP', 'EXPECT', 'OLD', 'NEW', 'WHO', 'ACTION', 'TOPIC', 'NEW RULE']];
        let broken = 0;
        for (const c of cases) {
          const o = before.explain(principalOf(c), c.action, c.topic, c.qos, c.retain);
          const n = after.explain(principalOf(c), c.action, c.topic, c.qos, c.retain);
          if (o.decision === n.decision) continue;
          const ok = n.decision === c.expect;
          if (!ok) broken++;
          rows.push([ok ? 'fixed' : 'BROKEN', c.expect, o.decision, n.decision, who(c), c.action, c.topic, ruleOf(n)]);
        }
        if (rows.length === 1) process.stdout.write(`no decision flips across ${cases.length} cases\n`);
        else process.stdout.write(table(rows) + `${rows.length - 1} of ${cases.length} decisions flip, ${broken} against the expectation\n`);
        return broken === 0 ? 0 : 1;
      }),
    );

  policy
    .command('reload')
    .requiredOption('--pid <pid>', 'process id of the running broker')
    .option('-d, --dir <dir>', 'check this policy directory first', 'policies')
    .description('check the policy, then ask a running broker to reload it (SIGHUP)')
    .action((opts: { pid: string; dir: string }) =>
      run(async () => {
        const files = resolvePolicy(opts.dir);
        loadPolicySet(files.model, files.policy, { requirePolicy: true });
        const pid = Number(opts.pid);
        if (!Number.isInteger(pid) || pid <= 0) throw new Error('--pid must be a process id');
        process.kill(pid, 'SIGHUP');
        process.stdout.write(`policy ${files.policy} is valid; sent SIGHUP to ${pid} (the outcome is in the broker's log and audit)\n`);
        return 0;
      }),
    );
}
