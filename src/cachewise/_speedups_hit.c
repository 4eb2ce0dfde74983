/* The compiled L1 hit of a sync cached function: ``HitWrapper`` (the function callers call)
 * and ``HitProbe`` (one call a generated wrapper makes for its hit). See _speedups.c. */
#include "_speedups.h"

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *fallback;      /* the generated Python wrapper */
    PyObject *slow;          /* HitWrapper: the wrapper's ``_cw_slow``, past the hit */
    PyObject *globals;       /* its globals */
    PyObject *now;           /* the clock; NULL: CLOCK_MONOTONIC, which time.monotonic reads */
    PyObject *miss;          /* HitProbe: what a call the hit does not serve returns */
    PyObject *dict;
    PyObject *weakreflist;
    Py_ssize_t nargs;        /* the key arguments, all positional */
    Py_ssize_t served;       /* the hits served here, read by _hits.py */
} HitWrapper;

static PyObject *str_table = NULL;  /* "_cw_table", interned */
static PyObject *probe_type = NULL; /* HitProbe, told apart by hit_new */

static int
read_clock(HitWrapper *self, double *now)
{
    if (self->now == NULL) {
        return cw_monotonic(now);
    }
    PyObject *value = PyObject_CallNoArgs(self->now);
    if (value == NULL) {
        return -1;
    }
    *now = PyFloat_AsDouble(value);
    Py_DECREF(value);
    return (*now == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

/* The hit, or NULL without an error when the fallback must serve the call; ``*looked`` is
 * set once the call was looked up in the table (a miss there is a miss for the fallback too). */
static PyObject *
serve(HitWrapper *self, PyObject *const *args, Py_ssize_t n, int *failed, int *looked)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyLong_CheckExact(args[i]) && !PyUnicode_CheckExact(args[i])) {
            return NULL;
        }
    }
    PyObject *table = PyDict_GetItemWithError(self->globals, str_table);
    if (table == NULL || !PyDict_Check(table)) {
        return NULL; /* _switch's read-only empty table: caching is off */
    }
    *looked = 1;
    PyObject *entry;
    if (n == 1) {
        entry = PyDict_GetItemWithError(table, args[0]);
    }
    else {
        PyObject *key = PyTuple_New(n);
        if (key == NULL) {
            *failed = 1;
            return NULL;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            PyTuple_SET_ITEM(key, i, Py_NewRef(args[i]));
        }
        entry = PyDict_GetItemWithError(table, key);
        Py_DECREF(key);
    }
    if (entry == NULL || Py_TYPE(entry) != cw_entry_type) {
        if (PyErr_Occurred()) {
            *failed = 1;
        }
        return NULL;
    }
    EntryFields *fields = (EntryFields *)entry;
    /* Read before the clock: a clock of the user's runs code (other threads too) that may
     * drop the entry, so hold the entry and keep the deadline's value. */
    double deadline = fields->early_at;
    Py_INCREF(entry);
    double now;
    PyObject *result = NULL;
    if (read_clock(self, &now) < 0) {
        *failed = 1;
    }
    else if (now < deadline && fields->value != NULL) {
        fields->hits++;
        self->served++;
        result = Py_NewRef(fields->value);
    }
    Py_DECREF(entry);
    return result;
}

static PyObject *
hit_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    HitWrapper *self = (HitWrapper *)op;
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (kwnames == NULL && n == self->nargs) {
        int failed = 0, looked = 0;
        PyObject *value = serve(self, args, n, &failed, &looked);
        if (value != NULL || failed) {
            return value;
        }
        if (looked && self->slow != NULL) {
            /* Not a hit: straight past it, without the fallback's Python frame asking again. */
            return PyObject_Vectorcall(self->slow, args, nargsf, NULL);
        }
    }
    return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
}

static PyObject *
probe_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    HitWrapper *self = (HitWrapper *)op;
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL || n != self->nargs) {
        PyErr_SetString(PyExc_TypeError, "HitProbe: called with the wrong arguments");
        return NULL;
    }
    int failed = 0, looked = 0;
    PyObject *value = serve(self, args, n, &failed, &looked);
    if (value != NULL || failed) {
        return value;
    }
    return Py_NewRef(self->miss);
}

static PyObject *
make(PyTypeObject *type, PyObject *fallback, Py_ssize_t nargs, PyObject *now, PyObject *miss)
{
    if (cw_entry_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cachewise._speedups: bind_entry() was not called");
        return NULL;
    }
    if (!PyFunction_Check(fallback) || nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "HitWrapper/HitProbe: the wrapper must be a function "
                                         "and nargs at least 1");
        return NULL;
    }
    PyObject *globals = PyFunction_GET_GLOBALS(fallback);
    if (PyDict_GetItemString(globals, "_cw_table") == NULL) {
        PyErr_SetString(PyExc_TypeError, "cachewise._speedups: not a generated wrapper");
        return NULL;
    }
    HitWrapper *self = (HitWrapper *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = miss == NULL ? hit_vectorcall : probe_vectorcall;
    self->miss = Py_XNewRef(miss);
    self->fallback = Py_NewRef(fallback);
    /* Only a HitWrapper calls it, and only with the function's own positional arguments. */
    self->slow = miss == NULL ? Py_XNewRef(PyDict_GetItemString(globals, "_cw_slow")) : NULL;
    self->globals = Py_NewRef(globals);
    self->now = now == Py_None ? NULL : Py_NewRef(now);
    self->nargs = nargs;
    return (PyObject *)self;
}

/* HitWrapper(wrapper, nargs, now) and HitProbe(wrapper, nargs, now, miss). */
static PyObject *
hit_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"wrapper", "nargs", "now", "miss", NULL};
    PyObject *fallback, *now, *miss = NULL;
    Py_ssize_t nargs;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OnO|O", names, &fallback, &nargs, &now,
                                     &miss)) {
        return NULL;
    }
    if (((PyObject *)type == probe_type) != (miss != NULL)) {
        PyErr_SetString(PyExc_TypeError, "HitProbe takes a miss object; HitWrapper does not");
        return NULL;
    }
    return make(type, fallback, nargs, now, miss);
}

/* The objects a wrapper holds, listed once for the collector's two walks over them. */
#define HIT_OBJECTS(DO) DO(fallback) DO(slow) DO(globals) DO(now) DO(miss) DO(dict)

static int
hit_traverse(HitWrapper *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    HIT_OBJECTS(CW_VISIT)
    return 0;
}

static int
hit_clear(HitWrapper *self)
{
    HIT_OBJECTS(CW_CLEAR)
    return 0;
}

static void
hit_dealloc(HitWrapper *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    hit_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

/* Bound to an instance as a function is (a cached function stored on a class). */
static PyObject *
hit_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == Py_None || obj == NULL) {
        return Py_NewRef(self);
    }
    return PyMethod_New(self, obj);
}

/* Pickled by reference, as functions are: by module and qualified name. */
static PyObject *
hit_reduce(PyObject *self, PyObject *unused)
{
    return PyObject_GetAttrString(self, "__qualname__");
}

static PyObject *
hit_copy(PyObject *self, PyObject *unused)
{
    return Py_NewRef(self);
}

static PyObject *
hit_repr(PyObject *self)
{
    PyObject *name = PyObject_GetAttrString(self, "__qualname__");
    if (name == NULL) {
        PyErr_Clear();
        return PyUnicode_FromFormat("<cached function at %p>", self);
    }
    PyObject *text = PyUnicode_FromFormat("<cached function %S at %p>", name, self);
    Py_DECREF(name);
    return text;
}

static PyMethodDef hit_methods[] = {
    {"__reduce__", hit_reduce, METH_NOARGS, NULL},
    {"__copy__", hit_copy, METH_NOARGS, NULL},
    {"__deepcopy__", hit_copy, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef hit_members[] = {
    {"__dictoffset__", T_PYSSIZET, offsetof(HitWrapper, dict), READONLY},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(HitWrapper, weakreflist), READONLY},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(HitWrapper, vectorcall), READONLY},
    {"fallback", T_OBJECT, offsetof(HitWrapper, fallback), READONLY,
     "The generated Python wrapper: every call the compiled hit does not serve."},
    {"served", T_PYSSIZET, offsetof(HitWrapper, served), READONLY, "The hits served here."},
    {NULL},
};

static PyGetSetDef hit_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL},
};

static PyType_Slot hit_slots[] = {
    {Py_tp_new, hit_new},
    {Py_tp_dealloc, hit_dealloc},
    {Py_tp_traverse, hit_traverse},
    {Py_tp_clear, hit_clear},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, hit_get},
    {Py_tp_repr, hit_repr},
    {Py_tp_methods, hit_methods},
    {Py_tp_members, hit_members},
    {Py_tp_getset, hit_getset},
    {Py_tp_doc, "A cached function whose L1 hit runs compiled (cachewise._codegen)."},
    {0, NULL},
};

static PyType_Spec hit_spec = {
    .name = "cachewise._speedups.HitWrapper",
    .basicsize = sizeof(HitWrapper),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
             Py_TPFLAGS_METHOD_DESCRIPTOR,
    .slots = hit_slots,
};

static PyMemberDef probe_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(HitWrapper, vectorcall), READONLY},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(HitWrapper, weakreflist), READONLY},
    {"served", T_PYSSIZET, offsetof(HitWrapper, served), READONLY, "The hits served here."},
    {NULL},
};

static PyType_Slot probe_slots[] = {
    {Py_tp_new, hit_new},
    {Py_tp_dealloc, hit_dealloc},
    {Py_tp_traverse, hit_traverse},
    {Py_tp_clear, hit_clear},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_members, probe_members},
    {Py_tp_doc, "The L1 hit of a generated wrapper as one call: its value, or ``miss``."},
    {0, NULL},
};

static PyType_Spec probe_spec = {
    .name = "cachewise._speedups.HitProbe",
    .basicsize = sizeof(HitWrapper),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = probe_slots,
};

int
cw_add_hit_types(PyObject *module)
{
    str_table = PyUnicode_InternFromString("_cw_table");
    if (str_table == NULL) {
        return -1;
    }
    PyObject *type = PyType_FromSpec(&hit_spec);
    if (type == NULL || PyModule_AddObject(module, "HitWrapper", type) < 0) {
        Py_XDECREF(type);
        return -1;
    }
    type = probe_type = PyType_FromSpec(&probe_spec);
    if (type == NULL || PyModule_AddObject(module, "HitProbe", Py_NewRef(type)) < 0) {
        Py_XDECREF(type);
        return -1;
    }
    return 0;
}
