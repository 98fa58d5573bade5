/**
 * `portcullis policy check | test | explain | diff | reload`: the tools ops run in CI before they
 * ship a policy, and to reload a running broker.
 *
 * Every command takes `--config FILE`: the broker's configuration. With it, a policy is read
 * exactly as that broker reads it: with its listeners (which of them bind client ids) and its
 * Casbin settings, and without a policy argument, the policy files it names.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import YAML from 'yaml';
import type { Principal } from '../auth/types.ts';
import { CasbinAuthorizer, describe, type CasbinAuthorizerOptions, type Explanation } from '../authz/casbin/authorizer.ts';
import { listenerBindings } from '../authz/casbin/client-id.ts';
import { clientIdLines, loadPolicySet, PolicyError, type PolicySet } from '../authz/casbin/policy-file.ts';
import type { Action } from '../authz/types.ts';
import { loadConfigFile } from '../config/load.ts';
import type { Config } from '../config/schema.ts';
import { spoolDirFor } from '../audit/admin-spool.ts';
import { brokerUnder, casbinAuthorizers, configArgument, inspectProcess, isBrokerStart, isLauncher, type ConfiguredCasbin } from './policy-config.ts';
import { setSpoolTarget } from './spool-target.ts';
import { clusterReload, formatReloadReport } from '../cluster/admin.ts';

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

interface Who {
  user?: string;
  client?: string;
  roles: string[];
  attributes: Record<string, unknown>;
}

interface Case extends Who {
  action: Action;
  topic: string;
  qos: 0 | 1 | 2;
  retain: boolean;
  listener?: string;
  shareGroup?: string;
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
    const known = ['user', 'client', 'roles', 'attributes', 'action', 'topic', 'qos', 'retain', 'listener', 'shareGroup', 'expect'];
    const extra = Object.keys(o).find((k) => !known.includes(k));
    if (extra !== undefined) throw new PolicyError(file, undefined, `${where}: unknown key '${extra}'`);
    if (!ACTIONS.includes(o.action as Action)) throw new PolicyError(file, undefined, `${where}: action must be one of ${ACTIONS.join(', ')}`);
    if (typeof o.topic !== 'string' || o.topic === '') throw new PolicyError(file, undefined, `${where}: topic is required`);
    if (o.expect !== 'allow' && o.expect !== 'deny') throw new PolicyError(file, undefined, `${where}: expect must be allow or deny`);
    if (o.user === undefined && o.client === undefined) throw new PolicyError(file, undefined, `${where}: give a user or a client`);
    if (o.shareGroup !== undefined && (typeof o.shareGroup !== 'string' || o.action !== 'deliver')) throw new PolicyError(file, undefined, `${where}: shareGroup is the group of a delivery's shared subscription (action: deliver)`);
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
      ...(o.listener !== undefined ? { listener: String(o.listener) } : {}),
      ...(typeof o.shareGroup === 'string' ? { shareGroup: o.shareGroup } : {}),
      expect: o.expect,
    };
  });
}

function principalOf(c: Who): Principal {
  return {
    clientId: c.client ?? c.user ?? '',
    ...(c.user !== undefined ? { username: c.user } : {}),
    method: 'policy-test',
    provider: 'policy-test',
    roles: c.roles,
    attributes: c.attributes,
  };
}

/** The broker's configuration, when `--config` names one, and its first Casbin authorizer. */
interface Deployment {
  config?: Config;
  casbin: ConfiguredCasbin[];
}

function deployment(configFile: string | undefined, baseDir?: string): Deployment {
  if (configFile === undefined) return { casbin: [] };
  const config = loadConfigFile(configFile);
  return { config, casbin: casbinAuthorizers(config, baseDir) };
}

/**
 * Options for an authorizer over `files`: the settings and listeners of the configuration's
 * first Casbin authorizer when there is a configuration, the defaults (no listener known to
 * bind client ids) when there is not.
 */
function optionsFor(files: { model: string; policy: string }, d: Deployment): CasbinAuthorizerOptions {
  const base = d.casbin[0]?.options;
  if (base === undefined && d.config !== undefined) return { ...files, cacheSize: 0, listeners: listenerBindings(d.config) };
  return { ...(base ?? {}), ...files, watch: false, cacheSize: 0 };
}

/** Builds an authorizer as the broker would (validation, client-id lines, the model casbin loads). */
async function build(options: CasbinAuthorizerOptions, hint: string): Promise<CasbinAuthorizer> {
  loadPolicySet(options.model, options.policy, { requirePolicy: true }); // a missing file is an error here
  let a: CasbinAuthorizer;
  try {
    a = new CasbinAuthorizer(options);
  } catch (err) {
    if (err instanceof PolicyError && /no listener is known to bind client ids/.test(err.problem) && hint !== '') throw new PolicyError(err.file, err.line, `${err.problem}. ${hint}`);
    throw err;
  }
  await a.init();
  return a;
}

const NO_CONFIG_HINT = "Give --config FILE to check against the listeners of the broker's configuration";

async function authorizerFor(location: string | undefined, policy: string | undefined, d: Deployment): Promise<CasbinAuthorizer> {
  if (location === undefined && d.casbin[0] !== undefined) return build(d.casbin[0].options, '');
  const files = resolvePolicy(location ?? 'policies', policy);
  return build(optionsFor(files, d), d.config === undefined ? NO_CONFIG_HINT : '');
}

const who = (c: Who): string => [c.user !== undefined ? `user:${c.user}` : '', c.client !== undefined ? `client:${c.client}` : '', ...c.roles.map((r) => `role:${r}`)].filter(Boolean).join(' ');
const ruleOf = (e: Explanation): string => (e.rule !== undefined ? e.rule.source : '-');
const pad = (s: string, n: number): string => (s.length >= n ? s : s + ' '.repeat(n - s.length));
const lineOf = (source: string): string => source.slice(source.lastIndexOf(':') + 1);
const explainCase = (a: CasbinAuthorizer, c: Case): Explanation =>
  a.explain(principalOf(c), c.action, c.topic, c.qos, c.retain, { ...(c.listener !== undefined ? { listener: c.listener } : {}), ...(c.shareGroup !== undefined ? { shareGroup: c.shareGroup } : {}) });

function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  return rows.map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : pad(cell, widths[i] ?? 0))).join('  ')).join('\n') + '\n';
}

/** Every rule and role link with its line number, as the broker read them: for a reviewer to hold against the file. */
function listing(set: PolicySet): string {
  const rows = [
    ...set.rules.map((r) => ({ line: lineOf(r.source), text: ['p', r.sub, r.obj, r.act, r.eft, r.qos, r.retain].join(', ') })),
    ...set.links.map((l) => ({ line: lineOf(l.source), text: ['g', l.member, l.role].join(', ') })),
  ].sort((a, b) => Number(a.line) - Number(b.line));
  const width = Math.max(0, ...rows.map((r) => r.line.length));
  return rows.map((r) => `  line ${r.line.padStart(width)}: ${r.text}\n`).join('');
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

/** Checks one authorizer's files as the broker loads them and prints what it read. */
async function checkOne(options: CasbinAuthorizerOptions, label: string, hint: string): Promise<void> {
  const set = loadPolicySet(options.model, options.policy, { requirePolicy: true });
  const a = await build(options, hint);
  for (const w of set.warnings) process.stderr.write(`warning: ${w}\n`);
  process.stdout.write(`ok ${label}: ${set.rules.length} rules, ${set.links.length} role links, version ${a.version}\n`);
  process.stdout.write(listing(set));
  const keyed = clientIdLines(set);
  if (keyed.length > 0) {
    const bound = (options.listeners ?? []).filter((l) => l.clientIdBound).map((l) => `'${l.name}'`);
    const scope = options.clientIdRules === 'bound-listeners' ? `they allow only on listeners that bind client ids (${bound.length > 0 ? bound.join(', ') : 'none'})` : 'every listener binds client ids';
    process.stdout.write(`  client-id lines (${scope}): ${keyed.map((k) => `line ${lineOf(k.source)} (${k.what})`).join(', ')}\n`);
  }
}

export function registerPolicyCommand(program: Command): void {
  const policy = program.command('policy').description('check, test, explain, diff and reload Casbin policies');

  policy
    .command('check')
    .argument('[dir]', 'directory with model.conf and the policy .csv files (default: the files of --config, else policies)')
    .option('--config <file>', "the broker's configuration: its listeners, its Casbin settings and (without [dir]) its policy files")
    .description('validate the model and every policy file as the broker reads them; print each rule with its line; exit 1 at the first error, with file and line')
    .action((dir: string | undefined, opts: { config?: string }) =>
      run(async () => {
        const d = deployment(opts.config);
        if (dir === undefined && d.config !== undefined) {
          if (d.casbin.length === 0) throw new Error(`${opts.config}: the configuration has no casbin authorizer`);
          for (const c of d.casbin) await checkOne(c.options, `${c.key} ${path.relative(process.cwd(), c.options.policy) || c.options.policy}`, '');
          return 0;
        }
        const location = dir ?? 'policies';
        const model = path.join(location, 'model.conf');
        const csv = fs.existsSync(location) && fs.statSync(location).isDirectory() ? fs.readdirSync(location).filter((f) => f.endsWith('.csv')).sort() : [];
        if (csv.length === 0) throw new PolicyError(location, undefined, 'no policy (.csv) file to check');
        for (const file of csv) {
          const files = { model, policy: path.join(location, file) };
          await checkOne(optionsFor(files, d), files.policy, d.config === undefined ? NO_CONFIG_HINT : '');
        }
        return 0;
      }),
    );

  policy
    .command('test')
    .argument('<dir>', 'policy directory (model.conf and one .csv) or a policy .csv file')
    .argument('<cases>', 'YAML list of { user, client, roles, attributes, action, topic, qos, retain, listener, shareGroup, expect }')
    .option('--policy <file>', 'the policy file, when the directory holds several')
    .option('--config <file>', "the broker's configuration: its listeners and Casbin settings")
    .description('evaluate expected decisions; print a pass/fail table; exit 1 if any fails')
    .action((dir: string, casesFile: string, opts: { policy?: string; config?: string }) =>
      run(async () => {
        const a = await authorizerFor(dir, opts.policy, deployment(opts.config));
        const cases = loadCases(casesFile);
        const rows = [['RESULT', 'EXPECT', 'GOT', 'WHO', 'ACTION', 'TOPIC', 'RULE']];
        let failed = 0;
        for (const c of cases) {
          const e = explainCase(a, c);
          const pass = e.decision === c.expect;
          if (!pass) failed++;
          const action = c.action + (c.qos > 0 ? ` q${c.qos}` : '') + (c.retain ? ' r' : '') + (c.shareGroup !== undefined ? ` group=${c.shareGroup}` : '');
          rows.push([pass ? 'PASS' : 'FAIL', c.expect, e.decision, who(c), action, c.topic, ruleOf(e)]);
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
    .option('-d, --dir <dir>', 'policy directory or .csv file (default: the policy of --config, else policies)')
    .option('--policy <file>', 'the policy file, when the directory holds several')
    .option('--config <file>', "the broker's configuration: its listeners, its Casbin settings and its policy")
    .option('-u, --user <name>', 'user name')
    .option('-c, --client <id>', 'client id')
    .option('-r, --roles <roles>', 'comma-separated roles', '')
    .option('-q, --qos <n>', 'QoS', '0')
    .option('--retain', 'the retain flag')
    .option('-l, --listener <name>', 'the listener the client is connected to (whether it binds client ids)')
    .option('-g, --share-group <group>', "deliver: the group of the shared subscription the message goes out on")
    .description('print the decision, the rule that decided it, and the rules its QoS or retain condition excluded')
    .action(
      (
        action: string,
        topic: string,
        opts: { dir?: string; policy?: string; config?: string; user?: string; client?: string; roles: string; qos: string; retain?: boolean; listener?: string; shareGroup?: string },
      ) =>
        run(async () => {
          if (!ACTIONS.includes(action as Action)) throw new Error(`unknown action '${action}' (expected ${ACTIONS.join(', ')})`);
          const qos = Number(opts.qos);
          if (qos !== 0 && qos !== 1 && qos !== 2) throw new Error('--qos must be 0, 1 or 2');
          if (opts.user === undefined && opts.client === undefined) throw new Error('give --user or --client');
          const a = await authorizerFor(opts.dir, opts.policy, deployment(opts.config));
          const roles = opts.roles.split(',').map((r) => r.trim()).filter(Boolean);
          const p = principalOf({ ...(opts.user !== undefined ? { user: opts.user } : {}), ...(opts.client !== undefined ? { client: opts.client } : {}), roles, attributes: {} });
          const e = a.explain(p, action as Action, topic, qos, opts.retain === true, {
            ...(opts.listener !== undefined ? { listener: opts.listener } : {}),
            ...(opts.shareGroup !== undefined ? { shareGroup: opts.shareGroup } : {}),
          });
          process.stdout.write(`${e.decision.toUpperCase()}: ${action} ${topic}\n`);
          process.stdout.write(`rule: ${e.rule !== undefined ? describe(e.rule) : '(none: default deny)'}\n`);
          process.stdout.write(`why: ${e.detail}\n`);
          for (const m of e.nearMisses ?? []) process.stdout.write(`near miss: ${describe(m.rule)} would allow it, but ${m.why}\n`);
          process.stdout.write(`policy version: ${a.version}\n`);
          return 0;
        }),
    );

  policy
    .command('diff')
    .argument('<old>', 'the current policy (directory or .csv)')
    .argument('<new>', 'the proposed policy (directory or .csv)')
    .argument('<cases>', 'the cases file')
    .option('--config <file>', "the broker's configuration: its listeners and Casbin settings")
    .description('show which decisions the change flips; exit 1 if a flip breaks an expected decision')
    .action((oldLoc: string, newLoc: string, casesFile: string, opts: { config?: string }) =>
      run(async () => {
        const d = deployment(opts.config);
        const before = await authorizerFor(oldLoc, undefined, d);
        const after = await authorizerFor(newLoc, undefined, d);
        const cases = loadCases(casesFile);
        const rows = [['FLIP', 'EXPECT', 'OLD', 'NEW', 'WHO', 'ACTION', 'TOPIC', 'NEW RULE']];
        let broken = 0;
        for (const c of cases) {
          const o = explainCase(before, c);
          const n = explainCase(after, c);
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
    .option('--pid <pid>', 'process id of the running broker (`portcullis start`); not needed for a cluster')
    .option('--config <file>', "the broker's configuration (default: the --config of the broker's command line)")
    .description("check the policy files the running broker uses, as it reads them, then ask it to reload them (SIGHUP); in a cluster, ask every node and report each")
    .action((opts: { pid?: string; config?: string }) =>
      run(async () => {
        if (opts.pid === undefined) {
          // A cluster: every node is asked through Redis, and answers with its report.
          if (opts.config === undefined) throw new Error('give --pid (a broker) or --config (a cluster configuration)');
          const d = deployment(opts.config);
          if (d.config?.cluster === undefined) throw new Error(`${opts.config} has no \`cluster\`: give --pid with the broker's process id`);
          if (d.config.audit.sink !== 'none') setSpoolTarget(spoolDirFor(path.resolve(d.config.audit.path)));
          for (const c of d.casbin) {
            const a = await build(c.options, '');
            process.stdout.write(`policy ${c.options.policy} (${c.key}, model ${c.options.model}) is valid here: version ${a.version}\n`);
          }
          const report = await clusterReload(d.config.cluster, 'portcullis policy reload');
          process.stdout.write(`cluster '${d.config.cluster.name}': ${report.nodes.length} node(s) reported\n` + formatReloadReport(report));
          return report.ok ? 0 : 1;
        }
        let pid = Number(opts.pid);
        if (!Number.isInteger(pid) || pid <= 0) throw new Error('--pid must be a process id');
        let proc = inspectProcess(pid);
        if (proc.args !== undefined && isLauncher(proc.args)) {
          // npm, npx, a shell or tsx's wrapper started the broker: none passes SIGHUP on (npm dies of it). Signal the broker itself.
          const broker = brokerUnder(pid);
          if (broker === undefined) throw new Error(`process ${pid} (${proc.args.join(' ').slice(0, 80)}) launched the broker but is not it, and does not pass SIGHUP on: give the pid of the broker process itself`);
          process.stdout.write(`process ${pid} is a launcher (${proc.args[0]}): signalling the broker process ${broker} instead\n`);
          pid = broker;
          proc = inspectProcess(pid);
        }
        const { configFile, baseDir } = brokerConfig(pid, proc, opts.config);
        const d = deployment(configFile, baseDir);
        // This action's admin record goes beside that broker's audit file, where it will read it.
        if (d.config !== undefined && d.config.audit.sink !== 'none') setSpoolTarget(spoolDirFor(path.resolve(baseDir, d.config.audit.path)));
        if (d.casbin.length === 0) throw new Error(`${configFile}: the broker's configuration has no casbin authorizer: there is no policy to reload`);
        for (const c of d.casbin) {
          const a = await build(c.options, '');
          process.stdout.write(`policy ${c.options.policy} (${c.key}, model ${c.options.model}) is valid: version ${a.version}\n`);
        }
        if (d.config?.cluster !== undefined) {
          // A node of a cluster: every node is asked, and each reports.
          const report = await clusterReload(d.config.cluster, 'portcullis policy reload');
          process.stdout.write(`cluster '${d.config.cluster.name}': ${report.nodes.length} node(s) reported\n` + formatReloadReport(report));
          return report.ok ? 0 : 1;
        }
        try {
          process.kill(pid, 'SIGHUP');
        } catch (err) {
          throw new Error(`cannot signal process ${pid}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
        }
        process.stdout.write(`sent SIGHUP to ${pid} (configuration ${configFile}); the outcome is in the broker's log and audit\n`);
        return 0;
      }),
    );
}

/**
 * The configuration file a running broker uses: `--config` when given (it must agree with the
 * broker's own command line when that can be read), else the broker's own `--config`. Relative
 * paths in it are the broker's: they are resolved against its working directory.
 */
function brokerConfig(pid: number, proc: { args?: string[]; cwd?: string }, given: string | undefined): { configFile: string; baseDir: string } {
  const baseDir = proc.cwd ?? process.cwd();
  if (proc.args !== undefined && !isBrokerStart(proc.args)) {
    if (given === undefined) throw new Error(`process ${pid} is not 'portcullis start' (${proc.args.join(' ')}): give --config with the configuration it uses`);
    return { configFile: given, baseDir };
  }
  const own = proc.args === undefined ? undefined : configArgument(proc.args);
  if (proc.args !== undefined && own === undefined) {
    throw new Error(`process ${pid} runs on the built-in defaults (no --config): it uses no policy file, so there is nothing to reload`);
  }
  if (own !== undefined) {
    const ownPath = path.resolve(baseDir, own);
    if (given !== undefined && path.resolve(given) !== ownPath) throw new Error(`--config ${given} is not the configuration of process ${pid}, which runs with ${ownPath}`);
    return { configFile: ownPath, baseDir };
  }
  if (given === undefined) throw new Error(`cannot read the command line of process ${pid}: give --config with the configuration it uses`);
  return { configFile: given, baseDir };
}
