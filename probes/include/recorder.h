/* recorder.h - always-on flight recorder with per-topic USDT probes.
 *
 *   RECORDER(net, 64, "Network traffic");          // a topic, ring of 64
 *   RECORD(net, "sent %d bytes to %s", n, host);   // ~10 ns, always on
 *
 * Source-compatible with the public C API of the seed library (c3d/recorder):
 * RECORDER, RECORDER_DEFINE, RECORDER_DECLARE, RECORD, record, RECORD_FAST,
 * record_fast, RECORDER_TRACE, RECORDER_TWEAK_DEFINE, RECORDER_TWEAK,
 * recorder_trace_set, recorder_dump, recorder_dump_for, recorder_sort,
 * recorder_dump_on_signal, recorder_dump_on_common_signals,
 * recorder_background_dump, RECORD_TIMING_BEGIN/END, the configure
 * hooks (recorder_configure_output, _show, _format, _type), recorder_tick,
 * RECORDER_HZ, the RECORDER_VERSION macros, recorder_ring.h, and the
 * environment variables RECORDER_TRACES, RECORDER_TWEAKS, RECORDER_DUMP.
 * What differs (ns CLOCK_MONOTONIC timestamps, per-CPU shards, USDT probes)
 * is described in probes/PROBES.md.
 */
#ifndef RECORDER_H
#define RECORDER_H

#include <stddef.h>
#include <stdint.h>
#include <stdatomic.h>
#include "recorder_ring.h"
#include "recorder/entry.h"
#include "recorder/registry.h"
#include "recorder/probe.h"

#ifdef __cplusplus
#error "recorder.h is a C11 header"
#endif

/* ------------------------------------------------------------------------ */
/* Version of the seed library's API this header provides                   */
/* ------------------------------------------------------------------------ */

#define RECORDER_VERSION(Major, Minor, Patch)                               \
    ((Major) << 16 | (Minor) << 8 | (Patch))
#define RECORDER_VERSION_MAJOR(Version) (((Version) >> 16) & 0xFF)
#define RECORDER_VERSION_MINOR(Version) (((Version) >> 8) & 0xFF)
#define RECORDER_VERSION_PATCH(Version) ((Version) & 0xFF)
#define RECORDER_CURRENT_VERSION        RECORDER_VERSION(1, 0, 8)
#define RECORDER_64BIT                  (INTPTR_MAX > 0x7fffffff)

#include "recorder/chans.h"

/* ------------------------------------------------------------------------ */
/* Topics and tweaks                                                        */
/* ------------------------------------------------------------------------ */

#define RECORDER_DECLARE(Name)                                              \
    extern struct recorder_topic recorder_##Name##_topic;                   \
    extern struct recorder_topic *const recorder_info_ptr_for_##Name;       \
    extern volatile unsigned short RECORDER_SEMAPHORE(Name)

/* Defines topic `Name` whose ring keeps the last `Size` records per CPU. The
 * constructor registers it (applying RECORDER_TRACES) before main runs. */
#define RECORDER_DEFINE(Name, Size, Info)                                   \
    struct recorder_topic recorder_##Name##_topic = {                       \
        .trace = 0,                                                         \
        .size = (Size),                                                     \
        .name = #Name,                                                      \
        .description = Info,                                                \
    };                                                                      \
    struct recorder_topic *const recorder_info_ptr_for_##Name =             \
        &recorder_##Name##_topic;                                           \
    __attribute__((section(".probes"), used))                               \
    volatile unsigned short RECORDER_SEMAPHORE(Name) = 0;                   \
    /* The topic's probe for records made out of line (recorder_append*): \
     * one more site of recorder:Name, in the code that defines it. */      \
    static void recorder_fire_##Name(const struct recorder_record *entry)  \
    {                                                                       \
        if (RECORDER_PROBE_ARMED(Name))                                     \
            RECORDER_PROBE_FIRE(Name, entry);                               \
    }                                                                       \
    __attribute__((constructor)) static void                                \
    recorder_register_##Name(void)                                          \
    {                                                                       \
        recorder_topic_register_fire(&recorder_##Name##_topic,              \
                                     recorder_fire_##Name);                 \
    }                                                                       \
    /* Takes the user's `;`, which ISO C forbids after a function body. */  \
    _Static_assert(1, "RECORDER_DEFINE is followed by a semicolon")

#define RECORDER(Name, Size, Info)                                          \
    RECORDER_DECLARE(Name);                                                 \
    RECORDER_DEFINE(Name, Size, Info)

/* The trace value, an lvalue: <0 off, 0 record only, >0 also print. */
#define RECORDER_TRACE(Name) (recorder_##Name##_topic.trace)

/* The seed's public entry (its recorder.h), for programs that build or read
 * entries themselves, e.g. in a ring of their own. Our rings hold struct
 * recorder_record (recorder/entry.h), the layout BPF and snapshots read. */
typedef struct recorder_entry {
    const char *format;     /* printf-style format */
    uintptr_t order;        /* global order of records, across topics */
    uintptr_t timestamp;    /* recorder_tick() when recorded */
    const char *where;      /* "file:line" */
    uintptr_t args[4];
} recorder_entry;

/* The seed's global order counter: records made so far, across all topics
 * (the `order` a format function receives is this count when the record
 * was made). RECORD keeps no shared counter (a cache line every CPU would
 * write on every record): reading sums the per-CPU ring heads. Increments
 * a program makes itself (as the seed's own record functions do, with
 * recorder_ring_fetch_add) count on top, from the next read on. */
uintptr_t *recorder_order_counter(void);
#define recorder_order (*recorder_order_counter())

/* The seed's names for a topic: RECORDER_INFO(Name) is its recorder_info
 * (`trace`, `name`, `description`, `next`), or a tweak's recorder_tweak;
 * recorder_list() the newest topic registered, whose `next` leads to the
 * others. */
typedef struct recorder_topic recorder_info;
typedef struct recorder_tweak recorder_tweak;
#define RECORDER_INFO(Name) (recorder_info_ptr_for_##Name)
recorder_info *recorder_list(void);
/* Registers a topic or tweak (the constructors of RECORDER_DEFINE and
 * RECORDER_TWEAK_DEFINE already do); again is harmless. */
void recorder_activate(recorder_info *recorder);
void recorder_tweak_activate(recorder_tweak *tweak);

#define RECORDER_TWEAK_DECLARE(Name)                                        \
    extern struct recorder_tweak recorder_##Name##_tweak;                   \
    extern struct recorder_tweak *const recorder_info_ptr_for_##Name

#define RECORDER_TWEAK_DEFINE(Name, Value, Info)                            \
    struct recorder_tweak recorder_##Name##_tweak = {                       \
        .value = (Value),                                                   \
        .name = #Name,                                                      \
        .description = Info,                                                \
    };                                                                      \
    struct recorder_tweak *const recorder_info_ptr_for_##Name =             \
        &recorder_##Name##_tweak;                                           \
    __attribute__((constructor)) static void                                \
    recorder_register_tweak_##Name(void)                                    \
    {                                                                       \
        recorder_tweak_register(&recorder_##Name##_tweak);                  \
    }                                                                       \
    _Static_assert(1, "RECORDER_TWEAK_DEFINE is followed by a semicolon")

#define RECORDER_TWEAK(name) (recorder_##name##_tweak.value)

/* ------------------------------------------------------------------------ */
/* Recording                                                                */
/* ------------------------------------------------------------------------ */

#define RECORD(name, ...)       RECORDER_RECORD_(name, 0, __VA_ARGS__, )
#define RECORD_FAST(name, ...)  RECORDER_RECORD_(name, 1, __VA_ARGS__, )
#define record(name, ...)       RECORD(name, __VA_ARGS__)
#define record_fast(name, ...)  RECORD_FAST(name, __VA_ARGS__)

/* The trailing empty argument added above lets a format come without
 * arguments in strict ISO C; the argument counting below expects it. */
#define RECORDER_RECORD_(Name, Fast, Format, ...)                           \
    do {                                                                    \
        struct recorder_topic *recorder_t_ = &recorder_##Name##_topic;      \
        if (__builtin_expect(recorder_t_->trace >= 0, 1)) {                 \
            __u64 recorder_s_;                                              \
            struct recorder_record *recorder_e_ =                            \
                recorder_reserve(recorder_t_, Fast,                         \
                                 RECORDER_META_(__VA_ARGS__), &recorder_s_); \
            recorder_e_->format = (uintptr_t)(Format);                      \
            recorder_e_->where = (uintptr_t)(__FILE__ ":"                   \
                                             RECORDER_STRINGIFY(__LINE__)); \
            RECORDER_ARGS_(recorder_e_, __VA_ARGS__)                        \
            recorder_commit(recorder_e_, recorder_s_);                      \
            if (RECORDER_PROBE_ARMED(Name))                                 \
                RECORDER_PROBE_FIRE(Name, recorder_e_);                     \
            if (__builtin_expect(recorder_t_->trace > 0, 0))                \
                recorder_trace_record(recorder_t_, recorder_e_);            \
        }                                                                   \
    } while (0)

/* Counting arguments: the list always ends with an empty argument. */
#define RECORDER_COUNT_(...)                                                \
    RECORDER_PICK_(__VA_ARGS__, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10,     \
                   9, 8, 7, 6, 5, 4, 3, 2, 1, 0, ~)
#define RECORDER_PICK_(a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12,   \
                       a13, a14, a15, a16, a17, a18, a19, a20, n, ...) n
#define RECORDER_CAT_(a, b) a##b
#define RECORDER_CAT(a, b)  RECORDER_CAT_(a, b)
#define RECORDER_ARGS_(e, ...)                                              \
    RECORDER_CAT(RECORDER_ARGS_, RECORDER_COUNT_(__VA_ARGS__))(e, __VA_ARGS__)
#define RECORDER_META_(...)                                                 \
    RECORDER_CAT(RECORDER_META_, RECORDER_COUNT_(__VA_ARGS__))(__VA_ARGS__)

/* One 64-bit slot per argument: doubles bit-cast, integers and pointers
 * widened. The kind travels with it (two bits each in arg_types). */
static inline __u64 recorder_double_bits(double d)
{
    union { double d; __u64 u; } v = { d };
    return v.u;
}
#define RECORDER_AS_DOUBLE_(a)                                              \
    _Generic((a), float: (a), double: (a), long double: (a), default: 0.0)
#define RECORDER_ARG(a)                                                     \
    _Generic((a),                                                           \
             float: recorder_double_bits((double)RECORDER_AS_DOUBLE_(a)),   \
             double: recorder_double_bits((double)RECORDER_AS_DOUBLE_(a)),  \
             long double:                                                   \
                 recorder_double_bits((double)RECORDER_AS_DOUBLE_(a)),      \
             default: (__u64)(uintptr_t)(a))
#define RECORDER_KIND(a)                                                    \
    _Generic((a),                                                           \
             float: RECORDER_ARG_DOUBLE,                                    \
             double: RECORDER_ARG_DOUBLE,                                   \
             long double: RECORDER_ARG_DOUBLE,                              \
             char *: RECORDER_ARG_STRING,                                   \
             const char *: RECORDER_ARG_STRING,                             \
             default: (__builtin_classify_type(a) == 5                      \
                       ? RECORDER_ARG_POINTER : RECORDER_ARG_INT))

/* Kinds and count are compile-time constants: RECORDER_META_n(args) is the
 * header word's arg_types and nargs for recorder_reserve to store at once;
 * RECORDER_ARGS_n(e, args) stores the values, each evaluated once. */
#define RECORDER_MORE_(a, i)                                                \
    (RECORDER_META_NARGS(1) + ((__u64)RECORDER_KIND(a) << (2 * (i))))
#define RECORDER_META_0(...)     0ull
#define RECORDER_ARGS_0(e, ...)
#define RECORDER_META_1(a, ...)                                             \
    RECORDER_MORE_(a, 0)
#define RECORDER_ARGS_1(e, a, ...)                                          \
    (e)->args[0] = RECORDER_ARG(a);
#define RECORDER_META_2(a, b, ...)                                          \
    (RECORDER_META_1(a, ) + RECORDER_MORE_(b, 1))
#define RECORDER_ARGS_2(e, a, b, ...)                                       \
    RECORDER_ARGS_1(e, a, )                                                 \
    (e)->args[1] = RECORDER_ARG(b);
#define RECORDER_META_3(a, b, c, ...)                                       \
    (RECORDER_META_2(a, b, ) + RECORDER_MORE_(c, 2))
#define RECORDER_ARGS_3(e, a, b, c, ...)                                    \
    RECORDER_ARGS_2(e, a, b, )                                              \
    (e)->args[2] = RECORDER_ARG(c);
#define RECORDER_META_4(a, b, c, d, ...)                                    \
    (RECORDER_META_3(a, b, c, ) + RECORDER_MORE_(d, 3))
#define RECORDER_ARGS_4(e, a, b, c, d, ...)                                 \
    RECORDER_ARGS_3(e, a, b, c, )                                           \
    (e)->args[3] = RECORDER_ARG(d);
#define RECORDER_META_5(a, b, c, d, f, ...)                                 \
    (RECORDER_META_4(a, b, c, d, ) + RECORDER_MORE_(f, 4))
#define RECORDER_ARGS_5(e, a, b, c, d, f, ...)                              \
    RECORDER_ARGS_4(e, a, b, c, d, )                                        \
    (e)->args[4] = RECORDER_ARG(f);
#define RECORDER_META_6(a, b, c, d, f, g, ...)                              \
    (RECORDER_META_5(a, b, c, d, f, ) + RECORDER_MORE_(g, 5))
#define RECORDER_ARGS_6(e, a, b, c, d, f, g, ...)                           \
    RECORDER_ARGS_5(e, a, b, c, d, f, )                                     \
    (e)->args[5] = RECORDER_ARG(g);
#define RECORDER_META_7(a, b, c, d, f, g, h, ...)                           \
    (RECORDER_META_6(a, b, c, d, f, g, ) + RECORDER_MORE_(h, 6))
#define RECORDER_ARGS_7(e, a, b, c, d, f, g, h, ...)                        \
    RECORDER_ARGS_6(e, a, b, c, d, f, g, )                                  \
    (e)->args[6] = RECORDER_ARG(h);
#define RECORDER_META_8(a, b, c, d, f, g, h, i, ...)                        \
    (RECORDER_META_7(a, b, c, d, f, g, h, ) + RECORDER_MORE_(i, 7))
#define RECORDER_ARGS_8(e, a, b, c, d, f, g, h, i, ...)                     \
    RECORDER_ARGS_7(e, a, b, c, d, f, g, h, )                               \
    (e)->args[7] = RECORDER_ARG(i);
#define RECORDER_META_9(a, b, c, d, f, g, h, i, j, ...)                     \
    (RECORDER_META_8(a, b, c, d, f, g, h, i, ) + RECORDER_MORE_(j, 8))
#define RECORDER_ARGS_9(e, a, b, c, d, f, g, h, i, j, ...)                  \
    RECORDER_ARGS_8(e, a, b, c, d, f, g, h, i, )                            \
    (e)->args[8] = RECORDER_ARG(j);
#define RECORDER_META_10(a, b, c, d, f, g, h, i, j, k, ...)                 \
    (RECORDER_META_9(a, b, c, d, f, g, h, i, j, ) + RECORDER_MORE_(k, 9))
#define RECORDER_ARGS_10(e, a, b, c, d, f, g, h, i, j, k, ...)              \
    RECORDER_ARGS_9(e, a, b, c, d, f, g, h, i, j, )                         \
    (e)->args[9] = RECORDER_ARG(k);
#define RECORDER_META_11(a, b, c, d, f, g, h, i, j, k, l, ...)              \
    (RECORDER_META_10(a, b, c, d, f, g, h, i, j, k, )                       \
     + RECORDER_MORE_(l, 10))
#define RECORDER_ARGS_11(e, a, b, c, d, f, g, h, i, j, k, l, ...)           \
    RECORDER_ARGS_10(e, a, b, c, d, f, g, h, i, j, k, )                     \
    (e)->args[10] = RECORDER_ARG(l);
#define RECORDER_META_12(a, b, c, d, f, g, h, i, j, k, l, m, ...)           \
    (RECORDER_META_11(a, b, c, d, f, g, h, i, j, k, l, )                    \
     + RECORDER_MORE_(m, 11))
#define RECORDER_ARGS_12(e, a, b, c, d, f, g, h, i, j, k, l, m, ...)        \
    RECORDER_ARGS_11(e, a, b, c, d, f, g, h, i, j, k, l, )                  \
    (e)->args[11] = RECORDER_ARG(m);
#define RECORDER_TOO_MANY_(e, ...)                                          \
    _Static_assert(0, "RECORD takes at most 12 arguments after the format");
#define RECORDER_ARGS_13 RECORDER_TOO_MANY_
#define RECORDER_ARGS_14 RECORDER_TOO_MANY_
#define RECORDER_ARGS_15 RECORDER_TOO_MANY_
#define RECORDER_ARGS_16 RECORDER_TOO_MANY_
#define RECORDER_ARGS_17 RECORDER_TOO_MANY_
#define RECORDER_ARGS_18 RECORDER_TOO_MANY_
#define RECORDER_ARGS_19 RECORDER_TOO_MANY_
#define RECORDER_META_13(...) 0ull
#define RECORDER_META_14(...) 0ull
#define RECORDER_META_15(...) 0ull
#define RECORDER_META_16(...) 0ull
#define RECORDER_META_17(...) 0ull
#define RECORDER_META_18(...) 0ull
#define RECORDER_META_19(...) 0ull

/* The seed's out-of-line records, 4, 8 or 12 arguments (uintptr_t, doubles
 * as their bits): `format` may start with "file:line:", which becomes the
 * record's location, else `where` is. Argument kinds come from the format.
 * Returns the record's index in its CPU's shard. The _fast forms reuse the
 * previous timestamp as RECORD_FAST does. No USDT probe fires. */
#define RECORDER_APPEND_ARGS_(...)                                          \
    (recorder_info *rec, const char *where, const char *format, __VA_ARGS__)
ringidx_t recorder_append RECORDER_APPEND_ARGS_(
    uintptr_t a0, uintptr_t a1, uintptr_t a2, uintptr_t a3);
ringidx_t recorder_append2 RECORDER_APPEND_ARGS_(
    uintptr_t a0, uintptr_t a1, uintptr_t a2, uintptr_t a3,
    uintptr_t a4, uintptr_t a5, uintptr_t a6, uintptr_t a7);
ringidx_t recorder_append3 RECORDER_APPEND_ARGS_(
    uintptr_t a0, uintptr_t a1, uintptr_t a2, uintptr_t a3,
    uintptr_t a4, uintptr_t a5, uintptr_t a6, uintptr_t a7,
    uintptr_t a8, uintptr_t a9, uintptr_t a10, uintptr_t a11);
ringidx_t recorder_append_fast RECORDER_APPEND_ARGS_(
    uintptr_t a0, uintptr_t a1, uintptr_t a2, uintptr_t a3);
ringidx_t recorder_append_fast2 RECORDER_APPEND_ARGS_(
    uintptr_t a0, uintptr_t a1, uintptr_t a2, uintptr_t a3,
    uintptr_t a4, uintptr_t a5, uintptr_t a6, uintptr_t a7);
ringidx_t recorder_append_fast3 RECORDER_APPEND_ARGS_(
    uintptr_t a0, uintptr_t a1, uintptr_t a2, uintptr_t a3,
    uintptr_t a4, uintptr_t a5, uintptr_t a6, uintptr_t a7,
    uintptr_t a8, uintptr_t a9, uintptr_t a10, uintptr_t a11);

/* ------------------------------------------------------------------------ */
/* The hot path: clock, CPU, slot reservation                               */
/* ------------------------------------------------------------------------ */

#include "recorder/hot.h"

/* ------------------------------------------------------------------------ */
/* Control                                                                  */
/* ------------------------------------------------------------------------ */

enum recorder_trace_status {
    RECORDER_TRACE_OK = 0,
    RECORDER_TRACE_INVALID_NAME = -1,   /* a bad regular expression */
    RECORDER_TRACE_INVALID_VALUE = -2,  /* `x=v` where v is not an integer */
};

/* Applies a spec: items `[-|/]regex[=value]` separated by ':' or spaces.
 * `x` sets 1, `-x` sets 0 (record, don't print), `/x` sets -1 (off),
 * `x=v` sets v; `all` matches every topic (not tweaks); `list` or `help`
 * prints topics and tweaks. Regexes are POSIX extended, case-insensitive,
 * matching the whole name, and also apply to topics and tweaks defined
 * later (dlopen). Errors, and items that match nothing, are reported on
 * stderr (for RECORDER_TRACES and RECORDER_TWEAKS, which are read before
 * the program's topics exist, the latter and `list` at exit). Returns
 * RECORDER_TRACE_OK or the last error. */
int recorder_trace_set(const char *spec);

unsigned recorder_dump(void);                       /* returns entries shown */
/* Dumps the topics whose whole name `pattern` matches (as in a spec);
 * NULL or "all" dumps all. Returns entries shown. */
unsigned recorder_dump_for(const char *pattern);
/* Dump on SIGQUIT, SIGILL, SIGABRT, SIGBUS, SIGSEGV, SIGFPE, SIGSYS,
 * SIGXCPU, SIGXFSZ, plus the signals in mask `add`, minus those in
 * `remove` (bit n = signal n): the topics RECORDER_DUMP matches, or all.
 * A fatal signal is re-raised after the dump, so the process still dies
 * by it. The calling thread gets an alternate signal stack, so that its
 * stack overflows dump too. */
void recorder_dump_on_common_signals(unsigned add, unsigned remove);

/* The seed's background dump: a thread that prints, every
 * RECORDER_TWEAK(recorder_dump_sleep) ms (100), the records written since
 * its last pass into the topics `pattern` matches (NULL or "all": every
 * topic), in time order, through the configured format and show. Stopping
 * prints what was recorded before the call, then reports how many records
 * were overwritten before it could show them. One at a time. */
void recorder_background_dump(const char *pattern);
void recorder_background_dump_stop(void);

/* Dump on signal `signal_number` (< 32) as recorder_dump_on_common_signals
 * does for its list: a fatal one still kills the process after the dump,
 * another (SIGUSR1) dumps and the program goes on. */
void recorder_dump_on_signal(int signal_number);

/* Time as RECORD stamps it: CLOCK_MONOTONIC in RECORDER_HZ ticks per second
 * (ns), the seed's recorder_tick() for measuring durations. */
#ifndef RECORDER_HZ
#define RECORDER_HZ 1000000000ull
#endif
#ifndef recorder_tick
uintptr_t recorder_tick(void);
#endif

/* The seed's timing blocks: a code block's rate and duration, recorded
 * into `Recorder` at most once per interval of RECORDER_TRACE(Recorder) ms
 * (100 when that is 0 or less, or the topic only exports channels):
 *
 *   RECORD_TIMING_BEGIN(net);
 *   n = send_packet();
 *   RECORD_TIMING_END(net, "send", "bytes", n);
 *   -> net: send 1234.00 bytes/s, total 5678, 10.00 loops/s,
 *           avg duration 12.34 us
 *
 * The counters are per call site and shared by threads (atomic adds); the
 * thread that finds the interval over records and restarts them. */
#define RECORD_TIMING_BEGIN(Recorder)                                       \
    do {                                                                    \
        static uintptr_t recorder_t_last_, recorder_t_total_,               \
            recorder_t_value_, recorder_t_time_, recorder_t_loops_;         \
        uintptr_t recorder_t_start_ = recorder_tick()

#define RECORD_TIMING_END(Recorder, Operation, Name, Value)                 \
        uintptr_t recorder_t_end_ = recorder_tick();                        \
        uintptr_t recorder_t_v_ = (uintptr_t)(Value);                       \
        __atomic_fetch_add(&recorder_t_total_, recorder_t_v_,               \
                           __ATOMIC_RELAXED);                               \
        __atomic_fetch_add(&recorder_t_value_, recorder_t_v_,               \
                           __ATOMIC_RELAXED);                               \
        __atomic_fetch_add(&recorder_t_time_,                               \
                           recorder_t_end_ - recorder_t_start_,             \
                           __ATOMIC_RELAXED);                               \
        __atomic_fetch_add(&recorder_t_loops_, 1, __ATOMIC_RELAXED);        \
        uintptr_t recorder_t_ms_ = RECORDER_TRACE(Recorder) > 0             \
            && RECORDER_TRACE(Recorder) != RECORDER_CHAN_MAGIC              \
            ? (uintptr_t)RECORDER_TRACE(Recorder) : 100;                    \
        uintptr_t recorder_t_known_ =                                       \
            __atomic_load_n(&recorder_t_last_, __ATOMIC_RELAXED);           \
        if (recorder_t_known_ == 0)                                         \
            __atomic_compare_exchange_n(&recorder_t_last_,                  \
                                        &recorder_t_known_,                 \
                                        recorder_t_start_, 0,               \
                                        __ATOMIC_RELAXED,                   \
                                        __ATOMIC_RELAXED);                  \
        else if (recorder_t_end_ - recorder_t_known_                        \
                     >= recorder_t_ms_ * (RECORDER_HZ / 1000)               \
                 && __atomic_compare_exchange_n(&recorder_t_last_,          \
                                                &recorder_t_known_,         \
                                                recorder_t_end_, 0,         \
                                                __ATOMIC_RELAXED,           \
                                                __ATOMIC_RELAXED)) {        \
            double recorder_t_per_s_ = (double)RECORDER_HZ                  \
                / (double)(recorder_t_end_ - recorder_t_known_);            \
            uintptr_t recorder_t_n_ = __atomic_exchange_n(                  \
                &recorder_t_loops_, 0, __ATOMIC_RELAXED);                   \
            uintptr_t recorder_t_d_ = __atomic_exchange_n(                  \
                &recorder_t_time_, 0, __ATOMIC_RELAXED);                    \
            uintptr_t recorder_t_sum_ = __atomic_exchange_n(                \
                &recorder_t_value_, 0, __ATOMIC_RELAXED);                   \
            record(Recorder, Operation " %.2f " Name "/s, total %lu, "      \
                   "%.2f loops/s, avg duration %.2f us",                    \
                   recorder_t_sum_ * recorder_t_per_s_,                     \
                   (unsigned long)__atomic_load_n(&recorder_t_total_,       \
                                                  __ATOMIC_RELAXED),        \
                   recorder_t_n_ * recorder_t_per_s_,                       \
                   recorder_t_n_ ? (double)recorder_t_d_ * 1e6              \
                       / RECORDER_HZ / recorder_t_n_ : 0.0);                \
        }                                                                   \
    } while (0)

/* ------------------------------------------------------------------------ */
/* How dumps and traces are shown (the seed's configure hooks)              */
/* ------------------------------------------------------------------------ */

/* Shows one formatted line (no newline) on `output`; returns bytes shown.
 * The default writes the line and a newline to `output`, a FILE *, or to
 * file descriptor 2 when it is NULL. */
typedef unsigned (*recorder_show_fn)(const char *text, size_t length,
                                     void *output);
/* Formats one record and hands the text to `show`. `location` is the
 * record's "file:line", `order` its sequence number in its topic's CPU
 * shard (1, 2, ...), `timestamp` in RECORDER_HZ ticks, `message` the
 * formatted message. The default shows "file:line: [s.ns tid] label: msg",
 * the line recorder_dump prints. */
typedef void (*recorder_format_fn)(recorder_show_fn show, void *output,
                                   const char *label, const char *location,
                                   uintptr_t order, uintptr_t timestamp,
                                   const char *message);
/* Formats the argument `data` of a custom conversion (recorder_configure_
 * type) into `buffer` of `length` bytes; returns the length it would have
 * written, as snprintf does. `trace` is nonzero only while the record is
 * traced (printed as it is recorded, when pointers are known to be live)
 * or when the conversion has the '+' flag; zero in dumps (a crash dump
 * must not follow a pointer that may be dangling). `format` is the
 * conversion's text, from '%' to its letter. */
typedef size_t (*recorder_type_fn)(intptr_t trace, const char *format,
                                   char *buffer, size_t length,
                                   uintptr_t data);

/* Each returns the previous setting (the default function, not NULL). A
 * NULL `show` or `format` restores the default. */
void *recorder_configure_output(void *output);
recorder_show_fn recorder_configure_show(recorder_show_fn show);
recorder_format_fn recorder_configure_format(recorder_format_fn format);
/* Makes `%<id>` a custom conversion, overriding printf's meaning of that
 * letter in formats; NULL removes it. */
recorder_type_fn recorder_configure_type(uint8_t id, recorder_type_fn type);
/* Dumps the topics `pattern` matches (as recorder_dump_for) through
 * `format` and `show`, with `output` for show; NULL functions mean the
 * configured ones. Returns entries shown. */
unsigned recorder_sort(const char *pattern, recorder_format_fn format,
                       recorder_show_fn show, void *output);

/* Run-time topics (Python, generated names). recorder_topic_create
 * returns the topic named `name`, making it (ring of `size` per CPU) if it
 * does not exist; NULL without memory. recorder_record_dynamic records into
 * it: `format`, `where` and string arguments must stay valid for as long as
 * readers may format the entry (the Python API keeps them alive). They all
 * share the probe recorder:recorder_dynamic, gated per topic by `armed`. */
struct recorder_topic *recorder_topic_create(const char *name, unsigned size,
                                             const char *description);
struct recorder_topic *recorder_topic_find(const char *name);
void recorder_record_dynamic(struct recorder_topic *topic, const char *where,
                             const char *format, unsigned nargs,
                             __u32 arg_types, const __u64 *args);
/* The same with entry flags (RECORDER_ENTRY_SPAN_BEGIN / _END, entry.h). */
void recorder_record_dynamic_flags(struct recorder_topic *topic,
                                   unsigned flags, const char *where,
                                   const char *format, unsigned nargs,
                                   __u32 arg_types, const __u64 *args);

/* Used by the macros. */
void recorder_topic_register(struct recorder_topic *topic);
/* Registers a topic with the function that fires its USDT probe for an
 * entry recorded out of line (recorder_append*). */
typedef void (*recorder_fire_fn)(const struct recorder_record *entry);
void recorder_topic_register_fire(struct recorder_topic *topic,
                                  recorder_fire_fn fire);
void recorder_tweak_register(struct recorder_tweak *tweak);
/* Prints (and exports) a record RECORD just made, as its topic's trace
 * asks; RECORD calls it when the trace is on. */
void recorder_trace_record(struct recorder_topic *topic,
                           struct recorder_record *entry);
/* The seed's: shows one seed entry (its format may start with the
 * seed's "file:line:" head) through the configured format, show and
 * output, and writes its arguments to the topic's channels; only exports
 * when the topic's trace is the channels' magic value, as in the seed. */
void recorder_trace_entry(recorder_info *info, recorder_entry *entry);
/* Formats an entry's message the way printf would format its arguments;
 * a string that cannot be read shows as <unreadable 0x...>. */
int recorder_format_entry(const struct recorder_record *entry,
                          char *buffer, unsigned size);

extern struct recorder_registry recorder_registry;

#endif /* RECORDER_H */
