/* append.c - the seed's out-of-line recording functions: recorder_append,
 * _append2, _append3 (4, 8 and 12 arguments) and their _fast forms, and
 * recorder_list / recorder_activate, the seed's recorder_order and its
 * recorder_trace_entry.
 *
 * The seed's RECORD calls them with `where` = the function and `format` =
 * "file:line:" followed by the format; a program may call them directly the
 * same way. The arguments arrive as uintptr_t, so their kinds (double,
 * string, pointer, integer) come from the format's conversions, as the seed
 * reads them when it prints. The "file:line" head becomes the entry's
 * `where`, as RECORD makes it: each distinct one is copied once into a
 * fixed arena (no malloc: a signal handler may record), and past the
 * arena's end the function name stands in.
 *
 * These records land in the topic's ring like RECORD's and fire the
 * topic's USDT probe, at the site RECORDER_DEFINE adds for them.
 */
#define _GNU_SOURCE
#include "internal.h"

#define LOCATIONS       1024            /* distinct "file:line" heads */
#define LOCATION_BYTES  (64u << 10)
#define LOCATION_MAX    240             /* longer heads are not split */

static struct location {
    _Atomic(const char *) format;
    _Atomic(const char *) where;
} locations[LOCATIONS];
static char location_text[LOCATION_BYTES];
static _Atomic size_t location_used;

/* Length of a "file:line:" head of `format`, or 0. */
static size_t location_length(const char *format)
{
    size_t at = 0;
    while (at < LOCATION_MAX && format[at] && format[at] != ':')
        at++;
    if (at == 0 || format[at] != ':')
        return 0;
    size_t digits = ++at;
    while (at < LOCATION_MAX && format[at] >= '0' && format[at] <= '9')
        at++;
    return at > digits && format[at] == ':' ? at + 1 : 0;
}

/* The interned "file:line" of `format`'s head of `length` bytes, or NULL
 * while another thread is interning it or the arena is full. */
static const char *intern_location(const char *format, size_t length)
{
    size_t hash = ((uintptr_t)format >> 3) * 0x9E3779B97F4A7C15ull >> 54;
    for (size_t probe = 0; probe < LOCATIONS; probe++) {
        struct location *slot = &locations[(hash + probe) % LOCATIONS];
        const char *owner = atomic_load_explicit(&slot->format,
                                                 memory_order_acquire);
        if (owner == NULL) {
            if (!atomic_compare_exchange_strong(&slot->format, &owner, format)
                && owner != format)
                continue;
            if (owner == format)            /* another thread claimed it */
                return atomic_load_explicit(&slot->where, memory_order_acquire);
            size_t at = atomic_fetch_add(&location_used, length);
            if (at + length > LOCATION_BYTES)
                return NULL;
            memcpy(location_text + at, format, length - 1);
            location_text[at + length - 1] = 0;     /* over the last ':' */
            atomic_store_explicit(&slot->where, location_text + at,
                                  memory_order_release);
            return location_text + at;
        }
        if (owner == format)
            return atomic_load_explicit(&slot->where, memory_order_acquire);
    }
    return NULL;
}

/* Calls `each(letter, data)` for the conversions of `format` in order, up
 * to `count` of them: '*' is one (an int), a letter registered with
 * recorder_configure_type ends one wherever it stands (as format.c reads
 * it), "%%" is none. */
static void conversions(const char *format, unsigned count,
                        void (*each)(char letter, void *data), void *data)
{
    unsigned index = 0;
    for (const char *p = format; *p && index < count; p++) {
        if (*p != '%')
            continue;
        if (*++p == '%')
            continue;
        for (; *p && index < count; p++) {
            unsigned char c = (unsigned char)*p;
            if (c == '*' && !recorder_custom_types[c]) {
                index++;
                each('*', data);
                continue;
            }
            if (!recorder_custom_types[c]
                && strchr("-+ #0'123456789.hlLqjzt", c))
                continue;
            index++;
            each((char)c, data);
            break;
        }
        if (!*p)
            break;
    }
}

struct kinds { __u32 bits; unsigned index; };

static void add_kind(char letter, void *data)
{
    struct kinds *kinds = data;
    enum recorder_arg_kind kind = RECORDER_ARG_INT;
    if (recorder_custom_types[(unsigned char)letter])
        ;                               /* the data, as an integer */
    else if (strchr("fFgGeEaA", letter))
        kind = RECORDER_ARG_DOUBLE;
    else if (letter == 's')
        kind = RECORDER_ARG_STRING;
    else if (letter == 'p')
        kind = RECORDER_ARG_POINTER;
    kinds->bits |= (__u32)kind << (2 * kinds->index++);
}

/* The argument kinds of `format`'s first `count` conversions, as RECORD's
 * arg_types: floating point letters are doubles, %s strings, %p pointers,
 * '*', custom conversions and everything else integers. */
static __u32 kinds_from_format(const char *format, unsigned count)
{
    struct kinds kinds = { 0, 0 };
    conversions(format, count, add_kind, &kinds);
    return kinds.bits;
}

struct nth { unsigned wanted, index; char letter; };

static void pick_letter(char letter, void *data)
{
    struct nth *nth = data;
    if (nth->index++ == nth->wanted)
        nth->letter = letter;
}

char recorder_conversion_letter(const char *format, unsigned index)
{
    struct nth nth = { index, 0, 0 };
    conversions(format, index + 1, pick_letter, &nth);
    return nth.letter;
}

/* Each C topic's probe, by topic id (RECORDER_DEFINE registers it). */
static _Atomic recorder_fire_fn fires[RECORDER_MAX_TOPICS];

void recorder_topic_register_fire(struct recorder_topic *topic,
                                  recorder_fire_fn fire)
{
    recorder_topic_register(topic);
    if (topic->id < RECORDER_MAX_TOPICS)
        atomic_store_explicit(&fires[topic->id], fire, memory_order_release);
}

static ringidx_t append(recorder_info *rec, int fast, const char *where,
                        const char *format, unsigned nargs,
                        const uintptr_t *args)
{
    if (!rec || !format || rec->trace < 0)
        return 0;
    size_t head = location_length(format);
    const char *location = head ? intern_location(format, head) : NULL;
    if (location)
        format += head;
    else
        location = where ? where : "?";
    __u64 sequence;
    __u64 meta = kinds_from_format(format, nargs) | RECORDER_META_NARGS(nargs);
    struct recorder_record *entry = recorder_reserve(rec, fast, meta, &sequence);
    entry->format = (uintptr_t)format;
    entry->where = (uintptr_t)location;
    for (unsigned i = 0; i < nargs; i++)
        entry->args[i] = args[i];
    recorder_commit(entry, sequence);
    recorder_fire_fn fire = rec->id < RECORDER_MAX_TOPICS
        ? atomic_load_explicit(&fires[rec->id], memory_order_acquire) : NULL;
    if (fire)
        fire(entry);
    if (rec->trace > 0)
        recorder_trace_record(rec, entry);
    return (ringidx_t)(sequence - 1);
}

#define APPEND_4(Name, Fast)                                                \
    ringidx_t Name(recorder_info *rec, const char *where, const char *format, \
                   uintptr_t a0, uintptr_t a1, uintptr_t a2, uintptr_t a3)  \
    {                                                                       \
        const uintptr_t args[] = { a0, a1, a2, a3 };                        \
        return append(rec, Fast, where, format, 4, args);                   \
    }
#define APPEND_8(Name, Fast)                                                \
    ringidx_t Name(recorder_info *rec, const char *where, const char *format, \
                   uintptr_t a0, uintptr_t a1, uintptr_t a2, uintptr_t a3,  \
                   uintptr_t a4, uintptr_t a5, uintptr_t a6, uintptr_t a7)  \
    {                                                                       \
        const uintptr_t args[] = { a0, a1, a2, a3, a4, a5, a6, a7 };        \
        return append(rec, Fast, where, format, 8, args);                   \
    }
#define APPEND_12(Name, Fast)                                               \
    ringidx_t Name(recorder_info *rec, const char *where, const char *format, \
                   uintptr_t a0, uintptr_t a1, uintptr_t a2, uintptr_t a3,  \
                   uintptr_t a4, uintptr_t a5, uintptr_t a6, uintptr_t a7,  \
                   uintptr_t a8, uintptr_t a9, uintptr_t a10,               \
                   uintptr_t a11)                                           \
    {                                                                       \
        const uintptr_t args[] = { a0, a1, a2, a3, a4, a5, a6, a7, a8, a9,  \
                                   a10, a11 };                              \
        return append(rec, Fast, where, format, 12, args);                  \
    }

APPEND_4(recorder_append, 0)
APPEND_8(recorder_append2, 0)
APPEND_12(recorder_append3, 0)
APPEND_4(recorder_append_fast, 1)
APPEND_8(recorder_append_fast2, 1)
APPEND_12(recorder_append_fast3, 1)

/* The seed's recorder_trace_entry: a seed entry (which no ring of ours
 * holds) shown as RECORD's records are, through the configured format,
 * show and output, with the seed's own `order`. Like the seed, it shows
 * whenever called (callers check `trace`) unless the topic only exports. */
void recorder_trace_entry(recorder_info *info, recorder_entry *entry)
{
    if (!info || !entry || !entry->format)
        return;             /* the seed's later parts of a long entry */
    const char *format = entry->format;
    size_t head = location_length(format);
    char location[LOCATION_MAX + 1];
    if (head) {
        memcpy(location, format, head - 1);
        location[head - 1] = 0;             /* over the last ':' */
        format += head;
    }
    unsigned nargs = 0;
    while (nargs < 4 && recorder_conversion_letter(format, nargs))
        nargs++;
    struct recorder_record record = {
        .timestamp = entry->timestamp,
        .tid = recorder_tid(),
        .topic_id = info->id,
        .arg_types = kinds_from_format(format, nargs),
        .nargs = (__u8)nargs,
        .format = (uintptr_t)format,
        .where = (uintptr_t)(head ? location
                             : entry->where ? entry->where : "?"),
    };
    for (unsigned i = 0; i < nargs; i++)
        record.args[i] = entry->args[i];
    recorder_export_entry(info, &record);
    if (info->trace != RECORDER_CHAN_MAGIC)
        recorder_trace_show(info, &record, entry->order);
}

recorder_info *recorder_list(void)
{
    return atomic_load_explicit(
        (_Atomic(struct recorder_topic *) *)&recorder_registry.topics,
        memory_order_acquire);
}

void recorder_activate(recorder_info *recorder)
{
    recorder_topic_register(recorder);
}

void recorder_tweak_activate(recorder_tweak *tweak)
{
    recorder_tweak_register(tweak);
}

/* recorder_order: every shard's head (records ever made there) plus what
 * programs added themselves. Each thread reads through a view of its own,
 * so an increment through it (recorder_ring_fetch_add(recorder_order, 1),
 * as the seed's record functions do) is counted at its next read. */
static _Atomic uintptr_t order_added;
static __thread uintptr_t order_view, order_given;

uintptr_t recorder_order_count(void)
{
    uintptr_t heads = 0;
    unsigned topics = 0;
    for (struct recorder_topic *topic = recorder_list();
         topic && topics < RECORDER_MAX_TOPICS; topic = topic->next, topics++)
        for (unsigned s = 0; s < RECORDER_MAX_SHARDS; s++) {
            struct recorder_shard *shard = atomic_load_explicit(
                (_Atomic(struct recorder_shard *) *)&topic->shards[s],
                memory_order_acquire);
            if (shard)
                heads += atomic_load_explicit((_Atomic __u64 *)&shard->head,
                                              memory_order_acquire);
        }
    return heads + atomic_load_explicit(&order_added, memory_order_acquire);
}

uintptr_t *recorder_order_counter(void)
{
    if (order_view != order_given)
        atomic_fetch_add_explicit(&order_added, order_view - order_given,
                                  memory_order_acq_rel);
    order_view = order_given = recorder_order_count();
    return &order_view;
}
