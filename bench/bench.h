/* bench.h - what record_bench.c and lttng_bench.c share: a clock, CPU
 * pinning, calibration, interleaved rounds and one output line per sample.
 *
 * Each case is a function running `n` loop iterations of BENCH_UNROLL
 * operations. Every round runs every case once (interleaved, so slow
 * drifts of the machine hit all cases alike) and prints one JSON line per
 * sample; bench/run.py takes medians over rounds.
 */
#ifndef BENCH_H
#define BENCH_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE     /* CPU_SET, pthread_setaffinity_np */
#endif
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Operations per loop iteration: amortizes the loop's own increment and
 * branch without letting the compiler merge operations (see BENCH_BARRIER). */
#define BENCH_UNROLL 8

/* Forces the compiler to reload memory (a topic's trace value, a
 * tracepoint's state) at every site, as a call between real sites would.
 * It emits no instruction. */
#define BENCH_BARRIER() __asm__ __volatile__("" ::: "memory")

/* Runs STMT(k) for the BENCH_UNROLL values of k of iteration `i`. */
#define BENCH_REPEAT(STMT, i)                                               \
    do {                                                                    \
        uint64_t bench_k_ __attribute__((unused)) = (i) * BENCH_UNROLL;      \
        STMT(bench_k_ + 0); BENCH_BARRIER();                                \
        STMT(bench_k_ + 1); BENCH_BARRIER();                                \
        STMT(bench_k_ + 2); BENCH_BARRIER();                                \
        STMT(bench_k_ + 3); BENCH_BARRIER();                                \
        STMT(bench_k_ + 4); BENCH_BARRIER();                                \
        STMT(bench_k_ + 5); BENCH_BARRIER();                                \
        STMT(bench_k_ + 6); BENCH_BARRIER();                                \
        STMT(bench_k_ + 7); BENCH_BARRIER();                                \
    } while (0)

typedef void (*bench_loop)(uint64_t n);

struct bench_case {
    const char *name;
    bench_loop loop;
    uint64_t iterations;    /* set by bench_calibrate */
};

static inline uint64_t bench_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
}

/* Pins the calling thread to one CPU; returns 0 on success. */
static inline int bench_pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

/* Nanoseconds per operation of one sample of `n` iterations. */
static inline double bench_sample(bench_loop loop, uint64_t n)
{
    uint64_t start = bench_ns();
    loop(n);
    uint64_t elapsed = bench_ns() - start;
    return (double)elapsed / (double)(n * BENCH_UNROLL);
}

/* Warms the case up and picks iterations so one sample lasts ~sample_ns. */
static inline void bench_calibrate(struct bench_case *c, uint64_t sample_ns)
{
    uint64_t n = 1024;
    for (;;) {
        uint64_t start = bench_ns();
        c->loop(n);
        uint64_t elapsed = bench_ns() - start;
        if (elapsed >= sample_ns / 4 || n >= (1ull << 40)) {
            double per_iteration = (double)elapsed / (double)n;
            c->iterations = (uint64_t)((double)sample_ns / per_iteration) + 1;
            return;
        }
        n *= 2;
    }
}

static inline void bench_print(const char *name, int round, double ns)
{
    printf("{\"case\": \"%s\", \"round\": %d, \"ns\": %.4f}\n", name, round, ns);
}

/* Common command line: ROUNDS SAMPLE_MS [CPU]. */
struct bench_options {
    int rounds;
    uint64_t sample_ns;
    int cpu;
};

static inline struct bench_options bench_options(int argc, char **argv)
{
    struct bench_options options = { 15, 10000000ull, 0 };
    if (argc > 1)
        options.rounds = atoi(argv[1]);
    if (argc > 2)
        options.sample_ns = (uint64_t)atoi(argv[2]) * 1000000ull;
    if (argc > 3)
        options.cpu = atoi(argv[3]);
    if (options.rounds < 1)
        options.rounds = 1;
    return options;
}

/* Calibrates then runs `rounds` interleaved rounds of every case. */
static inline void bench_run(struct bench_case *cases, size_t count,
                             const struct bench_options *options)
{
    for (size_t i = 0; i < count; i++)
        bench_calibrate(&cases[i], options->sample_ns);
    for (int round = 0; round < options->rounds; round++)
        for (size_t i = 0; i < count; i++)
            bench_print(cases[i].name, round,
                        bench_sample(cases[i].loop, cases[i].iterations));
    fflush(stdout);
}

#endif /* BENCH_H */
