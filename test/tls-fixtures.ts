/**
 * Certificates for the TLS tests, made by `portcullis pki` itself in a temporary folder. The
 * commands run in-process through the real command definitions (no tsx start-up per command).
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { Command } from 'commander';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { registerPkiCommand } from '../src/cli/pki.ts';
import { createBroker, MemoryAuditSink, MemoryStore, type BrokerOptions, type ConfigInput, type RunningBroker } from '../src/index.ts';
import { silentLogger } from '../src/log.ts';

/** Runs `portcullis pki ARGS` in-process and returns what it printed. */
export async function pki(dir: string, ...args: string[]): Promise<string> {
  const program = new Command();
  program.exitOverride();
  registerPkiCommand(program);
  const lines: string[] = [];
  const write = process.stdout.write.bind(process.stdout);
  process.stdout.write = ((chunk: string | Uint8Array) => {
    lines.push(String(chunk));
    return true;
  }) as typeof process.stdout.write;
  try {
    await program.parseAsync(['node', 'portcullis', 'pki', '--dir', dir, ...args]);
  } finally {
    process.stdout.write = write;
  }
  if (process.exitCode === 2) {
    process.exitCode = 0;
    throw new Error(`pki ${args.join(' ')} failed`);
  }
  return lines.join('');
}

export interface Fleet {
  dir: string;
  /** A second, unrelated CA. */
  otherDir: string;
  ca: string;
  chain: string;
  serverCert: string;
  serverKey: string;
  client(name: string): { cert: string; key: string };
  other: { cert: string; key: string };
  pskFile: string;
  psk: Record<string, string>;
  crl: string;
}

/** A root + intermediate CA, a server certificate, devices, odd certificates and a CRL. */
export async function makeFleet(prefix = 'portcullis-tls-'): Promise<Fleet> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const dir = path.join(root, 'pki');
  const otherDir = path.join(root, 'other');
  await pki(dir, 'init', '--intermediate', '--cn', 'Fleet Root');
  await pki(dir, 'server', '--dns', 'localhost', '--ip', '127.0.0.1');
  const csv = path.join(root, 'devices.csv');
  fs.writeFileSync(csv, 'cn,sans,days\ndevice-1\ndevice-2\ndevice-3,uri:spiffe://fleet.example/device/3;email:d3@fleet.example;dns:d3.fleet.example\ndevice-4\nbad#cn\nbad+cn\nbad/cn\n');
  await pki(dir, 'client', '--batch', csv);
  const day = 24 * 3600 * 1000;
  await pki(dir, 'client', '--cn', 'expired-1', '--not-before', new Date(Date.now() - 10 * day).toISOString(), '--not-after', new Date(Date.now() - day).toISOString());
  await pki(dir, 'client', '--cn', 'future-1', '--not-before', new Date(Date.now() + 10 * day).toISOString(), '--days', '30');
  await pki(dir, 'client', '--cn', 'no-eku', '--no-client-auth-eku');
  await pki(otherDir, 'init', '--cn', 'Other CA');
  await pki(otherDir, 'client', '--cn', 'device-1');
  const pskFile = path.join(root, 'psk.txt');
  await pki(dir, 'psk', 'sensor-psk-1', '--file', pskFile);
  await pki(dir, 'psk', 'sensor-psk-2', '--file', pskFile);
  const psk: Record<string, string> = {};
  for (const line of fs.readFileSync(pskFile, 'utf8').split('\n')) {
    const [id, key] = line.split(':');
    if (id && key) psk[id] = key;
  }
  await pki(dir, 'crl', '--days', '7');
  const client = (name: string) => ({ cert: path.join(dir, 'clients', `${name}.crt`), key: path.join(dir, 'clients', `${name}.key`) });
  return {
    dir,
    otherDir,
    ca: path.join(dir, 'ca.crt'),
    chain: path.join(dir, 'ca-chain.crt'),
    serverCert: path.join(dir, 'server.crt'),
    serverKey: path.join(dir, 'private', 'server.key'),
    client,
    other: { cert: path.join(otherDir, 'clients', 'device-1.crt'), key: path.join(otherDir, 'clients', 'device-1.key') },
    pskFile,
    psk,
    crl: path.join(dir, 'crl.pem'),
  };
}

/** mqtt.js over TLS with an optional client certificate; resolves with the client or rejects with why it closed. */
export function connectTls(port: number, fleet: Fleet, options: IClientOptions & { device?: string | { cert: string; key: string } } = {}): Promise<MqttClient> {
  const { device, ...rest } = options;
  const files = typeof device === 'string' ? fleet.client(device) : device;
  return new Promise((resolve, reject) => {
    const client = mqtt.connect({
      protocol: 'mqtts',
      host: '127.0.0.1',
      port,
      ca: fs.readFileSync(fleet.chain),
      servername: 'localhost',
      reconnectPeriod: 0,
      connectTimeout: 5000,
      ...(files ? { cert: fs.readFileSync(files.cert), key: fs.readFileSync(files.key) } : {}),
      ...(typeof device === 'string' ? { clientId: device } : {}),
      ...rest,
    });
    client.once('connect', () => resolve(client));
    client.once('error', (err) => {
      client.end(true);
      reject(err);
    });
    client.once('close', () => reject(new Error('closed before CONNACK')));
  });
}

/** A bare TLS handshake; resolves with what happened (for protocol-version tests). */
export function handshake(port: number, options: tls.ConnectionOptions): Promise<{ ok: boolean; protocol?: string | null; error?: string }> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', ...options });
    socket.once('secureConnect', () => {
      const protocol = socket.getProtocol();
      socket.end();
      resolve({ ok: true, protocol });
    });
    socket.once('error', (err: Error & { code?: string }) => resolve({ ok: false, error: err.code ?? err.message }));
  });
}

/** Runs a command line tool without blocking the event loop (the broker runs in this process). */
export function run(cmd: string, args: string[], input?: string, timeout = 15_000): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeout);
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
    // A tool that exits without reading its input makes the write fail with EPIPE: not a test failure.
    child.stdin.on('error', () => {});
    child.stdin.end(input ?? '');
  });
}

export interface TlsTestBroker {
  broker: RunningBroker;
  audit: MemoryAuditSink;
  /** Bound port per listener name. */
  ports: Record<string, number>;
  stop(): Promise<void>;
}

/** Starts a broker with the given listeners (ports 0), allow-all and an in-memory audit sink. */
export async function startTlsBroker(listeners: ConfigInput['listeners'], extra: Partial<ConfigInput> = {}, options: BrokerOptions = {}): Promise<TlsTestBroker> {
  const audit = new MemoryAuditSink();
  const broker = createBroker({ authorizers: ['allow-all'], sys: { intervalSeconds: 0 }, ...extra, listeners }, { logger: silentLogger(), ...options, audit, store: new MemoryStore() });
  const { listeners: bound } = await broker.start();
  const ports: Record<string, number> = {};
  for (const l of bound) ports[l.name] = l.port;
  return { broker, audit, ports, stop: () => broker.stop() };
}

/** Waits until an audit record matching `pred` appears. */
export async function waitForAudit(audit: MemoryAuditSink, pred: (r: MemoryAuditSink['records'][number]) => boolean, ms = 3000): Promise<MemoryAuditSink['records'][number]> {
  const end = Date.now() + ms;
  for (;;) {
    const found = audit.records.find(pred);
    if (found) return found;
    if (Date.now() > end) throw new Error(`no matching audit record; have: ${JSON.stringify(audit.records.map((r) => [r.event, r.decision, r.reason]))}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The mTLS listener most tests use: client certificates from the fleet's CA, its CRL, the clientAuth EKU, CN as user name and bound client id. */
export function fleetMtlsListener(fleet: Pick<Fleet, 'serverCert' | 'serverKey' | 'chain' | 'crl'>): NonNullable<ConfigInput['listeners']>[number] {
  return {
    name: 'mtls',
    type: 'tls',
    host: '127.0.0.1',
    port: 0,
    cert: fleet.serverCert,
    key: fleet.serverKey,
    ca: fleet.chain,
    requireClientCert: true,
    requireClientAuthEku: true,
    crl: { files: [fleet.crl] },
    auth: [{ provider: 'certificate', username: 'cn', clientId: 'cn', bindClientId: true }],
  };
}
