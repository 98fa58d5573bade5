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
}

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
    const b = this.broker;
    const values: [string, string | number][] = [
      ['version', `portcullis ${VERSION}`],
      ['uptime', `${Math.floor((Date.now() - b.startedAt) / 1000)} seconds`],
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
    for (const [name, value] of values) {
      b.publishInternal({ topic: `$SYS/broker/${name}`, payload: Buffer.from(String(value)), qos: 0, retain: true, origin: '$SYS' });
    }
  }
}
