/* core_clock.c - entry timestamps against clock_gettime(CLOCK_MONOTONIC).
 *
 *   core_clock COUNT    COUNT records, each between two clock_gettime calls,
 *                       with pauses of growing length every few records (so
 *                       the core re-anchors its TSC fit several times, once
 *                       after 300 ms idle); then
 *                       prints how far any timestamp fell outside its window
 *   core_clock fast     a RECORD then a RECORD_FAST: prints both timestamps
 *                       and the FAST flag of each
 */
#define _GNU_SOURCE
#include <recorder.h>
#include "pin.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

RECORDER(clocked, 16, "Timestamps under test");

static __u64 monotonic_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (__u64)now.tv_sec * 1000000000ull + (__u64)now.tv_nsec;
}

/* The entry this thread just wrote: it is pinned, so one shard has it. */
static const struct recorder_record *last_entry(void)
{
    const struct recorder_shard *shard = recorder_clocked_topic.shards[0];
    return &shard->entries[(shard->head - 1) & shard->mask];
}

static int fast_test(void)
{
    RECORD(clocked, "slow %d", 1);
    const struct recorder_record *first = last_entry();
    __u64 first_time = first->timestamp;
    unsigned first_flags = first->flags;
    RECORD_FAST(clocked, "fast %d", 2);
    const struct recorder_record *second = last_entry();
    printf("slow_flags %u fast_flags %u same_time %d\n", first_flags,
           second->flags, second->timestamp == first_time);
    return 0;
}

int main(int argc, char **argv)
{
    if (pin_to_cpu(0) != 0)
        return 2;
    if (argc == 2 && strcmp(argv[1], "fast") == 0)
        return fast_test();
    int count = argc > 1 ? atoi(argv[1]) : 0;
    __u64 max_early = 0, max_late = 0, max_window = 0;
    int outside = 0, mismatched = 0;
    for (int i = 0; i < count; i++) {
        if (i % 97 == 0) {
            /* 0, 50 us, 100 us ... up to ~1 ms, and once 300 ms before
             * the last 97 samples: re-anchors after short and long idle. */
            struct timespec pause = { 0, (i / 97 % 21) * 50000L };
            if (i + 97 >= count)
                pause.tv_nsec = 300000000L;
            nanosleep(&pause, NULL);
        }
        __u64 before = monotonic_ns();
        RECORD(clocked, "sample %d", i);
        __u64 after = monotonic_ns();
        const struct recorder_record *entry = last_entry();
        if (entry->args[0] != (__u64)i) {
            mismatched++;
            continue;
        }
        __u64 stamp = entry->timestamp;
        if (after - before > max_window)
            max_window = after - before;
        if (stamp < before && before - stamp > max_early)
            max_early = before - stamp;
        if (stamp > after && stamp - after > max_late)
            max_late = stamp - after;
        outside += stamp < before || stamp > after;
    }
    printf("samples %d mismatched %d outside %d max_early_ns %llu "
           "max_late_ns %llu max_window_ns %llu tsc %u\n", count, mismatched,
           outside, (unsigned long long)max_early,
           (unsigned long long)max_late, (unsigned long long)max_window,
           recorder_clock.use_tsc);
    return 0;
}
