-- Publish a batch of messages atomically, numbering them in arrival order.
-- KEYS: per queue, 5 keys: ready, delayed, messages, seq, wake.
-- ARGV: per message, 4 values: queue number (1-based), priority 0-9,
--       delay in ms (0 for none), payload.
-- Returns the number of messages published.
local now = now_ms()
local woken = {}
for i = 1, #ARGV, 4 do
  local base = (tonumber(ARGV[i]) - 1) * 5
  local priority = tonumber(ARGV[i + 1])
  local delay = tonumber(ARGV[i + 2])
  local sequence = redis.call('INCR', KEYS[base + 4])
  local id = string.format('%d:%d', priority, sequence)
  redis.call('HSET', KEYS[base + 3], id, ARGV[i + 3])
  if delay > 0 then
    redis.call('ZADD', KEYS[base + 2], now + delay, id)
  else
    redis.call('ZADD', KEYS[base + 1], ready_score(id), id)
  end
  woken[base] = (woken[base] or 0) + 1
end
for base, count in pairs(woken) do
  wake(KEYS[base + 5], count)
end
return #ARGV / 4
