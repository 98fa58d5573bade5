/** Retained messages, in a topic trie so a subscribe visits only the branches its filter can reach. */
import { messageSize, type Message } from './message.ts';

class Node {
  children: Map<string, Node> | null = null;
  message: Message | null = null;
}

export class RetainedMessages {
  private readonly root = new Node();
  private count = 0;
  private totalBytes = 0;

  get size(): number {
    return this.count;
  }

  /** What the retained messages count for (topic, payload, properties; see messageSize). */
  get bytes(): number {
    return this.totalBytes;
  }

  /** The retained message of a topic, if any. */
  get(topic: string): Message | undefined {
    let node: Node | undefined = this.root;
    for (const level of topic.split('/')) {
      node = node.children?.get(level);
      if (node === undefined) return undefined;
    }
    return node.message ?? undefined;
  }

  /**
   * Sets, replaces, or (with an empty payload) clears the retained message of a topic
   * [MQTT-3.3.1-5..7]. Returns the message it replaced or cleared.
   */
  set(message: Message): Message | undefined {
    const levels = message.topic.split('/');
    if (message.payload.length === 0) return this.clear(levels);
    let node = this.root;
    for (const level of levels) {
      node.children ??= new Map();
      let child = node.children.get(level);
      if (child === undefined) {
        child = new Node();
        node.children.set(level, child);
      }
      node = child;
    }
    const previous = node.message;
    if (previous === null) this.count++;
    else this.totalBytes -= messageSize(previous);
    this.totalBytes += messageSize(message);
    node.message = message;
    return previous ?? undefined;
  }

  private clear(levels: string[]): Message | undefined {
    const path: [Node, string][] = [];
    let node: Node = this.root;
    for (const level of levels) {
      const child = node.children?.get(level);
      if (child === undefined) return undefined;
      path.push([node, level]);
      node = child;
    }
    const previous = node.message;
    if (previous !== null) {
      this.count--;
      this.totalBytes -= messageSize(previous);
    }
    node.message = null;
    for (let i = path.length - 1; i >= 0; i--) {
      const [parent, level] = path[i] as [Node, string];
      const child = parent.children?.get(level) as Node;
      if (child.message !== null || (child.children !== null && child.children.size > 0)) break;
      parent.children?.delete(level);
    }
    return previous ?? undefined;
  }

  /** Calls `visit` for every retained message whose topic matches `filter`. */
  match(filter: string, visit: (message: Message) => void): void {
    this.walk(this.root, filter.split('/'), 0, visit);
  }

  private walk(node: Node, levels: string[], depth: number, visit: (message: Message) => void): void {
    if (depth === levels.length) {
      if (node.message !== null) visit(node.message);
      return;
    }
    const level = levels[depth] as string;
    const children = node.children;
    if (level === '#') {
      if (node.message !== null && depth > 0) visit(node.message); // "a/#" matches "a"
      if (children !== null) {
        for (const [name, child] of children) {
          if (depth === 0 && name.startsWith('$')) continue;
          this.visitAll(child, visit);
        }
      }
      return;
    }
    if (children === null) return;
    if (level === '+') {
      for (const [name, child] of children) {
        if (depth === 0 && name.startsWith('$')) continue;
        this.walk(child, levels, depth + 1, visit);
      }
      return;
    }
    const child = children.get(level);
    if (child !== undefined) this.walk(child, levels, depth + 1, visit);
  }

  private visitAll(node: Node, visit: (message: Message) => void): void {
    if (node.message !== null) visit(node.message);
    if (node.children !== null) for (const child of node.children.values()) this.visitAll(child, visit);
  }

  all(): Message[] {
    const out: Message[] = [];
    this.visitAll(this.root, (m) => out.push(m));
    return out;
  }
}
