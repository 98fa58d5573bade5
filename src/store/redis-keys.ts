/**
 * Key layout of the Redis store. Every key starts with the configured prefix (default
 * `portcullis:`), so several stores, and the cluster bus, can share one Redis.
 *
 * - A session lives in two keys named by the SHA-256 of its session key (owner and client id),
 *   never by the client id or owner themselves (those are only inside the session record, which
 *   an encrypted store seals):
 *     `<prefix>{<digest>}:s`  hash: the session record and everything it owns (fields below);
 *     `<prefix>{<digest>}:q`  list: its queued messages, oldest first.
 *   The `{<digest>}` hash tag puts both in one Redis Cluster slot, so every change to a session
 *   is one atomic Lua script on one node.
 * - Fields of the session hash: `r` (identity: client id, owner, protocol version), `e` (expiry),
 *   `o` (the last in-flight order number), `s:<filter>` (a subscription), `f:<packet id>` (an
 *   in-flight message, its value `<order>:<record>`), `a:<packet id>` (awaiting PUBREL), `w` (the will).
 * - `<prefix>sessions`   sorted set: every session's digest, scored by its expiry (ms; +inf while
 *   connected or never expiring). It lists the sessions for loadSessions and finds expired ones
 *   for the purge; the session hash is the truth, the score only a hint.
 * - `<prefix>{retained}` hash topic → record; `<prefix>{retained}:x` sorted set topic → expiry.
 * - `<prefix>meta` hash: the format record, the encryption epochs' salts, the next epoch number.
 * - `<prefix>{instance:<name>}` and `<prefix>{instance:<name>}:alive`: which broker uses the
 *   store, and whether it closed it cleanly (redis-instance.ts).
 *
 * Records are bound to where they belong (records.ts: a CRC-32, or the AES-GCM tag, over the
 * table and a binding key): a value copied to another session, another field or another topic
 * does not read back.
 */
import { createHash } from 'node:crypto';

/** The digest that names a session's keys: SHA-256 of its session key, as 64 hex digits. */
export function sessionDigest(sessionId: string): string {
  return createHash('sha256').update(sessionId, 'utf8').digest('hex');
}

const DIGEST = /^[0-9a-f]{64}$/;

export function isDigest(text: string): boolean {
  return DIGEST.test(text);
}

export class RedisKeys {
  readonly index: string;
  readonly retained: string;
  readonly retainedExpiry: string;
  readonly meta: string;

  constructor(readonly prefix: string) {
    this.index = `${prefix}sessions`;
    this.retained = `${prefix}{retained}`;
    this.retainedExpiry = `${prefix}{retained}:x`;
    this.meta = `${prefix}meta`;
  }

  /** The session hash and queue list of the session with this digest. */
  session(digest: string): { hash: string; queue: string } {
    return { hash: `${this.prefix}{${digest}}:s`, queue: `${this.prefix}{${digest}}:q` };
  }

  /** One Cluster slot for both, so a clean close removes them in one script. */
  instance(name: string): { open: string; alive: string } {
    return { open: `${this.prefix}{instance:${name}}`, alive: `${this.prefix}{instance:${name}}:alive` };
  }

  /** The SCAN pattern of every session key (for `store check`, which looks for keys outside the index). */
  get sessionPattern(): string {
    return `${escapeGlob(this.prefix)}{*}:[sq]`;
  }

  /** The digest in a session key name, if it is one. */
  digestOf(key: string): string | undefined {
    if (!key.startsWith(this.prefix)) return undefined;
    const m = /^\{([0-9a-f]{64})\}:[sq]$/.exec(key.slice(this.prefix.length));
    return m?.[1];
  }
}

function escapeGlob(text: string): string {
  return text.replace(/[*?[\]\\]/g, (c) => `\\${c}`);
}

// ── binding keys: what a record's checksum or tag covers besides its table ─────

const KIND = { identity: 0x72, expiry: 0x65, subscription: 0x73, inflight: 0x66, queue: 0x71, will: 0x77, retained: 0x52, meta: 0x4d } as const;

/** The binding key of a session record: its kind, the session digest, and what names it within the session. */
export function bindSession(kind: 'identity' | 'expiry' | 'subscription' | 'inflight' | 'queue' | 'will', digest: string, suffix?: Buffer): Buffer {
  const d = Buffer.from(digest, 'hex');
  return Buffer.concat(suffix === undefined ? [Buffer.of(KIND[kind]), d] : [Buffer.of(KIND[kind]), d, suffix]);
}

export function bindRetained(topic: string): Buffer {
  return Buffer.concat([Buffer.of(KIND.retained), Buffer.from(topic, 'utf8')]);
}

export function bindMeta(name: string): Buffer {
  return Buffer.concat([Buffer.of(KIND.meta), Buffer.from(name, 'latin1')]);
}

export function u16(n: number): Buffer {
  const b = Buffer.allocUnsafe(2);
  b.writeUInt16BE(n, 0);
  return b;
}

// ── fields of the session hash ──────────────────────────────────────────────

export const F = {
  identity: 'r',
  expiry: 'e',
  order: 'o',
  will: 'w',
  sub: (filter: string) => Buffer.concat([Buffer.from('s:'), Buffer.from(filter, 'utf8')]),
  inflight: (packetId: number) => `f:${packetId}`,
  awaiting: (packetId: number) => `a:${packetId}`,
};

/** A packet id as a field suffix: decimal, 1–65535, no leading zeros; undefined otherwise. */
export function packetIdOf(text: string): number | undefined {
  if (!/^[1-9][0-9]{0,4}$/.test(text)) return undefined;
  const n = Number(text);
  return n <= 65_535 ? n : undefined;
}
