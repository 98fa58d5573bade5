/**
 * `portcullis audit verify | tail | stats | keygen`: for operators. Reads the files the broker
 * wrote; never writes to them.
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { anchorNames, readAnchorFiles, type AnchorEntry } from '../audit/anchor-file.ts';
import { AuditKeyError, loadVerifyKey } from '../audit/checkpoint.ts';
import { chainFiles } from '../audit/file-output.ts';
import { workerCount } from '../config/cluster-schema.ts';
import { perWorker } from '../cluster/workers.ts';
import { matchesFilter, StatsCollector, type RecordFilter } from '../audit/query.ts';
import { escapeUnsafe, parseRecord, type AuditRecord } from '../audit/record.ts';
import { verifyAuditFiles, type VerifyReport } from '../audit/verify.ts';
import { unsignedGapLimitMs } from '../audit/verify-signatures.ts';
import { loadConfigFile } from '../config/load.ts';
import { ConfigError, type Config } from '../config/schema.ts';
import { ensureDir } from '../util/fs.ts';

const DEFAULT_PATH = 'data/audit.jsonl';

interface Out {
  out(text: string): void;
  err(text: string): void;
}
const stdio: Out = { out: (t) => process.stdout.write(t), err: (t) => process.stderr.write(t) };

/** The live audit file: --file, else the configuration's audit.path, else the default. */
function auditPath(opts: { file?: string; config?: string }): string {
  if (opts.file !== undefined) return opts.file;
  if (opts.config !== undefined) return loadConfigFile(opts.config).audit.path;
  return DEFAULT_PATH;
}

export interface VerifyCommandOptions {
  key?: string;
  requireCheckpoint?: boolean;
  config?: string;
  json?: boolean;
  /** Seconds, as given on the command line. */
  maxUnsignedGap?: string;
  anchors?: string[];
  anchorName?: string;
}

export async function verifyCommand(files: string[], opts: VerifyCommandOptions, io: Out = stdio): Promise<number> {
  const usage = (text: string) => {
    io.err(`portcullis audit verify: ${text}\n`);
    return 2;
  };
  let key: KeyObject | undefined;
  if (opts.key !== undefined) {
    try {
      key = loadVerifyKey(opts.key);
    } catch (err) {
      return usage(`--key: ${(err as Error).message}`);
    }
  } else if (opts.requireCheckpoint) {
    return usage('--require-checkpoint needs --key');
  }
  const config = opts.config !== undefined ? loadConfigFile(opts.config) : undefined;
  // The cadence: --max-unsigned-gap, else the configured interval (plus the grace), else what each checkpoint signed.
  let maxUnsignedGapMs: number | undefined;
  if (opts.maxUnsignedGap !== undefined) {
    const seconds = Number(opts.maxUnsignedGap);
    if (!Number.isFinite(seconds) || seconds <= 0) return usage(`--max-unsigned-gap must be a number of seconds above 0, got ${opts.maxUnsignedGap}`);
    if (key === undefined) return usage('--max-unsigned-gap needs --key');
    maxUnsignedGapMs = seconds * 1000;
  } else if (config !== undefined && key !== undefined) {
    maxUnsignedGapMs = unsignedGapLimitMs(config.audit.checkpoint.intervalSeconds);
  }
  let anchors: AnchorEntry[] | undefined;
  if (opts.anchors !== undefined && opts.anchors.length > 0) {
    let read: { anchors: AnchorEntry[]; bad: number };
    try {
      read = readAnchorFiles(opts.anchors);
    } catch (err) {
      return usage(`--anchors: ${(err as Error).message}`);
    }
    if (read.bad > 0) io.err(`portcullis audit verify: ${read.bad} line(s) of the anchor file(s) mention an anchor but hold no valid one; they are ignored\n`);
    const names = anchorNames(read.anchors);
    const name = opts.anchorName ?? config?.audit.anchor.name ?? (names.size === 1 ? ([...names.keys()][0] as string) : undefined);
    if (names.size === 0) return usage(`no audit anchors found in ${opts.anchors.join(', ')}`);
    if (name === undefined) return usage(`the anchor file(s) hold anchors of several logs; choose one with --anchor-name: ${[...names.keys()].map((n) => JSON.stringify(n)).join(', ')}`);
    if (!names.has(name)) return usage(`no anchors named ${JSON.stringify(name)}; the file(s) hold ${[...names.keys()].map((n) => JSON.stringify(n)).join(', ')}`);
    anchors = read.anchors.filter((a) => a.name === name);
  }
  const list = files.length > 0 ? files : defaultVerifyFiles(config);
  if (list.length === 0) return usage('no audit files given or found');
  const chains = splitChains(list);
  if (chains.length > 1) {
    // Several chains (one per worker or node, `audit-w<n>.jsonl`): each is verified on its own.
    if (anchors !== undefined) return usage('--anchors checks one chain: give the files of one chain at a time');
    let failed = 0;
    const out: { chain: string; report: VerifyReport }[] = [];
    for (const chain of chains) {
      const report = await verifyAuditFiles(chain.files, {
        ...(key ? { key } : {}),
        ...(opts.requireCheckpoint ? { requireCheckpoint: true } : {}),
        ...(maxUnsignedGapMs !== undefined ? { maxUnsignedGapMs } : {}),
      });
      out.push({ chain: chain.name, report });
      if (!report.ok) failed++;
      if (opts.json) continue;
      if (report.ok) io.out(`${chain.name}: ${describeReport(report, key !== undefined).join('\n  ')}\n`);
      else io.err(`${chain.name}: FAILED: ${report.problem?.message}\n  ${report.records} records verified before the problem\n`);
    }
    if (opts.json) io.out(JSON.stringify({ ok: failed === 0, chains: out }) + '\n');
    else io.out(`${chains.length - failed} of ${chains.length} chains intact\n`);
    return failed === 0 ? 0 : 1;
  }
  const report = await verifyAuditFiles(list, {
    ...(key ? { key } : {}),
    ...(opts.requireCheckpoint ? { requireCheckpoint: true } : {}),
    ...(maxUnsignedGapMs !== undefined ? { maxUnsignedGapMs } : {}),
    ...(anchors !== undefined ? { anchors } : {}),
  });
  if (opts.json) io.out(JSON.stringify(report) + '\n');
  if (!report.ok) {
    if (!opts.json) io.err(`FAILED: ${report.problem?.message}\n  ${report.records} records verified before the problem\n`);
    return 1;
  }
  if (!opts.json) io.out(describeReport(report, key !== undefined).join('\n') + '\n');
  return 0;
}

const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
function ago(ms: number): string {
  if (ms < 120_000) return `${Math.round(ms / 1000)} s`;
  if (ms < 7_200_000) return `${Math.round(ms / 60_000)} min`;
  if (ms < 172_800_000) return `${(ms / 3_600_000).toFixed(1)} h`;
  return `${(ms / 86_400_000).toFixed(1)} days`;
}

/** What an intact report proves, and what it does not, in a few lines. */
function describeReport(report: VerifyReport, keyed: boolean): string[] {
  const lines = [`OK: ${report.records} records in ${report.files} file(s), seq ${report.last ? `..${report.last.seq}` : '-'}, chain intact`];
  if (report.startsAfter) lines.push(`  the chain continues from seq ${report.startsAfter.seq} (hash ${report.startsAfter.hash.slice(0, 16)}…), which was not among the files given`);
  if (keyed) {
    if (report.checkpoints.verified > 0) lines.push(`  ${report.checkpoints.verified} signed checkpoint(s) verified; seq ${report.lastSignedSeq} and every record before it are covered by a signature`);
    else lines.push('  no signed checkpoint: no record is covered by a signature');
    for (const r of report.restarts ?? []) {
      lines.push(`  records ${r.fromSeq}..${r.toSeq} (${r.records}) were written before a restart without a last checkpoint (a crash?) and signed only after it, ${secs(r.downtimeMs)} later: compare them with a copy shipped off the host`);
    }
    const tail = report.tail;
    if (tail !== undefined) {
      lines.push(
        `  unsigned tail: ${tail.records} record(s) after the last signed checkpoint (seq ${tail.fromSeq}..${tail.toSeq}), spanning ${secs(tail.spanMs)}, the first written ${ago(tail.ageMs)} ago; within the cadence (${secs(tail.limitMs)}), but no signature covers them: only anchors or a shipped copy vouch for them`,
      );
    }
  } else {
    if (report.checkpoints.unverified > 0) lines.push(`  ${report.checkpoints.unverified} checkpoint(s) not checked: pass --key to verify signatures`);
    lines.push('  without --key the hash chain only shows the file is consistent: whoever can write it can recompute every hash');
  }
  const a = report.anchors;
  if (a !== undefined) {
    lines.push(`  anchors: ${a.matched} of ${a.total} matched${a.lastMatchedSeq !== undefined ? `; seq ${a.lastMatchedSeq} and every record before it are as they were when its digest was sent out` : ''}`);
    if (a.before > 0) lines.push(`  ${a.before} anchor(s) are for records before the first one given (rotated away or not among the files)`);
    if (a.unanchoredCheckpoints > 0) lines.push(`  ${a.unanchoredCheckpoints} checkpoint(s) after the first anchored one have no anchor (a delivery failed, or anchoring was off): see audit/anchor-failed records`);
  }
  if (report.last?.time) lines.push(`  last record: seq ${report.last.seq} at ${report.last.time}`);
  return lines;
}

function format(rec: AuditRecord, line: string, asText: boolean): string {
  if (!asText) return line;
  // Values go through JSON.stringify so control characters can never reach the terminal raw.
  const v = (x: unknown) => (x === undefined ? '-' : typeof x === 'string' ? escapeUnsafe(JSON.stringify(x)) : String(x));
  const code = rec.reasonCode === undefined ? '-' : `0x${rec.reasonCode.toString(16).padStart(2, '0')}`;
  return `${rec.time} #${rec.seq} ${rec.decision.toUpperCase()} ${rec.event}${rec.action ? `/${rec.action}` : ''} ${code} client=${v(rec.clientId)} user=${v(rec.username)} topic=${v(rec.topic)} by=${v(rec.decidedBy)}${rec.rule ? ` rule=${rec.rule}` : ''}${rec.policyVersion ? ` version=${rec.policyVersion}` : ''} reason=${v(rec.reason)}`;
}

export interface TailOptions extends RecordFilter {
  file?: string;
  config?: string;
  lines?: string;
  follow?: boolean;
  text?: boolean;
  pollMs?: number;
}

/** Prints the last N matching records; with --follow keeps printing new ones, across rotation, until stopped. */
export async function tailCommand(opts: TailOptions, io: Out = stdio, stop?: AbortSignal): Promise<number> {
  const file = auditPath(opts);
  const n = opts.lines === undefined ? 10 : Number(opts.lines);
  if (!Number.isInteger(n) || n < 0) {
    io.err(`portcullis audit tail: --lines must be a whole number, got ${opts.lines}\n`);
    return 2;
  }
  const filter: RecordFilter = {
    ...(opts.denyOnly ? { denyOnly: true } : {}),
    ...(opts.user !== undefined ? { user: opts.user } : {}),
    ...(opts.client !== undefined ? { client: opts.client } : {}),
    ...(opts.topic !== undefined ? { topic: opts.topic } : {}),
    ...(opts.event !== undefined ? { event: opts.event } : {}),
  };
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if (!opts.follow || (err as NodeJS.ErrnoException).code !== 'ENOENT') {
      io.err(`portcullis audit tail: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})\n`);
      return 1;
    }
    text = '';
  }
  const emit = (line: string, sink: string[]) => {
    if (line.length === 0) return;
    const rec = parseRecord(line);
    if (rec === null) {
      io.err(`portcullis audit tail: skipping a line that is not an audit record: ${JSON.stringify(line.slice(0, 80))}\n`);
      return;
    }
    if (matchesFilter(rec, filter)) sink.push(format(rec, line, opts.text === true));
  };
  const complete = text.endsWith('\n') ? text : text.slice(0, text.lastIndexOf('\n') + 1);
  const matched: string[] = [];
  for (const line of complete.split('\n')) emit(line, matched);
  const last = n === 0 ? [] : matched.slice(-n);
  if (last.length > 0) io.out(last.join('\n') + '\n');
  if (!opts.follow) return 0;
  io.err(`following ${file} (stop with Ctrl-C)\n`);

  let offset = Buffer.byteLength(complete);
  let ino = statIno(file);
  let partial = '';
  const poll = opts.pollMs ?? 250;
  while (stop?.aborted !== true) {
    await new Promise((r) => setTimeout(r, poll));
    let st: fs.Stats;
    try {
      st = fs.statSync(file);
    } catch {
      continue; // between rename and re-create during rotation
    }
    if (st.ino !== ino || st.size < offset) {
      // Rotated or truncated: start reading the new file from its beginning.
      ino = st.ino;
      offset = 0;
      partial = '';
    }
    if (st.size === offset) continue;
    const fd = fs.openSync(file, 'r');
    const buf = Buffer.alloc(st.size - offset);
    try {
      fs.readSync(fd, buf, 0, buf.length, offset);
    } finally {
      fs.closeSync(fd);
    }
    offset = st.size;
    const chunk = partial + buf.toString('utf8');
    const cut = chunk.lastIndexOf('\n');
    partial = chunk.slice(cut + 1);
    const out: string[] = [];
    for (const line of chunk.slice(0, cut + 1).split('\n')) emit(line, out);
    if (out.length > 0) io.out(out.join('\n') + '\n');
  }
  return 0;
}

function statIno(file: string): number {
  try {
    return fs.statSync(file).ino;
  } catch {
    return -1;
  }
}

export function statsCommand(files: string[], opts: { config?: string; file?: string; json?: boolean; top?: string }, io: Out = stdio): number {
  const list = files.length > 0 ? files : chainFiles(auditPath(opts));
  if (list.length === 0) {
    io.err('portcullis audit stats: no audit files given or found\n');
    return 2;
  }
  const stats = new StatsCollector();
  for (const f of list) {
    let text: string;
    try {
      text = fs.readFileSync(f, 'utf8');
    } catch (err) {
      io.err(`portcullis audit stats: cannot read ${f} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})\n`);
      return 1;
    }
    for (const line of text.split('\n')) stats.addLine(line);
  }
  const r = stats.result(opts.top === undefined ? 5 : Math.max(1, Number(opts.top) || 5));
  if (opts.json) {
    io.out(JSON.stringify(r) + '\n');
    return 0;
  }
  const lines = [
    `records: ${r.records} in ${list.length} file(s)${r.malformed > 0 ? `, ${r.malformed} malformed line(s) (run audit verify)` : ''}`,
    `span: ${r.firstTime ?? '-'} .. ${r.lastTime ?? '-'} (seq ${r.firstSeq ?? '-'}..${r.lastSeq ?? '-'})`,
    'event          allow      deny',
    ...Object.entries(r.byEvent)
      .sort((a, b) => (a[0] < b[0] ? -1 : 1))
      .map(([e, c]) => `${e.padEnd(12)} ${String(c.allow).padStart(7)} ${String(c.deny).padStart(9)}`),
    `deny reason codes: ${Object.entries(r.denyReasons).map(([k, v]) => `${k}=${v}`).join(' ') || '-'}`,
    `top denied clients: ${r.topDeniedClients.map(([k, v]) => `${escapeUnsafe(JSON.stringify(k))}=${v}`).join(' ') || '-'}`,
    `top denied users: ${r.topDeniedUsers.map(([k, v]) => `${escapeUnsafe(JSON.stringify(k))}=${v}`).join(' ') || '-'}`,
    `top denied topics: ${r.topDeniedTopics.map(([k, v]) => `${escapeUnsafe(JSON.stringify(k))}=${v}`).join(' ') || '-'}`,
    `denials counted in summaries: ${r.summarized}   dropped records: ${r.dropped}   sink failures recovered: ${r.sinkFailures}   checkpoints: ${r.checkpoints}   rotations: ${r.rotations}`,
  ];
  io.out(lines.join('\n') + '\n');
  return 0;
}

/** Writes a new Ed25519 key pair for signed checkpoints: the private key with mode 0600. */
export function keygenCommand(opts: { out: string; name?: string; force?: boolean }, io: Out = stdio): number {
  const name = opts.name ?? 'audit-signing';
  const priv = path.join(opts.out, `${name}.key`);
  const pub = path.join(opts.out, `${name}.pub`);
  if (!opts.force && (fs.existsSync(priv) || fs.existsSync(pub))) {
    io.err(`portcullis audit keygen: ${priv} or ${pub} exists; use --force to replace\n`);
    return 1;
  }
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  ensureDir(opts.out);
  fs.writeFileSync(priv, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  fs.writeFileSync(pub, publicKey.export({ type: 'spki', format: 'pem' }));
  io.out(`wrote ${priv} (keep it on the broker host, set audit.checkpoint.keyFile) and ${pub} (give it to whoever verifies)\n`);
  return 0;
}

function run(code: number | Promise<number>): Promise<void> {
  return Promise.resolve(code).then(
    (c) => {
      process.exitCode = c;
    },
    (err: unknown) => {
      const known = err instanceof ConfigError || err instanceof AuditKeyError;
      process.stderr.write(`portcullis audit: ${known ? (err as Error).message : String((err as Error).stack ?? err)}\n`);
      process.exitCode = 2;
    },
  );
}

export function registerAuditCommand(program: Command): void {
  const audit = program.command('audit').description('verify, follow and summarise the audit log');
  audit
    .command('verify')
    .description('check the hash chain (and checkpoint signatures with --key) of audit files given in chain order; exits 1 at the first broken or missing record')
    .argument('[files...]', 'audit files, oldest first (default: the configured log and its rotated files)')
    .option('-k, --key <file>', 'Ed25519 public key (PEM): every checkpoint must carry a valid signature over the records before it, at the configured cadence')
    .option('--require-checkpoint', 'fail unless at least one checkpoint signature verifies')
    .option('--max-unsigned-gap <seconds>', 'with --key: the longest a record may go without a signature (default: audit.checkpoint.intervalSeconds from --config, else the interval each checkpoint signed, plus a quarter of it, at least 1 s)')
    .option('--anchors <file...>', 'files holding checkpoint anchors (the operational log, a syslog file, what an HTTP endpoint received): records must match them, and none may be missing')
    .option('--anchor-name <name>', 'which log the anchors are for, when the files hold several (default: audit.anchor.name from --config)')
    .option('-c, --config <file>', 'take audit.path, the checkpoint interval and the anchor name from this configuration')
    .option('--json', 'print the report as JSON')
    .action((files: string[], opts: VerifyCommandOptions) => run(verifyCommand(files, opts)));
  audit
    .command('tail')
    .description('print the last records of the live audit file, optionally filtered; --follow keeps printing')
    .option('-f, --follow', 'keep printing new records (follows rotation)')
    .option('-n, --lines <n>', 'how many past records to print', '10')
    .option('--deny-only', 'only denials')
    .option('--user <username>', 'only records of this username')
    .option('--client <clientId>', 'only records of this client id')
    .option('--topic <filter>', 'only records whose topic matches this MQTT filter')
    .option('--event <event>', 'only this event (connect, publish, subscribe, ...)')
    .option('--text', 'one readable line per record instead of JSON')
    .option('--file <file>', 'the audit file (default: audit.path from --config, else data/audit.jsonl)')
    .option('-c, --config <file>', 'take audit.path from this configuration')
    .action((opts: TailOptions) => run(tailCommand(opts)));
  audit
    .command('stats')
    .description('summarise audit files: decisions per event (a summary record counts for the denials it summarises), denial reasons, top denied clients, users and topics, dropped records')
    .argument('[files...]', 'audit files (default: the configured log and its rotated files)')
    .option('--json', 'print JSON')
    .option('--top <n>', 'how many top entries', '5')
    .option('--file <file>', 'the live audit file')
    .option('-c, --config <file>', 'take audit.path from this configuration')
    .action((files: string[], opts: { config?: string; file?: string; json?: boolean; top?: string }) => run(statsCommand(files, opts)));
  audit
    .command('keygen')
    .description('create an Ed25519 key pair for signed checkpoints')
    .requiredOption('-o, --out <dir>', 'directory for <name>.key and <name>.pub')
    .option('--name <name>', 'file name stem', 'audit-signing')
    .option('--force', 'replace existing files')
    .action((opts: { out: string; name?: string; force?: boolean }) => run(keygenCommand(opts)));
}

/**
 * The files `audit verify` reads without file arguments: the configured log and its rotated
 * files, and with `workers` each worker's (`audit-w<n>.jsonl`), one chain each.
 */
function defaultVerifyFiles(config: Config | undefined): string[] {
  const file = config !== undefined ? config.audit.path : DEFAULT_PATH;
  const out = chainFiles(file);
  const workers = config === undefined ? 1 : workerCount(config.workers);
  for (let i = 1; i <= workers && workers > 1; i++) out.push(...chainFiles(perWorker(file, i)));
  return out;
}

/**
 * Groups audit files into chains, in the order given: a rotated file (`audit.<UTC time>.jsonl`)
 * belongs to the chain of `audit.jsonl`; `audit-w2.jsonl` is a chain of its own.
 */
export function splitChains(files: string[]): { name: string; files: string[] }[] {
  const chains = new Map<string, string[]>();
  for (const f of files) {
    const dir = path.dirname(f);
    const base = path.basename(f);
    const ext = path.extname(base);
    const stem = (ext === '' ? base : base.slice(0, -ext.length)).replace(/\.\d{8}T\d{9}Z(-\d+)?$/, '');
    const name = path.join(dir, `${stem}${ext}`);
    const list = chains.get(name) ?? [];
    list.push(f);
    chains.set(name, list);
  }
  return [...chains].map(([name, list]) => ({ name, files: list }));
}
