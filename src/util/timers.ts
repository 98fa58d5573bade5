/**
 * The longest delay a Node.js timer takes (2^31 - 1 ms, about 24.8 days): a longer one fires
 * after 1 ms. Every timer whose delay comes from configuration or from a client (a deadline, an
 * expiry) is capped with {@link timerDelay}.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** `ms` as a timer can wait it: at least 0, at most {@link MAX_TIMER_MS}. */
export function timerDelay(ms: number): number {
  return Math.max(0, Math.min(ms, MAX_TIMER_MS));
}
