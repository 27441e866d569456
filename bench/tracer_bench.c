/* tracer_bench.c - the traced side of the tracer benchmark: tight RECORD
 * loops that bench/tracer_bench.py arms in different ways.
 *
 *   tracer_bench CPU      pins itself to CPU, prints "ready PID", then
 *                         answers each command line with one line:
 *
 *   sample TOPIC MS       records into TOPIC for MS ms, in bursts of BURST;
 *                         prints "RECORDS WALL_NS CPU_NS"
 *   paced TOPIC RATE MS   RATE records per second for MS ms (a burst of
 *                         PACE_BURST every PACE_BURST/RATE s, spinning in
 *                         between); prints "RECORDS WALL_NS CPU_NS"
 *   flood TOPIC MS        like sample, from two threads pinned to CPUs 0
 *                         and 1; prints "RECORDS WALL_NS CPU_NS" (records
 *                         and CPU time of both, wall time of the longer)
 *   exit
 *
 * Topics: `cold` (never armed), `t0`..`t7` (one per way of tracing, chosen
 * by the driver) and `str` (a string and an integer).
 */
#include "bench.h"

#include <recorder.h>
#include <stdatomic.h>

#define BURST 1024
#define PACE_BURST 16

/* One topic per way of tracing it, so that every tracer stays attached for
 * the whole run and the cases can alternate every few milliseconds: noise
 * then hits all of them alike. Each topic records the same 4 integers from
 * its own copy of the same loop (aligned alike); `str` records a string and
 * an integer. */
#define TOPIC_LOOP(name)                                                    \
    RECORDER(name, 1024, "Tracer benchmark topic");                         \
    __attribute__((noinline, aligned(64)))                                  \
    static void loop_##name(uint64_t n, uint64_t base)                      \
    {                                                                       \
        for (uint64_t i = base; i < base + n; i++) {                        \
            uint64_t k = i * BENCH_UNROLL;                                  \
            RECORD_##name(k + 0); BENCH_BARRIER();                          \
            RECORD_##name(k + 1); BENCH_BARRIER();                          \
            RECORD_##name(k + 2); BENCH_BARRIER();                          \
            RECORD_##name(k + 3); BENCH_BARRIER();                          \
            RECORD_##name(k + 4); BENCH_BARRIER();                          \
            RECORD_##name(k + 5); BENCH_BARRIER();                          \
            RECORD_##name(k + 6); BENCH_BARRIER();                          \
            RECORD_##name(k + 7); BENCH_BARRIER();                          \
        }                                                                   \
    }

static const char *names[] = { "alpha", "beta", "gamma", "delta" };

#define RECORD4(name, k) RECORD(name, "a=%lu b=%lu c=%lu d=%d", (k), (k) + 1, (k) * 3, 7)
#define RECORD_cold(k)   RECORD4(cold, k)
#define RECORD_t0(k)     RECORD4(t0, k)
#define RECORD_t1(k)     RECORD4(t1, k)
#define RECORD_t2(k)     RECORD4(t2, k)
#define RECORD_t3(k)     RECORD4(t3, k)
#define RECORD_t4(k)     RECORD4(t4, k)
#define RECORD_t5(k)     RECORD4(t5, k)
#define RECORD_t6(k)     RECORD4(t6, k)
#define RECORD_t7(k)     RECORD4(t7, k)
#define RECORD_str(k)    RECORD(str, "name=%s k=%lu", names[(k) & 3], (k))

TOPIC_LOOP(cold)
TOPIC_LOOP(t0)
TOPIC_LOOP(t1)
TOPIC_LOOP(t2)
TOPIC_LOOP(t3)
TOPIC_LOOP(t4)
TOPIC_LOOP(t5)
TOPIC_LOOP(t6)
TOPIC_LOOP(t7)
TOPIC_LOOP(str)

typedef void (*topic_loop)(uint64_t n, uint64_t base);

static const struct {
    const char *name;
    topic_loop loop;
} topics[] = {
    { "cold", loop_cold }, { "t0", loop_t0 }, { "t1", loop_t1 },
    { "t2", loop_t2 }, { "t3", loop_t3 }, { "t4", loop_t4 },
    { "t5", loop_t5 }, { "t6", loop_t6 }, { "t7", loop_t7 },
    { "str", loop_str },
};

static topic_loop find_loop(const char *name)
{
    for (size_t i = 0; i < sizeof(topics) / sizeof(topics[0]); i++)
        if (strcmp(topics[i].name, name) == 0)
            return topics[i].loop;
    return NULL;
}

static uint64_t cpu_ns(clockid_t clock)
{
    struct timespec now;
    clock_gettime(clock, &now);
    return (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
}

/* Records in bursts of BURST until `ns` have passed; returns the count. */
static uint64_t run_for(topic_loop loop, uint64_t ns, uint64_t *elapsed)
{
    uint64_t start = bench_ns(), now = start, records = 0;
    while (now - start < ns) {
        loop(BURST / BENCH_UNROLL, records / BENCH_UNROLL);
        records += BURST;
        now = bench_ns();
    }
    *elapsed = now - start;
    return records;
}

/* RATE records per second: a burst of PACE_BURST, then spin to the next
 * burst's time. Falls behind (never ahead) when records cost too much. */
static uint64_t run_paced(topic_loop loop, uint64_t rate, uint64_t ns,
                          uint64_t *elapsed)
{
    uint64_t interval = 1000000000ull * PACE_BURST / rate;
    uint64_t start = bench_ns(), next = start, records = 0, now = start;
    while (now - start < ns) {
        loop(PACE_BURST / BENCH_UNROLL, records / BENCH_UNROLL);
        records += PACE_BURST;
        next += interval;
        while ((now = bench_ns()) < next)
            ;
    }
    *elapsed = now - start;
    return records;
}

struct flooder {
    pthread_t thread;
    int cpu;
    topic_loop loop;
    uint64_t ns, records, elapsed, cpu_ns;
    _Atomic int *ready;
};

static void *flood_main(void *argument)
{
    struct flooder *f = argument;
    bench_pin(f->cpu);
    atomic_fetch_add(f->ready, 1);
    while (atomic_load(f->ready) < 2)
        ;
    uint64_t cpu_start = cpu_ns(CLOCK_THREAD_CPUTIME_ID);
    f->records = run_for(f->loop, f->ns, &f->elapsed);
    f->cpu_ns = cpu_ns(CLOCK_THREAD_CPUTIME_ID) - cpu_start;
    return NULL;
}

int main(int argc, char **argv)
{
    int cpu = argc > 1 ? atoi(argv[1]) : 0;
    if (bench_pin(cpu) != 0)
        fprintf(stderr, "tracer_bench: cannot pin to CPU %d\n", cpu);
    printf("ready %d\n", (int)getpid());
    fflush(stdout);

    char line[256];
    while (fgets(line, sizeof(line), stdin)) {
        char command[32], topic[32];
        unsigned long a = 0, b = 0;
        int fields = sscanf(line, "%31s %31s %lu %lu", command, topic, &a, &b);
        if (fields < 1 || strcmp(command, "exit") == 0)
            break;
        topic_loop loop = fields >= 2 ? find_loop(topic) : NULL;
        uint64_t records = 0, elapsed = 0, used = 0;
        if (loop == NULL) {
            printf("error: unknown topic\n");
            fflush(stdout);
            continue;
        }
        if (strcmp(command, "sample") == 0 && fields == 3) {
            uint64_t cpu_start = cpu_ns(CLOCK_THREAD_CPUTIME_ID);
            records = run_for(loop, a * 1000000ull, &elapsed);
            used = cpu_ns(CLOCK_THREAD_CPUTIME_ID) - cpu_start;
        } else if (strcmp(command, "paced") == 0 && fields == 4 && a > 0) {
            uint64_t cpu_start = cpu_ns(CLOCK_THREAD_CPUTIME_ID);
            records = run_paced(loop, a, b * 1000000ull, &elapsed);
            used = cpu_ns(CLOCK_THREAD_CPUTIME_ID) - cpu_start;
        } else if (strcmp(command, "flood") == 0 && fields == 3) {
            _Atomic int ready = 0;
            struct flooder flooders[2];
            for (int t = 0; t < 2; t++) {
                flooders[t] = (struct flooder) {
                    .cpu = t, .loop = loop, .ns = a * 1000000ull,
                    .ready = &ready,
                };
                pthread_create(&flooders[t].thread, NULL, flood_main,
                               &flooders[t]);
            }
            for (int t = 0; t < 2; t++) {
                pthread_join(flooders[t].thread, NULL);
                records += flooders[t].records;
                used += flooders[t].cpu_ns;
                if (flooders[t].elapsed > elapsed)
                    elapsed = flooders[t].elapsed;
            }
        } else {
            printf("error: bad command\n");
            fflush(stdout);
            continue;
        }
        printf("%lu %lu %lu\n", (unsigned long)records,
               (unsigned long)elapsed, (unsigned long)used);
        fflush(stdout);
    }
    return 0;
}
