/**
 * What the `policy` commands need to know about a broker: the Casbin authorizers of its
 * configuration (files, settings, and which listeners bind client ids), and, for
 * `policy reload --pid`, which configuration a running `portcullis start` process uses.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { CasbinAuthorizerOptions } from '../authz/casbin/authorizer.ts';
import { listenerBindings } from '../authz/casbin/client-id.ts';
import type { Config } from '../config/schema.ts';

/** One Casbin authorizer of a configuration, with its files resolved. */
export interface ConfiguredCasbin {
  /** `authorizers[0]`: where it sits in the configuration. */
  key: string;
  id: string;
  options: CasbinAuthorizerOptions;
}

/**
 * The Casbin authorizers of a configuration, as createBroker builds them (file watching off).
 * Relative file names are resolved against `baseDir`: the broker's working directory.
 */
export function casbinAuthorizers(config: Config, baseDir = process.cwd()): ConfiguredCasbin[] {
  const listeners = listenerBindings(config);
  const out: ConfiguredCasbin[] = [];
  config.authorizers.forEach((a, i) => {
    if (a.type !== 'casbin') return;
    out.push({
      key: `authorizers[${i}]`,
      id: a.id,
      options: {
        model: path.resolve(baseDir, a.model),
        policy: path.resolve(baseDir, a.policy),
        watch: false,
        cacheSize: 0,
        jwtTopics: a.jwtTopics,
        subscribeDenyOverlap: a.subscribeDenyOverlap,
        clientIdRules: a.clientIdRules,
        listeners,
      },
    });
  });
  return out;
}

/** What /proc says about a process: its arguments and working directory, when readable. */
export interface BrokerProcess {
  args?: string[];
  cwd?: string;
}

export function inspectProcess(pid: number): BrokerProcess {
  const out: BrokerProcess = {};
  try {
    out.args = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((a) => a !== '');
  } catch {
    // not Linux, or not ours to read: the caller asks for --config
  }
  try {
    out.cwd = fs.readlinkSync(`/proc/${pid}/cwd`);
  } catch {
    // as above
  }
  return out;
}

/**
 * True when the arguments are those of tsx's own command-line wrapper (`tsx src/cli/main.ts
 * start`, as `npm start` runs it). It passes SIGINT and SIGTERM on to the broker, its child,
 * but not SIGHUP, which would end it instead.
 */
export function isTsxWrapper(args: readonly string[]): boolean {
  const start = args.indexOf('start');
  return start > 0 && args.slice(0, start).some((a) => /(^|[/\\])(tsx|tsx[/\\]dist[/\\]cli\.m?js)$/.test(a));
}

/**
 * True for the processes that start a broker without being it: tsx's wrapper, npm and npx
 * (`npm start`, `npx portcullis start`, whose process titles read `npm start`, `npm exec ...`)
 * and the shell npm runs scripts with. None passes SIGHUP on; npm dies of it.
 */
export function isLauncher(args: readonly string[]): boolean {
  if (isTsxWrapper(args)) return true;
  const first = args[0] ?? '';
  if (/^npm (exec|start|run|run-script|x)\b/.test(first) || /^npx\b/.test(first)) return true;
  if (/(^|[/\\])(npm|npx)$/.test(first)) return true;
  if (args.slice(1, 2).some((a) => /(^|[/\\])(npm|npx)(-cli)?(\.js)?$/.test(a))) return true;
  return /(^|[/\\])(sh|bash|dash)$/.test(first) && args[1] === '-c';
}

/**
 * The broker under a launcher (isLauncher): its only descendant, within a few levels, that is
 * a `portcullis start` and not itself a launcher. Undefined when there is none or more than one.
 */
export function brokerUnder(pid: number, depth = 4): number | undefined {
  const found: number[] = [];
  let level = [pid];
  for (let d = 0; d < depth && level.length > 0; d++) {
    const next: number[] = [];
    for (const p of level) {
      for (const c of childrenOf(p)) {
        const args = inspectProcess(c).args;
        if (args === undefined) continue;
        if (isBrokerStart(args) && !isLauncher(args)) found.push(c);
        else next.push(c);
      }
    }
    level = next;
  }
  return found.length === 1 ? found[0] : undefined;
}

/** The children of a process, from /proc (empty when unreadable). */
export function childrenOf(pid: number): number[] {
  try {
    return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** True when the arguments are those of `portcullis start` (the bin script or src/cli/main.ts). */
export function isBrokerStart(args: readonly string[]): boolean {
  const start = args.indexOf('start');
  return start > 0 && args.slice(0, start).some((a) => /(^|[/\\])(portcullis(\.js)?|main\.[cm]?[jt]s)$/.test(a));
}

/** The `--config FILE` (`-c FILE`, `--config=FILE`) of a `portcullis start` command line, if any. */
export function configArgument(args: readonly string[]): string | undefined {
  const start = args.indexOf('start');
  for (let i = start + 1; i < args.length; i++) {
    const a = args[i] as string;
    if ((a === '--config' || a === '-c') && i + 1 < args.length) return args[i + 1];
    if (a.startsWith('--config=')) return a.slice(9);
    if (a.startsWith('-c') && a.length > 2 && !a.startsWith('--')) return a.slice(2);
  }
  return undefined;
}
