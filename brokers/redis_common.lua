-- Helpers prepended to every script of the Redis broker (brokers/redis.py).
--
-- A queue is six keys: <prefix><queue>:ready (sorted set, scored by priority
-- band then sequence), :delayed (sorted set, scored by due time in ms),
-- :leased (sorted set, scored by lease deadline in ms), :messages (hash, id to
-- payload), :deliveries (hash, id to delivery count) and :wake (list of tokens
-- a blocked receiver pops). :seq is the counter that numbers messages.
--
-- A message id is "<priority>:<sequence>", so its place in :ready can be
-- computed again whenever it goes back there.
--
-- Time is the server's clock, so producers and workers on hosts whose clocks
-- disagree still agree on when a delay or a lease ends.

if redis.replicate_commands then
  -- Redis 5 and 6 need this before a script that read TIME may write.
  redis.replicate_commands()
end

local PRIORITY_BAND = 1e13
local WAKE_TOKENS = 64
local MOVE_BATCH = 1000

local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
end

local function ready_score(id)
  local priority, sequence = string.match(id, '^(%d):(%d+)$')
  return (9 - tonumber(priority)) * PRIORITY_BAND + tonumber(sequence)
end

-- Move the members of a time-scored set that are due back to :ready.
local function move_due(from, ready, now)
  local due = redis.call('ZRANGEBYSCORE', from, '-inf', now, 'LIMIT', 0, MOVE_BATCH)
  for _, id in ipairs(due) do
    redis.call('ZADD', ready, ready_score(id), id)
  end
  if #due > 0 then
    redis.call('ZREM', from, unpack(due))
  end
end

-- Leave up to WAKE_TOKENS tokens for receivers blocked on the queue.
local function wake(key, count)
  local tokens = {}
  for i = 1, math.min(count, WAKE_TOKENS) do
    tokens[i] = '1'
  end
  redis.call('RPUSH', key, unpack(tokens))
  redis.call('LTRIM', key, 0, WAKE_TOKENS - 1)
end

