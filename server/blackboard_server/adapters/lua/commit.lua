-- One write, all or nothing: a port of domain/commit.py::plan plus the
-- bookkeeping of MemoryStore.commit.
--
-- KEYS: meta data index log replies reply_expiry ttl fences bindings ended grants (the
--       rest of Keys.all), then the usage hash: the tenant's on one Redis, the
--       conversation's own on a cluster (redis_store.py); and, for a store whose
--       reads are confirmed, the confirm key: then even a write that changes
--       nothing (a failed compare, fenced, not found) answers only with what a
--       WAIT after it covers
-- ARGV: batch fingerprint now_ms retention dedupe_window_ms channel max_payload publish
--       max_entries max_bytes
--   (publish: PUBLISH, or SPUBLISH on a cluster; quotas: 0 is unlimited)
local meta, data, index, log, replies, reply_expiry, ttl, fences, bindings, ended =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local usage = KEYS[12]
confirm(KEYS[13])
local batch = cmsgpack.unpack(ARGV[1])
local fingerprint = ARGV[2]
local now = tonumber(ARGV[3])
local retention = tonumber(ARGV[4])
local dedupe_window = tonumber(ARGV[5])
local channel = ARGV[6]
local max_payload = tonumber(ARGV[7])
local publish = ARGV[8]
local max_entries = tonumber(ARGV[9])
local max_bytes = tonumber(ARGV[10])

local state = redis.call('HMGET', meta, 'rev', 'compact')
if not state[1] then
  return {'NOTFOUND'}
end
local head, compact = tonumber(state[1]), tonumber(state[2])

local request_id = batch[4]
if request_id ~= '' then
  -- Forget a few expired request ids per write that may add one: bounded work;
  -- the lookup below ignores any expired record this has not reached yet.
  local expired = redis.call('ZRANGEBYSCORE', reply_expiry, '-inf', num(now), 'LIMIT', 0, 16)
  if #expired > 0 then
    redis.call('HDEL', replies, unpack(expired))
    redis.call('ZREM', reply_expiry, unpack(expired))
  end
  local raw = redis.call('HGET', replies, request_id)
  if raw then
    local record = cmsgpack.unpack(raw)
    if record[3] > now then
      if record[1] ~= fingerprint then
        return {'REUSED'}
      end
      -- Written again, unchanged: a WAIT after this call then also covers the
      -- first attempt's write, whichever connection made it.
      redis.call('HSET', replies, request_id, raw)
      -- A retry re-announces the earliest expiry in case the first attempt's
      -- index update never happened.
      return {'OK', record[2], 1, next_expiry(ttl)}
    end
  end
end

local fence = batch[5]
local mark_name, mark = nil, 0
if fence then
  mark_name = fence[1] .. ':' .. fence[2]
  mark = tonumber(redis.call('HGET', fences, mark_name) or '0')
  -- Only the current holder's token, as recorded when it took the lock or term.
  if mark ~= fence[3] then
    return {'FENCED', mark}
  end
end

local cache = {}
local function lookup(key)
  local hit = cache[key]
  if hit == nil then
    local raw = redis.call('HGET', data, key)
    hit = false
    if raw then
      hit = {cmsgpack.unpack(raw), raw}
    end
    cache[key] = hit
  end
  if hit then
    return hit[1], hit[2]
  end
  return nil, nil
end

local function compare_holds(c, e)
  local target, operator = c[2], c[3]
  local left, right
  if target == 4 then
    if not e then
      return false
    end
    left, right = e[2], c[5]
    if operator == 1 then
      return left == right
    elseif operator == 2 then
      return left ~= right
    elseif operator == 3 then
      return bytes_less(right, left)
    elseif operator == 4 then
      return bytes_less(left, right)
    end
    return false
  end
  left, right = 0, c[4]
  if e then
    if target == 1 then
      left = e[4]
    elseif target == 2 then
      left = e[5]
    else
      left = e[6]
    end
  end
  if operator == 1 then
    return left == right
  elseif operator == 2 then
    return left ~= right
  elseif operator == 3 then
    return left > right
  elseif operator == 4 then
    return left < right
  end
  return false
end

local held = true
for _, c in ipairs(batch[1]) do
  if not compare_holds(c, lookup(c[1])) then
    held = false
    break
  end
end
local compared = {}
if not held then
  for _, c in ipairs(batch[1]) do
    local e = lookup(c[1])
    if e then
      compared[#compared + 1] = {c[1], e[4], e[6]}
    else
      compared[#compared + 1] = {c[1], 0, 0}
    end
  end
end

local ops = batch[3]
if held then
  ops = batch[2]
end
local revision = head + 1
local provenance = {batch[6], batch[7], request_id, fence, now}
local changes, results, has_ttl = {}, {}, false
-- Every lookup sees the state before the write, as plan's does.
local ended_sessions = {}
for _, op in ipairs(ops) do
  local kind, key = op[1], op[2]
  if kind == 1 and op[6] ~= '' and redis.call('ZSCORE', ended, op[6]) then
    return {'SESSION_ENDED', op[6]}
  end
  if kind == 4 then
    -- The session ended: every entry still bound to it goes in this revision.
    local session = key
    ended_sessions[#ended_sessions + 1] = session
    -- Members are `session NUL key`: session ids may contain '/' but never NUL.
    local members = redis.call('ZRANGEBYLEX', bindings, '[' .. session .. '\0',
      '(' .. session .. '\1')
    for _, member in ipairs(members) do
      local bound = string.sub(member, #session + 2)
      local previous, previous_raw = lookup(bound)
      if previous and previous[8] == session then
        changes[#changes + 1] = {type = 2, key = bound, entry = false, previous = previous_raw,
          previous_table = previous}
      end
    end
  elseif kind == 1 or kind == 3 then
    if kind == 3 then
      key = string.format('%s/%020d', key, revision)
    end
    local previous, previous_raw = lookup(key)
    local version, create_revision = 1, revision
    if previous then
      version, create_revision = previous[4] + 1, previous[5]
    end
    local expires, session = 0, ''
    if op[5] ~= 0 then
      expires = now + op[5]
      has_ttl = true
    end
    if kind == 1 then
      session = op[6]
    end
    local entry = {key, op[3], op[4], version, create_revision, revision, expires, session,
      provenance}
    changes[#changes + 1] = {type = 1, key = key, entry = cmsgpack.pack(entry),
      entry_table = entry, previous = previous_raw, previous_table = previous}
    results[#results + 1] = {key, version, create_revision}
  else
    local previous, previous_raw = lookup(key)
    if previous then
      changes[#changes + 1] = {type = 2, key = key, entry = false, previous = previous_raw,
        previous_table = previous}
      results[#results + 1] = {key, previous[4], previous[5]}
    else
      results[#results + 1] = {key, 0, 0}
    end
  end
end

local coordination = batch[8]
if #changes == 0 and not coordination then
  return {'OK', cmsgpack.pack({held, head, results, compared}), 0, -1}
end

-- domain/quota.py::check_write
local added_entries, added_bytes = usage_delta(changes)
if max_entries > 0 and added_entries > 0 then
  local entries = redis.call('ZCARD', index) + added_entries
  if entries > max_entries then
    return {'QUOTA', 'entries_per_conversation', max_entries, entries}
  end
end
if max_bytes > 0 and added_bytes > 0 then
  local size = tonumber(redis.call('HGET', usage, 'bytes') or '0') + added_bytes
  if size > max_bytes then
    return {'QUOTA', 'bytes', max_bytes, size}
  end
end

for _, raise in ipairs(batch[9]) do
  local current = tonumber(redis.call('HGET', fences, raise[1]) or '0')
  redis.call('HSET', fences, raise[1], num(math.max(current, raise[2])))
end
for _, session in ipairs(ended_sessions) do
  redis.call('ZADD', ended, num(now), session)
end
-- Remembered for the dedupe window, like request ids; forgotten by any commit.
redis.call('ZREMRANGEBYSCORE', ended, '-inf', num(now - dedupe_window))
add_usage(meta, usage, apply_changes(data, index, ttl, bindings, changes, lookup))
local event = encode_event(revision, now, provenance, changes, coordination)
local result = cmsgpack.pack({held, revision, results, compared})
if request_id ~= '' then
  local expires = now + dedupe_window
  redis.call('HSET', replies, request_id, cmsgpack.pack({fingerprint, result, expires}))
  redis.call('ZADD', reply_expiry, num(expires), request_id)
end
append_event(meta, log, revision, compact, now, event, retention, channel, max_payload,
  publish)
local earliest = -1
if has_ttl then
  earliest = next_expiry(ttl)
end
return {'OK', result, 0, earliest}
