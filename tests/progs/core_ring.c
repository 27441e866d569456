/* core_ring.c - rings: wrap-around, and threads hammering one topic.
 *
 *   core_ring wrap COUNT              pinned to CPU 0, COUNT records, dump
 *   core_ring threads N PER_THREAD    N threads into a ring holding them all,
 *                                     then every entry read back and checked
 *   core_ring churn N PER_THREAD      N threads, thread t pinned to CPU
 *                                     t % CPUs, into a 64-entry ring while
 *                                     main reads it; every accepted entry is
 *                                     checked, then the final ring
 *
 * churn pins its writers because two writers of one CPU can tear an entry
 * when one is preempted mid-record while the other laps the whole ring (see
 * "Limits" in probes/PROBES.md): with one writer per CPU the seqlock rule
 * alone must keep every accepted entry whole.
 *
 * Rings are read the way an outside reader would: from `recorder_registry`,
 * with the seqlock rule of probes/PROBES.md (sequence == index + 1 before
 * and after the copy).
 */
#define _GNU_SOURCE
#include <recorder.h>
#include "pin.h"

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

RECORDER(ring, 23, "Keeps the last 23 records per CPU");
RECORDER(hammer, 65536, "Large enough for every record of the threads test");
RECORDER(churn, 64, "Small ring, overwritten while it is read");

#define MAX_THREADS 8
#define CHECK_SALT  0x9e3779b97f4a7c15ull

static unsigned per_thread;
static atomic_int writers_running;
static pthread_barrier_t start_line;    /* writers start together */

static void pin_to_cpu0(void)
{
    if (pin_to_cpu(0) != 0) {
        perror("sched_setaffinity");
        exit(2);
    }
}

/* Every argument derives from (thread, counter), so any mix of two
 * entries breaks at least one of these equations. */
static __u64 arg_value(unsigned thread, unsigned counter, unsigned slot)
{
    return ((__u64)thread << 40 | counter) * (slot + 1) ^ CHECK_SALT;
}

static void *writer(void *arg)
{
    unsigned thread = (unsigned)(uintptr_t)arg;
    unsigned tid = (unsigned)syscall(SYS_gettid);
    int big = thread & 0x100;
    thread &= 0xff;
    if (!big)
        pin_to_cpu(thread % (unsigned)sysconf(_SC_NPROCESSORS_ONLN));
    pthread_barrier_wait(&start_line);
    for (unsigned i = 0; i < per_thread; i++) {
        if (big)
            RECORD(hammer, "t%u i%u tid%u %lu %lu %lu %lu %lu %lu %lu %lu %lu",
                   thread, i, tid, arg_value(thread, i, 3),
                   arg_value(thread, i, 4), arg_value(thread, i, 5),
                   arg_value(thread, i, 6), arg_value(thread, i, 7),
                   arg_value(thread, i, 8), arg_value(thread, i, 9),
                   arg_value(thread, i, 10), arg_value(thread, i, 11));
        else
            RECORD(churn, "t%u i%u tid%u %lu %lu %lu %lu %lu %lu %lu %lu %lu",
                   thread, i, tid, arg_value(thread, i, 3),
                   arg_value(thread, i, 4), arg_value(thread, i, 5),
                   arg_value(thread, i, 6), arg_value(thread, i, 7),
                   arg_value(thread, i, 8), arg_value(thread, i, 9),
                   arg_value(thread, i, 10), arg_value(thread, i, 11));
    }
    atomic_fetch_sub(&writers_running, 1);
    return NULL;
}

/* Seqlock read of entry `index`: 1 with a whole copy, 0 if overwritten. */
static int read_entry(const struct recorder_shard *shard, __u64 index,
                      struct recorder_record *copy)
{
    const struct recorder_record *slot = &shard->entries[index & shard->mask];
    if (atomic_load_explicit((_Atomic __u64 *)&slot->sequence,
                             memory_order_acquire) != index + 1)
        return 0;
    memcpy(copy, slot, sizeof(*copy));
    atomic_thread_fence(memory_order_acquire);
    return atomic_load_explicit((_Atomic __u64 *)&slot->sequence,
                                memory_order_relaxed) == index + 1
        && copy->sequence == index + 1;
}

/* 1 if the entry is whole and consistent with itself. */
static int entry_is_whole(const struct recorder_record *entry,
                          const struct recorder_topic *topic,
                          unsigned threads)
{
    __u64 thread = entry->args[0], counter = entry->args[1];
    if (entry->nargs != 12 || entry->arg_types != 0
        || entry->topic_id != topic->id || thread >= threads
        || counter >= per_thread || entry->tid != entry->args[2])
        return 0;
    for (unsigned slot = 3; slot < 12; slot++)
        if (entry->args[slot]
            != arg_value((unsigned)thread, (unsigned)counter, slot))
            return 0;
    return 1;
}

static void start_writers(unsigned threads, int big, pthread_t *ids)
{
    atomic_store(&writers_running, (int)threads);
    pthread_barrier_init(&start_line, NULL, threads);
    for (unsigned t = 0; t < threads; t++)
        pthread_create(&ids[t], NULL, writer,
                       (void *)(uintptr_t)(t | (big ? 0x100u : 0u)));
}

/* Reads back every entry that a ring still holds; checks each one and the
 * order of each thread's counters within a shard. */
static void read_back(const struct recorder_topic *topic, unsigned threads,
                      unsigned char *seen)
{
    unsigned long read = 0, torn = 0, duplicates = 0, out_of_order = 0;
    unsigned long backwards_time = 0, skipped = 0;
    unsigned shards = 0;
    __u64 heads = 0;
    for (unsigned s = 0; s < RECORDER_MAX_SHARDS; s++) {
        const struct recorder_shard *shard = topic->shards[s];
        if (!shard)
            continue;
        shards++;
        long long last_counter[MAX_THREADS];
        __u64 last_time[MAX_THREADS] = { 0 };
        memset(last_counter, 0xff, sizeof(last_counter));
        __u64 head = shard->head;
        heads += head;
        __u64 first = head > shard->keep ? head - shard->keep : 0;
        for (__u64 index = first; index < head; index++) {
            struct recorder_record entry;
            if (!read_entry(shard, index, &entry)) {
                skipped++;
                continue;
            }
            read++;
            if (!entry_is_whole(&entry, topic, threads)) {
                torn++;
                continue;
            }
            unsigned thread = (unsigned)entry.args[0];
            unsigned counter = (unsigned)entry.args[1];
            if (seen) {
                unsigned char *mark = &seen[thread * per_thread + counter];
                duplicates += *mark;
                *mark = 1;
            }
            if ((long long)counter <= last_counter[thread])
                out_of_order++;
            if (entry.timestamp < last_time[thread])
                backwards_time++;
            last_counter[thread] = counter;
            last_time[thread] = entry.timestamp;
        }
    }
    unsigned long missing = 0;
    if (seen)
        for (unsigned long i = 0; i < (unsigned long)threads * per_thread; i++)
            missing += !seen[i];
    printf("records %llu read %lu skipped %lu torn %lu duplicates %lu "
           "missing %lu out_of_order %lu backwards_time %lu\n",
           (unsigned long long)heads, read, skipped, torn, duplicates,
           missing, out_of_order, backwards_time);
    fprintf(stderr, "shards used %u\n", shards);  /* up to the scheduler */
}

static int threads_test(unsigned threads)
{
    pthread_t ids[MAX_THREADS];
    unsigned char *seen = calloc((size_t)threads * per_thread, 1);
    start_writers(threads, 1, ids);
    for (unsigned t = 0; t < threads; t++)
        pthread_join(ids[t], NULL);
    read_back(&recorder_hammer_topic, threads, seen);
    free(seen);
    return 0;
}

/* Reads the churning ring while it is written: every entry accepted by
 * the seqlock rule must be whole. */
static int churn_test(unsigned threads)
{
    pthread_t ids[MAX_THREADS];
    unsigned long accepted = 0, torn = 0, passes = 0;
    start_writers(threads, 0, ids);
    while (atomic_load(&writers_running) > 0) {
        passes++;
        for (unsigned s = 0; s < RECORDER_MAX_SHARDS; s++) {
            const struct recorder_shard *shard =
                atomic_load((_Atomic(struct recorder_shard *) *)
                            &recorder_churn_topic.shards[s]);
            if (!shard)
                continue;
            __u64 head = atomic_load((_Atomic __u64 *)&shard->head);
            __u64 first = head > shard->keep ? head - shard->keep : 0;
            for (__u64 index = first; index < head; index++) {
                struct recorder_record entry;
                if (!read_entry(shard, index, &entry))
                    continue;
                accepted++;
                torn += !entry_is_whole(&entry, &recorder_churn_topic,
                                        threads);
            }
        }
    }
    for (unsigned t = 0; t < threads; t++)
        pthread_join(ids[t], NULL);
    printf("live_accepted_nonzero %d live_torn %lu\n", accepted > 0, torn);
    fprintf(stderr, "live passes %lu accepted %lu\n", passes, accepted);
    read_back(&recorder_churn_topic, threads, NULL);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "wrap") == 0) {
        pin_to_cpu0();
        int count = atoi(argv[2]);
        for (int i = 0; i < count; i++)
            RECORD(ring, "record %d of %d", i, count);
        printf("shown %u\n", recorder_dump_for("ring"));
        return 0;
    }
    if (argc == 4) {
        unsigned threads = (unsigned)atoi(argv[2]);
        per_thread = (unsigned)atoi(argv[3]);
        if (threads < 1 || threads > MAX_THREADS)
            return 2;
        if (strcmp(argv[1], "threads") == 0)
            return threads_test(threads);
        if (strcmp(argv[1], "churn") == 0)
            return churn_test(threads);
    }
    fprintf(stderr, "usage: core_ring wrap COUNT | threads|churn N PER\n");
    return 2;
}
