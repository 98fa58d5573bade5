/**
 * Helpers for cluster tests: a key file, a cluster configuration over a test Redis, and brokers
 * in this process or as real processes.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { createBroker, MemoryAuditSink, MemoryStore, type RunningBroker } from '../src/index.ts';
import type { ConfigInput } from '../src/config/schema.ts';
import { createLogger } from '../src/log.ts';
import { startRedis, type RedisServer } from './redis-server.ts';

export function tempDir(prefix = 'portcullis-cluster-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** A key file (0600) with one random key, in `dir`. */
export function writeKeyFile(dir: string, id = 'k1'): string {
  const file = path.join(dir, 'cluster.keys');
  fs.writeFileSync(file, `${id} ${randomBytes(32).toString('base64')}\n`, { mode: 0o600 });
  return file;
}

/** One test Redis and a folder holding a key file, for the nodes a test starts. */
export interface ClusterFixture<N> {
  redis: RedisServer;
  dir: string;
  keyFile: string;
  /** The test's nodes (null: one it killed), stopped at teardown. */
  nodes: (N | null)[];
  /** The test's clients, ended at teardown before the nodes stop. */
  clients: MqttClient[];
}

/** Starts the Redis and the folder; at teardown ends the clients, stops the nodes (with `stop`), then Redis, and removes the folder. */
export async function clusterFixture<N>(t: { teardown(fn: () => Promise<void> | void): void }, stop: (node: N) => Promise<unknown>): Promise<ClusterFixture<N>> {
  const redis = await startRedis();
  const dir = tempDir();
  const f: ClusterFixture<N> = { redis, dir, keyFile: writeKeyFile(dir), nodes: [], clients: [] };
  t.teardown(async () => {
    for (const c of f.clients) c.end(true);
    for (const n of f.nodes) if (n !== null) await stop(n).catch(() => undefined);
    await redis.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return f;
}

export interface ClusterOptions {
  redisUrl: string;
  keyFile: string;
  nodeId: string;
  name?: string;
  leaseMs?: number;
  extra?: Record<string, unknown>;
}

/** A configuration for one node of a test cluster: an anonymous TCP listener on an ephemeral loopback port. */
export function nodeConfig(o: ClusterOptions, rest: Partial<ConfigInput> = {}): ConfigInput {
  return {
    listeners: [{ name: 'tcp', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }],
    authorizers: ['allow-all'],
    store: { type: 'memory' },
    sys: { intervalSeconds: 0 },
    log: { level: (process.env.PORTCULLIS_TEST_LOG as 'info' | undefined) ?? 'silent' },
    cluster: {
      redis: { url: o.redisUrl, commandTimeoutMs: 2000, connectTimeoutMs: 2000 },
      keyFile: o.keyFile,
      nodeId: o.nodeId,
      name: o.name ?? 'test',
      leaseMs: o.leaseMs ?? 1500,
      ackTimeoutMs: 1000,
      moveTimeoutMs: 4000,
      ...(o.extra ?? {}),
    },
    ...rest,
  } as ConfigInput;
}

export interface InProcessNode {
  broker: RunningBroker;
  port: number;
  audit: MemoryAuditSink;
}

/** Starts a broker in this process. */
export async function startNode(config: ConfigInput, options: { store?: MemoryStore; sharedStore?: boolean } = {}): Promise<InProcessNode> {
  const audit = new MemoryAuditSink();
  const level = ((config as { log?: { level?: string } }).log?.level ?? 'silent') as 'silent';
  const broker = createBroker(config, { audit, logger: createLogger(level), ...(options.store !== undefined ? { store: options.store } : {}), ...(options.sharedStore !== undefined ? { sharedStore: options.sharedStore } : {}) });
  const { listeners } = await broker.start();
  return { broker, port: (listeners[0] as { port: number }).port, audit };
}

/** Connects an mqtt.js client; `onMessage` is attached before CONNACK. */
export function connect(port: number, options: IClientOptions = {}, onMessage?: (topic: string, payload: Buffer) => void): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect({ host: '127.0.0.1', port, reconnectPeriod: 0, connectTimeout: 8000, protocolVersion: 5, ...options });
    if (onMessage !== undefined) c.on('message', onMessage);
    c.once('connect', () => resolve(c));
    c.once('error', (err) => {
      c.end(true);
      reject(err);
    });
    c.once('close', () => reject(new Error('closed before CONNACK')));
  });
}

/** Three in-process nodes (a, b, c) of cluster `name` on one Redis, stopped by the test's teardown. */
export interface ThreeNodes {
  redis: RedisServer;
  nodes: InProcessNode[];
  clients: MqttClient[];
  /** The cluster key file (a test signs frames of its own with it). */
  keyFile: string;
}

export async function threeNodes(t: { teardown(fn: () => Promise<void> | void): void }, name: string): Promise<ThreeNodes> {
  const { redis, keyFile, nodes, clients } = await clusterFixture<InProcessNode>(t, (n) => n.broker.stop());
  for (const id of ['a', 'b', 'c']) nodes.push(await startNode(nodeConfig({ redisUrl: redis.url, keyFile, nodeId: id, name })));
  return { redis, nodes: nodes as InProcessNode[], clients, keyFile };
}

export const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls until `check` is true or `ms` passed; returns the last result. */
export async function eventually(check: () => boolean | Promise<boolean>, ms = 5000, step = 20): Promise<boolean> {
  const end = Date.now() + ms;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > end) return false;
    await delay(step);
  }
}
