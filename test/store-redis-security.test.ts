/**
 * Redis is a trust boundary: what the store reads back from it is verified, and a damaged, moved,
 * repeated or forged record is reported (by open, getSession and `portcullis store check`),
 * never loaded. Records are altered here from the outside, with commands on the server, as
 * anyone who can write to that Redis could.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import YAML from 'yaml';
import { checkCommand, statsCommand } from '../src/cli/store.ts';
import { bindSession, sessionDigest } from '../src/store/redis-keys.ts';
import { checkRedisStore } from '../src/store/redis-tools.ts';
import { redisConnection } from '../src/store/redis-config.ts';
import { encodeWill, wrap } from '../src/store/records.ts';
import { sessionKey, type StoredSession } from '../src/store/types.ts';
import { startRedis, type RedisServer } from './redis-server.ts';
import { freshPrefix, redisConfig, redisStore } from './store-redis-support.ts';

let server: RedisServer | undefined;
const ready = startRedis().then((s) => (server = s));
test.after.always(async () => {
  await server?.dispose();
});

const k1 = { id: 'k1', key: Buffer.alloc(32, 7) };
const session = (id: string, extra: Partial<StoredSession> = {}): StoredSession => ({
  clientId: id,
  owner: `user:${id}`,
  protocolVersion: 5,
  expiryInterval: 3600,
  subscriptions: [{ filter: `${id}/#`, qos: 1, noLocal: false, retainAsPublished: false, retainHandling: 0 }],
  inflight: [],
  queue: [{ topic: `${id}/q`, payload: Buffer.from('queued'), qos: 1, retain: false }],
  awaitingRelease: [],
  will: { message: { topic: `${id}/will`, payload: Buffer.from('bye'), qos: 1, retain: false }, delayInterval: 0, principal: { username: id, method: 'password', provider: 'password', roles: ['device'], attributes: {}, listener: 'tcp' } },
  ...extra,
});
const hashOf = (prefix: string, id: string) => `${prefix}{${sessionDigest(sessionKey(`user:${id}`, id))}}:s`;
const queueOf = (prefix: string, id: string) => `${prefix}{${sessionDigest(sessionKey(`user:${id}`, id))}}:q`;

/** Runs Lua on the server: the tests' way to write bytes (given in hex) into any key. */
function lua(s: RedisServer, script: string, keys: string[], args: string[]): Promise<string> {
  return s.command('EVAL', `local function unhex(h) return (h:gsub('..', function(c) return string.char(tonumber(c, 16)) end)) end\n${script}`, String(keys.length), ...keys, ...args);
}

/** A store holding sessions a and b, closed again; returns its prefix. */
async function populated(options: { keys?: (typeof k1)[] } = {}): Promise<string> {
  const s = await ready;
  const prefix = freshPrefix();
  const store = redisStore(s, { prefix }, options);
  await store.open();
  await store.saveSession(session('a'));
  await store.saveSession(session('b'));
  await store.close();
  return prefix;
}

async function openFails(t: import('ava').ExecutionContext, prefix: string, code: string, where: RegExp, options: { keys?: (typeof k1)[] } = {}): Promise<void> {
  const store = redisStore(await ready, { prefix }, options);
  const err = await t.throwsAsync(store.open(), { code });
  t.regex(err?.message ?? '', where, 'the error names the Redis key');
}

test('garbage in a session field: open refuses naming the key, getSession reports it, store check lists it', async (t) => {
  const s = await ready;
  const prefix = await populated();
  await s.command('HSET', hashOf(prefix, 'a'), 'w', 'garbage');
  await openFails(t, prefix, 'ERR_STORE_CORRUPT', new RegExp(`${hashOf(prefix, 'a').replace(/[{}]/g, '\\$&')} field w`));
  const report = await checkRedisStore({ connection: redisConnection(redisConfig(s, { prefix })).connection, prefix });
  t.false(report.ok);
  t.true(report.problems.some((p) => p.where.includes(hashOf(prefix, 'a')) && p.where.includes('field w')), JSON.stringify(report.problems));
  t.is(report.counts?.sessions, 2, 'the rest is still counted');
});

test('getSession on a damaged session throws ERR_STORE_CORRUPT instead of returning part of it', async (t) => {
  const s = await ready;
  const prefix = freshPrefix();
  const store = redisStore(s, { prefix });
  await store.open();
  t.teardown(() => store.close());
  await store.saveSession(session('a'));
  await s.command('HSET', hashOf(prefix, 'a'), 's:a/#', 'not a record');
  await t.throwsAsync(store.getSession(sessionKey('user:a', 'a')), { code: 'ERR_STORE_CORRUPT', message: /field s:"a\/#"/ });
});

test('a record copied from one session into another is found (checksums bind a record to its session and field)', async (t) => {
  const s = await ready;
  const prefix = await populated();
  await lua(s, `redis.call('HSET', KEYS[2], 'w', redis.call('HGET', KEYS[1], 'w'))`, [hashOf(prefix, 'a'), hashOf(prefix, 'b')], []);
  await openFails(t, prefix, 'ERR_STORE_CORRUPT', /field w: checksum mismatch/);
});

test("a whole session's records moved under another session's keys are found", async (t) => {
  const s = await ready;
  const prefix = await populated();
  await s.command('DEL', hashOf(prefix, 'b'));
  await s.command('COPY', hashOf(prefix, 'a'), hashOf(prefix, 'b'));
  await openFails(t, prefix, 'ERR_STORE_CORRUPT', /checksum mismatch|another session/);
});

test('a queued message repeated in the queue is found', async (t) => {
  const s = await ready;
  const prefix = await populated();
  await lua(s, `redis.call('RPUSH', KEYS[1], redis.call('LINDEX', KEYS[1], 0))`, [queueOf(prefix, 'a')], []);
  await openFails(t, prefix, 'ERR_STORE_CORRUPT', /appears twice/);
});

test('encrypted: a sealed record moved to another session fails its authentication tag', async (t) => {
  const s = await ready;
  const prefix = await populated({ keys: [k1] });
  await lua(s, `redis.call('HSET', KEYS[2], 'w', redis.call('HGET', KEYS[1], 'w'))`, [hashOf(prefix, 'a'), hashOf(prefix, 'b')], []);
  await openFails(t, prefix, 'ERR_STORE_CORRUPT', /decryption failed/, { keys: [k1] });
});

test('encrypted: a forged will in the clear (valid checksum, admin role) is refused; accepted only with encryption.acceptPlaintext', async (t) => {
  const s = await ready;
  const prefix = await populated({ keys: [k1] });
  const digest = sessionDigest(sessionKey('user:a', 'a'));
  // What a Redis writer without the key can make: a record in the clear, bound correctly.
  const forged = wrap('wills', bindSession('will', digest), encodeWill({ message: { topic: 'admin/cmd', payload: Buffer.from('reboot all'), qos: 1, retain: false }, delayInterval: 0, principal: { username: 'admin', method: 'password', provider: 'password', roles: ['admin'], attributes: {}, listener: 'tcp' } }), null);
  await lua(s, `redis.call('HSET', KEYS[1], 'w', unhex(ARGV[1]))`, [hashOf(prefix, 'a')], [forged.toString('hex')]);
  await openFails(t, prefix, 'ERR_STORE_CORRUPT', /a record in the clear in an encrypted store/, { keys: [k1] });
  const lax = redisStore(s, { prefix }, { keys: [k1], acceptPlaintext: true });
  await lax.open();
  t.teardown(() => lax.close());
  t.is((await lax.getSession(sessionKey('user:a', 'a')))?.will?.principal?.username, 'admin', 'the switch is what lets it through (documented as for migrating a store in the clear)');
});

test('encrypted records opened with another key file: ERR_STORE_KEY, and check without a key verifies what it can', async (t) => {
  const s = await ready;
  const prefix = await populated({ keys: [k1] });
  await openFails(t, prefix, 'ERR_STORE_KEY', /key id 'k1'/, { keys: [{ id: 'other', key: Buffer.alloc(32, 9) }] });
  const report = await checkRedisStore({ connection: redisConnection(redisConfig(s, { prefix })).connection, prefix });
  t.true(report.ok, JSON.stringify(report.problems));
  t.true(report.unverified > 0);
  t.true(report.notes.some((n) => /not verified/.test(n)));
});

test('portcullis store check and stats on a Redis store from the configuration: check exits 1 naming a forged index entry and stray session keys, 0 when healthy; stats counts', async (t) => {
  const s = await ready;
  const prefix = await populated();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-redis-check-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'portcullis.yaml');
  fs.writeFileSync(file, YAML.stringify({ store: { type: 'redis', url: s.url, prefix } }));
  const run = async (): Promise<{ code: number; out: string }> => {
    let out = '';
    const code = await checkCommand({ config: file }, { out: (x) => (out += x), err: (x) => (out += x) });
    return { code, out };
  };
  const healthy = await run();
  t.is(healthy.code, 0, healthy.out);
  let stats = '';
  t.is(await statsCommand({ config: file }, { out: (x) => (stats += x), err: (x) => (stats += x) }), 0, stats);
  t.regex(stats, /2 sessions, 2 subscriptions, 0 in flight, 2 queued, 0 awaiting release, 0 retained, 2 wills/);
  t.regex(stats, /Redis memory in use: 127\.0\.0\.1:\d+ [\d.]+ MB/);
  t.regex(healthy.out, /OK: redis:\/\/127\.0\.0\.1:\d+ \(prefix /);
  t.regex(healthy.out, /2 sessions/);
  const stray = `${prefix}{${'0'.repeat(64)}}:q`;
  await s.command('RPUSH', stray, 'x');
  await s.command('ZADD', `${prefix}sessions`, '0', 'not-a-digest');
  const damaged = await run();
  t.is(damaged.code, 1);
  t.true(damaged.out.includes(stray), damaged.out);
  t.regex(damaged.out, /not a session digest/);
});
