/**
 * Will messages: published when a connection ends without DISCONNECT 0x00, after the will delay
 * (v5, capped by the session expiry), unless the client reconnects first [MQTT-3.1.3-9]. The
 * will is authorized again when it is published.
 */
import type { Broker } from './broker.ts';
import type { Connection, Will } from './connection.ts';
import type { Message } from './message.ts';

export class WillScheduler {
  private readonly pending = new Map<string, { timer: NodeJS.Timeout; conn: Connection; will: Will }>();

  constructor(private readonly broker: Broker) {}

  schedule(conn: Connection, will: Will, delaySeconds: number): void {
    if (delaySeconds <= 0) return this.publish(conn, will);
    this.cancel(conn.clientId, false);
    const timer = setTimeout(() => {
      this.pending.delete(conn.clientId);
      this.publish(conn, will);
    }, delaySeconds * 1000);
    timer.unref();
    this.pending.set(conn.clientId, { timer, conn, will });
  }

  /** A new connection for the client id: drop the pending will, or send it now if the session ends. */
  cancel(clientId: string, sessionEnds: boolean): void {
    const entry = this.pending.get(clientId);
    if (entry === undefined) return;
    clearTimeout(entry.timer);
    this.pending.delete(clientId);
    if (sessionEnds) this.publish(entry.conn, entry.will);
  }

  /** The session ended (expired): a pending will is published now. */
  fire(clientId: string): void {
    this.cancel(clientId, true);
  }

  publish(conn: Connection, will: Will): void {
    const broker = this.broker;
    const decide = broker.authorize(conn, 'publish', will.topic, will.qos, will.retain, true);
    const go = (allowed: boolean): void => {
      if (!allowed) {
        broker.log.info({ clientId: conn.clientId, topic: will.topic }, 'will not published: not authorized');
        return;
      }
      const message: Message = { topic: will.topic, payload: will.payload, qos: will.qos, retain: will.retain, origin: conn.clientId };
      if (will.properties !== undefined) {
        const { messageExpiryInterval, ...properties } = will.properties;
        if (messageExpiryInterval !== undefined) {
          message.expiresAt = Date.now() + messageExpiryInterval * 1000;
          (properties as Record<string, unknown>).messageExpiryInterval = messageExpiryInterval;
        }
        if (Object.keys(properties).length > 0) message.properties = properties;
      }
      broker.log.info({ clientId: conn.clientId, topic: will.topic }, 'will published');
      broker.publishInternal(message);
    };
    if (decide instanceof Promise) decide.then((d) => go(d.kind === 'allow'), () => go(false));
    else go(decide.kind === 'allow');
  }

  stop(): void {
    for (const entry of this.pending.values()) clearTimeout(entry.timer);
    this.pending.clear();
  }
}

