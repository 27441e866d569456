/* batch_migrate - a thread records on CPU 0, then lives on CPU 1 only.
 *
 *   batch_migrate COUNT
 *
 * Prints "ready <pid>" and waits for a line (the tracer arms it
 * meanwhile). Then, pinned to CPU 0, it records COUNT entries (i) into
 * topic `moved` (16384 kept a CPU) as fast as it can, pins itself to CPU 1
 * and prints "moved": the harvest at its switch away from CPU 0 copies
 * what one walk can (~1,900 entries), the rest stays in CPU 0's shard. It
 * then wakes every ms on CPU 1, never on CPU 0 again and recording
 * nothing, until a line arrives; prints "done" and exits.
 */
#define _GNU_SOURCE
#include <recorder.h>

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "pin.h"

RECORDER(moved, 16384, "Records left in CPU 0's shard by a thread that moved");

static int line_waiting(int timeout_ms)
{
    struct pollfd in = { .fd = 0, .events = POLLIN };
    return poll(&in, 1, timeout_ms) > 0;
}

int main(int argc, char **argv)
{
    char line[64];
    long count = argc > 1 ? strtol(argv[1], NULL, 0) : 16384;
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        return 1;
    if (pin_to_cpu(0))
        return 2;
    for (long i = 0; i < count; i++)
        RECORD(moved, "moved %ld", i);
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
