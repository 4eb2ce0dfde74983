"""Every Lua script cachewise runs on Redis, in one place (redis-py registers and caches them).

Key layout for namespace ``ns`` (namespaces are restricted to ``[A-Za-z0-9_.-]``, so no
namespace's keys can reach into another's): values live at ``ns:<key>``; what the library keeps
about them lives under ``ns#``: the lease of a value at ``ns#lease:<key>``, the index of a tag at
``ns#tag:<tag>``; events go to the channel ``ns#events``. Every key written has an expiry.

These scripts build lease keys from value keys, which a Redis Cluster would refuse (a script must
declare its keys); the cluster variant is not written yet.
"""

from __future__ import annotations

# KEYS: value, lease. ARGV: token, lease_ms, mode ("load": return the value if there is one;
# "refresh": take the lease even though a (stale) value exists).
# Returns {1, value} | {2, value or ""} (lease taken; a refresh checks that value: another
# process may have refreshed between its read and this call) | {3, lease_pttl} (held elsewhere).
ACQUIRE = """
local v = redis.call('GET', KEYS[1])
if v and ARGV[3] == 'load' then return {1, v} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2, v or ''} end
return {3, tostring(redis.call('PTTL', KEYS[2]))}
"""

# KEYS: lease. ARGV: token, lease_ms. Extends the lease only if the caller still holds it.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lease. ARGV: token. Gives the lease back if the caller still holds it (a failed load).
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: value, lease, tag indexes... ARGV: token ("" = unconditional write), envelope,
# expire_at_ms (server clock), channel, message.
# A fill (token given) is stored only while the caller's lease holds: an invalidation deletes the
# lease, so a load that began before it can never write its old value back. An unconditional
# write deletes the lease for the same reason: a write wins over a load that is running.
STORE = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[3])
redis.call('DEL', KEYS[2])
local expire_at = tonumber(ARGV[3])
for i = 3, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  if redis.call('PEXPIRETIME', KEYS[i]) < expire_at then
    redis.call('PEXPIREAT', KEYS[i], expire_at)
  end
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""

# KEYS: values to drop. ARGV: namespace, channel, message, tags...
# Drops each value and its lease, then every member of each tag and the tag index itself, and
# publishes one event. Returns the keys dropped through tags.
INVALIDATE = """
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
redis.call('PUBLISH', ARGV[2], ARGV[3])
return dropped
"""
