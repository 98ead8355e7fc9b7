-- Move a leased message to its dead-letter queue in one atomic step.
-- KEYS: the queue's ready, leased, messages, deliveries; then the dead-letter
--       queue's ready, messages, seq, wake.
-- ARGV: id, delivery count, the dead letter's payload (reason headers added).
-- Returns 1 if moved, 0 if the delivery no longer holds the message (its
-- lease lapsed and another consumer has it now: that one decides).
local id = ARGV[1]
if redis.call('HGET', KEYS[4], id) ~= ARGV[2] then
  return 0
end
redis.call('ZREM', KEYS[2], id)
redis.call('ZREM', KEYS[1], id)
redis.call('HDEL', KEYS[3], id)
redis.call('HDEL', KEYS[4], id)
local sequence = redis.call('INCR', KEYS[7])
local dead_id = string.format('0:%d', sequence)
redis.call('HSET', KEYS[6], dead_id, ARGV[3])
redis.call('ZADD', KEYS[5], ready_score(dead_id), dead_id)
wake(KEYS[8], 1)
return 1
