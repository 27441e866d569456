/* batch_migrate - a thread records on CPU 0, then lives on CPU 1 only.
 *
 *   batch_migrate COUNT [late]
 *
 * Prints "ready <pid>" and waits for a line (the tracer arms it
 * meanwhile). Then, pinned to CPU 0, it records COUNT entries (i) as fast
 * as it can, pins itself to CPU 1 and prints "moved". It then wakes every
 * ms on CPU 1, never on CPU 0 again and recording nothing, until a line
 * arrives; prints "done" and exits.
 *
 * The records go to topic `moved` (16384 kept a CPU): the harvest at its
 * switch away from CPU 0 copies what one walk can (~1,900 entries), the
 * rest stays in CPU 0's shard. With `late`, they go to topic `later`
 * (4096 kept), registered at the "go" line: a tracer that arms it only
 * after the move (BPF, from its first record, once the name is published)
 * finds them all in CPU 0's shard.
 */
#define _GNU_SOURCE
#include <recorder.h>

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pin.h"

RECORDER(moved, 16384, "Records left in CPU 0's shard by a thread that moved");

static const char later_name[] = "later";

static struct recorder_topic later_topic = {
    .trace = 0,
    .size = 4096,
    .name = later_name,
    .description = "A topic registered after the tracer armed the process",
};

static int line_waiting(int timeout_ms)
{
    struct pollfd in = { .fd = 0, .events = POLLIN };
    return poll(&in, 1, timeout_ms) > 0;
}

int main(int argc, char **argv)
{
    char line[64];
    long count = argc > 1 ? strtol(argv[1], NULL, 0) : 16384;
    int late = argc > 2 && strcmp(argv[2], "late") == 0;
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        return 1;
    if (pin_to_cpu(0))
        return 2;
    if (late) {
        /* Its name read here, so its page is mapped: BPF can read it. */
        if (strlen(later_name) != 5)
            return 4;
        recorder_topic_register(&later_topic);
        for (long i = 0; i < count; i++)
            recorder_append(&later_topic, "batch_migrate.c", "later %d",
                            (uintptr_t)i, 0, 0, 0);
    } else {
        for (long i = 0; i < count; i++)
            RECORD(moved, "moved %ld", i);
    }
    if (pin_to_cpu(1))
        return 3;
    printf("moved\n");
    fflush(stdout);
    while (!line_waiting(1))
        ;
    printf("done\n");
    fflush(stdout);
    return 0;
}
