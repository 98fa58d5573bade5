import type { Decision } from '../auth/types.ts';
import type { Authorizer } from './types.ts';

const ALLOW: Decision = { kind: 'allow', value: undefined };

/** Allows every action. Only active when the configuration names it; for development. */
export class AllowAllAuthorizer implements Authorizer {
  readonly id = 'allow-all';
  authorize(): Decision {
    return ALLOW;
  }
}
