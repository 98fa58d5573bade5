import type { ReasonCode } from '../protocol/reason-codes.ts';
import type { PeerInfo } from '../transport/types.ts';

/**
 * A verdict with three outcomes. All abstain means deny; nothing is allowed by default.
 *
 * @example
 * const verdict: Decision<Principal> = { kind: 'deny', reason: ReasonCode.BadUserNameOrPassword, detail: 'wrong password' };
 */
export type Decision<T = void> =
  | { kind: 'allow'; value: T }
  | { kind: 'deny'; reason: ReasonCode; detail: string }
  | { kind: 'abstain' };

/** Who is connected: built by the authenticator that allowed the connection. */
export interface Principal {
  clientId: string;
  /** The verified user name; undefined for anonymous clients. */
  username?: string;
  /** How the identity was proven: 'anonymous', 'password', 'certificate', 'jwt', 'psk'... */
  method: string;
  /** The id of the provider that allowed it. */
  provider: string;
  roles: string[];
  /** Certificate subject, SANs and fingerprint; JWT claims; PSK identity. */
  attributes: Record<string, unknown>;
  /** Epoch milliseconds after which the broker disconnects the client (JWT exp, certificate notAfter). */
  expiresAt?: number;
}

/** What a provider sees of a CONNECT. The password is a secret: never log it. */
export interface ConnectRequest {
  clientId: string;
  username?: string;
  password?: Buffer;
  protocolVersion: 3 | 4 | 5;
  peer: PeerInfo;
  authenticationMethod?: string;
  authenticationData?: Buffer;
}

/**
 * An authentication provider. Answer `allow` with a Principal, `deny` with a reason code, or
 * `abstain` to let the next provider decide. Throwing, or missing the deadline, denies.
 *
 * @example
 * const provider: Authenticator = {
 *   id: 'http-check',
 *   async authenticate(req, signal) {
 *     if (req.username === undefined) return { kind: 'abstain' };
 *     const ok = await askService(req.username, req.password, signal);
 *     return ok
 *       ? { kind: 'allow', value: { clientId: req.clientId, username: req.username, method: 'password', provider: 'http-check', roles: [], attributes: {} } }
 *       : { kind: 'deny', reason: ReasonCode.BadUserNameOrPassword, detail: 'rejected by service' };
 *   },
 * };
 */
export interface Authenticator {
  readonly id: string;
  authenticate(req: ConnectRequest, signal: AbortSignal): Promise<Decision<Principal>>;
  /**
   * Optional: the answer when it needs no waiting (no I/O, no password hashing), or undefined to
   * be asked through authenticate() with its deadline. It must answer as authenticate() would.
   * Built-in providers use it for anonymous, certificate and cached password logins.
   */
  decideNow?(req: ConnectRequest): Decision<Principal> | undefined;
  /**
   * Optional: true when answering this request means checking a secret that can be guessed (a
   * password). Those checks go through the failed-login guard (throttling, the check queue);
   * others never meet it. Without this method, a request that carries a password or
   * authentication data counts as such a check.
   */
  checksGuessableSecret?(req: ConnectRequest): boolean;
  /** MQTT 5 authentication methods this provider handles (CONNECT and AUTH re-authentication), e.g. ['JWT']. */
  readonly methods?: readonly string[];
  /** Called once before the listeners start: load keys, warm caches. Throwing stops the start. */
  init?(): Promise<void>;
  close?(): Promise<void>;
}

/** One provider's verdict, kept for the connect audit record. */
export interface ProviderVerdict {
  provider: string;
  kind: Decision['kind'];
  reason?: ReasonCode;
  detail?: string;
}
