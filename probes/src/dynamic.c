/* dynamic.c - topics made at run time (the Python API, the controller).
 *
 * A C topic is its own USDT probe. A run-time topic cannot be: notes are
 * fixed at link time. All run-time topics share one probe,
 * `recorder:recorder_dynamic`, with its own semaphore; each topic's `armed`
 * flag (struct recorder_topic, set by the controller through /proc/PID/mem)
 * says whether a tracer wants it. So an unarmed run-time topic in a process
 * where another one is armed pays one load and branch, no trap.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <pthread.h>
#include <string.h>

RECORDER_DECLARE(recorder_dynamic);
RECORDER(recorder_dynamic, 0, "The probe run-time topics share (never "
         "recorded itself)");

struct recorder_topic *recorder_topic_create(const char *name, unsigned size,
                                             const char *description)
{
    if (!name || !*name)
        return NULL;
    recorder_init();
    pthread_mutex_lock(&recorder_create_lock);
    struct recorder_topic *topic = recorder_topic_find(name);
    if (!topic) {
        topic = calloc(1, sizeof(*topic));
        char *name_copy = strdup(name);
        char *description_copy = strdup(description ? description : "");
        if (!topic || !name_copy || !description_copy) {
            free(topic);
            free(name_copy);
            free(description_copy);
            pthread_mutex_unlock(&recorder_create_lock);
            return NULL;
        }
        topic->size = size ? size : 64;
        topic->name = name_copy;
        topic->description = description_copy;
        recorder_topic_register(topic);
    }
    pthread_mutex_unlock(&recorder_create_lock);
    return topic;
}

struct recorder_topic *recorder_topic_find(const char *name)
{
    for (struct recorder_topic *topic = recorder_registry.topics; topic;
         topic = topic->next)
        if (strcmp(topic->name, name) == 0)
            return topic;
    return NULL;
}

void recorder_record_dynamic(struct recorder_topic *topic, const char *where,
                             const char *format, unsigned nargs,
                             __u32 arg_types, const __u64 *args)
{
    recorder_record_dynamic_flags(topic, 0, where, format, nargs, arg_types,
                                  args);
}

void recorder_record_dynamic_flags(struct recorder_topic *topic,
                                   unsigned flags, const char *where,
                                   const char *format, unsigned nargs,
                                   __u32 arg_types, const __u64 *args)
{
    if (!topic || topic->trace < 0)
        return;
    if (nargs > RECORDER_MAX_ARGS)
        nargs = RECORDER_MAX_ARGS;
    __u64 sequence;
    __u64 meta = arg_types | RECORDER_META_NARGS(nargs)
                 | RECORDER_META_FLAGS(flags & 0xff);
    struct recorder_record *entry = recorder_reserve(topic, 0, meta, &sequence);
    entry->format = (uintptr_t)format;
    entry->where = (uintptr_t)where;
    for (unsigned i = 0; i < nargs; i++)
        entry->args[i] = args[i];
    recorder_commit(entry, sequence);
    if (RECORDER_PROBE_ARMED(recorder_dynamic)
        && __atomic_load_n(&topic->armed, __ATOMIC_RELAXED))
        RECORDER_PROBE_FIRE(recorder_dynamic, entry);
    if (topic->trace > 0)
        recorder_trace_record(topic, entry);
}
