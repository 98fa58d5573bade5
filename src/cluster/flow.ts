/**
 * Flow control across nodes, on the subscriber's side (docs/cluster.md, "Flow control across
 * nodes"). A message from another node names its publisher: the node that sent it (the frame's
 * sender, a run) and the publisher's session key (the message's origin). Delivery here treats
 * that publisher as it treats one of its own clients: a subscriber that falls behind holds it,
 * and lets it go once it has caught up, stalled or held it for limits.flowControl.maxHoldMs.
 * Each hold and release becomes one signed control message to the publisher's node, which holds
 * the client's reading there under its own maxHoldMs (the publisher's side is in the broker's
 * delivery, `remoteHold`): a node that dies or never sends the release cannot hold a publisher
 * for longer.
 *
 * Only the first hold and the last release of a publisher cross the bus: a publisher held by
 * several subscribers here is one hold there.
 */
import type { FlowSource } from '../broker/ports.ts';
import type { Control } from './wire.ts';

/** A publisher on another node as flow control here sees it. */
class RemotePublisher implements FlowSource {
  readonly state = 'connected' as const;
  readonly remote = true;
  holds = 0;

  constructor(
    private readonly flow: RemotePublishers,
    readonly run: string,
    readonly key: string,
  ) {}

  holdForFlow(): void {
    if (this.holds++ === 0) this.flow.signal(this, true);
  }

  releaseFlow(): void {
    if (this.holds === 0 || --this.holds !== 0) return;
    this.flow.signal(this, false);
  }
}

export interface FlowStats {
  /** Holds sent to other nodes for their publishers. */
  holdsSent: number;
  /** Releases sent. */
  releasesSent: number;
}

export class RemotePublishers {
  readonly stats: FlowStats = { holdsSent: 0, releasesSent: 0 };
  /** Per sending node run, its publishers by session key (only while something may hold them). */
  private readonly byRun = new Map<string, Map<string, RemotePublisher>>();

  constructor(
    /** Sends a control message to the node whose run is given (to its own partition's inbox). */
    private readonly send: (run: string, c: Control) => void,
  ) {}

  /** The publishers of node run `run` (look it up once per frame, then {@link of} per message). */
  ofRun(run: string): Map<string, RemotePublisher> {
    let m = this.byRun.get(run);
    if (m === undefined) this.byRun.set(run, (m = new Map()));
    return m;
  }

  /** The publisher with session key `key` on the node whose publishers `of` holds. */
  of(publishers: Map<string, RemotePublisher>, run: string, key: string): FlowSource {
    let p = publishers.get(key);
    if (p === undefined) publishers.set(key, (p = new RemotePublisher(this, run, key)));
    return p;
  }

  signal(p: RemotePublisher, hold: boolean): void {
    if (hold) this.stats.holdsSent++;
    else this.stats.releasesSent++;
    this.send(p.run, { t: 'flow', key: p.key, hold });
  }

  /** Forgets publishers nothing holds (they are made again by the next message that names them). */
  sweep(): void {
    for (const [run, m] of this.byRun) {
      for (const [key, p] of m) if (p.holds === 0) m.delete(key);
      if (m.size === 0) this.byRun.delete(run);
    }
  }

  /** A node is gone: its publishers are forgotten (a release to it would reach nobody). */
  gone(run: string): void {
    this.byRun.delete(run);
  }
}
