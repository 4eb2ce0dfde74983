/* ``Cache.get_or_load``, compiled: the front of an explicit key's read. See _speedups.c for
 * why C at all.
 *
 * In Python it is two frames (``get_or_load``, ``_read_args``) before the engine's
 * ``read_sync``: the key checked, its remembered target, the loader checked, the remembered
 * policy of its TTLs. Between two socket waits of a shared-tier hit with L1 off they cost about
 * as much as the compiled read after them (measured: the hit 1.07-1.09x a raw GET and unpack
 * through ``get_or_load``, 1.05x calling ``read_sync`` with the same arguments). Here the
 * common case is one call: ``key`` and ``loader`` by position, ``ttl`` (and ``stale_ttl``) by
 * name, a non-empty ``str`` key whose target and TTL pair are remembered, a callable loader;
 * then the L1 hit (``served_now``) or the engine's ``read_sync`` with what ``_read_args``
 * would have returned. Every other
 * call is Python's ``get_or_load`` (``fallback``), which makes and remembers what is missing
 * and raises the errors that name what was wrong. */
#include "_speedups.h"

static PyObject *fallback = NULL; /* Python's Cache.get_or_load */
static PyObject *s__engine, *s__targets, *s_serializer, *s__policies, *s_ttl, *s_stale_ttl,
    *s_read_sync;

static PyMethodDef get_or_load_def;

/* bind_front(cache_type, fallback): the compiled ``get_or_load``, a method of ``cache_type``. */
PyObject *
cw_bind_front(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyType_Check(args[0]) || !PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "bind_front takes the Cache class and a function");
        return NULL;
    }
#define INTERN(var, text)                                                                    \
    if (var == NULL && (var = PyUnicode_InternFromString(text)) == NULL) {                  \
        return NULL;                                                                         \
    }
    INTERN(s__engine, "_engine")
    INTERN(s__targets, "_targets")
    INTERN(s_serializer, "serializer")
    INTERN(s__policies, "_policies")
    INTERN(s_ttl, "ttl")
    INTERN(s_stale_ttl, "stale_ttl")
    INTERN(s_read_sync, "read_sync")
#undef INTERN
    Py_XSETREF(fallback, Py_NewRef(args[1]));
    return PyDescr_NewMethod((PyTypeObject *)args[0], &get_or_load_def);
}

/* A keyword's name is ``name``: by identity (the compiler interns the names of a call), else
 * by value. */
static int
named(PyObject *given, PyObject *name)
{
    return given == name || (PyUnicode_CheckExact(given) && PyUnicode_Compare(given, name) == 0);
}

/* The target, loader and policy ``_read_args`` would return (new references in ``out``), or
 * 0 when this call is Python's; -1 with an exception set. */
static int
read_args(PyObject *cache, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
          PyObject **engine, PyObject **out)
{
    PyObject *ttl = NULL, *stale_ttl = Py_None;
    Py_ssize_t given = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs != 2 || given < 1 || given > 2) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < given; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        if (named(name, s_ttl) && ttl == NULL) {
            ttl = args[2 + i];
        }
        else if (named(name, s_stale_ttl) && stale_ttl == Py_None) {
            stale_ttl = args[2 + i];
        }
        else {
            return 0;
        }
    }
    PyObject *key = args[0], *loader = args[1];
    if (ttl == NULL || !PyUnicode_CheckExact(key) || PyUnicode_GET_LENGTH(key) == 0 ||
        !PyCallable_Check(loader)) {
        return 0;
    }
    int found = 0;
    PyObject *targets = NULL, *target = NULL, *mine = NULL, *theirs = NULL, *policies = NULL;
    PyObject *pair = NULL;
    if ((*engine = PyObject_GetAttr(cache, s__engine)) == NULL ||
        (targets = PyObject_GetAttr(*engine, s__targets)) == NULL) {
        goto done;
    }
    if (!PyDict_CheckExact(targets) || (target = PyDict_GetItemWithError(targets, key)) == NULL) {
        found = PyErr_Occurred() ? -1 : 0;
        goto done;
    }
    Py_INCREF(target);
    if ((mine = PyObject_GetAttr(target, s_serializer)) == NULL ||
        (theirs = PyObject_GetAttr(*engine, s_serializer)) == NULL) {
        found = -1;
        goto done;
    }
    if (mine != theirs) {
        goto done;
    }
    if ((policies = PyObject_GetAttr(cache, s__policies)) == NULL ||
        (pair = PyTuple_Pack(4, (PyObject *)Py_TYPE(ttl), ttl, (PyObject *)Py_TYPE(stale_ttl),
                             stale_ttl)) == NULL) {
        found = -1;
        goto done;
    }
    PyObject *policy = PyDict_CheckExact(policies) ? PyDict_GetItemWithError(policies, pair)
                                                   : NULL;
    if (policy == NULL) {
        PyErr_Clear(); /* an unhashable TTL: Python's error names it */
        goto done;
    }
    out[0] = Py_NewRef(target);
    out[1] = Py_NewRef(loader);
    out[2] = Py_NewRef(policy);
    found = 1;
done:
    if (found == 0 && PyErr_Occurred()) {
        found = -1;
    }
    Py_XDECREF(targets);
    Py_XDECREF(target);
    Py_XDECREF(mine);
    Py_XDECREF(theirs);
    Py_XDECREF(policies);
    Py_XDECREF(pair);
    return found;
}

/* ``Cache.get_or_load(self, key, loader, *, ttl, stale_ttl=None)``, compiled: the engine's
 * ``read_sync`` with the remembered target and policy, or Python's ``get_or_load``. */
static PyObject *
get_or_load(PyObject *cache, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *engine = NULL, *three[3] = {NULL, NULL, NULL};
    int found = read_args(cache, args, nargs, kwnames, &engine, three);
    PyObject *result = NULL;
    if (found > 0) {
        /* ``served_now`` first, as Python's ``get_or_load``: an L1 hit needs no read. */
        result = cw_l1_served(engine, three[0]);
        if (result == NULL && !PyErr_Occurred()) {
            PyObject *call[] = {engine, three[0], three[1], three[2]};
            result = PyObject_VectorcallMethod(s_read_sync, call, 4, NULL);
        }
    }
    else if (found == 0) {
        PyObject *bound = PyMethod_New(fallback, cache);
        if (bound != NULL) {
            result = PyObject_Vectorcall(bound, args, nargsf, kwnames);
            Py_DECREF(bound);
        }
    }
    Py_XDECREF(engine);
    for (int i = 0; i < 3; i++) {
        Py_XDECREF(three[i]);
    }
    return result;
}

static PyMethodDef get_or_load_def = {
    "get_or_load", (PyCFunction)(void (*)(void))get_or_load, METH_FASTCALL | METH_KEYWORDS,
    "get_or_load($self, key, loader, *, ttl, stale_ttl=None)\n--\n\n"
    "Return the value of ``key``, loading it with ``loader()`` (once per key) on a miss.",
};
