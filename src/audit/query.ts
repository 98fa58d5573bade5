/**
 * Reading audit records back for operators: filters for `audit tail` and the counts of
 * `audit stats`. Lines that do not parse are reported, not skipped silently.
 */
import { topicMatches } from '../protocol/topic.ts';
import { parseRecord, type AuditRecord } from './record.ts';

export interface RecordFilter {
  denyOnly?: boolean;
  user?: string;
  client?: string;
  /** An MQTT topic filter; a record matches when its topic (or filter) is matched by it or equal to it. */
  topic?: string;
  event?: string;
}

export function matchesFilter(rec: AuditRecord, f: RecordFilter): boolean {
  if (f.denyOnly && rec.decision !== 'deny') return false;
  if (f.user !== undefined && rec.username !== f.user) return false;
  if (f.client !== undefined && rec.clientId !== f.client) return false;
  if (f.event !== undefined && rec.event !== f.event) return false;
  if (f.topic !== undefined) {
    if (rec.topic === undefined) return false;
    if (rec.topic !== f.topic && !topicMatches(f.topic, rec.topic)) return false;
  }
  return true;
}

export interface AuditStats {
  records: number;
  malformed: number;
  firstTime?: string;
  lastTime?: string;
  firstSeq?: number;
  lastSeq?: number;
  /** `event` → `{ allow, deny }`: decisions, a summary counting for the denials it summarises. */
  byEvent: Record<string, { allow: number; deny: number }>;
  /** Denials counted in `summary` records (repeated denials of one connection, see docs/audit.md). */
  summarized: number;
  /** Reason codes of denials, as `0x87` → count. */
  denyReasons: Record<string, number>;
  topDeniedClients: [string, number][];
  topDeniedUsers: [string, number][];
  topDeniedTopics: [string, number][];
  /** Records the sink reported as dropped (queue full). */
  dropped: number;
  sinkFailures: number;
  checkpoints: number;
  rotations: number;
}

export class StatsCollector {
  private readonly s: AuditStats = { records: 0, malformed: 0, byEvent: {}, denyReasons: {}, summarized: 0, topDeniedClients: [], topDeniedUsers: [], topDeniedTopics: [], dropped: 0, sinkFailures: 0, checkpoints: 0, rotations: 0 };
  private readonly clients = new Map<string, number>();
  private readonly users = new Map<string, number>();
  private readonly topics = new Map<string, number>();

  addLine(line: string): void {
    if (line.length === 0) return;
    const rec = parseRecord(line);
    if (rec === null) {
      this.s.malformed++;
      return;
    }
    const s = this.s;
    s.records++;
    s.firstTime ??= rec.time;
    s.firstSeq ??= rec.seq;
    s.lastTime = rec.time;
    s.lastSeq = rec.seq;
    // A summary stands for the denials it counted (its topic is the first of them).
    const weight = rec.action === 'summary' && typeof rec.detail?.count === 'number' ? rec.detail.count : 1;
    if (rec.action === 'summary') s.summarized += weight;
    const e = (s.byEvent[rec.event] ??= { allow: 0, deny: 0 });
    e[rec.decision === 'deny' ? 'deny' : 'allow'] += weight;
    if (rec.event === 'audit') {
      if (rec.action === 'dropped' && typeof rec.detail?.dropped === 'number') s.dropped += rec.detail.dropped;
      if (rec.action === 'recovered') s.sinkFailures++;
      if (rec.action === 'rotate') s.rotations++;
      return;
    }
    if (rec.event === 'checkpoint') {
      s.checkpoints++;
      return;
    }
    if (rec.decision === 'deny') {
      if (rec.reasonCode !== undefined) {
        const k = `0x${rec.reasonCode.toString(16).padStart(2, '0')}`;
        s.denyReasons[k] = (s.denyReasons[k] ?? 0) + weight;
      }
      if (rec.clientId !== undefined) this.clients.set(rec.clientId, (this.clients.get(rec.clientId) ?? 0) + weight);
      if (rec.username !== undefined) this.users.set(rec.username, (this.users.get(rec.username) ?? 0) + weight);
      if (rec.topic !== undefined) this.topics.set(rec.topic, (this.topics.get(rec.topic) ?? 0) + weight);
    }
  }

  result(top = 5): AuditStats {
    const best = (m: Map<string, number>) => [...m.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, top);
    return { ...this.s, topDeniedClients: best(this.clients), topDeniedUsers: best(this.users), topDeniedTopics: best(this.topics) };
  }
}
