/** Bounds on what a client may send. Every one has a safe default in the configuration schema. */
export interface TopicLimits {
  /** Longest topic name or filter, in bytes. */
  maxTopicLength: number;
  /** Most levels (`/`-separated parts) in a topic name or filter. */
  maxTopicLevels: number;
}

export interface ProtocolLimits extends TopicLimits {
  /** Largest packet the broker accepts, in bytes, checked before the body is buffered. */
  maxPacketSize: number;
  /** Largest CONNECT packet, in bytes: memory spent before authentication stays small. */
  maxConnectSize: number;
  /** Most user properties in one packet. */
  maxUserProperties: number;
}
