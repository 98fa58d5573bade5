/**
 * What a cluster node reports to the rest of the program (readiness, $SYS, reloads): types only,
 * with no import, so that the package's declarations (index.ts exports these) do not pull in the
 * Redis client's.
 */
/** What the node reports for readiness and $SYS. */
export interface ClusterStatus {
  nodeId: string;
  run: string;
  /** Redis answers: cross-node delivery works. */
  redis: 'up' | 'down';
  /** Since when Redis has been in this state (epoch ms). */
  since: number;
  /** The node's lease is current (it renewed it within leaseMs). */
  leaseCurrent: boolean;
  /** Partitions hosted here (its own first). */
  partitions: string[];
  liveNodes: number;
  offlineSessions: number;
  pendingBytes: number;
  bus: { frames: number; bodies: number; refused: number; failed: number; received: number; refusedFrames: number };
  /**
   * `$share` group copies that reached this node after its last member of the group left (or
   * that a member took and could not finish before its session ended): passed on to another node
   * with members, and dropped because no node had members (or after the passes allowed, or given
   * up waiting for Redis: the node stopped, or more of them waited than cluster.maxPendingBytes).
   */
  shares: { passed: number; dropped: number };
  /**
   * Cross-node flow control: holds and releases this node sent for publishers on other nodes;
   * holds other nodes asked of this node's publishers that it applied, that ran out
   * (limits.flowControl.maxHoldMs, or the publisher's hold budget), that it refused (the
   * publisher's hold budget was spent), and that are in force now; bytes queued here beyond
   * subscribers' limits while their holds crossed the bus (at most cluster.maxPendingBytes).
   */
  flow: { holdsSent: number; releasesSent: number; holdsApplied: number; holdsExpired: number; holdsRefused: number; held: number; inTransitBytes: number };
}

/** One node's outcome of a reload. */
export interface NodeReloadReport {
  node: string;
  ok: boolean;
  /** One line per thing reloaded: `policy: ok (version ...)`, `tls tls-8883: FAILED ...`. */
  items: { what: string; ok: boolean; detail: string }[];
}

export interface ClusterReloadReport {
  ok: boolean;
  nodes: NodeReloadReport[];
  /** Live nodes that did not answer within the deadline. */
  silent: string[];
}
