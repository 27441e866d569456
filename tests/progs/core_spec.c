/* core_spec.c - trace specs and tweaks.
 *
 *   core_spec [SPEC...]     applies each SPEC with recorder_trace_set, then
 *                           prints every topic's trace value and every
 *                           tweak's value (RECORDER_TRACES and
 *                           RECORDER_TWEAKS apply before main)
 *   core_spec --kill N      records N times into `traced`, then SIGKILLs
 *                           itself: what RECORDER_TRACES printed must be
 *                           on stderr already
 */
#define _GNU_SOURCE
#include <recorder.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

RECORDER(net_send, 16, "Packets sent");
RECORDER(net_recv, 16, "Packets received");
RECORDER(disk_io, 16, "Disk requests");
RECORDER(Mixed_Case, 16, "A name with capitals");
RECORDER(traced, 32, "Printed at once when traced");
RECORDER_TWEAK_DEFINE(retries, 7, "How often to retry");
RECORDER_TWEAK_DEFINE(budget, 23, "Bytes per round");

static void show(void)
{
    printf("net_send %lld\n", (long long)RECORDER_TRACE(net_send));
    printf("net_recv %lld\n", (long long)RECORDER_TRACE(net_recv));
    printf("disk_io %lld\n", (long long)RECORDER_TRACE(disk_io));
    printf("Mixed_Case %lld\n", (long long)RECORDER_TRACE(Mixed_Case));
    printf("traced %lld\n", (long long)RECORDER_TRACE(traced));
    printf("retries %lld\n", (long long)RECORDER_TWEAK(retries));
    printf("budget %lld\n", (long long)RECORDER_TWEAK(budget));
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--kill") == 0) {
        int count = atoi(argv[2]);
        for (int i = 0; i < count; i++)
            RECORD(traced, "traced record %d of %d", i, count);
        kill(getpid(), SIGKILL);
        return 3;
    }
    for (int a = 1; a < argc; a++) {
        int status = recorder_trace_set(argv[a]);
        printf("status %d\n", status);
        fflush(stdout);
    }
    show();
    return 0;
}
