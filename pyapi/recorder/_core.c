/* _core.c - recorder's Python extension: the C core, called without ctypes.
 *
 * The core's sources (probes/src) are compiled into this module (setup.py),
 * so `pip install .` is all a Python program needs, and a tracer finds this
 * module's USDT notes and registry exactly as it finds librecorder.so's.
 *
 * A record holds addresses, not copies: its format, its "file:line" and its
 * string arguments must stay readable for as long as the ring may be read
 * (dump, a fatal signal, a tracer reading /proc/PID/mem). So:
 *   - formats and locations are kept forever, once each (interned by text);
 *   - string arguments are kept alive by a ring of KEPT references: the
 *     newest KEPT strings recorded are exact, older ones may show another
 *     text or <unreadable> in a late dump (never a crash: the core reads
 *     strings with process_vm_readv). A string of RECORDER_STRING_MAX
 *     bytes or more is kept as a copy of the part readers show, so the
 *     ring holds at most KEPT * RECORDER_STRING_MAX bytes of text.
 * Everything here runs under the GIL, which serializes these tables; the
 * core's rings themselves are lock-free per CPU. The hot path allocates
 * nothing: a format, a location and a string are looked up in caches that
 * hold strong references, so the pointers they compare cannot be reused.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>
#include <string.h>
#include <limits.h>

/* CPython 3.11: the caller's code and instruction, read from its
 * interpreter frame. The public route (PyEval_GetFrame) makes a frame
 * object for every Python call that records, ~100 ns and an allocation. */
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
#define Py_BUILD_CORE 1
#include <internal/pycore_frame.h>
#undef Py_BUILD_CORE
#define RECORDER_INTERPRETER_FRAME 1
#endif

#include "internal.h"     /* the core compiled in: recorder.h, RECORDER_STRING_MAX */

#define KEPT            (1u << 16)      /* string arguments kept alive */
#define WHERE_SLOTS     1024            /* (code, instruction) -> location */
#define FORMAT_SLOTS    256             /* format object -> parsed format */
#define DEFAULT_SIZE    64

/* What a conversion accepts. */
enum conversion { CONV_INT, CONV_FLOAT, CONV_STRING, CONV_POINTER };

/* A parsed format, kept forever (records point at `text`). */
typedef struct {
    PyObject_HEAD
    const char *text;                   /* inside `bytes` */
    PyObject *bytes;
    PyObject *key;                      /* the format as given */
    unsigned count;                     /* arguments it consumes */
    unsigned char conversions[RECORDER_MAX_ARGS];
    char letters[RECORDER_MAX_ARGS];    /* for error messages */
} FormatObject;

static PyTypeObject FormatType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "recorder._core.Format",
    .tp_basicsize = sizeof(FormatObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A parsed printf-style format (internal).",
};

static PyObject *formats;       /* str -> FormatObject, never shrinks */
static PyObject *places;        /* "file:line" str -> bytes, never shrinks */
static PyObject *recorders;     /* name -> Recorder, for record(name, ...) */

static struct {
    PyObject *key;              /* strong reference: a str */
    FormatObject *format;
} format_cache[FORMAT_SLOTS];

static struct {
    PyCodeObject *code;         /* strong reference */
    int lasti;
    const char *where;
} where_cache[WHERE_SLOTS];

static PyObject *kept[KEPT];
static unsigned kept_next;

static const char *const NONE_TEXT = "None";
static const char *const TRUE_TEXT = "True";
static const char *const FALSE_TEXT = "False";

/* ------------------------------------------------------------------------ */
/* Formats                                                                  */
/* ------------------------------------------------------------------------ */

static int conversion_of(char letter)
{
    switch (letter) {
    case 'd': case 'i': case 'o': case 'u': case 'x': case 'X': case 'c':
        return CONV_INT;
    case 'f': case 'F': case 'e': case 'E': case 'g': case 'G': case 'a':
    case 'A':
        return CONV_FLOAT;
    case 's':
        return CONV_STRING;
    case 'p':
        return CONV_POINTER;
    default:
        return -1;
    }
}

/* Walks the format the way the core's formatter does (format.c). */
static FormatObject *parse_format(PyObject *key)
{
    Py_ssize_t length;
    const char *text = PyUnicode_AsUTF8AndSize(key, &length);
    if (!text)
        return NULL;
    if ((size_t)length != strlen(text)) {
        PyErr_SetString(PyExc_ValueError,
                        "recorder: format contains a NUL character");
        return NULL;
    }
    FormatObject *format = PyObject_New(FormatObject, &FormatType);
    if (!format)
        return NULL;
    format->bytes = PyBytes_FromStringAndSize(text, length);
    if (!format->bytes) {
        Py_DECREF(format);
        return NULL;
    }
    format->text = PyBytes_AS_STRING(format->bytes);
    Py_INCREF(key);
    format->key = key;
    format->count = 0;
    for (const char *p = text; *p; p++) {
        if (*p != '%')
            continue;
        const char *start = p++;
        while (*p && strchr("-+ #0'", *p))
            p++;
        int stars = 0;
        if (*p == '*') {
            stars++;
            p++;
        }
        while (*p >= '0' && *p <= '9')
            p++;
        if (*p == '.') {
            p++;
            if (*p == '*') {
                stars++;
                p++;
            }
            while (*p >= '0' && *p <= '9')
                p++;
        }
        while (*p && strchr("hlLqjzt", *p))
            p++;
        if (*p == '%' && p == start + 1)
            continue;
        int conversion = *p ? conversion_of(*p) : -1;
        if (conversion < 0) {
            PyObject *bad = PyUnicode_DecodeUTF8(
                start, p - start + (*p != 0), "replace");
            if (bad) {
                PyErr_Format(PyExc_TypeError,
                             "recorder: format %R: unsupported conversion "
                             "'%U'", key, bad);
                Py_DECREF(bad);
            }
            goto fail;
        }
        if (format->count + stars + 1 > RECORDER_MAX_ARGS) {
            PyErr_Format(PyExc_TypeError,
                         "recorder: format %R takes more than %d arguments",
                         key, RECORDER_MAX_ARGS);
            goto fail;
        }
        for (int s = 0; s < stars; s++) {
            format->letters[format->count] = '*';
            format->conversions[format->count++] = CONV_INT;
        }
        format->letters[format->count] = *p;
        format->conversions[format->count++] = (unsigned char)conversion;
    }
    return format;
fail:
    Py_DECREF(format->key);
    Py_DECREF(format->bytes);
    Py_DECREF(format);
    return NULL;
}

/* The parsed format for `key` (borrowed: kept forever in `formats`). */
static FormatObject *lookup_format(PyObject *key)
{
    size_t slot = ((uintptr_t)key >> 4) % FORMAT_SLOTS;
    if (format_cache[slot].key == key)
        return format_cache[slot].format;
    if (!PyUnicode_Check(key)) {
        PyErr_Format(PyExc_TypeError,
                     "recorder: the format must be a str, not %.100s",
                     Py_TYPE(key)->tp_name);
        return NULL;
    }
    FormatObject *format = (FormatObject *)PyDict_GetItemWithError(formats,
                                                                   key);
    if (!format) {
        if (PyErr_Occurred())
            return NULL;
        format = parse_format(key);
        if (!format)
            return NULL;
        int failed = PyDict_SetItem(formats, key, (PyObject *)format);
        Py_DECREF(format);      /* `formats` holds it */
        if (failed)
            return NULL;
    }
    if (!PyUnicode_CheckExact(key))
        return format;          /* a subclass may define __eq__: no cache */
    /* Both fields before the old key goes: its release may run code that
     * switches threads, which must not see the new key with the old format. */
    PyObject *old = format_cache[slot].key;
    Py_INCREF(key);
    format_cache[slot].key = key;
    format_cache[slot].format = format;
    Py_XDECREF(old);
    return format;
}

/* ------------------------------------------------------------------------ */
/* Locations                                                                */
/* ------------------------------------------------------------------------ */

/* The kept C string for `text` ("file:line"), interned forever. */
static const char *intern_place(PyObject *text)
{
    PyObject *bytes = PyDict_GetItemWithError(places, text);
    if (!bytes) {
        if (PyErr_Occurred())
            return NULL;
        bytes = PyUnicode_AsEncodedString(text, "utf-8", "surrogateescape");
        if (!bytes)
            return NULL;
        int failed = PyDict_SetItem(places, text, bytes);
        Py_DECREF(bytes);
        if (failed)
            return NULL;
    }
    return PyBytes_AS_STRING(bytes);
}

/* "file:line" of the Python code calling into this module. */
static const char *caller_place(void)
{
#ifdef RECORDER_INTERPRETER_FRAME
    _PyInterpreterFrame *frame = PyThreadState_GET()->cframe->current_frame;
    while (frame && _PyFrame_IsIncomplete(frame))
        frame = frame->previous;
    if (!frame)
        return "<unknown>";
    PyCodeObject *code = frame->f_code;
    int lasti = _PyInterpreterFrame_LASTI(frame);
    Py_INCREF(code);
#else
    PyFrameObject *frame = PyEval_GetFrame();
    if (!frame)
        return "<unknown>";
    PyCodeObject *code = PyFrame_GetCode(frame);
    int lasti = PyFrame_GetLasti(frame);
#endif
    size_t slot = (((uintptr_t)code >> 4) ^ (unsigned)lasti * 2654435761u)
                  % WHERE_SLOTS;
    if (where_cache[slot].code == code && where_cache[slot].lasti == lasti) {
        Py_DECREF(code);
        return where_cache[slot].where;
    }
#ifdef RECORDER_INTERPRETER_FRAME
    int line = PyCode_Addr2Line(code, lasti * (int)sizeof(_Py_CODEUNIT));
#else
    int line = PyFrame_GetLineNumber(frame);
#endif
    PyObject *text = PyUnicode_FromFormat("%U:%d", code->co_filename, line);
    const char *where = text ? intern_place(text) : NULL;
    Py_XDECREF(text);
    if (!where) {
        Py_DECREF(code);
        return NULL;
    }
    PyCodeObject *old = where_cache[slot].code;
    where_cache[slot].code = code;              /* takes our reference */
    where_cache[slot].lasti = lasti;
    where_cache[slot].where = where;
    Py_XDECREF(old);
    return where;
}

/* ------------------------------------------------------------------------ */
/* Recording                                                                */
/* ------------------------------------------------------------------------ */

static void keep(PyObject *object)
{
    unsigned slot = kept_next++ % KEPT;
    Py_INCREF(object);
    Py_XSETREF(kept[slot], object);
}

static int argument_error(FormatObject *format, Py_ssize_t index,
                          PyObject *value, const char *wanted)
{
    PyErr_Format(PyExc_TypeError,
                 "recorder: format %R: argument %zd (%%%c) needs %s, "
                 "not %.100s", format->key, index + 1,
                 format->letters[index], wanted, Py_TYPE(value)->tp_name);
    return -1;
}

static int to_integer(FormatObject *format, Py_ssize_t index, PyObject *value,
                      __u64 *slot)
{
    if (!PyLong_Check(value))
        return argument_error(format, index, value, "an int");
    int overflow;
    long long signed_value = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (!overflow) {
        if (signed_value == -1 && PyErr_Occurred())
            return -1;
        *slot = (__u64)signed_value;
        return 0;
    }
    unsigned long long unsigned_value = PyLong_AsUnsignedLongLong(value);
    if (unsigned_value == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Format(PyExc_OverflowError,
                     "recorder: format %R: argument %zd does not fit in 64 "
                     "bits", format->key, index + 1);
        return -1;
    }
    *slot = unsigned_value;
    return 0;
}

static int to_string(FormatObject *format, Py_ssize_t index, PyObject *value,
                     __u64 *slot)
{
    const char *text;
    Py_ssize_t length;
    if (PyUnicode_Check(value)) {
        text = PyUnicode_AsUTF8AndSize(value, &length);
        if (!text)
            return -1;
    } else if (PyBytes_Check(value)) {
        text = PyBytes_AS_STRING(value);
        length = PyBytes_GET_SIZE(value);
    } else if (value == Py_None) {
        *slot = (uintptr_t)NONE_TEXT;
        return 0;
    } else if (PyBool_Check(value)) {
        *slot = (uintptr_t)(value == Py_True ? TRUE_TEXT : FALSE_TEXT);
        return 0;
    } else {
        return argument_error(format, index, value, "a str, bytes or None");
    }
    if (memchr(text, 0, (size_t)length)) {
        PyErr_Format(PyExc_ValueError,
                     "recorder: format %R: argument %zd contains a NUL "
                     "character", format->key, index + 1);
        return -1;
    }
    if (length >= RECORDER_STRING_MAX) {
        /* No reader shows more (dump: RECORDER_STRING_MAX, BPF less): keep
         * a copy of what can be shown, not a string of any size. */
        Py_ssize_t cut = RECORDER_STRING_MAX - 1;
        while (cut > 0 && ((unsigned char)text[cut] & 0xC0) == 0x80)
            cut--;              /* not inside a UTF-8 character */
        PyObject *shown = PyBytes_FromStringAndSize(text, cut);
        if (!shown)
            return -1;
        keep(shown);
        Py_DECREF(shown);
        *slot = (uintptr_t)PyBytes_AS_STRING(shown);
        return 0;
    }
    keep(value);
    *slot = (uintptr_t)text;
    return 0;
}

/* Converts the arguments and records them; 0, or -1 with an exception. */
static int record_into(struct recorder_topic *topic, unsigned flags,
                       const char *where, PyObject *key,
                       PyObject *const *args, Py_ssize_t nargs)
{
    FormatObject *format = lookup_format(key);
    if (!format)
        return -1;
    if ((size_t)nargs != format->count) {
        PyErr_Format(PyExc_TypeError,
                     "recorder: format %R takes %u argument%s, got %zd",
                     format->key, format->count,
                     format->count == 1 ? "" : "s", nargs);
        return -1;
    }
    __u64 slots[RECORDER_MAX_ARGS];
    __u32 kinds = 0;
    for (Py_ssize_t i = 0; i < nargs; i++) {
        PyObject *value = args[i];
        unsigned kind = RECORDER_ARG_INT;
        switch (format->conversions[i]) {
        case CONV_INT:
            if (to_integer(format, i, value, &slots[i]))
                return -1;
            break;
        case CONV_FLOAT: {
            double number;
            if (PyFloat_CheckExact(value))
                number = PyFloat_AS_DOUBLE(value);
            else if (PyFloat_Check(value) || PyLong_Check(value)) {
                number = PyFloat_AsDouble(value);
                if (number == -1.0 && PyErr_Occurred())
                    return -1;
            } else
                return argument_error(format, i, value, "a float or an int");
            slots[i] = recorder_double_bits(number);
            kind = RECORDER_ARG_DOUBLE;
            break;
        }
        case CONV_STRING:
            if (to_string(format, i, value, &slots[i]))
                return -1;
            kind = RECORDER_ARG_STRING;
            break;
        default:        /* CONV_POINTER */
            if (value == Py_None)
                slots[i] = 0;
            else if (!PyLong_Check(value))
                return argument_error(format, i, value, "an int or None");
            else if (to_integer(format, i, value, &slots[i]))
                return -1;
            kind = RECORDER_ARG_POINTER;
            break;
        }
        kinds |= kind << (2 * i);
    }
    if (!where && !(where = caller_place()))
        return -1;
    recorder_record_dynamic_flags(topic, flags, where, format->text,
                                  (unsigned)nargs, kinds, slots);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Recorder                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    struct recorder_topic *topic;
    PyObject *name;
} RecorderObject;

static PyTypeObject RecorderType;

static struct recorder_topic *create_topic(PyObject *name, unsigned size,
                                           const char *description)
{
    Py_ssize_t length;
    const char *text = PyUnicode_AsUTF8AndSize(name, &length);
    if (!text)
        return NULL;
    if (length == 0 || strlen(text) != (size_t)length) {
        PyErr_Format(PyExc_ValueError,
                     "recorder: bad topic name %R (empty or with a NUL)", name);
        return NULL;
    }
    struct recorder_topic *topic = recorder_topic_create(text, size,
                                                         description);
    if (!topic)
        PyErr_NoMemory();
    return topic;
}

static PyObject *Recorder_new(PyTypeObject *type, PyObject *args,
                              PyObject *kwargs)
{
    static char *keywords[] = { "name", "size", "description", NULL };
    PyObject *name;
    /* Py_ssize_t, not "I": "I" keeps the low 32 bits (2**32+3 was 3). */
    Py_ssize_t size = DEFAULT_SIZE;
    const char *description = "";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U|ns:Recorder", keywords,
                                     &name, &size, &description))
        return NULL;
    if (size <= 0 || size > (1 << 24)) {
        PyErr_Format(PyExc_ValueError,
                     "recorder: size must be 1..%u records, not %zd",
                     1u << 24, size);
        return NULL;
    }
    struct recorder_topic *topic = create_topic(name, (unsigned)size,
                                                description);
    if (!topic)
        return NULL;
    RecorderObject *self = (RecorderObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->topic = topic;
    Py_INCREF(name);
    self->name = name;
    if (PyDict_SetDefault(recorders, name, (PyObject *)self) == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void Recorder_dealloc(RecorderObject *self)
{
    Py_XDECREF(self->name);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Recorder_record(RecorderObject *self, PyObject *const *args,
                                 Py_ssize_t nargs)
{
    if (self->topic->trace < 0)
        Py_RETURN_NONE;
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError,
                        "recorder: record() needs a format");
        return NULL;
    }
    if (record_into(self->topic, 0, NULL, args[0], args + 1, nargs - 1))
        return NULL;
    Py_RETURN_NONE;
}

/* _record_at(where, flags, format, *args): a record with an explicit
 * location, for the logging bridge and spans made in Python. */
static PyObject *Recorder_record_at(RecorderObject *self,
                                    PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 3 || !PyUnicode_Check(args[0]) || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "recorder: _record_at(where: str, flags: int, "
                        "format: str, *args)");
        return NULL;
    }
    if (self->topic->trace < 0)
        Py_RETURN_NONE;
    const char *where = intern_place(args[0]);
    unsigned long flags = PyLong_AsUnsignedLong(args[1]);
    if (!where || (flags == (unsigned long)-1 && PyErr_Occurred()))
        return NULL;
    if (record_into(self->topic, (unsigned)flags & 0xff, where, args[2],
                    args + 3, nargs - 3))
        return NULL;
    Py_RETURN_NONE;
}

/* Pickled by name, size and description: a Recorder passed to another
 * process (multiprocessing) is that process's topic of the same name. */
static PyObject *Recorder_reduce(RecorderObject *self, PyObject *unused)
{
    (void)unused;
    return Py_BuildValue("O(OIs)", (PyObject *)Py_TYPE(self), self->name,
                         self->topic->size, self->topic->description);
}

static PyObject *Recorder_repr(RecorderObject *self)
{
    return PyUnicode_FromFormat("recorder.Recorder(%R, size=%u)", self->name,
                                self->topic->size);
}

static PyObject *Recorder_get_name(RecorderObject *self, void *closure)
{
    (void)closure;
    Py_INCREF(self->name);
    return self->name;
}

static PyObject *Recorder_get_size(RecorderObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLong(self->topic->size);
}

static PyObject *Recorder_get_description(RecorderObject *self, void *closure)
{
    (void)closure;
    return PyUnicode_DecodeUTF8(self->topic->description,
                                strlen(self->topic->description),
                                "replace");
}

static PyObject *Recorder_get_id(RecorderObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLong(self->topic->id);
}

static PyObject *Recorder_get_armed(RecorderObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(__atomic_load_n(&self->topic->armed,
                                           __ATOMIC_RELAXED) != 0);
}

static PyObject *Recorder_get_trace(RecorderObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromLongLong(self->topic->trace);
}

static int Recorder_set_trace(RecorderObject *self, PyObject *value,
                              void *closure)
{
    (void)closure;
    if (!value || !PyLong_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "recorder: trace is an int");
        return -1;
    }
    long long level = PyLong_AsLongLong(value);
    if (level == -1 && PyErr_Occurred())
        return -1;
    self->topic->trace = level;
    return 0;
}

static PyMethodDef Recorder_methods[] = {
    { "record", (PyCFunction)(void (*)(void))Recorder_record, METH_FASTCALL,
      "record(format, *args)\n--\n\n"
      "Record `format` (printf syntax) with `args` into this topic's ring,\n"
      "with the caller's file and line. Arguments: int, float, bool, None,\n"
      "str, bytes; each must suit its conversion (%d: int, %f: float or\n"
      "int, %s: str, bytes, None or bool, %p: int or None), or TypeError.\n"
      "A disabled topic (trace < 0) checks nothing and costs one test.\n\n"
      ">>> net = Recorder('doc_net', 16)\n"
      ">>> net.record('sent %d bytes to %s', 42, 'example.org')\n"
      ">>> net.record('sent %d bytes', 'x')\n"
      "Traceback (most recent call last):\n"
      "  ...\n"
      "TypeError: recorder: format 'sent %d bytes': argument 1 (%d) "
      "needs an int, not str\n" },
    { "_record_at", (PyCFunction)(void (*)(void))Recorder_record_at,
      METH_FASTCALL,
      "_record_at(where, flags, format, *args)\n--\n\n"
      "record() with an explicit 'file:line' and entry flags (internal)." },
    { "__reduce__", (PyCFunction)Recorder_reduce, METH_NOARGS,
      "Pickle by name, size and description." },
    { NULL, NULL, 0, NULL },
};

static PyGetSetDef Recorder_getset[] = {
    { "name", (getter)Recorder_get_name, NULL, "The topic's name.", NULL },
    { "size", (getter)Recorder_get_size, NULL,
      "Records the ring keeps per CPU.", NULL },
    { "description", (getter)Recorder_get_description, NULL,
      "What the topic records.", NULL },
    { "id", (getter)Recorder_get_id, NULL,
      "The topic's index in the registry (entries carry it).", NULL },
    { "armed", (getter)Recorder_get_armed, NULL,
      "True while a tracer wants this topic's records.", NULL },
    { "trace", (getter)Recorder_get_trace, (setter)Recorder_set_trace,
      "<0: off, 0: record, >0: record and print on stderr "
      "(see trace_set).", NULL },
    { NULL, NULL, NULL, NULL, NULL },
};

static PyTypeObject RecorderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "recorder.Recorder",
    .tp_basicsize = sizeof(RecorderObject),
    .tp_dealloc = (destructor)Recorder_dealloc,
    .tp_repr = (reprfunc)Recorder_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc =
        "Recorder(name, size=64, description='')\n--\n\n"
        "A topic of the flight recorder: a ring keeping the last `size`\n"
        "records per CPU, in the same C core (and probes) as C programs.\n"
        "Recorders of the same name share one ring (the first size wins).\n\n"
        ">>> net = Recorder('doc_network', size=1024, description='network')\n"
        ">>> net.record('sent %d bytes to %s', 512, 'example.org')\n"
        ">>> net.name, net.size\n"
        "('doc_network', 1024)\n",
    .tp_methods = Recorder_methods,
    .tp_getset = Recorder_getset,
    .tp_new = Recorder_new,
};

/* The recorder called `name`, made with the default size on first use
 * (borrowed reference). */
static RecorderObject *recorder_named(PyObject *name)
{
    PyObject *found = PyDict_GetItemWithError(recorders, name);
    if (found || PyErr_Occurred())
        return (RecorderObject *)found;
    PyObject *made = PyObject_CallOneArg((PyObject *)&RecorderType, name);
    if (!made)
        return NULL;
    Py_DECREF(made);            /* `recorders` holds it */
    return (RecorderObject *)PyDict_GetItemWithError(recorders, name);
}

/* ------------------------------------------------------------------------ */
/* Spans                                                                    */
/* ------------------------------------------------------------------------ */

/* A span records "begin" (flag RECORDER_ENTRY_SPAN_BEGIN) when entered and
 * "end" (RECORDER_ENTRY_SPAN_END, args[0] = duration in ns) when left, in the
 * topic named after the span. */
typedef struct {
    PyObject_HEAD
    RecorderObject *recorder;
    const char *where;
    __u64 start;
} SpanObject;

static PyObject *span_begin_format, *span_end_format, *span_raised_format;

static PyObject *Span_new(PyTypeObject *type, PyObject *args,
                          PyObject *kwargs)
{
    static char *keywords[] = { "name", "where", NULL };
    PyObject *name, *where = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|U:span", keywords,
                                     &name, &where))
        return NULL;
    RecorderObject *recorder;
    if (PyObject_TypeCheck(name, &RecorderType))
        recorder = (RecorderObject *)name;
    else if (PyUnicode_Check(name))
        recorder = recorder_named(name);
    else {
        PyErr_Format(PyExc_TypeError,
                     "recorder: span() takes a name or a Recorder, not %.100s",
                     Py_TYPE(name)->tp_name);
        return NULL;
    }
    if (!recorder)
        return NULL;
    const char *place = where ? intern_place(where) : caller_place();
    if (!place)
        return NULL;
    SpanObject *self = (SpanObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    Py_INCREF(recorder);
    self->recorder = recorder;
    self->where = place;
    return (PyObject *)self;
}

static void Span_dealloc(SpanObject *self)
{
    Py_XDECREF(self->recorder);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Span_enter(SpanObject *self, PyObject *unused)
{
    (void)unused;
    struct recorder_topic *topic = self->recorder->topic;
    if (topic->trace >= 0
        && record_into(topic, RECORDER_ENTRY_SPAN_BEGIN, self->where,
                       span_begin_format, NULL, 0))
        return NULL;
    self->start = recorder_now();
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *Span_exit(SpanObject *self, PyObject *const *args,
                           Py_ssize_t nargs)
{
    __u64 duration = recorder_now() - self->start;
    struct recorder_topic *topic = self->recorder->topic;
    if (topic->trace < 0)
        Py_RETURN_FALSE;
    PyObject *values[2];
    values[0] = PyLong_FromUnsignedLongLong(duration);
    if (!values[0])
        return NULL;
    int failed;
    if (nargs >= 1 && args[0] != Py_None) {
        /* The exception's type name, kept alive with the type. */
        values[1] = PyObject_GetAttrString(args[0], "__qualname__");
        if (!values[1]) {
            Py_DECREF(values[0]);
            return NULL;
        }
        failed = record_into(topic, RECORDER_ENTRY_SPAN_END, self->where,
                             span_raised_format, values, 2);
        Py_DECREF(values[1]);
    } else {
        failed = record_into(topic, RECORDER_ENTRY_SPAN_END, self->where,
                             span_end_format, values, 1);
    }
    Py_DECREF(values[0]);
    if (failed)
        return NULL;
    Py_RETURN_FALSE;
}

static PyObject *Span_get_name(SpanObject *self, void *closure)
{
    (void)closure;
    Py_INCREF(self->recorder->name);
    return self->recorder->name;
}

static PyMethodDef Span_methods[] = {
    { "__enter__", (PyCFunction)Span_enter, METH_NOARGS,
      "Record the span's begin." },
    { "__exit__", (PyCFunction)(void (*)(void))Span_exit, METH_FASTCALL,
      "Record the span's end with its duration in ns." },
    { NULL, NULL, 0, NULL },
};

static PyGetSetDef Span_getset[] = {
    { "name", (getter)Span_get_name, NULL, "The span's topic.", NULL },
    { NULL, NULL, NULL, NULL, NULL },
};

static PyTypeObject SpanType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "recorder.span",
    .tp_basicsize = sizeof(SpanObject),
    .tp_dealloc = (destructor)Span_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc =
        "span(name, where=None)\n--\n\n"
        "A context manager timing its block. Entering records 'begin' in the\n"
        "topic `name` (a Recorder, or made with the default size) with flag\n"
        "RECORDER_ENTRY_SPAN_BEGIN; leaving records 'end %llu ns' (or\n"
        "'end %llu ns, raised %s') with flag RECORDER_ENTRY_SPAN_END and the\n"
        "duration in ns as the first argument, which the tracer turns into\n"
        "latency metrics. `where` overrides the caller's 'file:line'.\n\n"
        ">>> with span('doc_span'):\n"
        "...     pass\n",
    .tp_methods = Span_methods,
    .tp_getset = Span_getset,
    .tp_new = Span_new,
};

/* ------------------------------------------------------------------------ */
/* Module functions                                                         */
/* ------------------------------------------------------------------------ */

static PyObject *module_record(PyObject *module, PyObject *const *args,
                               Py_ssize_t nargs)
{
    (void)module;
    if (nargs < 2 || !PyUnicode_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "recorder: record(topic: str, format: str, *args)");
        return NULL;
    }
    RecorderObject *recorder = recorder_named(args[0]);
    if (!recorder)
        return NULL;
    if (recorder->topic->trace < 0)
        Py_RETURN_NONE;
    if (record_into(recorder->topic, 0, NULL, args[1], args + 2, nargs - 2))
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *module_trace_set(PyObject *module, PyObject *spec)
{
    (void)module;
    Py_ssize_t length;
    const char *text = PyUnicode_AsUTF8AndSize(spec, &length);
    if (!text)
        return NULL;
    /* C would see the spec cut at the NUL: refuse rather than apply part. */
    if (strlen(text) != (size_t)length) {
        PyErr_Format(PyExc_ValueError,
                     "recorder: trace spec %R contains a NUL", spec);
        return NULL;
    }
    int status = recorder_trace_set(text);
    if (status == RECORDER_TRACE_INVALID_NAME) {
        PyErr_Format(PyExc_ValueError,
                     "recorder: invalid topic regex in trace spec %R", spec);
        return NULL;
    }
    if (status == RECORDER_TRACE_INVALID_VALUE) {
        PyErr_Format(PyExc_ValueError,
                     "recorder: invalid value in trace spec %R", spec);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *module_dump(PyObject *module, PyObject *args)
{
    (void)module;
    const char *pattern = "all";
    if (!PyArg_ParseTuple(args, "|s:dump", &pattern))
        return NULL;
    unsigned shown;
    Py_BEGIN_ALLOW_THREADS
    shown = recorder_dump_for(pattern);
    Py_END_ALLOW_THREADS
    return PyLong_FromUnsignedLong(shown);
}

static PyObject *module_topics(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    PyObject *names = PyList_New(0);
    if (!names)
        return NULL;
    for (struct recorder_topic *topic = recorder_registry.topics; topic;
         topic = topic->next) {
        PyObject *name = PyUnicode_DecodeUTF8(topic->name,
                                              strlen(topic->name),
                                              "replace");
        if (!name || PyList_Append(names, name)) {
            Py_XDECREF(name);
            Py_DECREF(names);
            return NULL;
        }
        Py_DECREF(name);
    }
    if (PyList_Reverse(names)) {
        Py_DECREF(names);
        return NULL;
    }
    return names;
}

static PyObject *module_dump_on_signals(PyObject *module, PyObject *args)
{
    (void)module;
    Py_ssize_t add = 0, remove = 0;
    if (!PyArg_ParseTuple(args, "|nn:dump_on_signals", &add, &remove))
        return NULL;
    if (add < 0 || remove < 0 || add > UINT_MAX || remove > UINT_MAX) {
        PyErr_SetString(PyExc_ValueError,
                        "recorder: signal masks must be 0..2**32-1");
        return NULL;
    }
    recorder_dump_on_common_signals((unsigned)add, (unsigned)remove);
    Py_RETURN_NONE;
}

static PyObject *module_now(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyLong_FromUnsignedLongLong(recorder_now());
}

static PyMethodDef module_methods[] = {
    { "record", (PyCFunction)(void (*)(void))module_record, METH_FASTCALL,
      "record(topic, format, *args)\n--\n\n"
      "Record into the topic called `topic` (made with the default size on\n"
      "first use), as Recorder.record does.\n\n"
      ">>> record('doc_jobs', 'job %d done in %.1f ms', 7, 1.5)\n" },
    { "trace_set", (PyCFunction)module_trace_set, METH_O,
      "trace_set(spec)\n--\n\n"
      "Apply a trace spec, RECORDER_TRACES syntax: `name` prints records\n"
      "as they are made, `-name` records only, `/name` turns off, `name=v`\n"
      "sets v; names are regexes; items also apply to topics made later.\n"
      "ValueError on a bad regex or value.\n\n"
      ">>> trace_set('doc_.*=0')\n" },
    { "dump", (PyCFunction)module_dump, METH_VARARGS,
      "dump(pattern='all')\n--\n\n"
      "Print the records of the topics whose whole name matches `pattern`\n"
      "(a regex) on stderr, oldest first; returns how many were shown." },
    { "topics", (PyCFunction)module_topics, METH_NOARGS,
      "topics()\n--\n\n"
      "Names of every topic of the process (C and Python), oldest first.\n\n"
      ">>> 'recorder_core' in topics()\nTrue\n" },
    { "dump_on_signals", (PyCFunction)module_dump_on_signals, METH_VARARGS,
      "dump_on_signals(add=0, remove=0)\n--\n\n"
      "Dump (the topics RECORDER_DUMP names, or all) when a fatal signal\n"
      "arrives, then hand it back so the process still dies by it; `add`\n"
      "and `remove` are masks of more or fewer signals (bit n: signal n).\n"
      "`import recorder` calls it once." },
    { "now", (PyCFunction)module_now, METH_NOARGS,
      "now()\n--\n\nThe core's clock: ns of CLOCK_MONOTONIC, as records "
      "are stamped." },
    { NULL, NULL, 0, NULL },
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT,
    .m_name = "recorder._core",
    .m_doc = "The recorder's C core, as a Python extension (see recorder).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__core(void)
{
    if (PyType_Ready(&FormatType) < 0 || PyType_Ready(&RecorderType) < 0
        || PyType_Ready(&SpanType) < 0)
        return NULL;
    formats = PyDict_New();
    places = PyDict_New();
    recorders = PyDict_New();
    span_begin_format = PyUnicode_InternFromString("begin");
    span_end_format = PyUnicode_InternFromString("end %llu ns");
    span_raised_format = PyUnicode_InternFromString("end %llu ns, raised %s");
    if (!formats || !places || !recorders || !span_begin_format
        || !span_end_format || !span_raised_format)
        return NULL;
    PyObject *module = PyModule_Create(&module_definition);
    if (!module)
        return NULL;
    Py_INCREF(&RecorderType);
    Py_INCREF(&SpanType);
    if (PyModule_AddObject(module, "Recorder", (PyObject *)&RecorderType)
        || PyModule_AddObject(module, "span", (PyObject *)&SpanType)
        || PyModule_AddIntConstant(module, "SPAN_BEGIN",
                                   RECORDER_ENTRY_SPAN_BEGIN)
        || PyModule_AddIntConstant(module, "SPAN_END",
                                   RECORDER_ENTRY_SPAN_END)
        || PyModule_AddIntConstant(module, "MAX_ARGS", RECORDER_MAX_ARGS)) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
