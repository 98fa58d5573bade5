import type { Decision, Principal } from '../auth/types.ts';

/** What a client is trying to do with a topic. `deliver` is the read check before a message reaches a subscriber. */
export type Action = 'publish' | 'subscribe' | 'unsubscribe' | 'deliver';

export interface AccessContext {
  qos: 0 | 1 | 2;
  retain: boolean;
  /** The listener the client is connected to. */
  listener: string;
  /** True when the publish is the client's will message. */
  will?: boolean;
  /**
   * For `deliver`: the group of the shared subscription (`$share/GROUP/...`) the message goes
   * out on; undefined for a plain subscription. A `$share/GROUP/...` policy rule speaks only
   * about deliveries whose group it names.
   */
  shareGroup?: string;
}

/**
 * Decides whether a principal may act on a topic. Answer allow, deny (with a reason code) or
 * abstain. Authorizers form a chain: the first answer that is not abstain wins and all abstain
 * means deny. A synchronous answer keeps the delivery path fast.
 *
 * @example
 * const readOnly: Authorizer = {
 *   id: 'read-only',
 *   authorize: (_who, action) =>
 *     action === 'publish' ? { kind: 'deny', reason: ReasonCode.NotAuthorized, detail: 'read-only' } : { kind: 'abstain' },
 * };
 */
export interface Authorizer {
  readonly id: string;
  authorize(who: Principal, action: Action, topic: string, ctx: AccessContext): Decision | Promise<Decision>;
  reload?(): Promise<ReloadReport>;
  close?(): Promise<void>;
}

export interface ReloadReport {
  ok: boolean;
  version?: string;
  detail?: string;
}

/** A chain's answer, with who decided for the audit record. */
export type AuthzResult = Decision & { decidedBy?: string; rule?: string; policyVersion?: string };
