/**
 * One client connection: framing in, batched writes out, and the order in which packets are
 * handled. A handler that returns a promise holds the next packets until it settles, so
 * packets are always handled in the order they arrived.
 */
import type { Duplex } from 'node:stream';
import type { AuditWho } from '../audit/types.ts';
import type { Principal } from '../auth/types.ts';
import { CodecError, PacketReader, encode, type Packet, type ProtocolVersion } from '../protocol/codec.ts';
import { ReasonCode, reasonName } from '../protocol/reason-codes.ts';
import type { ConnectionHandle, PeerInfo } from '../transport/types.ts';
import type { Client, ConnectionHost, ConnectionState, Will, WriteStatus } from './ports.ts';
import type { Session } from './session.ts';
import type { TokenBucket } from './token-bucket.ts';

export class Connection implements Client, ConnectionHandle {
  state: ConnectionState = 'new';
  version: ProtocolVersion = 4;
  clientId = '';
  bridge = false;
  session: Session | null = null;
  principal: Principal | null = null;
  keepAlive = 0;
  lastSeen: number;
  readonly openedAt: number;
  will: Will | null = null;
  /** Why the connection ended, for logs and the will decision. */
  closeReason: { code: number; detail: string } | null = null;
  /** Set by a DISCONNECT 0x00 from the client: the will is discarded [MQTT-3.14.4-3]. */
  discardWill = false;
  /** Set when a new connection took the session over. */
  takenOver = false;
  /** With takenOver: the new connection started clean, so this session ends. */
  sessionEnding = false;
  inboundAliases: Map<number, string> | null = null;
  outboundAliases: Map<string, number> | null = null;
  outboundAliasMaximum = 0;
  /** The client's receive maximum: our in-flight window towards it [MQTT-3.3.4-7]. */
  sendWindow = 65535;
  clientMaxPacketSize = Number.POSITIVE_INFINITY;
  problemInformation = true;
  expiryTimer: NodeJS.Timeout | null = null;
  /** More than limits.maxSocketBufferBytes wait in the socket: deliveries queue until it drains. */
  writeBlocked = false;
  /** Same, noticed after reading: the socket is not read until it drains. */
  readBlocked = false;
  /** Rate-limit throttle: the socket is not read until this time (epoch ms); 0: not throttled. */
  readPausedUntil = 0;
  /** Bytes read since this connection last gave the event loop a turn (see READ_BUDGET_BYTES). */
  private readSinceYield = 0;
  /** Paused until the end of this event-loop turn, to let other work run. */
  private yielding = false;
  /** Not reading until the audit log catches up (SecurityGate.holdForAudit). */
  private auditHeld = false;
  /** Subscribers of this client's messages that are behind and hold its reading (flow control). */
  flowHolds = 0;
  /** Acknowledgements waiting for their store writes, in the order they must go out (see sendWhenWritten). */
  private acksWaiting: { wait: Promise<WriteStatus> | null; make: (status: WriteStatus) => Packet | Buffer | null }[] | null = null;
  /** When this client first went over its rate limit since its last accepted publish; 0: it has not. */
  rateLimitedSince = 0;
  clientBucket: TokenBucket | null = null;
  identityBucket: TokenBucket | null = null;
  identityKey: string | null = null;
  /** Who this connection's access records name (see SecurityGate), and for which principal. */
  auditWho: AuditWho | null = null;
  auditWhoPrincipal: Principal | null = null;
  readonly reader: PacketReader;
  private corked = false;
  private busy = false;
  /** Complete packets read so far (for the keep-alive clock). */
  private packetsIn = 0;
  private inbox: Packet[] = [];

  constructor(
    private readonly host: ConnectionHost<Connection>,
    readonly stream: Duplex,
    readonly peer: PeerInfo,
  ) {
    this.openedAt = this.lastSeen = Date.now();
    this.reader = new PacketReader(host.readerLimits, readerPacket, readerError, this);
    // Shared listeners, not closures: an idle connection costs a few hundred bytes less.
    (stream as ConnectionStream)[CONNECTION] = this;
    stream.on('data', onStreamData);
    stream.on('drain', onStreamDrain);
    stream.on('error', onStreamError);
    stream.on('close', onStreamClose);
    stream.on('end', onStreamEnd);
  }

  /** Bytes from the socket: keep-alive, the reader, and read back-pressure. */
  onData(chunk: Buffer): void {
    const stream = this.stream;
    // Keep-alive counts whole control packets [MQTT-3.1.2-24], not bytes: a client that trickles
    // one packet byte by byte does not keep its connection alive.
    const before = this.packetsIn;
    this.reader.push(chunk);
    if (this.packetsIn !== before) this.lastSeen = Date.now();
    // Node reads a busy socket up to 32 times in a row (about 2 MiB, 100 ms of work under a flood)
    // before anything else runs: other clients, timers, the audit log's hand-overs. After its
    // budget a connection waits for the end of the turn.
    this.readSinceYield += chunk.length;
    if (this.readSinceYield >= READ_BUDGET_BYTES && !this.yielding && this.state !== 'closed') {
      this.yielding = true;
      stream.pause();
      setImmediate(endYield, this);
    }
    // A client that does not read what we send (acknowledgements included) is not read either, until it drains.
    if (stream.writableLength > this.host.limits.maxSocketBufferBytes && stream.writableNeedDrain && this.state !== 'closed') {
      this.readBlocked = true;
      stream.pause();
    }
  }

  get v5(): boolean {
    return this.version === 5;
  }

  onPacket(packet: Packet): void {
    this.packetsIn++;
    if (this.state === 'closed') return;
    // Held while a handler is pending, while a rate-limit throttle pauses this client (the rest of
    // the chunk read before the pause), or while the audit log is behind.
    if (this.busy || this.readPausedUntil !== 0 || this.auditHeld || this.flowHolds !== 0 || this.holdsForAudit()) {
      this.inbox.push(packet);
      return;
    }
    this.run(packet);
  }

  private run(packet: Packet): void {
    let result: void | Promise<void>;
    try {
      result = this.host.dispatch(this, packet);
    } catch (err) {
      return this.internalError(err);
    }
    if (result instanceof Promise) {
      this.busy = true;
      this.stream.pause();
      result.then(
        () => this.resume(),
        (err: unknown) => {
          this.internalError(err);
          this.resume();
        },
      );
    }
  }

  private resume(): void {
    this.busy = false;
    this.drainInbox();
  }

  private drainInbox(): void {
    while (!this.busy && this.readPausedUntil === 0 && !this.auditHeld && this.flowHolds === 0 && this.inbox.length > 0 && this.state !== 'closed' && !this.holdsForAudit()) {
      this.run(this.inbox.shift() as Packet);
    }
    if (!this.busy && this.readPausedUntil === 0 && !this.readBlocked && !this.yielding && !this.auditHeld && this.flowHolds === 0 && this.state !== 'closed') this.stream.resume();
  }

  /** The turn this connection gave up is over: read again (unless something else holds it). */
  endYield(): void {
    this.yielding = false;
    this.readSinceYield = 0;
    if (!this.busy) this.drainInbox();
  }

  /**
   * The audit log is behind: this connection stops reading (TCP slows the client down) and keeps
   * the packets it has read, rather than let the log's queue fill, where fail-closed would deny
   * access and fail-open would drop records. Asked before every packet, so a connection adds at
   * most one packet's records after the log said it was behind.
   */
  private holdsForAudit(): boolean {
    if (!this.host.auditBacklogged()) return false;
    this.auditHeld = true;
    this.stream.pause();
    this.host.holdForAudit(this);
    return true;
  }

  /** The audit log caught up (or can no longer): read again, unless something else holds this connection. */
  releaseAudit(): void {
    this.auditHeld = false;
    if (!this.busy) this.drainInbox();
  }

  /**
   * A subscriber of this client's messages is behind: stop reading after the packet being
   * handled, so TCP slows the publisher down instead of the subscriber's queue overflowing.
   */
  holdForFlow(): void {
    if (this.flowHolds++ === 0) this.stream.pause();
  }

  /** One subscriber that held this client caught up (or gave up): read again when none holds it. */
  releaseFlow(): void {
    if (this.flowHolds === 0 || --this.flowHolds !== 0) return;
    this.lastSeen = Date.now(); // the keep-alive clock restarts when we read again
    if (!this.busy) this.drainInbox();
  }

  /** Ends a rate-limit throttle: handles the packets held back, then reads again. */
  resumeReading(): void {
    this.readPausedUntil = 0;
    this.lastSeen = Date.now(); // the keep-alive clock restarts when we read again
    if (!this.busy) this.drainInbox();
  }

  /**
   * Sends an acknowledgement once the store writes it promises are committed (`wait`; null: none
   * to wait for), keeping the order of every acknowledgement made this way [MQTT-4.6.0-2]: a
   * later one whose writes are done still waits for the earlier ones. `make` builds the packet
   * from what the writes came to (a refusal when they failed), or returns null to send nothing.
   */
  sendWhenWritten(wait: Promise<WriteStatus> | null, make: (status: WriteStatus) => Packet | Buffer | null): void {
    if (wait === null && this.acksWaiting === null) {
      const p = make('ok');
      if (p !== null) this.sendOut(p);
      return;
    }
    const queue = (this.acksWaiting ??= []);
    queue.push({ wait, make });
    if (queue.length === 1) void this.sendAcks(queue);
  }

  private sendOut(p: Packet | Buffer): void {
    if (Buffer.isBuffer(p)) this.write(p);
    else this.send(p);
  }

  private async sendAcks(queue: { wait: Promise<WriteStatus> | null; make: (status: WriteStatus) => Packet | Buffer | null }[]): Promise<void> {
    // The acknowledgements of one turn's publishes often wait on one shared write (a store batch,
    // a cluster bus write): once it has settled, the rest go out in this loop, not one await each.
    let settled: Promise<WriteStatus> | null = null;
    let settledStatus: WriteStatus = 'ok';
    while (queue.length > 0) {
      const head = queue[0] as (typeof queue)[number];
      const wait = head.wait;
      const status = wait === null ? 'ok' : wait === settled ? settledStatus : (settledStatus = await (settled = wait));
      queue.shift();
      if (this.state !== 'closed') {
        const p = head.make(status);
        if (p !== null) this.sendOut(p);
      }
    }
    if (this.acksWaiting === queue) this.acksWaiting = null;
  }

  /** The listener learned that this connection must end (a revoked certificate): a security disconnect. */
  securityClose(action: string, reason: string): void {
    this.host.securityClose(this, action, reason);
  }

  onDrain(): void {
    if (this.state === 'closed') return;
    if (this.readBlocked) {
      this.readBlocked = false;
      if (!this.busy) this.drainInbox();
    }
    if (!this.writeBlocked) return;
    this.writeBlocked = false;
    this.host.drained(this);
  }

  private internalError(err: unknown): void {
    this.host.log.error({ err: (err as Error)?.stack ?? String(err), clientId: this.clientId }, 'handler failed');
    this.disconnect(ReasonCode.ImplementationSpecificError, 'internal error');
  }

  onCodecError(error: CodecError): void {
    if (this.state === 'new' && error.reason === ReasonCode.UnsupportedProtocolVersion) {
      // [MQTT-3.1.2-2]: answer CONNACK 0x01 (v3 form: we cannot speak the client's version), then close.
      this.write(Buffer.from([0x20, 0x02, 0x00, 0x01]));
    }
    this.disconnect(error.reason, error.detail);
  }

  /** Queues bytes; writes made in one event-loop turn go out in one batch. */
  write(buf: Buffer): void {
    if (this.state === 'closed') return;
    if (!this.corked) {
      this.corked = true;
      this.stream.cork();
      process.nextTick(uncork, this);
    }
    this.stream.write(buf);
  }

  flushWrites(): void {
    if (this.corked) {
      this.corked = false;
      this.stream.uncork();
    }
  }

  /**
   * Encodes and writes a packet within the client's Maximum Packet Size [MQTT-3.1.2-24]: when it
   * does not fit, the reason string goes first, then user properties, then properties that only
   * repeat the spec's default. A PUBLISH that still does not fit is not sent; any other packet
   * that cannot fit ends the connection without it [MQTT-3.1.2-25].
   */
  send(packet: Packet): void {
    const buf = encode(packet, this.version);
    if (buf.length <= this.clientMaxPacketSize) return this.write(buf);
    const fitted = fitPacket(packet, this.version, this.clientMaxPacketSize);
    if (fitted !== null) return this.write(fitted);
    if (packet.cmd === 'publish') return;
    this.close({ code: ReasonCode.PacketTooLarge, detail: `a ${packet.cmd.toUpperCase()} does not fit the client's maximum packet size of ${this.clientMaxPacketSize} bytes` });
    this.stream.end();
    setTimeout(() => this.stream.destroy(), 1000).unref();
  }

  /**
   * Ends the connection for a reason. A v5 client that completed CONNECT is told with
   * DISCONNECT and the reason code [MQTT-4.13.2-1]; others see the socket close.
   */
  disconnect(code: number, detail: string): void {
    if (this.state === 'closed') return;
    if (this.v5 && this.state === 'connected') {
      const properties = this.problemInformation ? { reasonString: detail.slice(0, 200) } : undefined;
      this.send({ cmd: 'disconnect', reasonCode: code, ...(properties ? { properties } : {}) });
    }
    this.close({ code, detail });
    this.stream.end();
    // Do not wait forever for a peer that does not close its side.
    setTimeout(() => this.stream.destroy(), 1000).unref();
  }

  /** Marks the connection closed once, whatever closed it, and lets the broker clean up. */
  close(reason: { code: number; detail: string }): void {
    if (this.state === 'closed') return;
    const before = this.state;
    this.state = 'closed';
    this.closeReason ??= reason;
    this.flushWrites();
    this.host.connectionClosed(this, before);
    if (this.stream.readableEnded || this.stream.destroyed) this.stream.destroy();
  }

  /**
   * Closes our side after the client's DISCONNECT (3.1.1 §3.14.4: the server SHOULD close the
   * network connection if the client has not already done so). A plain TCP socket with
   * nothing left in its write buffer is closed at once, as Mosquitto does: close() still sends
   * FIN after whatever the kernel holds, and it saves a shutdown(), a read of the peer's EOF and
   * the stream's end-of-stream steps. Anything else (bytes still queued, TLS with its
   * close_notify, WebSocket with its close frame) ends gracefully.
   */
  endAfterDisconnect(): void {
    const stream = this.stream;
    if (this.peer.transport === 'tcp' && stream.writableLength === 0) stream.destroy();
    else stream.end();
  }

  describeClose(): string {
    const r = this.closeReason;
    return r === null ? 'unknown' : `${r.detail} (${reasonName(r.code)})`;
  }
}

/** Properties whose absence means the same as this value (MQTT 5, 3.2.2.3): safe to leave out. */
const DEFAULT_VALUED: Record<string, unknown> = {
  retainAvailable: true,
  wildcardSubscriptionAvailable: true,
  subscriptionIdentifiersAvailable: true,
  sharedSubscriptionAvailable: true,
  maximumQoS: 2,
  topicAliasMaximum: 0,
  receiveMaximum: 65535,
  payloadFormatIndicator: false,
};

/** The packet re-encoded with what may be left out removed, step by step, until it fits; null if it never does. */
function fitPacket(packet: Packet, version: ProtocolVersion, max: number): Buffer | null {
  const props = (packet as { properties?: Record<string, unknown> }).properties;
  if (props === undefined) return null;
  const trimmed: Record<string, unknown> = { ...props };
  const steps: (() => boolean)[] = [
    () => delete trimmed.reasonString,
    () => delete trimmed.userProperties,
    () => {
      for (const [k, v] of Object.entries(DEFAULT_VALUED)) if (trimmed[k] === v) delete trimmed[k];
      return true;
    },
  ];
  for (const step of steps) {
    step();
    const p = { ...packet, properties: { ...trimmed } } as Packet;
    const buf = encode(p, version);
    if (buf.length <= max) return buf;
  }
  return null;
}

const CONNECTION = Symbol('connection');
/**
 * Bytes a connection may read before it lets the event loop take a turn: about a millisecond of
 * QoS 0 publishes. Costs one pause and resume per budget; bounds how long one flooding client
 * holds up everyone else.
 */
const READ_BUDGET_BYTES = 64 * 1024;
function endYield(conn: Connection): void {
  conn.endYield();
}
type ConnectionStream = Duplex & { [CONNECTION]?: Connection };

function readerPacket(this: Connection, packet: Packet): void {
  this.onPacket(packet);
}
function readerError(this: Connection, error: CodecError): void {
  this.onCodecError(error);
}
function onStreamData(this: ConnectionStream, chunk: Buffer): void {
  this[CONNECTION]?.onData(chunk);
}
function onStreamDrain(this: ConnectionStream): void {
  this[CONNECTION]?.onDrain();
}
function onStreamError(this: ConnectionStream, err: Error): void {
  this[CONNECTION]?.close({ code: ReasonCode.UnspecifiedError, detail: `socket error: ${err.message}` });
  // A stream that failed is not used again: destroyed at once, so its descriptor and admission slot go with it.
  this.destroy();
}
function onStreamClose(this: ConnectionStream): void {
  this[CONNECTION]?.close({ code: ReasonCode.UnspecifiedError, detail: 'connection lost' });
}
function onStreamEnd(this: ConnectionStream): void {
  this[CONNECTION]?.close({ code: ReasonCode.UnspecifiedError, detail: 'connection closed by client' });
}

function uncork(conn: Connection): void {
  conn.flushWrites();
}
