"""Every script by the name the operations use (redis-py registers and caches them)."""

from __future__ import annotations

from .lua import (
    ACQUIRE,
    INCR,
    INVALIDATE,
    REGISTER,
    RELEASE,
    RENEW,
    STORE,
    TAG_VERSIONS,
    TOUCH,
)
from .lua_writebehind import (
    ENQUEUE,
    ENQUEUE_QUEUE,
    GROUP,
    PENDING_SET,
    PENDING_STORE,
    REPLAY,
    REQUEUE,
    REQUEUE_QUEUE,
    SETTLE,
    SETTLE_CACHE,
    SETTLE_QUEUE,
    WB_STATE,
)

SCRIPTS = {
    "acquire": ACQUIRE,
    "renew": RENEW,
    "release": RELEASE,
    "store": STORE,
    "invalidate": INVALIDATE,
    "enqueue": ENQUEUE,
    "tag_versions": TAG_VERSIONS,
    "wb_state": WB_STATE,
    "requeue": REQUEUE,
    "enqueue_queue": ENQUEUE_QUEUE,
    "pending_store": PENDING_STORE,
    "settle_queue": SETTLE_QUEUE,
    "settle_cache": SETTLE_CACHE,
    "requeue_queue": REQUEUE_QUEUE,
    "pending_set": PENDING_SET,
    "settle": SETTLE,
    "group": GROUP,
    "replay": REPLAY,
    "register": REGISTER,
    "incr": INCR,
    "touch": TOUCH,
}
