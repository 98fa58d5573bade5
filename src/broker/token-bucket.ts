/**
 * A token bucket in two dimensions: messages and bytes. A message larger than the byte burst
 * passes on a full bucket and leaves it in debt, so no message size is refused forever.
 *
 * @example
 * const b = new TokenBucket(10, 10, 0, 0, Date.now());
 * b.waitMs(100, Date.now()); // 0 while tokens remain
 */
export class TokenBucket {
  private messages: number;
  private bytes: number;
  private updatedAt: number;
  /** Connections holding this bucket (identity buckets only). */
  refs = 0;

  constructor(
    readonly messagesPerSecond: number,
    readonly burstMessages: number,
    readonly bytesPerSecond: number,
    readonly burstBytes: number,
    now: number,
  ) {
    this.messages = burstMessages;
    this.bytes = burstBytes;
    this.updatedAt = now;
  }

  private refill(now: number): void {
    const elapsed = now - this.updatedAt;
    if (elapsed <= 0) return;
    this.updatedAt = now;
    if (this.messagesPerSecond > 0) this.messages = Math.min(this.burstMessages, this.messages + (elapsed * this.messagesPerSecond) / 1000);
    if (this.bytesPerSecond > 0) this.bytes = Math.min(this.burstBytes, this.bytes + (elapsed * this.bytesPerSecond) / 1000);
  }

  /** Milliseconds until a message of `size` bytes may pass; 0 when it may pass now. */
  waitMs(size: number, now: number): number {
    this.refill(now);
    let wait = 0;
    if (this.messagesPerSecond > 0 && this.messages < 1) wait = ((1 - this.messages) * 1000) / this.messagesPerSecond;
    if (this.bytesPerSecond > 0) {
      const need = size < this.burstBytes ? size : this.burstBytes;
      if (this.bytes < need) wait = Math.max(wait, ((need - this.bytes) * 1000) / this.bytesPerSecond);
    }
    return wait === 0 ? 0 : Math.ceil(wait);
  }

  /** True when the bucket has refilled completely: forgetting it then gives nobody extra tokens. */
  isFull(now: number): boolean {
    this.refill(now);
    return (this.messagesPerSecond === 0 || this.messages >= this.burstMessages) && (this.bytesPerSecond === 0 || this.bytes >= this.burstBytes);
  }

  /** Takes what was used elsewhere (another node of a cluster): `messages` messages of `bytes` bytes in all, possibly into debt. */
  debit(messages: number, bytes: number, now: number): void {
    this.refill(now);
    if (this.messagesPerSecond > 0) this.messages = Math.max(this.messages - messages, -this.burstMessages);
    if (this.bytesPerSecond > 0) this.bytes = Math.max(this.bytes - bytes, -this.burstBytes);
  }

  /** Takes one message of `size` bytes, possibly into debt. */
  take(size: number): void {
    if (this.messagesPerSecond > 0) this.messages -= 1;
    if (this.bytesPerSecond > 0) this.bytes -= size;
  }
}
