/* core_crash.c - dumps on fatal signals, and fork.
 *
 *   core_crash segv N     records N times, then writes through a bad pointer
 *   core_crash abort N    records N times, then calls abort()
 *   core_crash overflow N records N times, then overflows the stack
 *   core_crash fork N M   records N times, forks; the child records M times,
 *                         dumps and exits; the parent then records N more
 *                         and dumps. Each prints "pid <pid>" on stdout.
 */
#define _GNU_SOURCE
#include <recorder.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

RECORDER(crash, 64, "Records before a crash");
RECORDER(family, 64, "Records of a parent and its child");

static volatile uintptr_t bad_address = 0x17;   /* hidden from the compiler */

/* Recurses until the stack runs out; the volatile array keeps each frame. */
static int recurse(int depth)
{
    volatile char frame[256];
    if (depth < 0)      /* never: keeps the compiler from calling it endless */
        return 0;
    frame[depth % 256] = (char)depth;
    return recurse(depth + 1) + frame[(depth + 1) % 256];
}

static int fork_test(int before, int in_child)
{
    int pid = getpid();
    for (int i = 0; i < before; i++)
        RECORD(family, "parent %d record %d", pid, i);
    fflush(stdout);
    pid_t child = fork();
    if (child < 0)
        return 2;
    if (child == 0) {
        int self = getpid();
        for (int i = 0; i < in_child; i++)
            RECORD(family, "child %d record %d", self, i);
        printf("child pid %d\n", self);
        fflush(stdout);
        fprintf(stderr, "child dump\n");
        recorder_dump_for("family");
        fprintf(stderr, "child done\n");
        return 0;
    }
    int status;
    waitpid(child, &status, 0);
    for (int i = before; i < 2 * before; i++)
        RECORD(family, "parent %d record %d", pid, i);
    printf("parent pid %d child status %d\n", pid, status);
    fflush(stdout);
    fprintf(stderr, "parent dump\n");
    recorder_dump_for("family");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "fork") == 0)
        return fork_test(atoi(argv[2]), atoi(argv[3]));
    if (argc != 3)
        return 2;
    int count = atoi(argv[2]);
    recorder_dump_on_common_signals(0, 0);
    for (int i = 0; i < count; i++)
        RECORD(crash, "before the crash %d", i);
    if (strcmp(argv[1], "segv") == 0)
        *(volatile int *)bad_address = 23;
    else if (strcmp(argv[1], "abort") == 0)
        abort();
    else if (strcmp(argv[1], "overflow") == 0)
        return recurse(0);
    return 3;
}
