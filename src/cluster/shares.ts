/**
 * Which partitions have members of each `$share` group, by the group's name (`$share/g/f`).
 *
 * The router keeps the other partitions' interest by topic (one walk per publish finds local and
 * remote subscribers). A node that receives a group copy after its own last member of the group
 * left asks the other way round: which partitions still have members of this group? This index
 * answers that. It sits in front of the router's copy of the interest ({@link RemoteInterest}):
 * every change the cluster applies goes through it, so the two never differ.
 */
import type { RemoteInterest } from '../broker/cluster-port.ts';

const NONE: ReadonlySet<string> = new Set();

export class ShareIndex implements RemoteInterest {
  /** `$share/g/f` → partitions with members. */
  private readonly byGroup = new Map<string, Set<string>>();
  /** Partition → its `$share` filters (to drop or replace a partition whole). */
  private readonly byPartition = new Map<string, Set<string>>();

  constructor(private readonly inner: RemoteInterest) {}

  /** The partitions with members of group `key`, as this node knows them (a live view: copy it to keep it). */
  members(key: string): ReadonlySet<string> {
    return this.byGroup.get(key) ?? NONE;
  }

  add(partition: string, filter: string): void {
    this.inner.add(partition, filter);
    if (isShare(filter)) this.note(partition, filter);
  }

  remove(partition: string, filter: string): void {
    this.inner.remove(partition, filter);
    if (isShare(filter)) this.forget(partition, filter);
  }

  dropPartition(partition: string): void {
    this.inner.dropPartition(partition);
    this.forgetAll(partition);
  }

  replacePartition(partition: string, filters: Iterable<string>): void {
    const list = [...filters];
    this.inner.replacePartition(partition, list);
    this.forgetAll(partition);
    for (const f of list) if (isShare(f)) this.note(partition, f);
  }

  filters(partition: string): string[] {
    return this.inner.filters(partition);
  }

  private note(partition: string, key: string): void {
    let groups = this.byPartition.get(partition);
    if (groups === undefined) this.byPartition.set(partition, (groups = new Set()));
    groups.add(key);
    let members = this.byGroup.get(key);
    if (members === undefined) this.byGroup.set(key, (members = new Set()));
    members.add(partition);
  }

  private forget(partition: string, key: string): void {
    const groups = this.byPartition.get(partition);
    if (groups === undefined || !groups.delete(key)) return;
    if (groups.size === 0) this.byPartition.delete(partition);
    const members = this.byGroup.get(key);
    if (members === undefined) return;
    members.delete(partition);
    if (members.size === 0) this.byGroup.delete(key);
  }

  private forgetAll(partition: string): void {
    const groups = this.byPartition.get(partition);
    if (groups === undefined) return;
    for (const key of [...groups]) this.forget(partition, key);
  }
}

/** A filter that names a shared group; a malformed one is never a group a frame names, so it does no harm here. */
export function isShare(filter: string): boolean {
  return filter.startsWith('$share/');
}
