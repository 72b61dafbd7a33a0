-- Creates (ARGV[1] == 'create') or deletes a conversation's keys in one step;
-- reads or sets its grants, checking that it exists in the same step.
--
-- KEYS: every key of the conversation (redis_codec.Keys.all; the grants hash is KEYS[11]),
--       then, for create and delete, the usage hash: the tenant's on one Redis, the
--       conversation's own (deleted with it) on a cluster
-- create ARGV: 'create' now_ms idle_ttl_ms metadata max_conversations (0: unlimited)
-- delete ARGV: 'delete' channel publish (PUBLISH, or SPUBLISH on a cluster)
-- Returns 1, 0 when the conversation already exists (create) or is missing
-- (delete), or -1 when the tenant has max_conversations already.
-- idle ARGV:   'idle' now_ms channel publish -> deletes the conversation as 'delete'
--              does when no write came for its idle TTL: -1; else the time it will
--              be idle; 0 when it is missing or has no idle TTL
-- grants ARGV: 'grants'                 -> false if missing, else {subject, role, ...}
--              (a confirmed read: KEYS[12] is the key it writes, see common.lua)
-- grant ARGV:  'grant' subject role     -> -1 if missing, else 1/0: the subject had a grant
--              (role '0' revokes)
local meta, usage = KEYS[1], KEYS[#KEYS]
if ARGV[1] == 'grants' or ARGV[1] == 'grant' then
  if ARGV[1] == 'grants' then
    confirm(KEYS[12])  -- a confirmed read's key, after Keys.all
  end
  if redis.call('EXISTS', meta) == 0 then
    if ARGV[1] == 'grants' then return false end
    return -1
  end
  local grants = KEYS[11]
  if ARGV[1] == 'grants' then
    return redis.call('HGETALL', grants)
  end
  local had = redis.call('HEXISTS', grants, ARGV[2])
  if ARGV[3] == '0' then
    redis.call('HDEL', grants, ARGV[2])
  else
    redis.call('HSET', grants, ARGV[2], ARGV[3])
  end
  return had
end
if ARGV[1] == 'create' then
  if redis.call('EXISTS', meta) == 1 then
    return 0
  end
  local limit = tonumber(ARGV[5])
  if limit > 0 and tonumber(redis.call('HGET', usage, 'conversations') or '0') >= limit then
    return -1
  end
  redis.call('HSET', meta, 'rev', 0, 'compact', 0, 'ctime', ARGV[2], 'utime', ARGV[2],
    'idle', ARGV[3], 'metadata', ARGV[4], 'bytes', 0)
  redis.call('HINCRBY', usage, 'conversations', 1)
  return 1
end
local channel, publish = ARGV[2], ARGV[3]
if ARGV[1] == 'idle' then
  local state = redis.call('HMGET', meta, 'utime', 'idle')
  local idle_ttl = tonumber(state[2] or '0')
  if not state[1] or idle_ttl <= 0 then
    return 0
  end
  local idle_at = tonumber(state[1]) + idle_ttl
  if idle_at > tonumber(ARGV[2]) then
    return idle_at
  end
  channel, publish = ARGV[3], ARGV[4]
elseif redis.call('EXISTS', meta) == 0 then
  return 0
end
-- The conversation's own usage hash shares its key stem (`...:m`, `...:u`): it goes with it.
if string.sub(usage, 1, #meta - 1) == string.sub(meta, 1, #meta - 1) then
  -- UNLINK frees large hashes and logs off the main thread.
  redis.call('UNLINK', unpack(KEYS))
else
  redis.call('HINCRBY', usage, 'conversations', -1)
  local size = tonumber(redis.call('HGET', meta, 'bytes') or '0')
  if size ~= 0 then
    redis.call('HINCRBY', usage, 'bytes', num(-size))
  end
  redis.call('UNLINK', unpack(KEYS, 1, #KEYS - 1))
end
-- An empty payload tells watchers to look again; they will find the conversation gone.
redis.call(publish, channel, '')
if ARGV[1] == 'idle' then
  return -1
end
return 1
