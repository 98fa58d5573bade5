/**
 * Topics and filters in audit records are cut to a configured length: a client may send topics
 * of up to 64 KiB, and each denial of one would otherwise be a 64 KiB line (a `$share` filter
 * flood wrote 60 KB lines). The record keeps the start of the topic, its full length and its
 * SHA-256, so an investigator can still tell two long topics apart and match one they hold.
 */
import { sha256 } from './record.ts';
import type { AuditEvent } from './types.ts';

/** The default `audit.maxTopicLength`. */
export const DEFAULT_MAX_TOPIC_LENGTH = 512;

/** What a cut topic becomes in a record: its start, and `detail.topicLength` / `detail.topicSha256`. */
export interface CutTopic {
  topic: string;
  length: number;
  sha256: string;
}

/**
 * The first `max` characters (UTF-16 code units, never half of a surrogate pair) of a topic
 * longer than `max`, with its length and hash; null when it fits.
 */
export function cutTopic(topic: string, max: number): CutTopic | null {
  if (topic.length <= max) return null;
  let end = max;
  const last = topic.charCodeAt(end - 1);
  if (last >= 0xd800 && last <= 0xdbff) end--; // a high surrogate: its pair would be cut off
  return { topic: topic.slice(0, end), length: topic.length, sha256: sha256(topic) };
}

/** Just the cut text, for places that keep no hash (a summary's last topic). */
export function cutTopicText(topic: string, max: number): string {
  if (topic.length <= max) return topic;
  const last = topic.charCodeAt(max - 1);
  return topic.slice(0, last >= 0xd800 && last <= 0xdbff ? max - 1 : max);
}

/** The event with its topic cut to `max` (a copy), or the event itself when it fits. */
export function capEventTopic(event: AuditEvent, max: number): AuditEvent {
  if (event.topic === undefined) return event;
  const cut = cutTopic(event.topic, max);
  if (cut === null) return event;
  return { ...event, topic: cut.topic, detail: { ...event.detail, topicLength: cut.length, topicSha256: cut.sha256 } };
}
