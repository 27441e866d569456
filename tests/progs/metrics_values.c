/* metrics_values - records known values for the in-kernel metrics tests.
 *
 * Prints "ready <pid>", then for every line read on stdin:
 *   "values N":   N records of topic `measure` with (i, 1000 + i, -i, i << 20)
 *   "periodic N P": N records of topic `beat`, one every P microseconds
 *   "spans N":    N spans of run-time topic `work` (made with
 *                 recorder_topic_create): a SPAN_BEGIN record, then a
 *                 SPAN_END record whose args[0] is (i + 1) * 1000 ns
 *   "exit" or end of input: exits 0.
 * After each command it prints "done".
 */
#include <recorder.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

RECORDER(measure, 64, "Four integer arguments of known values");
RECORDER(beat, 64, "Records at a known period");

static void sleep_us(long us)
{
    struct timespec delay = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&delay, NULL);
}

static void spans(long count)
{
    struct recorder_topic *work = recorder_topic_create("work", 64, "Spans");
    for (long i = 0; i < count; i++) {
        __u64 duration = (__u64)(i + 1) * 1000;
        recorder_record_dynamic_flags(work, RECORDER_ENTRY_SPAN_BEGIN,
                                      __FILE__ ":32", "begin", 0, 0, NULL);
        recorder_record_dynamic_flags(work, RECORDER_ENTRY_SPAN_END,
                                      __FILE__ ":34", "end after %lu ns", 1,
                                      RECORDER_ARG_INT, &duration);
    }
}

int main(void)
{
    char line[128];
    /* Made at start, so a tracer can arm it before the first span. */
    recorder_topic_create("work", 64, "Spans");
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    while (fgets(line, sizeof(line), stdin)) {
        char command[32];
        long count = 0, period = 0;
        if (sscanf(line, "%31s %ld %ld", command, &count, &period) < 1)
            continue;
        if (strcmp(command, "exit") == 0)
            break;
        if (strcmp(command, "values") == 0)
            for (long i = 0; i < count; i++)
                RECORD(measure, "i=%ld %ld %ld %ld", i, 1000 + i, -i, i << 20);
        else if (strcmp(command, "periodic") == 0)
            for (long i = 0; i < count; i++) {
                RECORD(beat, "beat %ld", i);
                sleep_us(period);
            }
        else if (strcmp(command, "spans") == 0)
            spans(count);
        printf("done\n");
        fflush(stdout);
    }
    return 0;
}
