import type { QoS } from '../protocol/codec.ts';
import type { StoredMessage } from '../store/types.ts';

/**
 * An application message in flight through the broker. `encoded` caches the serialized PUBLISH
 * per protocol family, QoS and retain flag, so a message is encoded once and written to many
 * subscribers.
 */
export interface Message extends StoredMessage {
  encoded?: (Buffer | undefined)[];
  /** Bytes it counts for in queues and quotas (see messageSize); computed once. */
  size?: number;
  /** Whose quota a retained copy of it counts against (see quotas.ts); not stored. */
  quotaKey?: string;
  /** In a cluster: the node that routed it first and its sequence there (see cluster-port.ts); not stored. */
  stamp?: Stamp;
}

/** Where a message entered the cluster: a node (its id and run) and that node's count of routed messages. */
export interface Stamp {
  readonly node: string;
  readonly seq: number;
}

/**
 * What a message costs to keep: topic, payload and v5 properties as encoded (the PUBLISH's
 * fixed fields aside). Queue limits and quotas count this, so user properties cannot be used to
 * hold far more memory than the limits say.
 */
export function messageSize(message: Message): number {
  if (message.size !== undefined) return message.size;
  let n = Buffer.byteLength(message.topic) + message.payload.length;
  const p = message.properties;
  if (p !== undefined) {
    for (const key in p) {
      const v = (p as Record<string, unknown>)[key];
      if (v === undefined) continue;
      if (key === 'userProperties') {
        for (const [k, vs] of Object.entries(v as Record<string, string | string[]>)) {
          for (const x of Array.isArray(vs) ? vs : [vs]) n += 5 + Buffer.byteLength(k) + Buffer.byteLength(String(x));
        }
      } else if (typeof v === 'string') n += 3 + Buffer.byteLength(v);
      else if (Buffer.isBuffer(v)) n += 3 + v.length;
      else n += 5;
    }
  }
  message.size = n;
  return n;
}

/** The message without what only this process uses (encodings, size, quota owner): what the store keeps. */
export function forStore(message: Message): StoredMessage {
  if (message.encoded === undefined && message.size === undefined && message.quotaKey === undefined && message.stamp === undefined) return message;
  const { encoded: _e, size: _s, quotaKey: _q, stamp: _t, ...rest } = message;
  return rest;
}

/**
 * What the store keeps of a delivery of `message` at `qos` with `retain`: {@link forStore} with
 * those two set, built field by field in one object (the store gets one per queued and in-flight
 * delivery; a rest copy and a spread were two, in slow dictionary form).
 */
export function storedAs(message: Message, qos: QoS, retain: boolean): StoredMessage {
  const out: StoredMessage = { topic: message.topic, payload: message.payload, qos, retain };
  if (message.properties !== undefined) out.properties = message.properties;
  if (message.expiresAt !== undefined) out.expiresAt = message.expiresAt;
  if (message.origin !== undefined) out.origin = message.origin;
  if (message.subscriptionIds !== undefined) out.subscriptionIds = message.subscriptionIds;
  return out;
}

/** Index into {@link Message.encoded}: v3.1/3.1.1 share one encoding, v5 has its own. */
export function encodingSlot(v5: boolean, qos: number, retain: boolean): number {
  return (v5 ? 6 : 0) + qos * 2 + (retain ? 1 : 0);
}

export function isExpired(message: StoredMessage, now: number): boolean {
  return message.expiresAt !== undefined && message.expiresAt <= now;
}
