-- Give a leased message back, ready at once or after a delay.
-- KEYS: ready, delayed, leased, deliveries, wake.
-- ARGV: id, delivery count, delay in ms.
-- The delivery count is kept, so the message still counts towards the
-- poison-message limit. Returns 1 if the message was given back.
local id = ARGV[1]
if redis.call('HGET', KEYS[4], id) ~= ARGV[2] then
  return 0
end
if redis.call('ZREM', KEYS[3], id) == 0 then
  return 0
end
local delay = tonumber(ARGV[3])
if delay > 0 then
  redis.call('ZADD', KEYS[2], now_ms() + delay, id)
else
  redis.call('ZADD', KEYS[1], ready_score(id), id)
end
wake(KEYS[5], 1)
return 1
