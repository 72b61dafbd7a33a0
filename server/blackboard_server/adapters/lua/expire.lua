-- Deletes the due entries of one conversation as one event, as
-- MemoryStore.expire_due does per conversation.
--
-- KEYS: meta data index log ttl bindings usage (the tenant's, or on a cluster the
--       conversation's own)
-- ARGV: now_ms limit retention channel max_payload expiry_agent publish
-- Returns {deleted, next expiry or -1 (-1 also when the conversation is gone)}.
local meta, data, index, log, ttl, bindings, usage =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local retention = tonumber(ARGV[3])
local channel = ARGV[4]
local max_payload = tonumber(ARGV[5])
local publish = ARGV[7]

local state = redis.call('HMGET', meta, 'rev', 'compact')
if not state[1] then
  return {0, -1}
end
local head, compact = tonumber(state[1]), tonumber(state[2])

local keys, previous, decoded = {}, {}, {}
for _, key in ipairs(redis.call('ZRANGEBYSCORE', ttl, '-inf', num(now), 'LIMIT', 0, limit)) do
  local raw = redis.call('HGET', data, key)
  local entry = raw and cmsgpack.unpack(raw)
  if entry and entry[7] ~= 0 and entry[7] <= now then
    keys[#keys + 1] = key
    previous[key], decoded[key] = raw, entry
  elseif entry and entry[7] ~= 0 then
    -- The index disagrees with the entry (it never should): trust the entry.
    redis.call('ZADD', ttl, num(entry[7]), key)
  else
    redis.call('ZREM', ttl, key)
  end
end

if #keys > 0 then
  table.sort(keys, bytes_less)
  local changes = {}
  for _, key in ipairs(keys) do
    changes[#changes + 1] = {type = 2, key = key, entry = false, previous = previous[key]}
  end
  local revision = head + 1
  local provenance = {ARGV[6], '', '', false, now}
  local function before(key)
    return decoded[key]
  end
  add_usage(meta, usage, apply_changes(data, index, ttl, bindings, changes, before))
  local event = encode_event(revision, now, provenance, changes, false)
  append_event(meta, log, revision, compact, now, event, retention, channel, max_payload,
    publish)
end
return {#keys, next_expiry(ttl)}
