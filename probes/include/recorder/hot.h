/* recorder/hot.h - what RECORD inlines: read the clock, pick the shard,
 * reserve a slot, publish it. Everything else is out of line in the core.
 *
 * Cost model (see `make bench`): one predictable branch when the topic is
 * off; otherwise one rdtsc, one thread-local CPU read (glibc's rseq area),
 * the CPU's shard head incremented in an rseq critical section (a plain
 * load and store: no locked instruction, which on Intel waits for the
 * previous record's stores to drain), and 144 bytes of stores. Rings of
 * 8192 entries or more (beyond L2) also prefetch the slot 16 records ahead
 * for writing.
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
    unsigned use_rseq;                  /* see recorder_rseq_increment */
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
        /* One register for the epoch: GCC otherwise builds two pointers
         * from `current` (bench/README.md, Intel: ~0.6 ns per RECORD with
         * the one below). */
        __asm__("" : "+r"(epoch));
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
#define RECORDER_HAVE_RSEQ 1
RECORDER_INLINE unsigned recorder_cpu(void)
{
    if (__builtin_expect(__rseq_size == 0, 0))
        return recorder_cpu_slow();
#if defined(__x86_64__) && defined(__SEG_FS) && !defined(__STRICT_ANSI__)
    /* One %fs-relative load (the area is at the thread pointer plus
     * __rseq_offset): ~0.6 ns less per RECORD on the Intel Xeon than
     * reading the thread pointer first (bench/README.md). GNU C only:
     * strict ISO C modes have no __seg_fs. */
    return *(volatile const __seg_fs __u32 *)
        ((uintptr_t)__rseq_offset + offsetof(struct rseq, cpu_id_start));
#else
    const struct rseq *area =
        (const struct rseq *)((char *)__builtin_thread_pointer()
                              + __rseq_offset);
    return *(volatile const __u32 *)&area->cpu_id_start;
#endif
}
#else
RECORDER_INLINE unsigned recorder_cpu(void) { return recorder_cpu_slow(); }
#endif

#if defined(__x86_64__) && defined(RECORDER_HAVE_RSEQ)
/* Increments a shard's head in an rseq critical section: a plain load and
 * store that the kernel restarts at `abort` if the thread is preempted,
 * migrated or signalled before the store. Every writer of a shard runs on
 * its CPU, so no locked instruction is needed. Only valid while every
 * shard has one CPU (recorder_clock.use_rseq, set once at start-up).
 * Returns 0, the old head and the new one (the record's sequence: the
 * increment's own register: one instruction fewer per RECORD than
 * recomputing it), or -1 if the thread left `cpu`. */
RECORDER_INLINE int recorder_rseq_increment(__u64 *head, unsigned cpu,
                                            __u64 *old, __u64 *sequence)
{
    __u64 value, next;
    __asm__ goto(
        ".pushsection __rseq_cs, \"aw\"\n\t"
        ".balign 32\n\t"
        "3:\n\t"
        ".long 0, 0\n\t"                         /* version, flags */
        ".quad 1f, (2f - 1f), 4f\n\t"            /* start, length, abort */
        ".popsection\n\t"
        "leaq 3b(%%rip), %%rax\n\t"
        "movq %%rax, %%fs:8(%[area])\n\t"       /* rseq->rseq_cs */
        "1:\n\t"
        "cmpl %[cpu], %%fs:4(%[area])\n\t"      /* rseq->cpu_id */
        "jnz 4f\n\t"
        "movq %[head], %[value]\n\t"
        "leaq 1(%[value]), %[next]\n\t"
        "movq %[next], %[head]\n\t"             /* commit */
        "2:\n\t"
        ".pushsection __rseq_failure, \"ax\"\n\t"
        ".byte 0x0f, 0xb9, 0x3d\n\t"             /* ud1 <sig>(%%rip), %%edi */
        ".long 0x53053053\n\t"                   /* glibc's RSEQ_SIG */
        "4:\n\t"
        "jmp %l[abort]\n\t"
        ".popsection\n\t"
        : [value] "=&r"(value), [next] "=&r"(next), [head] "+m"(*head)
        : [cpu] "r"(cpu), [area] "r"(__rseq_offset)
        : "rax", "memory", "cc"
        : abort);
    *old = value;
    *sequence = next;
    return 0;
abort:
    return -1;
}
#define RECORDER_RSEQ_INCREMENT 1
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
_Static_assert(__builtin_offsetof(struct recorder_record, topic_id)
               == __builtin_offsetof(struct recorder_record, tid) + 4
               && __builtin_offsetof(struct recorder_record, cpu)
               == __builtin_offsetof(struct recorder_record, arg_types) + 4
               && __builtin_offsetof(struct recorder_record, nargs)
               == __builtin_offsetof(struct recorder_record, arg_types) + 6
               && __builtin_offsetof(struct recorder_record, flags)
               == __builtin_offsetof(struct recorder_record, arg_types) + 7,
               "recorder_reserve writes the header as two 64-bit words");
#else
#error "recorder_reserve assumes a little-endian entry header"
#endif
#define RECORDER_META_NARGS(n)  ((__u64)(n) << 48)
#define RECORDER_META_FLAGS(f)  ((__u64)(f) << 56)

/* A ring larger than L2 streams through L3: the (up to 3) lines of the
 * entry 16 records (~250 ns) ahead are fetched now, so the stores do not
 * wait for them (9 MiB ring: ~18.5 -> ~16 ns per RECORD on the Intel Xeon;
 * smaller rings pay nothing, behind one predictable branch). Plain
 * prefetcht0 measured as good as prefetchw, which not every x86-64 has. */
#define RECORDER_PREFETCH_MASK 8191
#define RECORDER_PREFETCH_AHEAD 16
RECORDER_INLINE void recorder_prefetch_ahead(const struct recorder_shard *shard,
                                             __u64 index)
{
    const char *ahead = (const char *)
        &shard->entries[(index + RECORDER_PREFETCH_AHEAD) & shard->mask];
    __builtin_prefetch(ahead, 1, 3);
    __builtin_prefetch(ahead + 64, 1, 3);
    __builtin_prefetch(ahead + 128, 1, 3);
}

/* Reserves and stamps the next slot of this CPU's shard. `meta` holds the
 * argument kinds and RECORDER_META_NARGS(count), known at compile time. */
RECORDER_INLINE struct recorder_record *
recorder_reserve(struct recorder_topic *topic, int fast, __u64 meta,
                 __u64 *sequence)
{
    unsigned cpu = recorder_cpu();
    struct recorder_shard *shard =
        topic->shards[cpu % RECORDER_MAX_SHARDS];
    if (__builtin_expect(shard == NULL, 0))
        shard = recorder_shard_create(topic, cpu);
    /* The clock just before the head increment: rdtsc then overlaps the
     * previous record's stores instead of waiting behind them (AMD: ~1.5
     * ns per RECORD, ~2.8 ns with 12 arguments; reading it after the
     * argument stores measured 3 ns worse on the Intel Xeon). */
    __u64 now = fast ? 0 : recorder_now();
    __u64 index;
#ifdef RECORDER_RSEQ_INCREMENT
    /* Only a shard of this CPU alone: not the spare shard that every CPU
     * shares when memory ran out (its `cpu` is ~0). */
    if (__builtin_expect(recorder_clock.use_rseq
                         && shard->cpu == cpu % RECORDER_MAX_SHARDS, 1)) {
        while (__builtin_expect(
                   recorder_rseq_increment(&shard->head, cpu, &index,
                                           sequence), 0)) {
            cpu = recorder_cpu();
            shard = topic->shards[cpu % RECORDER_MAX_SHARDS];
            if (__builtin_expect(shard == NULL, 0))
                shard = recorder_shard_create(topic, cpu);
            if (__builtin_expect(shard->cpu != cpu % RECORDER_MAX_SHARDS, 0)) {
                index = atomic_fetch_add_explicit(
                    (_Atomic __u64 *)&shard->head, 1, memory_order_relaxed);
                *sequence = index + 1;
                break;
            }
        }
    } else
#endif
    {
        index = atomic_fetch_add_explicit((_Atomic __u64 *)&shard->head, 1,
                                          memory_order_relaxed);
        *sequence = index + 1;
    }
    struct recorder_record *entry = &shard->entries[index & shard->mask];
    /* One register for the slot: GCC otherwise recomputes index * 144 for
     * several of the stores below. */
    __asm__("" : "+r"(entry));
    if (__builtin_expect(shard->mask >= RECORDER_PREFETCH_MASK, 0))
        recorder_prefetch_ahead(shard, index);
    /* Invalidate the slot before rewriting it (seqlock writer side). */
    atomic_store_explicit((_Atomic __u64 *)&entry->sequence, 0,
                          memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
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
RECORDER_INLINE void recorder_commit(struct recorder_record *entry,
                                   __u64 sequence)
{
    atomic_store_explicit((_Atomic __u64 *)&entry->sequence, sequence,
                          memory_order_release);
}

#endif /* RECORDER_HOT_H */
