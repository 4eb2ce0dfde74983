/* The L1 hit of a sync cached function, compiled (``HitWrapper``, ``HitProbe``), the storage of
 * an L1 entry (``EntryFields``) and the checks of a bulk read (``fresh_values``).
 *
 * Why C: a hit in the generated Python wrapper (_codegen.py) is one dict lookup, one clock read
 * and one compare, yet the Python function call around them costs three times a
 * ``functools.lru_cache`` hit, which is a C object called directly. No library serves a TTL'd
 * lookup into our own L1 entries that way, so this module does it for the one case that is
 * most of the calls: every key argument given by position, each an exact ``int`` or ``str``.
 * Every other call, and every call the hit does not serve, goes to the generated Python
 * wrapper (the "fallback") with the same arguments, so the two paths cannot disagree. Without
 * a compiler the package runs on the Python wrapper alone.
 *
 * It reads the same state the Python hit reads: the fallback's globals ``_cw_table`` (swapped
 * by _switch.py while caching is off), the entry's ``early_at``, ``hits`` and ``value``. It
 * counts the hits it serves (``served``, a C integer: free), so that a cache's stats() sums
 * a count per function instead of every entry's (_hits.py).
 *
 * ``fresh_values`` is the loop of codec.fresh_values (a bulk read's checks per value).
 *
 * ``EntryFields`` holds an entry's deadlines and counters as C numbers: in a class with
 * ``__slots__`` each is an object of its own (a float is 24 bytes), which made them a third
 * of what an L1 entry costs. ``core.Entry`` subclasses it (or, without the extension, a class
 * with the same fields as slots).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <time.h>

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

typedef struct {
    PyObject_HEAD
    PyObject *value;
    PyObject *full_key;
    PyObject *l1_key;
    PyObject *tags;
    PyObject *table;
    double fresh_until;
    double stale_until;
    double refresh_at;
    double early_at;
    double load_time;
    Py_ssize_t hits;
    unsigned int seen; /* the low 32 bits of hits when L1's eviction hand last passed */
    int slot;          /* where L1's eviction ring holds it; -1: not held */
} EntryFields;

static PyTypeObject *fields_type = NULL; /* EntryFields */
static PyTypeObject *entry_type = NULL;  /* core.Entry, the subclass the hit serves (bind_entry) */
static PyObject *str_table = NULL;
static PyObject *empty_tuple = NULL;
static PyObject *probe_type = NULL; /* HitProbe, told apart by hit_new */

static int
read_clock(HitWrapper *self, double *now)
{
    if (self->now == NULL) {
        struct timespec ts;
        if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        /* As time.monotonic converts it: integer nanoseconds, then seconds as a double. */
        *now = (double)((long long)ts.tv_sec * 1000000000LL + ts.tv_nsec) / 1e9;
        return 0;
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
    if (table == NULL || !PyDict_CheckExact(table)) {
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
    if (entry == NULL || Py_TYPE(entry) != entry_type) {
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
    if (entry_type == NULL) {
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

static int
hit_traverse(HitWrapper *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->fallback);
    Py_VISIT(self->slow);
    Py_VISIT(self->globals);
    Py_VISIT(self->now);
    Py_VISIT(self->miss);
    Py_VISIT(self->dict);
    return 0;
}

static int
hit_clear(HitWrapper *self)
{
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->globals);
    Py_CLEAR(self->now);
    Py_CLEAR(self->miss);
    Py_CLEAR(self->dict);
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

/* -- EntryFields ------------------------------------------------------------------------- */

/* EntryFields(value, fresh_until, stale_until, early_at, load_time, full_key, l1_key,
 *             tags=(), refresh_at=None): refresh_at None is fresh_until. */
static int
fields_init(EntryFields *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"value", "fresh_until", "stale_until", "early_at", "load_time",
                            "full_key", "l1_key", "tags", "refresh_at", NULL};
    PyObject *value, *full_key, *l1_key, *tags = empty_tuple, *refresh_at = Py_None;
    double fresh_until, stale_until, early_at, load_time;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OddddOO|OO:Entry", names, &value,
                                     &fresh_until, &stale_until, &early_at, &load_time,
                                     &full_key, &l1_key, &tags, &refresh_at)) {
        return -1;
    }
    double refresh = fresh_until;
    if (refresh_at != Py_None) {
        refresh = PyFloat_AsDouble(refresh_at);
        if (refresh == -1.0 && PyErr_Occurred()) {
            return -1;
        }
    }
    Py_XSETREF(self->value, Py_NewRef(value));
    Py_XSETREF(self->full_key, Py_NewRef(full_key));
    Py_XSETREF(self->l1_key, Py_NewRef(l1_key));
    Py_XSETREF(self->tags, Py_NewRef(tags));
    Py_XSETREF(self->table, Py_NewRef(Py_None));
    self->fresh_until = fresh_until;
    self->stale_until = stale_until;
    self->refresh_at = refresh;
    self->early_at = early_at;
    self->load_time = load_time;
    self->hits = 0;
    self->seen = 0;
    self->slot = -1;
    return 0;
}

static int
fields_traverse(EntryFields *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->value);
    Py_VISIT(self->full_key);
    Py_VISIT(self->l1_key);
    Py_VISIT(self->tags);
    Py_VISIT(self->table);
    return 0;
}

static int
fields_clear(EntryFields *self)
{
    Py_CLEAR(self->value);
    Py_CLEAR(self->full_key);
    Py_CLEAR(self->l1_key);
    Py_CLEAR(self->tags);
    Py_CLEAR(self->table);
    return 0;
}

static void
fields_dealloc(EntryFields *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    fields_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

#define FIELD(name, kind) {#name, kind, offsetof(EntryFields, name), 0, NULL}

static PyMemberDef fields_members[] = {
    FIELD(value, T_OBJECT_EX),
    FIELD(full_key, T_OBJECT_EX),
    FIELD(l1_key, T_OBJECT_EX),
    FIELD(tags, T_OBJECT_EX),
    FIELD(table, T_OBJECT_EX),
    FIELD(fresh_until, T_DOUBLE),
    FIELD(stale_until, T_DOUBLE),
    FIELD(refresh_at, T_DOUBLE),
    FIELD(early_at, T_DOUBLE),
    FIELD(load_time, T_DOUBLE),
    FIELD(hits, T_PYSSIZET),
    FIELD(seen, T_UINT),
    FIELD(slot, T_INT),
    {NULL},
};

static PyType_Slot fields_slots[] = {
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, fields_init},
    {Py_tp_dealloc, fields_dealloc},
    {Py_tp_traverse, fields_traverse},
    {Py_tp_clear, fields_clear},
    {Py_tp_members, fields_members},
    {Py_tp_doc, "What an L1 entry holds, deadlines and counters as C numbers (core.Entry)."},
    {0, NULL},
};

static PyType_Spec fields_spec = {
    .name = "cachewise._speedups.EntryFields",
    .basicsize = sizeof(EntryFields),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = fields_slots,
};

/* Tell the module the entry class the hit serves: core.Entry, a subclass of EntryFields that
 * adds no storage (the hit reads the fields at their C offsets). */
static PyObject *
bind_entry(PyObject *module, PyObject *cls)
{
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, fields_type) ||
        ((PyTypeObject *)cls)->tp_basicsize != fields_type->tp_basicsize) {
        PyErr_Format(PyExc_TypeError,
                     "bind_entry: expected a subclass of EntryFields with __slots__ = (), got %R",
                     cls);
        return NULL;
    }
    Py_XSETREF(entry_type, (PyTypeObject *)Py_NewRef(cls));
    Py_RETURN_NONE;
}

/* -- fresh_values ------------------------------------------------------------------------ */

/* The loop of codec.fresh_values, compiled: per value of a bulk read, the Python loop around
 * msgpack's decoding cost as much as the decoding itself. The decoding stays msgpack's: each
 * value is decoded from its own bytes by ``unpackb`` (so it cannot run into its neighbour's);
 * this loop checks the envelope's shape and sorts it, as ``codec.body`` would one by one.
 * Returns the keys whose bytes are not an envelope, or None at an error outside msgpack's
 * decoding, which the caller answers by decoding every value on its own in Python. */

enum { FORMAT_AT, FRESH_AT, STALE_AT, LOAD_AT, TAGS_AT, VERSIONS_AT, VALUE_AT, FIELDS };

/* -- the header of an untagged envelope, read by hand -------------------------------------
 * An envelope is ``[FORMAT, fresh, stale, load, tags, versions, value]`` (codec.py). Decoding
 * it whole makes a list, three or four ints and two lists per value, dropped at once: a bulk
 * read of 100 values spent a quarter of its decoding on them. For the common shape (no tags,
 * the times as unsigned integers) the fields before the value are read here, and msgpack
 * decodes the value alone, from its own bytes to their end. Any other shape goes the generic
 * way (msgpack decodes the whole envelope), so the two ways cannot disagree on an answer. */

/* An unsigned integer as msgpack writes one, at ``*at``: 1 and ``*at`` moved past it, or 0. */
static int
read_uint(const unsigned char *p, Py_ssize_t n, Py_ssize_t *at, unsigned long long *out)
{
    Py_ssize_t i = *at;
    if (i >= n) {
        return 0;
    }
    int size;
    switch (p[i]) {
    case 0xcc: size = 1; break;
    case 0xcd: size = 2; break;
    case 0xce: size = 4; break;
    case 0xcf: size = 8; break;
    default:
        if (p[i] > 0x7f) {
            return 0;
        }
        *out = p[i];
        *at = i + 1;
        return 1;
    }
    if (n - i - 1 < size) {
        return 0;
    }
    unsigned long long value = 0;
    for (int k = 1; k <= size; k++) {
        value = (value << 8) | p[i + k];
    }
    *out = value;
    *at = i + 1 + size;
    return 1;
}

#define EXACT_DOUBLE (1ULL << 53) /* integers up to this compare exactly as doubles */

typedef struct {
    unsigned long long fresh, stale, load;
    Py_ssize_t value_at; /* where the value's bytes start */
} Header;

/* 1: ``raw`` starts as an untagged envelope of ``format`` (``*h`` filled), 0: it does not. */
static int
read_header(PyObject *raw, unsigned long long format, Header *h)
{
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(raw);
    Py_ssize_t n = PyBytes_GET_SIZE(raw), at = 1;
    unsigned long long version;
    if (n < 1 || p[0] != 0x97 || !read_uint(p, n, &at, &version) || version != format ||
        !read_uint(p, n, &at, &h->fresh) || !read_uint(p, n, &at, &h->stale) ||
        !read_uint(p, n, &at, &h->load) || h->fresh > EXACT_DOUBLE || n - at < 3 ||
        p[at] != 0x90 || p[at + 1] != 0x90) {
        return 0;
    }
    h->value_at = at + 2;
    return 1;
}

/* The body ``codec.body`` would have made of an untagged envelope (for ``kept``). */
static PyObject *
header_body(PyObject *format, const Header *h, PyObject *value)
{
    PyObject *body = PyList_New(FIELDS);
    if (body == NULL) {
        return NULL;
    }
    PyList_SET_ITEM(body, FORMAT_AT, Py_NewRef(format));
    PyList_SET_ITEM(body, FRESH_AT, PyLong_FromUnsignedLongLong(h->fresh));
    PyList_SET_ITEM(body, STALE_AT, PyLong_FromUnsignedLongLong(h->stale));
    PyList_SET_ITEM(body, LOAD_AT, PyLong_FromUnsignedLongLong(h->load));
    PyList_SET_ITEM(body, TAGS_AT, PyList_New(0));
    PyList_SET_ITEM(body, VERSIONS_AT, PyList_New(0));
    PyList_SET_ITEM(body, VALUE_AT, Py_NewRef(value));
    for (int i = 0; i < FIELDS; i++) {
        if (PyList_GET_ITEM(body, i) == NULL) {
            Py_DECREF(body);
            return NULL;
        }
    }
    return body;
}

/* 1: an envelope; 0: not one; -1: an error. */
static int
is_envelope(PyObject *const *item, PyObject *body, PyObject *format, PyObject *checked)
{
    int same = PyObject_RichCompareBool(item[FORMAT_AT], format, Py_EQ);
    if (same <= 0) {
        return same;
    }
    if (!PyLong_CheckExact(item[FRESH_AT]) || !PyLong_CheckExact(item[STALE_AT]) ||
        !PyLong_CheckExact(item[LOAD_AT]) || !PyList_CheckExact(item[TAGS_AT]) ||
        !PyList_CheckExact(item[VERSIONS_AT])) {
        return 0;
    }
    if (PyList_GET_SIZE(item[TAGS_AT]) == 0 && PyList_GET_SIZE(item[VERSIONS_AT]) == 0) {
        return 1;
    }
    PyObject *envelope = PyObject_CallOneArg(checked, body); /* the tags' own checks */
    if (envelope == NULL) {
        return -1;
    }
    int ok = envelope != Py_None;
    Py_DECREF(envelope);
    return ok;
}

/* One value: 1 sorted, 0 a surprise (the caller falls back), -1 an error. */
static int
sort_value(PyObject *key, PyObject *body, PyObject *now, PyObject *found, PyObject *kept,
           PyObject *bad, PyObject *format, PyObject *checked)
{
    if (!PyList_CheckExact(body) || PyList_GET_SIZE(body) != FIELDS) {
        return PyList_Append(bad, key) < 0 ? -1 : 1;
    }
    /* Held apart from the list: a comparison may run code of a value's own type. */
    PyObject *item[FIELDS];
    for (int i = 0; i < FIELDS; i++) {
        item[i] = Py_NewRef(PyList_GET_ITEM(body, i));
    }
    int result = -1;
    int ok = is_envelope(item, body, format, checked);
    if (ok == 0) {
        result = PyList_Append(bad, key) < 0 ? -1 : 1;
    }
    else if (ok > 0) {
        int fresh = PyObject_RichCompareBool(now, item[FRESH_AT], Py_LT);
        if (fresh == 0) {
            result = 1;
        }
        else if (fresh > 0 && PyDict_SetItem(found, key, item[VALUE_AT]) == 0) {
            result = 1;
            if (kept != Py_None) {
                PyObject *pair = PyTuple_Pack(2, key, body);
                result = pair != NULL && PyList_Append(kept, pair) == 0 ? 1 : -1;
                Py_XDECREF(pair);
            }
        }
    }
    for (int i = 0; i < FIELDS; i++) {
        Py_DECREF(item[i]);
    }
    return result;
}

/* One untagged envelope read by its header: msgpack decodes the value alone (to the end of
 * ``raw``: a value that ends early or runs past it is undecodable, as when decoded whole).
 * 1 sorted, -1 an error. */
static int
sort_untagged(PyObject *key, PyObject *raw, const Header *h, double now, PyObject *found,
              PyObject *kept, PyObject *bad, PyObject *format, PyObject *unpackb,
              PyObject **argv, PyObject *kwnames)
{
    PyObject *view = PyMemoryView_FromMemory(PyBytes_AS_STRING(raw) + h->value_at,
                                             PyBytes_GET_SIZE(raw) - h->value_at, PyBUF_READ);
    if (view == NULL) {
        return -1;
    }
    argv[0] = view;
    PyObject *value = PyObject_Vectorcall(unpackb, argv, 1, kwnames);
    Py_DECREF(view);
    if (value == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return -1;
        }
        PyErr_Clear();
        return PyList_Append(bad, key) < 0 ? -1 : 1;
    }
    int result = 1;
    if (now < (double)h->fresh) {
        if (PyDict_SetItem(found, key, value) < 0) {
            result = -1;
        }
        else if (kept != Py_None) {
            PyObject *body = header_body(format, h, value);
            PyObject *pair = body == NULL ? NULL : PyTuple_Pack(2, key, body);
            result = pair != NULL && PyList_Append(kept, pair) == 0 ? 1 : -1;
            Py_XDECREF(body);
            Py_XDECREF(pair);
        }
    }
    Py_DECREF(value);
    return result;
}

/* Whether the header's way applies to this call: the time an exact double, the format a
 * small int (``*now_d``, ``*format_u``). -1 at an error. */
static int
by_header(PyObject *now, PyObject *format, double *now_d, unsigned long long *format_u)
{
    if (PyFloat_CheckExact(now)) {
        *now_d = PyFloat_AS_DOUBLE(now);
    }
    else if (PyLong_CheckExact(now)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(now, &overflow);
        if (v == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (overflow || v > (long long)EXACT_DOUBLE || v < -(long long)EXACT_DOUBLE) {
            return 0;
        }
        *now_d = (double)v;
    }
    else {
        return 0;
    }
    if (!PyLong_CheckExact(format)) {
        return 0;
    }
    *format_u = PyLong_AsUnsignedLongLong(format);
    if (*format_u == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear(); /* negative or huge: never an envelope's, the generic way says so */
        return 0;
    }
    return 1;
}

/* fresh_values(keys, raws, now_ms, found, kept, unpackb, kwnames, kwvalues, format, checked):
 * each value is ``unpackb(raw, **dict(zip(kwnames, kwvalues)))``. */
static PyObject *
fresh_values(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "fresh_values takes 10 arguments");
        return NULL;
    }
    PyObject *keys = args[0], *raws = args[1], *now = args[2], *found = args[3];
    PyObject *kept = args[4], *unpackb = args[5], *kwnames = args[6], *kwvalues = args[7];
    PyObject *format = args[8], *checked = args[9];
    if (!PyList_CheckExact(keys) || !PyList_CheckExact(raws) || !PyDict_CheckExact(found) ||
        (kept != Py_None && !PyList_CheckExact(kept)) || !PyTuple_CheckExact(kwnames) ||
        !PyTuple_CheckExact(kwvalues) || PyTuple_GET_SIZE(kwnames) != PyTuple_GET_SIZE(kwvalues) ||
        PyTuple_GET_SIZE(kwnames) > 4) {
        PyErr_SetString(PyExc_TypeError, "fresh_values: wrong argument types");
        return NULL;
    }
    PyObject *argv[5];
    Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < nkw; i++) {
        argv[1 + i] = PyTuple_GET_ITEM(kwvalues, i); /* borrowed from kwvalues, held by the caller */
    }
    double now_d = 0;
    unsigned long long format_u = 0;
    int headers = by_header(now, format, &now_d, &format_u);
    if (headers < 0) {
        return NULL;
    }
    PyObject *bad = PyList_New(0);
    if (bad == NULL) {
        return NULL;
    }
    if (PyList_GET_SIZE(keys) != PyList_GET_SIZE(raws)) {
        goto surprise;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(keys) && i < PyList_GET_SIZE(raws); i++) {
        PyObject *raw = PyList_GET_ITEM(raws, i);
        if (raw == Py_None) {
            continue;
        }
        PyObject *key = Py_NewRef(PyList_GET_ITEM(keys, i));
        raw = Py_NewRef(raw);
        Header h;
        int sorted;
        if (headers && PyBytes_CheckExact(raw) && read_header(raw, format_u, &h)) {
            sorted = sort_untagged(key, raw, &h, now_d, found, kept, bad, format, unpackb, argv,
                                   nkw ? kwnames : NULL);
        }
        else { /* the generic way: msgpack decodes the whole envelope */
            argv[0] = raw;
            PyObject *body = PyObject_Vectorcall(unpackb, argv, 1, nkw ? kwnames : NULL);
            if (body == NULL) { /* undecodable: not an envelope, as codec.body says */
                sorted = PyErr_ExceptionMatches(PyExc_Exception) ? 1 : -1;
                if (sorted > 0) {
                    PyErr_Clear();
                    sorted = PyList_Append(bad, key) < 0 ? -1 : 1;
                }
            }
            else {
                sorted = sort_value(key, body, now, found, kept, bad, format, checked);
                Py_DECREF(body);
            }
        }
        Py_DECREF(raw);
        Py_DECREF(key);
        if (sorted <= 0) {
            goto surprise;
        }
    }
    return bad;
surprise: /* an Exception is one (as in Python): the caller decodes each value on its own */
    Py_DECREF(bad);
    if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception)) {
        return NULL; /* KeyboardInterrupt, SystemExit: not ours to swallow */
    }
    PyErr_Clear();
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"bind_entry", bind_entry, METH_O, "Set the entry class the hit serves."},
    {"fresh_values", (PyCFunction)(void (*)(void))fresh_values, METH_FASTCALL,
     "codec.fresh_values' loop: the keys whose bytes are not an envelope, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "cachewise._speedups",
    .m_doc = "The compiled L1 hit of cached functions, the L1 entry's storage, bulk decoding.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    str_table = PyUnicode_InternFromString("_cw_table");
    empty_tuple = PyTuple_New(0);
    if (str_table == NULL || empty_tuple == NULL) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL) {
        return NULL;
    }
    PyObject *type = PyType_FromSpec(&hit_spec);
    if (type == NULL || PyModule_AddObject(module, "HitWrapper", type) < 0) {
        Py_XDECREF(type);
        Py_DECREF(module);
        return NULL;
    }
    type = probe_type = PyType_FromSpec(&probe_spec);
    if (type == NULL || PyModule_AddObject(module, "HitProbe", Py_NewRef(type)) < 0) {
        Py_XDECREF(type);
        Py_DECREF(module);
        return NULL;
    }
    /* What _compiled.py checks: a build of older C beside newer Python is not used. */
    if (PyModule_AddIntConstant(module, "VERSION", 5) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    type = PyType_FromSpec(&fields_spec);
    fields_type = (PyTypeObject *)type;
    if (type == NULL || PyModule_AddObject(module, "EntryFields", Py_NewRef(type)) < 0) {
        Py_XDECREF(type);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
