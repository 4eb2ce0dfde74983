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
 * ``fresh_values`` is the loop of codec.fresh_values (a bulk read's checks per value);
 * ``read_sync`` (from ``bind_lone``) the lone-caller fast path of a sync shared-tier read
 * (one GET, its reply).
 *
 * The parts, one file each: _speedups_hit.c (``HitWrapper``, ``HitProbe``), _speedups_entry.c
 * (``EntryFields``, ``bind_entry``), _speedups_bulk.c (``fresh_values``), _speedups_lone.c
 * and _speedups_probe.c (``bind_lone``, the compiled ``read_sync``), _speedups_front.c (``bind_front``, the compiled
 * ``Cache.get_or_load``); _speedups.h what they
 * share; this file the module.
 *
 * ``EntryFields`` holds an entry's deadlines and counters as C numbers: in a class with
 * ``__slots__`` each is an object of its own (a float is 24 bytes), which made them a third
 * of what an L1 entry costs. ``core.Entry`` subclasses it (or, without the extension, a class
 * with the same fields as slots).
 */
#include "_speedups.h"

static PyMethodDef module_methods[] = {
    {"bind_entry", cw_bind_entry, METH_O, "Set the entry class the hit serves."},
    {"fresh_values", (PyCFunction)(void (*)(void))cw_fresh_values, METH_FASTCALL,
     "codec.fresh_values' loop: the keys whose bytes are not an envelope, or None."},
    {"bind_lone", cw_bind_lone, METH_O,
     "Set what the compiled read_sync reads and calls (engine/lone.py); returns it."},
    {"bind_front", (PyCFunction)(void (*)(void))cw_bind_front, METH_FASTCALL,
     "The compiled Cache.get_or_load, Python's given as its fallback (cache.py)."},
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
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL) {
        return NULL;
    }
    /* VERSION is what _compiled.py checks: a build of older C beside newer Python is not used. */
    if (cw_add_hit_types(module) < 0 || cw_add_entry_fields(module) < 0 ||
        PyModule_AddIntConstant(module, "VERSION", 9) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
