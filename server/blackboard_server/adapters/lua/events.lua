-- A range of the change log, checked against the compact revision in the
-- same step, so a concurrent trim can never leave a silent gap.
--
-- KEYS: meta log [confirm]
-- ARGV: start end limit
-- Returns {'OK', head, compact revision, event...}, {'COMPACTED', compact revision}
-- or {'NOTFOUND'}.
--
-- A confirmed read (common.lua) confirms every answer but one: no events
-- after `start`. That tells a poller only that nothing is new, so an idle
-- subscription's polls write nothing; the head and compact revision in such
-- an answer are then unconfirmed, and no caller passes them on.
local meta, log = KEYS[1], KEYS[2]
local state = redis.call('HMGET', meta, 'rev', 'compact')
if not state[1] then
  confirm(KEYS[3])
  return {'NOTFOUND'}
end
local head, compact = tonumber(state[1]), tonumber(state[2])
local start = tonumber(ARGV[1])
if start <= compact then
  confirm(KEYS[3])
  return {'COMPACTED', compact}
end
local stop = math.min(tonumber(ARGV[2]), head, start + tonumber(ARGV[3]) - 1)
local out = {'OK', head, compact}
if stop >= start then
  confirm(KEYS[3])
  for _, item in ipairs(redis.call('XRANGE', log, num(start) .. '-0', num(stop) .. '-0')) do
    out[#out + 1] = item[2][2]
  end
end
return out
