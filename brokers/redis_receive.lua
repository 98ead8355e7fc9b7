-- Lease up to ARGV[1] ready messages, trying queues in order.
-- KEYS: per queue, 6 keys: ready, delayed, leased, messages, deliveries, wake.
-- ARGV: max messages, lease in ms.
-- Each queue first gets back its due delayed messages and its lapsed leases,
-- so any receiver recovers the messages of a worker that died.
-- Returns {next, (queue number, id, delivery count, payload)...}; next is the
-- ms until the earliest delay or lease ends when nothing was taken, else -1.
local now = now_ms()
local wanted = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local reply = {-1}
local taken = 0
for base = 0, #KEYS - 1, 6 do
  local ready, delayed, leased = KEYS[base + 1], KEYS[base + 2], KEYS[base + 3]
  local messages, deliveries = KEYS[base + 4], KEYS[base + 5]
  move_due(delayed, ready, now)
  move_due(leased, ready, now)
  while taken < wanted do
    local popped = redis.call('ZPOPMIN', ready, wanted - taken)
    if #popped == 0 then
      break
    end
    for i = 1, #popped, 2 do
      local id = popped[i]
      local payload = redis.call('HGET', messages, id)
      -- An id without a payload was acked after its lease lapsed: skip it.
      if payload then
        redis.call('ZADD', leased, now + lease, id)
        local count = redis.call('HINCRBY', deliveries, id, 1)
        reply[#reply + 1] = base / 6 + 1
        reply[#reply + 1] = id
        reply[#reply + 1] = count
        reply[#reply + 1] = payload
        taken = taken + 1
      end
    end
  end
  if redis.call('ZCARD', ready) == 0 then
    redis.call('DEL', KEYS[base + 6])
  end
end
if taken == 0 then
  local next_at = nil
  for base = 0, #KEYS - 1, 6 do
    for _, key in ipairs({KEYS[base + 2], KEYS[base + 3]}) do
      local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      if #first > 0 then
        local at = tonumber(first[2])
        if next_at == nil or at < next_at then
          next_at = at
        end
      end
    end
  end
  if next_at ~= nil then
    reply[1] = math.max(0, math.ceil(next_at - now))
  end
end
return reply
