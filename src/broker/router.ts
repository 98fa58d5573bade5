/**
 * The subscription trie. Topic levels are edges; `+` and `#` are ordinary edges matched
 * specially. A publish walks the trie once and marks each matching session with the highest
 * QoS and every subscription identifier, so overlapping subscriptions deliver one copy.
 *
 * In a cluster the same trie holds the other partitions' interest (cluster-port.ts
 * RemoteInterest), so that one walk per publish finds both this node's subscribers and the
 * partitions elsewhere to send it to, each once (a second trie walked again for every publish
 * cost more than the router's own match).
 */
import { parseShared } from '../protocol/topic.ts';
import type { StoredSubscription } from '../store/types.ts';
import type { RemoteGroupRef, RemoteInterest, RemoteMatch, RemotePartitionRef } from './cluster-port.ts';
import type { Session, SharedTarget } from './session.ts';

class Node {
  children: Map<string, Node> | null = null;
  subscribers: Map<Session, StoredSubscription> | null = null;
  shared: Map<string, SharedGroup> | null = null;
  /** Partitions elsewhere with a plain subscription on exactly this filter. */
  remote: Set<RemotePartition> | null = null;
  /** Share name → the group's partitions elsewhere with members. */
  remoteShared: Map<string, RemoteGroup> | null = null;

  isEmpty(): boolean {
    return (
      (this.children === null || this.children.size === 0) &&
      (this.subscribers === null || this.subscribers.size === 0) &&
      (this.shared === null || this.shared.size === 0) &&
      (this.remote === null || this.remote.size === 0) &&
      (this.remoteShared === null || this.remoteShared.size === 0)
    );
  }
}

/** A partition of another node (or adopted from a dead one), marked in place by a match like a session. */
class RemotePartition implements RemotePartitionRef {
  matchGen = 0;
  /** Its filters as subscribed (`$share/g/f` included). */
  readonly filters = new Set<string>();
  constructor(readonly id: string) {}
}

class RemoteGroup implements RemoteGroupRef {
  readonly partitions = new Set<RemotePartition>();
  constructor(readonly key: string) {}
}

/** One `$share/{group}/{filter}` subscription: its members take turns. */
export class SharedGroup implements SharedTarget {
  readonly members = new Map<Session, StoredSubscription>();
  private order: Session[] = [];
  private next = 0;

  /**
   * @param name the share name;
   * @param key `$share/{name}/{filter}`, which names the group on every node of a cluster.
   */
  constructor(
    readonly name: string,
    readonly key: string,
  ) {}

  add(session: Session, sub: StoredSubscription): void {
    if (!this.members.has(session)) this.order.push(session);
    this.members.set(session, sub);
  }

  remove(session: Session): void {
    if (this.members.delete(session)) this.order = this.order.filter((s) => s !== session);
  }

  /** Round-robin, preferring members that are connected. */
  pick(): Session | undefined {
    const n = this.order.length;
    if (n === 0) return undefined;
    for (let i = 0; i < n; i++) {
      const session = this.order[(this.next + i) % n] as Session;
      if (session.connection !== null) {
        this.next = (this.next + i + 1) % n;
        return session;
      }
    }
    const session = this.order[this.next % n] as Session;
    this.next = (this.next + 1) % n;
    return session;
  }

  /** Another member to take a message one member could not (it left, refused it, or it is too large for it). */
  pickExcept(exclude: ReadonlySet<Session>): { session: Session; sub: StoredSubscription } | undefined {
    let offline: Session | undefined;
    const n = this.order.length;
    for (let i = 0; i < n; i++) {
      const session = this.order[(this.next + i) % n] as Session;
      if (exclude.has(session)) continue;
      if (session.connection !== null) {
        this.next = (this.next + i + 1) % n;
        return { session, sub: this.members.get(session) as StoredSubscription };
      }
      offline ??= session;
    }
    return offline === undefined ? undefined : { session: offline, sub: this.members.get(offline) as StoredSubscription };
  }
}

export interface SharedPick {
  session: Session;
  sub: StoredSubscription;
  group: SharedGroup;
}

export class Router implements RemoteMatch {
  private readonly root = new Node();
  private generation = 0;
  /** Reused per publish: the sessions matched by the last {@link match}. */
  readonly matched: Session[] = [];
  readonly sharedMatched: SharedPick[] = [];
  /** Reused per publish: the partitions elsewhere matched by the last {@link match} (with `remote`). */
  readonly remoteMatched: RemotePartition[] = [];
  readonly remoteGroups: RemoteGroup[] = [];
  private levels: string[] = [];
  private origin: string | undefined;
  private gen = 0;
  private withRemote = false;
  private readonly partitions = new Map<string, RemotePartition>();
  /** Changes whenever a subscription or another node's interest is added or removed: what a kept match result is checked against. */
  version = 0;

  add(session: Session, filter: string, sub: StoredSubscription, group?: string): void {
    this.version++;
    const node = this.nodeFor(filter);
    if (group === undefined) {
      node.subscribers ??= new Map();
      node.subscribers.set(session, sub);
    } else {
      node.shared ??= new Map();
      let g = node.shared.get(group);
      if (g === undefined) {
        g = new SharedGroup(group, `$share/${group}/${filter}`);
        node.shared.set(group, g);
      }
      g.add(session, sub);
    }
  }

  remove(session: Session, filter: string, group?: string): void {
    this.version++;
    const path = this.pathTo(filter);
    if (path === null) return;
    const node = path.node;
    if (group === undefined) node.subscribers?.delete(session);
    else {
      const g = node.shared?.get(group);
      g?.remove(session);
      if (g !== undefined && g.members.size === 0) node.shared?.delete(group);
    }
    prune(path.steps);
  }

  // ── the other partitions' interest (RemoteInterest) ────────────────────────

  /** Partition `id` subscribes to `filter` (`$share/g/f`: a member of group g on f). */
  addInterest(id: string, filter: string): void {
    this.version++;
    let p = this.partitions.get(id);
    if (p === undefined) this.partitions.set(id, (p = new RemotePartition(id)));
    if (p.filters.has(filter)) return;
    p.filters.add(filter);
    const { inner, group } = splitShared(filter);
    const node = this.nodeFor(inner);
    if (group === null) (node.remote ??= new Set()).add(p);
    else {
      node.remoteShared ??= new Map();
      let g = node.remoteShared.get(group);
      if (g === undefined) node.remoteShared.set(group, (g = new RemoteGroup(filter)));
      g.partitions.add(p);
    }
  }

  removeInterest(id: string, filter: string): void {
    this.version++;
    const p = this.partitions.get(id);
    if (p === undefined || !p.filters.delete(filter)) return;
    if (p.filters.size === 0) this.partitions.delete(id);
    const { inner, group } = splitShared(filter);
    const path = this.pathTo(inner);
    if (path === null) return;
    const node = path.node;
    if (group === null) node.remote?.delete(p);
    else {
      const g = node.remoteShared?.get(group);
      g?.partitions.delete(p);
      if (g !== undefined && g.partitions.size === 0) node.remoteShared?.delete(group);
    }
    prune(path.steps);
  }

  /** Forgets everything partition `id` subscribes to. */
  dropPartition(id: string): void {
    const p = this.partitions.get(id);
    if (p === undefined) return;
    for (const f of [...p.filters]) this.removeInterest(id, f);
    this.partitions.delete(id);
  }

  replacePartition(id: string, filters: Iterable<string>): void {
    const next = [...filters];
    this.dropPartition(id);
    for (const f of next) this.addInterest(id, f);
  }

  filters(id: string): string[] {
    const p = this.partitions.get(id);
    return p === undefined ? [] : [...p.filters];
  }

  /** The cluster's view of this index (cluster-port.ts), under the names it uses. */
  readonly remoteInterest: RemoteInterest = {
    add: (id, filter) => this.addInterest(id, filter),
    remove: (id, filter) => this.removeInterest(id, filter),
    dropPartition: (id) => this.dropPartition(id),
    replacePartition: (id, filters) => this.replacePartition(id, filters),
    filters: (id) => this.filters(id),
  };

  // ── matching ───────────────────────────────────────────────────────────────

  /**
   * Finds every subscription matching `topic`. Fills {@link matched} (each session once, with
   * `matchQos`, `matchRetainAsPublished` and `matchSubscriptionIds` set) and {@link sharedMatched}.
   * Subscriptions with no-local are skipped for the publishing client. With `remote`, also fills
   * {@link remoteMatched} (each partition elsewhere once) and {@link remoteGroups}; a message that
   * came from another node is not sent on again, so it matches without them.
   */
  match(topic: string, origin: string | undefined, remote = false): void {
    this.matched.length = 0;
    this.sharedMatched.length = 0;
    this.remoteMatched.length = 0;
    this.remoteGroups.length = 0;
    this.withRemote = remote;
    this.levels = topic.split('/');
    this.origin = origin;
    this.gen = ++this.generation;
    const dollar = topic.charCodeAt(0) === 0x24;
    this.walk(this.root, 0, dollar);
  }

  private nodeFor(filter: string): Node {
    let node = this.root;
    for (const level of filter.split('/')) {
      node.children ??= new Map();
      let child = node.children.get(level);
      if (child === undefined) {
        child = new Node();
        node.children.set(level, child);
      }
      node = child;
    }
    return node;
  }

  private pathTo(filter: string): { node: Node; steps: [Node, string][] } | null {
    const steps: [Node, string][] = [];
    let node: Node = this.root;
    for (const level of filter.split('/')) {
      const child: Node | undefined = node.children?.get(level);
      if (child === undefined) return null;
      steps.push([node, level]);
      node = child;
    }
    return { node, steps };
  }

  private walk(node: Node, depth: number, dollar: boolean): void {
    const children = node.children;
    if (children === null) return;
    const levels = this.levels;
    if (depth === levels.length) {
      // "a/#" also matches "a" [MQTT-4.7.1-2]
      const hash = children.get('#');
      if (hash !== undefined) this.collect(hash);
      return;
    }
    const exact = children.get(levels[depth] as string);
    if (exact !== undefined) {
      if (depth + 1 === levels.length) this.collect(exact);
      this.walk(exact, depth + 1, false);
    }
    if (dollar) return; // a leading wildcard never matches a $ topic [MQTT-4.7.2-1]
    const plus = children.get('+');
    if (plus !== undefined) {
      if (depth + 1 === levels.length) this.collect(plus);
      this.walk(plus, depth + 1, false);
    }
    const hash = children.get('#');
    if (hash !== undefined) this.collect(hash);
  }

  private collect(node: Node): void {
    const subscribers = node.subscribers;
    if (subscribers !== null) {
      for (const [session, sub] of subscribers) {
        if (sub.noLocal && session.key === this.origin) continue; // [MQTT-3.8.3-3]
        if (session.matchGen !== this.gen) {
          session.matchGen = this.gen;
          session.matchQos = sub.qos;
          session.matchRetainAsPublished = sub.retainAsPublished;
          session.matchSubscriptionIds = sub.subscriptionId === undefined ? undefined : [sub.subscriptionId];
          this.matched.push(session);
        } else {
          if (sub.qos > session.matchQos) session.matchQos = sub.qos;
          if (sub.retainAsPublished) session.matchRetainAsPublished = true;
          if (sub.subscriptionId !== undefined) {
            (session.matchSubscriptionIds ??= []).push(sub.subscriptionId);
          }
        }
      }
    }
    const shared = node.shared;
    if (shared !== null) {
      for (const group of shared.values()) {
        const session = group.pick();
        if (session !== undefined) this.sharedMatched.push({ session, sub: group.members.get(session) as StoredSubscription, group });
      }
    }
    if (!this.withRemote) return;
    const remote = node.remote;
    if (remote !== null) {
      for (const p of remote) {
        if (p.matchGen === this.gen) continue;
        p.matchGen = this.gen;
        this.remoteMatched.push(p);
      }
    }
    // A group's key names one filter, so one trie node: each group is found once per match.
    if (node.remoteShared !== null) for (const g of node.remoteShared.values()) this.remoteGroups.push(g);
  }
}

/** Removes the empty nodes at the end of a path (steps from the root, parent and edge). */
function prune(steps: readonly [Node, string][]): void {
  for (let i = steps.length - 1; i >= 0; i--) {
    const [parent, level] = steps[i] as [Node, string];
    const child = parent.children?.get(level);
    if (child === undefined || !child.isEmpty()) break;
    parent.children?.delete(level);
  }
}

/** `$share/g/f` → f and g; any other filter (a malformed `$share` one too) is plain, as the cluster announces it. */
function splitShared(filter: string): { inner: string; group: string | null } {
  const shared = parseShared(filter);
  if (shared === null || 'error' in shared) return { inner: filter, group: null };
  return { inner: shared.filter, group: shared.group };
}
