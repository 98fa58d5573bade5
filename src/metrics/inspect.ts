/**
 * A read-only view of a running broker for metrics and the admin API: connections, sessions and
 * their subscriptions, and counts. It reads the broker's live objects through the narrow shapes
 * below (structural: createBroker passes the broker's own collections) and hands out plain
 * snapshots, so nothing outside the broker can change its state through them. Nothing secret is
 * part of a snapshot: no password, token, key or message payload.
 */
import type { Principal } from '../auth/types.ts';
import type { StoredSubscription } from '../store/types.ts';
import type { PeerInfo } from '../transport/types.ts';

/** A session as the view reads it. */
export interface SessionLike {
  readonly clientId: string;
  readonly owner: string;
  readonly persistent: boolean;
  protocolVersion: number;
  expiresAt: number | undefined;
  listener: string;
  droppedMessages: number;
  queue: { readonly length: number };
  readonly inflight: { readonly size: number };
  readonly subscriptions: ReadonlyMap<string, StoredSubscription>;
  connection: object | null;
}

/** A connection as the view reads it. */
export interface ConnectionLike {
  readonly peer: PeerInfo;
  readonly openedAt: number;
  state: string;
  version: number;
  clientId: string;
  bridge: boolean;
  keepAlive: number;
  principal: Principal | null;
  session: SessionLike | null;
}

/** What the view reads from the broker. */
export interface InspectSource {
  connections: Iterable<ConnectionLike>;
  sessions: { values(): Iterable<SessionLike>; readonly size: number };
  retainedCount(): number;
}

export interface ConnectionInfo {
  /** This broker's number for the connection: stable while it lives, never reused. */
  id: number;
  clientId: string;
  username: string | null;
  authMethod: string | null;
  provider: string | null;
  roles: string[];
  listener: string;
  transport: string;
  remoteAddress: string;
  remotePort: number;
  protocol: string;
  bridge: boolean;
  keepAlive: number;
  connectedAt: string;
  /** When the credentials expire and the broker ends the connection (JWT exp, certificate notAfter). */
  credentialsExpireAt: string | null;
  tls: { protocol: string | null; cipher: string | null; certSubject: string | null; certFingerprint: string | null; certNotAfter: string | null; pskIdentity: string | null } | null;
  subscriptions: number;
  queued: number;
  inflight: number;
}

export interface SessionInfo {
  owner: string;
  clientId: string;
  connected: boolean;
  /** The connection's id when connected. */
  connectionId: number | null;
  persistent: boolean;
  protocol: string;
  expiresAt: string | null;
  listener: string;
  subscriptions: number;
  queued: number;
  inflight: number;
  droppedMessages: number;
}

export interface SubscriptionInfo {
  filter: string;
  qos: number;
  noLocal: boolean;
  retainAsPublished: boolean;
  retainHandling: number;
  subscriptionId: number | null;
}

export interface BrokerCounts {
  connections: number;
  /** Connected clients by listener and protocol version. */
  byListener: { listener: string; protocol: string; connections: number }[];
  sessions: number;
  sessionsConnected: number;
  subscriptions: number;
  queued: number;
  inflight: number;
  retained: number;
}

export interface ConnectionFilter {
  clientId?: string;
  username?: string;
  listener?: string;
  /** Certificates expiring within this many ms from now (with a certificate or credential expiry). */
  expiringWithinMs?: number;
}

/** `3.1`, `3.1.1` or `5.0` for a protocol level. */
export function protocolName(level: number): string {
  return level === 5 ? '5.0' : level === 4 ? '3.1.1' : level === 3 ? '3.1' : String(level);
}

/** `CN=dev-1, O=a` from a certificate subject. */
export function subjectText(subject: Record<string, string | string[]> | undefined): string | null {
  if (subject === undefined) return null;
  const parts: string[] = [];
  for (const [k, v] of Object.entries(subject)) for (const x of Array.isArray(v) ? v : [v]) parts.push(`${k}=${x}`);
  return parts.join(', ');
}

function iso(ms: number | undefined): string | null {
  return ms === undefined || !Number.isFinite(ms) ? null : new Date(ms).toISOString();
}

export class BrokerInspector {
  private readonly ids = new WeakMap<object, number>();
  private nextId = 1;

  constructor(private readonly source: InspectSource) {}

  /** The connection's number, given on first sight. */
  idOf(conn: object): number {
    let id = this.ids.get(conn);
    if (id === undefined) this.ids.set(conn, (id = this.nextId++));
    return id;
  }

  private *live(): Generator<ConnectionLike> {
    for (const c of this.source.connections) if (c.state === 'connected') yield c;
  }

  counts(): BrokerCounts {
    const by = new Map<string, { listener: string; protocol: string; connections: number }>();
    let connections = 0;
    for (const c of this.live()) {
      connections++;
      const protocol = protocolName(c.version);
      const key = JSON.stringify([c.peer.listener, protocol]);
      const row = by.get(key);
      if (row !== undefined) row.connections++;
      else by.set(key, { listener: c.peer.listener, protocol, connections: 1 });
    }
    let sessionsConnected = 0;
    let subscriptions = 0;
    let queued = 0;
    let inflight = 0;
    for (const s of this.source.sessions.values()) {
      if (s.connection !== null) sessionsConnected++;
      subscriptions += s.subscriptions.size;
      queued += s.queue.length;
      inflight += s.inflight.size;
    }
    return { connections, byListener: [...by.values()], sessions: this.source.sessions.size, sessionsConnected, subscriptions, queued, inflight, retained: this.source.retainedCount() };
  }

  /**
   * Connected clients matching the filter, in the order they connected: the page [offset,
   * offset + limit) described, the rest only counted (a large broker's list is not built whole).
   */
  connections(filter: ConnectionFilter = {}, offset = 0, limit = Number.POSITIVE_INFINITY): { total: number; items: ConnectionInfo[] } {
    const items: ConnectionInfo[] = [];
    const now = Date.now();
    let total = 0;
    for (const c of this.live()) {
      // Numbered in connection order, so ids grow down the list.
      this.idOf(c);
      if (filter.clientId !== undefined && c.clientId !== filter.clientId) continue;
      if (filter.username !== undefined && c.principal?.username !== filter.username) continue;
      if (filter.listener !== undefined && c.peer.listener !== filter.listener) continue;
      if (filter.expiringWithinMs !== undefined && !(expiryOf(c) - now <= filter.expiringWithinMs)) continue;
      if (total >= offset && items.length < limit) items.push(this.describe(c));
      total++;
    }
    return { total, items };
  }

  connection(id: number): ConnectionInfo | undefined {
    const c = this.find(id);
    return c === undefined ? undefined : this.describe(c);
  }

  /** The live connection with this number (for kick: the caller acts on the broker's own object). */
  find(id: number): ConnectionLike | undefined {
    for (const c of this.live()) if (this.ids.get(c) === id) return c;
    // Not listed yet: number the live connections, then look again.
    for (const c of this.live()) if (this.idOf(c) === id) return c;
    return undefined;
  }

  subscriptionsOf(id: number): SubscriptionInfo[] | undefined {
    const c = this.find(id);
    if (c === undefined) return undefined;
    return c.session === null ? [] : subscriptionList(c.session);
  }

  /** Sessions matching the filter, in the order they were made: the page described, the rest counted. */
  sessions(filter: { clientId?: string; owner?: string; connected?: boolean } = {}, offset = 0, limit = Number.POSITIVE_INFINITY): { total: number; items: SessionInfo[] } {
    const items: SessionInfo[] = [];
    let total = 0;
    for (const s of this.source.sessions.values()) {
      if (filter.clientId !== undefined && s.clientId !== filter.clientId) continue;
      if (filter.owner !== undefined && s.owner !== filter.owner) continue;
      if (filter.connected !== undefined && (s.connection !== null) !== filter.connected) continue;
      if (total >= offset && items.length < limit) items.push(this.describeSession(s));
      total++;
    }
    return { total, items };
  }

  session(owner: string, clientId: string): (SessionInfo & { subscriptionList: SubscriptionInfo[] }) | undefined {
    for (const s of this.source.sessions.values()) {
      if (s.owner === owner && s.clientId === clientId) return { ...this.describeSession(s), subscriptionList: subscriptionList(s) };
    }
    return undefined;
  }

  private describeSession(s: SessionLike): SessionInfo {
    return {
      owner: s.owner,
      clientId: s.clientId,
      connected: s.connection !== null,
      connectionId: s.connection !== null ? this.idOf(s.connection) : null,
      persistent: s.persistent,
      protocol: protocolName(s.protocolVersion),
      expiresAt: iso(s.expiresAt),
      listener: s.listener,
      subscriptions: s.subscriptions.size,
      queued: s.queue.length,
      inflight: s.inflight.size,
      droppedMessages: s.droppedMessages,
    };
  }

  private describe(c: ConnectionLike): ConnectionInfo {
    const p = c.principal;
    const tls = c.peer.tls;
    const session = c.session;
    return {
      id: this.idOf(c),
      clientId: c.clientId,
      username: p?.username ?? null,
      authMethod: p?.method ?? null,
      provider: p?.provider ?? null,
      roles: p !== null ? [...p.roles] : [],
      listener: c.peer.listener,
      transport: c.peer.transport,
      remoteAddress: c.peer.remoteAddress,
      remotePort: c.peer.remotePort,
      protocol: protocolName(c.version),
      bridge: c.bridge,
      keepAlive: c.keepAlive,
      connectedAt: new Date(c.openedAt).toISOString(),
      credentialsExpireAt: iso(p?.expiresAt),
      tls:
        tls === undefined
          ? null
          : {
              protocol: tls.protocol,
              cipher: tls.cipher ?? null,
              certSubject: subjectText(tls.subject),
              certFingerprint: tls.fingerprint256 ?? null,
              certNotAfter: tls.validTo !== undefined && !Number.isNaN(Date.parse(tls.validTo)) ? new Date(tls.validTo).toISOString() : null,
              pskIdentity: tls.pskIdentity ?? null,
            },
      subscriptions: session?.subscriptions.size ?? 0,
      queued: session?.queue.length ?? 0,
      inflight: session?.inflight.size ?? 0,
    };
  }
}

/** When the connection's certificate or credentials run out (epoch ms; Infinity: never). */
function expiryOf(c: ConnectionLike): number {
  const validTo = c.peer.tls?.validTo;
  const cert = validTo !== undefined ? Date.parse(validTo) : Number.NaN;
  return Math.min(Number.isNaN(cert) ? Infinity : cert, c.principal?.expiresAt ?? Infinity);
}

function subscriptionList(s: SessionLike): SubscriptionInfo[] {
  return [...s.subscriptions.values()]
    .map((sub) => ({
      filter: sub.filter,
      qos: sub.qos,
      noLocal: sub.noLocal,
      retainAsPublished: sub.retainAsPublished,
      retainHandling: sub.retainHandling,
      subscriptionId: sub.subscriptionId ?? null,
    }))
    .sort((a, b) => (a.filter < b.filter ? -1 : a.filter > b.filter ? 1 : 0));
}
