/* What the two halves of the compiled shared-tier read share: _speedups_lone.c (what
 * ``bind_lone`` binds, the field helpers, the L1 hit and the methods) and _speedups_probe.c
 * (the checks before the GET, the reply, the hand-over to Python). */
#ifndef CACHEWISE_SPEEDUPS_LONE_H
#define CACHEWISE_SPEEDUPS_LONE_H

#include "_speedups.h"

/* What bind_lone was given (engine/lone.py, once at import), by the names it gives them. */
#define PARTS(DO)                                                                            \
    DO(backend_type) DO(flight_type) DO(fetch_type) DO(closed) DO(disabled) DO(bypassing)   \
    DO(running_loop) DO(monotonic) DO(redis_errors) DO(finish) DO(full) DO(unhandled)      \
    DO(unpackb) DO(kwnames) DO(kwvalues) DO(format) DO(reads_type) DO(fallback)            \
    DO(python_probe) DO(python_probed) DO(unread)
#define PART_FIELD(name) PyObject *name;
typedef struct {
    PARTS(PART_FIELD)
    unsigned long long format_u;
} LoneParts;
extern CW_INTERNAL LoneParts lone;

/* The fields read (of the engine, its backend, breaker, listener, L1, latency and target) and
 * the methods called, interned once. */
#define NAMES(DO)                                                                            \
    DO(backend) DO(flights) DO(probing) DO(pinned) DO(backlog_keys) DO(backlog_tags)        \
    DO(backlog_overflow) DO(backlog_clear) DO(epoch) DO(clock) DO(l1) DO(maxsize)            \
    DO(observers) DO(lock) DO(lone_hits) DO(miss_latency) DO(_samples) DO(_sync)            \
    DO(_topology) DO(breaker) DO(listener) DO(heard) DO(offset_ms) DO(clock_checked)        \
    DO(state) DO(failures) DO(table) DO(l1_key) DO(full_key) DO(through) DO(get)            \
    DO(append) DO(acquire) DO(release) DO(passed) DO(_failed) DO(_unprobe) DO(counted)      \
    DO(load_alone) DO(breaker_for)
#define NAME_DECLARED(name) extern CW_INTERNAL PyObject *s_##name;
NAMES(NAME_DECLARED)

/* The server clock's offset is measured again after this long (RedisBackend.clock_due). */
#define CLOCK_CHECK_EVERY 60.0

/* What a probe holds from its checks to its end. */
typedef struct {
    PyObject *backend, *client, *breaker, *key, *ticket;
    double started;
    double checked; /* the monotonic clock when the checks ran */
    int unprobed; /* the key's mark was taken off */
} Probe;

CW_INTERNAL PyObject *field(PyObject *obj, PyObject *name);
CW_INTERNAL int attr_true(PyObject *obj, PyObject *name);
CW_INTERNAL int attr_holds(PyObject *obj, PyObject *name, PyObject *key);
CW_INTERNAL int engine_clock(PyObject *engine, double *now, double mono);
CW_INTERNAL int passing(PyObject *engine);
CW_INTERNAL void probe_clear(Probe *p);
CW_INTERNAL int probe(PyObject *engine, PyObject *target, Probe *p, PyObject **answer);
CW_INTERNAL PyObject *served(PyObject *engine, Probe *p, PyObject *raw);
CW_INTERNAL PyObject *probe_tuple(Probe *p, PyObject *fetch);
CW_INTERNAL void abandon(PyObject *engine, PyObject *key);
CW_INTERNAL PyObject *lone_read(PyObject *const *args);

#endif
