/**
 * Flapping detection: a client id that gets through authentication `maxConnects` times within
 * `windowMs` (a reconnect loop, or two devices fighting over one client id by taking the
 * session from each other) is banned for `banMs`. The connection that reached the limit stays;
 * the next attempts are refused with 0x8A (v3.1.1: return code 5) until the ban expires.
 * Only authenticated connects count, so a stranger cannot get a device banned by reusing its
 * client id without credentials.
 */
interface Entry {
  /** Connect times within the window, oldest first (at most maxConnects). */
  times: number[];
  bannedUntil: number;
}

export interface FlappingSettings {
  maxConnects: number;
  windowMs: number;
  banMs: number;
  maxTracked: number;
}

export interface FlappingBan {
  clientId: string;
  until: number;
}

/** FlappingDetector.check: not banned, because the ban has just expired (report it). */
export const EXPIRED_NOW = -1;

export class FlappingDetector {
  /** In order of last activity, least recent first (a touched entry is deleted and set again). */
  private readonly entries = new Map<string, Entry>();
  /**
   * Where eviction goes on from: a live iterator over `entries`, so each eviction starts where the
   * last one stopped. Starting from the front every time walked over every entry deleted since
   * the table was last compacted: with 100,000 client ids tracked and a stream of new ones, that
   * was a tenth of the broker's CPU per connect.
   */
  private cursor: MapIterator<[string, Entry]> | undefined;
  /** Client ids with a ban (running, or expired and not reported yet). */
  private readonly banned = new Set<string>();

  constructor(
    private readonly settings: FlappingSettings,
    private readonly now: () => number = Date.now,
  ) {}

  get tracked(): number {
    return this.entries.size;
  }

  /**
   * One look-up per CONNECT: the ban's end (epoch ms) when the client id is banned; 0 when it is
   * not; EXPIRED_NOW when it is not because its ban has just expired, which is reported once
   * (here, or by the sweep).
   */
  check(clientId: string): number {
    const e = this.entries.get(clientId);
    if (e === undefined || e.bannedUntil === 0) return 0;
    if (e.bannedUntil > this.now()) return e.bannedUntil;
    e.bannedUntil = 0;
    this.banned.delete(clientId);
    return EXPIRED_NOW;
  }

  /** Counts an authenticated connect; returns the ban when this connect reached the limit. */
  connected(clientId: string): FlappingBan | undefined {
    const now = this.now();
    let e = this.entries.get(clientId);
    if (e === undefined) {
      e = { times: [], bannedUntil: 0 };
      this.entries.set(clientId, e);
      this.evict();
    } else {
      // Most recently active last: eviction and the sweep take the least recently seen first.
      this.entries.delete(clientId);
      this.entries.set(clientId, e);
    }
    const since = now - this.settings.windowMs;
    while (e.times.length > 0 && (e.times[0] as number) <= since) e.times.shift();
    e.times.push(now);
    if (e.times.length < this.settings.maxConnects) return undefined;
    e.times = [];
    e.bannedUntil = now + this.settings.banMs;
    this.banned.add(clientId);
    return { clientId, until: e.bannedUntil };
  }

  /**
   * Drops idle entries and returns the client ids whose ban has just expired. Entries are in order
   * of last activity, so the walk stops at the first one still inside the window: it costs the
   * entries it drops (and bans it passes), not the whole table.
   */
  sweep(): string[] {
    const now = this.now();
    const expired: string[] = [];
    for (const id of this.banned) {
      const e = this.entries.get(id);
      if (e === undefined) {
        // Evicted, which only happens to a ban that has expired: report it all the same.
        expired.push(id);
        this.banned.delete(id);
      } else if (e.bannedUntil <= now) {
        expired.push(id);
        e.bannedUntil = 0;
        this.banned.delete(id);
      }
    }
    const idleBefore = now - this.settings.windowMs;
    for (const [id, e] of this.entries) {
      if (e.bannedUntil !== 0) continue; // a live ban: kept, wherever it is
      const last = e.times.length === 0 ? 0 : (e.times[e.times.length - 1] as number);
      if (last > idleBefore) break; // this one and every later one were active within the window
      this.entries.delete(id);
    }
    return expired;
  }

  private evict(): void {
    if (this.entries.size <= this.settings.maxTracked) return;
    const now = this.now();
    // Entries before the cursor are bans (kept) or were deleted; everything set since is after it.
    // At the end it starts over from the front, once per call at most, so a table full of bans
    // costs one pass, not a loop.
    let restarted = false;
    while (this.entries.size > this.settings.maxTracked) {
      let next = this.cursor?.next();
      if (next === undefined || next.done === true) {
        if (restarted) return;
        restarted = true;
        this.cursor = this.entries.entries();
        next = this.cursor.next();
        if (next.done === true) return;
      }
      const [id, e] = next.value;
      if (e.bannedUntil > now) continue; // bans are kept
      this.entries.delete(id);
    }
  }
}
