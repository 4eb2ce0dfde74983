"""Every Lua script cachewise runs on Redis, in one place (redis-py registers and caches them).

Key layout for namespace ``ns`` (namespaces are restricted to ``[A-Za-z0-9_.-]``, so no
namespace's keys can reach into another's): values live at ``ns:<key>``; what the library keeps
about them lives under ``ns#``: the lease of a value at ``ns#lease:<key>``, the index of a tag at
``ns#tag:<tag>``, a write-behind write not yet in the store at ``ns#wbpending:<key>``; a
write-behind writer's queue is the stream ``ns#wb:<writer>``, its dead letters
``ns#wbdead:<writer>``, the lease of the process that flushes it ``ns#wbflusher:<writer>``, its
newest write per key ``ns#wbnewest:<writer>``;
events go to each listening process' own channel ``ns#events:<listener id>``, or to the
channel every listener also hears, ``ns#events``, when the registry of listeners, the sorted set
``ns#events``, is not known to be complete (see ``_PUBLISH_FN``). Every key written has an expiry.

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

# KEYS: value, lease, pending write, then the indexes of the tags the value will carry.
# ARGV: token, lease_ms, mode ("load": return the value if there is one; "refresh": take the
# lease even though a (stale) value exists).
# With the lease, the value's key joins its tags' indexes (for at least the lease's life): an
# invalidation of one of those tags during the load then deletes the lease, so the load's fill
# is refused, as for an invalidation of the key itself.
# Returns {1, value} | {2, value or "", pending or ""} (lease taken; a refresh checks that value:
# another process may have refreshed between its read and this call; a write-behind value not yet
# in the store is the pending one, which the caller must use instead of loading the store's old
# value) | {3, lease_pttl} (held elsewhere).
# KEYS[first..]: tag indexes a running load's key belongs to; each is kept alive for at least
# ``ms`` (the lease's life).
_OUTLIVE_FN = """
local function outlive(first, ms)
  for i = first, #KEYS do
    if redis.call('PTTL', KEYS[i]) < tonumber(ms) then redis.call('PEXPIRE', KEYS[i], ms) end
  end
end
"""

ACQUIRE = (
    _OUTLIVE_FN
    + """
local v = redis.call('GET', KEYS[1])
if v and ARGV[3] == 'load' then return {1, v} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  for i = 4, #KEYS do redis.call('SADD', KEYS[i], KEYS[1]) end
  outlive(4, ARGV[2])
  return {2, v or '', redis.call('HGET', KEYS[3], 'v') or ''}
end
return {3, tostring(redis.call('PTTL', KEYS[2]))}
"""
)

# KEYS: lease, then the indexes of the load's tags. ARGV: token, lease_ms. Extends the lease
# only if the caller still holds it, and the tag indexes to outlive it (see ACQUIRE).
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
# KEYS[o+3..] tag indexes; ARGV: token ("" = unconditional write), envelope, expire_at_ms (server
# clock), the sender's event channel, message.
# A fill (token given) is stored only while the caller's lease holds: an invalidation deletes the
# lease, so a load that began before it can never write its old value back. An unconditional
# write deletes the lease for the same reason: a write wins over a load that is running.
_STORE_FN = (
    _PUBLISH_FN
    + """
local function store(o)
  if ARGV[1] ~= '' and redis.call('GET', KEYS[o + 2]) ~= ARGV[1] then return 0 end
  redis.call('SET', KEYS[o + 1], ARGV[2], 'PXAT', ARGV[3])
  redis.call('DEL', KEYS[o + 2])
  local expire_at = tonumber(ARGV[3])
  for i = o + 3, #KEYS do
    redis.call('SADD', KEYS[i], KEYS[o + 1])
    if redis.call('PEXPIRETIME', KEYS[i]) < expire_at then
      redis.call('PEXPIREAT', KEYS[i], expire_at)
    end
  end
  publish(ARGV[4], ARGV[5])
  return 1
end
"""
)

STORE = _STORE_FN + "return store(0)"

# A write-behind call, atomically: append the write to the writer's stream, record it as the
# key's pending write (readers use it until the store has it) and as this writer's newest write
# to the key (its flusher skips older ones), then STORE the new value.
# KEYS: stream, pending, newest (the writer's hash of key -> entry id), then STORE's keys.
# ARGV: STORE's five, cache key, packed call, retention_ms (the stream, the pending record and
# the hash expire after it; each write renews it). Returns the pending record's id.
_ENQUEUE_BODY = """
local id = redis.call('XADD', KEYS[1], '*', 'k', ARGV[6], 'a', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[8])
local mine = KEYS[1] .. '|' .. id
redis.call('HSET', KEYS[2], 'id', mine, 'v', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[8])
redis.call('HSET', KEYS[3], ARGV[6], id)
redis.call('PEXPIRE', KEYS[3], ARGV[8])
store(3)
return mine
"""
ENQUEUE = _STORE_FN + _ENQUEUE_BODY

# After a flush of one coalesced write. KEYS: stream, pending, value, lease, dead-letter stream,
# the writer's newest-write hash.
# ARGV: group, pending id, outcome ("ok" | "dead" | "drop"), the sender's event channel,
# message, retention_ms, cache key, packed call, error, attempts, then the stream ids the write
# stands for.
# Acks and deletes those ids; a dead write goes to the dead-letter stream. The pending record is
# removed if it is still this write's. The cached value is dropped everywhere when the store
# does not hold it ("dead", unless a newer write is pending) or may hold something newer than
# the cache ("drop": a replayed write landed).
SETTLE = (
    _PUBLISH_FN
    + """
local ids = {}
for i = 11, #ARGV do ids[#ids + 1] = ARGV[i] end
if #ids > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
  redis.call('XDEL', KEYS[1], unpack(ids))
  if redis.call('HGET', KEYS[6], ARGV[7]) == ids[#ids] then redis.call('HDEL', KEYS[6], ARGV[7]) end
end
if ARGV[3] == 'dead' then
  redis.call('XADD', KEYS[5], '*', 'k', ARGV[7], 'a', ARGV[8], 'e', ARGV[9], 'n', ARGV[10])
  redis.call('PEXPIRE', KEYS[5], ARGV[6])
end
local mine = redis.call('HGET', KEYS[2], 'id') == ARGV[2]
if mine then redis.call('DEL', KEYS[2]) end
if ARGV[3] == 'drop' or (ARGV[3] == 'dead' and mine) then
  redis.call('DEL', KEYS[3], KEYS[4])
  publish(ARGV[4], ARGV[5])
end
return 1
"""
)

# KEYS: stream. ARGV: group, retention_ms. Creates the consumer group (and the stream) if
# missing; a stream made here gets the retention expiry like every other key.
GROUP = """
local made = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if redis.call('PTTL', KEYS[1]) == -1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
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
if moved > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return moved
"""

# KEYS: values to drop. ARGV: namespace, the sender's event channel, message, tags...
# Drops each value and its lease, then every member of each tag and the tag index itself, and
# publishes one event. Returns the keys dropped through tags.
INVALIDATE = (
    _PUBLISH_FN
    + """
local ns = ARGV[1]
local skip = #ns + 2
local function drop(key)
  redis.call('DEL', key, ns .. '#lease:' .. string.sub(key, skip))
end
for i = 1, #KEYS do drop(KEYS[i]) end
local dropped = {}
for i = 4, #ARGV do
  local index = ns .. '#tag:' .. ARGV[i]
  for _, key in ipairs(redis.call('SMEMBERS', index)) do
    drop(key)
    table.insert(dropped, key)
  end
  redis.call('DEL', index)
end
publish(ARGV[2], ARGV[3])
return dropped
"""
)
