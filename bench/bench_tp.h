/* bench_tp.h - the LTTng-UST tracepoint provider `recorder_bench`.
 *
 * Two events with the payload of RECORD4 in record_bench.c (four integers):
 * `on` is enabled by bench/run.py's snapshot session, `off` never is, so one
 * process measures both an enabled, recording tracepoint and a disabled one.
 */
#undef LTTNG_UST_TRACEPOINT_PROVIDER
#define LTTNG_UST_TRACEPOINT_PROVIDER recorder_bench

#undef LTTNG_UST_TRACEPOINT_INCLUDE
#define LTTNG_UST_TRACEPOINT_INCLUDE "./bench_tp.h"

#if !defined(BENCH_TP_H) || defined(LTTNG_UST_TRACEPOINT_HEADER_MULTI_READ)
#define BENCH_TP_H

#include <lttng/tracepoint.h>
#include <stdint.h>

LTTNG_UST_TRACEPOINT_EVENT_CLASS(
    recorder_bench, four,
    LTTNG_UST_TP_ARGS(uint64_t, a, uint64_t, b, uint64_t, c, int, d),
    LTTNG_UST_TP_FIELDS(
        lttng_ust_field_integer(uint64_t, a, a)
        lttng_ust_field_integer(uint64_t, b, b)
        lttng_ust_field_integer(uint64_t, c, c)
        lttng_ust_field_integer(int, d, d)
    )
)

LTTNG_UST_TRACEPOINT_EVENT_INSTANCE(
    recorder_bench, four, recorder_bench, on,
    LTTNG_UST_TP_ARGS(uint64_t, a, uint64_t, b, uint64_t, c, int, d)
)

LTTNG_UST_TRACEPOINT_EVENT_INSTANCE(
    recorder_bench, four, recorder_bench, off,
    LTTNG_UST_TP_ARGS(uint64_t, a, uint64_t, b, uint64_t, c, int, d)
)

#endif /* BENCH_TP_H */

#include <lttng/tracepoint-event.h>
