"""Every Lua script cachewise runs on Redis, in one place (redis-py registers and caches them).

Key layout for namespace ``ns`` (namespaces are restricted to ``[A-Za-z0-9_.-]``, so no
namespace's keys can reach into another's): values live at ``ns:<key>``; what the library keeps
about them lives under ``ns#``: the lease of a value at ``ns#lease:<key>``, the version of a tag at
``ns#tagv:<tag>``, a write-behind write not yet in the store at ``ns#wbpending:<key>``; a
write-behind writer's queue is the stream ``ns#wb:<writer>``, its dead letters
``ns#wbdead:<writer>``, the lease of the process that flushes it ``ns#wbflusher:<writer>``, its
newest write per key ``ns#wbnewest:<writer>``;
events go to each listening process' own channel ``ns#events:<listener id>``, or to the
channel every listener also hears, ``ns#events``, when the registry of listeners, the sorted set
``ns#events``, is not known to be complete (see ``_PUBLISH_FN``). Every key written has an expiry
but the write-behind queue's (stream, pending records, newest writes, dead letters): those are
data, not cache.

These scripts build lease keys from value keys, which a Redis Cluster would refuse (a script must
declare its keys); the cluster variant is not written yet.
"""

from __future__ import annotations

# Publishes an event to every listener of the namespace but the sender's own, each on its own
# channel: a process is not woken by its own events (with one shared channel, a writer's
# listener thread competes with the writer for the GIL at the moment its reply arrives).
# Redis pub/sub cannot leave out one subscriber of a channel, and pattern subscriptions that
# exclude one would need a pattern right that ACLs grant only literally, so this is done here.
# The registry (the sorted set named like the shared channel) lists the listeners; it is used
# only when ``PUBSUB NUMSUB`` shows it complete, that is when its listeners' own channels have
# as many subscribers as the shared channel, which every listener also subscribes to. Otherwise
# (the registry was flushed, evicted or is being rebuilt, a listener has not registered yet, an
# older client listens, the user may not run PUBSUB), the event goes to the shared channel,
# which all hear; the sender's listener then skips its own event by its origin.
# Also past 8 listeners: a PUBLISH per listener costs Redis about 3 us each, against well under
# 1 us per subscriber of one shared PUBLISH, and in a large fleet one echo is a small share of
# the events every listener handles anyway.
_PUBLISH_FN = """
local function publish(inbox, msg)
  local shared = string.match(inbox, '^(.*):')
  local ids = redis.call('ZRANGE', shared, 0, 8)
  if #ids > 0 and #ids <= 8 then
    local channels = {shared}
    for i = 1, #ids do channels[i + 1] = shared .. ':' .. ids[i] end
    local counts = redis.pcall('PUBSUB', 'NUMSUB', unpack(channels))
    if type(counts) == 'table' and not counts.err then
      local total = 0
      for i = 4, #counts, 2 do total = total + counts[i] end
      if total == counts[2] then
        for i = 4, #counts, 2 do
          if counts[i] > 0 and counts[i - 1] ~= inbox then
            redis.call('PUBLISH', counts[i - 1], msg)
          end
        end
        return
      end
    end
  end
  redis.call('PUBLISH', shared, msg)
end
"""

# KEYS: registry. ARGV: listener id, keep_ms. Records a listener as alive now (server clock);
# forgets the ones not heard of for keep_ms (a process that died without leaving).
REGISTER = """
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: value, lease, pending write, then the version keys of the tags the value will carry.
# ARGV: token, lease_ms, mode ("load": return the value if there is one; "refresh": take the
# lease even though a (stale) value exists), a nonce for tag versions made here.
# With the lease, the load learns the current version of each of its tags (made now if the tag
# has none): its entry records them, and a fill whose tag versions moved meanwhile (an
# invalidation of one of those tags) is refused, as for an invalidation of the key itself.
# Returns {1, value} | {2, value or "", pending or "", versions} (lease taken; a refresh checks
# that value: another process may have refreshed between its read and this call; a write-behind
# value not yet in the store is the pending one, which the caller must use instead of loading the
# store's old value) | {3, lease_pttl} (held elsewhere).
# KEYS[first..]: tag version keys a running load depends on; each is kept alive for at least
# ``ms`` (the lease's life), so that it does not expire under the load.
_OUTLIVE_FN = """
local function outlive(first, ms)
  for i = first, #KEYS do
    if redis.call('PTTL', KEYS[i]) < tonumber(ms) then redis.call('PEXPIRE', KEYS[i], ms) end
  end
end
"""

# The current version of each tag of KEYS[first..]; a tag without one gets a new version made
# of ``nonce`` (random per call) and its position, which no earlier version of it can equal: an
# entry that recorded a version of a tag whose state was lost (evicted, deleted, flushed) stays
# a miss for ever, even after the tag gets a version again.
_VERSIONS_FN = """
local function versions(first, nonce, ms)
  local out = {}
  for i = first, #KEYS do
    local v = redis.call('GET', KEYS[i])
    if not v then
      v = nonce .. '.' .. i
      redis.call('SET', KEYS[i], v, 'PX', ms)
    elseif redis.call('PTTL', KEYS[i]) < tonumber(ms) then
      redis.call('PEXPIRE', KEYS[i], ms)
    end
    out[#out + 1] = v
  end
  return out
end
"""

ACQUIRE = (
    _VERSIONS_FN
    + """
local v = redis.call('GET', KEYS[1])
if v and ARGV[3] == 'load' then return {1, v} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local tags = versions(4, ARGV[4], ARGV[2])
  return {2, v or '', redis.call('HGET', KEYS[3], 'v') or '', tags}
end
return {3, tostring(redis.call('PTTL', KEYS[2]))}
"""
)

# KEYS: tag version keys. ARGV: nonce, ms. The current versions (made if missing), kept alive
# for at least ``ms``: what an unconditional write of a tagged entry records.
TAG_VERSIONS = _VERSIONS_FN + "return versions(1, ARGV[1], ARGV[2])"

# KEYS: lease, then the version keys of the load's tags. ARGV: token, lease_ms. Extends the
# lease only if the caller still holds it, and the tag versions to outlive it (see ACQUIRE).
RENEW = (
    _OUTLIVE_FN
    + """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  outlive(2, ARGV[2])
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
)

# KEYS: lease. ARGV: token, then optionally the sender's event channel and a message.
# Gives the lease back if the caller still holds it (a failed load), and then publishes the
# message: the processes waiting for that load's fill look again at once instead of waiting
# the lease out.
RELEASE = (
    _PUBLISH_FN
    + """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[2] then publish(ARGV[2], ARGV[3]) end
  return 1
end
return 0
"""
)

# The store of one envelope, shared by STORE and ENQUEUE: KEYS[o+1] value, KEYS[o+2] lease,
# KEYS[o+3..] tag version keys; ARGV: token ("" = unconditional write), envelope, expire_at_ms
# (server clock), the sender's event channel, message; ARGV[v+1..]: the tag versions the envelope
# records, in the order of the keys.
# A fill (token given) is stored only while the caller's lease holds: an invalidation deletes the
# lease, so a load that began before it can never write its old value back. An unconditional
# write deletes the lease for the same reason: a write wins over a load that is running.
# Either is refused when one of its tags moved to another version since the envelope's were read
# (a tag invalidation came in between): the key is dropped, since any value there is older.
_STORE_FN = (
    _PUBLISH_FN
    + """
local function store(o, v)
  if ARGV[1] ~= '' and redis.call('GET', KEYS[o + 2]) ~= ARGV[1] then return 0 end
  for i = o + 3, #KEYS do
    if redis.call('GET', KEYS[i]) ~= ARGV[v + i - o - 2] then
      redis.call('DEL', KEYS[o + 1], KEYS[o + 2])
      return 0
    end
  end
  redis.call('SET', KEYS[o + 1], ARGV[2], 'PXAT', ARGV[3])
  redis.call('DEL', KEYS[o + 2])
  local expire_at = tonumber(ARGV[3])
  for i = o + 3, #KEYS do
    if redis.call('PEXPIRETIME', KEYS[i]) < expire_at then
      redis.call('PEXPIREAT', KEYS[i], expire_at)
    end
  end
  publish(ARGV[4], ARGV[5])
  return 1
end
"""
)

STORE = _STORE_FN + "return store(0, 5)"

# -- write-behind -------------------------------------------------------------------------------
# A writer's queue lives on the queue's Redis (the cache's own, or ``write_behind_redis``); the
# cached value and its pending record on the cache's. Each script comes as its two halves, and,
# when one Redis holds both, as one script that runs both halves atomically.
# The queue's keys carry no expiry: they are data, not cache (no ``volatile-*`` eviction policy
# can pick them, and none ends them while a write waits). The stream's entries are deleted once
# settled; the pending record and the newest-write field of a key once its write lands.

# Appends a write to the writer's stream and records it as the writer's newest write to the key
# (its flusher skips older ones); the queue's epoch (made if missing: see ``writebehind.loss``).
_ENQUEUE_QUEUE_FN = """
local function enqueue(stream, newest, epochkey, key, packed, nonce)
  local epoch = redis.call('GET', epochkey)
  if not epoch then
    epoch = nonce
    redis.call('SET', epochkey, epoch)
  end
  local id = redis.call('XADD', stream, '*', 'k', key, 'a', packed)
  redis.call('HSET', newest, key, id)
  return stream .. '|' .. id, epoch
end
"""

# A write-behind call on one Redis, atomically: the queue half, then the write's pending record
# (readers use it until the store has it) and the STORE of the new value.
# KEYS: stream, pending, newest, epoch, then STORE's keys. ARGV: STORE's five, cache key, packed
# call, retention_ms (unused), a nonce for a new epoch, then STORE's tag versions.
# Returns the pending record's id and the queue's epoch.
ENQUEUE = (
    _STORE_FN
    + _ENQUEUE_QUEUE_FN
    + """
local mine, epoch = enqueue(KEYS[1], KEYS[3], KEYS[4], ARGV[6], ARGV[7], ARGV[9])
redis.call('HSET', KEYS[2], 'id', mine, 'v', ARGV[2])
store(4, 9)
return {mine, epoch}
"""
)

# The queue half alone. KEYS: stream, newest, epoch. ARGV: cache key, packed call, nonce.
ENQUEUE_QUEUE = (
    _ENQUEUE_QUEUE_FN
    + """
local mine, epoch = enqueue(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3])
return {mine, epoch}
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

# Both halves on one Redis. KEYS: stream, pending, value, lease, dead-letter stream, newest.
# ARGV: group, pending id, outcome ("ok" | "dead" | "drop"), the sender's event channel,
# message, retention_ms, cache key, packed call, error, attempts, then the stream ids.
SETTLE = (
    _SETTLE_QUEUE_FN
    + _SETTLE_CACHE_FN
    + """
local ids = {}
for i = 11, #ARGV do ids[#ids + 1] = ARGV[i] end
settle_queue(KEYS[1], KEYS[5], KEYS[6], ARGV[1], ARGV[3], ARGV[6], ARGV[7], ARGV[8], ARGV[9],
             ARGV[10], ids)
settle_cache(KEYS[2], KEYS[3], KEYS[4], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
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

# KEYS: stream. ARGV: group, retention_ms (unused). Creates the consumer group (and the stream)
# if missing; an expiry an older release set on the stream is removed (queue keys are data).
GROUP = """
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
redis.call('PERSIST', KEYS[1])
return 1
"""

# KEYS: stream, epoch. ARGV: group, nonce, "1" to declare the queue lost (its consumer group
# vanished). The queue's state for loss detection (see ``writebehind.loss``): a queue whose epoch or
# stream is gone, or declared lost, gets a new epoch (and its stream and group again), so that
# every process holding writes of the old one queues them again. Returns {epoch, the oldest
# entry's id or "", 1 if the epoch changed here}.
WB_STATE = """
local epoch = redis.call('GET', KEYS[2])
local changed = 0
if not epoch or redis.call('EXISTS', KEYS[1]) == 0 or ARGV[3] == '1' then
  epoch = ARGV[2]
  redis.call('SET', KEYS[2], epoch)
  redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
  changed = 1
end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
return {epoch, first[1] and first[1][1] or '', changed}
"""

# Queues again a write held by a process when the queue it went into was lost, unless the epoch
# moved again (-1: tried at the next check) or another write to that key is the newest (0: that
# one lands instead). Returns the new entry's id.
_REQUEUE_QUEUE_FN = """
local function requeue(stream, newest, epochkey, key, packed, epoch, old)
  if redis.call('GET', epochkey) ~= epoch then return -1 end
  local last = redis.call('HGET', newest, key)
  if last and last ~= old then return 0 end
  local id = redis.call('XADD', stream, '*', 'k', key, 'a', packed)
  redis.call('HSET', newest, key, id)
  return id
end
"""

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

# KEYS: stream, dead-letter stream. ARGV: retention_ms, dead-letter ids...
# Moves dead letters back to the writer's stream, marked as replays. Returns how many moved.
REPLAY = """
local moved = 0
for i = 2, #ARGV do
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

# KEYS: values to drop, then the version keys of tags to drop. ARGV: namespace, the sender's
# event channel, message, how many of KEYS are values.
# Drops each value and its lease, and each tag's version: every entry that recorded a version of
# that tag is a miss from now on, whatever the number of entries (versioned tags, as Symfony's
# TagAwareAdapter); the next write of a tagged entry gives the tag a new version. Then publishes
# one event.
INVALIDATE = (
    _PUBLISH_FN
    + """
local ns = ARGV[1]
local skip = #ns + 2
local values = tonumber(ARGV[4])
for i = 1, values do
  redis.call('DEL', KEYS[i], ns .. '#lease:' .. string.sub(KEYS[i], skip))
end
for i = values + 1, #KEYS do redis.call('DEL', KEYS[i]) end
publish(ARGV[2], ARGV[3])
return {}
"""
)
