/**
 * Filters by owner, as one trie: a match gives every owner with a filter matching a topic. An
 * adopted partition (offline.ts) keeps its sessions' filters here, each filter its own owner, to
 * find which of them a message matches. (The other partitions' interest, which every publish
 * is matched against, lives in the broker's router instead: one walk for local and remote.)
 *
 * `$share/{group}/{filter}` entries are kept under `filter` by the group's full name.
 */
import { parseShared } from '../protocol/topic.ts';

class Node {
  children: Map<string, Node> | null = null;
  /** Partitions with a plain subscription on exactly this filter. */
  plain: Set<string> | null = null;
  /** `$share/g/filter` → partitions with members. */
  shared: Map<string, Set<string>> | null = null;
}

/** The result of {@link InterestTable.match}, reused from one match to the next. */
export interface InterestMatch {
  /** Partitions with a plain subscriber. */
  readonly plain: Set<string>;
  /** Shared groups (by `$share/g/f`) and the partitions with members. */
  readonly groups: Map<string, Set<string>>;
}

export class InterestTable {
  private readonly root = new Node();
  /** Partition → its filters (to drop a partition whole, and to count). */
  private readonly byPartition = new Map<string, Set<string>>();
  private readonly result = { plain: new Set<string>(), groups: new Map<string, Set<string>>() };
  private levels: string[] = [];

  get partitions(): number {
    return this.byPartition.size;
  }

  /** The filters a partition has, as this node knows them. */
  filters(p: string): ReadonlySet<string> {
    return this.byPartition.get(p) ?? EMPTY;
  }

  add(p: string, filter: string): void {
    let set = this.byPartition.get(p);
    if (set === undefined) this.byPartition.set(p, (set = new Set()));
    if (set.has(filter)) return;
    set.add(filter);
    const { inner, group } = split(filter);
    const node = this.walkTo(inner, true) as Node;
    if (group === null) (node.plain ??= new Set()).add(p);
    else {
      node.shared ??= new Map();
      let members = node.shared.get(filter);
      if (members === undefined) node.shared.set(filter, (members = new Set()));
      members.add(p);
    }
  }

  remove(p: string, filter: string): void {
    const set = this.byPartition.get(p);
    if (set === undefined || !set.delete(filter)) return;
    if (set.size === 0) this.byPartition.delete(p);
    const { inner, group } = split(filter);
    const node = this.walkTo(inner, false);
    if (node === undefined) return;
    if (group === null) node.plain?.delete(p);
    else {
      const members = node.shared?.get(filter);
      members?.delete(p);
      if (members !== undefined && members.size === 0) node.shared?.delete(filter);
    }
    // Empty branches are left: filters come back, and a node's set of filters is bounded by its subscriptions.
  }

  /** Forgets a partition (it ended). */
  dropPartition(p: string): void {
    for (const f of [...this.filters(p)]) this.remove(p, f);
    this.byPartition.delete(p);
  }

  /** Replaces what is known of a partition. */
  replacePartition(p: string, filters: Iterable<string>): void {
    this.dropPartition(p);
    for (const f of filters) this.add(p, f);
  }

  /** Every partition with a subscriber matching `topic`. The result is reused by the next call. */
  match(topic: string): InterestMatch {
    const r = this.result;
    r.plain.clear();
    r.groups.clear();
    this.levels = topic.split('/');
    this.walk(this.root, 0, topic.charCodeAt(0) === 0x24);
    return r;
  }

  private walkTo(filter: string, create: boolean): Node | undefined {
    let node = this.root;
    for (const level of filter.split('/')) {
      let child = node.children?.get(level);
      if (child === undefined) {
        if (!create) return undefined;
        node.children ??= new Map();
        node.children.set(level, (child = new Node()));
      }
      node = child;
    }
    return node;
  }

  private walk(node: Node, depth: number, dollar: boolean): void {
    const children = node.children;
    if (children === null) return;
    const levels = this.levels;
    if (depth === levels.length) {
      const hash = children.get('#');
      if (hash !== undefined) this.collect(hash); // "a/#" also matches "a"
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
    const r = this.result;
    if (node.plain !== null) for (const p of node.plain) r.plain.add(p);
    if (node.shared !== null) {
      for (const [key, members] of node.shared) {
        let set = r.groups.get(key);
        if (set === undefined) r.groups.set(key, (set = new Set()));
        for (const p of members) set.add(p);
      }
    }
  }
}

const EMPTY: ReadonlySet<string> = new Set();

function split(filter: string): { inner: string; group: string | null } {
  const shared = parseShared(filter);
  if (shared === null || 'error' in shared) return { inner: filter, group: null };
  return { inner: shared.filter, group: shared.group };
}
