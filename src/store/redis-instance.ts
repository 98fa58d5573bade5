/**
 * Which broker uses a Redis store, and whether the last one closed it cleanly.
 *
 * Each broker on a Redis store has an instance name (`store.instance`, default `default`; brokers
 * sharing one Redis each need their own). Two keys per name:
 * - `{instance:<name>}:alive`, a lease naming the holder (pid, host, start), set with a TTL and
 *   renewed while the broker runs: a second broker with the same name is refused while it lives.
 *   A lease of a process of this host that has ended (kill -9) is taken over at once; one of
 *   another host only when its TTL runs out.
 * - `{instance:<name>}`, set at open and removed by a clean close: found at the next open, it says
 *   the last broker of that name stopped without closing (crash, kill -9, power cut), so the
 *   broker publishes the wills it still owed (docs/persistence.md).
 */
import fs from 'node:fs';
import os from 'node:os';
import { StoreError } from './errors.ts';
import type { RedisLink } from './redis-client.ts';
import type { RedisKeys } from './redis-keys.ts';
import { RELEASE_INSTANCE, RENEW_INSTANCE } from './redis-scripts.ts';

export interface InstanceHolder {
  pid: number;
  host: string;
  since: string;
  procStart?: string;
}

const LEASE_MS = 15_000;

/** Instances held by this process (by target, prefix and name): a second store here is refused too. */
const heldHere = new Set<string>();

function procStart(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** Whether a holder on this host still runs (the same pid started at the same time). */
function runningHere(h: InstanceHolder): boolean {
  if (h.pid === process.pid) return false;
  try {
    process.kill(h.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  if (h.procStart === undefined) return true;
  const now = procStart(h.pid);
  return now === undefined || now === h.procStart;
}

function parse(value: unknown): InstanceHolder | undefined {
  if (!Buffer.isBuffer(value)) return undefined;
  try {
    const h = JSON.parse(value.toString('utf8')) as Partial<InstanceHolder>;
    if (typeof h.pid === 'number' && typeof h.host === 'string' && typeof h.since === 'string') return h as InstanceHolder;
  } catch {
    // not ours
  }
  return undefined;
}

export class InstanceLease {
  private timer: NodeJS.Timeout | null = null;

  private constructor(
    private readonly link: RedisLink,
    private readonly keys: { open: string; alive: string },
    private readonly me: string,
    private readonly id: string,
    /** The last holder of the name, when it did not close cleanly. */
    readonly unclean: InstanceHolder | undefined,
  ) {}

  static async acquire(link: RedisLink, redisKeys: RedisKeys, name: string): Promise<InstanceLease> {
    const id = `${link.target}\u0000${redisKeys.prefix}\u0000${name}`;
    if (heldHere.has(id)) throw new StoreError('ERR_STORE_LOCKED', `the Redis store ${link.target} (prefix ${redisKeys.prefix}, instance ${name}) is already open in this process`, link.target);
    const keys = redisKeys.instance(name);
    const holder: InstanceHolder = { pid: process.pid, host: os.hostname(), since: new Date().toISOString() };
    const start = procStart(process.pid);
    if (start !== undefined) holder.procStart = start;
    const me = JSON.stringify(holder);
    const set = await link.write('take the instance lease', me.length, 'set', keys.alive, me, 'PX', LEASE_MS, 'NX');
    if (set === null) {
      const raw = await link.read('read the instance lease', 'get', keys.alive);
      const other = parse(raw);
      if (other !== undefined && (other.host !== holder.host || runningHere(other))) {
        const ttl = await link.read('read the instance lease', 'pttl', keys.alive);
        throw new StoreError(
          'ERR_STORE_LOCKED',
          `cannot start: the Redis store ${link.target} (prefix ${redisKeys.prefix}) is in use by instance '${name}', process ${other.pid} on ${other.host} (since ${other.since}); each broker on one Redis needs its own store.instance${typeof ttl === 'number' && ttl > 0 ? ` (if that broker is gone, its lease ends in ${Math.ceil(ttl / 1000)} s)` : ''}`,
          link.target,
        );
      }
      await link.write('take the instance lease', me.length, 'set', keys.alive, me, 'PX', LEASE_MS);
    }
    const last = await link.read('read the instance marker', 'get', keys.open);
    const unclean = last === null ? undefined : (parse(last) ?? { pid: 0, host: 'unknown', since: 'unknown' });
    await link.write('mark the instance open', me.length, 'set', keys.open, me);
    const lease = new InstanceLease(link, keys, me, id, unclean);
    heldHere.add(id);
    lease.timer = setInterval(() => void lease.renew(), LEASE_MS / 3);
    lease.timer.unref();
    return lease;
  }

  private async renew(): Promise<void> {
    try {
      await this.link.writeScript('renew the instance lease', RENEW_INSTANCE, [this.keys.alive], [this.me, LEASE_MS]);
    } catch {
      // Redis is away: renewed at the next tick; the marker (no TTL) still says we are open.
    }
  }

  /** A clean close: removes the marker and the lease (if still ours). */
  async release(clean: boolean): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    heldHere.delete(this.id);
    if (clean) await this.link.writeScript('release the instance', RELEASE_INSTANCE, [this.keys.open, this.keys.alive], [this.me]);
  }
}
