/**
 * `portcullis config check FILE`: validates a configuration without starting anything. It reads
 * every file the broker would read at start (TLS material, CRLs, PSK, password and key files,
 * policies, the audit signing key, the store key, the ban file, the operations listener's token
 * file, admin policy and TLS files) the way the broker reads it, and
 * it finds what would only fail at bind time: two listeners on one address. Nothing is bound,
 * written, fetched or loaded as code. Exit codes as `policy check`: 0 ok, 1 problems, 2 usage.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { type Command, CommanderError } from 'commander';
import { readBanFile } from '../admission/ban-file.ts';
import { AnchorPublisher } from '../audit/anchor.ts';
import { loadSigningKey } from '../audit/checkpoint.ts';
import { loadKeyFiles, KeyFileError } from '../auth/jwt/keys.ts';
import { readPasswordFile } from '../auth/password/file.ts';
import { CasbinAuthorizer } from '../authz/casbin/authorizer.ts';
import { loadPolicySet } from '../authz/casbin/policy-file.ts';
import { isLoopbackHost } from '../config/auth-schema.ts';
import { loadConfigFile } from '../config/load.ts';
import { type Config, ConfigError, type ListenerConfig } from '../config/schema.ts';
import { DEFAULT_CIPHERS, DEFAULT_PSK_CIPHERS } from '../config/tls-schema.ts';
import { prepareOps } from '../http/setup.ts';
import type { Logger } from '../log.ts';
import { guardFolder } from '../store/lmdb-files.ts';
import { loadKeyFile } from '../store/keyring.ts';
import { loadCrls, loadMaterial, loadPskFile, TlsFileError } from '../transport/tls-material.ts';
import { casbinAuthorizers } from './policy-config.ts';

/** Something that would stop the start, or make the broker fail at it: the key, and what is wrong. */
export interface ConfigProblem {
  key: string;
  message: string;
}

export interface ConfigReport {
  config?: Config;
  problems: ConfigProblem[];
  /** What would start but probably not as meant (a listener that refuses everyone, ...). */
  warnings: string[];
  /** What was read and found good, for the report. */
  checked: string[];
}

const message = (err: unknown) => (err as Error).message;
const errno = (err: unknown) => (err as NodeJS.ErrnoException).code ?? message(err);

/** Checks a configuration file as `portcullis start --config FILE` would read it, from `process.cwd()`. */
export async function checkConfigFile(file: string): Promise<ConfigReport> {
  let config: Config;
  try {
    config = loadConfigFile(file);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return { problems: err.issues.length > 0 ? err.issues : [{ key: '', message: err.message }], warnings: [], checked: [] };
  }
  const report: ConfigReport = { config, problems: [], warnings: [], checked: [] };
  checkAddresses(config, report);
  config.listeners.forEach((l, i) => checkListener(l, i, report));
  await checkAuthorizers(config, report);
  checkAudit(config, report);
  checkStore(config, report);
  await checkHttp(config, report);
  if (config.admission.bans.file !== undefined) {
    try {
      const bans = readBanFile(config.admission.bans.file, true);
      report.checked.push(`${config.admission.bans.file} (${fs.existsSync(config.admission.bans.file) ? `${bans.length} bans` : 'not there yet: no bans'})`);
    } catch (err) {
      report.problems.push({ key: 'admission.bans.file', message: message(err) });
    }
  }
  return report;
}

// ── listeners ─────────────────────────────────────────────────────────────────

/** The addresses a host stands for, as far as binding goes: a wildcard covers its family (`::` both). */
function bindsOver(a: string, b: string): boolean {
  const norm = (h: string) => {
    const x = h.replace(/^\[|\]$/g, '').toLowerCase();
    return x === '::0' || x === '0:0:0:0:0:0:0:0' ? '::' : x;
  };
  const x = norm(a);
  const y = norm(b);
  if (x === y || x === '::' || y === '::') return true;
  const family = (h: string) => (net.isIPv4(h) ? 4 : net.isIPv6(h) ? 6 : 0);
  if (x === '0.0.0.0') return family(y) !== 6;
  if (y === '0.0.0.0') return family(x) !== 6;
  const local = (h: string) => (h === 'localhost' ? ['127.0.0.1', '::1'] : [h]);
  return local(x).some((p) => local(y).includes(p));
}

const address = (l: ListenerConfig) => `${l.host.includes(':') ? `[${l.host}]` : l.host}:${l.port}`;

/** Two listeners on one address pass the schema, then fail with EADDRINUSE, which reads as if another program held the port. */
function checkAddresses(config: Config, report: ConfigReport): void {
  config.listeners.forEach((l, j) => {
    if (l.port === 0) return;
    const i = config.listeners.findIndex((o, k) => k < j && o.port === l.port && bindsOver(o.host, l.host));
    if (i < 0) return;
    const other = config.listeners[i] as ListenerConfig;
    report.problems.push({
      key: `listeners[${j}].port`,
      message: `${address(l)} clashes with listeners[${i}] ('${other.name}', ${address(other)}): two listeners cannot bind one address (the start would fail with EADDRINUSE)`,
    });
  });
}

function readable(file: string): string | undefined {
  try {
    fs.accessSync(file, fs.constants.R_OK);
    return fs.statSync(file).isFile() ? undefined : `${file} is not a file`;
  } catch (err) {
    return `cannot read ${file}: ${errno(err)}`;
  }
}

function checkListener(l: ListenerConfig, i: number, report: ConfigReport): void {
  const at = `listeners[${i}]`;
  const auth = l.auth.map((p) => p.provider);
  if (auth.length === 0) report.warnings.push(`${at} ('${l.name}'): no authentication provider: every client will be refused`);
  if (auth.includes('anonymous') && !isLoopbackHost(l.host)) report.warnings.push(`${at} ('${l.name}'): anonymous access on ${l.host}, beyond loopback`);
  if (l.type === 'tls' || l.type === 'wss') {
    const base = l.ciphers ?? DEFAULT_CIPHERS;
    const ciphers = l.psk !== undefined && l.ciphers === undefined ? `${base}:${DEFAULT_PSK_CIPHERS}` : base;
    // Every file that cannot be read at all, each with its key; then what the readable ones hold.
    const files: [string, string][] = [['cert', l.cert], ['key', l.key], ...(l.ca !== undefined ? [['ca', l.ca] as [string, string]] : []), ...(l.crl?.files ?? []).map((f, k): [string, string] => [`crl.files[${k}]`, f])];
    const unreadable = files.filter(([option, file]) => {
      const problem = readable(file);
      if (problem !== undefined) report.problems.push({ key: `${at}.${option}`, message: problem });
      return problem !== undefined;
    });
    if (unreadable.length === 0) {
      try {
        const material = loadMaterial({ cert: l.cert, key: l.key, ca: l.ca }, { minVersion: l.minVersion, ciphers });
        report.checked.push(`${at} ${l.cert}, ${l.key}${l.ca !== undefined ? `, ${l.ca} (${material.caCerts.length} CA certificates)` : ''}`);
        if (l.crl !== undefined) {
          const crls = loadCrls(l.crl.files, material.caCerts);
          report.checked.push(`${at} ${l.crl.files.join(', ')} (${crls.size} CRLs)`);
        }
      } catch (err) {
        report.problems.push(err instanceof TlsFileError ? { key: `${at}.${err.option}`, message: err.message } : { key: at, message: message(err) });
      }
    }
    if (l.psk !== undefined) {
      try {
        report.checked.push(`${at} ${l.psk.file} (${loadPskFile(l.psk.file).size} PSK identities)`);
      } catch (err) {
        report.problems.push({ key: `${at}.psk.file`, message: message(err) });
      }
    }
  }
  l.auth.forEach((p, j) => {
    const key = `${at}.auth[${j}]`;
    if (p.provider === 'password') {
      try {
        report.checked.push(`${key} ${p.file} (${readPasswordFile(p.file, p.argon2).size} users)`);
      } catch (err) {
        report.problems.push({ key: `${key}.file`, message: message(err) });
      }
    } else if (p.provider === 'jwt') {
      try {
        const keys = loadKeyFiles(p.keyFiles);
        if (p.keyFiles.length > 0) report.checked.push(`${key} ${p.keyFiles.join(', ')} (${keys.length} keys)`);
      } catch (err) {
        report.problems.push({ key: err instanceof KeyFileError ? `${key}.keyFiles[${err.index}]` : `${key}.keyFiles`, message: message(err) });
      }
      if (p.jwks !== undefined) report.warnings.push(`${key}: the JWKS URL ${p.jwks.url} is not fetched here; the broker fetches it at start`);
    } else if (p.provider === 'module') {
      const problem = readable(p.path);
      if (problem !== undefined) report.problems.push({ key: `${key}.path`, message: problem });
    }
  });
}

// ── authorizers ───────────────────────────────────────────────────────────────

async function checkAuthorizers(config: Config, report: ConfigReport): Promise<void> {
  if (config.authorizers.length === 0) report.warnings.push('authorizers: none: every publish and subscribe will be denied');
  config.authorizers.forEach((a, i) => {
    if (a.type !== 'module') return;
    const problem = readable(a.path);
    if (problem !== undefined) report.problems.push({ key: `authorizers[${i}].path`, message: problem });
  });
  for (const c of casbinAuthorizers(config)) {
    const { model, policy } = c.options;
    try {
      // The broker starts on a missing policy and denies everything: here that is a problem.
      const set = loadPolicySet(model, policy, { requirePolicy: true });
      const a = new CasbinAuthorizer(c.options);
      await a.init();
      await a.close();
      for (const w of set.warnings) report.warnings.push(`${c.key}: ${w}`);
      report.checked.push(`${c.key} ${path.relative(process.cwd(), policy) || policy} (${set.rules.length} rules, ${set.links.length} role links, version ${a.version})`);
    } catch (err) {
      const file = (err as { file?: string }).file;
      report.problems.push({ key: `${c.key}.${file !== undefined && path.resolve(file) === path.resolve(model) ? 'model' : 'policy'}`, message: message(err) });
    }
  }
}

// ── audit, store ──────────────────────────────────────────────────────────────

/** A file the broker will create or append to: it, or the nearest folder above it that exists, must be writable. */
function writable(file: string): string | undefined {
  let at = path.resolve(file);
  if (fs.existsSync(at)) {
    if (!fs.statSync(at).isFile()) return `${file} is not a file`;
  } else {
    do at = path.dirname(at);
    while (!fs.existsSync(at) && at !== path.dirname(at));
    if (!fs.statSync(at).isDirectory()) return `cannot create ${file}: ${at} is not a folder`;
  }
  try {
    fs.accessSync(at, fs.constants.W_OK);
    return undefined;
  } catch (err) {
    return `cannot write ${at === path.resolve(file) ? file : `in ${at}`}: ${errno(err)}`;
  }
}

function checkAudit(config: Config, report: ConfigReport): void {
  const audit = config.audit;
  if (audit.sink === 'none') {
    report.warnings.push('audit.sink: none: access decisions are not recorded');
    return;
  }
  if (audit.sink === 'file') {
    const problem = writable(audit.path);
    if (problem !== undefined) report.problems.push({ key: 'audit.path', message: problem });
  }
  if (audit.checkpoint.keyFile !== undefined) {
    try {
      loadSigningKey(audit.checkpoint.keyFile);
      report.checked.push(`audit.checkpoint.keyFile ${audit.checkpoint.keyFile} (Ed25519)`);
    } catch (err) {
      report.problems.push({ key: 'audit.checkpoint.keyFile', message: message(err) });
    }
  } else if (AnchorPublisher.enabled(audit.anchor)) {
    report.problems.push({ key: 'audit.anchor', message: 'anchors are digests of signed checkpoints: set audit.checkpoint.keyFile too' });
  }
}

function checkStore(config: Config, report: ConfigReport): void {
  const store = config.store;
  if (store.type !== 'lmdb') return;
  if (fs.existsSync(store.path)) {
    try {
      for (const w of guardFolder(store.path, false)) report.warnings.push(`store.path: ${w}`);
    } catch (err) {
      report.problems.push({ key: 'store.path', message: message(err) });
    }
  } else {
    const problem = writable(store.path);
    if (problem !== undefined) report.problems.push({ key: 'store.path', message: problem });
  }
  if (store.encryption !== undefined) {
    try {
      report.checked.push(`store.encryption.keyFile ${store.encryption.keyFile} (${loadKeyFile(store.encryption.keyFile).length} keys)`);
    } catch (err) {
      report.problems.push({ key: 'store.encryption.keyFile', message: message(err) });
    }
  }
}

// ── the operations listener ───────────────────────────────────────────────────

/** The operations listener's address, its token file, admin policy and TLS files, read as the broker reads them. */
async function checkHttp(config: Config, report: ConfigReport): Promise<void> {
  const h = config.http;
  if (h === undefined) return;
  const at = `${h.host.includes(':') ? `[${h.host}]` : h.host}:${h.port}`;
  const i = h.port === 0 ? -1 : config.listeners.findIndex((l) => l.port === h.port && bindsOver(l.host, h.host));
  if (i >= 0) {
    const other = config.listeners[i] as ListenerConfig;
    report.problems.push({ key: 'http.port', message: `${at} clashes with listeners[${i}] ('${other.name}', ${address(other)}): two listeners cannot bind one address (the start would fail with EADDRINUSE)` });
  }
  // What prepareOps says at start (an empty token file) is a warning here; nothing else is logged.
  const log = { warn: (_: unknown, msg: string) => report.warnings.push(`http.auth.tokens: ${msg}`), info: () => {}, error: () => {} } as unknown as Logger;
  try {
    const setup = prepareOps(h, () => {}, log);
    await setup.authz.close();
    if (setup.tokens !== undefined) report.checked.push(`http.auth.tokens ${h.auth.tokens} (${setup.tokens.size} tokens)`);
    report.checked.push(`http.auth.policy ${h.auth.policy} (version ${setup.authz.version})`);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    report.problems.push(...(err.issues.length > 0 ? err.issues : [{ key: 'http', message: err.message }]));
    return;
  }
  if (h.tls !== undefined) {
    try {
      const material = loadMaterial({ cert: h.tls.cert, key: h.tls.key, ca: h.tls.ca }, { minVersion: h.tls.minVersion, ciphers: DEFAULT_CIPHERS });
      report.checked.push(`http.tls ${h.tls.cert}, ${h.tls.key}${h.tls.ca !== undefined ? `, ${h.tls.ca} (${material.caCerts.length} CA certificates)` : ''}`);
      if (h.tls.crl !== undefined) report.checked.push(`http.tls.crl ${h.tls.crl} (${loadCrls([h.tls.crl], material.caCerts).size} CRLs)`);
    } catch (err) {
      report.problems.push(err instanceof TlsFileError ? { key: `http.tls.${err.option.startsWith('crl') ? 'crl' : err.option}`, message: err.message } : { key: 'http.tls', message: message(err) });
    }
  }
}

// ── the command ───────────────────────────────────────────────────────────────

function summary(config: Config): string[] {
  const lines = config.listeners.map((l) => `  listener ${l.name}: ${l.type} ${address(l)}, auth ${l.auth.map((p) => p.provider).join(', ') || '(none)'}`);
  lines.push(`  authorizers: ${config.authorizers.map((a) => (a.type === 'casbin' ? `casbin ${a.policy}` : a.type === 'module' ? `module ${a.path}` : a.type)).join(', ') || '(none)'}`);
  return lines;
}

export function registerConfigCommand(program: Command): void {
  const config = program.command('config').description('work with configuration files');
  // Usage errors (a missing FILE, an unknown option) exit 2, as the other checks do; problems exit 1.
  config.exitOverride((err: CommanderError) => {
    process.exit(err.exitCode === 0 ? 0 : 2);
  });
  config
    .command('check')
    .argument('<file>', 'the configuration file (YAML or JSON), with paths relative to the working directory as the broker reads them')
    .description('validate a configuration without starting anything: keys, clashing listener addresses, and every file it names (TLS, CRL, PSK, passwords, JWT keys, policies, audit and store keys, ban file, the operations listener tokens, admin policy and TLS files); exit 0 ok, 1 problems, 2 usage')
    .action(async (file: string) => {
      const report = await checkConfigFile(file);
      for (const w of report.warnings) process.stderr.write(`warning: ${w}\n`);
      if (report.problems.length > 0) {
        process.stderr.write(`portcullis config: ${file}: ${report.problems.length} problem${report.problems.length === 1 ? '' : 's'}:\n`);
        for (const p of report.problems) process.stderr.write(`  - ${p.key !== '' ? `${p.key}: ` : ''}${p.message}\n`);
        process.exitCode = 1;
        return;
      }
      process.stdout.write(`ok ${file}\n`);
      if (report.config !== undefined) process.stdout.write(summary(report.config).join('\n') + '\n');
      for (const c of report.checked) process.stdout.write(`  read ${c}\n`);
      process.exitCode = 0;
    });
}
