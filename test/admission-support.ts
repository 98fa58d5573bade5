/**
 * Helpers for the admission tests: a broker whose bound listeners are all reported, raw TCP
 * sockets from a chosen loopback source address, and waiting for a condition.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createBroker, MemoryAuditSink, type ConfigInput, type RunningBroker } from '../src/index.ts';
import type { AuditEvent } from '../src/audit/types.ts';
import { silentLogger } from '../src/log.ts';
import { delay } from './helpers.ts';

export interface AdmissionBroker {
  broker: RunningBroker;
  audit: MemoryAuditSink;
  /** Bound port by listener name. */
  ports: Record<string, number>;
  port: number;
  stop(): Promise<void>;
}

/** Starts a broker (anonymous, allow-all, one tcp listener 'test' unless `listeners` is given). */
export async function startAdmissionBroker(config: Partial<ConfigInput> = {}): Promise<AdmissionBroker> {
  const audit = new MemoryAuditSink();
  const broker = createBroker(
    {
      listeners: [{ name: 'test', type: 'tcp', host: '127.0.0.1', port: 0, auth: ['anonymous'] }],
      authorizers: ['allow-all'],
      sys: { intervalSeconds: 0 },
      authGuard: { enabled: false },
      store: { type: 'memory' },
      ...config,
    },
    { logger: silentLogger(), audit },
  );
  const { listeners } = await broker.start();
  const ports = Object.fromEntries(listeners.map((l) => [l.name, l.port]));
  return { broker, audit, ports, port: listeners[0]?.port ?? 0, stop: () => broker.stop() };
}

export interface RawSocket {
  socket: net.Socket;
  /** 'open' once connected and still open after `settleMs`, 'closed' when the server closed it first. */
  outcome: Promise<'open' | 'closed'>;
  closed(ms?: number): Promise<boolean>;
  isClosed(): boolean;
  bytes(): number;
}

/**
 * Opens a raw TCP socket from `localAddress`. A socket refused at accept time is closed by the
 * server right away without a byte: outcome 'closed'. One admitted stays open (the CONNECT
 * deadline is longer than `settleMs`).
 */
export function rawOpen(port: number, localAddress = '127.0.0.1', settleMs = 1000, host = '127.0.0.1'): RawSocket {
  const socket = net.connect({ port, host, localAddress });
  let received = 0;
  let isClosed = false;
  const waiters: (() => void)[] = [];
  socket.on('data', (d) => (received += d.length));
  socket.on('error', () => {});
  socket.on('close', () => {
    isClosed = true;
    waiters.splice(0).forEach((f) => f());
  });
  const closed = (ms = 3000) =>
    new Promise<boolean>((resolve) => {
      if (isClosed) return resolve(true);
      const t = setTimeout(() => resolve(false), ms);
      waiters.push(() => {
        clearTimeout(t);
        resolve(true);
      });
    });
  const outcome = closed(settleMs).then((c) => (c ? ('closed' as const) : ('open' as const)));
  return { socket, outcome, closed, isClosed: () => isClosed, bytes: () => received };
}

/** Polls `cond` every 20 ms until it is true or `ms` passed; returns its last value. */
export async function waitFor(cond: () => boolean, ms = 3000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await delay(20);
  return cond();
}

/** The accept-time refusal records (event connect, action admission). */
export function admissionRecords(audit: MemoryAuditSink): AuditEvent[] {
  return audit.records.filter((r) => r.event === 'connect' && r.action === 'admission');
}

export function tempDir(t: { teardown(fn: () => void): void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-ban-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}
