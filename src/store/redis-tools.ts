/**
 * `portcullis store check | stats` on a Redis store. Both only read: no lease is taken, nothing is
 * purged or created, so they run beside the brokers that use the store.
 *
 * - check verifies every record (checksums or seals, where each record sits, repeats), the
 *   session index against the session keys that exist (a SCAN over the keyspace, in pages: keys
 *   of a session that is not in the index would never be loaded), and Redis's persistence
 *   settings.
 * - stats counts what the store holds, the bytes of its records, the records per key id, what is
 *   expired, and Redis's own memory figures.
 *
 * compact, export and import are LMDB tools: Redis keeps no dead space to reclaim, and a Redis
 * store is backed up with Redis's own means (docs/persistence.md).
 */
import { StoreError } from './errors.ts';
import { Keyring, type StoreKey } from './keyring.ts';
import { RedisLink, type RedisConnection, type Reply } from './redis-client.ts';
import { RedisKeys, bindMeta } from './redis-keys.ts';
import { FORMAT, FORMAT_VERSION } from './redis-base.ts';
import { Epochs, scanRedis, type RedisScan } from './redis-scan.ts';
import { decodeJson, unwrap } from './records.ts';
import type { StoreCounts } from './types.ts';

export interface RedisTarget {
  connection: RedisConnection;
  prefix: string;
  keys?: StoreKey[];
  acceptPlaintext?: boolean;
}

export interface RedisCheckReport {
  target: string;
  prefix: string;
  ok: boolean;
  problems: { where: string; problem: string }[];
  notes: string[];
  counts?: StoreCounts;
  /** Encrypted records that could not be verified without the key file. */
  unverified: number;
}

export interface RedisStatsReport {
  target: string;
  prefix: string;
  counts: StoreCounts;
  keyIds: Record<string, number>;
  /** Bytes of the records (values only; Redis adds its own overhead per key and field). */
  recordBytes: number;
  expired: { sessions: number; messages: number; retained: number };
  unverified: number;
  /** Redis's used_memory, per server (the whole server, not only this store). */
  usedMemory: Record<string, number>;
  /** Brokers whose instance marker is set: open now, or stopped without closing. */
  instances: string[];
}

async function connect(t: RedisTarget): Promise<RedisLink> {
  const link = new RedisLink(t.connection);
  await link.connect();
  return link;
}

async function readFormat(link: RedisLink, keys: RedisKeys): Promise<string | undefined> {
  const raw = await link.read('read the format record', 'hget', keys.meta, 'format');
  if (raw === null) return `no store under the prefix ${keys.prefix} (no format record in ${keys.meta})`;
  try {
    if (!Buffer.isBuffer(raw)) throw new Error('not a string');
    const f = decodeJson(unwrap('meta', bindMeta('format'), raw, null));
    if (f['format'] !== FORMAT) return `${keys.meta} field format: not a Portcullis Redis store`;
    if (typeof f['version'] !== 'number' || f['version'] > FORMAT_VERSION) return `${keys.meta} field format: version ${String(f['version'])} is newer than this tool reads`;
  } catch (err) {
    return `${keys.meta} field format: damaged (${(err as Error).message})`;
  }
  return undefined;
}

async function scan(link: RedisLink, t: RedisTarget, keys: RedisKeys): Promise<{ scan: RedisScan; unverified: number }> {
  const keyring = t.keys !== undefined && t.keys.length > 0 ? new Keyring(t.keys) : null;
  const s = await scanRedis(link, keys, new Epochs(link, keys, keyring), { keyring, acceptPlaintext: t.acceptPlaintext === true }, { skipUnreadable: keyring === null });
  const unverified = keyring === null ? [...s.keyIds].filter(([id]) => id !== '').reduce((n, [, c]) => n + c, 0) : 0;
  return { scan: s, unverified };
}

function expiredOf(s: RedisScan, now: number): RedisStatsReport['expired'] {
  const e = { sessions: 0, messages: 0, retained: 0 };
  for (const x of s.sessions) {
    const session = x.decoded.session;
    if (session === undefined) continue;
    if (session.expiresAt !== undefined && session.expiresAt <= now) e.sessions++;
    else e.messages += session.queue.filter((m) => m.expiresAt !== undefined && m.expiresAt <= now).length;
  }
  e.retained = s.retained.filter((r) => r.message.expiresAt !== undefined && r.message.expiresAt <= now).length;
  return e;
}

/** Session keys that exist but are not in the index (SCAN over every master). */
async function unindexed(link: RedisLink, keys: RedisKeys, indexed: Set<string>): Promise<string[]> {
  const out: string[] = [];
  for (const target of link.scanTargets()) {
    let cursor = '0';
    do {
      const reply = await target.scan(cursor, keys.sessionPattern, 1000);
      const parts = Array.isArray(reply) ? reply : [];
      cursor = Buffer.isBuffer(parts[0]) ? parts[0].toString('latin1') : '0';
      for (const k of Array.isArray(parts[1]) ? parts[1] : []) {
        if (!Buffer.isBuffer(k)) continue;
        const name = k.toString('latin1');
        const digest = keys.digestOf(name);
        if (digest !== undefined && !indexed.has(digest)) out.push(name);
      }
    } while (cursor !== '0');
  }
  return out;
}

async function persistenceNotes(link: RedisLink): Promise<{ problems: RedisCheckReport['problems']; notes: string[] }> {
  const problems: RedisCheckReport['problems'] = [];
  const notes: string[] = [];
  for (const r of await link.onEachMaster<Reply>('CONFIG GET', 'config', 'GET', 'append*')) {
    if (r.error !== undefined || !Array.isArray(r.reply)) {
      notes.push(`Redis ${r.node}: persistence settings unknown (CONFIG GET refused)`);
      continue;
    }
    const cfg = new Map<string, string>();
    for (let i = 0; i + 1 < r.reply.length; i += 2) cfg.set(String(r.reply[i]), String(r.reply[i + 1]));
    if (cfg.get('appendonly') !== 'yes') problems.push({ where: `Redis ${r.node}`, problem: `appendonly ${cfg.get('appendonly') ?? 'unset'}: acknowledged writes do not survive a Redis restart` });
    else if (cfg.get('appendfsync') === 'no') problems.push({ where: `Redis ${r.node}`, problem: 'appendfsync no: a power cut can lose acknowledged writes' });
    else notes.push(`Redis ${r.node}: appendonly yes, appendfsync ${cfg.get('appendfsync') ?? 'unset'}`);
  }
  for (const r of await link.onEachMaster<Reply>('CONFIG GET', 'config', 'GET', 'maxmemory-policy')) {
    const policy = Array.isArray(r.reply) && r.reply[1] !== undefined ? String(r.reply[1]) : undefined;
    if (policy !== undefined && policy !== 'noeviction') problems.push({ where: `Redis ${r.node}`, problem: `maxmemory-policy ${policy}: a full Redis deletes stored sessions and messages` });
  }
  return { problems, notes };
}

export async function checkRedisStore(t: RedisTarget, now = Date.now()): Promise<RedisCheckReport> {
  const keys = new RedisKeys(t.prefix);
  const report: RedisCheckReport = { target: t.connection.target, prefix: t.prefix, ok: false, problems: [], notes: [], unverified: 0 };
  const link = await connect(t);
  try {
    const format = await readFormat(link, keys);
    if (format !== undefined) {
      report.problems.push({ where: t.connection.target, problem: format });
      return report;
    }
    const { scan: s, unverified } = await scan(link, t, keys);
    report.counts = s.counts;
    report.unverified = unverified;
    report.problems.push(...s.problems);
    const orphans = s.sessions.filter((x) => x.decoded.orphan).length;
    if (orphans > 0) report.problems.push({ where: keys.index, problem: `${orphans} session(s) have records but no session record (dropped at the next broker start)` });
    if (s.stale.length > 0) report.notes.push(`${s.stale.length} index entries name sessions that are gone (removed at the next broker start)`);
    const lost = await unindexed(link, keys, new Set(s.sessions.map((x) => x.digest).concat(s.stale.map((x) => x.digest))));
    for (const k of lost.slice(0, 20)) report.problems.push({ where: k, problem: 'a session key that is not in the session index: no broker would load it' });
    if (lost.length > 20) report.problems.push({ where: keys.index, problem: `... and ${lost.length - 20} more session keys outside the index` });
    if (unverified > 0) report.notes.push(`${unverified} record(s) are encrypted and were not verified: give the key file (--key-file, or the configuration's store.encryption.keyFile)`);
    const e = expiredOf(s, now);
    if (e.sessions + e.messages + e.retained > 0) report.notes.push(`expired: ${e.sessions} session(s) and ${e.retained} retained message(s) (dropped at the next broker start or purge), ${e.messages} queued message(s) (dropped as they are delivered)`);
    const p = await persistenceNotes(link);
    report.problems.push(...p.problems);
    report.notes.push(...p.notes);
  } finally {
    report.ok = report.problems.length === 0;
    await link.close();
  }
  return report;
}

export async function redisStoreStats(t: RedisTarget, now = Date.now()): Promise<RedisStatsReport> {
  const keys = new RedisKeys(t.prefix);
  const link = await connect(t);
  try {
    const format = await readFormat(link, keys);
    if (format !== undefined) throw new StoreError('ERR_STORE_CORRUPT', `${t.connection.target}: ${format}`, t.connection.target);
    const { scan: s, unverified } = await scan(link, t, keys);
    const usedMemory: Record<string, number> = {};
    for (const r of await link.onEachMaster<Reply>('INFO memory', 'info', 'memory')) {
      const m = Buffer.isBuffer(r.reply) ? /used_memory:(\d+)/.exec(r.reply.toString('latin1')) : null;
      if (m !== null) usedMemory[r.node] = Number(m[1]);
    }
    const instances: string[] = [];
    for (const target of link.scanTargets()) {
      let cursor = '0';
      do {
        const reply = await target.scan(cursor, `${t.prefix.replace(/[*?[\]\\]/g, (c) => `\\${c}`)}{instance:*}`, 1000);
        const parts = Array.isArray(reply) ? reply : [];
        cursor = Buffer.isBuffer(parts[0]) ? parts[0].toString('latin1') : '0';
        for (const k of Array.isArray(parts[1]) ? parts[1] : []) if (Buffer.isBuffer(k)) instances.push(k.toString('utf8').slice(t.prefix.length).replace(/^\{instance:|\}$/g, ''));
      } while (cursor !== '0');
    }
    return { target: t.connection.target, prefix: t.prefix, counts: s.counts, keyIds: Object.fromEntries(s.keyIds), recordBytes: s.bytes, expired: expiredOf(s, now), unverified, usedMemory, instances: instances.sort() };
  } finally {
    await link.close();
  }
}
