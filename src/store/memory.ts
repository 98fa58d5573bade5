import { performance } from 'node:perf_hooks';
import { sessionKey, type PurgeOptions, type PurgeReport, type Store, type StoreOpenReport, type StoredInflight, type StoredMessage, type StoredSession, type StoredSubscription, type StoredWill } from './types.ts';
import { storeCounts } from './counts.ts';

/** Deep copy that keeps Buffers as Buffers (structuredClone would turn them into Uint8Arrays). */
function clone<T>(value: T): T {
  if (Buffer.isBuffer(value)) return Buffer.from(value) as T;
  if (Array.isArray(value)) return value.map(clone) as T;
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    // defineProperty, not assignment: a v5 user property may be named __proto__.
    for (const [k, v] of Object.entries(value)) Object.defineProperty(out, k, { value: clone(v), enumerable: true, writable: true, configurable: true });
    return out as T;
  }
  return value;
}

/**
 * {@link clone} for a message, the one object copied per queued or in-flight delivery: its known
 * fields copied directly (the generic walk was a fifth of the broker's CPU under QoS 1 load), the
 * payload into its own memory (the caller's may be a view of a socket read), v5 properties and
 * subscription identifiers deep-copied as before.
 */
function cloneMessage(m: StoredMessage): StoredMessage {
  const out: StoredMessage = { topic: m.topic, payload: Buffer.from(m.payload), qos: m.qos, retain: m.retain };
  if (m.properties !== undefined) out.properties = clone(m.properties);
  if (m.expiresAt !== undefined) out.expiresAt = m.expiresAt;
  if (m.origin !== undefined) out.origin = m.origin;
  if (m.subscriptionIds !== undefined) out.subscriptionIds = [...m.subscriptionIds];
  return out;
}

function cloneInflight(f: StoredInflight): StoredInflight {
  const out: StoredInflight = { packetId: f.packetId, state: f.state, message: cloneMessage(f.message) };
  if (f.subscriptionIds !== undefined) out.subscriptionIds = [...f.subscriptionIds];
  return out;
}

/**
 * Keeps everything in process memory. It survives a broker restart only when the same instance
 * is passed to a new broker (embedding, tests); a process restart loses it.
 */
export class MemoryStore implements Store {
  private readonly sessions = new Map<string, StoredSession>();
  private readonly retained = new Map<string, StoredMessage>();

  constructor(private readonly now: () => number = Date.now) {}

  /** Drops what expired since the last open, like the durable store, and reports what it holds. */
  async open(): Promise<StoreOpenReport> {
    const started = performance.now();
    const now = this.now();
    const purged = { expiredSessions: 0, expiredMessages: 0, expiredRetained: 0, orphans: 0 };
    for (const [id, s] of this.sessions) {
      if (s.expiresAt !== undefined && s.expiresAt <= now) {
        this.sessions.delete(id);
        purged.expiredSessions++;
        continue;
      }
      const before = s.queue.length;
      s.queue = s.queue.filter((m) => m.expiresAt === undefined || m.expiresAt > now);
      purged.expiredMessages += before - s.queue.length;
    }
    for (const [topic, m] of this.retained) {
      if (m.expiresAt !== undefined && m.expiresAt <= now) {
        this.retained.delete(topic);
        purged.expiredRetained++;
      }
    }
    const all = [...this.sessions.values()];
    return {
      type: 'memory',
      durable: false,
      created: all.length === 0 && this.retained.size === 0,
      loaded: storeCounts(all, this.retained.size),
      purged,
      recovery: { uncleanShutdown: false },
      warnings: [],
      durationMs: Math.round(performance.now() - started),
    };
  }

  async close(): Promise<void> {}

  async purgeExpired(options: PurgeOptions = {}): Promise<PurgeReport> {
    const now = options.now ?? this.now();
    const report: PurgeReport = { expiredSessions: 0, expiredRetained: 0 };
    for (const [id, s] of this.sessions) {
      if (s.expiresAt !== undefined && s.expiresAt <= now && options.keep?.(id) !== true) {
        this.sessions.delete(id);
        report.expiredSessions++;
      }
    }
    for (const [topic, m] of this.retained) {
      if (m.expiresAt !== undefined && m.expiresAt <= now) {
        this.retained.delete(topic);
        report.expiredRetained++;
      }
    }
    return report;
  }

  async loadSessions(): Promise<StoredSession[]> {
    return [...this.sessions.values()].map(clone);
  }

  async getSession(key: string): Promise<StoredSession | undefined> {
    const s = this.sessions.get(key);
    return s === undefined ? undefined : clone(s);
  }

  async saveSession(session: StoredSession): Promise<void> {
    this.sessions.set(sessionKey(session.owner, session.clientId), clone(session));
  }

  async deleteSession(key: string): Promise<void> {
    this.sessions.delete(key);
  }

  async setSessionExpiry(key: string, expiresAt: number | undefined, expiryInterval: number): Promise<void> {
    const s = this.sessions.get(key);
    if (s === undefined) return;
    s.expiryInterval = expiryInterval;
    if (expiresAt === undefined) delete s.expiresAt;
    else s.expiresAt = expiresAt;
  }

  async putSubscription(key: string, subscription: StoredSubscription): Promise<void> {
    const s = this.sessions.get(key);
    if (s === undefined) return;
    const i = s.subscriptions.findIndex((x) => x.filter === subscription.filter);
    if (i >= 0) s.subscriptions[i] = clone(subscription);
    else s.subscriptions.push(clone(subscription));
  }

  async deleteSubscription(key: string, filter: string): Promise<void> {
    const s = this.sessions.get(key);
    if (s !== undefined) s.subscriptions = s.subscriptions.filter((x) => x.filter !== filter);
  }

  async putInflight(key: string, inflight: StoredInflight): Promise<void> {
    const s = this.sessions.get(key);
    if (s === undefined) return;
    const i = s.inflight.findIndex((x) => x.packetId === inflight.packetId);
    if (i >= 0) s.inflight[i] = cloneInflight(inflight);
    else s.inflight.push(cloneInflight(inflight));
  }

  async deleteInflight(key: string, packetId: number): Promise<void> {
    const s = this.sessions.get(key);
    if (s === undefined) return;
    // In place: acknowledgements come mostly in send order, so the entry is usually first.
    const i = s.inflight.findIndex((x) => x.packetId === packetId);
    if (i >= 0) s.inflight.splice(i, 1);
  }

  async enqueue(key: string, message: StoredMessage): Promise<void> {
    this.sessions.get(key)?.queue.push(cloneMessage(message));
  }

  async dequeue(key: string, count: number): Promise<void> {
    const queue = this.sessions.get(key)?.queue;
    if (queue === undefined) return;
    // shift() takes the front without moving the rest of a long queue (splice(0, n) moves it all);
    // a delivery usually takes one entry at a time.
    if (count < 8) for (let i = 0; i < count && queue.length > 0; i++) queue.shift();
    else queue.splice(0, count);
  }

  async putAwaitingRelease(key: string, packetId: number): Promise<void> {
    const s = this.sessions.get(key);
    if (s !== undefined && !s.awaitingRelease.includes(packetId)) s.awaitingRelease.push(packetId);
  }

  async deleteAwaitingRelease(key: string, packetId: number): Promise<void> {
    const s = this.sessions.get(key);
    if (s !== undefined) s.awaitingRelease = s.awaitingRelease.filter((x) => x !== packetId);
  }

  async putWill(key: string, will: StoredWill): Promise<void> {
    const s = this.sessions.get(key);
    if (s !== undefined) s.will = clone(will);
  }

  async deleteWill(key: string): Promise<void> {
    const s = this.sessions.get(key);
    if (s !== undefined) delete s.will;
  }

  async loadRetained(): Promise<StoredMessage[]> {
    return [...this.retained.values()].map(clone);
  }

  async putRetained(message: StoredMessage): Promise<void> {
    if (message.payload.length === 0) this.retained.delete(message.topic);
    else this.retained.set(message.topic, clone(message));
  }

  async deleteRetained(topic: string): Promise<void> {
    this.retained.delete(topic);
  }
}
