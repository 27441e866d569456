/* recorder/hot.h - what RECORD inlines: read the clock, pick the shard,
 * reserve a slot, publish it. Everything else is out of line in the core.
 *
 * Cost model (see `make bench`): one predictable branch when the topic is
 * off; otherwise one rdtsc, one thread-local CPU read (glibc's rseq area),
 * one uncontended fetch-add on the CPU's shard, and 144 bytes of stores.
 *
 * Everything here is always_inline: as plain `static inline`, GCC -O2
 * keeps recorder_reserve out of line even for a single RECORD in a
 * function, which costs ~2.2 ns per record (bench/README.md).
 */
#ifndef RECORDER_HOT_H
#define RECORDER_HOT_H

#include <stddef.h>
#include <stdint.h>
#include <stdatomic.h>
#include "registry.h"

#define RECORDER_INLINE static inline __attribute__((always_inline))

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define RECORDER_HAVE_TSC 1
#endif

/* TSC to CLOCK_MONOTONIC: ns = ns_base + ((tsc - tsc_base) * mult >> 32)
 * while tsc - tsc_base < limit (which keeps the product in 64 bits). Past
 * the limit one writer re-measures the pair and the slope with
 * clock_gettime and publishes the other of two epochs. The core only uses
 * the TSC when the kernel's own clocksource for CLOCK_MONOTONIC is the TSC,
 * so both count the same ticks. */
struct recorder_clock_epoch {
    __u64 tsc_base;
    __u64 ns_base;
    __u64 mult;
    __u64 limit;
};
struct recorder_clock {
    _Atomic unsigned current;           /* index of the live epoch */
    unsigned use_tsc;
    struct recorder_clock_epoch epoch[2];
};
extern struct recorder_clock recorder_clock;
__u64 recorder_clock_slow(void);
__u64 recorder_clock_now(void);         /* what RECORD timestamps with */

RECORDER_INLINE __u64 recorder_now(void)
{
#ifdef RECORDER_HAVE_TSC
    if (__builtin_expect(recorder_clock.use_tsc, 1)) {
        unsigned current = atomic_load_explicit(&recorder_clock.current,
                                                memory_order_acquire);
        const struct recorder_clock_epoch *epoch =
            &recorder_clock.epoch[current & 1];
        __u64 delta = __rdtsc() - epoch->tsc_base;
        if (__builtin_expect(delta < epoch->limit, 1))
            return epoch->ns_base + ((delta * epoch->mult) >> 32);
    }
#endif
    return recorder_clock_slow();
}

/* The CPU the thread runs on, from glibc's rseq area (kept current by the
 * kernel at every migration); 0 where rseq is not registered. Only picks a
 * shard: a stale value costs contention, never correctness. */
extern __thread __u32 recorder_cpu_fallback
    __attribute__((tls_model("initial-exec")));
unsigned recorder_cpu_slow(void);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 35)
#include <sys/rseq.h>
RECORDER_INLINE unsigned recorder_cpu(void)
{
    if (__builtin_expect(__rseq_size == 0, 0))
        return recorder_cpu_slow();
    const struct rseq *area =
        (const struct rseq *)((char *)__builtin_thread_pointer()
                              + __rseq_offset);
    return *(volatile const __u32 *)&area->cpu_id_start;
}
#else
RECORDER_INLINE unsigned recorder_cpu(void) { return recorder_cpu_slow(); }
#endif

/* Thread id cache, reset in the child after fork. */
extern __thread __u32 recorder_tid_cache
    __attribute__((tls_model("initial-exec")));
__u32 recorder_tid_slow(void);
RECORDER_INLINE __u32 recorder_tid(void)
{
    __u32 tid = recorder_tid_cache;
    return __builtin_expect(tid != 0, 1) ? tid : recorder_tid_slow();
}

/* Never returns NULL: without memory it hands out a static spare shard. */
struct recorder_shard *recorder_shard_create(struct recorder_topic *topic,
                                             unsigned cpu);

/* The header word at arg_types: arg_types | cpu << 32 | nargs << 48 |
 * flags << 56, written with one store (as is tid | topic_id << 32). */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
_Static_assert(__builtin_offsetof(struct recorder_entry, topic_id)
               == __builtin_offsetof(struct recorder_entry, tid) + 4
               && __builtin_offsetof(struct recorder_entry, cpu)
               == __builtin_offsetof(struct recorder_entry, arg_types) + 4
               && __builtin_offsetof(struct recorder_entry, nargs)
               == __builtin_offsetof(struct recorder_entry, arg_types) + 6
               && __builtin_offsetof(struct recorder_entry, flags)
               == __builtin_offsetof(struct recorder_entry, arg_types) + 7,
               "recorder_reserve writes the header as two 64-bit words");
#else
#error "recorder_reserve assumes a little-endian entry header"
#endif
#define RECORDER_META_NARGS(n)  ((__u64)(n) << 48)
#define RECORDER_META_FLAGS(f)  ((__u64)(f) << 56)

/* Reserves and stamps the next slot of this CPU's shard. `meta` holds the
 * argument kinds and RECORDER_META_NARGS(count), known at compile time. */
RECORDER_INLINE struct recorder_entry *
recorder_reserve(struct recorder_topic *topic, int fast, __u64 meta,
                 __u64 *sequence)
{
    unsigned cpu = recorder_cpu();
    struct recorder_shard *shard =
        topic->shards[cpu % RECORDER_MAX_SHARDS];
    if (__builtin_expect(shard == NULL, 0))
        shard = recorder_shard_create(topic, cpu);
    /* The clock just before the fetch-add: rdtsc then overlaps the
     * previous record's stores and the fetch-add instead of waiting
     * behind them (~1.5 ns per RECORD here, ~2.8 ns with 12 arguments). */
    __u64 now = fast ? 0 : recorder_now();
    __u64 index = atomic_fetch_add_explicit((_Atomic __u64 *)&shard->head, 1,
                                            memory_order_relaxed);
    struct recorder_entry *entry = &shard->entries[index & shard->mask];
    /* Invalidate the slot before rewriting it (seqlock writer side). */
    atomic_store_explicit((_Atomic __u64 *)&entry->sequence, 0,
                          memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    *sequence = index + 1;
    __u64 flags = 0;
    if (fast) {
        if (__builtin_expect(index != 0, 1)) {
            now = shard->entries[(index - 1) & shard->mask].timestamp;
            flags = RECORDER_ENTRY_FAST_TIMESTAMP;
        } else {
            now = recorder_now();
        }
    }
    entry->timestamp = now;
    __u64 ids = recorder_tid() | (__u64)topic->id << 32;
    meta |= (__u64)(__u16)cpu << 32 | flags << 56;
    __builtin_memcpy(&entry->tid, &ids, sizeof(ids));
    __builtin_memcpy(&entry->arg_types, &meta, sizeof(meta));
    return entry;
}

/* Publishes the entry: readers accept it once `sequence` is set. */
RECORDER_INLINE void recorder_commit(struct recorder_entry *entry,
                                   __u64 sequence)
{
    atomic_store_explicit((_Atomic __u64 *)&entry->sequence, sequence,
                          memory_order_release);
}

#endif /* RECORDER_HOT_H */
