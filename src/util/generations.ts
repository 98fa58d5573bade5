/**
 * A map bounded by two generations. New and touched keys go to the young one; when it holds half
 * the bound and a new key comes, the old one is dropped whole and the young one becomes the old.
 * Every operation is O(1) and nothing iterates: evicting from the front of one Map and asking for its first key again
 * scans the holes left by earlier deletes, which makes a churning map quadratic (with 100,000
 * entries, about 25 µs per insert once full). What is dropped is, roughly, what was touched least
 * recently. The map never holds more than `max` entries.
 *
 * Used by the failed-login guard's tables, the authorizer's shared-group decisions, the verified
 * credential and token caches, and the operations listener's login throttle and bearer-token
 * cache: all of them see keys an attacker chooses.
 */
export class Generations<V> {
  private young = new Map<string, V>();
  private old = new Map<string, V>();
  /** Entries a generation holds at most. */
  private readonly half: number;
  /** With a bound of 1 there is no room for an old generation. */
  private readonly keepOld: boolean;

  constructor(max: number) {
    this.half = Math.max(1, Math.floor(max / 2));
    this.keepOld = max >= 2;
  }

  /** The value, without touching it (it ages as it would untouched). */
  get(key: string): V | undefined {
    const v = this.young.get(key);
    return v !== undefined ? v : this.old.get(key);
  }

  /**
   * The value, touched: an entry found in the old generation moves to the young one, so what is
   * used keeps surviving the swaps (a cache's LRU-like behaviour). A hit in the young generation
   * costs one lookup and changes nothing.
   */
  use(key: string): V | undefined {
    const v = this.young.get(key);
    if (v !== undefined) return v;
    const o = this.old.get(key);
    if (o !== undefined) {
      this.old.delete(key);
      this.setYoung(key, o);
    }
    return o;
  }

  /** Sets the key in the young generation (taking it out of the old one). */
  set(key: string, value: V): void {
    if (this.old.size > 0) this.old.delete(key);
    this.setYoung(key, value);
  }

  delete(key: string): void {
    if (!this.young.delete(key)) this.old.delete(key);
  }

  clear(): void {
    this.young = new Map();
    this.old = new Map();
  }

  get size(): number {
    return this.young.size + this.old.size;
  }

  /** Deletes the entries `drop` picks (the guard's sweep). */
  deleteWhere(drop: (value: V, key: string) => boolean): void {
    for (const m of [this.old, this.young]) for (const [k, v] of m) if (drop(v, k)) m.delete(k);
  }

  /** Swaps before a new key would make the young generation exceed `half`: at most 2 × half ≤ max entries. */
  private setYoung(key: string, value: V): void {
    if (this.young.size >= this.half && !this.young.has(key)) {
      this.old = this.keepOld ? this.young : new Map();
      this.young = new Map();
    }
    this.young.set(key, value);
  }
}
