-- Entries at the head revision, read in one step so the page and the
-- revision it reports agree.
--
-- KEYS: meta data index [confirm]
-- ARGV: exact ("1" or "0"), key (exact) or min bound, max bound, limit
-- Returns {'OK', revision, compact revision, more, entry...} or {'NOTFOUND'}.
local meta, data, index = KEYS[1], KEYS[2], KEYS[3]
confirm(KEYS[4])
local state = redis.call('HMGET', meta, 'rev', 'compact')
if not state[1] then
  return {'NOTFOUND'}
end
local out = {'OK', tonumber(state[1]), tonumber(state[2]), 0}
if ARGV[1] == '1' then
  local raw = redis.call('HGET', data, ARGV[2])
  if raw then
    out[5] = raw
  end
  return out
end
local limit = tonumber(ARGV[4])
local keys = redis.call('ZRANGEBYLEX', index, ARGV[2], ARGV[3], 'LIMIT', 0, limit + 1)
if #keys > limit then
  out[4] = 1
  keys[#keys] = nil
end
for _, key in ipairs(keys) do
  out[#out + 1] = redis.call('HGET', data, key)
end
return out
