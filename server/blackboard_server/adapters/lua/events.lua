-- A range of the change log, checked against the compact revision in the
-- same step, so a concurrent trim can never leave a silent gap.
--
-- KEYS: meta log [confirm]
-- ARGV: start end limit
-- Returns {'OK', head, compact revision, event...}, {'COMPACTED', compact revision}
-- or {'NOTFOUND'}.
local meta, log = KEYS[1], KEYS[2]
confirm(KEYS[3])
local state = redis.call('HMGET', meta, 'rev', 'compact')
if not state[1] then
  return {'NOTFOUND'}
end
local head, compact = tonumber(state[1]), tonumber(state[2])
local start = tonumber(ARGV[1])
if start <= compact then
  return {'COMPACTED', compact}
end
local stop = math.min(tonumber(ARGV[2]), head, start + tonumber(ARGV[3]) - 1)
local out = {'OK', head, compact}
if stop >= start then
  for _, item in ipairs(redis.call('XRANGE', log, num(start) .. '-0', num(stop) .. '-0')) do
    out[#out + 1] = item[2][2]
  end
end
return out
