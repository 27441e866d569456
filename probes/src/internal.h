/* internal.h - what the core's files share, not part of the API. */
#ifndef RECORDER_INTERNAL_H
#define RECORDER_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <regex.h>
#include "recorder.h"

/* The core's own topics (see core.c): it records its own operations. */
RECORDER_DECLARE(recorder_core);
RECORDER_DECLARE(recorder_signals);

void recorder_init(void);                /* idempotent, any thread */
void recorder_clock_init(void);

/* Serializes recorder_topic_create (dynamic.c). Defined in core.c, which
 * takes it across fork, so that programs without run-time topics do not
 * link dynamic.c (and its topic, recorder_dynamic). */
extern pthread_mutex_t recorder_create_lock;

/* fork (see core.c): each file's lock taken before fork, released after it
 * in the parent and in the child; flags that only refuse, cleared in the
 * child. */
void recorder_spec_fork_prepare(void);
void recorder_spec_fork_release(void);
void recorder_share_fork_prepare(void);
void recorder_share_fork_parent(void);
void recorder_clock_after_fork(void);
void recorder_dump_after_fork(void);

/* spec.c */
void recorder_spec_apply_pending(struct recorder_topic *topic,
                                 struct recorder_tweak *tweak);
/* Regex matching whole names, case-insensitively (the spec's rule). */
int recorder_compile_name_regex(regex_t *regex, const char *pattern);
int recorder_name_matches(const regex_t *regex, const char *name);
int recorder_spec_apply(const char *spec, int from_environment);

/* share.c: RECORDER_SHARE=DIR */
void recorder_share_init(void);
void *recorder_share_alloc_shard(struct recorder_topic *topic, unsigned cpu,
                                 size_t bytes);
void recorder_share_topic(struct recorder_topic *topic);
/* In the child, with the lock recorder_share_fork_prepare took: moves the
 * rings to a file of the child's own, then releases the lock. */
void recorder_share_after_fork(void);

/* dump.c */
void recorder_dump_at_exit_init(void);  /* before any topic is added */
void recorder_dump_select(const struct recorder_topic *topic);

/* Writes all of a buffer to a file descriptor; async-signal-safe. */
void recorder_write_all(int fd, const char *text, size_t length);
/* snprintf-style helper that never fails. */
void recorder_error(const char *format, ...)
    __attribute__((format(printf, 1, 2)));

/* Copies at most `size - 1` bytes of a string from this process's memory
 * without faulting; returns -1 if the memory cannot be read. */
int recorder_read_string(__u64 address, char *buffer, size_t size);

#define RECORDER_STRING_MAX 256     /* bound for %s when dumping */

/* format.c: recorder_format_entry, with the trace value custom conversions
 * receive (the topic's while tracing, 0 in dumps). */
int recorder_format_entry_traced(const struct recorder_record *entry,
                                 char *buffer, unsigned size, __s64 trace);

/* configure.c: the seed's configure hooks. */
extern recorder_type_fn recorder_custom_types[256];
/* Where a dump or trace line goes when it is not the default line on
 * stderr: recorder_sort's functions, or the configured ones. */
struct recorder_sink {
    recorder_format_fn format;
    recorder_show_fn show;
    void *output;
};
/* NULL while format, show and output are all the defaults. */
const struct recorder_sink *recorder_configured_sink(void);
/* `order`: the seed's global order of the record (recorder_order when it
 * was made), what the format function receives. */
void recorder_sink_entry(const struct recorder_sink *sink,
                         const struct recorder_topic *topic,
                         const struct recorder_record *entry, __s64 trace,
                         uintptr_t order);

/* channels.c: `topic=name1,name2` in a spec. */
int recorder_channels_valid(const char *names);
void recorder_channels_name(struct recorder_topic *topic, const char *names,
                            int pattern);

/* chans_export.c: the same names as channels of recorder_export_file(),
 * the seed's export; `pattern`: the item may match several topics, whose
 * channels are then named "topic/name". */
void recorder_export_channels(struct recorder_topic *topic, const char *names,
                              int pattern);
/* Writes an entry's arguments to its topic's channels; 1 if it has any. */
int recorder_export_entry(const struct recorder_topic *topic,
                          const struct recorder_record *entry);

/* chans.c, for the export: the type of a channel learned at its first value,
 * and the specs recorder_chans_configure left since `*seen`. */
void recorder_chan_set_type(recorder_chan_p chan, recorder_type type);
int recorder_chans_command(recorder_chans_p chans, __u64 *seen, char *into,
                           size_t bytes);

/* append.c: the letter of the `index`th conversion of a format (0 if it has
 * fewer); '*' counts as one. */
char recorder_conversion_letter(const char *format, unsigned index);
/* recorder_order without a thread's own pending increments. */
uintptr_t recorder_order_count(void);

/* dump.c: shows a record as a trace does (the configured sink, or the
 * default line), the seed's `order` given. */
void recorder_trace_show(const struct recorder_topic *topic,
                         const struct recorder_record *entry, uintptr_t order);
/* dump.c: recorder_dump_for through `sink` (NULL: the configured one). */
unsigned recorder_dump_through(const char *pattern,
                               const struct recorder_sink *sink);

/* Copies entry `index` of a shard (the seqlock reader of dumps and the
 * background dump); 0 if it was overwritten meanwhile. */
static inline int recorder_read_entry(const struct recorder_shard *shard,
                                      __u64 index, struct recorder_record *copy)
{
    const struct recorder_record *slot = &shard->entries[index & shard->mask];
    __u64 expected = index + 1;
    if (atomic_load_explicit((_Atomic __u64 *)&slot->sequence,
                             memory_order_acquire) != expected)
        return 0;
    memcpy(copy, slot, sizeof(*copy));
    atomic_thread_fence(memory_order_acquire);
    return atomic_load_explicit((_Atomic __u64 *)&slot->sequence,
                                memory_order_relaxed) == expected
        && copy->sequence == expected;
}

#endif
