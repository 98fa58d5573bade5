/**
 * Support for the limit tests: raw sessions, v5 packets carrying user properties (which the
 * shared raw encoders do not build), and small waiting helpers.
 */
import type { ExecutionContext } from 'ava';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { delay, rawConnect, type RawClient } from './helpers.ts';
import { PacketType, decodeConnack, encodeConnect, encodeString, encodeVarint, frame, waitForType, type ConnectOptions } from './raw-mqtt.ts';

export async function until(cond: () => boolean, ms = 6000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() >= end) return false;
    await delay(10);
  }
  return true;
}

/** A raw socket that has sent CONNECT and received CONNACK (or was closed without one). */
export async function rawSession(t: ExecutionContext, port: number, connect: ConnectOptions | Buffer): Promise<{ r: RawClient; connack: { sessionPresent: boolean; code: number } | undefined }> {
  const r = await rawConnect(port);
  t.teardown(() => {
    r.socket.destroy();
  });
  r.write(Buffer.isBuffer(connect) ? connect : encodeConnect(connect));
  const [ack] = await waitForType(r, PacketType.CONNACK, 1, 6000);
  return { r, connack: ack === undefined ? undefined : decodeConnack(ack) };
}

/** An mqtt.js client that records every message; ended at teardown. */
export function openClient(t: ExecutionContext, port: number, options: IClientOptions = {}): Promise<{ client: MqttClient; messages: { topic: string; payload: Buffer; qos: number }[] }> {
  return new Promise((resolve, reject) => {
    const messages: { topic: string; payload: Buffer; qos: number }[] = [];
    const client = mqtt.connect({ host: '127.0.0.1', port, reconnectPeriod: 0, connectTimeout: 5000, ...options });
    t.teardown(() => {
      client.end(true);
    });
    client.on('message', (topic, payload, packet) => messages.push({ topic, payload, qos: packet.qos }));
    client.once('connect', () => resolve({ client, messages }));
    client.once('error', reject);
    client.once('close', () => reject(new Error('closed before CONNACK')));
  });
}

/** `n` user properties (0x26), keys k0..k(n-1), as the body of a v5 property block with its length. */
export function userPropertyBlock(n: number): Buffer {
  const parts: Buffer[] = [];
  for (let i = 0; i < n; i++) parts.push(Buffer.from([0x26]), encodeString(`k${i}`), encodeString('v'));
  const body = Buffer.concat(parts);
  return Buffer.concat([encodeVarint(body.length), body]);
}

/** A v5 CONNECT whose own properties and/or will properties carry `n` user properties. */
export function connectWithUserProperties(clientId: string, n: number, where: 'connect' | 'will'): Buffer {
  const empty = Buffer.from([0x00]);
  const flags = 0x02 | (where === 'will' ? 0x04 : 0);
  const parts: Buffer[] = [encodeString('MQTT'), Buffer.from([5, flags, 0x00, 0x3c]), where === 'connect' ? userPropertyBlock(n) : empty, encodeString(clientId)];
  if (where === 'will') parts.push(userPropertyBlock(n), encodeString('will/t'), encodeString('bye'));
  return frame(PacketType.CONNECT, 0, Buffer.concat(parts));
}

/** A v5 QoS 1 PUBLISH with `n` user properties. */
export function publishWithUserProperties(topic: string, packetId: number, n: number): Buffer {
  const id = Buffer.alloc(2);
  id.writeUInt16BE(packetId);
  return frame(PacketType.PUBLISH, 0x02, Buffer.concat([encodeString(topic), id, userPropertyBlock(n), Buffer.from('payload')]));
}

/** A v5 SUBSCRIBE of one filter at QoS 0 with `n` user properties. */
export function subscribeWithUserProperties(filter: string, packetId: number, n: number): Buffer {
  const id = Buffer.alloc(2);
  id.writeUInt16BE(packetId);
  return frame(PacketType.SUBSCRIBE, 0x02, Buffer.concat([id, userPropertyBlock(n), encodeString(filter), Buffer.from([0x00])]));
}

/** A v5 UNSUBSCRIBE of one filter with `n` user properties. */
export function unsubscribeWithUserProperties(filter: string, packetId: number, n: number): Buffer {
  const id = Buffer.alloc(2);
  id.writeUInt16BE(packetId);
  return frame(PacketType.UNSUBSCRIBE, 0x02, Buffer.concat([id, userPropertyBlock(n), encodeString(filter)]));
}

/** The reason codes of a SUBACK body (after the packet id, and for v5 the property block). */
export function subackCodes(body: Buffer, v5: boolean): number[] {
  if (!v5) return [...body.subarray(2)];
  let off = 2;
  let len = 0;
  let mul = 1;
  for (;;) {
    const d = body[off++] as number;
    len += (d & 0x7f) * mul;
    mul *= 128;
    if ((d & 0x80) === 0) break;
  }
  return [...body.subarray(off + len)];
}
