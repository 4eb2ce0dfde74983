/* ``fresh_values``: the loop of codec.fresh_values (a bulk read's decoding and checks per
 * value), compiled. See _speedups.c. */
#include "_speedups.h"

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
#define COPIED_VALUE 4096         /* bytes: a value up to this size is decoded from a copy */

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

/* The value after an untagged envelope's header (``h``), decoded by ``unpackb`` with
 * ``argv[1:]`` as its keyword arguments: a new reference, or NULL with msgpack's error. */
static PyObject *
header_value(PyObject *raw, const Header *h, PyObject *unpackb, PyObject **argv,
             PyObject *kwnames)
{
    /* A small value's bytes are copied: msgpack reads a bytes object in place, and asking a
     * view for its buffer costs more than the copy (0.1 µs a value, a tenth of a bulk read's
     * decoding). A large one is read through a view, which costs the same at any size. */
    const char *start = PyBytes_AS_STRING(raw) + h->value_at;
    Py_ssize_t size = PyBytes_GET_SIZE(raw) - h->value_at;
    PyObject *bytes = size <= COPIED_VALUE ? PyBytes_FromStringAndSize(start, size)
                                           : PyMemoryView_FromMemory((char *)start, size,
                                                                     PyBUF_READ);
    if (bytes == NULL) {
        return NULL;
    }
    argv[0] = bytes;
    PyObject *value = PyObject_Vectorcall(unpackb, argv, 1, kwnames);
    Py_DECREF(bytes);
    return value;
}

/* The value of ``raw`` if it is an untagged envelope of ``format`` fresh at server time
 * ``now`` (ms), read by its header: a new reference. NULL without an error when it is not
 * one, not fresh, or its value does not decode (the caller's Python way decides those); NULL
 * with an error only at one that is not an ``Exception``. For the lone-caller fast path. */
CW_INTERNAL PyObject *
cw_fresh_value(PyObject *raw, double now, unsigned long long format, PyObject *unpackb,
               PyObject **argv, PyObject *kwnames)
{
    Header h;
    if (!PyBytes_CheckExact(raw) || !read_header(raw, format, &h) || !(now < (double)h.fresh)) {
        return NULL;
    }
    PyObject *value = header_value(raw, &h, unpackb, argv, kwnames);
    if (value == NULL && PyErr_ExceptionMatches(PyExc_Exception)) {
        PyErr_Clear();
    }
    return value;
}

/* One untagged envelope read by its header: msgpack decodes the value alone (to the end of
 * ``raw``: a value that ends early or runs past it is undecodable, as when decoded whole).
 * 1 sorted, -1 an error. */
static int
sort_untagged(PyObject *key, PyObject *raw, const Header *h, double now, PyObject *found,
              PyObject *kept, PyObject *bad, PyObject *format, PyObject *unpackb,
              PyObject **argv, PyObject *kwnames)
{
    PyObject *value = header_value(raw, h, unpackb, argv, kwnames);
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
PyObject *
cw_fresh_values(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
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
