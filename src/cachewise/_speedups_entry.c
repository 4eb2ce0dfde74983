/* ``EntryFields``: an L1 entry's storage, its deadlines and counters as C numbers (in a class
 * with ``__slots__`` each is an object of its own: a float is 24 bytes). ``core.Entry``
 * subclasses it without storage of its own; ``bind_entry`` tells the hit that class. */
#include "_speedups.h"

PyTypeObject *cw_entry_type = NULL;
static PyTypeObject *fields_type = NULL; /* EntryFields */
static PyObject *empty_tuple = NULL;
static PyObject *str_name_of = NULL; /* "name_of", interned */

/* EntryFields(value, fresh_until, stale_until, early_at, load_time, full_key, l1_key,
 *             tags=(), refresh_at=None, table=None): refresh_at None is fresh_until. The full
 * key is kept as its hash, not as text (the string was a fifth of an entry's memory): the
 * entry hashes as its key and equals it, and its table names it (``core.Entry.full_key``). */
static int
fields_init(EntryFields *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"value", "fresh_until", "stale_until", "early_at", "load_time",
                            "full_key", "l1_key", "tags", "refresh_at", "table", NULL};
    PyObject *value, *full_key, *l1_key, *tags = empty_tuple, *refresh_at = Py_None;
    PyObject *table = Py_None;
    double fresh_until, stale_until, early_at, load_time;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OddddOO|OOO:Entry", names, &value,
                                     &fresh_until, &stale_until, &early_at, &load_time,
                                     &full_key, &l1_key, &tags, &refresh_at, &table)) {
        return -1;
    }
    double refresh = fresh_until;
    if (refresh_at != Py_None) {
        refresh = PyFloat_AsDouble(refresh_at);
        if (refresh == -1.0 && PyErr_Occurred()) {
            return -1;
        }
    }
    if (!PyUnicode_Check(full_key)) {
        PyErr_Format(PyExc_TypeError, "Entry: full_key must be a str, not %.100s",
                     Py_TYPE(full_key)->tp_name);
        return -1;
    }
    Py_hash_t hash = PyObject_Hash(full_key);
    if (hash == -1) {
        return -1;
    }
    Py_XSETREF(self->value, Py_NewRef(value));
    self->key_hash = hash;
    Py_XSETREF(self->l1_key, Py_NewRef(l1_key));
    Py_XSETREF(self->tags, Py_NewRef(tags));
    Py_XSETREF(self->table, Py_NewRef(table));
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

/* The objects an entry holds, listed once for the collector's two walks over them. */
#define FIELD_OBJECTS(DO) DO(value) DO(l1_key) DO(tags) DO(table)

static int
fields_traverse(EntryFields *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    FIELD_OBJECTS(CW_VISIT)
    return 0;
}

static int
fields_clear(EntryFields *self)
{
    FIELD_OBJECTS(CW_CLEAR)
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

static Py_hash_t
fields_hash(EntryFields *self)
{
    return self->key_hash;
}

/* Its full key, as its table names it. */
static PyObject *
full_key_of(EntryFields *self)
{
    PyObject *name_of = PyObject_GetAttr(self->table, str_name_of);
    if (name_of == NULL) {
        return NULL;
    }
    PyObject *name = PyObject_CallOneArg(name_of, self->l1_key);
    Py_DECREF(name_of);
    return name;
}

/* An entry equals its full key, and an entry of the same key (of one table: the same
 * in-process key, which has one text; else the same name). */
static PyObject *
fields_richcompare(EntryFields *self, PyObject *other, int op)
{
    if ((op != Py_EQ && op != Py_NE) ||
        !(PyUnicode_Check(other) || PyObject_TypeCheck(other, fields_type))) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    if ((PyObject *)self == other) {
        return PyBool_FromLong(op == Py_EQ);
    }
    if (!PyUnicode_Check(other)) {
        EntryFields *them = (EntryFields *)other;
        if (self->key_hash != them->key_hash) {
            return PyBool_FromLong(op == Py_NE);
        }
        if (self->table == them->table) {
            return PyObject_RichCompare(self->l1_key, them->l1_key, op);
        }
    }
    else {
        Py_hash_t hash = PyObject_Hash(other); /* a str subclass may define its own */
        if (hash == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (hash != self->key_hash) {
            return PyBool_FromLong(op == Py_NE);
        }
    }
    PyObject *mine = full_key_of(self);
    if (mine == NULL) {
        return NULL;
    }
    PyObject *theirs = PyUnicode_Check(other) ? Py_NewRef(other)
                                              : full_key_of((EntryFields *)other);
    PyObject *result = theirs == NULL ? NULL : PyObject_RichCompare(mine, theirs, op);
    Py_DECREF(mine);
    Py_XDECREF(theirs);
    return result;
}

#define FIELD(name, kind) {#name, kind, offsetof(EntryFields, name), 0, NULL}

static PyMemberDef fields_members[] = {
    FIELD(value, T_OBJECT_EX),
    {"key_hash", T_PYSSIZET, offsetof(EntryFields, key_hash), READONLY, NULL},
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
    {Py_tp_hash, fields_hash},
    {Py_tp_richcompare, fields_richcompare},
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
PyObject *
cw_bind_entry(PyObject *module, PyObject *cls)
{
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, fields_type) ||
        ((PyTypeObject *)cls)->tp_basicsize != fields_type->tp_basicsize) {
        PyErr_Format(PyExc_TypeError,
                     "bind_entry: expected a subclass of EntryFields with __slots__ = (), got %R",
                     cls);
        return NULL;
    }
    Py_XSETREF(cw_entry_type, (PyTypeObject *)Py_NewRef(cls));
    Py_RETURN_NONE;
}

int
cw_add_entry_fields(PyObject *module)
{
    empty_tuple = PyTuple_New(0);
    str_name_of = PyUnicode_InternFromString("name_of");
    if (empty_tuple == NULL || str_name_of == NULL) {
        return -1;
    }
    PyObject *type = PyType_FromSpec(&fields_spec);
    fields_type = (PyTypeObject *)type;
    if (type == NULL || PyModule_AddObject(module, "EntryFields", Py_NewRef(type)) < 0) {
        Py_XDECREF(type);
        return -1;
    }
    return 0;
}
