-- Move lease deadlines to ARGV[1] ms from now, for deliveries still holding.
-- KEYS: per queue, 2 keys: leased, deliveries.
-- ARGV: lease in ms, then per message 3 values: queue number, id, delivery count.
-- Returns the number of leases extended.
local now = now_ms()
local until_ms = now + tonumber(ARGV[1])
local extended = 0
for i = 2, #ARGV, 3 do
  local base = (tonumber(ARGV[i]) - 1) * 2
  local id = ARGV[i + 1]
  if redis.call('HGET', KEYS[base + 2], id) == ARGV[i + 2] then
    -- XX: a lease that lapsed and went back to :ready stays there.
    extended = extended + redis.call('ZADD', KEYS[base + 1], 'XX', 'CH', until_ms, id)
  end
end
return extended
