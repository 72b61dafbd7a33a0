-- Adds a member to (ARGV[1] == 'add') or removes it from a sorted set at
-- score 0: the tenants' conversation indexes. A script, so that it is a write
-- of the store's pipelined connection, covered by its WAIT in durable mode.
--
-- KEYS: index
-- ARGV: 'add' | 'remove', member
if ARGV[1] == 'add' then
  return redis.call('ZADD', KEYS[1], 0, ARGV[2])
end
return redis.call('ZREM', KEYS[1], ARGV[2])
