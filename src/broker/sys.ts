/** `$SYS/broker/...` statistics, published as retained messages on an interval. */
import { createRequire } from 'node:module';
import type { Message } from './message.ts';
import type { BrokerStats } from './stats.ts';

const require = createRequire(import.meta.url);
export const VERSION: string = (require('../../package.json') as { version: string }).version;

/** What the `$SYS` topics report, and how they are published. */
export interface SysSource {
  readonly startedAt: number;
  readonly connected: number;
  readonly stats: BrokerStats;
  sessionCount(): number;
  retainedCount(): number;
  publishInternal(message: Message): number;
  /** In a cluster: this node's id, whether it publishes the totals, and the statistics of every node. */
  readonly cluster?: SysCluster | undefined;
}

export interface SysCluster {
  readonly nodeId: string;
  isLeader(): boolean;
  /** Writes this node's numbers and reads every live node's; null when Redis does not answer. */
  exchangeStats(values: Record<string, number>): Promise<{ node: string; values: Record<string, number> }[] | null>;
}

/** Numbers the cluster totals take the largest of, not the sum (every node keeps all retained messages). */
const NOT_SUMMED = new Set(['uptime', 'retained messages/count']);

export class SysTopics {
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly broker: SysSource) {}

  start(intervalSeconds: number): void {
    if (intervalSeconds <= 0) return;
    this.publish();
    this.timer = setInterval(() => this.publish(), intervalSeconds * 1000);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  publish(): void {
    const values = this.values();
    const cluster = this.broker.cluster;
    if (cluster === undefined) {
      for (const [name, value] of values) this.send(`$SYS/broker/${name}`, `${name === 'uptime' ? `${value} seconds` : value}`);
      return;
    }
    // In a cluster: each node's own numbers under $SYS/broker/nodes/<id>/, and the totals under
    // $SYS/broker/ (published by one node), so the cluster reads as one broker.
    for (const [name, value] of values) this.send(`$SYS/broker/nodes/${cluster.nodeId}/${name}`, `${name === 'uptime' ? `${value} seconds` : value}`);
    const numbers: Record<string, number> = {};
    for (const [name, value] of values) if (typeof value === 'number') numbers[name] = value;
    void cluster.exchangeStats(numbers).then((all) => {
      if (all === null || !cluster.isLeader()) return;
      const totals: Record<string, number> = {};
      for (const { values: v } of all) {
        for (const [name, n] of Object.entries(v)) totals[name] = NOT_SUMMED.has(name) ? Math.max(totals[name] ?? 0, n) : (totals[name] ?? 0) + n;
      }
      this.send('$SYS/broker/version', `portcullis ${VERSION}`);
      this.send('$SYS/broker/nodes/count', String(all.length));
      for (const [name, n] of Object.entries(totals)) this.send(`$SYS/broker/${name}`, name === 'uptime' ? `${n} seconds` : String(n));
    });
  }

  private send(topic: string, value: string): void {
    this.broker.publishInternal({ topic, payload: Buffer.from(value), qos: 0, retain: true, origin: '$SYS' });
  }

  private values(): [string, string | number][] {
    const b = this.broker;
    const values: [string, string | number][] = [
      ['version', `portcullis ${VERSION}`],
      ['uptime', Math.floor((Date.now() - b.startedAt) / 1000)],
      ['clients/connected', b.connected],
      ['clients/total', b.sessionCount()],
      ['messages/received', b.stats.messagesReceived],
      ['messages/sent', b.stats.messagesSent],
      ['messages/dropped', b.stats.messagesDropped],
      ['messages/expired', b.stats.messagesExpired],
      ['messages/dropped/queue-qos0', b.stats.queueDroppedQos0],
      ['messages/dropped/queue-refused-qos12', b.stats.queueRefusedQos12],
      ['messages/dropped/rate-limited', b.stats.publishesRateLimited],
      ['clients/throttled', b.stats.connectionsThrottled],
      ['clients/held-for-audit', b.stats.auditHolds],
      ['clients/slow-consumers-disconnected', b.stats.slowConsumersDisconnected],
      ['retained messages/count', b.retainedCount()],
    ];
    return values;
  }
}
