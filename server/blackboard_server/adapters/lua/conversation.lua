-- Creates (ARGV[1] == 'create') or deletes a conversation's keys in one step.
--
-- KEYS: meta data index log replies reply_expiry ttl fences
-- create ARGV: 'create' now_ms idle_ttl_ms metadata
-- delete ARGV: 'delete' channel publish (PUBLISH, or SPUBLISH on a cluster)
-- Returns 1, or 0 when the conversation already exists (create) or is missing (delete).
local meta = KEYS[1]
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
