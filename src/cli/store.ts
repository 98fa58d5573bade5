/**
 * `portcullis store check | stats | compact | export | import | keygen`: the durable store's tools
 * (docs/persistence.md). The store folder comes from --path, else the configuration's
 * store.path (--config, else the built-in defaults: data/store); the key file from --key-file,
 * else store.encryption.keyFile.
 *
 * check, stats and export read a snapshot and work beside a running broker; compact and import
 * need it stopped (they take the store's lock).
 *
 * With `store.type: redis` in the configuration (and no --path), check and stats read the Redis
 * store instead (redis-tools.ts); the other commands are for the LMDB store only.
 */
import fs from 'node:fs';
import type { Command } from 'commander';
import { builtInDefaults } from '../config/defaults.ts';
import { loadConfigFile } from '../config/load.ts';
import { ConfigError, parseConfig } from '../config/schema.ts';
import { StoreError } from '../store/errors.ts';
import { loadKeyFile, type StoreKey } from '../store/keyring.ts';
import { addKey, checkStore, compactStore, exportStore, importStore, storeStats } from '../store/lmdb-tools.ts';
import type { RedisStoreConfig } from '../config/store-redis-schema.ts';
import { redisConnection } from '../store/redis-config.ts';
import { checkRedisStore, redisStoreStats, type RedisTarget } from '../store/redis-tools.ts';

class UsageError extends Error {}

interface TargetOptions {
  config?: string;
  path?: string;
  keyFile?: string;
  json?: boolean;
}

interface Out {
  out(text: string): void;
  err(text: string): void;
}
const stdio: Out = { out: (t) => process.stdout.write(t), err: (t) => process.stderr.write(t) };

function configuredStore(opts: TargetOptions) {
  return opts.config !== undefined ? loadConfigFile(opts.config).store : parseConfig(builtInDefaults, 'built-in defaults').store;
}

/** The Redis store the configuration names, when it names one and no --path is given. */
function redisTarget(opts: TargetOptions): RedisTarget | undefined {
  if (opts.path !== undefined) return undefined;
  const store = configuredStore(opts);
  if (store.type !== 'redis') return undefined;
  const config: RedisStoreConfig = store;
  const keyFile = opts.keyFile ?? config.encryption?.keyFile;
  return {
    connection: redisConnection(config).connection,
    prefix: config.prefix,
    ...(keyFile !== undefined ? { keys: loadKeyFile(keyFile) } : {}),
    ...(config.encryption?.acceptPlaintext === true ? { acceptPlaintext: true } : {}),
  };
}

function target(opts: TargetOptions, command = 'this command'): { dir: string; keys: StoreKey[] | undefined } {
  const store = configuredStore(opts);
  let dir = opts.path;
  if (dir === undefined) {
    if (store.type === 'redis') throw new UsageError(`${command} is a tool of the lmdb store; the configuration keeps the store in Redis (store.type: redis), which is backed up and restored with Redis's own means (docs/persistence.md, "Redis store")`);
    if (store.type !== 'lmdb') throw new UsageError(`the configuration keeps the store in memory (store.type: ${store.type}): there is nothing on disk; give --path`);
    dir = store.path;
  }
  const keyFile = opts.keyFile ?? (store.type === 'lmdb' ? store.encryption?.keyFile : undefined);
  return { dir, keys: keyFile !== undefined ? loadKeyFile(keyFile) : undefined };
}

function fail(command: string, err: unknown, io: Out): number {
  io.err(`portcullis store ${command}: ${(err as Error).message}\n`);
  if (err instanceof UsageError || err instanceof ConfigError) return 2;
  if (err instanceof StoreError && err.code === 'ERR_STORE_KEY') return 2;
  if (err instanceof StoreError) return 1;
  throw err;
}

const n = (x: number): string => x.toLocaleString('en-US');
const mb = (bytes: number): string => `${(bytes / 1024 / 1024).toFixed(1)} MB`;

async function checkRedis(t: RedisTarget, opts: TargetOptions, io: Out): Promise<number> {
  const r = await checkRedisStore(t);
  if (opts.json === true) {
    io.out(`${JSON.stringify(r)}\n`);
    return r.ok ? 0 : 1;
  }
  const c = r.counts;
  const lines = [
    r.ok ? `OK: ${r.target} (prefix ${r.prefix})` : `DAMAGED: ${r.target} (prefix ${r.prefix})`,
    ...(c !== undefined ? [`  ${n(c.sessions)} sessions, ${n(c.subscriptions)} subscriptions, ${n(c.inflight)} in flight, ${n(c.queued)} queued, ${n(c.awaitingRelease)} awaiting release, ${n(c.retained)} retained, ${n(c.wills)} wills`] : []),
    ...r.problems.map((p) => `  - ${p.where}: ${p.problem}`),
    ...r.notes.map((note) => `  note: ${note}`),
    ...(r.ok ? [] : ['  Recovery steps: docs/persistence.md, "Redis store: recovery".']),
  ];
  (r.ok ? io.out : io.err)(`${lines.join('\n')}\n`);
  return r.ok ? 0 : 1;
}

async function statsRedis(t: RedisTarget, opts: TargetOptions, io: Out): Promise<number> {
  const s = await redisStoreStats(t);
  if (opts.json === true) {
    io.out(`${JSON.stringify(s)}\n`);
    return 0;
  }
  const c = s.counts;
  const ids = Object.entries(s.keyIds).map(([id, count]) => (id === '' ? `in the clear: ${n(count)}` : `key ${id}: ${n(count)}`));
  io.out(
    [
      `store ${s.target} (prefix ${s.prefix})${s.instances.length > 0 ? `, instances marked open: ${s.instances.join(', ')}` : ''}`,
      `  ${n(c.sessions)} sessions, ${n(c.subscriptions)} subscriptions, ${n(c.inflight)} in flight, ${n(c.queued)} queued, ${n(c.awaitingRelease)} awaiting release, ${n(c.retained)} retained, ${n(c.wills)} wills`,
      `  records ${mb(s.recordBytes)}; Redis memory in use: ${Object.entries(s.usedMemory).map(([node, bytes]) => `${node} ${mb(bytes)}`).join(', ') || 'unknown'}`,
      `  records: ${ids.length > 0 ? ids.join(', ') : 'none'}`,
      ...(s.unverified > 0 ? [`  ${n(s.unverified)} encrypted records are not in the counts above: give the key file (--key-file)`] : []),
      `  expired: ${n(s.expired.sessions)} sessions, ${n(s.expired.messages)} queued messages, ${n(s.expired.retained)} retained`,
    ].join('\n') + '\n',
  );
  return 0;
}

export async function checkCommand(opts: TargetOptions, io: Out = stdio): Promise<number> {
  try {
    const redis = redisTarget(opts);
    if (redis !== undefined) return await checkRedis(redis, opts, io);
    const { dir, keys } = target(opts);
    const r = await checkStore(dir, keys);
    if (opts.json === true) {
      io.out(`${JSON.stringify(r)}\n`);
      return r.ok ? 0 : 1;
    }
    const c = r.inspection?.counts;
    const lines = [
      r.ok ? `OK: ${dir}` : `DAMAGED: ${dir}`,
      ...(c !== undefined ? [`  ${n(c.sessions)} sessions, ${n(c.subscriptions)} subscriptions, ${n(c.inflight)} in flight, ${n(c.queued)} queued, ${n(c.awaitingRelease)} awaiting release, ${n(c.retained)} retained, ${n(c.wills)} wills`] : []),
      ...r.problems.map((p) => `  - ${p.where}: ${p.problem}`),
      ...r.notes.map((note) => `  note: ${note}`),
      ...(r.ok ? [] : ['  Recovery steps: docs/persistence.md, "Recovery". Do not start the broker on this store until it is restored or salvaged.']),
    ];
    (r.ok ? io.out : io.err)(`${lines.join('\n')}\n`);
    return r.ok ? 0 : 1;
  } catch (err) {
    return fail('check', err, io);
  }
}

export async function statsCommand(opts: TargetOptions, io: Out = stdio): Promise<number> {
  try {
    const redis = redisTarget(opts);
    if (redis !== undefined) return await statsRedis(redis, opts, io);
    const { dir, keys } = target(opts);
    const s = await storeStats(dir, keys);
    if (opts.json === true) {
      io.out(`${JSON.stringify(s)}\n`);
      return 0;
    }
    const c = s.counts;
    const ids = Object.entries(s.keyIds).map(([id, count]) => (id === '' ? `in the clear: ${n(count)}` : `key ${id}: ${n(count)}`));
    io.out(
      [
        `store ${dir}${s.inUseBy !== undefined ? ` (in use by ${s.inUseBy})` : ''}`,
        `  ${n(c.sessions)} sessions, ${n(c.subscriptions)} subscriptions, ${n(c.inflight)} in flight, ${n(c.queued)} queued, ${n(c.awaitingRelease)} awaiting release, ${n(c.retained)} retained, ${n(c.wills)} wills`,
        `  on disk ${mb(s.fileBytes)}, in use ${mb(s.usedBytes)}, reclaimable by compact about ${mb(s.reclaimableBytes)}`,
        `  records: ${ids.length > 0 ? ids.join(', ') : 'none'}`,
        ...(s.unverified > 0 ? [`  ${n(s.unverified)} encrypted records are not in the counts above: give the key file (--key-file)`] : []),
        `  expired (dropped at the next start): ${n(s.expired.sessions)} sessions, ${n(s.expired.messages)} queued messages, ${n(s.expired.retained)} retained`,
      ].join('\n') + '\n',
    );
    return 0;
  } catch (err) {
    return fail('stats', err, io);
  }
}

export async function compactCommand(opts: TargetOptions, io: Out = stdio): Promise<number> {
  try {
    const { dir, keys } = target(opts, 'compact');
    const r = await compactStore(dir, keys);
    if (opts.json === true) io.out(`${JSON.stringify(r)}\n`);
    else {
      const ids = Object.entries(r.keyIds).map(([id, count]) => (id === '' ? `in the clear: ${n(count)}` : `sealed with key ${id}: ${n(count)}`));
      const p = r.purged;
      io.out(
        [
          `compacted ${dir}: ${mb(r.bytesBefore)} -> ${mb(r.bytesAfter)}, ${n(r.records)} records verified and rewritten`,
          `  ${ids.length > 0 ? ids.join(', ') : 'no records'}`,
          `  dropped: ${n(p.expiredSessions)} expired sessions, ${n(p.expiredMessages)} expired queued messages, ${n(p.expiredRetained)} expired retained, ${n(p.orphans)} orphan records`,
        ].join('\n') + '\n',
      );
    }
    return 0;
  } catch (err) {
    return fail('compact', err, io);
  }
}

export async function exportCommand(opts: TargetOptions & { out?: string; skipDamaged?: boolean }, io: Out = stdio): Promise<number> {
  let fd: number | undefined;
  try {
    const { dir, keys } = target(opts, 'export');
    if (opts.out !== undefined) {
      // Decrypted payloads: the export is as sensitive as the store.
      fd = fs.openSync(opts.out, 'w', 0o600);
      fs.fchmodSync(fd, 0o600);
    }
    const sink = fd;
    const write = sink !== undefined ? (line: string) => void fs.writeSync(sink, `${line}\n`) : (line: string) => io.out(`${line}\n`);
    const r = await exportStore(dir, keys, write, { skipDamaged: opts.skipDamaged === true });
    if (sink !== undefined) fs.fsyncSync(sink);
    io.err(`exported ${n(r.sessions)} sessions and ${n(r.retained)} retained messages from ${dir}${opts.out !== undefined ? ` to ${opts.out}` : ''}\n`);
    for (const s of r.skipped) io.err(`  skipped damaged record ${s.where}: ${s.problem}\n`);
    return 0;
  } catch (err) {
    return fail('export', err, io);
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

export async function importCommand(file: string, opts: TargetOptions, io: Out = stdio): Promise<number> {
  try {
    const { dir, keys } = target(opts, 'import');
    const r = await importStore(dir, keys, file);
    io.out(`imported ${n(r.sessions)} sessions and ${n(r.retained)} retained messages into ${dir}\n`);
    return 0;
  } catch (err) {
    return fail('import', err, io);
  }
}

export function keygenCommand(opts: { keyFile?: string; id?: string }, io: Out = stdio): number {
  try {
    if (opts.keyFile === undefined) throw new UsageError('--key-file is required');
    const id = opts.id ?? `key-${new Date().toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15)}`;
    const r = addKey(opts.keyFile, id);
    io.out(
      `${r.created ? 'created' : 'updated'} ${opts.keyFile}: key '${id}' is now first, so it encrypts from the next start${r.keys > 1 ? `; the ${r.keys - 1} older key(s) still decrypt (compact re-encrypts everything with '${id}')` : ''}\n`,
    );
    return 0;
  } catch (err) {
    return fail('keygen', err, io);
  }
}

function withTarget(cmd: Command): Command {
  return cmd
    .option('-c, --config <file>', 'configuration file whose store section to use (default: the built-in defaults, data/store)')
    .option('--path <dir>', 'the store folder (overrides the configuration)')
    .option('--key-file <file>', 'the encryption key file (overrides store.encryption.keyFile)');
}

export function registerStoreCommand(program: Command): void {
  const store = program.command('store').description('check, inspect, compact, export and import the durable store');
  const exit = (code: number) => {
    process.exitCode = code;
  };
  withTarget(store.command('check').description('verify every record and the files; exit 1 if anything is damaged (works beside a running broker)'))
    .option('--json', 'machine-readable output')
    .action(async (opts: TargetOptions) => exit(await checkCommand(opts)));
  withTarget(store.command('stats').description('counts, size on disk, space compact would reclaim, records per encryption key'))
    .option('--json', 'machine-readable output')
    .action(async (opts: TargetOptions) => exit(await statsCommand(opts)));
  withTarget(store.command('compact').description('rewrite the store: shrink the file, verify every record, re-encrypt with the first key (broker stopped)'))
    .option('--json', 'machine-readable output')
    .action(async (opts: TargetOptions) => exit(await compactCommand(opts)));
  withTarget(store.command('export').description('write the store as JSON lines, payloads decrypted (support, migration, salvage)'))
    .option('--out <file>', 'write to this file (created 0600) instead of stdout')
    .option('--skip-damaged', 'export what can be read from a damaged store and list what was left out')
    .action(async (opts: TargetOptions & { out?: string; skipDamaged?: boolean }) => exit(await exportCommand(opts)));
  withTarget(store.command('import <file>').description('load an export into an empty store (broker stopped)')).action(async (file: string, opts: TargetOptions) => exit(await importCommand(file, opts)));
  store
    .command('keygen')
    .description('add a new random encryption key as the first line of a key file (created 0600)')
    .requiredOption('--key-file <file>', 'the key file')
    .option('--id <id>', 'the key id (default: key-<date>-<time>)')
    .action((opts: { keyFile?: string; id?: string }) => exit(keygenCommand(opts)));
}
