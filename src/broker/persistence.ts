/**
 * The write path to the Store, owned by the session registry (sessions.ts): every write goes
 * through here, so this is where the durability contract is kept.
 *
 * - Writes never block the caller; each one's outcome is a promise of a {@link WriteStatus} that
 *   never rejects.
 * - With a durable store, the writes one action makes (a PUBLISH routed to persistent sessions,
 *   a SUBSCRIBE, a CONNECT) are collected, and the acknowledgement that promises them (PUBACK,
 *   PUBREC, PUBCOMP, SUBACK, CONNACK) is sent only once they are committed. A memory store is
 *   not waited for: its writes cannot fail and promise nothing across a restart.
 * - A write that fails (disk full, an unwritable store) is logged and audited once per episode;
 *   the session it belonged to is marked, and written again whole once writes succeed.
 */
import type { AuditEvent } from '../audit/types.ts';
import type { Logger } from '../log.ts';
import { isStoreError } from '../store/errors.ts';
import type { Store } from '../store/types.ts';
import type { Session } from './session.ts';

import type { WriteStatus } from './ports.ts';

export type { WriteStatus } from './ports.ts';

const OK: Promise<WriteStatus> = Promise.resolve('ok');

export class Persistence {
  /** True when the store keeps what it commits across a crash (set when it opens). */
  durable = false;
  private batch: Promise<WriteStatus>[] | null = null;
  /** When writes started failing (0: they do not), and whether the disk is full. */
  private failingSince = 0;
  private failures = 0;
  private readonly dirty = new Set<Session>();

  constructor(
    readonly store: Store,
    private readonly log: Logger,
    private readonly audit: (event: AuditEvent) => void,
  ) {}

  /** Starts collecting the writes made until {@link collected} (synchronous code only: the collection is global). */
  collect(): void {
    this.batch = [];
  }

  /** What the writes since {@link collect} came to, once committed; null when nothing needs waiting for. */
  collected(): Promise<WriteStatus> | null {
    const b = this.batch;
    this.batch = null;
    if (b === null || b.length === 0) return null;
    if (b.length === 1) return b[0] as Promise<WriteStatus>;
    return Promise.all(b).then(worst);
  }

  /** Writes through to the store; `session`: whose state it is, rewritten whole if this write fails. */
  write(session: Session | null, op: (store: Store) => Promise<void>): Promise<WriteStatus> {
    let p: Promise<WriteStatus>;
    try {
      p = op(this.store).then(
        () => this.succeeded(),
        (err: unknown) => this.failed(err, session),
      );
    } catch (err) {
      p = Promise.resolve(this.failed(err, session));
    }
    if (this.batch !== null && this.durable) this.batch.push(p);
    // Writes are committed in order, so a session's last write settles all of them (a move waits for it).
    if (session !== null) session.lastWrite = p;
    return p;
  }

  /**
   * Adds something else an acknowledgement must wait for to the writes being collected, whatever
   * the store: a bus write in a cluster (the message is durable in another node's inbox) or the
   * other nodes confirming a subscription.
   */
  track(wait: Promise<WriteStatus>): void {
    if (this.batch !== null) this.batch.push(wait);
  }

  private succeeded(): WriteStatus {
    if (this.failingSince !== 0) this.recovered();
    return 'ok';
  }

  private failed(err: unknown, session: Session | null): WriteStatus {
    const full = isStoreError(err, 'ERR_STORE_WRITE') && (err as { diskFull?: boolean }).diskFull === true;
    this.failures++;
    if (session !== null) this.dirty.add(session);
    if (this.failingSince === 0) {
      this.failingSince = Date.now();
      const detail = (err as Error).message;
      this.log.error({ err: detail, diskFull: full }, 'store write failed: what cannot be made durable is refused (PUBACK/PUBREC 0x97 or 0x80, v3 clients disconnected) until writes succeed again; QoS 0 and reads go on');
      this.audit({ event: 'store', action: 'write-failed', decision: 'deny', reason: `store write failed: ${detail}`, detail: { diskFull: full } });
    }
    return full ? 'full' : 'failed';
  }

  private recovered(): void {
    const failedFor = Date.now() - this.failingSince;
    this.log.warn({ failedForMs: failedFor, failedWrites: this.failures }, 'store writes succeed again');
    this.audit({ event: 'store', action: 'write-recovered', decision: 'allow', reason: `store writes succeed again after ${failedFor} ms`, detail: { failedWrites: this.failures } });
    this.failingSince = 0;
    this.failures = 0;
    // Memory and disk may differ for the sessions whose writes failed: write them again, whole.
    const dirty = [...this.dirty];
    this.dirty.clear();
    for (const session of dirty) {
      if (!session.stored || !session.persistent) continue;
      const snapshot = session.toStored();
      void this.write(session, (s) => s.saveSession(snapshot));
    }
  }

  /** True while store writes fail. */
  get failing(): boolean {
    return this.failingSince !== 0;
  }

  /** A status that is already known (nothing to wait for). */
  static readonly ok = OK;
}

function worst(statuses: WriteStatus[]): WriteStatus {
  if (statuses.includes('full')) return 'full';
  if (statuses.includes('failed')) return 'failed';
  return 'ok';
}
