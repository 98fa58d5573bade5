/**
 * Shared setup for the operations listener tests: a broker with `http` on an ephemeral loopback
 * port, admin tokens made as `portcullis token add` makes them, an HTTP client that can bind a
 * source address and present client certificates, and a parser for the Prometheus text format.
 */
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { addToken } from '../src/cli/token.ts';
import { registerTokenCommand } from '../src/cli/token.ts';
import { createBroker, MemoryAuditSink, MemoryStore, type BrokerOptions, type ConfigInput, type RunningBroker } from '../src/index.ts';
import { silentLogger } from '../src/log.ts';
import { cliInProcess } from './helpers.ts';

export const root = path.resolve(import.meta.dirname, '..');

export interface OpsBroker {
  broker: RunningBroker;
  mqttPort: number;
  httpPort: number;
  base: string;
  audit: MemoryAuditSink;
  dir: string;
  tokens: { admin: string; reader: string; expired: string };
  tokenFile: string;
  stop(): Promise<void>;
}

export function tempDir(prefix = 'portcullis-ops-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** Makes a token file with an admin, a read-only and an expired token (as `portcullis token add` does). */
export async function makeTokens(dir: string): Promise<{ file: string; admin: string; reader: string; expired: string }> {
  const file = path.join(dir, 'admin-tokens.jsonl');
  const admin = (await addToken('ops-admin', { roles: 'admin', file })).token;
  const reader = (await addToken('ops-reader', { roles: 'read-only', file })).token;
  // Made with an expiry a day ago: the same file line a token that ran out would have.
  const expired = (await addToken('ops-old', { roles: 'admin', file, expires: '1d' }, Date.now() - 2 * 86_400_000)).token;
  return { file, admin, reader, expired };
}

/**
 * A broker on 127.0.0.1 (anonymous MQTT listener, allow-all unless `config` says otherwise) with
 * the operations listener on an ephemeral port, token authentication and the shipped admin policy.
 */
export async function startOpsBroker(
  config: Partial<ConfigInput> = {},
  options: BrokerOptions & { http?: Partial<NonNullable<ConfigInput['http']>>; configuredAudit?: boolean } = {},
): Promise<OpsBroker> {
  const dir = tempDir();
  const t = await makeTokens(dir);
  const audit = (options.audit as MemoryAuditSink | undefined) ?? new MemoryAuditSink();
  const { http: httpExtra, configuredAudit, ...rest } = options;
  const broker = createBroker(
    {
      listeners: [{ name: 'mqtt', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }],
      authorizers: ['allow-all'],
      sys: { intervalSeconds: 0 },
      ...config,
      http: {
        host: '127.0.0.1',
        port: 0,
        ...httpExtra,
        auth: { tokens: t.file, model: path.join(root, 'policies', 'model.conf'), policy: path.join(root, 'policies', 'admin', 'policy.csv'), ...httpExtra?.auth },
      },
    },
    // configuredAudit: the configuration's own sink (a file), not the in-memory one.
    { logger: silentLogger(), store: new MemoryStore(), ...rest, ...(configuredAudit === true ? {} : { audit }) },
  );
  const started = await broker.start();
  const httpPort = started.http?.port ?? 0;
  return {
    broker,
    mqttPort: started.listeners[0]?.port ?? 0,
    httpPort,
    base: `${started.http?.protocol ?? 'http'}://127.0.0.1:${httpPort}`,
    audit,
    dir,
    tokens: { admin: t.admin, reader: t.reader, expired: t.expired },
    tokenFile: t.file,
    stop: async () => {
      await broker.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  json: any;
}

export interface RequestOptions {
  method?: string;
  token?: string;
  headers?: Record<string, string>;
  body?: string | Buffer | object;
  /**
   * The Content-Type to send: by default application/json for a body and for every method but
   * GET (as the console and the docs send it); null: none.
   */
  contentType?: string | null;
  /** Source address to bind (127.0.0.x), to tell callers apart. */
  localAddress?: string;
  /** HTTPS: trust, and an optional client certificate. */
  tls?: { ca: Buffer; cert?: Buffer; key?: Buffer };
}

/** One request; the raw path is sent as given (no URL normalisation). */
export function request(base: string, rawPath: string, o: RequestOptions = {}): Promise<Reply> {
  const url = new URL(base);
  const headers: Record<string, string> = { ...(o.token !== undefined ? { authorization: `Bearer ${o.token}` } : {}), ...o.headers };
  let body: Buffer | undefined;
  if (o.body !== undefined) body = Buffer.isBuffer(o.body) ? o.body : Buffer.from(typeof o.body === 'string' ? o.body : JSON.stringify(o.body));
  if (o.contentType !== undefined) {
    if (o.contentType !== null) headers['content-type'] = o.contentType;
  } else if (o.body !== undefined || (o.method ?? 'GET') !== 'GET') headers['content-type'] ??= 'application/json';
  return new Promise((resolve, reject) => {
    const opts: https.RequestOptions = {
      host: url.hostname,
      port: url.port,
      path: rawPath,
      method: o.method ?? 'GET',
      headers,
      agent: false,
      ...(o.localAddress !== undefined ? { localAddress: o.localAddress } : {}),
      ...(o.tls !== undefined ? { ca: o.tls.ca, servername: 'localhost', ...(o.tls.cert ? { cert: o.tls.cert, key: o.tls.key } : {}) } : {}),
    };
    const req = (url.protocol === 'https:' ? https : http).request(opts, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json: unknown;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
      });
    });
    req.on('error', reject);
    req.setTimeout(15_000, () => req.destroy(new Error(`request ${rawPath} timed out`)));
    req.end(body);
  });
}

/** Admin audit records (the API's own), newest last. */
export function adminRecords(audit: MemoryAuditSink): MemoryAuditSink['records'] {
  return audit.records.filter((r) => r.event === 'admin');
}

/** Waits until `pred` holds for an audit record. */
export async function waitForRecord(audit: MemoryAuditSink, pred: (r: MemoryAuditSink['records'][number]) => boolean, ms = 3000): Promise<MemoryAuditSink['records'][number]> {
  const end = Date.now() + ms;
  for (;;) {
    const hit = audit.records.find(pred);
    if (hit !== undefined) return hit;
    if (Date.now() > end) throw new Error('no such audit record');
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** One sample of the Prometheus text format. */
export interface PromSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the text format: families (from # TYPE) and samples. */
export function parseMetrics(text: string): { types: Map<string, string>; samples: PromSample[] } {
  const types = new Map<string, string>();
  const samples: PromSample[] = [];
  for (const line of text.split('\n')) {
    if (line.startsWith('# TYPE ')) {
      const [, , name, type] = line.split(' ');
      types.set(name as string, type as string);
      continue;
    }
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/.exec(line);
    if (m === null) throw new Error(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1] as string] = (l[2] as string).replace(/\\"/g, '"').replace(/\\n/g, '\n').replace(/\\\\/g, '\\');
    samples.push({ name: m[1] as string, labels, value: Number(m[4]) });
  }
  return { types, samples };
}

/** The value of the sample with this name and these labels (all of them given), or undefined. */
export function metric(samples: PromSample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const hit = samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v) && Object.keys(s.labels).length === Object.keys(labels).length);
  return hit?.value;
}

/** Runs `portcullis token ...` in this process through the real command definitions. */
export async function tokenCli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  return cliInProcess(registerTokenCommand, ['token', ...args]);
}
