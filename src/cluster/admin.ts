/**
 * The cluster as the command line sees it: `portcullis policy reload` asks every node to reload
 * and prints each node's report; `portcullis cluster status` lists the nodes and partitions. The
 * command is not a node: it signs its request with the cluster key (the nodes refuse anything
 * else) and reads the answers from a stream of its own, which it removes when done.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import type { ClusterConfig } from '../config/cluster-schema.ts';
import { decodeFrame, encodeFrame } from './frame.ts';
import { loadClusterKeys } from './keys.ts';
import { Names, nodeOfRun } from './names.ts';
import { CONTROL_MAXLEN } from './outbox.ts';
import { createRedisClient, type RedisClient } from './redis.ts';
import { defineScripts, runScript } from './scripts.ts';
import { RELOAD_ALL, type ClusterReloadReport, type NodeReloadReport } from './sync.ts';
import { BodyKind, decodeBody, encodeControl, fromJson, type JsonValue } from './wire.ts';

export interface PartitionView {
  id: string;
  host: string;
  hostNode: string;
  origin: string;
  alive: boolean;
  sessions: number;
  pending: number;
}

export interface ClusterView {
  nodes: { node: string; run: string; alive: boolean; info: Record<string, unknown> }[];
  partitions: PartitionView[];
}

async function withClient<T>(config: ClusterConfig, blocking: boolean, fn: (c: RedisClient) => Promise<T>): Promise<T> {
  const c = createRedisClient(config.redis, `portcullis:cli:${process.pid}`, blocking);
  c.on('error', () => undefined);
  await c.connect();
  try {
    return await fn(c);
  } finally {
    c.disconnect();
  }
}

/** Nodes, their leases, and every partition with its host and size. */
export function clusterView(config: ClusterConfig): Promise<ClusterView> {
  const names = new Names(config.name);
  return withClient(config, false, async (c) => {
    defineScripts(c);
    const flat = (await runScript(c, 'partitions', [names.partitions], [names.prefix])) as string[];
    const partitions: PartitionView[] = [];
    for (let i = 0; i + 3 < flat.length; i += 4) {
      const id = flat[i] as string;
      const host = flat[i + 1] as string;
      partitions.push({ id, host, hostNode: nodeOfRun(host), origin: flat[i + 2] as string, alive: flat[i + 3] === '1', sessions: Number(await c.hlen(names.owned(id))), pending: Number(await c.xlen(names.inbox(id))) });
    }
    const registered = (await c.hgetall(names.nodes)) as Record<string, string>;
    const nodes: ClusterView['nodes'] = [];
    for (const [node, raw] of Object.entries(registered)) {
      let info: Record<string, unknown> = {};
      try {
        info = JSON.parse(raw) as Record<string, unknown>;
      } catch {
        // another version's record
      }
      const run = String(info['run'] ?? '');
      nodes.push({ node, run, alive: (await c.get(names.lease(node))) === run, info });
    }
    nodes.sort((a, b) => a.node.localeCompare(b.node));
    return { nodes, partitions };
  });
}

/** Asks every live node to reload (policy, password files, TLS material, cluster key) and collects their reports. */
export async function clusterReload(config: ClusterConfig, trigger: string, timeoutMs = 15_000): Promise<ClusterReloadReport> {
  const keys = loadClusterKeys(config.keyFile);
  const key = keys[0] as (typeof keys)[number];
  const keyMap = new Map(keys.map((k) => [k.id, k.key]));
  const names = new Names(config.name);
  const id = randomUUID();
  const replies = names.replies(id);
  const view = await clusterView(config);
  const expect = new Set(view.nodes.filter((n) => n.alive).map((n) => n.node));
  return withClient(config, true, async (c) => {
    await c.xadd(replies, 'MAXLEN', '0', '*', 'i', '');
    await c.pexpire(replies, timeoutMs + 60_000);
    const sender = `cli~${randomBytes(6).toString('hex')}`;
    const body = encodeControl({ t: 'reload', id, what: RELOAD_ALL, trigger, replyTo: `cli:${id}` });
    const frame = encodeFrame(key, { sender, target: names.control, ts: Date.now(), seq: 1 }, [body]);
    await c.xadd(names.control, 'MAXLEN', '~', String(CONTROL_MAXLEN), '*', 'f', frame);
    const reports = new Map<string, NodeReloadReport>();
    let last = '0-0';
    const deadline = Date.now() + timeoutMs;
    while (reports.size < expect.size && Date.now() < deadline) {
      const r = (await c.xreadBuffer('BLOCK', Math.max(1, Math.min(1000, deadline - Date.now())), 'STREAMS', replies, last)) as [Buffer, [Buffer, Buffer[]][]][] | null;
      if (r === null) continue;
      for (const [, entries] of r) {
        for (const [rawId, fields] of entries) {
          last = rawId.toString();
          const value = fields[0]?.toString() === 'f' ? fields[1] : undefined;
          if (value === undefined) continue;
          const f = decodeFrame(value, keyMap, replies);
          if ('problem' in f) continue; // not from a node of this cluster
          for (const b of f.bodies) {
            const decoded = decodeBody(b);
            if (decoded.kind !== BodyKind.Control || decoded.control.t !== 'reloaded' || decoded.control.id !== id) continue;
            const report = fromJson(decoded.control.reports as JsonValue) as NodeReloadReport;
            reports.set(decoded.control.node, report);
          }
        }
      }
    }
    await c.del(replies).catch(() => undefined);
    const nodes = [...reports.values()].sort((a, b) => a.node.localeCompare(b.node));
    const silent = [...expect].filter((n) => !reports.has(n)).sort();
    return { ok: nodes.length > 0 && nodes.every((n) => n.ok) && silent.length === 0, nodes, silent };
  });
}

/** The report as the command prints it. */
export function formatReloadReport(r: ClusterReloadReport): string {
  const lines: string[] = [];
  for (const n of r.nodes) {
    lines.push(`${n.node}: ${n.ok ? 'ok' : 'FAILED'}`);
    for (const i of n.items) lines.push(`  ${i.what}: ${i.ok ? 'ok' : 'FAILED'}${i.detail !== '' ? ` (${i.detail})` : ''}`);
  }
  for (const s of r.silent) lines.push(`${s}: no answer (the node is alive but did not report in time)`);
  if (r.nodes.length === 0 && r.silent.length === 0) lines.push('no node is running in this cluster');
  return lines.join('\n') + '\n';
}
