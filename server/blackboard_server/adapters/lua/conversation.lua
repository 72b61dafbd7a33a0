-- Creates (ARGV[1] == 'create') or deletes a conversation's keys in one step.
--
-- KEYS: the conversation's keys (Keys.all), then the tenant's usage hash
-- create ARGV: 'create' now_ms idle_ttl_ms metadata max_conversations (0: unlimited)
-- delete ARGV: 'delete' channel
-- Returns 1, 0 when the conversation already exists (create) or is missing
-- (delete), or -1 when the tenant has max_conversations already.
local meta, usage = KEYS[1], KEYS[#KEYS]
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
if redis.call('EXISTS', meta) == 0 then
  return 0
end
redis.call('HINCRBY', usage, 'conversations', -1)
local size = tonumber(redis.call('HGET', meta, 'bytes') or '0')
if size ~= 0 then
  redis.call('HINCRBY', usage, 'bytes', num(-size))
end
-- UNLINK frees large hashes and logs off the main thread.
redis.call('UNLINK', unpack(KEYS, 1, #KEYS - 1))
-- An empty payload tells watchers to look again; they will find the conversation gone.
redis.call('PUBLISH', ARGV[2], '')
return 1
