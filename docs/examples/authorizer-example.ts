/**
 * An example authorizer module for Portcullis: a read-only "maintenance window" switch.
 *
 * Plug it in with
 *
 *   authorizers:
 *     - { type: module, path: docs/examples/authorizer-example.ts, options: { blockedPrefix: 'plant/' } }
 *     - { type: casbin, policy: policies/fleet.csv }
 *
 * The module's default export (or a named `createAuthorizer`) is a factory that receives
 * `options` and returns an Authorizer. It answers deny for publishes under `blockedPrefix`, and
 * abstains otherwise so that the next authorizer in the chain (here Casbin) decides. All
 * abstain means deny. A real module might ask an HTTP service; give such a call a deadline and
 * answer deny (not allow) when it fails.
 */
import type { Authorizer, Decision } from '../../src/index.ts';
import { ReasonCode } from '../../src/index.ts';

export default function createAuthorizer(options: Record<string, unknown>): Authorizer {
  const prefix = typeof options.blockedPrefix === 'string' ? options.blockedPrefix : '';
  const allowReads = options.allowReads === true;
  return {
    id: 'maintenance-window',
    authorize(_who, action, topic): Decision {
      if (action === 'publish' && prefix !== '' && topic.startsWith(prefix)) {
        return { kind: 'deny', reason: ReasonCode.NotAuthorized, detail: `publishing under ${prefix} is paused for maintenance` };
      }
      if (allowReads && (action === 'subscribe' || action === 'deliver' || action === 'unsubscribe')) return { kind: 'allow', value: undefined };
      return { kind: 'abstain' };
    },
  };
}
