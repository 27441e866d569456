/* lttng_bench.c - cost of an LTTng-UST tracepoint, enabled and recording
 * (event recorder_bench:on, enabled by bench/run.py's snapshot session) and
 * disabled (recorder_bench:off), in the loop of record_bench.c's RECORD4.
 *
 *   lttng_bench [ROUNDS [SAMPLE_MS [CPU]]]
 *
 * The provider is compiled into this program. Before main runs,
 * liblttng-ust has registered with the session daemon and received the
 * enabled events; the first line says whether `on` really is enabled.
 */
#include "bench.h"

#define LTTNG_UST_TRACEPOINT_CREATE_PROBES
#define LTTNG_UST_TRACEPOINT_DEFINE
#include "bench_tp.h"

static void loop_on(uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
#define ON4(k) lttng_ust_tracepoint(recorder_bench, on,                      \
                                    (k), (k) + 1, (k) * 3, 7)
        BENCH_REPEAT(ON4, i);
    }
}

static void loop_off(uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
#define OFF4(k) lttng_ust_tracepoint(recorder_bench, off,                    \
                                     (k), (k) + 1, (k) * 3, 7)
        BENCH_REPEAT(OFF4, i);
    }
}

int main(int argc, char **argv)
{
    struct bench_options options = bench_options(argc, argv);
    if (bench_pin(options.cpu) != 0)
        fprintf(stderr, "lttng_bench: cannot pin to CPU %d\n", options.cpu);
    printf("{\"check\": \"lttng\", \"on_enabled\": %d, \"off_enabled\": %d}\n",
           lttng_ust_tracepoint_enabled(recorder_bench, on) ? 1 : 0,
           lttng_ust_tracepoint_enabled(recorder_bench, off) ? 1 : 0);
    struct bench_case cases[] = {
        { "lttng_on", loop_on, 0 },
        { "lttng_off", loop_off, 0 },
    };
    bench_run(cases, sizeof(cases) / sizeof(cases[0]), &options);
    return 0;
}
