/* core_usdt.c - fires the per-topic USDT probes a known number of times.
 *
 *   core_usdt COUNT    records COUNT times into `probed` (args 3 * i + 1,
 *                      i / 2.0) and COUNT times into `quiet`, which nobody
 *                      attaches to; prints "probed armed N" if the probe's
 *                      semaphore was nonzero during the last record
 */
#include <recorder.h>

#include <stdio.h>
#include <stdlib.h>

RECORDER(probed, 32, "Attached to by the bpftrace test");
RECORDER(quiet, 32, "Never attached to");

int main(int argc, char **argv)
{
    int count = argc > 1 ? atoi(argv[1]) : 0;
    for (int i = 0; i < count; i++) {
        RECORD(probed, "value %d half %.1f", 3 * i + 1, i / 2.0);
        RECORD(quiet, "quiet %d", i);
    }
    printf("probed armed %d quiet armed %d\n",
           RECORDER_SEMAPHORE(probed) != 0, RECORDER_SEMAPHORE(quiet) != 0);
    return 0;
}
