/* ``read_sync``: the lone-caller fast path of a sync shared-tier read, compiled. See
 * _speedups.c for why C at all.
 *
 * In Python that path is three steps of engine/lone.py: ``probe`` (may this read skip the
 * plan: nothing in L1, no flight, Redis set up and its breaker closed), ``Fetch.run_sync``
 * (the GET) and ``probed`` (what the reply is: a fresh entry serves). Between two socket
 * waits, their Python costs about three times what it costs in a loop (the code and data it
 * touches are cold after the process slept), which put the shared-tier hit at 1.10x a raw GET
 * and unpack. Here the common case is one call: a sync client (a cluster's too), L1 off,
 * no observers, an untagged envelope decoded by its header. It reads the same fields the
 * Python reads and takes the same lock. Every other case is Python's: before the GET it
 * hands Python's ``read_sync`` the answer ``full`` (the plan serves it) or ``unhandled``
 * (Python's ``probe`` decides); after the GET it hands the reply to ``finish``
 * (``LoneReads._finish_sync``: ``probed``, then the plan if that did not serve), exactly as
 * Python's GET would have. It is the engine's ``read_sync`` itself (a method descriptor),
 * so that a shared-tier hit runs no Python frame of the engine at all.
 *
 * The async driver awaits its GET itself; the two halves around it, ``probe`` and
 * ``probed``, are compiled the same way (the same code as the sync read's), each handing to
 * its Python twin what it does not serve.
 *
 * This file: what ``bind_lone`` binds, the field helpers, an L1 hit served at once
 * (``served_now``) and the methods; _speedups_probe.c the checks before the GET, the reply
 * and the hand-over to Python; _speedups_lone.h what the two share. */
#include "_speedups_lone.h"

CW_INTERNAL LoneParts lone;
#define NAME_DEFINED(name) CW_INTERNAL PyObject *s_##name = NULL;
NAMES(NAME_DEFINED)

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
CW_INTERNAL PyObject *
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
CW_INTERNAL int
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
CW_INTERNAL int
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
CW_INTERNAL int
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

/* ``_switch.passing(engine)``: 1, 0, or -1. */
CW_INTERNAL int
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
CW_INTERNAL PyObject *
cw_l1_served(PyObject *engine, PyObject *target)
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

/* ``LoneReads.read_sync(self, target, loader, policy)``, compiled: the read above (without
 * Redis, ``load_alone``), then Python's ``read_sync`` (``fallback``) with its answer when it did
 * not serve. A method descriptor of the engine's class, so that a read costs no Python frame
 * before this one. */
static PyObject *
read_sync(PyObject *engine, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "read_sync takes 3 arguments: target, loader, policy");
        return NULL;
    }
    PyObject *all[] = {engine, args[0], args[1], args[2], NULL};
    PyObject *got = lone_read(all);
    if (got != lone.full && got != lone.unhandled) {
        return got;
    }
    if (got == lone.unhandled) { /* without Redis: ``load_alone``, with no Python frame first */
        PyObject *backend = field(engine, s_backend);
        int alone = backend == Py_None;
        Py_XDECREF(backend);
        if (backend == NULL || alone) {
            Py_DECREF(got);
            got = backend == NULL ? NULL : PyObject_VectorcallMethod(s_load_alone, all, 4, NULL);
            if (got != lone.unread) {
                return got;
            }
        }
    }
    all[4] = got;
    PyObject *result = PyObject_Vectorcall(lone.fallback, all, 5, NULL);
    Py_DECREF(got);
    return result;
}

/* ``LoneReads.probe(self, target)``, compiled, for the async driver (which awaits the GET
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

/* ``LoneReads.probed(self, target, loader, policy, probe, outcome)``, compiled: ``(True, value)``
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
/* ``Reads.served_now(self, target)``, compiled: ``cw_l1_served``'s value, or ``unread``. */
static PyObject *
served_now(PyObject *engine, PyObject *target)
{
    PyObject *value = cw_l1_served(engine, target);
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
