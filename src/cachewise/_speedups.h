/* What the parts of ``cachewise._speedups`` share (see _speedups.c for why it exists). */
#ifndef CACHEWISE_SPEEDUPS_H
#define CACHEWISE_SPEEDUPS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <time.h>

/* Shared by the parts, not exported from the module's library. */
#if defined(__GNUC__)
#define CW_INTERNAL __attribute__((visibility("hidden")))
#else
#define CW_INTERNAL
#endif

/* One field of a type's list of objects (``*_OBJECTS(DO)``), for its collector walks: visited
 * in tp_traverse, cleared in tp_clear (``self`` and, to visit, ``visit`` and ``arg`` in scope). */
#define CW_VISIT(field) Py_VISIT(self->field);
#define CW_CLEAR(field) Py_CLEAR(self->field);

typedef struct {
    PyObject_HEAD
    PyObject *value;
    Py_hash_t key_hash; /* hash(full key): L1's index holds the entry as its own key */
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

/* core.Entry, the subclass of EntryFields the hit serves (set by bind_entry). */
extern CW_INTERNAL PyTypeObject *cw_entry_type;

/* Each part adds its types to the module: 0, or -1 with an exception set. */
CW_INTERNAL int cw_add_hit_types(PyObject *module);
CW_INTERNAL int cw_add_entry_fields(PyObject *module);

CW_INTERNAL PyObject *cw_bind_entry(PyObject *module, PyObject *cls);
CW_INTERNAL PyObject *cw_fresh_values(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
CW_INTERNAL PyObject *cw_fresh_value(PyObject *raw, double now, unsigned long long format,
                                     PyObject *unpackb, PyObject **argv, PyObject *kwnames);
CW_INTERNAL PyObject *cw_bind_lone(PyObject *module, PyObject *parts);
/* The value of an L1 entry a read serves at once (``Reads.served_now``), or NULL (with an
 * exception set on an error): _speedups_lone.c. */
CW_INTERNAL PyObject *cw_l1_served(PyObject *engine, PyObject *target);
CW_INTERNAL PyObject *cw_bind_front(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

/* CLOCK_MONOTONIC in seconds, as time.monotonic converts it (integer nanoseconds, then a
 * double): 0, or -1 with an exception set. */
static inline int
cw_monotonic(double *now)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    *now = (double)((long long)ts.tv_sec * 1000000000LL + ts.tv_nsec) / 1e9;
    return 0;
}

#endif
