-- Publish a batch of messages atomically, numbering them in arrival order.
-- KEYS: per queue, 5 keys: ready, delayed, messages, seq, wake.
-- ARGV: per message, 4 values: queue number (1-based), priority 0-9,
--       delay in ms (0 for none), payload.
-- Returns the number of messages published.
-- Each queue's numbers are taken with one INCRBY and its members written with
-- one HSET and one ZADD per set, whatever the batch size.
local counts = {}
for i = 1, #ARGV, 4 do
  local base = (tonumber(ARGV[i]) - 1) * 5
  counts[base] = (counts[base] or 0) + 1
end
local sequence = {}
for base, count in pairs(counts) do
  sequence[base] = redis.call('INCRBY', KEYS[base + 4], count) - count
end
local payloads, ready, delayed = {}, {}, {}
local now = nil
for i = 1, #ARGV, 4 do
  local base = (tonumber(ARGV[i]) - 1) * 5
  local priority = tonumber(ARGV[i + 1])
  local delay = tonumber(ARGV[i + 2])
  sequence[base] = sequence[base] + 1
  local id = string.format('%d:%d', priority, sequence[base])
  payloads[base] = payloads[base] or {}
  table.insert(payloads[base], id)
  table.insert(payloads[base], ARGV[i + 3])
  if delay > 0 then
    now = now or now_ms()
    delayed[base] = delayed[base] or {}
    table.insert(delayed[base], now + delay)
    table.insert(delayed[base], id)
  else
    ready[base] = ready[base] or {}
    table.insert(ready[base], (9 - priority) * PRIORITY_BAND + sequence[base])
    table.insert(ready[base], id)
  end
end
for base, fields in pairs(payloads) do
  redis.call('HSET', KEYS[base + 3], unpack(fields))
end
for base, members in pairs(delayed) do
  redis.call('ZADD', KEYS[base + 2], unpack(members))
end
for base, members in pairs(ready) do
  redis.call('ZADD', KEYS[base + 1], unpack(members))
end
for base, count in pairs(counts) do
  wake(KEYS[base + 5], count)
end
return #ARGV / 4
