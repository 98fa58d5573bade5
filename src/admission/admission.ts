/**
 * Admission control for a broker that faces the internet. Two places decide:
 *
 *   accept time (raw TCP socket, before TLS / HTTP / MQTT):
 *     IP and CIDR bans → exemptions → total cap → listener cap → per-address cap → connect rate
 *   CONNECT (before any authentication provider runs):
 *     client id and user name bans → flapping ban of the client id
 *
 * Every refusal, ban added, ban removed, ban expired and flapping ban is audited; refusals at
 * accept time through the rate-limited {@link RefusalAuditor}. One shared timer expires idle
 * state, writes refusal summaries and notices expired bans.
 */
import fs from 'node:fs';
import type net from 'node:net';
import path from 'node:path';
import type { AuditEvent } from '../audit/types.ts';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import { ReasonCode } from '../protocol/reason-codes.ts';
import { sessionKey, splitSessionKey } from '../store/types.ts';
import { RangeList, normalizeAddress, peerAddress } from '../util/address.ts';
import { type BanEntry, BanFileError, readBanFile } from './ban-file.ts';
import { BanList, type BanChange, describeBan } from './bans.ts';
import { EXPIRED_NOW, FlappingDetector } from './flapping.ts';
import { type Admitted, ConnectionLimiter, type ListenerPolicy, limitRefusalSetting, limitRefusalText } from './limiter.ts';
import { RefusalAuditor } from './refusal-audit.ts';
import type { AdmissionConfig } from '../config/admission-schema.ts';

/** Why a CONNECT was refused by admission control. */
export interface ConnectRefusal {
  reason: ReasonCode;
  detail: string;
  /** 'ban' (the ban file) or 'flapping'. */
  decidedBy: 'ban' | 'flapping';
}

/** Who a live connection is, for matching newly added bans. */
export interface LiveIdentity {
  clientId: string;
  username: string | undefined;
  remoteAddress: string;
}

export interface AdmissionStats {
  connections: number;
  trackedAddresses: number;
  accepted: number;
  refused: Record<string, number>;
  bans: number;
  flappingTracked: number;
}

export interface BanReloadReport {
  ok: boolean;
  file: string;
  detail: string;
  trigger: string;
  changes: BanChange[];
}

/** Most per-ban audit records for one reload; the rest are counted in the reload record. */
const MAX_CHANGE_RECORDS = 1000;

const ADMITTED = Symbol('admitted');
type AdmittedSocket = net.Socket & { [ADMITTED]?: Admitted };
function releaseAdmitted(this: AdmittedSocket): void {
  this[ADMITTED]?.release();
}

export class Admission {
  private readonly settings: AdmissionConfig;
  private readonly limiter: ConnectionLimiter;
  private readonly exempt: RangeList;
  private readonly refusals: RefusalAuditor;
  private readonly flapping: FlappingDetector | undefined;
  readonly bans: BanList;
  private readonly policies = new Map<string, ListenerPolicy>();
  private readonly counted = new WeakSet<object>();
  private readonly banListeners: ((added: BanEntry[]) => void)[] = [];
  private readonly reloadListeners: ((bans: BanEntry[], trigger: string) => void)[] = [];
  private timer: NodeJS.Timeout | undefined;
  private watcher: fs.FSWatcher | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private accepted = 0;
  private readonly totalCap: number;

  /** Reads the ban file now: throws BanFileError (naming the line) when it is malformed. */
  constructor(
    config: Config,
    private readonly audit: (event: AuditEvent) => void,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {
    const s = (this.settings = config.admission);
    this.totalCap = config.limits.maxConnections;
    this.limiter = new ConnectionLimiter(config.limits, s.maxTrackedAddresses, s.ipv6Prefix, now);
    this.exempt = new RangeList(s.exempt);
    this.refusals = new RefusalAuditor(s.refusalAudit.intervalMs, s.refusalAudit.maxAddresses, audit, log, now);
    if (s.flapping.enabled) this.flapping = new FlappingDetector(s.flapping, now);
    this.bans = new BanList(now);
    config.listeners.forEach((l) => {
      const name = l.name as string;
      this.policies.set(name, this.limiter.policy(name, l.limits));
    });
    if (s.bans.file !== undefined) {
      if (!fs.existsSync(s.bans.file)) log.warn({ file: s.bans.file }, 'the ban file does not exist yet: no bans in force until it is created');
      this.bans.replace(readBanFile(s.bans.file));
    }
  }

  // ── accept time ─────────────────────────────────────────────────────────────

  /** The check a listener runs on each raw socket it accepts; false means it was refused and destroyed. */
  admitter(listener: string): (socket: net.Socket) => boolean {
    const policy = this.policies.get(listener) ?? this.limiter.policy(listener, undefined);
    this.policies.set(listener, policy);
    return (socket) => this.admitSocket(policy, socket);
  }

  private admitSocket(policy: ListenerPolicy, socket: net.Socket): boolean {
    const raw = socket.remoteAddress;
    if (raw === undefined) {
      socket.destroy(); // already gone
      return false;
    }
    const { addr, text } = peerAddress(raw);
    const ban = this.bans.matchAddress(addr, text);
    if (ban !== undefined) {
      this.refuse(socket, policy, text, 'banned', `source address banned: ${describeBan(ban)}`, { ban: `${ban.kind} ${ban.value}` });
      return false;
    }
    const result = this.limiter.admit(policy, this.limiter.keyOf(addr, text), this.exempt.find(addr) !== undefined);
    if (typeof result === 'string') {
      const limit =
        result === 'total-cap' ? this.totalCap : result === 'listener-cap' ? policy.maxConnections : result === 'ip-cap' ? policy.maxConnectionsPerIp : undefined;
      const rate = result === 'rate' ? ` (${policy.connectRate.perSecond}/s, burst ${policy.connectRate.burst})` : '';
      this.refuse(socket, policy, text, result, `${limitRefusalText[result]}${limit !== undefined ? ` (${limit})` : ''}${rate}: ${limitRefusalSetting[result]}`);
      return false;
    }
    // One shared listener, not a closure per socket: the count goes back when the socket closes.
    (socket as AdmittedSocket)[ADMITTED] = result;
    socket.on('close', releaseAdmitted);
    this.accepted++;
    return true;
  }

  private refuse(socket: net.Socket, policy: ListenerPolicy, address: string, refusal: string, reason: string, detail?: Record<string, string>): void {
    const remotePort = socket.remotePort ?? 0;
    // No TLS handshake, no HTTP, no buffering: the socket is gone before anything is read.
    socket.destroy();
    this.refusals.note({ refusal, reason, listener: policy.name, remoteAddress: address, remotePort, ...(detail !== undefined ? { detail } : {}) });
  }

  // ── CONNECT ─────────────────────────────────────────────────────────────────

  /** A user name ban on the user name a provider mapped (it may differ from the one in CONNECT). */
  checkUsername(username: string | undefined): ConnectRefusal | undefined {
    const ban = this.bans.match('username', username);
    if (ban === undefined) return undefined;
    return { reason: ReasonCode.Banned, detail: `user name banned${ban.until !== undefined ? ` until ${new Date(ban.until).toISOString()}` : ''}${ban.reason !== undefined ? `: ${ban.reason}` : ''}`, decidedBy: 'ban' };
  }

  /** Client id, user name (and, for connections accepted before a ban, address) bans: before any provider runs. */
  checkConnect(clientId: string, username: string | undefined, remoteAddress: string): ConnectRefusal | undefined {
    const ban = this.bans.match('client-id', clientId) ?? this.bans.match('username', username) ?? this.bans.matchAddress(undefined, normalizeAddress(remoteAddress));
    if (ban === undefined) return undefined;
    const what = ban.kind === 'client-id' ? 'client id' : ban.kind === 'username' ? 'user name' : 'source address';
    return { reason: ReasonCode.Banned, detail: `${what} banned${ban.until !== undefined ? ` until ${new Date(ban.until).toISOString()}` : ''}${ban.reason !== undefined ? `: ${ban.reason}` : ''}`, decidedBy: 'ban' };
  }

  /**
   * A flapping ban of this identity's client id. Flapping is counted per session, that is per
   * identity and client id (sessionKey), after authentication: an identity that reconnects in a
   * loop with a client id bans only itself, never another identity that uses the same client id.
   */
  checkFlapping(owner: string, clientId: string, listener: string): ConnectRefusal | undefined {
    if (this.flapping === undefined) return undefined;
    const key = sessionKey(owner, clientId);
    const until = this.flapping.check(key);
    if (until <= 0) {
      if (until === EXPIRED_NOW) this.flappingExpired(key, listener);
      return undefined;
    }
    const f = this.settings.flapping;
    return {
      reason: ReasonCode.Banned,
      detail: `client id banned for this identity for ${Math.ceil((until - this.now()) / 1000)} s: it connected ${f.maxConnects} times within ${f.windowMs / 1000} s (admission.flapping)`,
      decidedBy: 'flapping',
    };
  }

  /**
   * Counts an authenticated connect for flapping detection. `connection` is any object unique to
   * the network connection (its PeerInfo), so an MQTT 5 re-authentication is not counted again.
   */
  connected(connection: object, owner: string, clientId: string, username: string | undefined, remoteAddress: string, listener: string): void {
    if (this.flapping === undefined || this.counted.has(connection)) return;
    this.counted.add(connection);
    const ban = this.flapping.connected(sessionKey(owner, clientId));
    if (ban === undefined) return;
    const f = this.settings.flapping;
    this.log.warn({ clientId, listener, remote: remoteAddress, banMs: f.banMs }, 'client id flapping: banned');
    this.audit({
      event: 'ban',
      action: 'flapping',
      decision: 'deny',
      reasonCode: ReasonCode.Banned,
      reason: `client id connected ${f.maxConnects} times within ${f.windowMs} ms: banned for ${f.banMs} ms`,
      listener,
      clientId,
      remoteAddress,
      ...(username !== undefined ? { username } : {}),
      detail: { durationMs: f.banMs, connects: f.maxConnects, windowMs: f.windowMs, until: new Date(ban.until).toISOString() },
    });
  }

  private flappingExpired(key: string, listener?: string): void {
    const { owner, clientId } = splitSessionKey(key);
    this.audit({ event: 'unban', action: 'flapping', decision: 'allow', reason: 'flapping ban expired', clientId, detail: { owner }, ...(listener !== undefined ? { listener } : {}) });
  }

  // ── live connections ────────────────────────────────────────────────────────

  /** Calls `fn` with the bans a reload added, so live connections they cover can be closed. */
  onBansAdded(fn: (added: BanEntry[]) => void): void {
    this.banListeners.push(fn);
  }

  /** Calls `fn` with the whole list after each good reload of the ban file here (a cluster sends it to every node). */
  onBansReloaded(fn: (bans: BanEntry[], trigger: string) => void): void {
    this.reloadListeners.push(fn);
  }

  /** The bans in force. */
  banList(): BanEntry[] {
    return this.bans.active();
  }

  /**
   * A ban list another node of the cluster loaded: it replaces this node's, with the same audit
   * records and the same effect on live connections as a reload of the file here. This node's
   * own file is not rewritten.
   */
  applyBans(bans: BanEntry[], trigger: string): BanReloadReport {
    for (const b of this.bans.expired()) this.auditChange({ change: 'expired', ban: b }, 'expiry');
    const changes = this.bans.replace(bans);
    const report: BanReloadReport = { ok: true, file: '', detail: `${this.bans.active().length} bans in force (${summarize(changes)})`, trigger, changes };
    if (changes.length === 0) return report;
    this.log.info({ trigger }, `ban list from the cluster: ${report.detail}`);
    this.audit({ event: 'reload', action: 'ban-list', decision: 'allow', reason: `${trigger}: ${report.detail}` });
    changes.slice(0, MAX_CHANGE_RECORDS).forEach((c) => this.auditChange(c, trigger));
    const added = changes.filter((c) => c.change === 'added' || c.change === 'updated').map((c) => c.ban);
    if (added.length > 0 && this.settings.bans.disconnectLive) for (const fn of this.banListeners) fn(added);
    return report;
  }

  /** A matcher for live connections: which of `bans` covers one, if any. */
  coverer(bans: readonly BanEntry[]): (who: LiveIdentity) => BanEntry | undefined {
    const list = new BanList(this.now);
    list.replace(bans);
    return (who) =>
      (who.clientId !== '' ? list.match('client-id', who.clientId) : undefined) ?? list.match('username', who.username) ?? list.matchAddress(undefined, normalizeAddress(who.remoteAddress));
  }

  // ── ban file ────────────────────────────────────────────────────────────────

  /** Re-reads the ban file. A malformed file keeps the last good list; both outcomes are logged and audited. */
  reloadBans(trigger = 'api'): BanReloadReport {
    const file = this.settings.bans.file;
    if (file === undefined) return { ok: true, file: '', detail: 'no ban file configured', trigger, changes: [] };
    let report: BanReloadReport;
    // Bans that ran out since the last sweep are reported as expired, not silently replaced.
    for (const b of this.bans.expired()) this.auditChange({ change: 'expired', ban: b }, 'expiry');
    try {
      // A file that has gone missing keeps the last good list (fail closed): an editor that deletes
      // and rewrites, or a moved file, must not lift every ban.
      const changes = this.bans.replace(readBanFile(file, false));
      report = { ok: true, file, detail: `${this.bans.active().length} bans in force (${summarize(changes)})`, trigger, changes };
    } catch (err) {
      const why = err instanceof BanFileError ? err.message : `${file}: ${(err as Error).message}`;
      report = { ok: false, file, detail: `${why}; keeping the last good ban list`, trigger, changes: [] };
    }
    (report.ok ? this.log.info.bind(this.log) : this.log.error.bind(this.log))({ file, trigger }, `ban file reload: ${report.detail}`);
    this.audit({ event: 'reload', action: 'ban-file', decision: report.ok ? 'allow' : 'deny', reason: `${trigger}: ${report.detail}`, detail: { file } });
    report.changes.slice(0, MAX_CHANGE_RECORDS).forEach((c) => this.auditChange(c, trigger));
    const added = report.changes.filter((c) => c.change === 'added' || c.change === 'updated').map((c) => c.ban);
    if (added.length > 0 && this.settings.bans.disconnectLive) for (const fn of this.banListeners) fn(added);
    if (report.ok) for (const fn of this.reloadListeners) fn(this.bans.active(), trigger);
    return report;
  }

  private auditChange(c: BanChange, trigger: string): void {
    const b = c.ban;
    const who =
      b.kind === 'client-id' ? { clientId: b.value } : b.kind === 'username' ? { username: b.value } : { remoteAddress: b.value };
    const detail = { kind: b.kind, value: b.value, trigger, ...(b.until !== undefined ? { until: new Date(b.until).toISOString() } : {}) };
    if (c.change === 'added' || c.change === 'updated') {
      this.audit({ event: 'ban', action: 'ban-file', decision: 'deny', reasonCode: ReasonCode.Banned, reason: `ban ${c.change}: ${describeBan(b)}`, ...who, detail });
    } else {
      this.audit({ event: 'unban', action: 'ban-file', decision: 'allow', reason: `ban ${c.change === 'removed' ? 'removed from the ban file' : 'expired'}: ${describeBan(b)}`, ...who, detail });
    }
  }

  // ── lifecycle ───────────────────────────────────────────────────────────────

  start(): void {
    if (this.timer !== undefined) return;
    this.timer = setInterval(() => this.sweep(), this.settings.refusalAudit.intervalMs);
    this.timer.unref();
    const file = this.settings.bans.file;
    if (file !== undefined) {
      this.log.info({ file, bans: this.bans.active().length }, 'ban file loaded');
      this.audit({ event: 'reload', action: 'ban-file', decision: 'allow', reason: `start: ${this.bans.active().length} bans in force`, detail: { file } });
      if (this.settings.bans.watch) this.watch(file);
    }
  }

  private watch(file: string): void {
    // Watch the directory: editors and `portcullis ban` replace the file by renaming.
    const dir = path.dirname(path.resolve(file));
    const base = path.basename(file);
    try {
      this.watcher = fs.watch(dir, { persistent: false }, (_event, name) => {
        if (name !== null && name !== base) return;
        clearTimeout(this.debounce);
        this.debounce = setTimeout(() => this.reloadBans('file change'), 100);
        this.debounce.unref();
      });
      this.watcher.on('error', (err) => this.log.warn({ file, err: err.message }, 'ban file watch failed: SIGHUP still reloads it'));
    } catch (err) {
      this.log.warn({ file, err: (err as Error).message }, 'cannot watch the ban file: SIGHUP still reloads it');
    }
  }

  /** The one shared timer: idle state, refusal summaries, expired bans. */
  sweep(): void {
    this.limiter.sweep([...this.policies.values()]);
    this.refusals.flush();
    for (const clientId of this.flapping?.sweep() ?? []) this.flappingExpired(clientId);
    for (const b of this.bans.expired()) this.auditChange({ change: 'expired', ban: b }, 'expiry');
  }

  close(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    clearTimeout(this.debounce);
    this.watcher?.close();
    this.watcher = undefined;
    this.refusals.flush(true);
  }

  stats(): AdmissionStats {
    return {
      connections: this.limiter.connections,
      trackedAddresses: this.limiter.tracked,
      accepted: this.accepted,
      refused: Object.fromEntries(this.refusals.counts),
      bans: this.bans.active().length,
      flappingTracked: this.flapping?.tracked ?? 0,
    };
  }
}


function summarize(changes: readonly BanChange[]): string {
  const n = (k: BanChange['change']) => changes.filter((c) => c.change === k).length;
  return `${n('added')} added, ${n('updated')} updated, ${n('removed')} removed`;
}
