/**
 * Reading a whole Redis store in pages: the session index with ZSCAN and each session with one
 * LOAD script, the retained hash with HSCAN. A page's sessions are read concurrently (the client
 * pipelines them), so loading 100 000 sessions costs about 100 000 commands in a few hundred
 * round trips, never one KEYS or one reply holding everything.
 *
 * Used by open (load, verify, purge), loadSessions, and `portcullis store check | stats`.
 * Damage is collected as problems, never thrown.
 */
import type { Keyring } from './keyring.ts';
import type { Reply, RedisLink } from './redis-client.ts';
import { bindMeta, isDigest, type RedisKeys } from './redis-keys.ts';
import { decodeRetained, decodeSession, epochOfRecord, epochsOf, rawSession, type DecodedSession, type Problem, type Sealing } from './redis-records.ts';
import { LOAD } from './redis-scripts.ts';
import { RecordError, decodeBytes, unwrap } from './records.ts';
import { sessionKey, type StoreCounts, type StoredMessage, type StoredSession } from './types.ts';

export const PAGE = 500;

export interface ScannedSession {
  digest: string;
  /** The index score as Redis wrote it ('inf' or ms). */
  score: string;
  decoded: DecodedSession;
}

export interface RedisScan {
  sessions: ScannedSession[];
  /** Index entries whose session has no records at all. */
  stale: { digest: string; score: string }[];
  retained: { topic: Buffer; value: Buffer; message: StoredMessage }[];
  problems: Problem[];
  counts: StoreCounts;
  /** Records sealed with each key id ('' in the clear). */
  keyIds: Map<string, number>;
  /** Bytes of the records read (keys not included). */
  bytes: number;
}

/** Knows the salts of the encryption epochs, fetching the ones it has not seen from the meta hash. */
export class Epochs {
  private readonly known = new Set<number>();

  constructor(
    private readonly link: RedisLink,
    private readonly keys: RedisKeys,
    private readonly keyring: Keyring | null,
  ) {}

  add(epoch: number, salt: Buffer): void {
    this.keyring?.addEpoch(epoch, salt);
    this.known.add(epoch);
  }

  /** Fetches the salts of `epochs` not seen yet; a missing one is left for the record's check to report. */
  async ensure(epochs: Iterable<number>): Promise<void> {
    if (this.keyring === null) return;
    const missing = [...epochs].filter((e) => !this.known.has(e));
    if (missing.length === 0) return;
    const fields = missing.map((e) => `epoch:${e}`);
    const reply = await this.link.read('read encryption epochs', 'hmget', this.keys.meta, ...fields);
    (Array.isArray(reply) ? reply : []).forEach((v, i) => {
      if (!Buffer.isBuffer(v)) return;
      const field = fields[i] as string;
      try {
        this.add(missing[i] as number, decodeBytes(unwrap('meta', bindMeta(field), v, null)));
      } catch {
        // A damaged salt: the records of that epoch fail their check and are reported.
      }
    });
  }
}

/** Reads one session by digest: one LOAD script. */
export async function readSession(link: RedisLink, keys: RedisKeys, epochs: Epochs, sealing: Sealing, digest: string, expect?: string): Promise<DecodedSession> {
  const k = keys.session(digest);
  const raw = rawSession(digest, await link.readScript('read a session', LOAD, [k.hash, k.queue]));
  await epochs.ensure(epochsOf(raw));
  return decodeSession(raw, sealing, k, expect);
}

function pairs(reply: Reply): { cursor: string; items: Buffer[] } {
  const parts = Array.isArray(reply) ? reply : [];
  const cursor = Buffer.isBuffer(parts[0]) ? parts[0].toString('latin1') : '0';
  const items = Array.isArray(parts[1]) ? parts[1].filter((x): x is Buffer => Buffer.isBuffer(x)) : [];
  return { cursor, items };
}

function countKeyId(map: Map<string, number>, value: Buffer): void {
  const id = value[0] === 0x02 && value.length > 2 ? value.subarray(2, 2 + (value[1] as number)).toString('latin1') : '';
  map.set(id, (map.get(id) ?? 0) + 1);
}

/** Reads every session of the index and every retained message. */
export async function scanRedis(link: RedisLink, keys: RedisKeys, epochs: Epochs, sealing: Sealing, options: { skipUnreadable?: boolean; pageSize?: number } = {}): Promise<RedisScan> {
  const page = options.pageSize ?? PAGE;
  const scan: RedisScan = {
    sessions: [],
    stale: [],
    retained: [],
    problems: [],
    counts: { sessions: 0, subscriptions: 0, inflight: 0, queued: 0, awaitingRelease: 0, retained: 0, wills: 0 },
    keyIds: new Map(),
    bytes: 0,
  };
  const unreadable = (p: Problem) => options.skipUnreadable === true && /key file|key id|no store key/.test(p.problem);
  const seen = new Set<string>();
  let cursor = '0';
  do {
    const r = pairs(await link.read('list the sessions (ZSCAN)', 'zscan', keys.index, cursor, 'COUNT', page));
    cursor = r.cursor;
    const batch: { digest: string; score: string }[] = [];
    for (let i = 0; i + 1 < r.items.length; i += 2) {
      const digest = (r.items[i] as Buffer).toString('latin1');
      if (seen.has(digest)) continue;
      seen.add(digest);
      if (!isDigest(digest)) {
        scan.problems.push({ where: `${keys.index} member ${JSON.stringify(digest)}`, problem: 'not a session digest' });
        continue;
      }
      batch.push({ digest, score: (r.items[i + 1] as Buffer).toString('latin1') });
    }
    const loaded = await Promise.all(
      batch.map(async ({ digest }) => {
        const k = keys.session(digest);
        return rawSession(digest, await link.readScript('read a session', LOAD, [k.hash, k.queue]));
      }),
    );
    const wanted = new Set<number>();
    for (const raw of loaded) for (const e of epochsOf(raw)) wanted.add(e);
    await epochs.ensure(wanted);
    loaded.forEach((raw, i) => {
      const { digest, score } = batch[i] as { digest: string; score: string };
      if (!raw.exists) {
        scan.stale.push({ digest, score });
        return;
      }
      for (const v of [raw.identity, raw.expiry, raw.will, ...raw.subscriptions.map((s) => s.value), ...raw.inflight.map((f) => f.value), ...raw.queue.map((q) => q.subarray(12))]) {
        if (v === undefined) continue;
        countKeyId(scan.keyIds, v);
        scan.bytes += v.length;
      }
      const decoded = decodeSession(raw, sealing, keys.session(digest));
      scan.problems.push(...decoded.problems.filter((p) => !unreadable(p)));
      // Listed even when it cannot be read (no key file): `store check` must know it is indexed.
      scan.sessions.push({ digest, score, decoded });
      const s = decoded.session;
      if (s === undefined) return;
      scan.counts.sessions++;
      scan.counts.subscriptions += s.subscriptions.length;
      scan.counts.inflight += s.inflight.length;
      scan.counts.queued += s.queue.length;
      scan.counts.awaitingRelease += s.awaitingRelease.length;
      if (s.will !== undefined) scan.counts.wills++;
    });
  } while (cursor !== '0');

  const topics = new Set<string>();
  cursor = '0';
  do {
    const r = pairs(await link.read('list the retained messages (HSCAN)', 'hscan', keys.retained, cursor, 'COUNT', page));
    cursor = r.cursor;
    const wanted = new Set<number>();
    for (let i = 1; i < r.items.length; i += 2) {
      const e = epochOfRecord(r.items[i] as Buffer);
      if (e !== undefined) wanted.add(e);
    }
    await epochs.ensure(wanted);
    for (let i = 0; i + 1 < r.items.length; i += 2) {
      const topic = r.items[i] as Buffer;
      const value = r.items[i + 1] as Buffer;
      const hex = topic.toString('hex');
      if (topics.has(hex)) continue;
      topics.add(hex);
      countKeyId(scan.keyIds, value);
      scan.bytes += value.length;
      try {
        scan.retained.push({ topic, value, message: decodeRetained(topic, value, sealing) });
        scan.counts.retained++;
      } catch (err) {
        if (!(err instanceof RecordError)) throw err;
        const p = { where: `${keys.retained} field ${JSON.stringify(topic.toString('utf8'))}`, problem: err.message };
        if (!unreadable(p)) scan.problems.push(p);
      }
    }
  } while (cursor !== '0');
  return scan;
}

/** The sessions of a scan, ready to load. */
export function sessionsOf(scan: RedisScan): StoredSession[] {
  const out: StoredSession[] = [];
  for (const s of scan.sessions) if (s.decoded.session !== undefined) out.push(s.decoded.session);
  return out;
}

/** The session key of a scanned session (for the purge's keep()). */
export function keyOf(s: StoredSession): string {
  return sessionKey(s.owner, s.clientId);
}
