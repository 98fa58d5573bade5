/**
 * Two Portcullis nodes over a Redis reached through Sentinel or as a Redis Cluster: the same
 * connection keys for the shared Redis store (`store`) and the bus (`cluster.redis`), as an
 * operator would write them once and give to both.
 */
import fs from 'node:fs';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { connect, nodeConfig, startNode, tempDir, writeKeyFile, type InProcessNode } from './cluster-support.ts';
import { freshPrefix } from './store-redis-support.ts';

export interface HaCluster {
  nodes: InProcessNode[];
  clients: MqttClient[];
  /** An mqtt.js client on node `i`, ended at teardown. */
  client(i: number, options?: IClientOptions, onMessage?: (topic: string, payload: Buffer) => void): Promise<MqttClient>;
  /** The same, with the CONNACK's session present flag. */
  session(i: number, options: IClientOptions, onMessage?: (topic: string, payload: Buffer) => void): Promise<{ client: MqttClient; present: boolean }>;
}

/** Starts nodes a and b with `redis` as both the store's and the bus's connection. */
export async function haCluster(t: { teardown(fn: () => Promise<void> | void): void }, redis: Record<string, unknown>, name: string): Promise<HaCluster> {
  const dir = tempDir();
  const keyFile = writeKeyFile(dir);
  const prefix = freshPrefix(`${name}:`);
  const c: HaCluster = {
    nodes: [],
    clients: [],
    client: async (i, options = {}, onMessage) => {
      const cl = await connect((c.nodes[i] as InProcessNode).port, options, onMessage);
      c.clients.push(cl);
      return cl;
    },
    session: (i, options, onMessage) =>
      new Promise((resolve, reject) => {
        const cl = mqtt.connect({ host: '127.0.0.1', port: (c.nodes[i] as InProcessNode).port, reconnectPeriod: 0, connectTimeout: 8000, protocolVersion: 5, ...options });
        c.clients.push(cl);
        if (onMessage !== undefined) cl.on('message', onMessage);
        cl.once('connect', (ack) => resolve({ client: cl, present: ack.sessionPresent }));
        cl.once('error', reject);
        cl.once('close', () => reject(new Error('closed before CONNACK')));
      }),
  };
  t.teardown(async () => {
    for (const cl of c.clients) cl.end(true);
    for (const n of c.nodes) await n.broker.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  for (const id of ['a', 'b']) {
    const config = nodeConfig(
      { redisUrl: 'unused', keyFile, nodeId: id, name, leaseMs: 3000, extra: { redis: { ...redis, commandTimeoutMs: 2000, connectTimeoutMs: 3000 }, moveTimeoutMs: 8000, ackTimeoutMs: 3000 } },
      { store: { type: 'redis', ...redis, prefix, instance: id, commandTimeoutMs: 5000 } } as never,
    );
    c.nodes.push(await startNode(config));
  }
  return c;
}

export const persistent = (clientId: string, extra: IClientOptions = {}): IClientOptions => ({ clientId, clean: false, properties: { sessionExpiryInterval: 300 }, ...extra });
