/* core_usdt.c - fires the per-topic USDT probes a known number of times.
 *
 *   core_usdt COUNT    records COUNT times into `probed` (args 3 * i + 1,
 *                      i / 2.0) and COUNT times into `quiet`, which nobody
 *                      attaches to; prints "probed armed N" if the probe's
 *                      semaphore was nonzero during the last record
 *   core_usdt COUNT append   the same through the seed's recorder_append
 *                      (args 3 * i + 1, i), as a seed program records
 */
#include <recorder.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

RECORDER(probed, 32, "Attached to by the bpftrace test");
RECORDER(quiet, 32, "Never attached to");

int main(int argc, char **argv)
{
    int count = argc > 1 ? atoi(argv[1]) : 0;
    int append = argc > 2 && strcmp(argv[2], "append") == 0;
    for (int i = 0; append && i < count; i++) {
        recorder_append(RECORDER_INFO(probed), __func__, "value %d at %d",
                        3 * i + 1, i, 0, 0);
        recorder_append(RECORDER_INFO(quiet), __func__, "quiet %d", i, 0, 0, 0);
    }
    for (int i = 0; !append && i < count; i++) {
        RECORD(probed, "value %d half %.1f", 3 * i + 1, i / 2.0);
        RECORD(quiet, "quiet %d", i);
    }
    printf("probed armed %d quiet armed %d\n",
           RECORDER_SEMAPHORE(probed) != 0, RECORDER_SEMAPHORE(quiet) != 0);
    return 0;
}
