/**
 * Shared test helpers: a broker on an ephemeral loopback port with an in-memory audit sink,
 * mqtt.js clients, and a raw socket for sending hand-made bytes.
 */
import { Command } from 'commander';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { createBroker, MemoryAuditSink, MemoryStore, type BrokerOptions, type ConfigInput, type RunningBroker } from '../src/index.ts';
import { silentLogger } from '../src/log.ts';
import type { AuditSinkSettings } from '../src/audit/sinks.ts';
import type { AuditOutput } from '../src/audit/chained-sink.ts';

export interface TestBroker {
  broker: RunningBroker;
  port: number;
  /** Port of the WebSocket listener, when one was asked for. */
  wsPort?: number;
  audit: MemoryAuditSink;
  store: MemoryStore;
  url: string;
  stop(): Promise<void>;
}

/**
 * Starts a broker on 127.0.0.1 with a random port. By default the listener admits anonymous
 * clients and the authorizer is allow-all; pass `config` to override any key.
 */
export async function startBroker(config: Partial<ConfigInput> = {}, options: BrokerOptions & { ws?: boolean } = {}): Promise<TestBroker> {
  const audit = (options.audit as MemoryAuditSink | undefined) ?? new MemoryAuditSink();
  const store = (options.store as MemoryStore | undefined) ?? new MemoryStore();
  const listeners: ConfigInput['listeners'] = config.listeners ?? [
    { name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] },
    ...(options.ws ? [{ name: 'test-ws', type: 'ws' as const, host: '127.0.0.1', port: 0, auth: ['anonymous' as const] }] : []),
  ];
  const broker = createBroker(
    { authorizers: ['allow-all'], sys: { intervalSeconds: 0 }, ...config, listeners },
    { logger: silentLogger(), ...options, audit, store },
  );
  const { listeners: bound } = await broker.start();
  const tcp = bound.find((l) => l.type === 'tcp');
  const ws = bound.find((l) => l.type === 'ws');
  const port = tcp?.port ?? 0;
  return {
    broker,
    port,
    ...(ws ? { wsPort: ws.port } : {}),
    audit,
    store,
    url: `mqtt://127.0.0.1:${port}`,
    stop: () => broker.stop(),
  };
}

/** Connects an mqtt.js client and waits for CONNACK. Reconnects are off so tests see every close. */
export function connect(port: number, options: IClientOptions = {}): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect({ host: '127.0.0.1', port, reconnectPeriod: 0, connectTimeout: 5000, ...options });
    client.once('connect', () => resolve(client));
    client.once('error', (err) => {
      client.end(true);
      reject(err);
    });
    client.once('close', () => reject(new Error('closed before CONNACK')));
  });
}

/**
 * Connects (v5 unless `options` says otherwise) and collects every payload from the first packet
 * on: messages queued for a session arrive right after CONNACK, before a listener added later.
 */
export function connectCollecting(port: number, options: IClientOptions = {}): Promise<{ client: MqttClient; received: string[] }> {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect({ host: '127.0.0.1', port, reconnectPeriod: 0, connectTimeout: 5000, protocolVersion: 5, ...options });
    const received: string[] = [];
    client.on('message', (_topic, payload) => received.push(payload.toString()));
    client.once('connect', () => resolve({ client, received }));
    client.once('error', reject);
  });
}

/** Collects the next `count` messages a client receives (topic, payload, packet), or rejects after `ms`. */
export function nextMessages(client: MqttClient, count: number, ms = 3000): Promise<{ topic: string; payload: string; packet: mqtt.IPublishPacket }[]> {
  return new Promise((resolve, reject) => {
    const got: { topic: string; payload: string; packet: mqtt.IPublishPacket }[] = [];
    const timer = setTimeout(() => {
      client.off('message', onMessage);
      reject(new Error(`expected ${count} messages, got ${got.length}: ${JSON.stringify(got.map((m) => m.topic))}`));
    }, ms);
    const onMessage = (topic: string, payload: Buffer, packet: mqtt.IPublishPacket) => {
      got.push({ topic, payload: payload.toString(), packet });
      if (got.length === count) {
        clearTimeout(timer);
        client.off('message', onMessage);
        resolve(got);
      }
    };
    client.on('message', onMessage);
  });
}

/** Resolves with every message received within `ms` (to assert that nothing arrives). */
export function messagesWithin(client: MqttClient, ms: number): Promise<{ topic: string; payload: string }[]> {
  return new Promise((resolve) => {
    const got: { topic: string; payload: string }[] = [];
    const onMessage = (topic: string, payload: Buffer) => got.push({ topic, payload: payload.toString() });
    client.on('message', onMessage);
    setTimeout(() => {
      client.off('message', onMessage);
      resolve(got);
    }, ms);
  });
}

export const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A raw TCP socket that records everything the broker sends and when it closes. */
export interface RawClient {
  socket: net.Socket;
  received(): Buffer;
  /** Resolves when the broker closes the connection (true), or false after `ms`. */
  closed(ms?: number): Promise<boolean>;
  /** Waits until at least `n` bytes have arrived. */
  waitForBytes(n: number, ms?: number): Promise<Buffer>;
  write(bytes: Buffer | number[]): void;
}

export function rawConnect(port: number): Promise<RawClient> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let isClosed = false;
    const closeWaiters: (() => void)[] = [];
    socket.on('data', (d) => chunks.push(d));
    socket.on('error', () => {});
    socket.on('close', () => {
      isClosed = true;
      closeWaiters.splice(0).forEach((f) => f());
    });
    socket.once('connect', () =>
      resolve({
        socket,
        received: () => Buffer.concat(chunks),
        closed: (ms = 3000) =>
          new Promise((res) => {
            if (isClosed) return res(true);
            const t = setTimeout(() => res(false), ms);
            closeWaiters.push(() => {
              clearTimeout(t);
              res(true);
            });
          }),
        waitForBytes: async (n, ms = 3000) => {
          const end = Date.now() + ms;
          while (Buffer.concat(chunks).length < n && Date.now() < end && !isClosed) await delay(10);
          return Buffer.concat(chunks);
        },
        write: (bytes) => socket.write(Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes)),
      }),
    );
    socket.once('error', reject);
  });
}

/** A minimal valid MQTT 3.1.1 CONNECT (clean session, keep-alive 60) for raw-socket tests. */
export function rawConnectPacket(clientId: string, version: 4 | 5 = 4): Buffer {
  const id = Buffer.from(clientId);
  const body = Buffer.concat([
    Buffer.from([0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, version, 0x02, 0x00, 0x3c]),
    version === 5 ? Buffer.from([0x00]) : Buffer.alloc(0),
    Buffer.from([id.length >> 8, id.length & 0xff]),
    id,
  ]);
  return Buffer.concat([Buffer.from([0x10, body.length]), body]);
}

/**
 * Writes the shipped Casbin model and the given policy text into a fresh temporary directory;
 * returns the paths. The directory is removed when `cleanup` runs.
 */
export function writePolicyDir(policy: string): { dir: string; model: string; policy: string; cleanup(): void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-policy-'));
  const model = path.join(dir, 'model.conf');
  const policyFile = path.join(dir, 'policy.csv');
  fs.copyFileSync(new URL('../policies/model.conf', import.meta.url), model);
  fs.writeFileSync(policyFile, policy);
  return { dir, model, policy: policyFile, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/**
 * Starts a broker whose only authorizer is Casbin over `policy`, with password users (static-users)
 * named in `users` (password = user name + '-pw'; roles optional) on a loopback listener.
 */
export async function startCasbinBroker(
  policy: string,
  users: { username: string; roles?: string[] }[],
  extra: { watch?: boolean; jwtTopics?: { claim?: string; mode?: 'intersection' | 'union' | 'ignore' } } = {},
  options: BrokerOptions = {},
): Promise<TestBroker & { files: ReturnType<typeof writePolicyDir> }> {
  const files = writePolicyDir(policy);
  const tb = await startBroker(
    {
      listeners: [
        {
          name: 'test',
          type: 'tcp',
          host: '127.0.0.1',
          port: 0,
          auth: [{ provider: 'static-users', users: users.map((u) => ({ username: u.username, password: `${u.username}-pw`, roles: u.roles ?? [] })) }],
        },
      ],
      authorizers: [{ type: 'casbin', model: files.model, policy: files.policy, watch: extra.watch ?? false, ...(extra.jwtTopics ? { jwtTopics: extra.jwtTopics } : {}) }],
    },
    options,
  );
  return {
    ...tb,
    files,
    stop: async () => {
      await tb.stop();
      files.cleanup();
    },
  };
}

// ── audit log helpers ────────────────────────────────────────────────────────

/** A temporary directory for audit files, removed at teardown. */
export function tempAuditDir(t: { teardown(fn: () => void): void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-audit-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** File-sink settings for tests: fsync after each batch, fast retry, no rotation, no signing. */
export function auditSettings(file: string): AuditSinkSettings {
  return {
    sink: 'file',
    path: file,
    maxQueue: 10_000,
    fsyncIntervalMs: 0,
    retryIntervalMs: 50,
    rotate: { maxBytes: 0, intervalSeconds: 0 },
    retention: { maxFiles: 0, maxAgeDays: 0 },
    checkpoint: { intervalSeconds: 60 },
  };
}

/** The non-empty lines of an audit file. */
export function readAuditLines(file: string): string[] {
  return fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.length > 0);
}

/** An audit output that keeps what is written in memory; each write first waits `delayMs` (a slow disk). */
export function memoryAuditOutput(delayMs = 0): AuditOutput & { lines(): string[] } {
  const chunks: Buffer[] = [];
  const wait = () => new Promise((resolve) => setTimeout(resolve, delayMs));
  return {
    name: 'memory',
    write: async (data) => {
      await wait();
      chunks.push(Buffer.from(data));
    },
    writev: async (list) => {
      await wait();
      for (const d of list) chunks.push(Buffer.from(d));
    },
    close: async () => {},
    lines: () =>
      Buffer.concat(chunks)
        .toString('utf8')
        .split('\n')
        .filter((l) => l !== ''),
  };
}

/** A port that was free a moment ago: listen on port 0, note the port, close. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = (server.address() as net.AddressInfo);
      server.close(() => resolve(port));
    });
  });
}

/** The SUBACK code for one filter: the granted QoS, or the refusal reason code (v5) / 0x80 (v3). */
export async function subackCode(client: MqttClient, filter: string, qos: 0 | 1 | 2 = 1): Promise<number> {
  try {
    return (await client.subscribeAsync(filter, { qos }))[0]?.qos ?? -1;
  } catch (err) {
    const granted = (err as { packet?: { granted?: number[] } }).packet?.granted;
    if (granted === undefined) throw err;
    return granted[0] ?? -1;
  }
}

/** A broker for one test plus the raw sockets and mqtt.js clients it opens, all closed at teardown. */
export interface TestEnv {
  b: TestBroker;
  port: number;
  raw(): Promise<RawClient>;
  client(options?: IClientOptions): Promise<MqttClient>;
}

/** Starts a broker for one test; its raw sockets and clients are closed, then the broker stopped, at teardown. */
export async function startTestEnv(t: { teardown(fn: () => unknown): void }, config: Partial<ConfigInput> = {}): Promise<TestEnv> {
  const b = await startBroker(config);
  const raws: RawClient[] = [];
  const clients: MqttClient[] = [];
  t.teardown(async () => {
    for (const r of raws) r.socket.destroy();
    await Promise.all(clients.map((c) => c.endAsync(true)));
    await b.stop();
  });
  return {
    b,
    port: b.port,
    async raw() {
      const r = await rawConnect(b.port);
      raws.push(r);
      return r;
    },
    async client(options = {}) {
      const c = await connect(b.port, options);
      clients.push(c);
      return c;
    },
  };
}

/**
 * A raw TCP client that has sent CONNECT (MQTT 3.1.1, clean session) and had it accepted: for
 * tests that write bytes straight to the socket (floods). What the broker sends later is read
 * and ignored. Throws if the CONNACK is not an acceptance.
 */
export async function rawConnected(port: number, clientId: string): Promise<net.Socket> {
  const socket = net.connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const connack = new Promise<Buffer>((resolve) => socket.once('data', resolve));
  socket.on('data', () => {});
  const id = Buffer.from(clientId, 'utf8');
  const body = Buffer.concat([Buffer.from([0, 4, 0x4d, 0x51, 0x54, 0x54, 4, 0x02, 0, 60, id.length >> 8, id.length & 0xff]), id]);
  socket.write(Buffer.concat([Buffer.from([0x10, body.length]), body]));
  const ack = await connack;
  if (ack[0] !== 0x20 || ack[3] !== 0x00) {
    socket.destroy();
    throw new Error(`CONNACK did not accept ${clientId}: ${ack.subarray(0, 4).toString('hex')}`);
  }
  return socket;
}

/**
 * Runs one `portcullis` command in this process through its real definition (`register` adds it
 * to a fresh program), capturing what it prints and its exit code, and restoring both after.
 */
export async function cliInProcess(register: (program: Command) => void, argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const program = new Command();
  program.exitOverride();
  register(program);
  let out = '';
  let err = '';
  const stdout = process.stdout.write.bind(process.stdout);
  const stderr = process.stderr.write.bind(process.stderr);
  process.stdout.write = ((chunk: string | Uint8Array) => ((out += String(chunk)), true)) as typeof process.stdout.write;
  process.stderr.write = ((chunk: string | Uint8Array) => ((err += String(chunk)), true)) as typeof process.stderr.write;
  process.exitCode = undefined;
  try {
    await program.parseAsync(['node', 'portcullis', ...argv]);
  } finally {
    process.stdout.write = stdout;
    process.stderr.write = stderr;
  }
  const code = Number(process.exitCode ?? 0);
  process.exitCode = undefined;
  return { code, out, err };
}
