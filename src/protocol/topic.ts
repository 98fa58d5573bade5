/**
 * Topic names and topic filters: validation and matching, shared by the router, the retained
 * store and the authorizers.
 */
import type { TopicLimits } from './limits.ts';

export type TopicCheck = { ok: true } | { ok: false; detail: string };

const OK: TopicCheck = { ok: true };

/** Validates a PUBLISH topic name: non-empty, no wildcards, no U+0000, within the limits [MQTT-3.3.2-1..2]. */
export function checkTopicName(topic: string, limits: TopicLimits): TopicCheck {
  if (topic.length === 0) return { ok: false, detail: 'empty topic name' };
  if (Buffer.byteLength(topic) > limits.maxTopicLength) return { ok: false, detail: `topic name longer than limits.maxTopicLength (${limits.maxTopicLength} bytes)` };
  let levels = 1;
  for (let i = 0; i < topic.length; i++) {
    const c = topic.charCodeAt(i);
    if (c === 0x2b || c === 0x23) return { ok: false, detail: 'wildcard in topic name' };
    if (c === 0) return { ok: false, detail: 'U+0000 in topic name' };
    if (c === 0x2f) levels++;
  }
  if (levels > limits.maxTopicLevels) return { ok: false, detail: `more than limits.maxTopicLevels (${limits.maxTopicLevels}) topic levels` };
  return OK;
}

/** Validates a topic filter: `#` last and alone in its level, `+` alone in its level [MQTT-4.7.1-1..3]. */
export function checkTopicFilter(filter: string, limits: TopicLimits): TopicCheck {
  if (filter.length === 0) return { ok: false, detail: 'empty topic filter' };
  if (Buffer.byteLength(filter) > limits.maxTopicLength) return { ok: false, detail: `topic filter longer than limits.maxTopicLength (${limits.maxTopicLength} bytes)` };
  const parts = filter.split('/');
  if (parts.length > limits.maxTopicLevels) return { ok: false, detail: `more than limits.maxTopicLevels (${limits.maxTopicLevels}) topic levels` };
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i] as string;
    if (part.includes('\u0000')) return { ok: false, detail: 'U+0000 in topic filter' };
    if (part.includes('#') && (part !== '#' || i !== parts.length - 1)) {
      return { ok: false, detail: "'#' must be the last level and alone in it" };
    }
    if (part.includes('+') && part !== '+') return { ok: false, detail: "'+' must be alone in its level" };
  }
  return OK;
}

export interface SharedFilter {
  group: string;
  filter: string;
}

/**
 * Splits `$share/group/filter`. Returns null for an ordinary filter, or an error for a malformed
 * shared filter [MQTT-4.8.2-1..2].
 */
export function parseShared(filter: string): SharedFilter | null | { error: string } {
  if (!filter.startsWith('$share/')) return null;
  const rest = filter.slice(7);
  const slash = rest.indexOf('/');
  if (slash <= 0) return { error: 'shared subscription needs $share/{group}/{filter}' };
  const group = rest.slice(0, slash);
  if (group.includes('+') || group.includes('#')) return { error: 'share name must not contain wildcards' };
  const inner = rest.slice(slash + 1);
  if (inner.length === 0) return { error: 'shared subscription has an empty filter' };
  return { group, filter: inner };
}

/** True when `topic` (a topic name) matches `filter`; a leading wildcard never matches a `$` topic [MQTT-4.7.2-1]. */
export function topicMatches(filter: string, topic: string): boolean {
  if (topic.charCodeAt(0) === 0x24 /* $ */ && (filter.charCodeAt(0) === 0x2b || filter.charCodeAt(0) === 0x23)) {
    return false;
  }
  let fi = 0;
  let ti = 0;
  const fl = filter.length;
  const tl = topic.length;
  while (fi < fl) {
    const fc = filter.charCodeAt(fi);
    if (fc === 0x23 /* # */) return true;
    if (fc === 0x2b /* + */) {
      while (ti < tl && topic.charCodeAt(ti) !== 0x2f) ti++;
      fi++;
    } else {
      // match a literal level up to the next '/'
      while (fi < fl && filter.charCodeAt(fi) !== 0x2f) {
        if (ti >= tl || topic.charCodeAt(ti) !== filter.charCodeAt(fi)) return false;
        fi++;
        ti++;
      }
      if (ti < tl && topic.charCodeAt(ti) !== 0x2f) return false;
    }
    // both at a '/' or at the end
    if (fi >= fl) return ti >= tl;
    // filter has '/': topic must too, except "a/#" matches "a"
    if (ti >= tl) {
      return filter.length - fi === 2 && filter.charCodeAt(fi + 1) === 0x23;
    }
    fi++;
    ti++;
    if (fi >= fl) return ti >= tl; // an empty last level matches only an empty last level
  }
  return ti >= tl;
}

// ── reserved trees ───────────────────────────────────────────────────────────

/**
 * First levels that belong to the broker: `$SYS` (its statistics) and `$portcullis` (its notices,
 * such as `$portcullis/subscription-revoked`). A topic name whose first level starts with `$` is
 * reserved for server use [MQTT-4.7.2-1]; clients must not publish into these, whatever an
 * authorizer says, by any path: PUBLISH, a will, or a retained message.
 */
export const BROKER_RESERVED_ROOTS: readonly string[] = ['$SYS', '$portcullis'];

/**
 * The reserved root a topic name falls under (`$SYS` for `$SYS` and `$SYS/...`), or undefined.
 * One check for every path by which a client's message enters the broker.
 *
 * @example
 * reservedRoot('$SYS/broker/alert'); // '$SYS'
 * reservedRoot('$SYSTEM/x');         // undefined: another first level
 */
export function reservedRoot(topic: string): string | undefined {
  if (topic.charCodeAt(0) !== 0x24 /* $ */) return undefined;
  for (const root of BROKER_RESERVED_ROOTS) {
    if (topic.startsWith(root) && (topic.length === root.length || topic.charCodeAt(root.length) === 0x2f)) return root;
  }
  return undefined;
}
