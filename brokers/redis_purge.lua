-- Delete every message of a queue that is not leased: ready, delayed, and
-- those whose lease lapsed.
-- KEYS: ready, delayed, leased, messages, deliveries.
-- Returns the number of messages deleted.
local now = now_ms()
local deleted = 0
local function drop(ids)
  for _, id in ipairs(ids) do
    deleted = deleted + redis.call('HDEL', KEYS[4], id)
    redis.call('HDEL', KEYS[5], id)
  end
end
drop(redis.call('ZRANGE', KEYS[1], 0, -1))
drop(redis.call('ZRANGE', KEYS[2], 0, -1))
redis.call('DEL', KEYS[1], KEYS[2])
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
drop(lapsed)
for _, id in ipairs(lapsed) do
  redis.call('ZREM', KEYS[3], id)
end
return deleted
