/** What a store holds, as every store's open() reports it. */
import type { StoreCounts, StoredSession } from './types.ts';

export function storeCounts(sessions: readonly StoredSession[], retained: number): StoreCounts {
  const counts: StoreCounts = { sessions: sessions.length, subscriptions: 0, inflight: 0, queued: 0, awaitingRelease: 0, retained, wills: 0 };
  for (const s of sessions) {
    counts.subscriptions += s.subscriptions.length;
    counts.inflight += s.inflight.length;
    counts.queued += s.queue.length;
    counts.awaitingRelease += s.awaitingRelease.length;
    if (s.will !== undefined) counts.wills++;
  }
  return counts;
}
