/* batch_flood_slow - one topic floods, another records slowly beside it.
 *
 *   batch_flood_slow COUNT
 *
 * Prints "ready <pid>" and waits for a line (the tracer arms it
 * meanwhile). Then, pinned to CPU 1, COUNT times: records a burst of 4096
 * entries into `flood` (a ring of 4096) as fast as it can, one entry (i)
 * into `slow` (a ring of 64), and sleeps 30 ms. Prints "slow done", and
 * waits for a line; prints "done" and exits.
 *
 * Each sleep is a switch, a harvest: a walk of the process's armed topics
 * with room for ~1,900 entries (batch.c: BATCH_STEPS x BATCH_CALLS chunks
 * of 16), and every walk finds more than that in `flood`. A walk that
 * always began at the first topic armed (`flood`) never reached `slow`
 * while the bursts went on, and its ring wrapped meanwhile. The pace keeps the
 * stream below what the controller decodes: the walks, not a full stream,
 * are the limit. `slow`'s ring holds 64 bursts (~2 s): a controller that
 * falls behind for a while on a loaded machine (the stream full, walks
 * stopped) does not make it wrap.
 */
#define _GNU_SOURCE
#include <recorder.h>

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "pin.h"

#define BURST 4096

RECORDER(flood, BURST, "Bursts of more entries than a harvest takes");
RECORDER(slow, 64, "One record a burst, beside the flood");

int main(int argc, char **argv)
{
    char line[64];
    long count = argc > 1 ? strtol(argv[1], NULL, 0) : 60;
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        return 1;
    if (pin_to_cpu(1))
        return 2;
    long flooded = 0;
    for (long i = 0; i < count; i++) {
        for (int j = 0; j < BURST; j++)
            RECORD(flood, "flood %ld", flooded++);
        RECORD(slow, "slow %ld", i);
        usleep(30000);
    }
    printf("slow done\n");
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        return 1;
    printf("done\n");
    fflush(stdout);
    return 0;
}
