/**
 * The subscription trie. Topic levels are edges; `+` and `#` are ordinary edges matched
 * specially. A publish walks the trie once and marks each matching session with the highest
 * QoS and every subscription identifier, so overlapping subscriptions deliver one copy.
 */
import type { StoredSubscription } from '../store/types.ts';
import type { Session, SharedTarget } from './session.ts';

class Node {
  children: Map<string, Node> | null = null;
  subscribers: Map<Session, StoredSubscription> | null = null;
  shared: Map<string, SharedGroup> | null = null;

  isEmpty(): boolean {
    return (
      (this.children === null || this.children.size === 0) &&
      (this.subscribers === null || this.subscribers.size === 0) &&
      (this.shared === null || this.shared.size === 0)
    );
  }
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

export class Router {
  private readonly root = new Node();
  private generation = 0;
  /** Reused per publish: the sessions matched by the last {@link match}. */
  readonly matched: Session[] = [];
  readonly sharedMatched: SharedPick[] = [];
  private levels: string[] = [];
  private origin: string | undefined;
  private gen = 0;

  add(session: Session, filter: string, sub: StoredSubscription, group?: string): void {
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
    const path: [Node, string][] = [];
    let node: Node | undefined = this.root;
    for (const level of filter.split('/')) {
      const child: Node | undefined = node.children?.get(level);
      if (child === undefined) return;
      path.push([node, level]);
      node = child;
    }
    if (group === undefined) node.subscribers?.delete(session);
    else {
      const g = node.shared?.get(group);
      g?.remove(session);
      if (g !== undefined && g.members.size === 0) node.shared?.delete(group);
    }
    // prune empty branches
    for (let i = path.length - 1; i >= 0; i--) {
      const [parent, level] = path[i] as [Node, string];
      const child = parent.children?.get(level);
      if (child === undefined || !child.isEmpty()) break;
      parent.children?.delete(level);
    }
  }

  /**
   * Finds every subscription matching `topic`. Fills {@link matched} (each session once, with
   * `matchQos`, `matchRetainAsPublished` and `matchSubscriptionIds` set) and {@link sharedMatched}.
   * Subscriptions with no-local are skipped for the publishing client.
   */
  match(topic: string, origin: string | undefined): void {
    this.matched.length = 0;
    this.sharedMatched.length = 0;
    this.levels = topic.split('/');
    this.origin = origin;
    this.gen = ++this.generation;
    const dollar = topic.charCodeAt(0) === 0x24;
    this.walk(this.root, 0, dollar);
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
  }
}
