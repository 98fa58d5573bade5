/**
 * What the matrix files share: one broker process per file (matrixConfig) started before the
 * tests, and the connection arguments of each transport for each client stack.
 */
import fs from 'node:fs';
import type { ExecutionContext } from 'ava';
import { type BrokerProcess, startBrokerProcess, tempDir } from './broker-process.ts';
import { type InteropPki, killClients, makePki, matrixConfig, USER } from './clients.ts';

export type Transport = 'tcp' | 'tls' | 'mtls' | 'psk' | 'ws' | 'wss';

export interface Matrix {
  dir: string;
  pki: InteropPki;
  broker: BrokerProcess;
}

/** Starts the file's broker; `stop` ends its client processes, the broker and removes the directory. */
export async function startMatrix(): Promise<Matrix & { stop(): Promise<void> }> {
  const dir = tempDir();
  const pki = await makePki(dir);
  const broker = await startBrokerProcess({ config: matrixConfig(dir, pki), cwd: dir });
  return {
    dir,
    pki,
    broker,
    async stop() {
      killClients();
      await broker.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Fails the test (with the packages to install) when a client stack is missing: the matrix never passes without running. */
export function requireTool(t: ExecutionContext, present: boolean, packages: string): boolean {
  if (!present) t.fail(`this interoperability test needs the Debian packages ${packages} (installed by .ci/run)`);
  return present;
}

/** mosquitto_pub / mosquitto_sub options for a transport (host, port, CA, credentials). */
export function mosquittoArgs(m: Matrix, transport: Transport): string[] {
  const { broker: b, pki } = m;
  const host = ['-h', '127.0.0.1'];
  switch (transport) {
    case 'tcp':
      return [...host, '-p', String(b.port('tcp'))];
    case 'tls':
      return [...host, '-p', String(b.port('tls')), '--cafile', pki.ca, '-u', USER.username, '-P', USER.password];
    case 'psk':
      return [...host, '-p', String(b.port('tls')), '--psk-identity', pki.pskIdentity, '--psk', pki.pskKey];
    case 'mtls':
      return [...host, '-p', String(b.port('mtls')), '--cafile', pki.ca, '--cert', pki.client('device-1').cert, '--key', pki.client('device-1').key];
    default:
      throw new Error(`mosquitto clients have no ${transport} transport`);
  }
}

/** The paho scripts' connection options for a transport. */
export function pahoArgs(m: Matrix, transport: Transport): string[] {
  const { broker: b, pki } = m;
  const user = ['--username', USER.username, '--password', USER.password];
  switch (transport) {
    case 'tcp':
      return ['--port', String(b.port('tcp'))];
    case 'tls':
      return ['--port', String(b.port('tls')), '--cafile', pki.ca, ...user];
    case 'mtls':
      return ['--port', String(b.port('mtls')), '--cafile', pki.ca, '--cert', pki.client('device-1').cert, '--key', pki.client('device-1').key];
    case 'ws':
      return ['--port', String(b.port('ws')), '--transport', 'websockets'];
    case 'wss':
      return ['--port', String(b.port('wss')), '--transport', 'websockets', '--cafile', pki.ca, ...user];
    default:
      throw new Error(`paho has no ${transport} transport here`);
  }
}

/**
 * At most `n` tests of a file at once. Each test that takes a slot releases it at teardown, so a
 * test never waits for processes of another test: no deadlock, only a lower peak of client
 * processes (the machine running npm test has few cores, and other test files time things).
 */
export function slots(n: number): (t: ExecutionContext) => Promise<void> {
  let free = n;
  const waiting: (() => void)[] = [];
  const release = () => {
    const next = waiting.shift();
    if (next !== undefined) next();
    else free++;
  };
  return async (t) => {
    if (free > 0) free--;
    else await new Promise<void>((resolve) => waiting.push(resolve));
    let released = false;
    t.teardown(() => {
      if (!released) (released = true), release();
    });
  };
}
