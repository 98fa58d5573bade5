/**
 * One raw-socket MQTT 3.1.1 client of the load generator: connects, subscribes, and hands every
 * received PUBLISH / PUBACK to callbacks. No mqtt.js, no per-packet objects.
 */
import net from 'node:net';
import { DISCONNECT, FrameReader, PacketType, encodeConnect, encodeSubscribe, type ReceivedPublish } from './mqtt.ts';

export interface ClientCallbacks {
  onPublish?: (p: ReceivedPublish) => void;
  onPuback?: (packetId: number) => void;
  /** Called once per socket chunk, after every packet in it was handled. */
  onChunkDone?: () => void;
}

export class BenchClient {
  readonly socket: net.Socket;
  private readonly reader: FrameReader;
  private waiter: { type: number; resolve: (body: Buffer) => void; reject: (e: Error) => void } | null = null;
  private error: Error | null = null;
  private closedByUs = false;
  /** Set when the connection failed or closed unexpectedly. */
  onFailure: (err: Error) => void = () => {};
  callbacks: ClientCallbacks = {};
  /** PUBACKs queued while a chunk is parsed; written in one batch after it. */
  private pubacks: number[] = [];

  private constructor(socket: net.Socket) {
    this.socket = socket;
    this.reader = new FrameReader({
      onPublish: (p) => this.callbacks.onPublish?.(p),
      onPacket: (type, _flags, buf, start, end) => {
        if (type === PacketType.PUBACK) {
          this.callbacks.onPuback?.(buf.readUInt16BE(start));
          return;
        }
        const w = this.waiter;
        if (w !== null && w.type === type) {
          this.waiter = null;
          w.resolve(Buffer.from(buf.subarray(start, end)));
        }
      },
      onError: (err) => this.fail(err),
    });
    socket.setNoDelay(true);
    socket.on('error', (err) => this.fail(err));
    socket.on('close', () => {
      if (!this.closedByUs) this.fail(new Error('connection closed by the broker'));
    });
  }

  /** Handles one socket read; `buf` is reused by the next read (FrameReader copies what it keeps). */
  private onRead(buf: Buffer): void {
    this.reader.feed(buf);
    if (this.pubacks.length > 0) this.flushPubacks();
    this.callbacks.onChunkDone?.();
  }

  static async connect(host: string, port: number, clientId: string, timeoutMs = 5000): Promise<BenchClient> {
    // `onread` with one reused buffer per socket skips the Readable stream machinery and an
    // allocation per read: with brokers that send every packet in its own TCP segment, the
    // per-read overhead would otherwise dominate the generator's CPU.
    let client: BenchClient | null = null;
    const socket = net.connect({
      host,
      port,
      onread: {
        buffer: Buffer.allocUnsafe(64 * 1024),
        callback: (nread: number, buf: Uint8Array): boolean => {
          client?.onRead(Buffer.from(buf.buffer, buf.byteOffset, nread));
          return true;
        },
      },
    });
    client = new BenchClient(socket);
    await withTimeout(
      new Promise<void>((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('error', reject);
      }),
      timeoutMs,
      `TCP connect to ${host}:${port}`,
    );
    socket.write(encodeConnect(clientId));
    const connack = await withTimeout(client.expect(PacketType.CONNACK), timeoutMs, `CONNACK for ${clientId}`);
    if (connack.length < 2 || connack[1] !== 0) throw new Error(`CONNACK refused for ${clientId}: return code ${connack[1]}`);
    return client;
  }

  async subscribe(packetId: number, topic: string, qos: 0 | 1, timeoutMs = 5000): Promise<void> {
    const p = this.expect(PacketType.SUBACK);
    this.socket.write(encodeSubscribe(packetId, topic, qos));
    const suback = await withTimeout(p, timeoutMs, `SUBACK for ${topic}`);
    const granted = suback[2];
    if (granted === undefined || granted === 0x80) throw new Error(`subscription to ${topic} refused (SUBACK ${granted})`);
    if (granted !== qos) throw new Error(`subscription to ${topic} granted QoS ${granted}, wanted ${qos}`);
  }

  /** Acknowledges a received QoS 1 PUBLISH; sent after the current socket chunk is parsed. */
  puback(packetId: number): void {
    this.pubacks.push(packetId);
  }

  private flushPubacks(): void {
    const ids = this.pubacks;
    const buf = Buffer.allocUnsafe(ids.length * 4);
    for (let i = 0, o = 0; i < ids.length; i++, o += 4) {
      const id = ids[i]!;
      buf[o] = 0x40;
      buf[o + 1] = 0x02;
      buf[o + 2] = id >> 8;
      buf[o + 3] = id & 0xff;
    }
    this.pubacks = [];
    if (!this.socket.destroyed) this.socket.write(buf);
  }

  private expect(type: number): Promise<Buffer> {
    if (this.error) return Promise.reject(this.error);
    return new Promise((resolve, reject) => {
      this.waiter = { type, resolve, reject };
    });
  }

  private fail(err: Error): void {
    if (this.closedByUs || this.error) return;
    this.error = err;
    const w = this.waiter;
    this.waiter = null;
    w?.reject(err);
    this.onFailure(err);
  }

  /** Sends DISCONNECT and closes the socket. */
  close(): Promise<void> {
    this.closedByUs = true;
    return new Promise((resolve) => {
      if (this.socket.destroyed) return resolve();
      const t = setTimeout(() => {
        this.socket.destroy();
        resolve();
      }, 1000);
      this.socket.once('close', () => {
        clearTimeout(t);
        resolve();
      });
      this.socket.end(DISCONNECT);
    });
  }
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(t);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}
