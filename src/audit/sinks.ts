import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from '../log.ts';
import { AUDIT_SCHEMA_VERSION, type AuditEvent, type AuditSink } from './types.ts';

/** Discards records; used when auditing is explicitly turned off. */
export class NullAuditSink implements AuditSink {
  record(): void {}
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}

/** Keeps records in memory: for embedding and tests. */
export class MemoryAuditSink implements AuditSink {
  readonly records: (AuditEvent & { time: string; seq: number })[] = [];
  private seq = 0;
  record(event: AuditEvent): void {
    this.records.push({ ...event, time: new Date().toISOString(), seq: ++this.seq });
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}

/**
 * Writes JSON Lines, batched once per event-loop turn, to a file or to stdout. The queue is
 * bounded: when it is full, records are dropped, counted, and reported in a loud log line.
 */
export class JsonLinesAuditSink implements AuditSink {
  private queue: string[] = [];
  private seq = 0;
  private scheduled = false;
  private writing: Promise<void> = Promise.resolve();
  dropped = 0;

  private constructor(
    private readonly out: NodeJS.WritableStream,
    private readonly maxQueue: number,
    private readonly log: Logger,
    private readonly ownsStream: boolean,
  ) {}

  static toFile(file: string, maxQueue: number, log: Logger): JsonLinesAuditSink {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    // Open synchronously so an unwritable path fails at start with a clear error.
    const fd = fs.openSync(file, 'a', 0o600);
    const stream = fs.createWriteStream(file, { fd, flags: 'a' });
    stream.on('error', (err) => log.error({ err: err.message, file }, 'audit file write failed'));
    return new JsonLinesAuditSink(stream, maxQueue, log, true);
  }

  static toStdout(maxQueue: number, log: Logger): JsonLinesAuditSink {
    return new JsonLinesAuditSink(process.stdout, maxQueue, log, false);
  }

  record(event: AuditEvent): void {
    if (this.queue.length >= this.maxQueue) {
      if (this.dropped++ % 1000 === 0) this.log.error({ dropped: this.dropped }, 'audit queue full: records dropped');
      return;
    }
    this.queue.push(JSON.stringify({ v: AUDIT_SCHEMA_VERSION, time: new Date().toISOString(), seq: ++this.seq, ...event }));
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.drain());
    }
  }

  private drain(): void {
    this.scheduled = false;
    if (this.queue.length === 0) return;
    const batch = this.queue.join('\n') + '\n';
    this.queue = [];
    this.writing = this.writing.then(
      () => new Promise<void>((resolve) => this.out.write(batch, () => resolve())),
    );
  }

  async flush(): Promise<void> {
    this.drain();
    await this.writing;
  }

  async close(): Promise<void> {
    await this.flush();
    if (this.ownsStream) await new Promise<void>((resolve) => (this.out as fs.WriteStream).end(() => resolve()));
  }
}
