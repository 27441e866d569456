/* rate_load.c - records at a steady rate, for the daemon benchmark.
 *
 * rate_load RATE SECONDS: records topic `load` (args: i, i & 1023) RATE
 * times a second for SECONDS, in 1 ms batches, then prints the records
 * made and exits. Prints "ready PID" first and waits for a line on stdin
 * (so the daemon can arm it before the first record). After a delay (kept
 * off its CPU) it catches up at once: a burst of the records it owes.
 * With -DLOAD_REPORT_BEHIND it then prints how far behind it got at most;
 * with -DLOAD_SHARDS_FIRST its shards are made before it says "ready".
 */
#include <recorder.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#ifndef LOAD_ENTRIES            /* -DLOAD_ENTRIES=65536: a ring that absorbs */
#define LOAD_ENTRIES 1024       /* the catch-up bursts of a loaded machine */
#endif
RECORDER(load, LOAD_ENTRIES, "Steady-rate records");

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    long rate = argc > 1 ? atol(argv[1]) : 200000;
    double seconds = argc > 2 ? atof(argv[2]) : 10;
    char line[16];
#ifdef LOAD_SHARDS_FIRST
    /* Each CPU's shard made (mapped and populated) before the paced loop:
     * on a VM whose memory is fresh to the guest, populating 36 MiB took
     * up to ~0.5 s of the first RECORD on a CPU, a burst of records owed. */
    long cpus = sysconf(_SC_NPROCESSORS_CONF);
    for (long cpu = 0; cpu < cpus && cpu < RECORDER_MAX_SHARDS; cpu++)
        recorder_shard_create(&recorder_load_topic, (unsigned)cpu);
#endif
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        return 1;
    long per_ms = rate / 1000, made = 0;
    long long start = now_ns(), end = start + (long long)(seconds * 1e9);
    long long behind = 0;       /* the most the schedule was behind: a burst */
    for (long long tick = start; tick < end; tick += 1000000) {
        for (long i = 0; i < per_ms; i++, made++)
            RECORD(load, "load %ld %ld", made, made & 1023);
        long long wait = tick + 1000000 - now_ns();
        if (wait > 0) {
            struct timespec delay = {0, wait};
            nanosleep(&delay, NULL);
        } else if (-wait > behind) {
            behind = -wait;
        }
    }
    printf("%ld\n", made);
#ifdef LOAD_REPORT_BEHIND       /* after the count: other benches read it last */
    printf("behind at most %lld us\n", behind / 1000);
#endif
    return 0;
}
