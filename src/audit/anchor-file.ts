/**
 * Reading checkpoint anchors back (`audit verify --anchors FILE`). An anchor is the digest of a
 * signed checkpoint that the broker also sent somewhere the audit file's writer cannot reach
 * (see anchor.ts). In every place it goes it is the same JSON object,
 * `"auditAnchor":{"v":1,"name":…,"seq":…,"hash":…,"time":…}`: a field of a JSON log line (the
 * operational log), the message of a syslog line, or the body an HTTP endpoint received. So a
 * file of any of these can be given as it is; lines without an anchor are skipped.
 */
import fs from 'node:fs';

/** One anchored checkpoint: `hash` is the checkpoint record's own `hash`. */
export interface AnchorEntry {
  name: string;
  seq: number;
  hash: string;
  time?: string;
  /** Where it was read from, for messages. */
  file: string;
  line: number;
}

const ANCHOR_FIELD = /"auditAnchor"\s*:\s*(\{[^{}]*\})/;

/** The anchors in a text, in order; lines that mention an anchor but do not hold a valid one are counted in `bad`. */
export function parseAnchors(text: string, file: string): { anchors: AnchorEntry[]; bad: number } {
  const anchors: AnchorEntry[] = [];
  let bad = 0;
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] as string;
    if (!line.includes('"auditAnchor"')) continue;
    const a = anchorOf(line);
    if (a === null) {
      bad++;
      continue;
    }
    anchors.push({ ...a, file, line: i + 1 });
  }
  return { anchors, bad };
}

function anchorOf(line: string): Omit<AnchorEntry, 'file' | 'line'> | null {
  let value: unknown = null;
  // A whole JSON line (the operational log, an HTTP body), else the JSON message after a prefix (syslog).
  for (const from of [0, line.indexOf('{')]) {
    if (from < 0) continue;
    try {
      value = (JSON.parse(line.slice(from)) as { auditAnchor?: unknown }).auditAnchor;
      break;
    } catch {
      value = null;
    }
  }
  if (value === null || value === undefined) {
    const m = ANCHOR_FIELD.exec(line);
    if (m === null) return null;
    try {
      value = JSON.parse(m[1] as string);
    } catch {
      return null;
    }
  }
  if (value === null || typeof value !== 'object') return null;
  const a = value as Record<string, unknown>;
  if (typeof a.name !== 'string' || typeof a.seq !== 'number' || !Number.isInteger(a.seq) || a.seq < 1) return null;
  if (typeof a.hash !== 'string' || !/^[0-9a-f]{64}$/.test(a.hash)) return null;
  return { name: a.name, seq: a.seq, hash: a.hash, ...(typeof a.time === 'string' ? { time: a.time } : {}) };
}

/** Reads anchors from files; errors name the file. */
export function readAnchorFiles(files: string[]): { anchors: AnchorEntry[]; bad: number } {
  const all: AnchorEntry[] = [];
  let bad = 0;
  for (const file of files) {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      throw new Error(`cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
    const r = parseAnchors(text, file);
    all.push(...r.anchors);
    bad += r.bad;
  }
  return { anchors: all, bad };
}

/** The log names the anchors are for, with how many each. */
export function anchorNames(anchors: AnchorEntry[]): Map<string, number> {
  const names = new Map<string, number>();
  for (const a of anchors) names.set(a.name, (names.get(a.name) ?? 0) + 1);
  return names;
}

export interface AnchorSummary {
  /** Anchors for this log. */
  total: number;
  /** Anchors whose record was found with the same hash. */
  matched: number;
  /** Anchors for records before the first record given (removed by retention, or not among the files). */
  before: number;
  /** The last anchored checkpoint found in the log: records up to it are vouched for by a digest sent out. */
  lastMatchedSeq?: number;
  /** Checkpoints in the log after the first anchored one that have no anchor (a delivery failed, or anchoring was off). */
  unanchoredCheckpoints: number;
}

/**
 * Checks the records of a log against its anchors as the log is read: each anchored sequence
 * number must hold a record with the anchored hash, and no anchor may lie beyond the log's end.
 */
export class AnchorCheck {
  private readonly bySeq = new Map<number, AnchorEntry[]>();
  private readonly summary: AnchorSummary;
  private firstSeq: number | undefined;

  constructor(anchors: AnchorEntry[]) {
    for (const a of anchors) {
      const list = this.bySeq.get(a.seq);
      if (list === undefined) this.bySeq.set(a.seq, [a]);
      else list.push(a);
    }
    this.summary = { total: anchors.length, matched: 0, before: 0, unanchoredCheckpoints: 0 };
  }

  /** The anchor a record contradicts, or null. */
  record(seq: number, hash: string, isCheckpoint: boolean): AnchorEntry | null {
    this.firstSeq ??= seq;
    const list = this.bySeq.get(seq);
    if (list === undefined) {
      if (isCheckpoint && this.summary.lastMatchedSeq !== undefined) this.summary.unanchoredCheckpoints++;
      return null;
    }
    for (const a of list) if (a.hash !== hash) return a;
    this.summary.matched += list.length;
    this.summary.lastMatchedSeq = seq;
    this.bySeq.delete(seq);
    return null;
  }

  /** After the last record: the first anchor beyond it (the log was cut short), or null. */
  end(lastSeq: number | undefined): AnchorEntry | null {
    let beyond: AnchorEntry | null = null;
    for (const [seq, list] of this.bySeq) {
      if (this.firstSeq !== undefined && seq < this.firstSeq) {
        this.summary.before += list.length;
        continue;
      }
      if (lastSeq === undefined || seq > lastSeq) {
        const a = list[0] as AnchorEntry;
        if (beyond === null || a.seq < beyond.seq) beyond = a;
      }
    }
    return beyond;
  }

  result(): AnchorSummary {
    return { ...this.summary };
  }
}
