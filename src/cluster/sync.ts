/**
 * What the rest of a node shares with the other nodes over the bus, besides messages and
 * sessions (docs/cluster.md, "exact and approximate"):
 *
 * - reloads: a reload asked of one node (SIGHUP, `portcullis policy reload`, the API) reaches
 *   every node; each reloads its own files (policy, password files, ban file, TLS certificates,
 *   CA and CRLs, the cluster key) and answers with its report, so the one that asked reports
 *   per node;
 * - the ban list: a good reload of the ban file on one node is applied on every node;
 * - failed logins: each one counted on a node counts on every node (the failed-login guard's
 *   backoff and automatic bans hold cluster-wide), sent in batches every `syncIntervalMs`;
 * - per-identity rate limits: what each identity used on a node is debited from its bucket on
 *   the others every `syncIntervalMs` (so the limit holds across nodes, one interval late).
 */
import { randomUUID } from 'node:crypto';
import type { BanEntry } from '../admission/ban-file.ts';
import type { AuditEvent } from '../audit/types.ts';
import type { LoginAttempt } from '../auth/guard.ts';
import type { Logger } from '../log.ts';
import type { ClusterExtension, ClusterNode } from './node.ts';
import { nodeOfRun } from './names.ts';
import { fromJson, toJson, type Control, type JsonValue } from './wire.ts';

import type { ClusterReloadReport, NodeReloadReport } from './status.ts';
export type { ClusterReloadReport, NodeReloadReport } from './status.ts';

export interface SyncParts {
  node: ClusterNode;
  log: Logger;
  audit: (event: AuditEvent) => void;
  /** Reloads on this node what is asked (policy, passwords, bans, tls, cluster-key). */
  reload(what: string[], trigger: string): Promise<NodeReloadReport>;
  applyBans(bans: BanEntry[], trigger: string): void;
  banList(): BanEntry[];
  remoteFailure(a: LoginAttempt): void;
  /** Takes and resets what each identity used here; null when no per-identity limit is set. */
  drainUsage(): [string, number, number][] | null;
  debit(identity: string, messages: number, bytes: number): void;
}

/** Every reload asks for all of these; each node reports each. */
export const RELOAD_ALL = ['policy', 'passwords', 'bans', 'tls', 'cluster-key'];

interface Waiting {
  reports: Map<string, NodeReloadReport>;
  expect: Set<string>;
  done: () => void;
}

/** Most failed logins kept for the next batch (a flood beyond it is counted where it happens). */
const MAX_PENDING_FAILURES = 10_000;

export class ClusterSync implements ClusterExtension {
  private readonly waiting = new Map<string, Waiting>();
  private failures: [string, string, string][] = [];
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly parts: SyncParts) {}

  start(): void {
    this.timer = setInterval(() => this.flush(), this.parts.node.syncIntervalMs);
    this.timer.unref();
    // A node that starts takes the ban list in force from a node that runs (its own file may be older).
    const node = this.parts.node;
    if (node.liveNodes().some((r) => r !== node.run)) void node.broadcastControl({ t: 'bans-wanted', replyTo: node.home });
  }

  /** This node's ban list, for a node that starts. */
  private bansTaken = false;

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.flush();
    for (const w of this.waiting.values()) w.done();
  }

  /** A failed login here: the others count it too (batched). */
  failed(a: LoginAttempt): void {
    if (this.failures.length < MAX_PENDING_FAILURES) this.failures.push([a.address, a.username, a.listener]);
  }

  /** A good reload of the ban file here: every node applies the list. */
  bansReloaded(bans: BanEntry[], trigger: string): void {
    void this.parts.node.broadcastControl({ t: 'bans', entries: toJson(bans), trigger });
  }

  private flush(): void {
    const node = this.parts.node;
    if (this.failures.length > 0) {
      const list = this.failures;
      this.failures = [];
      void node.broadcastControl({ t: 'auth-failures', list });
    }
    const usage = this.parts.drainUsage();
    if (usage !== null && usage.length > 0) void node.broadcastControl({ t: 'rate', usage });
  }

  /**
   * Reloads here, then on every other node; resolves with every node's report once all live
   * nodes answered (or after a deadline: those that did not are listed as silent).
   */
  async reloadEverywhere(trigger: string, localWhat: string[] = RELOAD_ALL): Promise<ClusterReloadReport> {
    const node = this.parts.node;
    const id = randomUUID();
    const mine = await this.parts.reload(localWhat, trigger);
    const expect = new Set(node.liveNodes().filter((r) => r !== node.run).map(nodeOfRun));
    const reports = new Map<string, NodeReloadReport>([[node.nodeId, mine]]);
    let done!: () => void;
    const finished = new Promise<void>((resolve) => (done = resolve));
    this.waiting.set(id, { reports, expect, done });
    if (expect.size === 0) done();
    const sent = await node.broadcastControl({ t: 'reload', id, what: RELOAD_ALL, trigger, replyTo: node.home });
    if (sent === null) done();
    const timer = setTimeout(done, Math.max(5000, node.ackTimeoutMs * 3));
    timer.unref();
    await finished;
    clearTimeout(timer);
    this.waiting.delete(id);
    const nodes = [...reports.values()].sort((a, b) => a.node.localeCompare(b.node));
    const silent = [...expect].filter((n) => !reports.has(n)).sort();
    const ok = nodes.every((n) => n.ok) && silent.length === 0;
    const summary = nodes.map((n) => `${n.node}: ${n.ok ? 'ok' : 'FAILED'}`).concat(silent.map((n) => `${n}: no answer`)).join('; ');
    (ok ? this.parts.log.info.bind(this.parts.log) : this.parts.log.error.bind(this.parts.log))({ trigger, nodes: nodes.length, silent }, `cluster reload: ${summary}`);
    this.parts.audit({ event: 'cluster', action: 'reload', decision: ok ? 'allow' : 'deny', reason: `reload on every node (${trigger}): ${summary}`, detail: { nodes: nodes.length, failed: nodes.filter((n) => !n.ok).length, silent: silent.length } });
    return { ok, nodes, silent };
  }

  onControl(c: Control, sender: string): void | Promise<unknown> {
    const node = this.parts.node;
    if (sender === node.run) return;
    switch (c.t) {
      case 'reload':
        // Not the ban file: the list in force is the one the asking node reloaded, which it sends to all.
        return this.parts.reload(c.what.filter((w) => w !== 'bans'), `cluster: ${c.trigger} (from ${nodeOfRun(sender)})`).then((report) => node.sendControl(c.replyTo, { t: 'reloaded', id: c.id, node: node.nodeId, reports: toJson(report) }));
      case 'bans':
        this.parts.applyBans(fromJson(c.entries) as BanEntry[], `cluster: ${c.trigger} (from ${nodeOfRun(sender)})`);
        return;
      case 'auth-failures':
        for (const [address, username, listener] of c.list) this.parts.remoteFailure({ address, username, listener, clientId: '' });
        return;
      case 'rate':
        for (const [identity, messages, bytes] of c.usage) this.parts.debit(identity, messages, bytes);
        return;
      case 'bans-wanted':
        node.sendControl(c.replyTo, { t: 'bans', entries: toJson(this.parts.banList()), trigger: `in force on ${node.nodeId}` });
        return;
      default:
        return;
    }
  }

  onReply(c: Control, sender: string): void {
    if (c.t === 'bans') {
      // The first node to answer a starting node's question gives it the list in force.
      if (this.bansTaken) return;
      this.bansTaken = true;
      this.parts.applyBans(fromJson(c.entries) as BanEntry[], `cluster: ${c.trigger} (from ${nodeOfRun(sender)})`);
      return;
    }
    if (c.t !== 'reloaded') return;
    const w = this.waiting.get(c.id);
    if (w === undefined) return;
    const report = fromJson(c.reports as JsonValue) as NodeReloadReport;
    w.reports.set(c.node, report);
    w.expect.delete(c.node);
    if (w.expect.size === 0) w.done();
  }
}
