/* core.c - the registry of topics and tweaks, shards, threads and fork.
 *
 * Nothing needs a setup call: the library's constructor (or the first topic
 * registered, whichever comes first, for static links) initializes the clock,
 * the shared-memory export and RECORDER_TRACES/RECORDER_TWEAKS/RECORDER_DUMP.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

RECORDER(recorder_core, 64, "The recorder core's own operations");
RECORDER(recorder_signals, 32, "Signals the recorder caught");

struct recorder_registry recorder_registry = {
    .version = RECORDER_ENTRY_VERSION,
    .entry_size = RECORDER_ENTRY_SIZE,
    .shard_count = RECORDER_MAX_SHARDS,
};

__thread __u32 recorder_tid_cache __attribute__((tls_model("initial-exec")));
__thread __u32 recorder_cpu_fallback __attribute__((tls_model("initial-exec")));

pthread_mutex_t recorder_create_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static atomic_flag registry_lock = ATOMIC_FLAG_INIT;

static void lock_registry(void)
{
    while (atomic_flag_test_and_set_explicit(&registry_lock,
                                             memory_order_acquire))
        sched_yield();
}

static void unlock_registry(void)
{
    atomic_flag_clear_explicit(&registry_lock, memory_order_release);
}

__u32 recorder_tid_slow(void)
{
    recorder_tid_cache = (__u32)syscall(SYS_gettid);
    return recorder_tid_cache;
}

unsigned recorder_cpu_slow(void)
{
    int cpu = sched_getcpu();
    return cpu < 0 ? 0 : (unsigned)cpu;
}

/* fork: a lock held by another thread when fork copies the process stays
 * held forever in the child, where that thread does not exist. So the
 * thread that forks takes every lock of the core first, in the order they
 * nest (recorder_create_lock, around topic registration; then the spec
 * items, the registry and the share file, never held together otherwise),
 * and releases them after fork, in the parent and in the child. A dump in
 * progress and a clock recalibration only make others give up, never
 * wait: their flags are just cleared in the child. A fork called from a
 * signal handler that interrupted the core inside one of these locks waits
 * forever, as it does when the handler interrupted malloc. */
static void before_fork(void)
{
    pthread_mutex_lock(&recorder_create_lock);
    recorder_spec_fork_prepare();
    lock_registry();
    recorder_share_fork_prepare();
}

static void after_fork_in_parent(void)
{
    recorder_share_fork_parent();
    unlock_registry();
    recorder_spec_fork_release();
    pthread_mutex_unlock(&recorder_create_lock);
}

static void after_fork_in_child(void)
{
    recorder_tid_cache = 0;
    recorder_clock_after_fork();
    recorder_dump_after_fork();
    unlock_registry();
    recorder_spec_fork_release();
    pthread_mutex_unlock(&recorder_create_lock);
    /* Last: a shard made meanwhile (a signal handler's RECORD) must not be
     * carved from the file being replaced, so the share lock is held until
     * the child has its own. */
    recorder_share_after_fork();
    RECORD(recorder_core, "Forked from parent, now pid %d", (int)getpid());
}

static void add_topic(struct recorder_topic *topic);

static void initialize(void)
{
    recorder_clock_init();
    pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
    recorder_share_init();
    recorder_registry.magic = RECORDER_REGISTRY_MAGIC;
    recorder_dump_at_exit_init();
    /* The core's own topics first, so their records carry their ids. */
    add_topic(&recorder_recorder_core_topic);
    add_topic(&recorder_recorder_signals_topic);
    const char *traces = secure_getenv("RECORDER_TRACES");
    const char *tweaks = secure_getenv("RECORDER_TWEAKS");
    /* Not recorder_trace_set: it calls recorder_init, and pthread_once
     * called again from its own init routine never returns. */
    if (traces)
        recorder_spec_apply(traces, 1);
    if (tweaks)
        recorder_spec_apply(tweaks, 1);
}

void recorder_init(void)
{
    pthread_once(&init_once, initialize);
}

__attribute__((constructor(101))) static void recorder_library_init(void)
{
    recorder_init();
}

/* Adds a topic once (the core's own topics are added at initialization,
 * then again by their constructors). */
static void add_topic(struct recorder_topic *topic)
{
    lock_registry();
    for (struct recorder_topic *known = recorder_registry.topics; known;
         known = known->next) {
        if (known == topic) {
            unlock_registry();
            return;
        }
    }
    topic->id = recorder_registry.topic_count;
    topic->next = recorder_registry.topics;
    recorder_dump_select(topic);
    /* Readers walk the list without the lock (dumps in signal handlers,
     * BPF, debuggers): publish the topic only once it is complete. */
    atomic_store_explicit(
        (_Atomic(struct recorder_topic *) *)&recorder_registry.topics, topic,
        memory_order_release);
    atomic_store_explicit((_Atomic __u32 *)&recorder_registry.topic_count,
                          topic->id + 1, memory_order_release);
    unlock_registry();
    recorder_share_topic(topic);
    recorder_spec_apply_pending(topic, NULL);
    RECORD(recorder_core, "Registered topic %s id %u size %u",
           topic->name, topic->id, topic->size);
}

void recorder_topic_register(struct recorder_topic *topic)
{
    recorder_init();
    add_topic(topic);
}

void recorder_tweak_register(struct recorder_tweak *tweak)
{
    recorder_init();
    lock_registry();
    /* Twice (the seed's recorder_tweak_activate after the constructor)
     * would make the list a loop. */
    for (struct recorder_tweak *known = recorder_registry.tweaks; known;
         known = known->next) {
        if (known == tweak) {
            unlock_registry();
            return;
        }
    }
    tweak->next = recorder_registry.tweaks;
    atomic_store_explicit(
        (_Atomic(struct recorder_tweak *) *)&recorder_registry.tweaks, tweak,
        memory_order_release);
    unlock_registry();
    recorder_spec_apply_pending(NULL, tweak);
}

static __u32 power_of_two_at_least(__u32 size)
{
    __u32 capacity = 1;
    while (capacity < size && capacity < (1u << 30))
        capacity <<= 1;
    return capacity;
}

/* Last resort when memory runs out: records still go somewhere, and the
 * shard says which topic and CPU it stands for. */
static union {
    struct recorder_shard shard;    /* ISO C: no flexible member inside */
    unsigned char bytes[sizeof(struct recorder_shard)     /* a struct */
                        + 16 * sizeof(struct recorder_record)];
} spare_shard = {
    /* cpu ~0: no CPU's own, so writers take the locked fetch-add on it. */
    .shard = { .mask = 15, .keep = 16, .topic_id = ~0u, .cpu = ~0u },
};

#define HUGE_PAGE ((size_t)2 << 20)

/* What map_ring maps for `bytes`: huge pages for rings of one or more. */
static size_t ring_mapping_bytes(size_t bytes)
{
    return bytes < HUGE_PAGE ? bytes
        : (bytes + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
}

/* Anonymous memory for a ring, populated at once. A ring of a huge page or
 * more asks for huge pages (THP in `madvise` mode gives them): a 9 MiB
 * ring on 4 KiB pages has more pages than the TLB has entries, and a
 * RECORD into it cost ~40% more (bench/README.md). */
static void *map_ring(size_t bytes)
{
    size_t length = ring_mapping_bytes(bytes);
    if (length == bytes) {
        void *memory = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        return memory == MAP_FAILED ? NULL : memory;
    }
    /* Aligned on a huge page: map one more and trim both ends. */
    char *region = mmap(NULL, length + HUGE_PAGE, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED)
        return NULL;
    char *aligned = (char *)(((uintptr_t)region + HUGE_PAGE - 1)
                             & ~(uintptr_t)(HUGE_PAGE - 1));
    if (aligned > region)
        munmap(region, (size_t)(aligned - region));
    munmap(aligned + length, (size_t)(region + HUGE_PAGE - aligned));
    madvise(aligned, length, MADV_HUGEPAGE);
    if (madvise(aligned, length, MADV_POPULATE_WRITE) != 0)
        for (size_t at = 0; at < length; at += 4096)   /* before 5.14 */
            ((volatile char *)aligned)[at] = 0;
    return aligned;
}

struct recorder_shard *recorder_shard_create(struct recorder_topic *topic,
                                             unsigned cpu)
{
    unsigned slot = cpu % RECORDER_MAX_SHARDS;
    __u32 keep = topic->size ? topic->size : 1;
    __u32 capacity = power_of_two_at_least(keep);
    size_t bytes = sizeof(struct recorder_shard)
                 + (size_t)capacity * sizeof(struct recorder_record);

    /* mmap, not malloc: RECORD may run in a signal handler. Populated at
     * once: BPF reads entries with faults disabled, and an entry ending on
     * a never-touched page would be unreadable to it (a short entry leaves
     * its tail unwritten). */
    struct recorder_shard *shard = recorder_share_alloc_shard(topic, slot,
                                                              bytes);
    int shared = shard != NULL;
    if (!shard) {
        shard = map_ring(bytes);
        if (!shard)
            return &spare_shard.shard;
    }
    shard->mask = capacity - 1;
    shard->keep = keep < capacity ? keep : capacity;   /* 2^30 at most */
    shard->topic_id = topic->id;
    shard->cpu = slot;

    struct recorder_shard *expected = NULL;
    if (!atomic_compare_exchange_strong(
            (_Atomic(struct recorder_shard *) *)&topic->shards[slot],
            &expected, shard)) {
        /* Another thread won the race; its shard serves us too. A shard
         * carved from the shared file stays there, marked unused. */
        if (shared)
            shard->topic_id = ~0u;
        else
            munmap(shard, ring_mapping_bytes(bytes));
        return expected;
    }
    if (topic != &recorder_recorder_core_topic)
        RECORD(recorder_core, "Created shard of topic %s for CPU %u, "
               "%u entries", topic->name, slot, capacity);
    return shard;
}

void recorder_write_all(int fd, const char *text, size_t length)
{
    while (length) {
        ssize_t written = write(fd, text, length);
        if (written < 0 && errno == EINTR)
            continue;
        if (written <= 0)
            return;
        text += written;
        length -= (size_t)written;
    }
}

void recorder_error(const char *format, ...)
{
    char message[512];
    va_list args;
    va_start(args, format);
    int length = vsnprintf(message, sizeof(message) - 1, format, args);
    va_end(args);
    if (length < 0)
        return;
    if ((size_t)length > sizeof(message) - 2)
        length = sizeof(message) - 2;
    message[length++] = '\n';
    recorder_write_all(2, message, (size_t)length);
}
