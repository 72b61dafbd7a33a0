-- Creates (ARGV[1] == 'create') or deletes a conversation's keys in one step;
-- reads or sets its grants, checking that it exists in the same step.
--
-- KEYS: every key of the conversation (redis_codec.Keys.all); the grants hash is KEYS[11]
-- create ARGV: 'create' now_ms idle_ttl_ms metadata
-- delete ARGV: 'delete' channel publish (PUBLISH, or SPUBLISH on a cluster)
-- Returns 1, or 0 when the conversation already exists (create) or is missing (delete).
-- grants ARGV: 'grants'                 -> false if missing, else {subject, role, ...}
-- grant ARGV:  'grant' subject role     -> -1 if missing, else 1/0: the subject had a grant
--              (role '0' revokes)
local meta = KEYS[1]
if ARGV[1] == 'grants' or ARGV[1] == 'grant' then
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
  redis.call('HSET', meta, 'rev', 0, 'compact', 0, 'ctime', ARGV[2], 'utime', ARGV[2],
    'idle', ARGV[3], 'metadata', ARGV[4])
  return 1
end
if redis.call('EXISTS', meta) == 0 then
  return 0
end
-- UNLINK frees large hashes and logs off the main thread.
redis.call('UNLINK', unpack(KEYS))
-- An empty payload tells watchers to look again; they will find the conversation gone.
redis.call(ARGV[3], ARGV[2], '')
return 1
