"""The Lua scripts of write-behind queues (see ``lua`` for the key layout and the shared
functions they reuse)."""

from __future__ import annotations

from .lua import _PUBLISH_FN, _STORE_FN

# -- write-behind -------------------------------------------------------------------------------
# A writer's queue lives on the queue's Redis (the cache's own, or ``write_behind_redis``); the
# cached value and its pending record on the cache's. Each script comes as its two halves, and,
# when one Redis holds both, as one script that runs both halves atomically.
# The queue's keys carry no expiry: they are data, not cache (no ``volatile-*`` eviction policy
# can pick them, and none ends them while a write waits). The stream's entries are deleted once
# settled; the pending record and the newest-write field of a key once its write lands.

#: The consumer group of every writer's stream.
QUEUE_GROUP = "cachewise"

# A stream, once made with its group, exists until it is lost (settling deletes entries, never
# the key): a missing stream is a lost one, so whatever makes it again starts a new epoch.
# Otherwise an evicting Redis that dropped the stream and kept the (hot) epoch key would let a
# new write, or a flusher taking the lead, make it again under the old epoch, and the writes
# held from before would look settled. A stream made again starts its ids a second past the
# server's clock: a new stream would otherwise give again the ids of the lost one (same
# millisecond), which processes still hold for writes of the old epoch.
# The same holds for the hash of newest writes (made with the epoch, never emptied): made again
# by a new write under the old epoch, it would lack the fields of the writes queued before,
# which the flusher would then take as superseded and acknowledge without a store call. Made
# again, its field ``~`` holds the id of the stream's last entry then: the hash says nothing of
# the entries up to it, which the flusher writes (at least once) unless the hash names a newer
# write to their key.
# Whether the stream or the hash of newest writes is gone: either way the queue was lost.
_QUEUE_LOST_FN = """
local function queue_lost(stream, newest)
  return redis.call('EXISTS', stream, newest) < 2
end
"""
_NEW_EPOCH_FN = (
    _QUEUE_LOST_FN
    + """
local function new_epoch(stream, epochkey, nonce, newest)
  redis.call('SET', epochkey, nonce)
  if redis.call('EXISTS', newest) == 0 then
    local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
    redis.call('HSET', newest, '~', last[1] and last[1][1] or '0-0')
  end
  if redis.call('EXISTS', stream) == 0 then
    redis.call('XGROUP', 'CREATE', stream, '"""
    + QUEUE_GROUP
    + """', '0', 'MKSTREAM')
    local now = redis.call('TIME')
    local ms = string.format('%d%03d', tonumber(now[1]) + 1, math.floor(tonumber(now[2]) / 1000))
    redis.call('XSETID', stream, ms .. '-0')
  else
    redis.pcall('XGROUP', 'CREATE', stream, '"""
    + QUEUE_GROUP
    + """', '0')
  end
  return nonce
end
"""
)

# Appends a write to the writer's stream and records it as the writer's newest write to the key
# (its flusher skips older ones); the queue's epoch (a new one if it or the stream is missing:
# see ``writebehind.loss``).
# The newest-write hash keeps a field ``~`` (no cache key is named so) besides the keys' own, so
# that it never empties: a missing hash means it was lost (evicted, flushed), never "every write
# landed", and the flusher then writes what it holds instead of taking it all as superseded
# (``~`` is set where the hash is made: ``new_epoch``).
_ENQUEUE_QUEUE_FN = (
    _NEW_EPOCH_FN
    + """
local function enqueue(stream, newest, epochkey, key, packed, nonce)
  local epoch = redis.call('GET', epochkey)
  if not epoch or queue_lost(stream, newest) then
    epoch = new_epoch(stream, epochkey, nonce, newest)
  end
  local id = redis.call('XADD', stream, '*', 'k', key, 'a', packed)
  redis.call('HSET', newest, key, id)
  return stream .. '|' .. id, epoch
end
"""
)

# A write-behind call on one Redis, atomically: the queue half, then the write's pending record
# (readers use it until the store has it) and the STORE of the new value.
# KEYS: stream, pending, newest, epoch, then STORE's keys. ARGV: STORE's five, cache key, packed
# call, a nonce for a new epoch, then STORE's tag versions.
# Returns the pending record's id and the queue's epoch, as one string "<id> <epoch>" (a single
# reply parses faster than an array on the path of every call; neither part holds a space).
ENQUEUE = (
    _STORE_FN
    + _ENQUEUE_QUEUE_FN
    + """
local mine, epoch = enqueue(KEYS[1], KEYS[3], KEYS[4], ARGV[6], ARGV[7], ARGV[8])
redis.call('HSET', KEYS[2], 'id', mine, 'v', ARGV[2])
store(4, 8)
return mine .. ' ' .. epoch
"""
)

# The queue half alone. KEYS: stream, newest, epoch. ARGV: cache key, packed call, nonce.
ENQUEUE_QUEUE = (
    _ENQUEUE_QUEUE_FN
    + """
local mine, epoch = enqueue(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3])
return mine .. ' ' .. epoch
"""
)

# The cache half alone, after the queue half: the pending record, then STORE.
# KEYS: pending, then STORE's keys. ARGV: STORE's five, the pending id, then STORE's versions.
PENDING_STORE = (
    _STORE_FN
    + """
redis.call('HSET', KEYS[1], 'id', ARGV[6], 'v', ARGV[2])
return store(1, 6)
"""
)

# After a flush of one coalesced write, the queue half: acks and deletes the stream ids the write
# stands for, forgets it as the key's newest write, and a dead write goes to the dead letters
# (trimmed by age, retention_ms, not expired as a whole).
_SETTLE_QUEUE_FN = """
local function settle_queue(stream, dead, newest, group, outcome, retention, key, packed, err,
                            attempts, ids)
  if #ids > 0 then
    redis.call('XACK', stream, group, unpack(ids))
    redis.call('XDEL', stream, unpack(ids))
    if redis.call('HGET', newest, key) == ids[#ids] then redis.call('HDEL', newest, key) end
  end
  if outcome == 'dead' then
    local now = redis.call('TIME')
    local oldest = tonumber(now[1]) * 1000 - tonumber(retention)
    redis.call('XADD', dead, '*', 'k', key, 'a', packed, 'e', err, 'n', attempts)
    if oldest > 0 then redis.call('XTRIM', dead, 'MINID', oldest) end
  end
end
"""

# The cache half: the pending record is removed if it is still this write's; the cached value
# is dropped everywhere when the store does not hold it ("dead", unless a newer write is
# pending) or may hold something newer than the cache ("drop": a replayed write landed).
_SETTLE_CACHE_FN = (
    _PUBLISH_FN
    + """
local function settle_cache(pending, value, lease, pid, outcome, inbox, msg)
  local mine = redis.call('HGET', pending, 'id') == pid
  if mine then redis.call('DEL', pending) end
  if outcome == 'drop' or (outcome == 'dead' and mine) then
    redis.call('DEL', value, lease)
    publish(inbox, msg)
  end
end
"""
)

# Both halves on one Redis, atomically: KEYS are the queue half's then the cache half's, ARGV
# the cache half's four then the queue half's (its stream ids last).
SETTLE = (
    _SETTLE_QUEUE_FN
    + _SETTLE_CACHE_FN
    + """
local ids = {}
for i = 12, #ARGV do ids[#ids + 1] = ARGV[i] end
settle_queue(KEYS[1], KEYS[2], KEYS[3], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10],
             ARGV[11], ids)
settle_cache(KEYS[4], KEYS[5], KEYS[6], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return 1
"""
)

# The queue half alone. KEYS: stream, dead-letter stream, newest. ARGV: group, outcome,
# retention_ms, cache key, packed call, error, attempts, then the stream ids.
SETTLE_QUEUE = (
    _SETTLE_QUEUE_FN
    + """
local ids = {}
for i = 8, #ARGV do ids[#ids + 1] = ARGV[i] end
settle_queue(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6],
             ARGV[7], ids)
return 1
"""
)

# The cache half alone. KEYS: pending, value, lease. ARGV: pending id, outcome, the sender's
# event channel, message.
SETTLE_CACHE = (
    _SETTLE_CACHE_FN
    + """
settle_cache(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return 1
"""
)

# KEYS: stream, epoch, newest. ARGV: group, a nonce for a new epoch. Creates the consumer group
# (and the stream) if missing, a missing stream or hash of newest writes under a new epoch; an
# expiry an older release set on the stream is removed (queue keys are data).
GROUP = (
    _NEW_EPOCH_FN
    + """
if queue_lost(KEYS[1], KEYS[3]) then new_epoch(KEYS[1], KEYS[2], ARGV[2], KEYS[3]) end
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
redis.call('PERSIST', KEYS[1])
return 1
"""
)

# KEYS: stream, epoch, newest. ARGV: group, nonce, "1" to declare the queue lost (its consumer
# group vanished). The queue's state for loss detection (see ``writebehind.loss``): a queue whose
# epoch, stream or hash of newest writes is gone, or declared lost, gets a new epoch (and those
# again), so that every process holding writes of the old one queues them again. Returns
# {epoch, the oldest entry's id or "", 1 if the epoch changed here}.
WB_STATE = (
    _NEW_EPOCH_FN
    + """
local epoch = redis.call('GET', KEYS[2])
local changed = 0
if not epoch or queue_lost(KEYS[1], KEYS[3]) or ARGV[3] == '1' then
  epoch = new_epoch(KEYS[1], KEYS[2], ARGV[2], KEYS[3])
  changed = 1
end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
return {epoch, first[1] and first[1][1] or '', changed}
"""
)

# Queues again a write held by a process when the queue it went into was lost, unless the epoch
# moved again or the stream or hash of newest writes is gone again (-1: tried at the next check,
# which starts a new epoch) or another write to that key is the newest (0: that one lands
# instead). Returns the new entry's id.
_REQUEUE_QUEUE_FN = (
    _QUEUE_LOST_FN
    + """
local function requeue(stream, newest, epochkey, key, packed, epoch, old)
  if redis.call('GET', epochkey) ~= epoch or queue_lost(stream, newest) then
    return -1
  end
  local last = redis.call('HGET', newest, key)
  if last and last ~= old then return 0 end
  local id = redis.call('XADD', stream, '*', 'k', key, 'a', packed)
  redis.call('HSET', newest, key, id)
  return id
end
"""
)

# On one Redis, with the write's pending record again. KEYS: stream, pending, newest, epoch.
# ARGV: cache key, packed call, envelope, epoch, the write's id in the lost queue.
REQUEUE = (
    _REQUEUE_QUEUE_FN
    + """
local id = requeue(KEYS[1], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[4], ARGV[5])
if type(id) == 'string' then
  redis.call('HSET', KEYS[2], 'id', KEYS[1] .. '|' .. id, 'v', ARGV[3])
end
return id
"""
)

# The queue half alone. KEYS: stream, newest, epoch. ARGV: cache key, packed call, epoch, old id.
REQUEUE_QUEUE = (
    _REQUEUE_QUEUE_FN
    + """
return requeue(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
"""
)

# The cache half alone: a requeued write's pending record. KEYS: pending. ARGV: id, envelope.
PENDING_SET = """
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'v', ARGV[2])
return 1
"""

# KEYS: stream, dead-letter stream. ARGV: dead-letter ids...
# Moves dead letters back to the writer's stream, marked as replays. Returns how many moved.
REPLAY = """
local moved = 0
for i = 1, #ARGV do
  local found = redis.call('XRANGE', KEYS[2], ARGV[i], ARGV[i])
  if #found == 1 then
    local f = found[1][2]
    local fields = {}
    for j = 1, #f, 2 do fields[f[j]] = f[j + 1] end
    redis.call('XADD', KEYS[1], '*', 'k', fields['k'], 'a', fields['a'], 'r', '1')
    redis.call('XDEL', KEYS[2], ARGV[i])
    moved = moved + 1
  end
end
return moved
"""
