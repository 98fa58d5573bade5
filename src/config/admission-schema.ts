/**
 * Configuration of admission control: connection caps and the connect rate (under `limits`,
 * overridable per listener), exemptions, flapping detection and the ban file (under
 * `admission`). See docs/configuration.md and docs/bans.md.
 */
import { z } from 'zod';
import { parseCidr } from '../util/address.ts';

const cidr = z.string().superRefine((s, ctx) => {
  const r = parseCidr(s);
  if (!r.ok) ctx.addIssue({ code: 'custom', message: r.error });
});

const connectRate = z.strictObject({
  /** New connections per second per source address; 0 turns the rate limit off. */
  perSecond: z.number().min(0).max(1_000_000).default(50),
  /** How many may arrive at once before the rate applies. */
  burst: z.number().int().min(1).max(1_000_000).default(100),
});

/** Spread into the global `limits` block. */
export const connectionLimits = {
  /** Connections at once, all listeners and addresses together. */
  maxConnections: z.number().int().min(1).default(100_000),
  /** Connections at once from one source address (an IPv6 address counts by its /64, see admission.ipv6Prefix). */
  maxConnectionsPerIp: z.number().int().min(1).default(1000),
  connectRate: connectRate.prefault({}),
};

/** `listeners[i].limits`: a listener's own caps; each key replaces the global one for that listener. */
export const listenerLimits = z
  .strictObject({
    /** Connections at once on this listener (the global maxConnections still applies). */
    maxConnections: z.number().int().min(1).optional(),
    /** Connections at once from one address on this listener. With this or connectRate, the listener counts addresses on its own. */
    maxConnectionsPerIp: z.number().int().min(1).optional(),
    /** This listener's own connect rate per address, with its own bucket. */
    connectRate: z.strictObject({ perSecond: z.number().min(0).max(1_000_000), burst: z.number().int().min(1).max(1_000_000) }).optional(),
  })
  .optional();

export const admission = z
  .strictObject({
    /** Source ranges (CIDR or single addresses) exempt from the caps and the connect rate. Bans still apply. */
    exempt: z.array(cidr).default([]),
    /** IPv6 sources are counted and rate-limited by this prefix: one host usually holds a whole /64. */
    ipv6Prefix: z.number().int().min(32).max(128).default(64),
    /** Most source addresses tracked for caps and rates; idle ones are expired by one shared timer. */
    maxTrackedAddresses: z.number().int().min(100).default(100_000),
    /** Refusals at accept time are audited once per address per interval, with a count. */
    refusalAudit: z
      .strictObject({
        intervalMs: z.number().int().min(100).max(60_000).default(1000),
        /** Addresses with their own record per interval; refusals from further addresses are summed into one record. */
        maxAddresses: z.number().int().min(1).max(100_000).default(1000),
      })
      .prefault({}),
    /**
     * A client id that connects this often within the window is banned for a while. Off by
     * default: test suites, CI jobs, battery devices and health checks reconnect often and
     * normally (see docs/bans.md for why, and docs/hardening.md to turn it on).
     */
    flapping: z
      .strictObject({
        enabled: z.boolean().default(false),
        maxConnects: z.number().int().min(2).default(10),
        windowMs: z.number().int().min(100).default(60_000),
        banMs: z.number().int().min(100).default(5 * 60_000),
        /** Most client ids tracked; the oldest that are not banned are dropped beyond it. */
        maxTracked: z.number().int().min(100).default(100_000),
      })
      .prefault({}),
    bans: z
      .strictObject({
        /** The ban file ops maintain (JSON lines, see docs/bans.md). Unset: no ban file. A missing file is an empty list. */
        file: z.string().min(1).optional(),
        /** Reload the file when it changes (SIGHUP always reloads). */
        watch: z.boolean().default(true),
        /** Disconnect live clients that a newly added ban covers (v5: DISCONNECT 0x98). */
        disconnectLive: z.boolean().default(true),
      })
      .prefault({}),
  })
  .prefault({});

export type AdmissionConfig = z.output<typeof admission>;
export type ListenerLimits = NonNullable<z.output<typeof listenerLimits>>;
export interface ConnectionLimits {
  maxConnections: number;
  maxConnectionsPerIp: number;
  connectRate: { perSecond: number; burst: number };
}
