/* record_bench.c - cost of RECORD and its references, one JSON line per
 * sample (see bench.h); bench/run.py builds, runs and summarizes it.
 *
 *   record_bench [ROUNDS [SAMPLE_MS [CPU]]]
 *
 * Every loop varies an argument per operation and every operation stays
 * observable: records land in rings that the final check reads back, clock
 * values are summed into a volatile sink.
 */
#include "bench.h"

#include <recorder.h>
#include <stdatomic.h>
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define BENCH_HAVE_RDTSC 1
#endif

#ifndef BENCH_RING
#define BENCH_RING 1024     /* entries per CPU shard: 144 KiB, fits L2 */
#endif

RECORDER(bench, BENCH_RING, "Benchmark topic");
RECORDER(bench_small, 64, "Benchmark topic, 9 KiB ring: L1");
RECORDER(bench_big, 65536, "Benchmark topic, 9 MiB ring: beyond L2");
RECORDER(bench_off, BENCH_RING, "Benchmark topic, disabled");

static volatile uint64_t sink;

static void loop_empty(uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
#define EMPTY(k) (void)(k)
        BENCH_REPEAT(EMPTY, i);
    }
}

static void loop_clock_gettime(uint64_t n)
{
    uint64_t sum = 0;
    for (uint64_t i = 0; i < n; i++) {
#define GETTIME(k)                                                          \
        do {                                                                \
            struct timespec now;                                            \
            clock_gettime(CLOCK_MONOTONIC, &now);                           \
            sum += (uint64_t)now.tv_nsec;                                   \
        } while (0)
        BENCH_REPEAT(GETTIME, i);
    }
    sink = sum;
}

#ifdef BENCH_HAVE_RDTSC
static void loop_rdtsc(uint64_t n)
{
    uint64_t sum = 0;
    for (uint64_t i = 0; i < n; i++) {
#define RDTSC(k) sum += __rdtsc()
        BENCH_REPEAT(RDTSC, i);
    }
    sink = sum;
}
#endif

static void loop_record0(uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
#define RECORD0(k) RECORD(bench, "tick")
        BENCH_REPEAT(RECORD0, i);
    }
}

/* Four integers: the same payload as the LTTng event of lttng_bench.c. */
#define RECORD4(k) RECORD(bench, "a=%lu b=%lu c=%lu d=%d",                  \
                          (k), (k) + 1, (k) * 3, 7)

static void loop_record4(uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        BENCH_REPEAT(RECORD4, i);
}

static void loop_record12(uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
#define RECORD12(k)                                                         \
        RECORD(bench, "%lu %lu %lu %lu %lu %lu %lu %lu %lu %lu %lu %lu",    \
               (k), (k) + 1, (k) + 2, (k) + 3, (k) + 4, (k) + 5, (k) + 6,   \
               (k) + 7, (k) + 8, (k) + 9, (k) + 10, (k) + 11)
        BENCH_REPEAT(RECORD12, i);
    }
}

static void loop_record_fast(uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
#define FAST4(k) RECORD_FAST(bench, "a=%lu b=%lu c=%lu d=%d",               \
                             (k), (k) + 1, (k) * 3, 7)
        BENCH_REPEAT(FAST4, i);
    }
}

static void loop_disabled(uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
#define OFF4(k) RECORD(bench_off, "a=%lu b=%lu c=%lu d=%d",                 \
                       (k), (k) + 1, (k) * 3, 7)
        BENCH_REPEAT(OFF4, i);
    }
}

static void loop_record4_small(uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
#define SMALL4(k) RECORD(bench_small, "a=%lu b=%lu c=%lu d=%d",             \
                         (k), (k) + 1, (k) * 3, 7)
        BENCH_REPEAT(SMALL4, i);
    }
}

static void loop_record4_big(uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
#define BIG4(k) RECORD(bench_big, "a=%lu b=%lu c=%lu d=%d",                 \
                       (k), (k) + 1, (k) * 3, 7)
        BENCH_REPEAT(BIG4, i);
    }
}

/* ---------------------------------------------------------------------- */
/* Threads: each runs loop_record4 into the same topic, pinned to its CPU */
/* ---------------------------------------------------------------------- */

struct worker {
    pthread_t thread;
    int cpu;
    uint64_t iterations;
    _Atomic int *ready;     /* start barrier */
    int count;
    uint64_t start, end;            /* CLOCK_MONOTONIC */
    uint64_t cpu_start, cpu_end;    /* CLOCK_THREAD_CPUTIME_ID */
};

static uint64_t thread_cpu_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
    return (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
}

static void *worker_main(void *argument)
{
    struct worker *w = argument;
    bench_pin(w->cpu);
    loop_record4(w->iterations / 16 + 1);       /* warm this CPU's shard */
    atomic_fetch_add(w->ready, 1);
    while (atomic_load(w->ready) < w->count)
        ;
    w->cpu_start = thread_cpu_ns();
    w->start = bench_ns();
    loop_record4(w->iterations);
    w->end = bench_ns();
    w->cpu_end = thread_cpu_ns();
    return NULL;
}

/* One sample with `count` threads on CPUs first_cpu, first_cpu + 1...:
 * prints the mean per-thread ns per record, the aggregate throughput in
 * records per microsecond (from the first start to the last end), and the
 * smallest share of its wall time a thread spent on its CPU (below 1 when
 * something else ran there: another process, or a blocked writer). */
static void sample_threads(int count, uint64_t iterations, int first_cpu,
                           long cpus, int round)
{
    struct worker workers[2];
    _Atomic int ready = 0;
    for (int t = 0; t < count; t++) {
        workers[t] = (struct worker) {
            .cpu = (int)((first_cpu + t) % cpus),
            .iterations = iterations,
            .ready = &ready,
            .count = count,
        };
        pthread_create(&workers[t].thread, NULL, worker_main, &workers[t]);
    }
    uint64_t first = UINT64_MAX, last = 0;
    double per_thread = 0, on_cpu = 1;
    for (int t = 0; t < count; t++) {
        pthread_join(workers[t].thread, NULL);
        struct worker *w = &workers[t];
        first = w->start < first ? w->start : first;
        last = w->end > last ? w->end : last;
        per_thread += (double)(w->end - w->start)
                    / (double)(iterations * BENCH_UNROLL) / count;
        double share = (double)(w->cpu_end - w->cpu_start)
                     / (double)(w->end - w->start);
        on_cpu = share < on_cpu ? share : on_cpu;
    }
    double records = (double)iterations * BENCH_UNROLL * count;
    printf("{\"case\": \"threads%d\", \"round\": %d, \"ns\": %.4f, "
           "\"per_us\": %.4f, \"on_cpu\": %.4f}\n", count, round, per_thread,
           records / ((double)(last - first) / 1000.0), on_cpu);
}

static uint64_t records_in(const struct recorder_topic *topic)
{
    uint64_t total = 0;
    for (int s = 0; s < RECORDER_MAX_SHARDS; s++)
        if (topic->shards[s])
            total += topic->shards[s]->head;
    return total;
}

int main(int argc, char **argv)
{
    struct bench_options options = bench_options(argc, argv);
    RECORDER_TRACE(bench_off) = -1;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (bench_pin(options.cpu) != 0)
        fprintf(stderr, "record_bench: cannot pin to CPU %d\n", options.cpu);

    struct bench_case cases[] = {
        { "empty", loop_empty, 0 },
        { "clock_gettime", loop_clock_gettime, 0 },
#ifdef BENCH_HAVE_RDTSC
        { "rdtsc", loop_rdtsc, 0 },
#endif
        { "record0", loop_record0, 0 },
        { "record4", loop_record4, 0 },
        { "record12", loop_record12, 0 },
        { "record_fast", loop_record_fast, 0 },
        { "disabled", loop_disabled, 0 },
        { "record4_small", loop_record4_small, 0 },
        { "record4_big", loop_record4_big, 0 },
    };
    size_t count = sizeof(cases) / sizeof(cases[0]);
    for (size_t i = 0; i < count; i++)
        bench_calibrate(&cases[i], options.sample_ns);
    uint64_t thread_iterations = 0;       /* each thread runs loop_record4 */
    for (size_t i = 0; i < count; i++)
        if (cases[i].loop == loop_record4)
            thread_iterations = cases[i].iterations;
    for (int round = 0; round < options.rounds; round++) {
        for (size_t i = 0; i < count; i++)
            bench_print(cases[i].name, round,
                        bench_sample(cases[i].loop, cases[i].iterations));
        sample_threads(1, thread_iterations, options.cpu, cpus, round);
        if (cpus >= 2)
            sample_threads(2, thread_iterations, options.cpu, cpus, round);
    }
    /* Proof of work: what the rings hold, and that `bench_off` got nothing. */
    printf("{\"check\": \"records\", \"bench\": %lu, \"bench_off\": %lu, "
           "\"clock\": \"%s\", \"ring\": %d}\n",
           (unsigned long)records_in(&recorder_bench_topic),
           (unsigned long)records_in(&recorder_bench_off_topic),
           recorder_clock.use_tsc ? "tsc" : "clock_gettime", BENCH_RING);
    return 0;
}
