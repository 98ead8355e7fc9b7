-- Remove leased messages for good, if each delivery still holds its message.
-- KEYS: per queue, 4 keys: ready, leased, messages, deliveries.
-- ARGV: per message, 3 values: queue number (1-based), id, delivery count.
-- The delivery count fences a consumer whose lease lapsed: once the message
-- was handed out again, the old delivery's ack does nothing.
-- Returns the number of messages removed.
local removed = 0
for i = 1, #ARGV, 3 do
  local base = (tonumber(ARGV[i]) - 1) * 4
  local id = ARGV[i + 1]
  if redis.call('HGET', KEYS[base + 4], id) == ARGV[i + 2] then
    redis.call('ZREM', KEYS[base + 2], id)
    redis.call('ZREM', KEYS[base + 1], id)
    redis.call('HDEL', KEYS[base + 4], id)
    removed = removed + redis.call('HDEL', KEYS[base + 3], id)
  end
end
return removed
