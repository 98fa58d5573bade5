/**
 * One raw-socket MQTT 3.1.1 client of the load generator, over TCP or TLS: connects, subscribes,
 * acknowledges what it receives (PUBACK; PUBREC then PUBCOMP for QoS 2; PUBREL for the PUBRECs of
 * its own QoS 2 publishes) and hands every received PUBLISH and final acknowledgement to
 * callbacks. No mqtt.js, no per-packet objects.
 */
import net from 'node:net';
import tls from 'node:tls';
import { ACK_HEADER, DISCONNECT, FrameReader, PacketType, encodeConnect, encodeSubscribe, type Credentials, type QoS, type ReceivedPublish } from './mqtt.ts';

/** Where and how the generator connects: plain TCP or TLS (with a client certificate for mTLS), with or without credentials. */
export interface Endpoint {
  host: string;
  port: number;
  /**
   * TLS: the client's secure context (CA, and for mTLS the client certificate) and the server
   * name; `files` are the same as PEM file paths, for the C connect generator.
   */
  tls?: { context: tls.SecureContext; servername: string; files?: { ca: string; cert?: string; key?: string } };
  credentials?: Credentials;
}

export interface ClientCallbacks {
  onPublish?: (p: ReceivedPublish) => void;
  /** PUBACK (QoS 1) or PUBCOMP (QoS 2): the publish with this packet id is complete. */
  onPuback?: (packetId: number) => void;
  /** Called once per socket chunk, after every packet in it was handled. */
  onChunkDone?: () => void;
}

/**
 * One read buffer for every plain socket: `onread` callbacks run one at a time and the frame
 * reader copies what it keeps, so sharing is safe and 5,000 idle clients do not cost 5,000 buffers.
 */
const sharedReadBuffer = Buffer.allocUnsafe(64 * 1024);

export class BenchClient {
  readonly socket: net.Socket | tls.TLSSocket;
  private readonly reader: FrameReader;
  private waiter: { type: number; resolve: (body: Buffer) => void; reject: (e: Error) => void } | null = null;
  private error: Error | null = null;
  private closedByUs = false;
  /** Set when the connection failed or closed unexpectedly. */
  onFailure: (err: Error) => void = () => {};
  callbacks: ClientCallbacks = {};
  /** Acknowledgements queued while a chunk is parsed, as (first byte << 16 | packet id); written in one batch after it. */
  private acks: number[] = [];

  private constructor(socket: net.Socket | tls.TLSSocket) {
    this.socket = socket;
    this.reader = new FrameReader({
      onPublish: (p) => {
        if (p.qos === 1) this.acks.push((ACK_HEADER.puback << 16) | p.packetId);
        else if (p.qos === 2) this.acks.push((ACK_HEADER.pubrec << 16) | p.packetId);
        this.callbacks.onPublish?.(p);
      },
      onPacket: (type, _flags, buf, start, end) => {
        switch (type) {
          case PacketType.PUBACK:
          case PacketType.PUBCOMP:
            this.callbacks.onPuback?.(buf.readUInt16BE(start));
            return;
          case PacketType.PUBREC:
            this.acks.push((ACK_HEADER.pubrel << 16) | buf.readUInt16BE(start));
            return;
          case PacketType.PUBREL:
            this.acks.push((ACK_HEADER.pubcomp << 16) | buf.readUInt16BE(start));
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
    if (this.acks.length > 0) this.flushAcks();
    this.callbacks.onChunkDone?.();
  }

  /** `callbacks` are in place before CONNECT is sent: what a resumed session is sent right after CONNACK is seen too. */
  static async connect(endpoint: Endpoint, clientId: string, timeoutMs = 5000, keepAlive = 60, clean = true, callbacks?: ClientCallbacks): Promise<BenchClient> {
    const { host, port } = endpoint;
    let client: BenchClient | null = null;
    let socket: net.Socket | tls.TLSSocket;
    if (endpoint.tls) {
      socket = tls.connect({ host, port, secureContext: endpoint.tls.context, servername: endpoint.tls.servername });
      socket.on('data', (d: Buffer) => client?.onRead(d));
    } else {
      // `onread` with one reused buffer per socket skips the Readable stream machinery and an
      // allocation per read: with brokers that send every packet in its own TCP segment, the
      // per-read overhead would otherwise dominate the generator's CPU.
      socket = net.connect({
        host,
        port,
        onread: {
          buffer: sharedReadBuffer,
          callback: (nread: number, buf: Uint8Array): boolean => {
            client?.onRead(Buffer.from(buf.buffer, buf.byteOffset, nread));
            return true;
          },
        },
      });
    }
    client = new BenchClient(socket);
    if (callbacks !== undefined) client.callbacks = callbacks;
    const c = client;
    try {
      await withTimeout(
        new Promise<void>((resolve, reject) => {
          socket.once(endpoint.tls ? 'secureConnect' : 'connect', resolve);
          socket.once('error', reject);
        }),
        timeoutMs,
        `${endpoint.tls ? 'TLS' : 'TCP'} connect to ${host}:${port}`,
      );
      socket.write(encodeConnect(clientId, keepAlive, endpoint.credentials, clean));
      const connack = await withTimeout(c.expect(PacketType.CONNACK), timeoutMs, `CONNACK for ${clientId}`);
      if (connack.length < 2 || connack[1] !== 0) throw new Error(`CONNACK refused for ${clientId}: return code ${connack[1]}`);
    } catch (e) {
      c.closedByUs = true;
      socket.destroy();
      throw e;
    }
    return c;
  }

  /** Subscribes to one or more filters at `qos`; fails unless every filter is granted exactly that QoS. */
  async subscribe(packetId: number, topics: string | string[], qos: QoS, timeoutMs = 5000): Promise<void> {
    const list = Array.isArray(topics) ? topics : [topics];
    const p = this.expect(PacketType.SUBACK);
    this.socket.write(encodeSubscribe(packetId, list, qos));
    const what = list.length === 1 ? list[0]! : `${list.length} filters`;
    const suback = await withTimeout(p, timeoutMs, `SUBACK for ${what}`);
    for (let i = 0; i < list.length; i++) {
      const granted = suback[2 + i];
      if (granted === undefined || granted === 0x80) throw new Error(`subscription to ${list[i]} refused (SUBACK ${granted})`);
      if (granted !== qos) throw new Error(`subscription to ${list[i]} granted QoS ${granted}, wanted ${qos}`);
    }
  }

  private flushAcks(): void {
    const acks = this.acks;
    const buf = Buffer.allocUnsafe(acks.length * 4);
    for (let i = 0, o = 0; i < acks.length; i++, o += 4) {
      const a = acks[i]!;
      buf[o] = a >>> 16;
      buf[o + 1] = 0x02;
      buf[o + 2] = (a >> 8) & 0xff;
      buf[o + 3] = a & 0xff;
    }
    this.acks = [];
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

  /** Sends DISCONNECT and ends the socket without waiting for the broker to close its side. */
  disconnect(): void {
    this.closedByUs = true;
    if (!this.socket.destroyed) this.socket.end(DISCONNECT);
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
