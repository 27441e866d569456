/* clock.c - CLOCK_MONOTONIC nanoseconds from the TSC.
 *
 * clock_gettime costs ~25 ns here, rdtsc ~10 ns. When the kernel itself
 * derives CLOCK_MONOTONIC from the TSC (clocksource "tsc"), CLOCK_MONOTONIC
 * is a piecewise-linear function of the TSC, so we keep a linear fit anchored
 * on a recent (tsc, clock_gettime) pair and re-anchor it before the
 * extrapolation could drift: the error stays within a few hundred ns, and
 * entries merge with bpf_ktime_get_ns and other processes on one timeline.
 */
#define _GNU_SOURCE
#include "recorder.h"
#include "internal.h"

#include <fcntl.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct recorder_clock recorder_clock;
static atomic_flag recalibrating = ATOMIC_FLAG_INIT;

/* Re-anchor when extrapolating further than this many times the baseline
 * the slope was measured over: bounds the error from the slope's own error. */
#define EXTRAPOLATION_FACTOR 4
#define MAX_LIMIT            (1ull << 32)   /* ~1.5 s of a 2.8 GHz TSC */

static __u64 monotonic_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (__u64)now.tv_sec * 1000000000ull + (__u64)now.tv_nsec;
}

#ifdef RECORDER_HAVE_TSC
/* How far an epoch may extrapolate: a multiple of the baseline its slope
 * was measured over, never so far that delta * mult leaves 64 bits (a TSC
 * slower than 1 GHz has mult >= 2^32). */
static __u64 epoch_limit(__u64 baseline_ticks, __u64 mult)
{
    __u64 limit = baseline_ticks < MAX_LIMIT
        ? baseline_ticks * EXTRAPOLATION_FACTOR : MAX_LIMIT;
    if (limit > MAX_LIMIT)
        limit = MAX_LIMIT;
    if (mult && limit > ~0ull / mult)
        limit = ~0ull / mult;
    return limit;
}

/* One (tsc, ns) pair: the TSC read halfway through the tightest of a few
 * clock_gettime calls. */
static void measure_pair(__u64 *tsc, __u64 *ns)
{
    __u64 best_width = ~0ull;
    for (int attempt = 0; attempt < 5; attempt++) {
        __u64 before = __rdtsc();
        __u64 value = monotonic_ns();
        __u64 after = __rdtsc();
        if (after - before < best_width) {
            best_width = after - before;
            *tsc = before + (after - before) / 2;
            *ns = value;
        }
    }
}

static int kernel_uses_tsc(void)
{
    char name[32] = "";
    int fd = open("/sys/devices/system/clocksource/clocksource0/"
                  "current_clocksource", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t got = read(fd, name, sizeof(name) - 1);
    close(fd);
    return got >= 3 && strncmp(name, "tsc", 3) == 0
        && (name[3] == '\n' || name[3] == 0);
}

static void publish(__u64 tsc, __u64 ns, __u64 mult, __u64 baseline_ticks)
{
    unsigned current = atomic_load_explicit(&recorder_clock.current,
                                            memory_order_relaxed);
    struct recorder_clock_epoch *next = &recorder_clock.epoch[(current + 1) & 1];
    next->tsc_base = tsc;
    next->ns_base = ns;
    next->mult = mult;
    next->limit = epoch_limit(baseline_ticks, mult);
    atomic_store_explicit(&recorder_clock.current, current + 1,
                          memory_order_release);
}
#endif

void recorder_clock_init(void)
{
#ifdef RECORDER_RSEQ_INCREMENT
    /* Before any RECORD can run in a second thread: writers of one shard
     * must all use rseq or all use the locked fetch-add. */
    recorder_clock.use_rseq = __rseq_size != 0
        && sysconf(_SC_NPROCESSORS_CONF) <= RECORDER_MAX_SHARDS
        && !getenv("RECORDER_NO_RSEQ");
#endif
#ifdef RECORDER_HAVE_TSC
    if (secure_getenv("RECORDER_NO_TSC") || !kernel_uses_tsc())
        return;
    __u64 tsc0, ns0, tsc1, ns1;
    measure_pair(&tsc0, &ns0);
    /* A first slope over ~100 us; later re-anchors refine it over longer
     * baselines (the limit grows with the baseline). */
    while (monotonic_ns() - ns0 < 100000)
        ;
    measure_pair(&tsc1, &ns1);
    if (tsc1 <= tsc0)
        return;
    __u64 mult = ((ns1 - ns0) << 32) / (tsc1 - tsc0);
    recorder_clock.epoch[0] = (struct recorder_clock_epoch) {
        .tsc_base = tsc1, .ns_base = ns1, .mult = mult,
        .limit = epoch_limit(tsc1 - tsc0, mult),
    };
    atomic_store_explicit(&recorder_clock.current, 0, memory_order_release);
    recorder_clock.use_tsc = 1;
#endif
}

__u64 recorder_clock_slow(void)
{
#ifdef RECORDER_HAVE_TSC
    if (recorder_clock.use_tsc && !atomic_flag_test_and_set(&recalibrating)) {
        unsigned current = atomic_load_explicit(&recorder_clock.current,
                                                memory_order_acquire);
        const struct recorder_clock_epoch *epoch =
            &recorder_clock.epoch[current & 1];
        __u64 tsc, ns;
        measure_pair(&tsc, &ns);
        if (tsc > epoch->tsc_base && ns > epoch->ns_base) {
            __u64 ticks = tsc - epoch->tsc_base;
            __u64 mult = epoch->mult;
            /* The slope over the last interval follows NTP's slewing of
             * CLOCK_MONOTONIC; a too-short interval keeps the old slope. */
            if (ticks >= 100000 && ns - epoch->ns_base < (1ull << 31))
                mult = ((ns - epoch->ns_base) << 32) / ticks;
            publish(tsc, ns, mult, ticks);
        }
        atomic_flag_clear(&recalibrating);
        return ns;
    }
#endif
    return monotonic_ns();
}

/* The child of a fork that happened mid-recalibration still has a whole
 * current epoch (the next one is published last): only the flag, which
 * would keep it from ever recalibrating, is cleared. */
void recorder_clock_after_fork(void)
{
    atomic_flag_clear(&recalibrating);
}

__u64 recorder_clock_now(void)
{
    return recorder_now();
}
