-- Fields of a conversation's meta hash, for a confirmed read (redis_store.py):
-- as HMGET, plus the write that lets WAIT confirm what was read.
--
-- KEYS: meta confirm
-- ARGV: field...
-- Returns the fields' values, false where absent.
confirm(KEYS[2])
return redis.call('HMGET', KEYS[1], unpack(ARGV))
