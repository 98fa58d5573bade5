/** `policy explain` for the admin API: every Casbin authorizer's decision, with the rule behind it. */
import type { Principal } from '../auth/types.ts';
import { CasbinAuthorizer, describe } from '../authz/casbin/authorizer.ts';
import type { Authorizer } from '../authz/types.ts';
import type { ExplainAnswer, ExplainRequest } from './context.ts';

export function explainPolicy(authorizers: readonly Authorizer[], req: ExplainRequest): ExplainAnswer[] {
  // The principal `portcullis policy explain` builds: the user or client, and the roles given.
  const who: Principal = { clientId: req.client ?? req.user ?? '', method: 'policy-explain', provider: 'policy-explain', roles: req.roles, attributes: {} };
  if (req.user !== undefined) who.username = req.user;
  const answers: ExplainAnswer[] = [];
  for (const a of authorizers) {
    if (!(a instanceof CasbinAuthorizer)) continue;
    const e = a.explain(who, req.action, req.topic, req.qos, req.retain, { ...(req.listener !== undefined ? { listener: req.listener } : {}), ...(req.shareGroup !== undefined ? { shareGroup: req.shareGroup } : {}) });
    answers.push({
      authorizer: a.id,
      decision: e.decision,
      rule: e.rule !== undefined ? describe(e.rule) : null,
      detail: e.detail,
      nearMisses: (e.nearMisses ?? []).map((n) => ({ rule: describe(n.rule), why: n.why })),
      policyVersion: a.version,
    });
  }
  return answers;
}
