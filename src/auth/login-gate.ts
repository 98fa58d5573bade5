/**
 * Where the failed-login guard meets a listener's provider chain. Each provider that checks a
 * guessable secret is wrapped ({@link GuardedAuthenticator}); the first time such a provider is
 * about to look at a request, the gate asks the guard:
 *
 *   guard.admit → (hold until the attempt's turn) → check queue slot → the provider's check
 *   … chain result … → gate.settle (success, failure or neither) → guard.settle
 *
 * Providers that check nothing guessable (certificate, PSK, JWT, anonymous) are not wrapped in
 * effect: their requests pass straight through, so password failures never hold them back.
 */
import { ReasonCode } from '../protocol/reason-codes.ts';
import type { ChainResult } from './chain.ts';
import type { AuthGuard, CheckOutcome, GuardRefusal, GuardTicket } from './guard.ts';
import type { Authenticator, ConnectRequest, Decision, Principal } from './types.ts';

/** The gate's state for one request: admitted (with a ticket) or refused. */
interface GateState {
  ticket?: GuardTicket;
  refusal?: GuardRefusal;
  /** How long to hold the attempt before its check (ticket) or its refusal. */
  holdMs: number;
  /** The provider the attempt was admitted for (its verdict gets the guard's note). */
  provider: string;
}

/** Decisions made by the guard, so the chain's result can name 'guard' as the decider. */
const guardDecisions = new WeakSet<object>();

/** True when a request makes this provider check a secret that can be guessed. */
export function checksGuessableSecret(p: Authenticator, req: ConnectRequest): boolean {
  return p.checksGuessableSecret !== undefined ? p.checksGuessableSecret(req) : carriesSecret(req);
}

/** The assumption for a provider that does not say (a module): a password or authentication data may be guessed. */
export function carriesSecret(req: ConnectRequest): boolean {
  return req.password !== undefined || req.authenticationData !== undefined;
}

/**
 * The gate's state rides on the request object itself: a connect makes one request, and a
 * WeakMap entry per connect would cost more (and load the garbage collector with ephemerons).
 */
const STATE = Symbol('login-gate');
type Gated = ConnectRequest & { [STATE]?: GateState | undefined };

export class LoginGate {
  private readonly maxHoldMs: number;

  constructor(
    readonly guard: AuthGuard,
    private readonly listener: string,
    deadlineMs: number,
    private readonly addressOf: (req: ConnectRequest) => string,
  ) {
    // A held attempt must still get its check within the provider deadline.
    this.maxHoldMs = Math.max(0, Math.min(guard.maxHoldMs, deadlineMs - 1000));
  }

  /**
   * Admits the request once (later guessable providers in the chain reuse the admission).
   * Returns the refusal to answer at once, 'wait' when the attempt must be held first, or
   * 'go' to check now.
   */
  enter(req: ConnectRequest, provider: string): Decision<Principal> | 'wait' | 'go' {
    let s = (req as Gated)[STATE];
    if (s === undefined) {
      const a = this.guard.admit(
        { address: this.addressOf(req), username: req.username ?? '', clientId: req.clientId, listener: this.listener },
        this.maxHoldMs,
      );
      s = a.kind === 'check' ? { ticket: a.ticket, holdMs: a.ticket.waitMs, provider } : { refusal: a.refusal, holdMs: a.holdMs, provider };
      (req as Gated)[STATE] = s;
    }
    if (s.holdMs > 0) return 'wait';
    if (s.refusal !== undefined) return refusalDecision(s.refusal);
    return 'go';
  }

  /** Holds the attempt for its turn; the guard's refusal after the hold, or undefined to go on. */
  async hold(req: ConnectRequest, signal: AbortSignal | undefined): Promise<Decision<Principal> | undefined> {
    const s = (req as Gated)[STATE];
    if (s === undefined) return undefined;
    if (s.holdMs > 0) {
      const ms = s.holdMs;
      s.holdMs = 0; // once
      if (!(await this.sleep(ms, signal))) return { kind: 'deny', reason: ReasonCode.ServerUnavailable, detail: 'gave up while held by the login guard' };
    }
    return s.refusal !== undefined ? refusalDecision(s.refusal) : undefined;
  }

  /** Runs a check that needs the thread pool through the check queue. */
  async run(check: () => Promise<Decision<Principal>>, signal: AbortSignal | undefined): Promise<Decision<Principal>> {
    const slot = this.guard.checks.acquire(signal);
    if (slot === 'full') {
      const q = this.guard.checks;
      return refusalDecision({
        reason: ReasonCode.ServerUnavailable,
        detail: `refused by authGuard.checkQueue: ${q.maxRunning} credential checks running and ${q.maxWaiting} waiting; try again shortly`,
      });
    }
    if (slot !== true && !(await slot)) return { kind: 'deny', reason: ReasonCode.ServerUnavailable, detail: 'gave up while waiting for a credential check' };
    try {
      return await check();
    } finally {
      this.guard.checks.release();
    }
  }

  /**
   * Settles the request's admission with the chain's result, and names the guard in the result
   * where it refused or delayed the attempt. `identityRefused`: a provider allowed but the
   * identity rules refused, which is neither a success nor a failed guess.
   */
  settle(req: ConnectRequest, result: ChainResult, identityRefused: boolean): ChainResult | Promise<ChainResult> {
    const s = (req as Gated)[STATE];
    if (s === undefined) return this.unguarded(req, result, identityRefused);
    (req as Gated)[STATE] = undefined;
    const d = result.decision;
    if (s.ticket !== undefined) {
      this.guard.settle(s.ticket, identityRefused ? 'neutral' : outcomeOf(d));
      const delayedBy = s.ticket.delayedBy;
      if (delayedBy !== undefined) {
        const i = result.verdicts.findIndex((v) => v.provider === s.provider);
        const note = { provider: 'guard', kind: 'abstain' as const, detail: `delayed ${s.ticket.waitMs} ms: ${delayedBy}` };
        if (i >= 0) result.verdicts.splice(i, 0, note);
        else result.verdicts.push(note);
      }
    }
    if (d.kind === 'deny' && guardDecisions.has(d)) {
      const last = result.verdicts[result.verdicts.length - 1];
      if (last !== undefined && last.provider === s.provider) {
        last.provider = 'guard';
        if (s.refusal?.note !== undefined) last.detail = `${last.detail ?? ''} (${s.refusal.note})`;
      }
      return { ...result, decidedBy: 'guard' };
    }
    return result;
  }

  /**
   * A request no guessable check was made for. A credential it carried (a token) that a provider
   * found wrong still counts as a failed login, and once its pair is throttled the refusal is held.
   */
  private unguarded(req: ConnectRequest, result: ChainResult, identityRefused: boolean): ChainResult | Promise<ChainResult> {
    if (identityRefused || !carriesSecret(req) || outcomeOf(result.decision) !== 'failure') return result;
    const holdMs = this.guard.failedUnguarded({ address: this.addressOf(req), username: req.username ?? '', clientId: req.clientId, listener: this.listener }, this.maxHoldMs);
    if (holdMs <= 0) return result;
    return this.sleep(holdMs, undefined).then(() => result);
  }

  private sleep(ms: number, signal: AbortSignal | undefined): Promise<boolean> {
    if (signal?.aborted) return Promise.resolve(false);
    const guard = this.guard;
    guard.holding++;
    return new Promise((resolve) => {
      const done = (ok: boolean) => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        guard.holding--;
        resolve(ok);
      };
      const onAbort = () => done(false);
      const timer = setTimeout(done, ms, true);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}

/** Bad credentials are failures (an unknown user the same as a wrong password); outages and the guard's own answers are not. */
function outcomeOf(d: Decision<Principal>): CheckOutcome {
  if (d.kind === 'allow') return 'success';
  if (d.kind === 'deny' && !guardDecisions.has(d) && (d.reason === ReasonCode.BadUserNameOrPassword || d.reason === ReasonCode.NotAuthorized)) return 'failure';
  return 'neutral';
}

function refusalDecision(r: GuardRefusal): Decision<Principal> {
  const d: Decision<Principal> = { kind: 'deny', reason: r.reason, detail: r.detail };
  guardDecisions.add(d);
  return d;
}

/** A provider behind the login gate. It answers as the provider does, once the gate lets it. */
export class GuardedAuthenticator implements Authenticator {
  constructor(
    private readonly inner: Authenticator,
    private readonly gate: LoginGate,
  ) {}

  // Read through: a module provider learns its id and methods when it loads.
  get id(): string {
    return this.inner.id;
  }

  get methods(): readonly string[] | undefined {
    return this.inner.methods;
  }

  init(): Promise<void> {
    return this.inner.init?.() ?? Promise.resolve();
  }

  close(): Promise<void> {
    return this.inner.close?.() ?? Promise.resolve();
  }

  checksGuessableSecret(req: ConnectRequest): boolean {
    return checksGuessableSecret(this.inner, req);
  }

  decideNow(req: ConnectRequest): Decision<Principal> | undefined {
    if (!checksGuessableSecret(this.inner, req)) return this.inner.decideNow?.(req);
    const pass = this.gate.enter(req, this.id);
    if (pass === 'wait') return undefined;
    if (pass !== 'go') return pass;
    // Admitted: a check that needs no waiting (a credential-cache hit, an empty password) answers now.
    return this.inner.decideNow?.(req);
  }

  async authenticate(req: ConnectRequest, signal: AbortSignal): Promise<Decision<Principal>> {
    if (!checksGuessableSecret(this.inner, req)) return this.inner.authenticate(req, signal);
    const pass = this.gate.enter(req, this.id);
    if (pass !== 'go' && pass !== 'wait') return pass;
    if (pass === 'wait') {
      const refused = await this.gate.hold(req, signal);
      if (refused !== undefined) return refused;
      const now = this.inner.decideNow?.(req);
      if (now !== undefined) return now;
    }
    return this.gate.run(() => this.inner.authenticate(req, signal), signal);
  }
}
