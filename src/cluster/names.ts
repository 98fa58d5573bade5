/**
 * The cluster's keys in Redis. Every key carries the hash tag `{pc:<cluster name>}`, so on a
 * Redis Cluster they all live in one hash slot: the scripts below touch several keys at once,
 * which Redis Cluster allows only within a slot (docs/cluster.md, sizing).
 */
import { createHash } from 'node:crypto';

export class Names {
  /** The prefix every key starts with; scripts build keys from it. */
  readonly prefix: string;

  constructor(clusterName: string) {
    this.prefix = `{pc:${clusterName}}:`;
  }

  /** A node's lease: its current run, expiring unless renewed. */
  lease(nodeId: string): string {
    return `${this.prefix}lease:${nodeId}`;
  }
  /** Hash: node id → what the node reported when it started. */
  get nodes(): string {
    return `${this.prefix}nodes`;
  }
  /** Hash of a partition: host (a run), origin (the node id that made it). */
  partition(p: string): string {
    return `${this.prefix}part:${p}`;
  }
  /** Set of every partition id. */
  get partitions(): string {
    return `${this.prefix}parts`;
  }
  /** Set of the partitions a run hosts. */
  hosted(run: string): string {
    return `${this.prefix}hosted:${run}`;
  }
  /** Which partition a session belongs to (by the digest of its key). */
  owner(digest: string): string {
    return `${this.prefix}own:${digest}`;
  }
  /** Hash of a partition's sessions: digest → session key. */
  owned(p: string): string {
    return `${this.prefix}owned:${p}`;
  }
  /** A partition's inbox stream. */
  inbox(p: string): string {
    return `${this.prefix}in:${p}`;
  }
  /** Hash of a partition's interest: filter → 1. */
  interest(p: string): string {
    return `${this.prefix}int:${p}`;
  }
  /** The broadcast stream every node reads. */
  get control(): string {
    return `${this.prefix}ctl`;
  }
  /** Hash: node id → its last statistics (JSON). */
  get stats(): string {
    return `${this.prefix}stats`;
  }
  /** A stream a command-line client reads replies from. */
  replies(id: string): string {
    return `${this.prefix}reply:${id}`;
  }
}

/** The digest a session key is kept under in Redis (the key itself names an identity). */
export function keyDigest(sessionKey: string): string {
  return createHash('sha256').update(sessionKey).digest('base64url');
}

/** The node id of a run (`<node id>~<epoch>`). */
export function nodeOfRun(run: string): string {
  const at = run.lastIndexOf('~');
  return at < 0 ? run : run.slice(0, at);
}
