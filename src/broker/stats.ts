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
  /** PUBLISH packets from clients (allowed or not) by QoS 0, 1, 2, and their payload bytes (countReceived). */
  receivedByQos: [number, number, number];
  receivedBytesByQos: [number, number, number];
  /** PUBLISH packets written to subscribers (re-sends included) by QoS, and their payload bytes (countSent). */
  sentByQos: [number, number, number];
  sentBytesByQos: [number, number, number];
  /** Deliveries dropped because they were larger than the subscriber's Maximum Packet Size. */
  droppedTooLarge: number;
  /** Publish-to-deliver latency, sampled; null (nothing measured) unless metrics are on. */
  latency: DeliveryLatency | null;
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
    receivedByQos: [0, 0, 0],
    receivedBytesByQos: [0, 0, 0],
    sentByQos: [0, 0, 0],
    sentBytesByQos: [0, 0, 0],
    droppedTooLarge: 0,
    latency: null,
  };
}

/** A PUBLISH from a client reached its handler's end (allowed or not): counted by QoS; a sample of them is timed. */
export function countReceived(stats: BrokerStats, message: { qos: number; payload: Buffer }): void {
  const q = message.qos as 0 | 1 | 2;
  stats.receivedByQos[q]++;
  stats.receivedBytesByQos[q] += message.payload.length;
  if (stats.latency !== null) stats.latency.start(message);
}

/** A PUBLISH was written to a subscriber: counted by QoS; a live delivery of a timed message is observed. */
export function countSent(stats: BrokerStats, message: { payload: Buffer }, qos: number, retain: boolean, dup: boolean): void {
  const q = qos as 0 | 1 | 2;
  stats.sentByQos[q]++;
  stats.sentBytesByQos[q] += message.payload.length;
  // A retained copy sent to a new subscriber, or a re-send, says nothing about how fast the broker delivers.
  if (stats.latency !== null && !retain && !dup) stats.latency.end(message);
}

/**
 * Publish-to-deliver latency: one message in `every` is timed from the end of its PUBLISH handler
 * to each write to a subscriber, and the seconds go to `histogram`. A message that is not timed
 * costs a counter; the deliveries of the last timed message are recognised by identity. Its
 * deliveries made in one synchronous run (a fan-out loop) share one reading of the clock and one
 * observation, weighted by how many they were, made when the run ends (a microtask): a fan-out to
 * 50 subscribers reads the clock once, not 50 times. Any other delivery (a queued one, whose
 * message was timed earlier) is looked up in a WeakMap in one of `every` cases, and a hit counts
 * `every` times, so deliveries made later keep their true weight in the histogram. Nothing
 * allocates on the hot path.
 */
export class DeliveryLatency {
  private readonly started = new WeakMap<object, number>();
  /** Messages until the next one is timed, and deliveries until the next look-up of a later one. */
  private untilTimed: number;
  private untilLookup: number;
  /** The last message timed, and when. */
  private current: object | null = null;
  private currentAt = 0;
  /** Deliveries of `current` in this synchronous run not yet observed, and the seconds they share. */
  private pending = 0;
  private pendingSeconds = 0;
  private readonly flush = (): void => this.observePending();

  constructor(
    readonly every: number,
    private readonly histogram: { observe(seconds: number, weight: number): void },
  ) {
    this.untilTimed = every;
    this.untilLookup = every;
  }

  // start() and end() are small so that they inline into the message path; the rest is apart.
  start(message: object): void {
    if (--this.untilTimed === 0) this.time(message);
  }

  end(message: object): void {
    if (message === this.current) this.deliveredCurrent();
    else if (--this.untilLookup === 0) this.lookup(message);
  }

  private time(message: object): void {
    this.observePending(); // the previous timed message's run, if it has not ended yet
    this.untilTimed = this.every;
    this.current = message;
    this.currentAt = performance.now();
    this.started.set(message, this.currentAt);
  }

  private deliveredCurrent(): void {
    if (this.pending === 0) {
      this.pendingSeconds = (performance.now() - this.currentAt) / 1000;
      queueMicrotask(this.flush);
    }
    this.pending++;
  }

  private observePending(): void {
    if (this.pending === 0) return;
    this.histogram.observe(this.pendingSeconds, this.pending);
    this.pending = 0;
  }

  private lookup(message: object): void {
    this.untilLookup = this.every;
    const t = this.started.get(message);
    if (t !== undefined) this.histogram.observe((performance.now() - t) / 1000, this.every);
  }
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
