/**
 * A real broker process for the interoperability tests: `portcullis start --config FILE` run by
 * Node with tsx, exactly as `npm start` runs it, on ephemeral loopback ports. The bound ports are
 * read from its "listening on" log lines; its JSON log (standard error) and its audit file are
 * kept for the tests to read.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const main = path.join(root, 'src', 'cli', 'main.ts');
/** tsx resolved from the checkout, so the broker can run with any working directory. */
const tsx = import.meta.resolve('tsx');

/** One line of the broker's pino log. */
export interface LogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}

/** One line of the audit file. */
export interface AuditLine {
  event: string;
  decision: string;
  reasonCode?: number;
  reason?: string;
  clientId?: string;
  username?: string;
  listener?: string;
  decidedBy?: string;
  topic?: string;
  [key: string]: unknown;
}

export interface BrokerProcess {
  /** The broker's working directory (a temporary one unless `cwd` was given). */
  dir: string;
  pid: number;
  /** The port a listener bound, by listener name. */
  port(listener: string): number;
  /** Every log line so far. */
  logs(): LogLine[];
  /** Resolves with the first log line (already written or to come) that matches, or undefined after `ms`. */
  waitForLog(match: (line: LogLine) => boolean, ms?: number): Promise<LogLine | undefined>;
  /** The audit file's records so far (the broker writes them in batches: poll with waitForAudit). */
  audit(): AuditLine[];
  waitForAudit(match: (r: AuditLine) => boolean, ms?: number): Promise<AuditLine | undefined>;
  /** SIGTERM, then SIGKILL if it has not exited within 8 s; removes a temporary directory. */
  stop(): Promise<void>;
}

export interface StartOptions {
  /** The configuration: an object (written as YAML) or YAML text. */
  config: object | string;
  /** Run in this directory (relative paths in the configuration resolve here); default: a new temporary one. */
  cwd?: string;
  /** How long the broker may take to bind every listener. */
  readyMs?: number;
}

export const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export function tempDir(prefix = 'portcullis-interop-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** Starts `portcullis start --config <dir>/portcullis.yaml` and waits until every listener is bound. */
export async function startBrokerProcess(options: StartOptions): Promise<BrokerProcess> {
  const owned = options.cwd === undefined;
  const dir = options.cwd ?? tempDir();
  const file = path.join(dir, 'portcullis.yaml');
  const text = typeof options.config === 'string' ? options.config : YAML.stringify(options.config);
  fs.writeFileSync(file, text);
  const listeners = (YAML.parse(text) as { listeners?: unknown[] }).listeners?.length ?? 1;
  const spool = path.join(dir, 'audit-spool');
  const child: ChildProcess = spawn(process.execPath, ['--import', tsx, main, 'start', '--config', file], {
    cwd: dir,
    env: { ...process.env, PORTCULLIS_AUDIT_SPOOL: spool },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: LogLine[] = [];
  const waiters: { match: (l: LogLine) => boolean; resolve: (l: LogLine) => void }[] = [];
  let stderr = '';
  let partial = '';
  child.stderr?.on('data', (d: Buffer) => {
    partial += d.toString();
    let nl: number;
    while ((nl = partial.indexOf('\n')) >= 0) {
      const raw = partial.slice(0, nl);
      partial = partial.slice(nl + 1);
      let line: LogLine;
      try {
        line = JSON.parse(raw) as LogLine;
      } catch {
        stderr += raw + '\n'; // not a log line: a start error, kept for the failure message
        continue;
      }
      lines.push(line);
      for (let i = waiters.length - 1; i >= 0; i--) {
        const w = waiters[i] as (typeof waiters)[number];
        if (w.match(line)) {
          waiters.splice(i, 1);
          w.resolve(line);
        }
      }
    }
  });
  child.stdout?.resume();
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let gone = false;
  void exited.then(() => (gone = true));

  const waitForLog = (match: (l: LogLine) => boolean, ms = 10_000): Promise<LogLine | undefined> => {
    const found = lines.find(match);
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((resolve) => {
      const waiter = { match, resolve: (l: LogLine) => (clearTimeout(timer), resolve(l)) };
      const timer = setTimeout(() => {
        waiters.splice(waiters.indexOf(waiter), 1);
        resolve(undefined);
      }, ms);
      waiters.push(waiter);
    });
  };

  const ports = new Map<string, number>();
  const readyBy = Date.now() + (options.readyMs ?? 30_000);
  while (ports.size < listeners) {
    for (const l of lines) if (l.msg.startsWith('listening on ') && typeof l.listener === 'string') ports.set(l.listener, l.port as number);
    if (ports.size >= listeners) break;
    if (gone || Date.now() > readyBy) {
      child.kill('SIGKILL');
      if (owned) fs.rmSync(dir, { recursive: true, force: true });
      throw new Error(`the broker did not start (${gone ? 'it exited' : 'timed out'}): ${stderr}${lines.map((l) => JSON.stringify(l)).join('\n')}`);
    }
    await delay(20);
  }

  const auditFile = (): string => {
    const cfg = YAML.parse(text) as { audit?: { path?: string; sink?: string } };
    return path.resolve(dir, cfg.audit?.path ?? 'data/audit.jsonl');
  };
  const audit = (): AuditLine[] => {
    let body = '';
    try {
      body = fs.readFileSync(auditFile(), 'utf8');
    } catch {
      return [];
    }
    const out: AuditLine[] = [];
    for (const l of body.split('\n')) {
      if (l === '') continue;
      try {
        out.push(JSON.parse(l) as AuditLine);
      } catch {
        // a line being written right now
      }
    }
    return out;
  };

  return {
    dir,
    pid: child.pid as number,
    port(listener) {
      const p = ports.get(listener);
      if (p === undefined) throw new Error(`no listener named ${listener}: ${[...ports.keys()].join(', ')}`);
      return p;
    },
    logs: () => lines,
    waitForLog,
    audit,
    async waitForAudit(match, ms = 10_000) {
      const end = Date.now() + ms;
      for (;;) {
        const found = audit().find(match);
        if (found !== undefined || Date.now() > end) return found;
        await delay(50);
      }
    },
    async stop() {
      if (!gone) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 8000);
        await exited;
        clearTimeout(timer);
      }
      if (owned) fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
