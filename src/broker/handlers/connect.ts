/**
 * CONNECT. A connection's steps are a visible list, run in order; the first step that refuses
 * ends the connect with its reason code:
 *
 *   checkProtocol → checkUserProperties → checkClientId → checkKeepAlive → checkWill → checkAuditLog → authenticate
 *   → authorizeWill → claimSession → attachSession → recheckRestored → connack → resumeDelivery
 *
 * A session belongs to the identity that authenticated (owner.ts): the same client id under
 * another identity is another session, so no step refuses a client id for being in use. In a
 * cluster, claimSession first makes the session this node's, wherever it was (docs/cluster.md).
 */
import { randomUUID } from 'node:crypto';
import type { AuditEvent } from '../../audit/types.ts';
import type { ChainResult } from '../../auth/chain.ts';
import type { ConnectRequest, Principal, ProviderVerdict } from '../../auth/types.ts';
import type { AuthzResult } from '../../authz/types.ts';
import { countUserProperties, type ConnectPacket } from '../../protocol/codec.ts';
import { ReasonCode, reasonName, toV3ConnackReturnCode } from '../../protocol/reason-codes.ts';
import { checkTopicName } from '../../protocol/topic.ts';
import type { Connection } from '../connection.ts';
import type { BrokerApi } from '../handler-api.ts';
import { ownerOf } from '../../auth/owner.ts';
import { quotaKeyOf } from '../quotas.ts';
import type { Will } from '../ports.ts';
import type { Session } from '../session.ts';
import { rememberAuthMethod } from './reauth.ts';

interface ConnectContext {
  broker: BrokerApi;
  conn: Connection;
  packet: ConnectPacket;
  clientId: string;
  assignedClientId?: string;
  sessionExpiry: number;
  sessionExpiryCapped: boolean;
  serverKeepAlive?: number;
  will: Will | null;
  principal?: Principal;
  decidedBy?: string;
  verdicts?: ProviderVerdict[];
  session?: Session;
  sessionPresent: boolean;
  audited: boolean;
}

interface Refusal {
  reason: number;
  detail: string;
}

type Step = (ctx: ConnectContext) => Refusal | undefined | Promise<Refusal | undefined>;

const steps: Step[] = [
  checkProtocol,
  checkUserProperties,
  checkClientId,
  checkKeepAlive,
  checkWill,
  checkAuditLog,
  authenticate,
  authorizeWill,
  claimSession,
  attachSession,
  recheckRestored,
  connack,
  resumeDelivery,
];

export function handleConnect(broker: BrokerApi, conn: Connection, packet: ConnectPacket): void | Promise<void> {
  conn.state = 'connecting';
  conn.version = packet.protocolVersion ?? 4;
  const v5 = conn.version === 5;
  const ctx: ConnectContext = {
    broker,
    conn,
    packet,
    clientId: packet.clientId,
    sessionExpiry: 0,
    sessionExpiryCapped: false,
    will: null,
    sessionPresent: false,
    audited: false,
  };
  conn.clientId = packet.clientId;
  conn.bridge = (packet as { bridgeMode?: boolean }).bridgeMode === true;
  if (v5) {
    conn.problemInformation = packet.properties?.requestProblemInformation !== false;
    // Every packet from here on fits it, a refusing CONNACK included [MQTT-3.1.2-24].
    const max = packet.properties?.maximumPacketSize;
    if (max !== undefined) conn.clientMaxPacketSize = max;
  }
  return runSteps(ctx, 0);
}

/**
 * Runs the steps from `from` on. Steps that answer at once are not awaited: a connect with
 * nothing to wait for (anonymous, certificate, a cached password) runs to its CONNACK in one go,
 * and only a step that returns a promise makes the rest asynchronous.
 */
function runSteps(ctx: ConnectContext, from: number): void | Promise<void> {
  for (let i = from; i < steps.length; i++) {
    const refusal = steps[i]!(ctx);
    if (refusal instanceof Promise) return refusal.then((r) => (ended(ctx, r) ? undefined : runSteps(ctx, i + 1)));
    if (ended(ctx, refusal)) return;
  }
}

/** True when the connect ends here: the client went away (while we waited) or a step refused it. */
function ended(ctx: ConnectContext, refusal: Refusal | undefined): boolean {
  if ((ctx.conn.state as string) === 'closed') return true;
  if (refusal === undefined) return false;
  refuse(ctx, refusal);
  return true;
}

function refuse(ctx: ConnectContext, refusal: Refusal): void {
  const { conn, broker } = ctx;
  if (!ctx.audited) {
    broker.gate.audit(conn, {
      event: 'connect',
      decision: 'deny',
      reasonCode: refusal.reason,
      reason: refusal.detail,
      ...(ctx.decidedBy ? { decidedBy: ctx.decidedBy } : {}),
    });
  }
  broker.log.info(
    { clientId: ctx.clientId, listener: conn.peer.listener, remote: conn.peer.remoteAddress, reason: reasonName(refusal.reason), detail: refusal.detail },
    'connect refused',
  );
  broker.stats.connectsRefused++;
  const protocolViolation =
    refusal.reason === ReasonCode.MalformedPacket || refusal.reason === ReasonCode.ProtocolError || refusal.reason === ReasonCode.TopicNameInvalid;
  if (conn.v5) {
    conn.send({
      cmd: 'connack',
      reasonCode: refusal.reason,
      sessionPresent: false,
      ...(conn.problemInformation ? { properties: { reasonString: refusal.detail.slice(0, 200) } } : {}),
    });
  } else if (!protocolViolation) {
    // v3.1.1 has no CONNACK code for protocol violations: the connection is just closed.
    conn.send({ cmd: 'connack', returnCode: toV3ConnackReturnCode(refusal.reason), sessionPresent: false });
  }
  conn.close({ code: refusal.reason, detail: refusal.detail });
  conn.stream.end();
  setTimeout(() => conn.stream.destroy(), 1000).unref();
}

function checkProtocol(ctx: ConnectContext): Refusal | undefined {
  const { packet } = ctx;
  const expected = packet.protocolVersion === 3 ? 'MQIsdp' : 'MQTT';
  if (packet.protocolId !== expected) {
    return { reason: ReasonCode.UnsupportedProtocolVersion, detail: `protocol name ${packet.protocolId} does not match level ${packet.protocolVersion}` };
  }
  const method = packet.properties?.authenticationMethod;
  if (method !== undefined && !ctx.broker.gate.supportsAuthMethod(ctx.conn.peer.listener, method)) {
    return { reason: ReasonCode.BadAuthenticationMethod, detail: `authentication method '${method}' is not supported` }; // [MQTT-4.12.0-1]
  }
  return undefined;
}

/** limits.maxUserProperties bounds the CONNECT and the will, each on its own (CONNACK 0x83). */
function checkUserProperties(ctx: ConnectContext): Refusal | undefined {
  const max = ctx.broker.config.limits.maxUserProperties;
  if (countUserProperties(ctx.packet.properties) > max) return { reason: ReasonCode.ImplementationSpecificError, detail: `more than limits.maxUserProperties (${max}) user properties; raise it to admit more` };
  if (countUserProperties(ctx.packet.will?.properties) > max) return { reason: ReasonCode.ImplementationSpecificError, detail: `more than limits.maxUserProperties (${max}) user properties in the will; raise it to admit more` };
  return undefined;
}

function checkClientId(ctx: ConnectContext): Refusal | undefined {
  const { conn, packet } = ctx;
  const limits = ctx.broker.config.limits;
  const clean = packet.clean !== false;
  if (ctx.clientId.length === 0) {
    if (conn.version === 3) return { reason: ReasonCode.ClientIdentifierNotValid, detail: 'MQTT 3.1 requires a client id' };
    if (conn.version === 4 && !clean) {
      return { reason: ReasonCode.ClientIdentifierNotValid, detail: 'an empty client id needs clean session' }; // [MQTT-3.1.3-8]
    }
    ctx.clientId = `auto-${randomUUID()}`;
    if (conn.v5) ctx.assignedClientId = ctx.clientId; // [MQTT-3.2.2-16]
  }
  const idBytes = Buffer.byteLength(ctx.clientId);
  if (idBytes > limits.maxClientIdLength) {
    return { reason: ReasonCode.ClientIdentifierNotValid, detail: `client id of ${idBytes} bytes is longer than limits.maxClientIdLength (${limits.maxClientIdLength}); raise it to admit longer ids` };
  }
  conn.clientId = ctx.clientId;
  if (conn.v5) {
    const requested = packet.properties?.sessionExpiryInterval ?? 0;
    ctx.sessionExpiry = Math.min(requested, limits.maxSessionExpiry);
    ctx.sessionExpiryCapped = ctx.sessionExpiry !== requested;
  } else {
    ctx.sessionExpiry = clean ? 0 : limits.maxSessionExpiry;
  }
  return undefined;
}

function checkKeepAlive(ctx: ConnectContext): Refusal | undefined {
  const { conn, packet } = ctx;
  const limits = ctx.broker.config.limits;
  const max = limits.maxKeepAlive;
  const requested = packet.keepalive ?? 0;
  if (requested === 0) {
    // 0 turns keep-alive off [MQTT-3.1.2-10]; a stricter operator may still bound the idle time.
    const idle = limits.keepAliveZeroMaxIdle;
    if (idle > 0 && conn.v5) ctx.serverKeepAlive = idle; // [MQTT-3.2.2-21]
    conn.keepAlive = idle;
    // With no MQTT keep-alive, TCP keep-alive still finds a peer that vanished (a half-open socket).
    const socket = conn.stream as { setKeepAlive?: (on: boolean, delayMs: number) => unknown };
    if (idle === 0 && typeof socket.setKeepAlive === 'function') socket.setKeepAlive(true, 60_000);
    return undefined;
  }
  if (requested > max) {
    if (!conn.v5) {
      // v3.1.1 cannot be told another keep-alive, so refuse rather than cut it off early (as Mosquitto does).
      return { reason: ReasonCode.ClientIdentifierNotValid, detail: `keep-alive ${requested}s is above limits.maxKeepAlive (${max}s); raise limits.maxKeepAlive to admit it` };
    }
    ctx.serverKeepAlive = max; // [MQTT-3.2.2-21]
    conn.keepAlive = max;
  } else {
    conn.keepAlive = requested;
  }
  return undefined;
}

function checkWill(ctx: ConnectContext): Refusal | undefined {
  const will = ctx.packet.will;
  if (will === undefined || will === null) return undefined;
  const check = checkTopicName(will.topic, ctx.broker.config.limits);
  if (!check.ok) return { reason: ReasonCode.TopicNameInvalid, detail: `will topic: ${check.detail}` };
  const responseTopic = will.properties?.responseTopic;
  if (responseTopic !== undefined) {
    const rt = checkTopicName(responseTopic, ctx.broker.config.limits);
    if (!rt.ok) return { reason: ReasonCode.ProtocolError, detail: `will Response Topic: ${rt.detail}` }; // a will is a PUBLISH to be: [MQTT-3.3.2-14]
  }
  const { willDelayInterval, ...properties } = will.properties ?? {};
  ctx.will = {
    topic: will.topic,
    payload: typeof will.payload === 'string' ? Buffer.from(will.payload) : will.payload,
    qos: will.qos ?? 0,
    retain: will.retain === true,
    ...(Object.keys(properties).length > 0 ? { properties } : {}),
    delaySeconds: willDelayInterval ?? 0,
  };
  return undefined;
}

/** fail-closed: while the audit log cannot be written, no new client gets in (v5 0x88, v3 return code 3). */
function checkAuditLog(ctx: ConnectContext): Refusal | undefined {
  if (ctx.broker.gate.auditAvailable()) return undefined;
  ctx.decidedBy = 'audit';
  return { reason: ReasonCode.ServerUnavailable, detail: 'audit log unavailable: with audit.failMode fail-closed no client is admitted until audit.path can be written again' };
}

function authenticate(ctx: ConnectContext): Refusal | undefined | Promise<Refusal | undefined> {
  const { conn, packet } = ctx;
  // Fields assigned one by one, not spread: this runs on every connect.
  const req: ConnectRequest = { clientId: ctx.clientId, protocolVersion: conn.version, peer: conn.peer };
  if (packet.username !== undefined) req.username = packet.username;
  if (packet.password !== undefined) req.password = packet.password;
  const props = packet.properties;
  if (props !== undefined) {
    if (props.authenticationMethod !== undefined) req.authenticationMethod = props.authenticationMethod;
    if (props.authenticationData !== undefined) req.authenticationData = props.authenticationData;
  }
  const result = ctx.broker.gate.decideAuthentication(conn.peer.listener, req);
  return result instanceof Promise ? result.then((r) => authenticated(ctx, r)) : authenticated(ctx, result);
}

function authenticated(ctx: ConnectContext, result: ChainResult): Refusal | undefined {
  const { conn, packet, broker } = ctx;
  const decision = result.decision;
  if (result.decidedBy !== undefined) ctx.decidedBy = result.decidedBy;
  ctx.audited = true;
  if (decision.kind !== 'allow') {
    const reason = decision.kind === 'deny' ? decision.reason : ReasonCode.NotAuthorized;
    const detail = decision.kind === 'deny' ? decision.detail : 'not authorized';
    broker.gate.audit(conn, {
      event: 'connect',
      decision: 'deny',
      reasonCode: reason,
      reason: detail,
      ...(result.decidedBy ? { decidedBy: result.decidedBy } : {}),
      verdicts: result.verdicts,
      ...(packet.username !== undefined ? { username: packet.username } : {}),
    });
    return { reason, detail };
  }
  const principal = { ...decision.value, clientId: ctx.clientId };
  ctx.principal = principal;
  conn.principal = principal;
  ctx.audited = false; // the allow is recorded once the connect completes
  ctx.verdicts = result.verdicts;
  return undefined;
}

function authorizeWill(ctx: ConnectContext): Refusal | undefined | Promise<Refusal | undefined> {
  const will = ctx.will;
  if (will === null) return undefined;
  const { conn } = ctx;
  const decision = ctx.broker.gate.authorize(conn, 'publish', will.topic, will.qos, will.retain, true);
  return decision instanceof Promise ? decision.then((d) => willDecided(ctx, d)) : willDecided(ctx, decision);
}

function willDecided(ctx: ConnectContext, decision: AuthzResult): Refusal | undefined {
  if (decision.kind === 'allow') return undefined;
  ctx.audited = true; // authorize() recorded the denial
  return { reason: ReasonCode.NotAuthorized, detail: 'will topic not authorized' };
}

/**
 * In a cluster, the session (this identity and client id) may be held by another node: it is
 * taken over from there first (that node ends its connection with 0x8E, as a takeover here
 * would) and its state moves here. On a single node there is nothing to wait for.
 */
function claimSession(ctx: ConnectContext): Refusal | undefined | Promise<Refusal | undefined> {
  const owner = ownerOf(ctx.principal as Principal);
  const claimed = ctx.broker.sessions.claim(owner, ctx.clientId, ctx.packet.clean !== false);
  if (claimed === null) return undefined;
  return claimed.then((r) => {
    if ((ctx.conn.state as string) === 'closed') {
      ctx.broker.sessions.unclaimed(owner, ctx.clientId);
      return undefined;
    }
    return r.ok ? undefined : { reason: r.reason, detail: r.detail };
  });
}

function attachSession(ctx: ConnectContext): Refusal | undefined | Promise<Refusal | undefined> {
  const { conn, packet } = ctx;
  const sessions = ctx.broker.sessions;
  const clean = packet.clean !== false;
  const principal = ctx.principal as Principal;
  const owner = ownerOf(principal);
  // A persistent session (and its will) is committed to the store before the CONNACK says so.
  sessions.trackWrites();
  const attached = sessions.attach(conn, ctx.clientId, owner, clean, ctx.sessionExpiry, quotaKeyOf(owner, principal, conn.peer.remoteAddress));
  if (attached !== null && ctx.will !== null) {
    const w = ctx.will;
    sessions.storeWill(attached.session, { message: { topic: w.topic, payload: w.payload, qos: w.qos, retain: w.retain, ...(w.properties !== undefined ? { properties: w.properties } : {}) }, delayInterval: w.delaySeconds }, principal, conn.peer.listener);
  }
  const written = sessions.writesDone();
  if (attached === null) {
    sessions.unclaimed(owner, ctx.clientId);
    const max = ctx.broker.config.limits.quotas.persistentSessions;
    return { reason: ReasonCode.QuotaExceeded, detail: `this identity already has ${max} persistent sessions (limits.quotas.persistentSessions); connect with clean start or session expiry 0, or end one` };
  }
  ctx.session = attached.session;
  ctx.sessionPresent = attached.present;
  if (written === null) return undefined;
  return written.then((status) =>
    status === 'ok' ? undefined : { reason: status === 'full' ? ReasonCode.QuotaExceeded : ReasonCode.ServerUnavailable, detail: 'the session could not be stored (store write failed)' },
  );
}

/**
 * A session brought back from the store after a restart resumes: its subscriptions are asked
 * about again as the identity resuming it, before anything is delivered, as a policy reload
 * does (the policy may have changed while the broker was down).
 */
function recheckRestored(ctx: ConnectContext): undefined | Promise<undefined> {
  const session = ctx.session as Session;
  if (!session.restored) return undefined;
  session.restored = false;
  return ctx.broker.recheckRestored(session, ctx.conn).then(() => undefined);
}

function connack(ctx: ConnectContext): undefined {
  const { conn, packet, broker } = ctx;
  const limits = broker.config.limits;
  const session = ctx.session as Session;
  conn.state = 'connected';
  conn.session = session;
  conn.will = ctx.will;
  session.connection = conn;
  session.principal = ctx.principal ?? null;
  session.listener = conn.peer.listener;
  session.queueFullSince = 0; // a new connection starts its slow-consumer clock afresh (takeover included)
  if (conn.v5) {
    const p = packet.properties ?? {};
    conn.sendWindow = Math.min(p.receiveMaximum ?? 65535, limits.maxInflight);
    conn.outboundAliasMaximum = p.topicAliasMaximum ?? 0;
    conn.send({
      cmd: 'connack',
      reasonCode: ReasonCode.Success,
      sessionPresent: ctx.sessionPresent,
      properties: {
        receiveMaximum: limits.receiveMaximum,
        maximumPacketSize: limits.maxPacketSize,
        topicAliasMaximum: limits.topicAliasMaximum,
        retainAvailable: true,
        wildcardSubscriptionAvailable: true,
        subscriptionIdentifiersAvailable: true,
        sharedSubscriptionAvailable: true,
        ...(ctx.assignedClientId !== undefined ? { assignedClientIdentifier: ctx.assignedClientId } : {}),
        ...(ctx.sessionExpiryCapped ? { sessionExpiryInterval: ctx.sessionExpiry } : {}),
        ...(ctx.serverKeepAlive !== undefined ? { serverKeepAlive: ctx.serverKeepAlive } : {}),
        // [MQTT-3.2.2.3.17] the method the client authenticated with; it may re-authenticate with AUTH.
        ...(p.authenticationMethod !== undefined ? { authenticationMethod: p.authenticationMethod } : {}),
      },
    });
    if (p.authenticationMethod !== undefined) rememberAuthMethod(conn, p.authenticationMethod);
  } else {
    conn.sendWindow = limits.maxInflight;
    // MQTT 3.1 has no session-present flag: the byte is reserved and stays 0.
    conn.send({ cmd: 'connack', returnCode: 0, sessionPresent: conn.version === 4 && ctx.sessionPresent });
  }
  const principal = ctx.principal as Principal;
  if (broker.gate.auditsConnects()) {
    const event: AuditEvent = { event: 'connect', decision: 'allow', reasonCode: ReasonCode.Success, reason: ctx.sessionPresent ? 'session resumed' : 'new session' };
    if (ctx.decidedBy) event.decidedBy = ctx.decidedBy;
    if (ctx.verdicts) event.verdicts = ctx.verdicts;
    if (conn.bridge) event.detail = { bridge: true };
    broker.gate.audit(conn, event);
  }
  broker.connectionOpened(conn, principal);
  return undefined;
}

function resumeDelivery(ctx: ConnectContext): undefined {
  ctx.broker.delivery.resumeDelivery(ctx.session as Session);
  return undefined;
}
