/**
 * Redis stores for the tests: a store on a test redis-server (test/redis-server.ts), built through
 * the configuration like the broker builds it, each on its own key prefix unless told otherwise.
 */
import { parseConfig } from '../src/config/schema.ts';
import type { RedisStoreConfig } from '../src/config/store-redis-schema.ts';
import { redisConnection } from '../src/store/redis-config.ts';
import { RedisStore, type RedisStoreOptions } from '../src/store/redis.ts';
import type { RedisServer } from './redis-server.ts';

let n = 0;

/** A fresh prefix, so stores on one server never share keys. */
export function freshPrefix(base = 'test'): string {
  return `${base}${process.pid}-${++n}:`;
}

/**
 * A store configuration for `server`. The deadline is long unless a test sets its own: the test
 * servers fsync every write on a disk shared with everything else the suite runs.
 */
export function redisConfig(server: RedisServer, store: Record<string, unknown> = {}): RedisStoreConfig {
  return parseConfig({ store: { type: 'redis', url: server.url, prefix: freshPrefix(), commandTimeoutMs: 10_000, ...store } }).store as RedisStoreConfig;
}

export function redisStore(server: RedisServer, store: Record<string, unknown> = {}, extra: Partial<RedisStoreOptions> = {}): RedisStore {
  const config = redisConfig(server, store);
  const { connection, warnings } = redisConnection(config);
  return new RedisStore({ connection, prefix: config.prefix, instance: config.instance, warnings, ...extra });
}

/** Every key of the server under `prefix` (SCAN, for the tests' eyes; test/redis-server.ts's reader does not parse nested replies). */
export async function keysUnder(server: RedisServer, prefix: string): Promise<string[]> {
  const { Redis } = await import('ioredis');
  const client = new Redis({ host: server.host, port: server.port, lazyConnect: true });
  await client.connect();
  try {
    const out: string[] = [];
    let cursor = '0';
    do {
      const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix.replace(/[*?[\]\\]/g, (c) => `\\${c}`)}*`, 'COUNT', 1000);
      cursor = next;
      out.push(...keys);
    } while (cursor !== '0');
    return out;
  } finally {
    client.disconnect();
  }
}

/**
 * Watches what clients send to the server (MONITOR), leaving out what scripts run inside it:
 * the commands that crossed the network, by name. `settled()` sends a marker command from another
 * connection and resolves, once MONITOR has shown it, with every command seen before it (MONITOR
 * shows commands in the order the server ran them, so nothing sent earlier can still be on its way).
 */
export async function monitor(server: RedisServer): Promise<{ commands(): string[]; settled(): Promise<string[]>; stop(): void }> {
  const net = await import('node:net');
  const sock = net.connect({ host: server.host, port: server.port });
  const seen: string[] = [];
  let buf = '';
  let started = false;
  const marks = new Map<string, () => void>();
  await new Promise<void>((resolve, reject) => {
    sock.once('error', reject);
    sock.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      let at: number;
      while ((at = buf.indexOf('\r\n')) >= 0) {
        const line = buf.slice(0, at);
        buf = buf.slice(at + 2);
        if (!started) {
          started = line === '+OK';
          if (started) resolve();
          continue;
        }
        // +1700000000.123456 [0 127.0.0.1:5555] "evalsha" "..." — script calls show [0 lua].
        const m = /^\+\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]+)"(?: "([^"]*)")?/.exec(line);
        if (m === null || m[1] === 'lua') continue;
        const mark = (m[2] as string).toLowerCase() === 'echo' ? marks.get(m[3] ?? '') : undefined;
        if (mark !== undefined) mark();
        else seen.push((m[2] as string).toLowerCase());
      }
    });
    sock.write('*1\r\n$7\r\nMONITOR\r\n');
  });
  let n = 0;
  const settled = async (): Promise<string[]> => {
    const token = `portcullis-test-mark-${++n}`;
    const seenMark = new Promise<string[]>((resolve) => marks.set(token, () => resolve([...seen])));
    await server.command('ECHO', token);
    return seenMark;
  };
  return { commands: () => [...seen], settled, stop: () => sock.destroy() };
}
