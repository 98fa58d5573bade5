/**
 * The outside witness (`audit.anchor`): the digest of each signed checkpoint, sent where the
 * audit file's writer cannot reach it. A checkpoint's `hash` covers the whole chain up to it,
 * signature included, so a digest that left the host pins everything before it.
 *
 * The threat it closes: someone who can write the audit file and also holds the signing key
 * (root on the broker host, a stolen key, a backup of the host) can rewrite the whole log and
 * sign it again; anyone who can write the file can cut it back to an earlier checkpoint. Neither
 * can be told from the file alone. Digests already sent out cannot be recalled:
 * `audit verify --anchors FILE` fails when a record differs from its anchor, or when an anchored
 * checkpoint is no longer in the log.
 *
 * Targets: the operational log (one JSON line; ship it off the host), syslog (RFC 5424 over UDP
 * or TCP) and an HTTP endpoint (POST, JSON body). Remote deliveries have a deadline each and a
 * bounded number of attempts, run one at a time in checkpoint order, and never hold up the
 * audit log: a delivery that fails is logged and recorded in the chain (`audit`/`anchor-failed`).
 */
import dgram from 'node:dgram';
import net from 'node:net';
import os from 'node:os';
import type { Logger } from '../log.ts';
import type { CheckpointWitness, WrittenCheckpoint } from './chained-sink.ts';
import type { AuditEvent } from './types.ts';

export interface SyslogAnchorSettings {
  host: string;
  port: number;
  transport: 'udp' | 'tcp';
  /** Syslog facility number (16 = local0 … 23 = local7). */
  facility: number;
  appName: string;
}

export interface HttpAnchorSettings {
  url: string;
  /** Extra request headers (for example an Authorization header). */
  headers: Record<string, string>;
}

export interface AnchorSettings {
  /** Names the log in every anchor, so one receiver can take anchors from several brokers. */
  name: string;
  log: boolean;
  syslog?: SyslogAnchorSettings | undefined;
  http?: HttpAnchorSettings | undefined;
  /** Deadline of one delivery attempt. */
  timeoutMs: number;
  /** Attempts per anchor, at least 1. */
  attempts: number;
  /** Wait between attempts. */
  retryDelayMs: number;
}

/** The anchor object: the same in the log line, the syslog message and the HTTP body. */
export function anchorObject(name: string, cp: WrittenCheckpoint): { v: 1; name: string; seq: number; hash: string; time: string; kid?: string } {
  return { v: 1, name, seq: cp.seq, hash: cp.hash, time: cp.time, ...(cp.kid !== undefined ? { kid: cp.kid } : {}) };
}

/** One remote target: sends one anchor, or throws (the signal aborts it at the deadline). */
interface Target {
  readonly name: string;
  send(body: string, signal: AbortSignal): Promise<void>;
  queue: WrittenCheckpoint[];
  busy: boolean;
}

/** Anchors waiting per target; past it the oldest is given up (logged and recorded). */
const MAX_PENDING = 64;

export class AnchorPublisher implements CheckpointWitness {
  private readonly targets: Target[] = [];
  private readonly anchorLog: Logger | null;
  private closing = false;
  private idleWaiters: (() => void)[] = [];
  /** Anchors delivered and given up, per target, since start. */
  readonly delivered = new Map<string, number>();
  readonly failed = new Map<string, number>();

  constructor(
    private readonly settings: AnchorSettings,
    private readonly log: Logger,
    /** Where a failure is recorded (the audit chain). */
    private readonly onFailure: (event: AuditEvent) => void,
  ) {
    // At info, whatever `log.level` says: an anchor that the level hides is no anchor.
    this.anchorLog = settings.log ? log.child({}, { level: 'info' }) : null;
    if (settings.syslog !== undefined) this.targets.push(syslogTarget(settings.syslog));
    if (settings.http !== undefined) this.targets.push(httpTarget(settings.http));
  }

  /** True when it sends anchors anywhere. */
  static enabled(settings: Pick<AnchorSettings, 'log' | 'syslog' | 'http'>): boolean {
    return settings.log || settings.syslog !== undefined || settings.http !== undefined;
  }

  publish(cp: WrittenCheckpoint): void {
    const anchor = anchorObject(this.settings.name, cp);
    this.anchorLog?.info({ auditAnchor: anchor }, 'audit checkpoint anchor');
    for (const t of this.targets) {
      if (t.queue.length >= MAX_PENDING) this.giveUp(t, t.queue.splice(1, 1)[0] as WrittenCheckpoint, 'too many anchors waiting');
      t.queue.push(cp);
      void this.drain(t);
    }
  }

  /** Waits until every queued anchor is delivered or given up (each attempt has a deadline). */
  async close(): Promise<void> {
    this.closing = true;
    while (this.targets.some((t) => t.busy || t.queue.length > 0)) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  private async drain(t: Target): Promise<void> {
    if (t.busy) return;
    t.busy = true;
    try {
      while (t.queue.length > 0) {
        const cp = t.queue[0] as WrittenCheckpoint;
        const body = JSON.stringify({ auditAnchor: anchorObject(this.settings.name, cp) });
        let error = '';
        for (let attempt = 1; attempt <= this.settings.attempts; attempt++) {
          try {
            await t.send(body, AbortSignal.timeout(this.settings.timeoutMs));
            error = '';
            break;
          } catch (err) {
            error = errorText(err);
            if (attempt < this.settings.attempts) await new Promise((r) => setTimeout(r, this.settings.retryDelayMs).unref());
          }
        }
        t.queue.shift();
        if (error === '') this.delivered.set(t.name, (this.delivered.get(t.name) ?? 0) + 1);
        else this.giveUp(t, cp, `${this.settings.attempts} attempt(s) failed: ${error}`);
      }
    } finally {
      t.busy = false;
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const f of w) f();
    }
  }

  private giveUp(t: Target, cp: WrittenCheckpoint, why: string): void {
    this.failed.set(t.name, (this.failed.get(t.name) ?? 0) + 1);
    this.log.error({ target: t.name, seq: cp.seq, err: why }, 'AUDIT ANCHOR NOT DELIVERED: this checkpoint has no outside witness');
    // While the sink closes it takes no more records; the log line above is what remains.
    if (!this.closing) {
      this.onFailure({
        event: 'audit',
        action: 'anchor-failed',
        decision: 'deny',
        reason: `the anchor of checkpoint seq ${cp.seq} could not be sent to ${t.name}: ${why}`,
        detail: { seq: cp.seq, target: t.name },
      });
    }
  }
}

function errorText(err: unknown): string {
  const e = err as NodeJS.ErrnoException & { cause?: { code?: string } };
  if (e.name === 'TimeoutError' || e.name === 'AbortError') return 'deadline passed';
  return e.code ?? e.cause?.code ?? e.message ?? String(err);
}

/** RFC 5424: `<PRI>1 TIMESTAMP HOST APP PROCID MSGID - MSG`, severity notice. */
function syslogLine(s: SyslogAnchorSettings, body: string): string {
  const pri = s.facility * 8 + 5;
  return `<${pri}>1 ${new Date().toISOString()} ${os.hostname() || '-'} ${s.appName} ${process.pid} audit-anchor - ${body}`;
}

function syslogTarget(s: SyslogAnchorSettings): Target {
  const name = `syslog ${s.transport}://${s.host}:${s.port}`;
  const send =
    s.transport === 'udp'
      ? (body: string, signal: AbortSignal) =>
          new Promise<void>((resolve, reject) => {
            // UDP says nothing of delivery: this only fails when the datagram cannot be sent.
            const socket = dgram.createSocket(net.isIPv6(s.host) ? 'udp6' : 'udp4');
            const done = (err?: Error | null) => {
              signal.removeEventListener('abort', onAbort);
              socket.close();
              if (err) reject(err);
              else resolve();
            };
            const onAbort = () => done(signal.reason as Error);
            signal.addEventListener('abort', onAbort);
            socket.on('error', done);
            socket.send(syslogLine(s, body), s.port, s.host, (err) => done(err));
          })
      : (body: string, signal: AbortSignal) =>
          new Promise<void>((resolve, reject) => {
            // RFC 6587 octet counting: the length, a space, the message.
            const msg = Buffer.from(syslogLine(s, body));
            const socket = net.connect({ host: s.host, port: s.port });
            let settled = false;
            const done = (err?: Error | null) => {
              if (settled) return;
              settled = true;
              signal.removeEventListener('abort', onAbort);
              if (err) {
                socket.destroy();
                reject(err);
              } else resolve();
            };
            const onAbort = () => done(signal.reason as Error);
            signal.addEventListener('abort', onAbort);
            socket.on('error', done);
            socket.on('connect', () => socket.end(Buffer.concat([Buffer.from(`${msg.length} `), msg]), () => done()));
          });
  return { name, send, queue: [], busy: false };
}

function httpTarget(s: HttpAnchorSettings): Target {
  const url = new URL(s.url);
  const name = `http ${url.origin}${url.pathname}`;
  return {
    name,
    queue: [],
    busy: false,
    send: async (body, signal) => {
      const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...s.headers }, body, signal });
      await res.arrayBuffer().catch(() => undefined);
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
    },
  };
}
