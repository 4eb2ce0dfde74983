/* The lone-caller read's checks before its GET (``probe``), its reply (``served``) and what
 * goes back to Python when it does not serve (``hand_over``): the half of the compiled
 * shared-tier read that _speedups_lone.c calls; see there for the whole. */
#include "_speedups_lone.h"

CW_INTERNAL void
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

/* On a cluster, ``p->breaker`` becomes that of the master serving the key's slot, which
 * ``Fetch`` counts the GET on: 1 when it is closed, 0, or -1 with an exception set. */
static int
master_ready(Probe *p)
{
    PyObject *node = PyObject_CallMethodOneArg(p->backend, s_breaker_for, p->key);
    if (node == NULL) {
        return -1;
    }
    Py_SETREF(p->breaker, node);
    PyObject *state = field(node, s_state);
    if (state == NULL) {
        return -1;
    }
    int closed = state == lone.closed;
    Py_DECREF(state);
    return closed;
}

/* ``LoneReads.probe`` and ``LoneReads._lone``: 1 (``*p`` filled, the key marked as probed), or
 * ``lone.full`` / ``lone.unhandled`` in ``*answer`` (0), or -1 with an exception set. */
CW_INTERNAL int
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
    /* A sync client set up: a plain one, or a cluster's (whose GET counts on the breaker of
     * the master serving the key's slot, ``breaker_for``, once the Cache's is closed). */
    p->client = field(p->backend, s__sync);
    PyObject *topology = p->client == NULL ? NULL : field(p->backend, s__topology);
    if (topology == NULL) {
        return -1;
    }
    int cluster = topology != Py_None;
    Py_DECREF(topology);
    if (p->client == Py_None) {
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
    if (cluster && (held = master_ready(p)) <= 0) {
        *answer = lone.unhandled; /* its master's breaker not closed: Python's ``Fetch`` */
        return held;
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
CW_INTERNAL PyObject *
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
CW_INTERNAL PyObject *
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
CW_INTERNAL void
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
CW_INTERNAL PyObject *
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

