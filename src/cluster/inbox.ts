/**
 * Reading the bus: one blocking XREAD on a connection of its own, over the broadcast stream and
 * the inbox of every partition this node hosts. Entries are verified (frame.ts) and handed to the
 * node in stream order. A partition's inbox is trimmed up to an entry once everything that entry
 * led to is committed (the store writes of the deliveries it made, a session released): what is
 * left in an inbox is exactly what its partition has not applied yet, so a node that adopts a
 * dead node's partition carries on from there.
 */
import type { Logger } from '../log.ts';
import { decodeFrame, nextEntryId, ReplayGuard, type Frame, type FrameProblem } from './frame.ts';
import type { RedisClient } from './redis.ts';

/** What the node does with one verified frame from a stream; a promise holds the trim until it settles. */
export type FrameHandler = (frame: Frame, entryId: string) => void | Promise<unknown>;

interface Source {
  /** The stream key. */
  stream: string;
  lastId: string;
  handler: FrameHandler;
  /** Trim applied entries (partition inboxes, not the broadcast stream). */
  trim: boolean;
  /** Settles once every batch applied so far is trimmed (or its trim failed). */
  trimming: Promise<unknown>;
  /** Batches applied and not yet trimmed. */
  untrimmed: number;
  /** Applied batches waiting for their trim: what they led to, and the id to trim up to. */
  trimQueue: { done: Promise<unknown>; upTo: string }[];
  trimRunning: boolean;
  /**
   * Where to trim to with the next read (the id after the last entry applied), when everything
   * applied up to there was done at once (nothing to commit) and no earlier batch waits for its
   * trim: sent in one write with the next XREAD, not as a command of its own.
   */
  trimWithRead: string | null;
}

export interface InboxEvents {
  /** A frame that failed verification: logged, audited (rate-limited by the node). */
  refused(stream: string, problem: FrameProblem | 'replay' | 'clock' | 'malformed-body', sender: string | undefined, entryId: string): void;
  /** Reading failed (Redis unreachable); `ok` when reading works again. */
  health(ok: boolean, err?: Error): void;
}

/** Most batches applied but not yet trimmed before reading waits (bounds memory when the store is slow). */
const MAX_UNTRIMMED = 8;
const BLOCK_MS = 1000;

export class Inbox {
  private readonly sources = new Map<string, Source>();
  private running = false;
  private loop: Promise<void> | null = null;
  private readerId: number | null = null;
  private blocked = false;
  private healthy = true;
  readonly replay: ReplayGuard;
  /** Where the broadcast stream has been read to (the node's barriers wait for it). */
  controlPosition = '0-0';
  private readonly positionWaiters: { id: string; resolve: () => void }[] = [];

  constructor(
    private readonly reader: RedisClient,
    private readonly commands: RedisClient,
    private readonly keys: () => ReadonlyMap<string, Buffer>,
    private readonly events: InboxEvents,
    private readonly log: Logger,
    private readonly controlStream: string,
    maxClockSkewMs: number,
  ) {
    this.replay = new ReplayGuard(maxClockSkewMs);
  }

  /** Reads `stream` from after `fromId`. */
  add(stream: string, fromId: string, handler: FrameHandler, trim: boolean): void {
    this.sources.set(stream, { stream, lastId: fromId, handler, trim, trimming: Promise.resolve(), untrimmed: 0, trimQueue: [], trimRunning: false, trimWithRead: null });
    if (stream === this.controlStream) this.controlPosition = fromId;
    this.wake();
  }

  remove(stream: string): Promise<unknown> {
    const s = this.sources.get(stream);
    this.sources.delete(stream);
    this.wake();
    if (s === undefined) return Promise.resolve();
    this.trimNow(s);
    return s.trimming;
  }

  /** Sends a source's pending trim (that was to go with the next read) as a command of its own. */
  private trimNow(s: Source): void {
    const upTo = s.trimWithRead;
    if (upTo === null) return;
    s.trimWithRead = null;
    s.trimming = s.trimming.then(() => this.commands.xtrim(s.stream, 'MINID', upTo).catch((err: Error) => this.log.warn({ err: err.message, stream: s.stream }, 'cluster: trimming an inbox failed (it is trimmed with the next batch)')));
  }

  has(stream: string): boolean {
    return this.sources.has(stream);
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.wake();
    await this.loop;
    for (const s of this.sources.values()) this.trimNow(s);
    await Promise.all([...this.sources.values()].map((s) => s.trimming));
  }

  /** Resolves once the broadcast stream has been read (and applied) past `id`. */
  controlReached(id: string): Promise<void> {
    if (compareIds(this.controlPosition, id) >= 0) return Promise.resolve();
    return new Promise((resolve) => this.positionWaiters.push({ id, resolve }));
  }

  /** A blocked read returns at once, so a new or removed stream is read from now on. */
  private wake(): void {
    if (!this.blocked || this.readerId === null) return;
    this.commands.call('CLIENT', 'UNBLOCK', String(this.readerId)).catch(() => undefined);
  }

  private async run(): Promise<void> {
    while (this.running) {
      // A partition whose store writes fall behind holds the reading (bounded memory).
      for (const s of this.sources.values()) if (s.untrimmed >= MAX_UNTRIMMED) await s.trimming;
      const sources = [...this.sources.values()];
      if (sources.length === 0) {
        await delay(50);
        continue;
      }
      let reply: [Buffer, [Buffer, Buffer[]][]][] | null;
      try {
        this.readerId ??= Number(await this.reader.call('CLIENT', 'ID'));
        this.blocked = true;
        const args: (string | number)[] = ['COUNT', 1000, 'BLOCK', BLOCK_MS, 'STREAMS', ...sources.map((s) => s.stream), ...sources.map((s) => s.lastId)];
        const trims = sources.filter((s) => s.trimWithRead !== null);
        if (trims.length === 0) reply = (await (this.reader.xreadBuffer as (...a: (string | number)[]) => Promise<unknown>).call(this.reader, ...args)) as typeof reply;
        else reply = await this.trimAndRead(trims, args);
        this.blocked = false;
        if (!this.healthy) {
          this.healthy = true;
          this.events.health(true);
        }
      } catch (err) {
        this.blocked = false;
        this.readerId = null;
        if (this.running && this.healthy) {
          this.healthy = false;
          this.events.health(false, err as Error);
        }
        await delay(200);
        continue;
      }
      if (reply === null) continue;
      // The broadcast stream first: interest and membership changes before the messages that follow them.
      reply.sort((a, b) => (a[0].toString() === this.controlStream ? -1 : b[0].toString() === this.controlStream ? 1 : 0));
      for (const [name, entries] of reply) {
        const source = this.sources.get(name.toString());
        if (source === undefined || entries.length === 0) continue;
        this.apply(source, entries);
      }
    }
  }

  /**
   * The trims that go with this read, then the read, in one write on the reader's connection (the
   * usual case under load: a batch applied, with nothing to commit, is trimmed as the next one is
   * read). A trim that fails is tried again with the next read, unless a later one replaced it.
   */
  private async trimAndRead(trims: Source[], args: (string | number)[]): Promise<[Buffer, [Buffer, Buffer[]][]][] | null> {
    const pipeline = this.reader.pipeline();
    const upTo: string[] = [];
    for (const s of trims) {
      upTo.push(s.trimWithRead as string);
      pipeline.xtrim(s.stream, 'MINID', s.trimWithRead as string);
      s.trimWithRead = null;
    }
    (pipeline.xreadBuffer as (...a: (string | number)[]) => unknown).call(pipeline, ...args);
    const retry = (i: number) => {
      const s = trims[i] as Source;
      if (this.sources.get(s.stream) === s) s.trimWithRead ??= upTo[i] as string;
    };
    let results: [Error | null, unknown][] | null;
    try {
      results = await pipeline.exec();
      if (results === null) throw new Error('pipeline discarded');
    } catch (err) {
      for (let i = 0; i < trims.length; i++) retry(i);
      throw err;
    }
    for (let i = 0; i < trims.length; i++) {
      const err = (results[i] as [Error | null, unknown])[0];
      if (err === null) continue;
      this.log.warn({ err: err.message, stream: (trims[i] as Source).stream }, 'cluster: trimming an inbox failed (it is trimmed with the next read)');
      retry(i);
    }
    const [err, reply] = results[trims.length] as [Error | null, unknown];
    if (err !== null) throw err;
    return reply as [Buffer, [Buffer, Buffer[]][]][] | null;
  }

  private apply(source: Source, entries: [Buffer, Buffer[]][]): void {
    const waits: Promise<unknown>[] = [];
    const keys = this.keys();
    const now = Date.now();
    let last = source.lastId;
    for (const [rawId, fields] of entries) {
      const id = rawId.toString();
      last = id;
      const value = fieldValue(fields, 'f');
      if (value === undefined) continue; // the entry that created the stream
      const frame = decodeFrame(value, keys, source.stream);
      if ('problem' in frame) {
        this.events.refused(source.stream, frame.problem, undefined, id);
        continue;
      }
      const replay = this.replay.check(frame, id, now);
      if (replay !== null) {
        this.events.refused(source.stream, replay, frame.sender, id);
        continue;
      }
      try {
        const r = source.handler(frame, id);
        if (r instanceof Promise) waits.push(r.catch((err: unknown) => this.log.error({ err: (err as Error).message, stream: source.stream }, 'cluster: applying a bus message failed')));
      } catch (err) {
        this.log.error({ err: (err as Error).message, stream: source.stream, sender: frame.sender }, 'cluster: a bus message could not be applied');
        this.events.refused(source.stream, 'malformed-body', frame.sender, id);
      }
    }
    source.lastId = last;
    if (source.stream === this.controlStream) this.controlAdvanced(last);
    if (!source.trim) return;
    if (waits.length === 0 && source.trimQueue.length === 0 && !source.trimRunning) {
      // Applied in full now, and nothing before it waits: trimmed with the next read.
      source.trimWithRead = nextEntryId(last);
      return;
    }
    source.untrimmed++;
    source.trimQueue.push({ done: waits.length === 0 ? DONE : Promise.all(waits), upTo: nextEntryId(last) });
    if (!source.trimRunning) source.trimming = this.trimAll(source);
  }

  /**
   * Trims a source's inbox behind what is applied. Batches applied while a trim is on its way go
   * in one XTRIM after it (to the last of them, once all they led to is committed): under load a
   * batch costs a share of a trim, not a command of its own.
   */
  private async trimAll(source: Source): Promise<void> {
    source.trimRunning = true;
    try {
      while (source.trimQueue.length > 0) {
        const batches = source.trimQueue.splice(0);
        await Promise.all(batches.map((b) => b.done));
        try {
          await this.commands.xtrim(source.stream, 'MINID', (batches[batches.length - 1] as (typeof batches)[number]).upTo);
        } catch (err) {
          this.log.warn({ err: (err as Error).message, stream: source.stream }, 'cluster: trimming an inbox failed (it is trimmed with the next batch)');
        }
        source.untrimmed -= batches.length;
      }
    } finally {
      source.trimRunning = false;
    }
  }

  /** Where a stream has been read to. */
  position(stream: string): string | undefined {
    return this.sources.get(stream)?.lastId;
  }

  private controlAdvanced(id: string): void {
    this.controlPosition = id;
    for (let i = this.positionWaiters.length - 1; i >= 0; i--) {
      const w = this.positionWaiters[i] as (typeof this.positionWaiters)[number];
      if (compareIds(id, w.id) >= 0) {
        this.positionWaiters.splice(i, 1);
        w.resolve();
      }
    }
  }
}

const DONE: Promise<unknown> = Promise.resolve();

function fieldValue(fields: Buffer[], name: string): Buffer | undefined {
  for (let i = 0; i + 1 < fields.length; i += 2) if ((fields[i] as Buffer).toString() === name) return fields[i + 1];
  return undefined;
}

/** Orders stream entry ids (`<ms>-<n>`). */
export function compareIds(a: string, b: string): number {
  const [am, an] = a.split('-').map(Number) as [number, number];
  const [bm, bn] = b.split('-').map(Number) as [number, number];
  return am !== bm ? am - bm : (an ?? 0) - (bn ?? 0);
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
