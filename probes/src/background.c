/* background.c - recorder_background_dump: a thread that prints new records.
 *
 * The seed library's background dump: every `recorder_dump_sleep` ms (a
 * tweak, 100 by default) a thread prints the records written since its last
 * pass into the topics a pattern matches, in time order, through the
 * configured format and show functions (configure.c). Each shard has a
 * cursor; records overwritten before a pass could print them are counted
 * and reported once the thread stops. Entries are read with the seqlock
 * rule, as the dump reads them.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

RECORDER_TWEAK_DEFINE(recorder_dump_sleep, 100,
                      "Milliseconds between passes of recorder_background_dump");

#define MAX_PASS_ENTRIES 8192   /* printed per pass; the rest wait a pass */

struct cursor {
    const struct recorder_shard *shard;
    __u64 next;
};

struct pending {
    const struct recorder_topic *topic;
    struct recorder_record entry;
};

static pthread_mutex_t control = PTHREAD_MUTEX_INITIALIZER;
static pthread_t thread;
static int running;
static _Atomic int stopping;
static regex_t selection;
static int select_all;
static struct cursor cursors[RECORDER_MAX_TOPICS / 4];
static unsigned cursor_count;
static unsigned long long lost;

static struct cursor *cursor_of(const struct recorder_shard *shard)
{
    for (unsigned i = 0; i < cursor_count; i++)
        if (cursors[i].shard == shard)
            return &cursors[i];
    if (cursor_count == sizeof(cursors) / sizeof(*cursors))
        return NULL;
    cursors[cursor_count] = (struct cursor) { .shard = shard };
    return &cursors[cursor_count++];
}

static int by_time(const void *a, const void *b)
{
    const struct pending *left = a, *right = b;
    if (left->entry.timestamp != right->entry.timestamp)
        return left->entry.timestamp < right->entry.timestamp ? -1 : 1;
    return left->entry.sequence < right->entry.sequence ? -1
         : left->entry.sequence > right->entry.sequence;
}

/* One pass: what every selected shard got since the last one, in order. */
static void pass(struct pending *batch)
{
    unsigned count = 0;
    for (struct recorder_topic *topic = recorder_registry.topics; topic;
         topic = topic->next) {
        if (!select_all && regexec(&selection, topic->name, 0, NULL, 0))
            continue;
        for (unsigned s = 0; s < RECORDER_MAX_SHARDS; s++) {
            const struct recorder_shard *shard = topic->shards[s];
            struct cursor *cursor = shard ? cursor_of(shard) : NULL;
            if (!cursor)
                continue;
            __u64 head = atomic_load_explicit((_Atomic __u64 *)&shard->head,
                                              memory_order_acquire);
            __u64 oldest = head > shard->keep ? head - shard->keep : 0;
            if (cursor->next < oldest) {
                lost += oldest - cursor->next;
                cursor->next = oldest;
            }
            while (cursor->next < head && count < MAX_PASS_ENTRIES) {
                batch[count].topic = topic;
                if (recorder_read_entry(shard, cursor->next, &batch[count].entry))
                    count++;
                else if (cursor->next + shard->keep > head)
                    break;      /* still being written: next pass */
                else
                    lost++;     /* overwritten while we read */
                cursor->next++;
            }
        }
    }
    qsort(batch, count, sizeof(*batch), by_time);
    /* `order` here is the index in the shard: a pass sees only the
     * selected topics' new records, not how many came before them. */
    for (unsigned i = 0; i < count; i++)
        recorder_sink_entry(NULL, batch[i].topic, &batch[i].entry, 0,
                            (uintptr_t)batch[i].entry.sequence);
}

static void *background(void *unused)
{
    (void)unused;
    struct pending *batch = malloc(MAX_PASS_ENTRIES * sizeof(*batch));
    if (!batch)
        return NULL;
    while (!atomic_load(&stopping)) {
        pass(batch);
        long ms = (long)RECORDER_TWEAK(recorder_dump_sleep);
        struct timespec pause = { ms / 1000, (ms > 0 ? ms % 1000 : 1) * 1000000L };
        nanosleep(&pause, NULL);
    }
    pass(batch);        /* what came before the stop */
    free(batch);
    return NULL;
}

/* The thread does not exist in a child: the child may start its own. */
static void after_fork_in_child(void)
{
    pthread_mutex_init(&control, NULL);
    running = 0;
}

static void register_fork_handler(void)
{
    pthread_atfork(NULL, NULL, after_fork_in_child);
}

void recorder_background_dump(const char *pattern)
{
    static pthread_once_t fork_handler = PTHREAD_ONCE_INIT;
    recorder_init();
    pthread_once(&fork_handler, register_fork_handler);
    pthread_mutex_lock(&control);
    if (running) {
        pthread_mutex_unlock(&control);
        recorder_error("recorder: a background dump is already running");
        return;
    }
    select_all = !pattern || strcmp(pattern, "all") == 0;
    if (!select_all && recorder_compile_name_regex(&selection, pattern) != 0) {
        pthread_mutex_unlock(&control);
        recorder_error("recorder: invalid topic pattern '%s' for the "
                       "background dump", pattern);
        return;
    }
    atomic_store(&stopping, 0);
    cursor_count = 0;
    lost = 0;
    running = pthread_create(&thread, NULL, background, NULL) == 0;
    if (!running && !select_all)
        regfree(&selection);
    pthread_mutex_unlock(&control);
    RECORD(recorder_core, "Background dump started: %d", running);
}

void recorder_background_dump_stop(void)
{
    pthread_mutex_lock(&control);
    if (running) {
        atomic_store(&stopping, 1);
        pthread_join(thread, NULL);
        running = 0;
        if (!select_all)
            regfree(&selection);
        if (lost)
            recorder_error("recorder: background dump: %llu records "
                           "overwritten before they were shown", lost);
    }
    pthread_mutex_unlock(&control);
}
