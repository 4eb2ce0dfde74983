"""Every Lua script cachewise runs on Redis, in one place (redis-py registers and caches them).

Scripts touch only the keys they are given (the key layout is ``keyspace``'s), except the
registry of listeners that ``_PUBLISH_FN`` reads. Every key written has an expiry but the
write-behind queue's (stream, pending records, newest writes, dead letters): those are data, not
cache.
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
# A background refresh's store is given ``!`` and the shared channel (``Backend.everyone``): one
# PUBLISH whatever the fleet's size, for the most frequent event of a fleet.
# Also past 8 listeners: a PUBLISH per listener costs Redis about 3 us each, against well under
# 1 us per subscriber of one shared PUBLISH, and in a large fleet one echo is a small share of
# the events every listener handles anyway.
_PUBLISH_FN = """
local function publish(inbox, msg)
  if string.sub(inbox, 1, 1) == '!' then  -- a cluster: the registry is in another slot
    redis.call('PUBLISH', string.sub(inbox, 2), msg)
    return
  end
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

# The envelope (``codec``: an array of seven, the value last) of format ``format`` held at
# ``key``: its bytes, the offset where its value starts (counted from 0, as
# ``cmsgpack.unpack_one`` counts) and its six header fields read one by one. Else nil and what
# the script answers: nil when nothing is held, 'n' when what is held is not such an envelope.
_ENVELOPE_FN = """
local function envelope_at(key, format)
  local raw = redis.call('GET', key)
  if not raw then return nil, false end
  if string.byte(raw, 1) ~= 0x97 then return nil, 'n' end
  local ok, off, head = pcall(function()
    local at, head = 1, {}
    for i = 1, 6 do
      local field
      at, field = cmsgpack.unpack_one(raw, at)
      if at < 0 then error('short') end
      head[i] = field
    end
    return at, head
  end)
  if not ok or head[1] ~= tonumber(format) then return nil, 'n' end
  return raw, off, head
end
"""

# KEYS: the value. ARGV: the integer to add, the sender's event channel, the event (an
# invalidation of the key), the envelope format the value must be in.
# Adds to an integer held in an envelope, in place: its header bytes (deadlines) and its expiry
# stay. Returns the new integer; nil when there is no value; 'n' when the value is not a plain
# integer of the current format or the sum would leave the integers a Lua number holds exactly
# (within 2^53): the caller then reads and writes it instead. Lua's msgpack packs the integer
# in the fewest bytes, as the packers of every reader's decoder may (the decoders take every
# width).
INCR = (
    _PUBLISH_FN
    + _ENVELOPE_FN
    + """
local raw, off = envelope_at(KEYS[1], ARGV[4])
if not raw then return off end
local ok, after, value = pcall(cmsgpack.unpack_one, raw, off)
if not ok or after ~= -1 or type(value) ~= 'number' or value ~= math.floor(value) then
  return 'n'
end
local new = value + tonumber(ARGV[1])
if new >= 2^53 or new <= -2^53 then return 'n' end
redis.call('SET', KEYS[1], string.sub(raw, 1, off) .. cmsgpack.pack(new), 'KEEPTTL')
publish(ARGV[2], ARGV[3])
return new
"""
)

# KEYS: the value. ARGV: its new lifetime in ms, the sender's event channel, the event (an
# invalidation of the key), the envelope format the value must be in.
# Gives a value a new lifetime from now, in place: both deadlines of its envelope and its
# expiry. The header is written again; the value's own bytes, which follow it, are kept as
# they are (Lua's msgpack would write bytes back as text).
# Returns 1; nil when there is no value; 'n' when it is not an envelope of the current format.
TOUCH = (
    _PUBLISH_FN
    + _ENVELOPE_FN
    + """
local raw, off, head = envelope_at(KEYS[1], ARGV[4])
if not raw then return off end
local now = redis.call('TIME')
local ends = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[1])
local header = string.char(0x97) .. cmsgpack.pack(head[1], ends, ends, head[4], head[5], head[6])
redis.call('SET', KEYS[1], header .. string.sub(raw, off + 1), 'PXAT', ends)
publish(ARGV[2], ARGV[3])
return 1
"""
)

# KEYS: values to drop, their leases, then the version keys of tags to drop. ARGV: the sender's
# event channel, message.
# Drops each value and its lease, and each tag's version: every entry that recorded a version of
# that tag is a miss from now on, whatever the number of entries (versioned tags, as Symfony's
# TagAwareAdapter); the next write of a tagged entry gives the tag a new version. Then publishes
# one event.
INVALIDATE = (
    _PUBLISH_FN
    + """
for i = 1, #KEYS do redis.call('DEL', KEYS[i]) end
if ARGV[1] ~= '' then publish(ARGV[1], ARGV[2]) end
return {}
"""
)
