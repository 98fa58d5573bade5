/**
 * `rateLimits`: token buckets on PUBLISH, per connection and per identity (user name). Off by
 * default: a useful rate depends on the workload, and memory is already bounded by the `limits`
 * block, so a default rate would only break legitimate high-rate publishers.
 */
import { z } from 'zod';

const rate = z.number().int().min(0);

/** One bucket: a sustained rate and a burst, in messages and in bytes. 0 turns that dimension off. */
const bucket = z
  .strictObject({
    /** Sustained PUBLISH packets per second; 0: unlimited. */
    messagesPerSecond: rate.default(0),
    /** Sustained PUBLISH payload + topic bytes per second; 0: unlimited. */
    bytesPerSecond: rate.default(0),
    /** Messages that may arrive at once on a full bucket; default: one second's worth. */
    burstMessages: z.number().int().min(1).optional(),
    /** Bytes that may arrive at once on a full bucket; default: one second's worth. */
    burstBytes: z.number().int().min(1).optional(),
  })
  .superRefine((b, ctx) => {
    if (b.burstMessages !== undefined && b.messagesPerSecond === 0) {
      ctx.addIssue({ code: 'custom', path: ['burstMessages'], message: 'needs messagesPerSecond above 0' });
    }
    if (b.burstBytes !== undefined && b.bytesPerSecond === 0) {
      ctx.addIssue({ code: 'custom', path: ['burstBytes'], message: 'needs bytesPerSecond above 0' });
    }
  })
  .prefault({});

export const rateLimits = z
  .strictObject({
    /** Each connection's own bucket. */
    perClient: bucket,
    /** One bucket shared by every connection of the same user name (anonymous clients have none). */
    perIdentity: bucket,
    /**
     * MQTT 5 clients over the limit: 'reject' answers QoS 1/2 with PUBACK/PUBREC 0x96 and drops
     * QoS 0; 'throttle' stops reading the socket until the bucket refills; 'disconnect' sends
     * DISCONNECT 0x96.
     */
    v5Action: z.enum(['reject', 'throttle', 'disconnect']).default('reject'),
    /** MQTT 3.1/3.1.1 clients over the limit: 'throttle' (backpressure, nothing lost) or 'disconnect'. */
    v3Action: z.enum(['throttle', 'disconnect']).default('throttle'),
    /** Most identity buckets at once; identities beyond it share one overflow bucket. */
    maxIdentities: z.number().int().min(1).default(100_000),
  })
  .prefault({});

export type RateLimitsConfig = z.output<typeof rateLimits>;
