/**
 * Serializes a PUBLISH for one connection. Messages without per-subscriber fields are encoded
 * once per protocol family, QoS and retain flag and the bytes are shared by every subscriber;
 * only QoS 1/2 copies get their packet id patched in.
 */
import { encode, encodeBarePublish, withPacketId, type PublishPacket, type PublishProperties, type QoS } from '../protocol/codec.ts';
import type { Client } from './ports.ts';
import { encodingSlot, type Message } from './message.ts';

export function encodePublish(
  conn: Client,
  message: Message,
  qos: QoS,
  retain: boolean,
  subscriptionIds: number[] | undefined,
  now: number,
): Buffer {
  const v5 = conn.version === 5;
  if (!v5 || (subscriptionIds === undefined && conn.outboundAliasMaximum === 0 && message.expiresAt === undefined)) {
    const slot = encodingSlot(v5, qos, retain);
    const cache = (message.encoded ??= []);
    let buf = cache[slot];
    if (buf === undefined) {
      buf =
        !v5 || message.properties === undefined
          ? encodeBarePublish(message.topic, message.payload, qos, retain, conn.version)
          : encode(packetOf(message.topic, message, qos, retain, message.properties), 5);
      cache[slot] = buf;
    }
    return buf;
  }
  const properties: PublishProperties = { ...message.properties };
  if (message.expiresAt !== undefined) {
    // What is left of the interval [MQTT-3.3.2-6]; never more than the publisher set.
    const left = Math.max(1, Math.ceil((message.expiresAt - now) / 1000));
    const set = message.properties?.messageExpiryInterval;
    properties.messageExpiryInterval = set !== undefined && set < left ? set : left;
  } else delete properties.messageExpiryInterval;
  if (subscriptionIds !== undefined) {
    properties.subscriptionIdentifier = subscriptionIds.length === 1 ? (subscriptionIds[0] as number) : subscriptionIds;
  }
  let topic = message.topic;
  if (conn.outboundAliasMaximum > 0) {
    const aliases = (conn.outboundAliases ??= new Map());
    const alias = aliases.get(topic);
    if (alias !== undefined) {
      properties.topicAlias = alias;
      topic = '';
    } else if (aliases.size < conn.outboundAliasMaximum) {
      const next = aliases.size + 1;
      properties.topicAlias = next;
      const buf = encode(packetOf(topic, message, qos, retain, properties), 5);
      // The alias exists for the client only if this packet reaches it.
      if (buf.length <= conn.clientMaxPacketSize) aliases.set(topic, next);
      return buf;
    }
  }
  return encode(packetOf(topic, message, qos, retain, properties), 5);
}

function packetOf(topic: string, message: Message, qos: QoS, retain: boolean, properties: PublishProperties): PublishPacket {
  const packet: PublishPacket = { cmd: 'publish', topic, payload: message.payload, qos, retain, dup: false, properties };
  if (qos > 0) packet.messageId = 1;
  return packet;
}

export { withPacketId };
