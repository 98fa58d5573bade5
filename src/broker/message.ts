import type { StoredMessage } from '../store/types.ts';

/**
 * An application message in flight through the broker. `encoded` caches the serialized PUBLISH
 * per protocol family, QoS and retain flag, so a message is encoded once and written to many
 * subscribers.
 */
export interface Message extends StoredMessage {
  encoded?: (Buffer | undefined)[];
}

/** Index into {@link Message.encoded}: v3.1/3.1.1 share one encoding, v5 has its own. */
export function encodingSlot(v5: boolean, qos: number, retain: boolean): number {
  return (v5 ? 6 : 0) + qos * 2 + (retain ? 1 : 0);
}

export function isExpired(message: StoredMessage, now: number): boolean {
  return message.expiresAt !== undefined && message.expiresAt <= now;
}
