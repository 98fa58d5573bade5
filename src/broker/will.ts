/**
 * Will messages: published when a connection ends without DISCONNECT 0x00, after the will delay
 * (v5, capped by the session expiry), unless the client reconnects first [MQTT-3.1.3-9]. The
 * will is authorized again when it is published, through the same check as a PUBLISH.
 *
 * A will that waited (a Will Delay Interval, or a will restored after a crash) is published only
 * if the identity that left it still stands: its credentials have not expired, and no check the
 * broker was given (a ban, a certificate revoked by a reloaded CRL) rejects it now. A live
 * connection ended for those reasons has its will discarded at once (gate.ts); this covers the
 * will of a connection that had already gone.
 */
import type { Logger } from '../log.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';
import type { GateApi } from './handler-api.ts';
import type { Message } from './message.ts';
import type { Principal } from '../auth/types.ts';
import type { Client, Will } from './ports.ts';
import type { RestoredWill } from './sessions.ts';
import type { DetachedWill } from './cluster-port.ts';
import type { CoarseClock } from './stats.ts';

export class WillScheduler {
  /** Delayed wills by session key. */
  private readonly pending = new Map<string, { timer: NodeJS.Timeout; conn: Client; will: Will; quotaKey: string }>();

  constructor(
    private readonly gate: Pick<GateApi, 'authorize' | 'audit'>,
    private readonly publishInternal: (message: Message) => number,
    private readonly log: Logger,
    /** The clock every message's expiry is read from; a will's must be set from the same one. */
    private readonly clock: CoarseClock,
    /** A retained will counts against its identity's retained quota, as a PUBLISH does. */
    private readonly retainFits: (message: Message, quotaKey: string) => boolean,
    /** The will of this session is settled (published, discarded or cancelled): the store need not keep it. */
    private readonly settled: (key: string) => void,
    /** Why the identity that left this will no longer stands (banned, certificate revoked), or undefined. */
    private readonly rejected: (conn: Client) => string | undefined = () => undefined,
  ) {}

  /** A connection ended: its will goes now, after its delay, or not at all. */
  connectionEnded(conn: Client, session: { readonly key: string; readonly expiryInterval: number; readonly quotaKey: string } | null): void {
    const will = conn.will;
    if (will === null || session === null) return;
    if (conn.discardWill) return this.settled(session.key);
    if (conn.takenOver) {
      if (will.delaySeconds === 0 || conn.sessionEnding) this.publish(session.key, session.quotaKey, conn, will);
      return;
    }
    const delay = conn.v5 ? Math.min(will.delaySeconds, session.expiryInterval) : 0;
    this.schedule(session.key, session.quotaKey, conn, will, delay);
  }

  private schedule(key: string, quotaKey: string, conn: Client, will: Will, delaySeconds: number): void {
    if (delaySeconds <= 0) return this.publish(key, quotaKey, conn, will);
    this.cancel(key, false);
    const timer = setTimeout(() => {
      this.pending.delete(key);
      this.publish(key, quotaKey, conn, will);
    }, delaySeconds * 1000);
    timer.unref();
    this.pending.set(key, { timer, conn, will, quotaKey });
  }

  /** A new connection for the session: drop the pending will, or send it now if the session ends. */
  cancel(key: string, sessionEnds: boolean): void {
    const entry = this.pending.get(key);
    if (entry === undefined) return;
    clearTimeout(entry.timer);
    this.pending.delete(key);
    if (sessionEnds) this.publish(key, entry.quotaKey, entry.conn, entry.will);
    else this.settled(key);
  }

  /** The session is no longer this node's (its partition went to another node): a pending will is that node's to publish. */
  forget(key: string): void {
    const entry = this.pending.get(key);
    if (entry === undefined) return;
    clearTimeout(entry.timer);
    this.pending.delete(key);
  }

  /** The session ended (expired): a pending will is published now. */
  fire(key: string): void {
    this.cancel(key, true);
  }

  /**
   * A will the store kept for a client that was connected when the last broker stopped without
   * closing (a crash): its connection ended then, so it is published after its delay from now,
   * authorized as the identity it was stored with, unless the client reconnects first.
   */
  restore(w: RestoredWill): void {
    const { session, will, principal, listener } = w;
    const conn = detachedClient(session.clientId, principal, listener);
    conn.will = { topic: will.message.topic, payload: will.message.payload, qos: will.message.qos, retain: will.message.retain, ...(will.message.properties !== undefined ? { properties: will.message.properties } : {}), delaySeconds: will.delayInterval };
    const delay = Math.min(will.delayInterval, session.expiryInterval);
    this.log.info({ clientId: session.clientId, topic: will.message.topic, delaySeconds: delay }, 'will restored from the store: the client was connected when the broker stopped');
    this.schedule(session.key, session.quotaKey, conn, conn.will, delay);
  }

  /**
   * A will of a session the cluster held offline (adopted from a node that died), due now:
   * authorized and published as the identity it was stored with.
   */
  publishDetached(w: DetachedWill): void {
    const conn = detachedClient(w.clientId, w.principal, w.listener);
    const m = w.will.message;
    const will: Will = { topic: m.topic, payload: m.payload, qos: m.qos, retain: m.retain, ...(m.properties !== undefined ? { properties: m.properties } : {}), delaySeconds: 0 };
    this.publish(w.key, w.quotaKey, conn, will);
  }

  /** `origin`: the session key of the client whose will it is (for no-local). */
  private publish(origin: string, quotaKey: string, conn: Client, will: Will): void {
    this.settled(origin);
    const expiresAt = conn.principal?.expiresAt;
    const why = expiresAt !== undefined && expiresAt <= Date.now() ? 'the credentials that sent it have expired' : this.rejected(conn);
    if (why !== undefined) {
      this.log.info({ clientId: conn.clientId, topic: will.topic, why }, 'will not published: its identity no longer stands');
      this.gate.audit(conn, { event: 'publish', action: 'will', decision: 'deny', reasonCode: ReasonCode.NotAuthorized, reason: `will not published: ${why}`, topic: will.topic, qos: will.qos, retain: will.retain, detail: { willDiscarded: true } });
      return;
    }
    const decide = this.gate.authorize(conn, 'publish', will.topic, will.qos, will.retain, true);
    const go = (allowed: boolean): void => {
      if (!allowed) {
        this.log.info({ clientId: conn.clientId, topic: will.topic }, 'will not published: not authorized');
        return;
      }
      const message: Message = { topic: will.topic, payload: will.payload, qos: will.qos, retain: will.retain, origin, quotaKey };
      if (will.properties !== undefined) {
        const { messageExpiryInterval, ...properties } = will.properties;
        if (messageExpiryInterval !== undefined) {
          message.expiresAt = this.clock.now + messageExpiryInterval * 1000; // [MQTT-3.3.2-6]
          (properties as Record<string, unknown>).messageExpiryInterval = messageExpiryInterval;
        }
        if (Object.keys(properties).length > 0) message.properties = properties;
      }
      if (message.retain && !this.retainFits(message, quotaKey)) {
        this.log.warn({ clientId: conn.clientId, topic: will.topic }, 'will not published: retained messages over quota (limits.quotas)');
        return;
      }
      this.log.info({ clientId: conn.clientId, topic: will.topic }, 'will published');
      this.publishInternal(message);
    };
    if (decide instanceof Promise) decide.then((d) => go(d.kind === 'allow'), () => go(false));
    else go(decide.kind === 'allow');
  }

  stop(): void {
    for (const entry of this.pending.values()) clearTimeout(entry.timer);
    this.pending.clear();
  }
}

/**
 * A stand-in for the connection a restored will belonged to: what authorizing and auditing it
 * reads (identity, listener). It never writes: there is no socket.
 */
function detachedClient(clientId: string, principal: Principal, listener: string): Client {
  const none = (): never => {
    throw new Error('internal error: a restored will has no connection');
  };
  return {
    peer: { listener, transport: 'tcp', remoteAddress: '', remotePort: 0 },
    clientId,
    principal,
    state: 'closed',
    version: 5,
    v5: true,
    bridge: false,
    will: null,
    discardWill: false,
    takenOver: false,
    sessionEnding: false,
    auditWho: null,
    auditWhoPrincipal: null,
    write: none,
    send: none,
  } as unknown as Client;
}
