/**
 * The Lua scripts that keep the cluster's shared state consistent: each runs atomically in Redis,
 * so two nodes that claim one session, or adopt one dead node's partition, at the same moment
 * cannot both win. Keys are built from the prefix (ARGV) where a script must look keys up from
 * values it read; all share one hash slot (names.ts).
 *
 * A run (`<node id>~<epoch>`) is alive while `lease:<node id>` holds it.
 */
import type { RedisClient } from './redis.ts';

const ALIVE = `
local function alive(prefix, run)
  if not run then return false end
  local node = string.match(run, '^(.*)~[^~]*$')
  if not node then return false end
  return redis.call('GET', prefix .. 'lease:' .. node) == run
end
`;

export const scripts = {
  /** KEYS lease, nodes; ARGV run, leaseMs, nodeId, info → {'ok'} | {'busy', run} */
  register: {
    keys: 2,
    lua: `
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return {'busy', cur} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return {'ok'}`,
  },
  /**
   * KEYS lease, hosted(run); ARGV run, leaseMs, prefix, the partitions the node hosts... →
   * {'ok'} | {'taken', run} | {'lapsed', lost...}. A lease that lapsed (the node was cut off) is
   * taken again; the partitions another node adopted meanwhile are reported lost.
   */
  renew: {
    keys: 2,
    lua: `
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return {'ok'} end
if cur then return {'taken', cur} end
local out = {'lapsed'}
local node = string.match(ARGV[1], '^(.*)~[^~]*$')
for i = 4, #ARGV do
  local p = ARGV[i]
  local host = redis.call('HGET', ARGV[3] .. 'part:' .. p, 'host')
  if not host then
    -- Redis lost it (restarted without its data): this node still hosts it, so it is made again.
    redis.call('HSET', ARGV[3] .. 'part:' .. p, 'host', ARGV[1], 'origin', node)
    redis.call('SADD', ARGV[3] .. 'parts', p)
    redis.call('SADD', KEYS[2], p)
    if redis.call('EXISTS', ARGV[3] .. 'in:' .. p) == 0 then redis.call('XADD', ARGV[3] .. 'in:' .. p, 'MAXLEN', '0', '*', 'i', '') end
    table.insert(out, 'new:' .. p)
  elseif host ~= ARGV[1] then
    table.insert(out, 'lost:' .. p)
    redis.call('SREM', KEYS[2], p)
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return out`,
  },
  /** KEYS partition, partitions, hosted(run), inbox, interest; ARGV p, run, origin → 'ok' */
  createPartition: {
    keys: 5,
    lua: `
redis.call('DEL', KEYS[5])
redis.call('HSET', KEYS[1], 'host', ARGV[2], 'origin', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '0', '*', 'i', '')
return 'ok'`,
  },
  /**
   * KEYS partition, hosted(run); ARGV p, run, prefix, origin ('' any) →
   * {'adopted', oldHost} | {'alive', host} | {'mine'} | {'gone'} | {'foreign'}
   */
  adopt: {
    keys: 2,
    lua: `${ALIVE}
local host = redis.call('HGET', KEYS[1], 'host')
if not host then return {'gone'} end
if host == ARGV[2] then return {'mine'} end
if alive(ARGV[3], host) then return {'alive', host} end
if ARGV[4] ~= '' and redis.call('HGET', KEYS[1], 'origin') ~= ARGV[4] then return {'foreign'} end
redis.call('HSET', KEYS[1], 'host', ARGV[2])
redis.call('SREM', ARGV[3] .. 'hosted:' .. host, ARGV[1])
redis.call('SADD', KEYS[2], ARGV[1])
return {'adopted', host}`,
  },
  /** KEYS partitions; ARGV prefix → flat list p, host, origin, alive('1'|'0') for every partition */
  partitions: {
    keys: 1,
    lua: `${ALIVE}
local out = {}
for _, p in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local h = redis.call('HMGET', ARGV[1] .. 'part:' .. p, 'host', 'origin')
  if h[1] then
    table.insert(out, p) table.insert(out, h[1]) table.insert(out, h[2] or '')
    table.insert(out, alive(ARGV[1], h[1]) and '1' or '0')
  else
    redis.call('SREM', KEYS[1], p)
  end
end
return out`,
  },
  /**
   * KEYS owner(digest), owned(home); ARGV digest, key, home, prefix →
   * {'mine'} | {'free'} | {'held', p, alive('1'|'0')}
   */
  claim: {
    keys: 2,
    lua: `${ALIVE}
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[3] then return {'mine'} end
if owner then
  local host = redis.call('HGET', ARGV[4] .. 'part:' .. owner, 'host')
  if host then return {'held', owner, alive(ARGV[4], host) and '1' or '0'} end
end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if owner then redis.call('HDEL', ARGV[4] .. 'owned:' .. owner, ARGV[1]) end
return {'free'}`,
  },
  /**
   * KEYS owner(digest), owned(from), owned(to), inbox(replyTo); ARGV digest, key, from, to, frame →
   * the owner before (false: none). Moves the session to `to` (when `from` or nobody held it)
   * and sends the RELEASED frame in the same step, so a crash cannot leave one without the other.
   */
  release: {
    keys: 4,
    lua: `
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[3] or not owner then
  redis.call('SET', KEYS[1], ARGV[4])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
end
redis.call('XADD', KEYS[4], 'NOMKSTREAM', '*', 'f', ARGV[5])
return owner or false`,
  },
  /**
   * KEYS owned(p); ARGV prefix, p, digest1, key1, digest2, key2...: a partition made again after
   * Redis lost its data claims its sessions back (those nobody claimed meanwhile) → how many were taken by others.
   */
  reown: {
    keys: 1,
    lua: `
local taken = 0
for i = 3, #ARGV, 2 do
  local own = ARGV[1] .. 'own:' .. ARGV[i]
  local cur = redis.call('GET', own)
  if not cur or cur == ARGV[2] then
    redis.call('SET', own, ARGV[2])
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  else
    taken = taken + 1
  end
end
return taken`,
  },
  /** KEYS owner(digest), owned(p); ARGV digest, p: the session ended, its key is free. */
  free: {
    keys: 2,
    lua: `
if redis.call('GET', KEYS[1]) == ARGV[2] then redis.call('DEL', KEYS[1]) end
redis.call('HDEL', KEYS[2], ARGV[1])
return 'ok'`,
  },
  /**
   * KEYS interest(p), control; ARGV frame, maxlen, n adds, adds..., removes... → the entry id.
   * The snapshot (the hash) and the announcement change together: a node that joins reads one,
   * then the other from where it stood, and misses nothing.
   */
  interest: {
    keys: 2,
    lua: `
local n = tonumber(ARGV[3])
for i = 4, 3 + n do redis.call('HSET', KEYS[1], ARGV[i], '1') end
for i = 4 + n, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'f', ARGV[1])`,
  },
  /** KEYS partition, partitions, hosted(run), inbox, interest, owned; ARGV p, run: a partition with no sessions left ends. */
  dropPartition: {
    keys: 6,
    lua: `
if redis.call('HGET', KEYS[1], 'host') ~= ARGV[2] then return 'not-host' end
if redis.call('HLEN', KEYS[6]) > 0 then return 'not-empty' end
redis.call('DEL', KEYS[1], KEYS[4], KEYS[5], KEYS[6])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
return 'ok'`,
  },
  /** KEYS partition, hosted(run); ARGV p, run: a node that stops lets its partition go (another adopts it at once). */
  freePartition: {
    keys: 2,
    lua: `
if redis.call('HGET', KEYS[1], 'host') ~= ARGV[2] then return 'not-host' end
redis.call('HSET', KEYS[1], 'host', ARGV[2] .. '.stopped')
redis.call('SREM', KEYS[2], ARGV[1])
return 'ok'`,
  },
} as const;

export type ScriptName = keyof typeof scripts;

/** Registers the scripts on a client (EVALSHA, loaded on first use). */
export function defineScripts(client: RedisClient): void {
  for (const [name, s] of Object.entries(scripts)) client.defineCommand(name, { numberOfKeys: s.keys, lua: s.lua });
}

/** Runs a script defined by {@link defineScripts}. */
export function runScript(client: RedisClient, name: ScriptName, keys: string[], args: (string | Buffer | number)[]): Promise<unknown> {
  const fn = (client as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>)[name] as (...a: unknown[]) => Promise<unknown>;
  return fn.call(client, ...keys, ...args);
}
