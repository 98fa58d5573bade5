/**
 * Tests that start a broker on the built-in defaults (127.0.0.1:1883, 8883, 8884) share these
 * fixed ports with each other and with anything else on the machine: they take a lock file in
 * the temporary folder first, then wait until the ports are free.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { delay } from './helpers.ts';

export const DEFAULT_PORTS = [1883, 8883, 8884];
export const DEFAULT_PORTS_LOCK = path.join(os.tmpdir(), 'portcullis-default-ports.lock');

/** Takes the default-ports lock: an exclusive file holding our pid. A lock whose process is gone is stale. */
export async function lockDefaultPorts(ms: number): Promise<() => void> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      fs.writeFileSync(DEFAULT_PORTS_LOCK, String(process.pid), { flag: 'wx' });
      return () => fs.rmSync(DEFAULT_PORTS_LOCK, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    let holder = 0;
    try {
      holder = Number(fs.readFileSync(DEFAULT_PORTS_LOCK, 'utf8'));
    } catch {
      continue; // released in between
    }
    if (!(holder > 0) || !alive(holder)) fs.rmSync(DEFAULT_PORTS_LOCK, { force: true });
    else if (Date.now() > end) throw new Error(`${DEFAULT_PORTS_LOCK} is held by process ${holder}`);
    else await delay(200);
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

export async function defaultPortsFree(ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  for (;;) {
    const free = await Promise.all(DEFAULT_PORTS.map(portFree));
    if (free.every(Boolean)) return true;
    if (Date.now() > end) return false;
    await delay(250);
  }
}

