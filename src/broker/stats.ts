/**
 * The broker's counters and its coarse clock: shared by every room of the broker, owned by none.
 */

export interface BrokerStats {
  connectsAccepted: number;
  connectsRefused: number;
  messagesReceived: number;
  messagesSent: number;
  messagesDropped: number;
  messagesExpired: number;
  /** QoS 0 messages a subscriber's full queue (limits.maxQueuedMessages / maxQueuedBytes) dropped. */
  queueDroppedQos0: number;
  /** QoS 1/2 messages a subscriber's full queue refused (each counted, logged and audited). */
  queueRefusedQos12: number;
  /** Clients disconnected because their queue stayed full for limits.slowConsumerTimeoutMs. */
  slowConsumersDisconnected: number;
  /** PUBLISH packets over a rate limit that were rejected, dropped or caused a disconnect. */
  publishesRateLimited: number;
  /** Times a connection's reading was paused by a rate limit (throttle). */
  connectionsThrottled: number;
  /** Times a connection stopped reading because the audit log was behind (read back-pressure). */
  auditHolds: number;
}

export function newBrokerStats(): BrokerStats {
  return {
    connectsAccepted: 0,
    connectsRefused: 0,
    messagesReceived: 0,
    messagesSent: 0,
    messagesDropped: 0,
    messagesExpired: 0,
    queueDroppedQos0: 0,
    queueRefusedQos12: 0,
    slowConsumersDisconnected: 0,
    publishesRateLimited: 0,
    connectionsThrottled: 0,
    auditHolds: 0,
  };
}

/**
 * Epoch milliseconds, refreshed by the broker's sweep (every 20–100 ms) instead of a Date.now()
 * per message. Message expiry, rate limits and drop warnings read it.
 */
export class CoarseClock {
  now = Date.now();

  tick(): number {
    return (this.now = Date.now());
  }
}
