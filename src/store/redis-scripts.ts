/**
 * The Lua scripts of the Redis store. A script runs atomically on the Redis server, so every
 * change to a session (its hash and queue share one Cluster slot, see redis-keys.ts) is whole or
 * absent, and a write for a session that does not exist is ignored inside the same script that
 * checks it (no read-then-write race between brokers). Scripts name every key they touch in
 * KEYS, as Redis Cluster requires.
 *
 * Scripts are loaded (SCRIPT LOAD) on every connection before anything else is sent on it, and
 * run with EVALSHA. A NOSCRIPT answer (a script cache flushed under us, a failover to a server
 * that never saw them) fails that write instead of re-sending the script: a re-sent write could
 * land after a later one.
 */
import { createHash } from 'node:crypto';

export interface Script {
  name: string;
  lua: string;
  sha: string;
  keys: number;
}

function script(name: string, keys: number, lua: string): Script {
  return { name, keys, lua, sha: createHash('sha1').update(lua).digest('hex') };
}

/**
 * Replaces a session: KEYS session hash, queue. ARGV identity, expiry, last in-flight order,
 * number of field/value pairs, the pairs, then the queued elements.
 */
export const SAVE = script(
  'save',
  2,
  `redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'r', ARGV[1], 'e', ARGV[2], 'o', ARGV[3])
local n = tonumber(ARGV[4])
local i = 5
for _ = 1, n do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
local batch = {}
for j = i, #ARGV do
  batch[#batch + 1] = ARGV[j]
  if #batch == 256 then
    redis.call('RPUSH', KEYS[2], unpack(batch))
    batch = {}
  end
end
if #batch > 0 then redis.call('RPUSH', KEYS[2], unpack(batch)) end
return 1`,
);

/** Reads a session whole (one consistent view): KEYS session hash, queue. */
export const LOAD = script('load', 2, `return {redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[2], 0, -1)}`);

/** Sets one field of an existing session: KEYS session hash; ARGV field, value. */
export const SET_FIELD = script(
  'set-field',
  1,
  `if redis.call('HEXISTS', KEYS[1], 'r') == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1`,
);

/**
 * Puts an in-flight message: a packet id in flight already keeps its order number (its place in
 * the resend order, MQTT-4.6.0-1); a new one takes the next. KEYS session hash; ARGV field, record.
 */
export const PUT_INFLIGHT = script(
  'put-inflight',
  1,
  `if redis.call('HEXISTS', KEYS[1], 'r') == 0 then return 0 end
local old = redis.call('HGET', KEYS[1], ARGV[1])
local order = nil
if old then order = string.match(old, '^(%d+):') end
if not order then order = string.format('%.0f', redis.call('HINCRBY', KEYS[1], 'o', 1)) end
redis.call('HSET', KEYS[1], ARGV[1], order .. ':' .. ARGV[2])
return 1`,
);

/** Appends to the queue of an existing session: KEYS session hash, queue; ARGV element. */
export const ENQUEUE = script(
  'enqueue',
  2,
  `if redis.call('HEXISTS', KEYS[1], 'r') == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
return 1`,
);

/**
 * Deletes a session only if its expiry record is still the one the caller read (the purge: a
 * broker that resumed the session meanwhile has rewritten it). KEYS session hash, queue; ARGV
 * expiry record.
 */
export const DELETE_IF_EXPIRY = script(
  'delete-if-expiry',
  2,
  `if redis.call('HGET', KEYS[1], 'e') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1`,
);

/** Deletes what a session left without its identity record (orphans): KEYS session hash, queue. */
export const DELETE_ORPHAN = script(
  'delete-orphan',
  2,
  `if redis.call('HEXISTS', KEYS[1], 'r') == 1 then return 0 end
return redis.call('DEL', KEYS[1], KEYS[2])`,
);

/** Removes a digest from the session index if its score is still the one read: KEYS index; ARGV digest, score. */
export const UNINDEX_IF_SCORE = script(
  'unindex-if-score',
  1,
  `if redis.call('ZSCORE', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
return redis.call('ZREM', KEYS[1], ARGV[1])`,
);

/** KEYS retained hash, expiry set; ARGV topic, record, expiry ms or ''. */
export const PUT_RETAINED = script(
  'put-retained',
  2,
  `redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1]) else redis.call('ZREM', KEYS[2], ARGV[1]) end
return 1`,
);

/** KEYS retained hash, expiry set; ARGV topic. */
export const DELETE_RETAINED = script(
  'delete-retained',
  2,
  `redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('HDEL', KEYS[1], ARGV[1])`,
);

/** Deletes a retained message only if it is still the record read: KEYS retained hash, expiry set; ARGV topic, record. */
export const DELETE_RETAINED_IF = script(
  'delete-retained-if',
  2,
  `if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('HDEL', KEYS[1], ARGV[1])`,
);

/** Renews the lease of a broker instance if it is still ours or free: KEYS alive; ARGV holder, ttl ms. */
export const RENEW_INSTANCE = script(
  'renew-instance',
  1,
  `local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1`,
);

/** A clean close: removes the instance's marker and lease if they are still ours. KEYS open, alive; ARGV holder. */
export const RELEASE_INSTANCE = script(
  'release-instance',
  2,
  `local n = 0
for i = 1, 2 do
  if redis.call('GET', KEYS[i]) == ARGV[1] then n = n + redis.call('DEL', KEYS[i]) end
end
return n`,
);

export const SCRIPTS: readonly Script[] = [SAVE, LOAD, SET_FIELD, PUT_INFLIGHT, ENQUEUE, DELETE_IF_EXPIRY, DELETE_ORPHAN, UNINDEX_IF_SCORE, PUT_RETAINED, DELETE_RETAINED, DELETE_RETAINED_IF, RENEW_INSTANCE, RELEASE_INSTANCE];
