import os from 'node:os';
import path from 'node:path';
import type { Logger } from '../log.ts';
import { AnchorPublisher, type HttpAnchorSettings, type SyslogAnchorSettings } from './anchor.ts';
import { ChainedAuditSink, type AuditOutput, type ChainedSinkOptions } from './chained-sink.ts';
import { loadSigningKey } from './checkpoint.ts';
import { FileAuditOutput, findChainTip, type AuditFileIO } from './file-output.ts';
import { DEFAULT_MAX_TOPIC_LENGTH } from './topic-cap.ts';
import type { AuditEvent, AuditSink } from './types.ts';

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

/** The `audit` section of the configuration, as the sinks need it. */
export interface AuditSinkSettings {
  sink: 'file' | 'stdout' | 'none';
  path: string;
  maxQueue: number;
  fsyncIntervalMs: number;
  retryIntervalMs: number;
  rotate: { maxBytes: number; intervalSeconds: number };
  /** `alarmMinAgeHours` absent: no alarm (the configuration's default is 24). */
  retention: { maxFiles: number; maxAgeDays: number; alarmMinAgeHours?: number };
  checkpoint: { keyFile?: string | undefined; keyId?: string | undefined; intervalSeconds: number };
  /** Absent: no anchors. */
  anchor?: {
    name?: string | undefined;
    log: boolean;
    syslog?: SyslogAnchorSettings | undefined;
    http?: HttpAnchorSettings | undefined;
    timeoutMs: number;
    attempts: number;
    retryDelayMs: number;
  };
  /** Absent: DEFAULT_MAX_TOPIC_LENGTH. */
  maxTopicLength?: number;
  /** Absent: every denial is written in full. (`disconnectAfter` is the broker's; see denial-limit.ts.) */
  denials?: { summarize: boolean; intervalSeconds: number; fullRecords: number };
  /** `fullRecords`: allowed decisions per connection and kind written in full per denials window; absent: all. */
  allowed?: { fullRecords?: number };
}

/** Thrown when the audit sink cannot be set up; `key` names the configuration key at fault. */
export class AuditSetupError extends Error {
  readonly code = 'ERR_PORTCULLIS_AUDIT_SETUP';
  constructor(
    readonly key: string,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Builds the configured sink. The file is opened and the chain tip read before the broker
 * starts, so an unwritable path or a bad signing key stops the start with a clear error.
 */
export function createAuditSink(settings: AuditSinkSettings, log: Logger, io?: AuditFileIO): AuditSink {
  if (settings.sink === 'none') return new NullAuditSink();
  let checkpoint: { key: import('node:crypto').KeyObject; intervalMs: number; kid?: string } | undefined;
  if (settings.checkpoint.keyFile !== undefined) {
    try {
      checkpoint = {
        key: loadSigningKey(settings.checkpoint.keyFile),
        intervalMs: settings.checkpoint.intervalSeconds * 1000,
        ...(settings.checkpoint.keyId !== undefined ? { kid: settings.checkpoint.keyId } : {}),
      };
    } catch (err) {
      throw new AuditSetupError('audit.checkpoint.keyFile', (err as Error).message);
    }
  }
  let sink: ChainedAuditSink | undefined;
  const anchor = settings.anchor;
  const witness =
    anchor !== undefined && AnchorPublisher.enabled(anchor)
      ? new AnchorPublisher(
          { ...anchor, name: anchor.name ?? `${os.hostname()}:${settings.sink === 'stdout' ? 'stdout' : path.resolve(settings.path)}` },
          log,
          (event) => sink?.record(event),
        )
      : undefined;
  if (witness !== undefined && checkpoint === undefined) {
    throw new AuditSetupError('audit.anchor', 'anchors are digests of signed checkpoints: set audit.checkpoint.keyFile too');
  }
  const denials = settings.denials;
  const common: ChainedSinkOptions = {
    maxQueue: settings.maxQueue,
    log,
    retryMs: settings.retryIntervalMs,
    fsyncIntervalMs: settings.fsyncIntervalMs,
    maxTopicLength: settings.maxTopicLength ?? DEFAULT_MAX_TOPIC_LENGTH,
    ...(checkpoint ? { checkpoint } : {}),
    ...(witness ? { anchor: witness } : {}),
    ...(denials?.summarize === true ? { denialSummary: { intervalMs: denials.intervalSeconds * 1000, fullRecords: denials.fullRecords, ...(settings.allowed?.fullRecords !== undefined ? { fullAllowed: settings.allowed.fullRecords } : {}) } } : {}),
  };
  if (settings.sink === 'stdout') return (sink = new ChainedAuditSink(stdoutOutput(process.stdout), common));

  const found = (() => {
    try {
      return findChainTip(settings.path);
    } catch (err) {
      throw new AuditSetupError('audit.path', `cannot read ${settings.path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
  })();
  let output: FileAuditOutput;
  try {
    output = new FileAuditOutput({
      path: settings.path,
      maxBytes: settings.rotate.maxBytes,
      intervalMs: settings.rotate.intervalSeconds * 1000,
      maxFiles: settings.retention.maxFiles,
      maxAgeMs: settings.retention.maxAgeDays * 86_400_000,
      alarmMinAgeMs: (settings.retention.alarmMinAgeHours ?? 0) * 3_600_000,
      log,
      ...(io ? { io } : {}),
      onEvent: (event) => sink?.record(event),
    });
  } catch (err) {
    throw new AuditSetupError('audit.path', `cannot open ${settings.path} for writing (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  sink = new ChainedAuditSink(output, {
    ...common,
    ...(found ? { tip: found.tip, startDetail: { resumedAfterSeq: found.tip.seq } } : {}),
  });
  return sink;
}

/** An output to a stream such as stdout, for containers; the chain starts afresh each run. */
export function stdoutOutput(stream: NodeJS.WritableStream, name = 'stdout'): AuditOutput {
  return {
    name,
    write: (data) => new Promise((resolve, reject) => stream.write(data, (err) => (err ? reject(err) : resolve()))),
    close: async () => {},
  };
}
