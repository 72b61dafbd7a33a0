-- Shared by every script: redis_store.py prepends this file to each body.
--
-- Entries, events and results are msgpack arrays (layout in redis_codec.py).
-- Absent values are `false`, never nil: a nil would turn a Lua array into a
-- map when cmsgpack encodes it.

-- Lua's tostring writes large numbers as 1e+15, which Redis would store verbatim.
local function num(n)
  return string.format('%d', n)
end

-- A confirmed read (redis_store.py) names one more key after its own: this
-- short-lived write to it moves the connection's replication offset past
-- every write the script read, so the WAIT sent after the script confirms
-- them all. Without that key the script writes nothing.
local function confirm(key)
  if key then
    redis.call('SET', key, '1', 'PX', 10000)
  end
end

-- Lua's `<` on strings follows the server's collation locale; keys and values
-- order by their bytes, as in Python and in Redis sorted sets.
local function bytes_less(a, b)
  local n = math.min(#a, #b)
  local i = 1
  while i <= n do
    local j = math.min(i + 63, n)
    if string.sub(a, i, j) ~= string.sub(b, i, j) then
      for p = i, j do
        local ca, cb = string.byte(a, p), string.byte(b, p)
        if ca ~= cb then
          return ca < cb
        end
      end
    end
    i = j + 1
  end
  return #a < #b
end

local function array_header(n)
  if n < 16 then
    return string.char(0x90 + n)
  elseif n < 65536 then
    return string.char(0xdc, math.floor(n / 256), n % 256)
  end
  return string.char(0xdd, math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256)
end

-- Stored entries and previous entries are spliced into the event as they are,
-- without a decode/encode round trip.
local function encode_event(revision, now, provenance, changes, coordination)
  local parts = {array_header(5), cmsgpack.pack(revision, now, provenance),
    array_header(#changes)}
  for _, c in ipairs(changes) do
    parts[#parts + 1] = array_header(4) .. cmsgpack.pack(c.type, c.key)
      .. (c.entry or cmsgpack.pack(false)) .. (c.previous or cmsgpack.pack(false))
  end
  parts[#parts + 1] = cmsgpack.pack(coordination or false)
  return table.concat(parts)
end

-- c.entry_table is the decoded new entry, kept to index its expiry and its
-- session. `before(key)` is the decoded entry stored at `key` before this
-- write (nil when none): the caller has read it already. One event may change
-- a key twice, so after the first change the entry stored now is tracked here;
-- the binding index and the usage follow the entry stored now, not c.previous.
-- The index holds exactly the stored keys, and the ttl index exactly the keys
-- whose entry expires, so a key already stored is not added again, nor is an
-- entry that never expired taken out.
-- Returns the bytes the changes add to the conversation's usage (domain/quota.py).
local function apply_changes(data, index, ttl, bindings, changes, before)
  local added, stored = 0, {}
  for _, c in ipairs(changes) do
    local current = stored[c.key]
    if current == nil then
      current = before(c.key) or false
    end
    if current then
      added = added - #c.key - #current[2]
      local session = current[8]
      if session ~= '' then
        redis.call('ZREM', bindings, session .. '\0' .. c.key)
      end
    end
    if c.entry then
      local entry = c.entry_table
      added = added + #c.key + #entry[2]
      if entry[8] ~= '' then
        redis.call('ZADD', bindings, 0, entry[8] .. '\0' .. c.key)
      end
      redis.call('HSET', data, c.key, c.entry)
      if not current then
        redis.call('ZADD', index, 0, c.key)
      end
      if entry[7] ~= 0 then
        redis.call('ZADD', ttl, num(entry[7]), c.key)
      elseif current and current[7] ~= 0 then
        redis.call('ZREM', ttl, c.key)
      end
      stored[c.key] = entry
    else
      redis.call('HDEL', data, c.key)
      redis.call('ZREM', index, c.key)
      redis.call('ZREM', ttl, c.key)
      stored[c.key] = false
    end
  end
  return added
end

-- A port of domain/quota.py::usage_delta: entries and bytes the changes add,
-- judged from each change's previous entry as the plan saw it.
local function usage_delta(changes)
  local entries, size = 0, 0
  for _, c in ipairs(changes) do
    if c.previous_table then
      entries = entries - 1
      size = size - #c.key - #c.previous_table[2]
    end
    if c.entry then
      entries = entries + 1
      size = size + #c.key + #c.entry_table[2]
    end
  end
  return entries, size
end

local function add_usage(meta, usage, added)
  if added ~= 0 then
    redis.call('HINCRBY', meta, 'bytes', num(added))
    redis.call('HINCRBY', usage, 'bytes', num(added))
  end
end

-- The log is a stream with IDs `<revision>-0`: XADD refuses an ID that does not
-- grow, so a revision can never be logged twice or out of order. `compact` is
-- the meta hash's, read with the head; past the retention, the same XADD trims.
local function append_event(meta, log, revision, compact, now, event, retention, channel,
    max_payload, publish)
  local id = num(revision) .. '-0'
  if revision - retention > compact then
    compact = revision - retention
    redis.call('XADD', log, 'MINID', num(compact + 1) .. '-0', id, 'e', event)
  else
    redis.call('XADD', log, id, 'e', event)
  end
  redis.call('HSET', meta, 'rev', num(revision), 'compact', num(compact), 'utime', num(now))
  -- An empty payload still wakes listeners; they read large events from the log.
  if #event <= max_payload then
    redis.call(publish, channel, event)
  else
    redis.call(publish, channel, '')
  end
end

local function next_expiry(ttl)
  local first = redis.call('ZRANGE', ttl, 0, 0, 'WITHSCORES')
  if #first == 0 then
    return -1
  end
  return tonumber(first[2])
end
