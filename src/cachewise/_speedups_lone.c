/* ``read_sync``: the lone-caller fast path of a sync shared-tier read, compiled. See
 * _speedups.c for why C at all.
 *
 * In Python that path is three steps of engine/read.py: ``probe`` (may this read skip the
 * plan: nothing in L1, no flight, Redis set up and its breaker closed), ``Fetch.run_sync``
 * (the GET) and ``probed`` (what the reply is: a fresh entry serves). Between two socket
 * waits, their Python costs about three times what it costs in a loop (the code and data it
 * touches are cold after the process slept), which put the shared-tier hit at 1.10x a raw GET
 * and unpack. Here the common case is one call: a plain client (not a cluster's), L1 off,
 * no observers, an untagged envelope decoded by its header. It reads the same fields the
 * Python reads and takes the same lock. Every other case is Python's: before the GET it
 * hands Python's ``read_sync`` the answer ``full`` (the plan serves it) or ``unhandled``
 * (Python's ``probe`` decides); after the GET it hands the reply to ``finish``
 * (``Reads._finish_sync``: ``probed``, then the plan if that did not serve), exactly as
 * Python's GET would have. It is the engine's ``read_sync`` itself (a method descriptor),
 * so that a shared-tier hit runs no Python frame of the engine at all.
 *
 * The async driver awaits its GET itself; the two halves around it, ``probe`` and
 * ``probed``, are compiled the same way (the same code as the sync read's), each handing to
 * its Python twin what it does not serve. */
#include "_speedups.h"

/* What bind_lone was given (engine/read.py, once at import), by the names it gives them. */
#define PARTS(DO)                                                                            \
    DO(backend_type) DO(flight_type) DO(fetch_type) DO(closed) DO(disabled) DO(bypassing)   \
    DO(running_loop) DO(monotonic) DO(redis_errors) DO(finish) DO(full) DO(unhandled)      \
    DO(unpackb) DO(kwnames) DO(kwvalues) DO(format) DO(reads_type) DO(fallback)            \
    DO(python_probe) DO(python_probed) DO(unread)
#define PART_FIELD(name) PyObject *name;
static struct {
    PARTS(PART_FIELD)
    unsigned long long format_u;
} lone;

/* The fields read (of the engine, its backend, breaker, listener, L1, latency and target) and
 * the methods called, interned once. */
#define NAMES(DO)                                                                            \
    DO(backend) DO(flights) DO(probing) DO(pinned) DO(backlog_keys) DO(backlog_tags)        \
    DO(backlog_overflow) DO(backlog_clear) DO(epoch) DO(clock) DO(l1) DO(maxsize)            \
    DO(observers) DO(lock) DO(lone_hits) DO(miss_latency) DO(_samples) DO(_sync)            \
    DO(_topology) DO(breaker) DO(listener) DO(heard) DO(offset_ms) DO(clock_checked)        \
    DO(state) DO(failures) DO(table) DO(l1_key) DO(full_key) DO(through) DO(get)            \
    DO(append) DO(acquire) DO(release) DO(passed) DO(_failed) DO(_unprobe) DO(counted)
#define NAME_FIELD(name) static PyObject *s_##name = NULL;
NAMES(NAME_FIELD)

/* The server clock's offset is measured again after this long (RedisBackend.clock_due). */
#define CLOCK_CHECK_EVERY 60.0

static PyMethodDef read_sync_def, probe_def, probed_def, served_now_def;

/* bind_lone(parts): ``parts`` a dict of every name in PARTS; returns the compiled
 * ``read_sync``, ``probe``, ``probed`` and ``served_now``, methods of ``reads_type``. */
PyObject *
cw_bind_lone(PyObject *module, PyObject *parts)
{
    if (!PyDict_Check(parts)) {
        PyErr_SetString(PyExc_TypeError, "bind_lone takes a dict");
        return NULL;
    }
#define INTERN(name)                                                                         \
    if (s_##name == NULL && (s_##name = PyUnicode_InternFromString(#name)) == NULL) {       \
        return NULL;                                                                         \
    }
    NAMES(INTERN)
#define TAKE(name)                                                                           \
    {                                                                                        \
        PyObject *got = PyDict_GetItemString(parts, #name);                                  \
        if (got == NULL) {                                                                   \
            PyErr_SetString(PyExc_KeyError, "bind_lone: " #name " is missing");              \
            return NULL;                                                                     \
        }                                                                                    \
        Py_XSETREF(lone.name, Py_NewRef(got));                                               \
    }
    PARTS(TAKE)
    if (!PyType_Check(lone.backend_type) || !PyType_Check(lone.flight_type) ||
        !PyType_Check(lone.reads_type) ||
        !PyList_CheckExact(lone.disabled) || PyList_GET_SIZE(lone.disabled) != 1 ||
        !PyContextVar_CheckExact(lone.bypassing) || !PyTuple_CheckExact(lone.kwnames) ||
        !PyTuple_CheckExact(lone.kwvalues) || PyTuple_GET_SIZE(lone.kwnames) > 4 ||
        PyTuple_GET_SIZE(lone.kwnames) != PyTuple_GET_SIZE(lone.kwvalues)) {
        PyErr_SetString(PyExc_TypeError, "bind_lone: a part of the wrong type");
        return NULL;
    }
    lone.format_u = PyLong_AsUnsignedLongLong(lone.format);
    if (PyErr_Occurred()) {
        return NULL;
    }
    PyTypeObject *reads = (PyTypeObject *)lone.reads_type;
    PyObject *methods[] = {
        PyDescr_NewMethod(reads, &read_sync_def), PyDescr_NewMethod(reads, &probe_def),
        PyDescr_NewMethod(reads, &probed_def), PyDescr_NewMethod(reads, &served_now_def)};
    PyObject *all = methods[0] && methods[1] && methods[2] && methods[3]
                        ? PyTuple_Pack(4, methods[0], methods[1], methods[2], methods[3])
                        : NULL;
    for (int i = 0; i < 4; i++) {
        Py_XDECREF(methods[i]);
    }
    return all;
}

/* ``getattr(obj, name)`` for a field the object keeps in its ``__dict__`` (every field read
 * here but the target's slots): looked up there at once. PyObject_GetAttr looks in the type's
 * MRO first (eleven classes for the engine), which cost more than the rest of this path. A
 * name not in the dict is looked up as Python would. A new reference. */
static PyObject *
field(PyObject *obj, PyObject *name)
{
    PyObject *dict = PyObject_GenericGetDict(obj, NULL);
    if (dict == NULL) {
        PyErr_Clear();
        return PyObject_GetAttr(obj, name);
    }
    PyObject *value = PyDict_GetItemWithError(dict, name);
    Py_XINCREF(value);
    Py_DECREF(dict);
    if (value == NULL && !PyErr_Occurred()) {
        return PyObject_GetAttr(obj, name);
    }
    return value;
}

/* ``getattr(obj, name)``'s truth: 1, 0, or -1 with an exception set. */
static int
attr_true(PyObject *obj, PyObject *name)
{
    PyObject *value = field(obj, name);
    if (value == NULL) {
        return -1;
    }
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

/* Whether ``key`` is in the dict ``getattr(obj, name)``: 1, 0, or -1 with an exception set. */
static int
attr_holds(PyObject *obj, PyObject *name, PyObject *key)
{
    PyObject *dict = field(obj, name);
    if (dict == NULL) {
        return -1;
    }
    int held = PyDict_Check(dict) ? PyDict_Contains(dict, key) : PySequence_Contains(dict, key);
    Py_DECREF(dict);
    return held;
}

/* The engine's clock (``engine.clock``), read as Python would: -1 with an exception set.
 * ``mono``: the monotonic clock, read just now (a clock read costs a tenth of a microsecond
 * here), which is the engine's time when its clock is the default one. */
static int
engine_clock(PyObject *engine, double *now, double mono)
{
    PyObject *clock = field(engine, s_clock);
    if (clock == NULL) {
        return -1;
    }
    if (clock == lone.monotonic) {
        Py_DECREF(clock);
        *now = mono;
        return 0;
    }
    PyObject *value = PyObject_CallNoArgs(clock);
    Py_DECREF(clock);
    if (value == NULL) {
        return -1;
    }
    *now = PyFloat_AsDouble(value);
    Py_DECREF(value);
    return (*now == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

/* What a probe holds from its checks to its end. */
typedef struct {
    PyObject *backend, *client, *breaker, *key, *ticket;
    double started;
    double checked; /* the monotonic clock when the checks ran */
    int unprobed; /* the key's mark was taken off */
} Probe;

static void
probe_clear(Probe *p)
{
    Py_CLEAR(p->backend);
    Py_CLEAR(p->client);
    Py_CLEAR(p->breaker);
    Py_CLEAR(p->key);
    Py_CLEAR(p->ticket);
}

/* Breaker.CLOSED is its state; ``Backend.clock_due`` and ``Coherence.backlog_due`` are not;
 * the caching switches are off for this engine: 1 (the GET may go alone), 0, or -1. */
static int
redis_ready(PyObject *engine, Probe *p)
{
    PyObject *state = field(p->breaker, s_state);
    if (state == NULL) {
        return -1;
    }
    int closed = state == lone.closed;
    Py_DECREF(state);
    if (!closed) {
        return 0;
    }
    PyObject *listener = field(p->backend, s_listener);
    if (listener == NULL) {
        return -1;
    }
    int heard = listener == Py_None ? 0 : attr_true(listener, s_heard);
    Py_DECREF(listener);
    if (heard <= 0) {
        return heard;
    }
    PyObject *offset = field(p->backend, s_offset_ms);
    if (offset == NULL) {
        return -1;
    }
    int measured = offset != Py_None;
    Py_DECREF(offset);
    if (!measured) {
        return 0;
    }
    PyObject *checked = field(p->backend, s_clock_checked);
    double checked_at = checked == NULL ? -1.0 : PyFloat_AsDouble(checked);
    Py_XDECREF(checked);
    if ((checked_at == -1.0 && PyErr_Occurred()) || cw_monotonic(&p->checked) < 0) {
        return -1;
    }
    if (p->checked - checked_at > CLOCK_CHECK_EVERY) {
        return 0;
    }
    static PyObject **backlog[] = {&s_backlog_keys, &s_backlog_tags, &s_backlog_overflow,
                                   &s_backlog_clear};
    for (size_t i = 0; i < sizeof backlog / sizeof *backlog; i++) {
        int due = attr_true(engine, *backlog[i]);
        if (due != 0) {
            return due < 0 ? -1 : 0;
        }
    }
    return 1;
}

/* ``_switch.passing(engine)``: 1, 0, or -1. */
static int
passing(PyObject *engine)
{
    Py_ssize_t disabled = PyLong_AsSsize_t(PyList_GET_ITEM(lone.disabled, 0));
    if (disabled == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (disabled > 0) {
        return 1;
    }
    PyObject *ids;
    if (PyContextVar_Get(lone.bypassing, NULL, &ids) < 0) {
        return -1;
    }
    if (ids == NULL) {
        return 0;
    }
    int held = 0;
    if (PyAnySet_Check(ids) && PySet_GET_SIZE(ids) > 0) {
        PyObject *id = PyLong_FromVoidPtr(engine);
        held = id == NULL ? -1 : PySet_Contains(ids, id);
        Py_XDECREF(id);
    }
    Py_DECREF(ids);
    return held;
}

/* ``Reads.probe`` and ``Reads._lone``: 1 (``*p`` filled, the key marked as probed), or
 * ``lone.full`` / ``lone.unhandled`` in ``*answer`` (0), or -1 with an exception set. */
static int
probe(PyObject *engine, PyObject *target, Probe *p, PyObject **answer)
{
    *answer = lone.unhandled;
    p->backend = field(engine, s_backend);
    if (p->backend == NULL) {
        return -1;
    }
    if (Py_TYPE(p->backend) != (PyTypeObject *)lone.backend_type) {
        return 0;
    }
    /* A plain client set up (a cluster's breakers are per master: Python's). */
    p->client = field(p->backend, s__sync);
    PyObject *topology = p->client == NULL ? NULL : field(p->backend, s__topology);
    if (topology == NULL) {
        return -1;
    }
    int plain = p->client != Py_None && topology == Py_None;
    Py_DECREF(topology);
    if (!plain) {
        return 0;
    }
    PyObject *table = PyObject_GetAttr(target, s_table);
    PyObject *l1_key = table == NULL ? NULL : PyObject_GetAttr(target, s_l1_key);
    p->key = l1_key == NULL ? NULL : PyObject_GetAttr(target, s_full_key);
    int held = -1;
    if (p->key != NULL) {
        held = PyDict_Check(table) && PyUnicode_CheckExact(p->key)
                   ? PyDict_Contains(table, l1_key)
                   : -2;
    }
    Py_XDECREF(table);
    Py_XDECREF(l1_key);
    if (held == -2) {
        return 0;
    }
    *answer = lone.full;
    if (held != 0) {
        return held < 0 ? -1 : 0;
    }
    static PyObject **busy[] = {&s_flights, &s_probing, &s_pinned};
    for (size_t i = 0; i < sizeof busy / sizeof *busy; i++) {
        held = attr_holds(engine, *busy[i], p->key);
        if (held != 0) {
            return held < 0 ? -1 : 0;
        }
    }
    if ((held = attr_true(target, s_through)) != 0 || (held = passing(engine)) != 0) {
        return held < 0 ? -1 : 0;
    }
    p->breaker = field(p->backend, s_breaker);
    if (p->breaker == NULL || (held = redis_ready(engine, p)) <= 0) {
        return p->breaker == NULL ? -1 : held;
    }
    p->ticket = field(engine, s_epoch);
    if (p->ticket == NULL || engine_clock(engine, &p->started, p->checked) < 0) {
        return -1;
    }
    /* Probed until the end: the loop of the GET's caller (None: a thread), as ``probe``. */
    PyObject *loop = PyObject_CallNoArgs(lone.running_loop);
    PyObject *probing = loop == NULL ? NULL : field(engine, s_probing);
    PyObject *marked = probing == NULL ? NULL : PyDict_SetDefault(probing, p->key, loop);
    Py_XDECREF(loop);
    Py_XDECREF(probing);
    return marked == NULL ? -1 : 1;
}

/* ``_unprobe(key)`` for a GET that served (1), unless callers joined it meanwhile (0: the
 * flight is left for ``probed``, which settles it). -1 with an exception set. */
static int
unprobe(PyObject *engine, PyObject *key)
{
    PyObject *lock = field(engine, s_lock);
    PyObject *probing = lock == NULL ? NULL : field(engine, s_probing);
    PyObject *taken = probing == NULL ? NULL : PyObject_CallMethodNoArgs(lock, s_acquire);
    int result = -1;
    if (taken != NULL) {
        Py_DECREF(taken);
        /* Under the lock nothing here runs Python code: the key is an exact str. */
        PyObject *mark = PyDict_Check(probing) ? PyDict_GetItemWithError(probing, key) : NULL;
        if (mark != NULL && PyObject_TypeCheck(mark, (PyTypeObject *)lone.flight_type)) {
            result = 0;
        }
        else if (!PyErr_Occurred()) {
            result = mark == NULL || PyDict_DelItem(probing, key) == 0 ? 1 : -1;
        }
        PyObject *released = PyObject_CallMethodNoArgs(lock, s_release);
        if (released == NULL) {
            result = -1;
        }
        Py_XDECREF(released);
    }
    Py_XDECREF(lock);
    Py_XDECREF(probing);
    return result;
}

/* The value of a fresh untagged entry in ``raw``, as ``probed`` serves it (counted, timed,
 * the key unprobed): a new reference; NULL without an error when ``probed`` must decide. */
static PyObject *
served(PyObject *engine, Probe *p, PyObject *raw)
{
    PyObject *l1 = field(engine, s_l1);
    PyObject *maxsize = l1 == NULL ? NULL : field(l1, s_maxsize);
    PyObject *observers = maxsize == NULL ? NULL : field(engine, s_observers);
    PyObject *offset = observers == NULL ? NULL : field(p->backend, s_offset_ms);
    int alone = offset != NULL && PyLong_CheckExact(maxsize) && PyLong_AsLong(maxsize) == 0 &&
                PyTuple_CheckExact(observers) && PyTuple_GET_SIZE(observers) == 0 &&
                PyFloat_CheckExact(offset);
    double offset_ms = alone ? PyFloat_AS_DOUBLE(offset) : 0.0;
    Py_XDECREF(l1);
    Py_XDECREF(maxsize);
    Py_XDECREF(observers);
    Py_XDECREF(offset);
    double now;
    if (!alone || PyErr_Occurred() || cw_monotonic(&now) < 0) {
        return NULL; /* L1 on (the entry is adopted there), observers told: Python's */
    }
    PyObject *argv[5];
    Py_ssize_t nkw = PyTuple_GET_SIZE(lone.kwnames);
    for (Py_ssize_t i = 0; i < nkw; i++) {
        argv[1 + i] = PyTuple_GET_ITEM(lone.kwvalues, i);
    }
    PyObject *value = cw_fresh_value(raw, now * 1000 + offset_ms, lone.format_u, lone.unpackb,
                                     argv, nkw ? lone.kwnames : NULL);
    if (value == NULL) {
        return NULL;
    }
    int alone_still = unprobe(engine, p->key);
    if (alone_still <= 0) {
        Py_DECREF(value); /* callers joined: ``probed`` settles their flight with it */
        return NULL;
    }
    p->unprobed = 1;
    /* self.lone_hits += 1; self.miss_latency.add(self.clock() - started) */
    PyObject *hits = field(engine, s_lone_hits);
    long long count = hits == NULL ? -1 : PyLong_AsLongLong(hits);
    PyObject *more = count == -1 && PyErr_Occurred() ? NULL : PyLong_FromLongLong(count + 1);
    int counted = more != NULL && PyObject_SetAttr(engine, s_lone_hits, more) == 0;
    Py_XDECREF(hits);
    Py_XDECREF(more);
    double ended;
    PyObject *latency = counted ? field(engine, s_miss_latency) : NULL;
    PyObject *samples = latency == NULL ? NULL : field(latency, s__samples);
    PyObject *seconds = samples == NULL || engine_clock(engine, &ended, now) < 0
                            ? NULL
                            : PyFloat_FromDouble(ended - p->started);
    PyObject *added = seconds == NULL ? NULL
                                      : PyObject_CallMethodOneArg(samples, s_append, seconds);
    Py_XDECREF(latency);
    Py_XDECREF(samples);
    Py_XDECREF(seconds);
    if (added == NULL) {
        Py_DECREF(value);
        return NULL; /* with the error: the key is unprobed, nothing else changed */
    }
    Py_DECREF(added);
    return value;
}

/* What Python's ``probe`` returns: ``(Fetch(backend, key), ticket, started)``, or NULL. */
static PyObject *
probe_tuple(Probe *p, PyObject *fetch)
{
    PyObject *made = fetch == NULL
                         ? PyObject_CallFunctionObjArgs(lone.fetch_type, p->backend, p->key, NULL)
                         : Py_NewRef(fetch);
    PyObject *started = made == NULL ? NULL : PyFloat_FromDouble(p->started);
    PyObject *probe = started == NULL ? NULL : PyTuple_Pack(3, made, p->ticket, started);
    Py_XDECREF(made);
    Py_XDECREF(started);
    return probe;
}

/* The key's mark taken off after an error of our own (which stays set): ``_unprobe(key,
 * abandoned=True)``, as when Python's GET is interrupted. */
static void
abandon(PyObject *engine, PyObject *key)
{
    PyObject *type, *error, *trace;
    PyErr_Fetch(&type, &error, &trace);
    PyObject *done = PyObject_CallMethodObjArgs(engine, s__unprobe, key, Py_True, NULL);
    Py_XDECREF(done);
    PyErr_Restore(type, error, trace);
}

/* ``finish(engine, target, loader, policy, (Fetch(backend, key), ticket, started), outcome)``:
 * what Python does after its own GET. Steals nothing. */
static PyObject *
hand_over(PyObject *const *args, Probe *p, PyObject *fetch, PyObject *outcome)
{
    PyObject *probe = probe_tuple(p, fetch);
    if (probe == NULL) {
        return NULL;
    }
    PyObject *argv[] = {args[0], args[1], args[2], args[3], probe, outcome};
    PyObject *result = PyObject_Vectorcall(lone.finish, argv, 6, NULL);
    Py_DECREF(probe);
    return result;
}

/* The read of ``args`` (engine, target, loader, policy): the value, ``full`` or
 * ``unhandled``. */
static PyObject *
lone_read(PyObject *const *args)
{
    Probe p = {NULL, NULL, NULL, NULL, NULL, 0.0, 0.0, 0};
    PyObject *answer;
    int go = probe(args[0], args[1], &p, &answer);
    if (go <= 0) {
        probe_clear(&p);
        return go < 0 ? NULL : Py_NewRef(answer);
    }
    PyObject *callargs[] = {p.client, p.key};
    PyObject *raw = PyObject_VectorcallMethod(
        s_get, callargs, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    PyObject *result = NULL, *outcome = NULL, *fetch = NULL;
    if (raw != NULL) {
        /* Fetch._read: a breaker that counted failures hears that Redis answered. */
        PyObject *failures = field(p.breaker, s_failures);
        PyObject *state = failures == NULL ? NULL : field(p.breaker, s_state);
        int told = state != NULL, failing = told ? PyObject_IsTrue(failures) : -1;
        told = failing >= 0;
        if (told && (failing || state != lone.closed)) {
            PyObject *passed = PyObject_CallMethodOneArg(p.breaker, s_passed, Py_None);
            told = passed != NULL;
            Py_XDECREF(passed);
        }
        Py_XDECREF(failures);
        Py_XDECREF(state);
        if (told && (result = served(args[0], &p, raw)) == NULL && !PyErr_Occurred()) {
            fetch = PyObject_CallFunctionObjArgs(lone.fetch_type, p.backend, p.key, NULL);
            outcome = fetch == NULL ? NULL : Py_BuildValue("((OO)O)", raw, Py_None, Py_None);
        }
        Py_DECREF(raw);
    }
    else { /* Fetch.run_sync's answer: a Redis error is an outcome; anything else too, raised
            * by ``probed`` after it unprobed the key (a KeyboardInterrupt, a cancellation) */
        PyObject *type, *error, *trace;
        PyErr_Fetch(&type, &error, &trace);
        PyErr_NormalizeException(&type, &error, &trace);
        if (trace != NULL) {
            PyException_SetTraceback(error, trace);
        }
        int redis = PyErr_GivenExceptionMatches(type, lone.redis_errors);
        fetch = PyObject_CallFunctionObjArgs(lone.fetch_type, p.backend, p.key, NULL);
        if (fetch != NULL && redis) {
            PyObject *failed = PyObject_CallMethodObjArgs(fetch, s__failed, error, p.breaker,
                                                          NULL);
            outcome = failed == NULL ? NULL : PyTuple_Pack(2, failed, Py_None);
            Py_XDECREF(failed);
        }
        else if (fetch != NULL) {
            outcome = PyTuple_Pack(2, Py_None, error);
        }
        Py_XDECREF(type);
        Py_XDECREF(error);
        Py_XDECREF(trace);
    }
    if (outcome != NULL) {
        result = hand_over(args, &p, fetch, outcome);
    }
    else if (result == NULL && !p.unprobed) {
        abandon(args[0], p.key); /* an error of our own after the GET */
    }
    Py_XDECREF(fetch);
    Py_XDECREF(outcome);
    probe_clear(&p);
    return result;
}

/* ``L1.hit``: the entry's hit counted, and its table's while hits are counted per table
 * (``L1.counted``, where the extension is built). 0, or -1 with an exception set. */
static int
count_hit(PyObject *engine, PyObject *table, EntryFields *fields)
{
    PyObject *l1 = field(engine, s_l1);
    PyObject *counted = l1 == NULL ? NULL : field(l1, s_counted);
    Py_XDECREF(l1);
    if (counted == NULL) {
        return -1;
    }
    int failed = 0;
    if (PyDict_CheckExact(counted)) {
        PyObject *id = PyLong_FromVoidPtr(table);
        PyObject *before = id == NULL ? NULL : PyDict_GetItemWithError(counted, id);
        Py_ssize_t hits = before == NULL ? 0 : PyLong_AsSsize_t(before);
        PyObject *after = id == NULL || PyErr_Occurred() ? NULL : PyLong_FromSsize_t(hits + 1);
        failed = after == NULL || PyDict_SetItem(counted, id, after) < 0;
        Py_XDECREF(id);
        Py_XDECREF(after);
    }
    Py_DECREF(counted);
    if (!failed) {
        fields->hits++;
    }
    return failed ? -1 : 0;
}

/* The value of an L1 entry that ``read`` serves at once (``core.serves_at_once``: before its
 * ``early_at``), counted as ``L1.hit`` counts it; NULL when ``read`` must decide (with an
 * exception set on an error). Not for a call that goes straight through (``uncached``). An
 * explicit key's L1 hit through ``get_or_load`` cost 2.3 us in Python's plan, measured. */
static PyObject *
l1_served(PyObject *engine, PyObject *target)
{
    PyObject *table = PyObject_GetAttr(target, s_table);
    PyObject *l1_key = table == NULL ? NULL : PyObject_GetAttr(target, s_l1_key);
    PyObject *entry = l1_key == NULL || !PyDict_Check(table)
                          ? NULL
                          : PyDict_GetItemWithError(table, l1_key);
    PyObject *result = NULL;
    if (entry != NULL && Py_TYPE(entry) == cw_entry_type) {
        EntryFields *fields = (EntryFields *)entry;
        /* Held, and its deadline kept, before a clock of the user's runs code that may drop it. */
        Py_INCREF(entry);
        double deadline = fields->early_at, mono, now;
        int through = attr_true(target, s_through);
        int plain = through == 0 ? passing(engine) : through;
        if (plain == 0 && cw_monotonic(&mono) == 0 && engine_clock(engine, &now, mono) == 0 &&
            now < deadline && fields->value != NULL && count_hit(engine, table, fields) == 0) {
            result = Py_NewRef(fields->value);
        }
        Py_DECREF(entry);
    }
    Py_XDECREF(table);
    Py_XDECREF(l1_key);
    return result;
}

/* ``Reads.read_sync(self, target, loader, policy)``, compiled: the read above, then Python's
 * ``read_sync`` (``fallback``) with its answer when it did not serve. A method
 * descriptor of the engine's class, so that a read costs no Python frame before this one. */
static PyObject *
read_sync(PyObject *engine, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "read_sync takes 3 arguments: target, loader, policy");
        return NULL;
    }
    PyObject *got = l1_served(engine, args[0]);
    if (got != NULL || PyErr_Occurred()) {
        return got;
    }
    PyObject *all[] = {engine, args[0], args[1], args[2], NULL};
    got = lone_read(all);
    if (got != lone.full && got != lone.unhandled) {
        return got;
    }
    all[4] = got;
    PyObject *result = PyObject_Vectorcall(lone.fallback, all, 5, NULL);
    Py_DECREF(got);
    return result;
}

/* ``Reads.probe(self, target)``, compiled, for the async driver (which awaits the GET
 * itself): what Python's returns, ``(Fetch, ticket, started)`` or None; the cases the checks
 * here leave to Python (``unhandled``) are Python's ``probe``'s. */
static PyObject *
probe_method(PyObject *engine, PyObject *target)
{
    Probe p = {NULL, NULL, NULL, NULL, NULL, 0.0, 0.0, 0};
    PyObject *answer, *result = NULL;
    int go = probe(engine, target, &p, &answer);
    if (go > 0 && (result = probe_tuple(&p, NULL)) == NULL) {
        abandon(engine, p.key);
    }
    else if (go == 0) {
        result = answer == lone.full
                     ? Py_NewRef(Py_None)
                     : PyObject_CallFunctionObjArgs(lone.python_probe, engine, target, NULL);
    }
    probe_clear(&p);
    return result;
}

/* ``Reads.probed(self, target, loader, policy, probe, outcome)``, compiled: ``(True, value)``
 * for a fresh untagged entry read alone with L1 off (the async driver's GET, or a sync one
 * handed over); every other outcome is Python's ``probed``'s. */
static PyObject *
probed_method(PyObject *engine, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "probed takes 5 arguments");
        return NULL;
    }
    PyObject *probe = args[3], *outcome = args[4];
    PyObject *fetched = PyTuple_CheckExact(outcome) && PyTuple_GET_SIZE(outcome) == 2 &&
                                PyTuple_GET_ITEM(outcome, 1) == Py_None
                            ? PyTuple_GET_ITEM(outcome, 0)
                            : NULL;
    if (fetched != NULL && PyTuple_CheckExact(fetched) && PyTuple_GET_SIZE(fetched) == 2 &&
        PyTuple_GET_ITEM(fetched, 1) == Py_None &&
        PyBytes_CheckExact(PyTuple_GET_ITEM(fetched, 0)) && PyTuple_CheckExact(probe) &&
        PyTuple_GET_SIZE(probe) == 3 && PyFloat_CheckExact(PyTuple_GET_ITEM(probe, 2))) {
        Probe p = {NULL, NULL, NULL, NULL, NULL, 0.0, 0.0, 0};
        p.started = PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(probe, 2));
        p.backend = field(engine, s_backend);
        p.key = p.backend == NULL ? NULL : PyObject_GetAttr(args[0], s_full_key);
        PyObject *value = NULL;
        if (p.key != NULL && Py_TYPE(p.backend) == (PyTypeObject *)lone.backend_type &&
            PyUnicode_CheckExact(p.key)) {
            value = served(engine, &p, PyTuple_GET_ITEM(fetched, 0));
        }
        PyObject *result = value == NULL ? NULL : PyTuple_Pack(2, Py_True, value);
        Py_XDECREF(value);
        if (result == NULL && PyErr_Occurred() && p.key != NULL && !p.unprobed) {
            abandon(engine, p.key);
        }
        probe_clear(&p);
        if (result != NULL || PyErr_Occurred()) {
            return result;
        }
    }
    PyObject *all[] = {engine, args[0], args[1], args[2], args[3], args[4]};
    return PyObject_Vectorcall(lone.python_probed, all, 6, NULL);
}

static PyMethodDef read_sync_def = {
    "read_sync", (PyCFunction)(void (*)(void))read_sync, METH_FASTCALL,
    "``read`` carried out in this thread: the lone-caller fast path compiled "
    "(_speedups_lone.c), then Python's read_sync with its answer.",
};
/* ``Reads.served_now(self, target)``, compiled: ``l1_served``'s value, or ``unread``. */
static PyObject *
served_now(PyObject *engine, PyObject *target)
{
    PyObject *value = l1_served(engine, target);
    return value != NULL || PyErr_Occurred() ? value : Py_NewRef(lone.unread);
}

static PyMethodDef served_now_def = {
    "served_now", (PyCFunction)served_now, METH_O,
    "The L1 value a read of ``target`` returns at once, or ``_UNREAD`` (compiled; "
    "_speedups_lone.c).",
};
static PyMethodDef probe_def = {
    "probe", (PyCFunction)probe_method, METH_O,
    "The fast path's GET of ``target`` to carry out, or None (compiled; _speedups_lone.c).",
};
static PyMethodDef probed_def = {
    "probed", (PyCFunction)(void (*)(void))probed_method, METH_FASTCALL,
    "After the fast path's GET: (True, value), or Python's probed (compiled; "
    "_speedups_lone.c).",
};
